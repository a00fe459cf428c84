//! Signal handling.
//!
//! Pingora owns SIGTERM/SIGINT/SIGQUIT through `ShutdownSignalWatch`; drover's watcher
//! also tells the control thread which kind of shutdown began, so it can stop workers
//! and exit as soon as in-flight requests are done instead of sleeping out Pingora's full
//! grace period. SIGHUP (which Pingora does not handle, and which would otherwise kill
//! the process) is drover's reload, handled on the control thread.

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Which shutdown began, sent from [`DroverSignals`] to the control thread over a
/// `watch` channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownKind {
    /// No shutdown yet: the channel's initial value.
    None,
    /// SIGTERM: stop accepting, finish in-flight requests within the grace period.
    Graceful,
    /// SIGINT: stop now.
    Fast,
    /// SIGQUIT: a new drover takes the listening socket over (graceful upgrade); serve
    /// what was accepted, then stop like a graceful shutdown.
    Upgrade,
}

/// drover's `ShutdownSignalWatch` for Pingora: turns SIGTERM/SIGINT/SIGQUIT into
/// Pingora's shutdown signal and also reports the kind to the control thread.
pub struct DroverSignals {
    /// Sender whose receiver the control thread watches (see [`control::start`]).
    ///
    /// [`control::start`]: crate::lifecycle::control::start
    pub notify: watch::Sender<ShutdownKind>,
}

#[async_trait]
impl ShutdownSignalWatch for DroverSignals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            log::error!("cannot install signal handlers; SIGTERM/SIGINT will not be graceful");
            std::future::pending::<()>().await;
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {
                log::info!("SIGTERM: graceful shutdown: no new connections, finishing in-flight requests");
                let _ = self.notify.send(ShutdownKind::Graceful);
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                log::info!("SIGINT: fast shutdown");
                let _ = self.notify.send(ShutdownKind::Fast);
                ShutdownSignal::FastShutdown
            }
            _ = quit.recv() => {
                log::info!("SIGQUIT: graceful upgrade: handing listening sockets to the new process");
                let _ = self.notify.send(ShutdownKind::Upgrade);
                ShutdownSignal::GracefulUpgrade
            }
        }
    }
}
