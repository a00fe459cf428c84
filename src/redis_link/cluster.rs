//! Redis Cluster through the redis crate's cluster client, replaced when it wedges.
//!
//! The crate's async cluster client can stop answering for good: under load during a
//! reshard it begins a slot refresh that never completes (its log says "beginning slot
//! refresh" and nothing after), and from then on every command it is given times out
//! while every node answers other clients at once. A drover holding such a client would
//! serve every session `unavailable` until restarted.
//!
//! A wedged client is told apart from a cluster that is down by how calls end: a down
//! or refusing cluster makes calls fail (connection refused, `CLUSTERDOWN`), and the
//! client recovers by itself when the cluster does; a wedged client lets calls run into
//! their timeout. So when no call has ended for [`ClusterLink::window`] and at least
//! [`STALLS_BEFORE_REPLACING`] calls timed out meanwhile, the connection is replaced by a
//! fresh one from the same client, which connects in the background like the first.
//! Dropping the last handle of the old one aborts its task. At most one replacement per
//! window, so a cluster whose nodes all hang (accepted but never answered) costs one new
//! set of node connections per window: a reconnect, which is what that case wants too.

use arc_swap::ArcSwap;
use redis::aio::ConnectionLike;
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::RoutingInfo;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Timed-out calls, with none ended in between, before a connection counts as wedged.
pub const STALLS_BEFORE_REPLACING: u32 = 3;

/// The cluster client, its current connection, and the watch over how calls end.
pub struct ClusterLink {
    client: ClusterClient,
    /// Connect and response timeouts of every node connection, given again with each
    /// connection made: the crate takes a connection's timeouts from the config it is
    /// made with, and an empty config means none, so a node that never answers would
    /// hold the client's slot refresh (and with it every call) for good.
    config: ClusterConfig,
    current: ArcSwap<ClusterConnection>,
    window: Duration,
    started: Instant,
    /// Milliseconds since `started` when a call last ended (answered or failed).
    last_ended_ms: AtomicU64,
    /// Calls that timed out since then.
    stalls: AtomicU32,
    /// Milliseconds since `started` of the first of those.
    first_stall_ms: AtomicU64,
    /// Milliseconds since `started` of the last replacement (0: none yet).
    last_replaced_ms: AtomicU64,
    replaced: AtomicU64,
}

impl ClusterLink {
    /// Starts the first connection (in the background; must be called from within a
    /// tokio runtime). `timeout`: connect and response timeout of each node connection.
    /// `window`: how long calls must have been timing out, with none ending, before the
    /// connection is replaced.
    pub fn new(client: ClusterClient, timeout: Duration, window: Duration) -> Arc<Self> {
        let config = ClusterConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        let first = client.get_pending_async_connection_with_config(config.clone());
        Arc::new(ClusterLink {
            client,
            config,
            current: ArcSwap::from_pointee(first),
            window,
            started: Instant::now(),
            last_ended_ms: AtomicU64::new(0),
            stalls: AtomicU32::new(0),
            first_stall_ms: AtomicU64::new(0),
            last_replaced_ms: AtomicU64::new(0),
            replaced: AtomicU64::new(0),
        })
    }

    /// A handle to the current connection.
    pub fn handle(self: &Arc<Self>) -> ClusterConn {
        ClusterConn {
            conn: ClusterConnection::clone(&self.current.load()),
            link: self.clone(),
        }
    }

    /// Connections replaced because they answered nothing.
    pub fn replaced(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        // At least 1, so 0 can mean "never".
        (self.started.elapsed().as_millis() as u64).max(1)
    }

    fn ended(&self) {
        self.last_ended_ms.store(self.now_ms(), Ordering::Relaxed);
        self.stalls.store(0, Ordering::Relaxed);
    }

