//! Routes: requests grouped by host and path prefix, each group with its own breaker,
//! fallback, timeouts, bulkhead and rate limit.
//!
//! The table is built once when the config is validated and swapped with it, so a
//! request's match is a scan of a short, pre-sorted list with no allocation: routes
//! naming a host first, then longest prefix first; the first that matches wins. Runtime
//! state that must outlive a reload (the in-flight count, the breaker, the limiter)
//! sits behind `Arc`s that `adopt` carries over to the new table when the route's name
//! (and, for the breaker and limiter, its policy) is unchanged.

use super::breaker::Breaker;
use super::rate_limit::RateLimiter;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A tripped route's answer.
#[derive(Debug)]
pub enum Fallback {
    /// Answer locally with this response (default: an empty 503).
    Static {
        /// 200 to 599.
        status: u16,
        /// Extra response headers; never `Content-Length` (drover sets it).
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
        /// Response body, as configured (may be empty).
        body: Bytes,
    },
    /// Proxy to these instead of the pool (round robin).
    Upstreams {
        /// Resolved once at config load, with the route's (or proxy's) connect and read
        /// timeouts.
        peers: Vec<HttpPeer>,
        /// Round-robin cursor over `peers`; wraps.
        next: AtomicUsize,
    },
}

impl Fallback {
    /// The next fallback upstream in turn; `None` for a static fallback (or no peers).
    pub fn next_peer(&self) -> Option<&HttpPeer> {
        match self {
            Fallback::Upstreams { peers, next } if !peers.is_empty() => {
                Some(&peers[next.fetch_add(1, Ordering::Relaxed) % peers.len()])
            }
            _ => None,
        }
    }

    /// `static` or `upstream`: the `kind` label of the route fallback metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Fallback::Static { .. } => "static",
            Fallback::Upstreams { .. } => "upstream",
        }
    }
}

/// A route's own rate limit, or the top-level one.
#[derive(Debug, Clone)]
pub enum RouteLimit {
    /// No `rate_limit` on the route: the top-level limiter applies, if any.
    Inherit,
    /// `requests_per_second: 0` on the route: no limit even if the top level has one.
    Off,
    /// The route's own limiter (scope: the route's name).
    On(Arc<RateLimiter>),
}

/// Counters that survive reloads of an unchanged route.
#[derive(Debug, Default)]
pub struct RouteState {
    inflight: AtomicU32,
    /// Requests refused because `max_concurrent` were in flight ([`Route::enter`]).
    pub bulkhead_rejected: AtomicU64,
}

impl RouteState {
    /// Requests holding a bulkhead slot now (only counted when `max_concurrent > 0`).
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }
}

/// Holds one of a route's `max_concurrent` slots; released on drop.
#[derive(Debug)]
pub struct BulkheadSlot(Arc<RouteState>);

impl Drop for BulkheadSlot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One validated `routes:` entry with its live state; immutable once in a
/// [`RouteTable`] (live parts sit behind atomics and `Arc`s).
#[derive(Debug)]
pub struct Route {
    /// Unique; the label in metrics and logs, and `route:NAME` in `/api/breakers` and
    /// chaos targets. Reloads match routes by it.
    pub name: Arc<str>,
    /// Lowercase, without port.
    pub host: Option<String>,
    /// Without a trailing slash, except the root `/`.
    pub prefix: String,
    /// The route's own breaker over its requests; `None`: none configured.
    pub breaker: Option<Arc<Breaker>>,
    /// What a tripped route answers; `None`: a plain 503.
    pub fallback: Option<Fallback>,
    /// Overrides `proxy.connect_timeout`; `None`: the proxy's.
    pub connect_timeout: Option<Duration>,
    /// Overrides `proxy.read_timeout`; `None`: the proxy's.
    pub read_timeout: Option<Duration>,
    /// Overrides `proxy.total_timeout` (deadline to response headers); `None`: the proxy's.
    pub total_timeout: Option<Duration>,
    /// Bulkhead: most requests in flight at once; 0 = unlimited (no slot taken).
    pub max_concurrent: u32,
    /// Which limiter the route's requests are charged to.
    pub rate_limit: RouteLimit,
    /// Counters shared with the previous table across reloads ([`RouteTable::adopt`]).
    pub state: Arc<RouteState>,
}

impl Route {
    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(want) = &self.host {
            match host {
                Some(h) if h.eq_ignore_ascii_case(want) => {}
                _ => return false,
            }
        }
        let p = self.prefix.as_str();
        p == "/"
            || (path.starts_with(p)
                && (path.len() == p.len() || path.as_bytes().get(p.len()) == Some(&b'/')))
    }

    /// Takes a bulkhead slot, or `None` when `max_concurrent` are in flight.
    pub fn enter(&self) -> Option<BulkheadSlot> {
        let s = &self.state;
        let prev = s.inflight.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max_concurrent {
            s.inflight.fetch_sub(1, Ordering::AcqRel);
            s.bulkhead_rejected.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(BulkheadSlot(s.clone()))
    }
}

/// The routes in match order (host-specific first, then longest prefix); part of
/// [`super::Resilience`], rebuilt on every config load.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

