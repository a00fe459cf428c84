//! Validation of the resilience settings into runtime types, called once from
//! `config::validate`; every problem is reported as `field: message`.
//!
//! [`Resilience`] is the bundle the data plane reads from the running `Config`: the
//! route table, the top-level rate limiter, retry pacing and budget. It is rebuilt on
//! every reload; [`adopt`] carries live state (breakers, limiters, budget, in-flight
//! counts) over from the running config where the settings did not change.

use crate::config::{
    CircuitBreakerFile, Config, ConfigIssue, FallbackFile, FileConfig, RateLimitFile,
};
use crate::resilience::breaker::{Breaker, BreakerPolicy};
use crate::resilience::classify::Classifier;
use crate::resilience::rate_limit::{LimitKey, RateLimiter, RatePolicy};
use crate::resilience::retry::{Backoff, BudgetPolicy, RetryBudget};
use crate::resilience::routes::{Fallback, Route, RouteLimit, RouteState, RouteTable};
use pingora_core::upstreams::peer::HttpPeer;
use std::collections::HashSet;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

/// Most routes in one config: matching is a linear scan, kept short on purpose.
pub const MAX_ROUTES: usize = 256;
/// Largest rate-limit table (slots); 8 bytes each, so 128 MiB at most per limiter.
pub const MAX_RATE_LIMIT_SLOTS: u32 = 1 << 24;

pub use crate::resilience::Resilience;

struct Issues<'a>(&'a mut Vec<ConfigIssue>);

impl Issues<'_> {
    fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            field: field.to_string(),
            line: None,
            message: message.into(),
        });
    }

    fn ratio(&mut self, field: &str, v: f64) {
        if !(0.0..=1.0).contains(&v) {
            self.fail(field, format!("{v} is out of range; accepted: 0.0 to 1.0"));
        }
    }
}

/// Validates a `circuit_breaker` block (top level or a route's) into a policy.
pub fn breaker_policy(
    f: &CircuitBreakerFile,
    field: &str,
    issues: &mut Vec<ConfigIssue>,
) -> BreakerPolicy {
    let mut c = Issues(issues);
    if f.consecutive_failures > 10_000 {
        c.fail(
            &format!("{field}.consecutive_failures"),
            format!(
                "{} is out of range; accepted: 0 (off) to 10000",
                f.consecutive_failures
            ),
        );
    }
    if f.half_open_probes == 0 || f.half_open_probes > 1000 {
        c.fail(
            &format!("{field}.half_open_probes"),
            format!(
                "{} is out of range; accepted: 1 to 1000",
                f.half_open_probes
            ),
        );
    }
    if f.open_for.0.is_zero() {
        c.fail(&format!("{field}.open_for"), "must be greater than zero");
    }
    if f.max_open_for.0 < f.open_for.0 {
        c.fail(
            &format!("{field}.max_open_for"),
            "must be at least `open_for`",
        );
    }
    c.ratio(&format!("{field}.failure_ratio"), f.failure_ratio);
    c.ratio(&format!("{field}.slow_call_ratio"), f.slow_call_ratio);
    c.ratio(&format!("{field}.max_ejected_share"), f.max_ejected_share);
    if f.min_requests == 0 {
        c.fail(&format!("{field}.min_requests"), "must be at least 1");
    }
    if f.window.0 < Duration::from_millis(100) {
        c.fail(&format!("{field}.window"), "must be at least 100ms");
    }
    if f.slow_call_ratio > 0.0 && f.slow_call_duration.0.is_zero() {
        c.fail(
            &format!("{field}.slow_call_duration"),
            "must be greater than zero when slow_call_ratio is set",
        );
    }
    if f.enabled
        && f.consecutive_failures == 0
        && f.failure_ratio == 0.0
        && f.slow_call_ratio == 0.0
        && !f.adaptive.enabled
    {
        c.fail(
            &format!("{field}.enabled"),
            "no trip rule is on: set consecutive_failures, failure_ratio, slow_call_ratio or adaptive.enabled, or `enabled: false`",
        );
    }
    let failure_on = match Classifier::parse(&f.failure_on) {
        Ok(cl) => cl,
        Err(e) => {
            c.fail(&format!("{field}.failure_on"), e.to_string());
            Classifier::default()
        }
    };
    let a = &f.adaptive;
    if !a.sigmas.is_finite() || !(0.5..=20.0).contains(&a.sigmas) {
        c.fail(
            &format!("{field}.adaptive.sigmas"),
            format!("{} is out of range; accepted: 0.5 to 20", a.sigmas),
        );
    }
    c.ratio(&format!("{field}.adaptive.min_increase"), a.min_increase);
    if !a.latency_factor.is_finite()
        || !(a.latency_factor == 0.0 || (1.0..=100.0).contains(&a.latency_factor))
    {
        c.fail(
            &format!("{field}.adaptive.latency_factor"),
            format!(
                "{} is out of range; accepted: 0 (off) or 1 to 100",
                a.latency_factor
            ),
        );
    }
    if a.warmup_windows == 0 || a.warmup_windows > 1000 {
        c.fail(
            &format!("{field}.adaptive.warmup_windows"),
            format!("{} is out of range; accepted: 1 to 1000", a.warmup_windows),
        );
    }
    let adaptive = crate::resilience::adaptive::AdaptivePolicy {
        enabled: a.enabled,
        sigmas: a.sigmas,
        min_increase: a.min_increase,
        latency_factor: a.latency_factor,
        warmup_windows: a.warmup_windows.max(1),
    };
    BreakerPolicy {
        adaptive,
        enabled: f.enabled,
        consecutive_failures: f.consecutive_failures,
        failure_ratio: f.failure_ratio,
        slow_call_ratio: f.slow_call_ratio,
        slow_call_duration: f.slow_call_duration.0,
        min_requests: f.min_requests.max(1),
        window: f.window.0.max(Duration::from_millis(100)),
        open_for: f.open_for.0,
        max_open_for: f.max_open_for.0.max(f.open_for.0),
        half_open_probes: f.half_open_probes.clamp(1, 1000),
        failure_on,
    }
}