    fn stalled(&self) {
        let stalls = self.stalls.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.now_ms();
        if stalls == 1 {
            self.first_stall_ms.store(now, Ordering::Relaxed);
        }
        let window = self.window.as_millis() as u64;
        // Quiet since the later of the last ended call and the first stall: after an
        // idle spell, a few timeouts in a row are a slow moment, not a wedge.
        let since = self
            .last_ended_ms
            .load(Ordering::Relaxed)
            .max(self.first_stall_ms.load(Ordering::Relaxed));
        let quiet = now.saturating_sub(since);
        let last = self.last_replaced_ms.load(Ordering::Relaxed);
        if stalls < STALLS_BEFORE_REPLACING
            || quiet < window
            || (last != 0 && now.saturating_sub(last) < window)
        {
            return;
        }
        // One caller replaces; the others see the new time.
        if self
            .last_replaced_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let fresh = self
            .client
            .get_pending_async_connection_with_config(self.config.clone());
        self.current.store(Arc::new(fresh));
        self.stalls.store(0, Ordering::Relaxed);
        self.replaced.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "redis: no call to the cluster ended for {quiet} ms ({stalls} timed out); replaced the connection with a new one"
        );
    }
}

/// Watches one call: ended (answered or failed) or stalled (timed out, or dropped by its
/// caller's own timeout before it ended).
struct CallWatch {
    link: Arc<ClusterLink>,
    ended: bool,
}

impl CallWatch {
    fn finish<T>(mut self, r: &RedisResult<T>) {
        self.ended = true;
        match r {
            Err(e) if e.is_timeout() => self.link.stalled(),
            _ => self.link.ended(),
        }
    }
}

impl Drop for CallWatch {
    fn drop(&mut self) {
        if !self.ended {
            self.link.stalled();
        }
    }
}

/// One handle to Redis Cluster: each command goes to the node of its key's hash slot.
/// Every call through it is watched (see the module doc).
#[derive(Clone)]
pub struct ClusterConn {
    conn: ClusterConnection,
    link: Arc<ClusterLink>,
}

impl ClusterConn {
    /// `cmd` sent where `routing` says (a node by address or by slot).
    pub async fn route_command(&mut self, cmd: Cmd, routing: RoutingInfo) -> RedisResult<Value> {
        let watch = self.watch();
        let r = self.conn.route_command(cmd, routing).await;
        watch.finish(&r);
        r
    }

    fn watch(&self) -> CallWatch {
        CallWatch {
            link: self.link.clone(),
            ended: false,
        }
    }
}

