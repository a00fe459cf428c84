//! The data plane's listeners: drover's own accept loop for the cleartext listener,
//! Pingora's for HTTPS and for a listening socket inherited in a binary upgrade.
//!
//! Why an accept loop of drover's own: with a connection per request (`ab`, HTTP/1.0
//! clients, proxies that do not pool), Pingora's accept loop and per-connection task spend
//! instructions before drover's engine sees a byte (an accept `select!`, a 60 s timeout
//! around a plain-TCP handshake that does nothing, moves of the stream, and the
//! `async_trait` box of `process_new`). This loop accepts and hands the socket to
//! drover's engine in one task ([`H1App::serve_accepted`]), which reads and writes it
//! without Pingora's L4 stream around it (`h1::client`: no clock read, socket digest or
//! `getsockopt` per connection, `TCP_NODELAY` only once a second write is due): ~2.1k
//! fewer instructions per connection for the loop, two system calls fewer for the
//! stream (callgrind and strace, docs/PERFORMANCE.md).
//!
//! Why Pingora's loop remains for an inherited socket: in a binary upgrade the old
//! process hands its listening socket over as a raw descriptor, and adopting one needs
//! `unsafe` (`from_raw_fd`), which drover does not add; Pingora adopts it. Either way the
//! socket goes into Pingora's table of listening descriptors, so the next upgrade hands
//! it on.

use super::h1::H1App;
use async_trait::async_trait;
use nix::errno::Errno;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora_core::protocols::Stream;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::listening::Service as PingoraListeners;
use pingora_core::services::Service;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};

/// Pending connections the kernel queues for the cleartext listener (Pingora's value).
const BACKLOG: u32 = 65535;
/// How often, and how long apart, a bind to an address still in use is tried again
/// (Pingora's values: a restarted drover waits for its predecessor's socket).
const BIND_TRIES: usize = 30;
const BIND_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The pause after `accept` fails for lack of descriptors, so the loop does not spin.
const EMFILE_PAUSE: Duration = Duration::from_secs(1);

/// The one data-plane service: the cleartext listener and the HTTPS listeners.
pub struct DataPlane {
    name: String,
    app: Arc<H1App>,
    cleartext: SocketAddr,
    https: Vec<(SocketAddr, pingora_core::listeners::tls::TlsSettings)>,
}

impl DataPlane {
    /// `cleartext`: the `listen` address; `https`: each `tls.listen` address with its
    /// TLS settings.
    pub fn new(
        app: H1App,
        cleartext: SocketAddr,
        https: Vec<(SocketAddr, pingora_core::listeners::tls::TlsSettings)>,
    ) -> Self {
        DataPlane {
            name: "drover proxy".to_string(),
            app: Arc::new(app),
            cleartext,
            https,
        }
    }
}

/// Pingora's listening service needs an app it owns; both loops share drover's.
struct Shared(Arc<H1App>);

#[async_trait]
impl ServerApp for Shared {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.0.process_new(stream, shutdown).await
    }
    // No `cleanup`: `DataPlane` cleans the shared app up once, after both loops end.
}

#[async_trait]
impl Service for DataPlane {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let key = self.cleartext.to_string();
        let inherited = fds
            .as_ref()
            .is_some_and(|table| table.lock().get(&key).is_some());
        let mut pingora = PingoraListeners::new(self.name.clone(), Shared(self.app.clone()));
        let own = if inherited {
            // No L4 read buffer: drover's engine reads into its own buffer (main.rs's
            // reasoning, docs/PERFORMANCE.md).
            pingora.add_listener(
                ListenerConfig::tcp(key)
                    .l4_buffer(L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE)),
            );
            None
        } else {
            match bind(self.cleartext).await {
                Ok(listener) => {
                    if let Some(table) = &fds {
                        table.lock().add(key, listener.as_raw_fd());
                    }
                    Some(listener)
                }
                Err(e) => {
                    // As when Pingora cannot bind: the process cannot serve, so it ends.
                    log::error!("cannot listen on {}: {e}", self.cleartext);
                    std::process::exit(1);
                }
            }
        };
        for (addr, settings) in self.https.drain(..) {
            pingora.add_tls_with_settings(&addr.to_string(), None, settings);
        }
        let theirs = pingora.start_service(fds, shutdown.clone(), listeners_per_fd);
        match own {
            Some(listener) => {
                tokio::join!(accept_loop(listener, self.app.clone(), shutdown), theirs);
            }
            None => theirs.await,
        }
        self.app.cleanup().await;
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Binds as Pingora does (`SO_REUSEADDR`, its backlog, retries while the address is in use).
async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let mut tries = 0;
    loop {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(BACKLOG),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries + 1 < BIND_TRIES => {
                tries += 1;
                log::warn!("{addr} is in use, will try again");
                tokio::time::sleep(BIND_RETRY_AFTER).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn accept_loop(listener: TcpListener, app: Arc<H1App>, shutdown: ShutdownWatch) {
    // One wait for shutdown across all accepts: a fresh `changed()` per accept cost
    // ~330 instructions a connection (callgrind).
    let mut watch = shutdown.clone();
    let stopping = async move { while watch.changed().await.is_ok() && !*watch.borrow() {} };
    tokio::pin!(stopping);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stopping => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let (app, shutdown) = (app.clone(), shutdown.clone());
                // The connection's future is boxed, so the task tokio moves around while
                // spawning it stays small (inline, its ~1.8 KB were copied three times).
                tokio::spawn(async move {
                    Box::pin(app.serve_accepted(tcp, peer, &shutdown)).await;
                });
            }
            Err(e) => {
                log::error!("accept() failed: {e}");
                if matches!(
                    e.raw_os_error().map(Errno::from_raw),
                    Some(Errno::EMFILE | Errno::ENFILE)
                ) {
                    // Out of descriptors (per process or system-wide): accept would fail
                    // at once again.
                    tokio::time::sleep(EMFILE_PAUSE).await;
                }
            }
        }
    }
}