/// `scope` names the limit in Redis when it is shared (`global` or the route's name).
fn rate_limiter(
    f: &RateLimitFile,
    field: &str,
    scope: &str,
    c: &mut Issues,
) -> Option<Arc<RateLimiter>> {
    let shared = match f.store.as_str() {
        "local" => None,
        "redis" => Some(Arc::from(scope)),
        other => {
            c.fail(
                &format!("{field}.store"),
                format!("`{other}` is not accepted; accepted: local, redis"),
            );
            None
        }
    };
    let rps = f.requests_per_second;
    if !rps.is_finite() || !(0.0..=1e6).contains(&rps) {
        c.fail(
            &format!("{field}.requests_per_second"),
            format!("{rps} is out of range; accepted: 0 (off) to 1000000"),
        );
        return None;
    }
    if f.burst == 0 || f.burst > 1_000_000 {
        c.fail(
            &format!("{field}.burst"),
            format!("{} is out of range; accepted: 1 to 1000000", f.burst),
        );
    }
    if f.max_clients == 0 || f.max_clients > MAX_RATE_LIMIT_SLOTS {
        c.fail(
            &format!("{field}.max_clients"),
            format!(
                "{} is out of range; accepted: 1 to {MAX_RATE_LIMIT_SLOTS}",
                f.max_clients
            ),
        );
    }
    let key = match f.key.parse::<LimitKey>() {
        Ok(k) => k,
        Err(e) => {
            c.fail(&format!("{field}.key"), e.to_string());
            LimitKey::ClientIp
        }
    };
    (rps > 0.0).then(|| {
        let slots = if key == LimitKey::All {
            1
        } else {
            f.max_clients.clamp(1, MAX_RATE_LIMIT_SLOTS) as usize
        };
        Arc::new(RateLimiter::new(RatePolicy {
            requests_per_second: rps,
            burst: f.burst.max(1),
            key,
            slots,
            shared,
        }))
    })
}