impl ConnectionLike for ClusterConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let watch = self.watch();
        Box::pin(async move {
            let r = self.conn.req_packed_command(cmd).await;
            watch.finish(&r);
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let watch = self.watch();
        Box::pin(async move {
            let r = self.conn.req_packed_commands(pipeline, offset, count).await;
            watch.finish(&r);
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};

    /// A one-node cluster on loopback that owns every slot and answers until `silent`
    /// is set; from then on it reads commands and answers none (as a wedged client
    /// looks from drover's side). Counts the connections it accepted.
    async fn fake_node(silent: Arc<AtomicBool>, accepted: Arc<AtomicU64>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(s, port, silent.clone()));
            }
        });
        port
    }

    async fn serve(s: TcpStream, port: u16, silent: Arc<AtomicBool>) {
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        loop {
            // A command: `*N` then N bulk strings (`$len`, the bytes).
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let n: usize = line.trim_start_matches('*').trim().parse().unwrap_or(0);
            let mut args = Vec::new();
            for _ in 0..n {
                let mut len = String::new();
                let mut arg = String::new();
                if r.read_line(&mut len).await.unwrap_or(0) == 0
                    || r.read_line(&mut arg).await.unwrap_or(0) == 0
                {
                    return;
                }
                args.push(arg.trim_end().to_ascii_uppercase());
            }
            if silent.load(Ordering::Relaxed) {
                continue;
            }
            let reply = match args.first().map(String::as_str) {
                Some("PING") => "+PONG\r\n".to_string(),
                Some("CLUSTER") => format!(
                    "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:{port}\r\n$2\r\nid\r\n"
                ),
                Some("GET") => "$-1\r\n".to_string(),
                _ => "+OK\r\n".to_string(),
            };
            if w.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    async fn get(
        link: &Arc<ClusterLink>,
    ) -> Result<RedisResult<Value>, tokio::time::error::Elapsed> {
        let mut c = link.handle();
        let mut cmd = redis::cmd("GET");
        cmd.arg("k");
        // The store's own timeout around every call.
        tokio::time::timeout(Duration::from_millis(150), async move {
            c.req_packed_command(&cmd).await
        })
        .await
    }

    /// A link to a cluster seeded by `127.0.0.1:port`, with 100 ms timeouts and no
    /// retries, replacing after `window`.
    fn link_to(port: u16, window: Duration) -> Arc<ClusterLink> {
        let client =
            redis::cluster::ClusterClientBuilder::new(vec![format!("redis://127.0.0.1:{port}")])
                .connection_timeout(Duration::from_millis(100))
                .response_timeout(Duration::from_millis(100))
                .retries(0)
                .build()
                .expect("client");
        ClusterLink::new(client, Duration::from_millis(100), window)
    }

    /// A loopback port nothing listens on.
    fn unused_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }

    #[tokio::test]
    async fn a_cluster_connection_that_answers_nothing_is_replaced_by_one_that_serves() {
        let silent = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let port = fake_node(silent.clone(), accepted.clone()).await;
        let link = link_to(port, Duration::from_millis(600));

        // Answered calls: nothing to replace.
        for _ in 0..5 {
            let r = get(&link).await.expect("answered in time");
            assert_eq!(r.expect("GET"), Value::Nil);
        }
        assert_eq!(link.replaced(), 0);
        let before = accepted.load(Ordering::Relaxed);

        // Nothing answers: calls time out; a few of them within the window replace
        // nothing yet.
        silent.store(true, Ordering::Relaxed);
        for _ in 0..3 {
            assert!(get(&link).await.map_or(true, |r| r.is_err()));
        }
        assert_eq!(link.replaced(), 0, "replaced before the window passed");
        // Past the window: replaced, once, and the new connection reaches the node.
        let deadline = Instant::now() + Duration::from_secs(5);
        while link.replaced() == 0 && Instant::now() < deadline {
            assert!(get(&link).await.map_or(true, |r| r.is_err()));
        }
        assert_eq!(link.replaced(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            accepted.load(Ordering::Relaxed) > before,
            "the new connection never reached the node"
        );
        // Answers again: the current connection serves and is kept.
        silent.store(false, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut served = false;
        while !served && Instant::now() < deadline {
            served = matches!(get(&link).await, Ok(Ok(Value::Nil)));
        }
        assert!(served, "no answer after the node recovered");
        let kept = link.replaced();
        for _ in 0..5 {
            assert_eq!(get(&link).await.expect("in time").expect("GET"), Value::Nil);
        }
        assert_eq!(link.replaced(), kept);
    }

    #[tokio::test]
    async fn replacements_need_a_quiet_window_and_come_at_most_once_per_window() {
        let port = unused_port();
        let link = link_to(port, Duration::from_millis(200));
        let pause = || tokio::time::sleep(Duration::from_millis(250));
        // Stalls that have not lasted a window: nothing, however many.
        for _ in 0..100 {
            link.stalled();
        }
        assert_eq!(link.replaced(), 0);
        pause().await;
        // Stalling for a window with no call ended: one replacement, not one per call.
        for _ in 0..100 {
            link.stalled();
        }
        assert_eq!(link.replaced(), 1);
        // After an idle spell (the last call ended long ago), a few timeouts in a row
        // are a slow moment, not a wedge.
        link.ended();
        pause().await;
        for _ in 0..10 {
            link.stalled();
        }
        assert_eq!(link.replaced(), 1);
        // A call that ends starts the count again.
        pause().await;
        link.ended();
        for _ in 0..10 {
            link.stalled();
        }
        assert_eq!(link.replaced(), 1);
        // A window of stalls but fewer than the threshold: nothing; one more replaces.
        link.ended();
        link.stalled();
        pause().await;
        for _ in 2..STALLS_BEFORE_REPLACING {
            link.stalled();
        }
        assert_eq!(link.replaced(), 1);
        link.stalled();
        assert_eq!(link.replaced(), 2);
    }

    #[tokio::test]
    async fn calls_that_fail_fast_are_not_a_wedged_connection() {
        // Nothing listens on this port: every call fails (refused), none times out.
        let port = unused_port();
        let link = link_to(port, Duration::from_millis(100));
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(600) {
            if let Ok(r) = get(&link).await {
                assert!(r.is_err());
            }
        }
        assert_eq!(link.replaced(), 0);
    }
}
