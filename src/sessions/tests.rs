//! Service-level tests against the memory store (Redis is covered end to end in
//! tests/sessions.rs with a real redis-server).

use super::*;
use crate::config::{CookieConfig, SameSite, WithoutCookie};
use pingora_http::ResponseHeader;
use std::time::Instant;

fn cfg() -> SessionsConfig {
    let file = crate::config::SessionsFile::default();
    let dir = std::env::temp_dir();
    let mut c = crate::config::validate_sessions(&file, |p| dir.join(p), &dir, false).unwrap();
    c.secrets = vec![b"0123456789abcdef0123456789abcdef".to_vec()];
    c.data_keys = vec![[7u8; 32]];
    c.snapshot_path = None;
    c.cookie = CookieConfig {
        name: "sid".into(),
        path: "/".into(),
        domain: None,
        http_only: true,
        secure: false,
        same_site: SameSite::Lax,
        max_age: Duration::from_secs(60),
    };
    c
}

fn service(c: &SessionsConfig) -> SessionService {
    let dir = tempfile::tempdir().unwrap();
    SessionService::new(c, dir.path(), &prometheus::Registry::new()).unwrap()
}

fn request(cookie: Option<&str>) -> RequestHeader {
    request_with("GET", cookie)
}

fn request_with(method: &str, cookie: Option<&str>) -> RequestHeader {
    let mut r = RequestHeader::build(method, b"/", None).unwrap();
    if let Some(c) = cookie {
        r.insert_header("Cookie", c).unwrap();
    }
    r
}

fn memory(svc: &SessionService) -> &MemoryStore {
    match &svc.backing {
        Backing::Memory(m) => m,
        Backing::Redis(_) => unreachable!("memory store"),
    }
}

fn cookie_of(resp: &ResponseHeader) -> String {
    let sc = resp.headers.get("set-cookie").unwrap().to_str().unwrap();
    sc.split(';').next().unwrap().to_string()
}

async fn respond(svc: &SessionService, s: &mut SessionCtx, update: Option<&str>) -> ResponseHeader {
    respond_with(svc, s, update, None).await
}

async fn respond_with(
    svc: &SessionService,
    s: &mut SessionCtx,
    update: Option<&str>,
    control: Option<&str>,
) -> ResponseHeader {
    let mut resp = ResponseHeader::build(200, None).unwrap();
    if let Some(u) = update {
        resp.insert_header("X-Drover-Session-Set", u).unwrap();
    }
    if let Some(c) = control {
        resp.insert_header("X-Drover-Session-Control", c).unwrap();
    }
    svc.on_response(s, &mut resp).await;
    resp
}

#[tokio::test]
async fn new_session_then_resume_with_data_and_pin() {
    let svc = service(&cfg());
    let mut s = svc.begin(&request(None), 0).await;
    assert_eq!(s.state, SessionState::New);
    svc.on_selected(&mut s, &Arc::from("worker-1"), false);
    let resp = respond(&svc, &mut s, Some("{\"n\":1}")).await;
    assert!(
        resp.headers.get("x-drover-session-set").is_none(),
        "update header stripped"
    );
    let sc = resp
        .headers
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        sc.contains("HttpOnly") && sc.contains("SameSite=Lax") && sc.contains("Max-Age=60"),
        "{sc}"
    );
    let c = cookie_of(&resp);

    let mut s2 = svc.begin(&request(Some(&c)), 0).await;
    assert_eq!(s2.state, SessionState::Existing);
    assert_eq!(s2.id, s.id);
    assert_eq!(svc.preference(&s2).pinned.as_deref(), Some("worker-1"));
    let mut up = RequestHeader::build("GET", b"/", None).unwrap();
    svc.annotate_request(&s2, &mut up);
    assert_eq!(up.headers.get("x-drover-session").unwrap(), "{\"n\":1}");
    assert_eq!(
        up.headers.get("x-drover-session-state").unwrap(),
        "existing"
    );
    let resp2 = respond(&svc, &mut s2, None).await;
    assert!(
        resp2.headers.get("set-cookie").is_none(),
        "cookie unchanged"
    );
    assert_eq!(svc.store().get(&s.id).await.unwrap().unwrap().hits, 2);
}

#[tokio::test]
async fn forged_cookies_get_a_fresh_session() {
    let svc = service(&cfg());
    let mut s = svc.begin(&request(None), 0).await;
    let c = cookie_of(&respond(&svc, &mut s, Some("{\"secret\":1}")).await);
    let mut forged = c.clone().into_bytes();
    let last = forged.len() - 3;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    for bad in [forged.as_str(), "sid=", "sid=garbage", "sid=%%%%"] {
        let s2 = svc.begin(&request(Some(bad)), 0).await;
        assert_eq!(s2.state, SessionState::New, "{bad}");
        assert_ne!(s2.id, s.id);
        assert!(s2.data.is_none());
    }
}