/// The host a request is for: the URI's authority (absolute-form requests) or the Host
/// header, without the port.
pub fn request_host(req: &http::request::Parts) -> Option<&str> {
    let raw = req
        .uri
        .host()
        .or_else(|| req.headers.get(http::header::HOST)?.to_str().ok())?;
    Some(match raw.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => raw,
    })
}

impl RouteTable {
    /// Sorts `routes` into match order; each route gets fresh state until `adopt`.
    pub fn new(mut routes: Vec<Route>) -> Self {
        // Host-specific before host-agnostic, then longest prefix first.
        routes.sort_by(|a, b| {
            b.host
                .is_some()
                .cmp(&a.host.is_some())
                .then(b.prefix.len().cmp(&a.prefix.len()))
        });
        RouteTable {
            routes: routes.into_iter().map(Arc::new).collect(),
        }
    }

    /// No routes configured: the proxy then skips matching entirely.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The routes in match order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    /// The route of a request: the first in match order whose host (if set) equals
    /// `host` (case-insensitive) and whose prefix matches `path` on a segment boundary.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.matches(host, path))
    }

    /// The route called `name` (exact, case-sensitive), for the admin API and reloads.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| &*r.name == name)
    }

    /// Carries runtime state over from the running table for routes that kept their
    /// name: the in-flight count always, breaker and limiter when their policy is equal.
    pub fn adopt(&mut self, old: &RouteTable) {
        for r in self.routes.iter_mut() {
            let Some(prev) = old.by_name(&r.name) else {
                continue;
            };
            let Some(r) = Arc::get_mut(r) else { continue };
            r.state = prev.state.clone();
            if let (Some(a), Some(b)) = (&r.breaker, &prev.breaker) {
                if a.policy() == b.policy() {
                    r.breaker = Some(b.clone());
                }
            }
            if let (RouteLimit::On(a), RouteLimit::On(b)) = (&r.rate_limit, &prev.rate_limit) {
                if a.policy == b.policy {
                    r.rate_limit = RouteLimit::On(b.clone());
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn route(name: &str, host: Option<&str>, prefix: &str) -> Route {
        Route {
            name: Arc::from(name),
            host: host.map(String::from),
            prefix: prefix.to_string(),
            breaker: None,
            fallback: None,
            connect_timeout: None,
            read_timeout: None,
            total_timeout: None,
            max_concurrent: 0,
            rate_limit: RouteLimit::Inherit,
            state: Arc::default(),
        }
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries_and_hosts_come_first() {
        let t = RouteTable::new(vec![
            route("root", None, "/"),
            route("api", None, "/api"),
            route("api-v2", None, "/api/v2"),
            route("admin-host", Some("admin.example.com"), "/"),
        ]);
        let name = |host, path| t.find(host, path).map(|r| r.name.to_string());
        assert_eq!(name(None, "/api/v2/users"), Some("api-v2".into()));
        assert_eq!(name(None, "/api/v2"), Some("api-v2".into()));
        assert_eq!(name(None, "/api/v1"), Some("api".into()));
        assert_eq!(name(None, "/api"), Some("api".into()));
        assert_eq!(name(None, "/apix"), Some("root".into()), "segment boundary");
        assert_eq!(
            name(Some("ADMIN.example.com"), "/api/v2"),
            Some("admin-host".into())
        );
        let only_api = RouteTable::new(vec![route("api", None, "/api")]);
        assert!(only_api.find(None, "/other").is_none());
    }

    #[test]
    fn host_is_read_from_uri_or_header_without_port() {
        let req = http::Request::get("/x")
            .header("host", "Example.com:8080")
            .body(())
            .unwrap();
        let (parts, _) = req.into_parts();
        assert_eq!(request_host(&parts), Some("Example.com"));
        let req = http::Request::get("http://a.test/x").body(()).unwrap();
        let (parts, _) = req.into_parts();
        assert_eq!(request_host(&parts), Some("a.test"));
        let req = http::Request::get("/x")
            .header("host", "[::1]:80")
            .body(())
            .unwrap();
        let (parts, _) = req.into_parts();
        assert_eq!(request_host(&parts), Some("[::1]"));
    }

    #[test]
    fn bulkhead_admits_max_concurrent_and_releases_on_drop() {
        let mut r = route("api", None, "/api");
        r.max_concurrent = 2;
        let a = r.enter().unwrap();
        let _b = r.enter().unwrap();
        assert!(r.enter().is_none());
        assert_eq!(r.state.bulkhead_rejected.load(Ordering::Relaxed), 1);
        drop(a);
        assert!(r.enter().is_some());
        assert_eq!(r.state.inflight(), 1, "the temporary slot was released too");
    }

    #[test]
    fn adopt_keeps_state_of_unchanged_routes() {
        let old = RouteTable::new(vec![route("api", None, "/api")]);
        let slot = old.routes[0].state.clone();
        slot.inflight.store(3, Ordering::Relaxed);
        let mut new = RouteTable::new(vec![route("api", None, "/api/"), route("b", None, "/b")]);
        new.adopt(&old);
        assert_eq!(new.by_name("api").unwrap().state.inflight(), 3);
        assert_eq!(new.by_name("b").unwrap().state.inflight(), 0);
    }
}