fn fallback(
    f: &FallbackFile,
    field: &str,
    timeouts: (Duration, Duration),
    c: &mut Issues,
) -> Option<Fallback> {
    if !f.upstreams.is_empty() {
        let mut peers = Vec::new();
        for (i, a) in f.upstreams.iter().enumerate() {
            match a.to_socket_addrs().map(|mut it| it.next()) {
                Ok(Some(addr)) => {
                    let mut p = HttpPeer::new(addr, false, String::new());
                    p.options.connection_timeout = Some(timeouts.0);
                    p.options.read_timeout = Some(timeouts.1);
                    peers.push(p);
                }
                _ => c.fail(
                    &format!("{field}.upstreams[{i}]"),
                    format!("`{a}` does not resolve; write `host:port`"),
                ),
            }
        }
        return Some(Fallback::Upstreams {
            peers,
            next: Default::default(),
        });
    }
    if !(200..=599).contains(&f.status) {
        c.fail(
            &format!("{field}.status"),
            format!("{} is out of range; accepted: 200 to 599", f.status),
        );
    }
    let mut headers = Vec::new();
    for (k, v) in &f.headers {
        match (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            (Ok(n), Ok(v)) if n != http::header::CONTENT_LENGTH => headers.push((n, v)),
            _ => c.fail(
                &format!("{field}.headers"),
                format!("`{k}: {v}` is not a valid header (Content-Length is set by drover)"),
            ),
        }
    }
    Some(Fallback::Static {
        status: f.status,
        headers,
        body: bytes::Bytes::from(f.body.clone()),
    })
}

/// Builds the runtime bundle; problems go to `issues`.
pub fn build(file: &FileConfig, issues: &mut Vec<ConfigIssue>) -> Resilience {
    let p = &file.proxy;
    let mut c = Issues(issues);
    let rb = &p.retry_backoff;
    if rb.max.0 < rb.base.0 {
        c.fail("proxy.retry_backoff.max", "must be at least `base`");
    }
    let bb = &p.retry_budget;
    c.ratio("proxy.retry_budget.ratio", bb.ratio);
    if bb.window.0 < Duration::from_millis(100) {
        c.fail("proxy.retry_budget.window", "must be at least 100ms");
    }
    let global_limit = rate_limiter(&file.rate_limit, "rate_limit", "global", &mut c);

    if file.routes.len() > MAX_ROUTES {
        c.fail(
            "routes",
            format!("{} routes; at most {MAX_ROUTES}", file.routes.len()),
        );
    }
    let mut names = HashSet::new();
    let mut places = HashSet::new();
    let mut routes = Vec::new();
    for (i, r) in file.routes.iter().enumerate() {
        let field = format!("routes[{i}]");
        if r.name.is_empty()
            || !r
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            c.fail(
                &format!("{field}.name"),
                "must be set, using letters, digits, `-`, `_` or `.`",
            );
        } else if !names.insert(r.name.clone()) {
            c.fail(
                &format!("{field}.name"),
                format!("`{}` is used by another route", r.name),
            );
        }
        let mut prefix = r.path_prefix.clone().unwrap_or_else(|| "/".into());
        if !prefix.starts_with('/') {
            c.fail(
                &format!("{field}.path_prefix"),
                format!("`{prefix}` must start with `/`"),
            );
        }
        while prefix.len() > 1 && prefix.ends_with('/') {
            prefix.pop();
        }
        let host = r.host.as_ref().map(|h| h.to_ascii_lowercase());
        if host
            .as_ref()
            .is_some_and(|h| h.is_empty() || h.contains('/'))
        {
            c.fail(
                &format!("{field}.host"),
                "must be a host name without a path",
            );
        }
        if !places.insert((host.clone(), prefix.clone())) {
            c.fail(
                &format!("{field}.path_prefix"),
                "another route has the same host and path prefix",
            );
        }
        let breaker = r.circuit_breaker.as_ref().map(|b| {
            let bf = format!("{field}.circuit_breaker");
            if b.max_ejected_share != CircuitBreakerFile::default().max_ejected_share {
                c.fail(
                    &format!("{bf}.max_ejected_share"),
                    "applies to worker breakers only; remove it from the route",
                );
            }
            let breaker = Breaker::new(breaker_policy(b, &bf, c.0));
            breaker.set_name(&format!("route:{}", r.name));
            Arc::new(breaker)
        });
        for (name, d) in [
            ("connect_timeout", r.connect_timeout),
            ("read_timeout", r.read_timeout),
            ("total_timeout", r.total_timeout),
        ] {
            if d.is_some_and(|d| d.0.is_zero()) {
                c.fail(&format!("{field}.{name}"), "must be greater than zero");
            }
        }
        let connect = r
            .connect_timeout
            .map(|d| d.0)
            .unwrap_or(p.connect_timeout.0);
        let read = r.read_timeout.map(|d| d.0).unwrap_or(p.read_timeout.0);
        let fallback = r
            .fallback
            .as_ref()
            .and_then(|f| fallback(f, &format!("{field}.fallback"), (connect, read), &mut c));
        let rate_limit = match &r.rate_limit {
            None => RouteLimit::Inherit,
            Some(f) => match rate_limiter(f, &format!("{field}.rate_limit"), &r.name, &mut c) {
                Some(l) => RouteLimit::On(l),
                None => RouteLimit::Off,
            },
        };
        routes.push(Route {
            name: Arc::from(r.name.as_str()),
            host,
            prefix,
            breaker,
            fallback,
            connect_timeout: r.connect_timeout.map(|d| d.0),
            read_timeout: r.read_timeout.map(|d| d.0),
            total_timeout: r.total_timeout.map(|d| d.0),
            max_concurrent: r.max_concurrent,
            rate_limit,
            state: Arc::new(RouteState::default()),
        });
    }
    Resilience {
        routes: RouteTable::new(routes),
        rate_limit: global_limit,
        backoff: Backoff {
            base: rb.base.0,
            max: rb.max.0.max(rb.base.0),
        },
        budget: Arc::new(RetryBudget::new(BudgetPolicy {
            ratio: bb.ratio,
            min_per_second: bb.min_per_second,
            window: bb.window.0.max(Duration::from_millis(100)),
        })),
        total_timeout: Some(p.total_timeout.0).filter(|d| !d.is_zero()),
        max_ejected_share: file.circuit_breaker.max_ejected_share,
        chaos_enabled: file.chaos.enabled,
    }
}