#[tokio::test]
async fn data_is_encrypted_in_the_store() {
    let svc = service(&cfg());
    let mut s = svc.begin(&request(None), 0).await;
    respond(&svc, &mut s, Some("{\"card\":\"4111\"}")).await;
    let rec = svc.store().get(&s.id).await.unwrap().unwrap();
    let stored = rec.data.unwrap();
    assert!(!stored.windows(4).any(|w| w == b"4111"));
}

#[tokio::test]
async fn oversized_updates_are_refused_and_old_data_kept() {
    let mut c = cfg();
    c.max_data_bytes = 16;
    let svc = service(&c);
    let mut s = svc.begin(&request(None), 0).await;
    let cookie = cookie_of(&respond(&svc, &mut s, Some("{\"a\":1}")).await);
    let mut s2 = svc.begin(&request(Some(&cookie)), 0).await;
    respond(&svc, &mut s2, Some(&"x".repeat(17))).await;
    assert_eq!(svc.metrics.data_refused.get(), 1);
    let s3 = svc.begin(&request(Some(&cookie)), 0).await;
    assert_eq!(s3.data.as_deref(), Some(&b"{\"a\":1}"[..]));
}

#[tokio::test]
async fn idle_expiry_keeps_the_signed_id_but_not_the_data() {
    let mut c = cfg();
    c.idle_timeout = Duration::from_millis(50);
    let svc = service(&c);
    let mut s = svc.begin(&request(None), 0).await;
    let cookie = cookie_of(&respond(&svc, &mut s, Some("{\"a\":1}")).await);
    tokio::time::sleep(Duration::from_millis(80)).await;
    let s2 = svc.begin(&request(Some(&cookie)), 0).await;
    // The id is ours (we signed it): a fresh session under it, without the old data.
    assert_eq!(s2.state, SessionState::New);
    assert_eq!(s2.id, s.id);
    assert!(s2.data.is_none());
    assert_eq!(svc.metrics.rejected[3].get(), 0);
}

#[tokio::test]
async fn cookieless_requests_leave_no_record_until_data_or_the_cookie_comes_back() {
    let svc = service(&cfg());
    let worker: Arc<str> = Arc::from("worker-2");
    let mut cookies = Vec::new();
    for _ in 0..1000 {
        let mut s = svc.begin(&request(None), 0).await;
        assert_eq!(s.state, SessionState::New);
        svc.on_selected(&mut s, &worker, false);
        cookies.push(cookie_of(&respond(&svc, &mut s, None).await));
    }
    assert_eq!(
        memory(&svc).len(),
        0,
        "a cookieless request stored a record"
    );
    assert_eq!(svc.metrics.created.get(), 0);
    // The cookie comes back: the record appears, pinned where the first request went.
    let mut s = svc.begin(&request(Some(&cookies[0])), 0).await;
    assert_eq!(s.state, SessionState::New);
    assert_eq!(svc.preference(&s).pinned.as_deref(), Some("worker-2"));
    assert!(svc.preference(&s).sticky);
    svc.on_selected(&mut s, &worker, false);
    let resp = respond(&svc, &mut s, None).await;
    assert!(
        resp.headers.get("set-cookie").is_none(),
        "same id, same cookie"
    );
    assert_eq!(memory(&svc).len(), 1);
    assert_eq!(svc.metrics.created.get(), 1);
    let s = svc.begin(&request(Some(&cookies[0])), 0).await;
    assert_eq!(s.state, SessionState::Existing);
    assert_eq!(svc.preference(&s).pinned.as_deref(), Some("worker-2"));
    // Data set on a first request creates the record at once.
    let mut s = svc.begin(&request(None), 0).await;
    respond(&svc, &mut s, Some("{\"x\":1}")).await;
    assert_eq!(memory(&svc).len(), 2);
}

#[tokio::test]
async fn first_requests_are_balanced_and_ip_hashing_is_opt_in() {
    let svc = service(&cfg());
    let s = svc.begin(&request(None), 42).await;
    assert!(
        !svc.preference(&s).sticky,
        "the strategy places a first request"
    );
    let mut c = cfg();
    c.without_cookie = WithoutCookie::ClientIp;
    let svc = service(&c);
    let s = svc.begin(&request(None), 42).await;
    let p = svc.preference(&s);
    assert!(p.sticky);
    assert_eq!(p.key, 42);
}