/// Carries live resilience state from the running config into a freshly loaded one
/// (called by reload before the swap).
/// Carries live state over from the running config where the settings did not change.
pub fn adopt(new: &mut Config, old: &Config) {
    if let Some(res) = Arc::get_mut(&mut new.resilience) {
        res.adopt_live_state(&old.resilience);
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use std::path::Path;

    fn err(yaml: &str) -> String {
        let yaml = format!("workers:\n  command: [/bin/sh]\n{yaml}");
        parse(&yaml, Path::new("/etc/drover/drover.yaml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn route_errors_name_the_route_field_and_line() {
        let e = err("routes:\n  - name: api\n    path_prefix: api\n  - name: api\n    path_prefix: /x\n    max_concurrent: 2\n    fallback:\n      status: 42\n");
        assert!(
            e.contains(":5: routes[0].path_prefix: `api` must start with `/`"),
            "{e}"
        );
        assert!(
            e.contains("routes[1].name: `api` is used by another route"),
            "{e}"
        );
        assert!(
            e.contains("routes[1].fallback.status: 42 is out of range"),
            "{e}"
        );
    }

    #[test]
    fn breaker_and_limit_errors() {
        let e = err("circuit_breaker:\n  failure_ratio: 1.5\n  failure_on: [5xx, teapot]\nrate_limit:\n  requests_per_second: 10\n  key: cookie:sid\n");
        assert!(
            e.contains("circuit_breaker.failure_ratio: 1.5 is out of range"),
            "{e}"
        );
        assert!(e.contains("circuit_breaker.failure_on: `teapot`"), "{e}");
        assert!(e.contains("rate_limit.key: `cookie:sid`"), "{e}");
        let e = err("circuit_breaker:\n  consecutive_failures: 0\n  failure_ratio: 0\n");
        assert!(e.contains("no trip rule is on"), "{e}");
        let e = err("routes:\n  - name: a\n    circuit_breaker:\n      max_ejected_share: 0.9\n");
        assert!(e.contains("applies to worker breakers only"), "{e}");
    }

    #[test]
    fn valid_routes_build_and_match() {
        let yaml = "workers:\n  command: [/bin/sh]\nroutes:\n  - name: api\n    path_prefix: /api/\n    max_concurrent: 4\n    circuit_breaker:\n      consecutive_failures: 2\n    fallback:\n      status: 503\n      headers:\n        content-type: application/json\n      body: '{\"degraded\":true}'\n    rate_limit:\n      requests_per_second: 5\n      key: header:x-api-key\n  - name: static\n    host: cdn.example.com\n";
        let c = parse(yaml, Path::new("/x.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let r = &c.resilience.routes;
        let api = r.find(None, "/api/users").unwrap();
        assert_eq!(&*api.name, "api");
        assert_eq!(api.prefix, "/api");
        assert!(api.breaker.is_some());
        assert!(matches!(api.rate_limit, super::RouteLimit::On(_)));
        assert_eq!(
            r.find(Some("cdn.example.com"), "/api")
                .unwrap()
                .name
                .as_ref(),
            "static"
        );
        assert!(r.find(None, "/other").is_none());
    }
}