#[tokio::test]
async fn a_read_never_waits_for_a_writer_of_its_session() {
    let svc = service(&cfg());
    let mut s = svc.begin(&request(None), 0).await;
    let cookie = cookie_of(&respond(&svc, &mut s, Some("{}")).await);
    let writer = svc.begin(&request_with("POST", Some(&cookie)), 0).await;
    assert_eq!(
        svc.locked_sessions(),
        1,
        "the POST holds its session's lock"
    );
    let start = Instant::now();
    let reader = svc.begin(&request(Some(&cookie)), 0).await;
    assert_eq!(reader.state, SessionState::Existing);
    assert!(start.elapsed() < Duration::from_millis(50));
    // A second writer waits for the first, then runs.
    let mut c = cfg();
    c.lock_timeout = Duration::from_millis(100);
    svc.apply(&c);
    let start = Instant::now();
    let second = svc.begin(&request_with("POST", Some(&cookie)), 0).await;
    assert!(start.elapsed() >= Duration::from_millis(90));
    assert_eq!(second.state, SessionState::Existing);
    assert_eq!(svc.metrics.lock_timeouts.get(), 1);
    drop((writer, second));
    assert_eq!(svc.locked_sessions(), 0, "locks are per id and freed");
}

#[tokio::test]
async fn a_writer_with_a_body_takes_the_lock_only_after_acquire() {
    let svc = service(&cfg());
    let mut s = svc.begin(&request(None), 0).await;
    let cookie = cookie_of(&respond(&svc, &mut s, Some("{\"n\":1}")).await);
    let mut req = request_with("POST", Some(&cookie));
    req.insert_header("Content-Length", "5").unwrap();
    let mut w = svc.begin(&req, 0).await;
    assert!(w.lock_pending());
    assert_eq!(
        svc.locked_sessions(),
        0,
        "nothing held while the body is read"
    );
    svc.acquire(&mut w, true, 0).await;
    assert!(!w.lock_pending());
    assert_eq!(svc.locked_sessions(), 1);
    assert_eq!(w.data.as_deref(), Some(&b"{\"n\":1}"[..]));
    respond(&svc, &mut w, None).await;
    assert_eq!(svc.locked_sessions(), 0, "released at the response head");
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_modify_write_loses_no_update() {
    let svc = Arc::new(service(&cfg()));
    let mut s = svc.begin(&request(None), 0).await;
    let cookie = cookie_of(&respond(&svc, &mut s, Some("0")).await);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let svc = svc.clone();
        let cookie = cookie.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = svc.begin(&request_with("POST", Some(&cookie)), 0).await;
            let n: u64 = std::str::from_utf8(s.data.as_deref().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            tokio::task::yield_now().await;
            respond(&svc, &mut s, Some(&(n + 1).to_string())).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = svc.begin(&request(Some(&cookie)), 0).await;
    assert_eq!(s.data.as_deref(), Some(&b"100"[..]));
    assert_eq!(svc.metrics.write_conflicts.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_unserialised_writes_are_detected_not_hidden() {
    let svc = Arc::new(service(&cfg()));
    let mut s = svc.begin(&request(None), 0).await;
    let cookie = cookie_of(&respond(&svc, &mut s, Some("0")).await);
    // 50 GETs read the same version, then all try to write.
    let mut readers = Vec::new();
    for _ in 0..50 {
        readers.push(svc.begin(&request(Some(&cookie)), 0).await);
    }
    for mut r in readers {
        let n: u64 = std::str::from_utf8(r.data.as_deref().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        respond(&svc, &mut r, Some(&(n + 1).to_string())).await;
    }
    let s = svc.begin(&request(Some(&cookie)), 0).await;
    assert_eq!(s.data.as_deref(), Some(&b"1"[..]), "first writer wins");
    assert_eq!(
        svc.metrics.write_conflicts.get(),
        49,
        "every lost update counted"
    );
}

#[tokio::test]
async fn regenerate_moves_the_data_to_a_new_id_and_kills_the_old_one() {
    let svc = service(&cfg());
    let mut s = svc.begin(&request(None), 0).await;
    svc.on_selected(&mut s, &Arc::from("worker-1"), false);
    let old_cookie = cookie_of(&respond(&svc, &mut s, Some("{\"user\":null}")).await);
    let old_id = s.id;
    let mut login = svc.begin(&request_with("POST", Some(&old_cookie)), 0).await;
    svc.on_selected(&mut login, &Arc::from("worker-1"), false);
    let resp = respond_with(
        &svc,
        &mut login,
        Some("{\"user\":\"ann\"}"),
        Some("regenerate"),
    )
    .await;
    assert!(resp.headers.get("x-drover-session-control").is_none());
    let new_cookie = cookie_of(&resp);
    assert_ne!(new_cookie, old_cookie);
    let s2 = svc.begin(&request(Some(&new_cookie)), 0).await;
    assert_eq!(s2.state, SessionState::Existing);
    assert_ne!(s2.id, old_id);
    assert_eq!(s2.data.as_deref(), Some(&b"{\"user\":\"ann\"}"[..]));
    assert_eq!(svc.preference(&s2).pinned.as_deref(), Some("worker-1"));
    // The old cookie no longer names any session: a fresh one, with a new cookie.
    let mut stale = svc.begin(&request(Some(&old_cookie)), 0).await;
    assert_eq!(stale.state, SessionState::New);
    assert_ne!(stale.id, old_id);
    assert!(stale.data.is_none());
    assert!(svc.take_set_cookie(&mut stale).is_some());
    assert_eq!(svc.metrics.rejected[3].get(), 1);
}

#[tokio::test]
async fn destroy_removes_the_record_and_expires_the_cookie() {
    let svc = service(&cfg());
    let mut s = svc.begin(&request(None), 0).await;
    let cookie = cookie_of(&respond(&svc, &mut s, Some("{\"user\":\"ann\"}")).await);
    assert_eq!(memory(&svc).len(), 1);
    let mut logout = svc.begin(&request_with("POST", Some(&cookie)), 0).await;
    let resp = respond_with(&svc, &mut logout, None, Some("destroy")).await;
    let sc = resp.headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(sc.starts_with("sid=;") && sc.contains("Max-Age=0"), "{sc}");
    assert_eq!(memory(&svc).len(), 0);
    let after = svc.begin(&request(Some(&cookie)), 0).await;
    assert_eq!(after.state, SessionState::New);
    assert!(after.data.is_none());
}

#[tokio::test]
async fn migration_repins_only_when_told() {
    let svc = service(&cfg());
    // A first request's cookie names where it was finally served (after retries).
    let mut first = svc.begin(&request(None), 0).await;
    svc.on_selected(&mut first, &Arc::from("worker-1"), false);
    svc.on_selected(&mut first, &Arc::from("worker-0"), false);
    let cookie = cookie_of(&respond(&svc, &mut first, Some("{}")).await);
    let mut s = svc.begin(&request(Some(&cookie)), 0).await;
    assert_eq!(svc.preference(&s).pinned.as_deref(), Some("worker-0"));
    svc.on_selected(&mut s, &Arc::from("worker-1"), false);
    assert_eq!(
        svc.preference(&s).pinned.as_deref(),
        Some("worker-0"),
        "a detour keeps the pin"
    );
    svc.on_selected(&mut s, &Arc::from("worker-1"), true);
    assert_eq!(svc.preference(&s).pinned.as_deref(), Some("worker-1"));
    assert_eq!(svc.metrics.migrated.get(), 1);
}

#[tokio::test]
async fn custom_header_names_are_stripped_from_clients_and_sent_to_workers() {
    let mut c = cfg();
    c.id_header = http::HeaderName::from_static("session-id");
    c.state_header = http::HeaderName::from_static("session-state");
    let svc = service(&c);
    // Only the names outside the `x-drover-` rule need a per-request check.
    assert_eq!(
        svc.policy.load().wire.extra_strip,
        vec![c.id_header.clone(), c.state_header.clone()]
    );
    let mut req = request(None);
    req.insert_header("Session-Id", "forged").unwrap();
    req.insert_header("Session-State", "existing").unwrap();
    req.insert_header("X-Keep", "1").unwrap();
    svc.strip_client_headers(&mut req);
    assert!(req.headers.get("session-id").is_none());
    assert!(req.headers.get("session-state").is_none());
    assert_eq!(req.headers.get("x-keep").unwrap(), "1");

    let s = svc.begin(&req, 0).await;
    let mut up = request(None);
    svc.annotate_request(&s, &mut up);
    assert_eq!(up.headers.get("session-id").unwrap(), s.id.hex().as_str());
    assert_eq!(up.headers.get("session-state").unwrap(), "new");
    // On the wire the names are written as configured (lower case), once each.
    let mut wire = Vec::new();
    up.header_to_h1_wire(&mut wire);
    let wire = String::from_utf8(wire).unwrap();
    assert_eq!(wire.matches("session-id: ").count(), 1, "{wire}");
    assert_eq!(wire.matches("session-state: new").count(), 1, "{wire}");
}

#[test]
fn default_header_names_need_no_extra_stripping() {
    let svc = service(&cfg());
    assert!(svc.policy.load().wire.extra_strip.is_empty());
}
