// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! Operator security (issue 21), end to end against the real binary: the admin plane
//! against cross-site pages, DNS rebinding and connection floods; the runtime folder
//! against another local user; workers' environment; secrets in what drover shows;
//! worker metrics, header-keyed rate limits, secret file modes and worker log lines.

#[path = "support/cdp.rs"]
#[allow(dead_code)]
mod cdp;
mod common;
#[path = "support/promtext.rs"]
mod promtext;

use base64::Engine;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "operator-token-0123456789";

/// One request on a fresh connection (`Connection: close`): (status, body).
fn raw(port: u16, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A POST on its own connection (a refused request's unread body may end the connection).
fn post(d: &Drover, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    request(&agent(), "POST", &d.admin_url(path), headers, body).expect("admin reachable")
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `script` with `sh -c` as user nobody (group nogroup, no supplementary groups).
fn as_nobody(script: &str) {
    let st = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .status()
        .expect("setpriv (util-linux)");
    assert!(st.success(), "as nobody: {script}");
}

/// Runs drover with `args` and `env` (XDG_RUNTIME_DIR and DROVER_RUNTIME_DIR removed)
/// and waits at most `timeout` for it to exit: (exit code, stdout + stderr).
fn run_drover(args: &[&str], env: &[(&str, &Path)], timeout: Duration) -> (Option<i32>, String) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(drover_bin());
    cmd.args(args)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("DROVER_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(out.reopen().unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start drover");
    let deadline = Instant::now() + timeout;
    let code = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        code,
        std::fs::read_to_string(out.path()).unwrap_or_default(),
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

// ---------------------------------------------------------------------------------
// 1. The admin plane
// ---------------------------------------------------------------------------------

#[test]
fn cross_site_and_tokenless_admin_requests_change_nothing_and_run_nothing() {
    let d = Drover::start(2, "");
    let marker = d.dir.path().join("pwned");
    let deploy = format!(
        r#"{{"command":["sh","-c","touch {}; exec sleep 30"],"health_timeout":"2s"}}"#,
        marker.display()
    );
    let pids = d.worker_pids();
    let evil = "http://evil.example";

    // The issue's requests, as a page elsewhere sends them (simple, no preflight).
    let r = post(
        &d,
        "/api/deploy",
        &[("origin", evil), ("content-type", "text/plain")],
        Some(&deploy),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = post(
        &d,
        "/api/strategy",
        &[("origin", evil), ("content-type", "text/plain")],
        Some(r#"{"strategy":"random"}"#),
    );
    assert_eq!(r.status, 403);
    let r = post(
        &d,
        "/api/workers/restart",
        &[
            ("origin", evil),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        Some("a=b"),
    );
    assert_eq!(r.status, 403);
    let r = post(&d, "/api/workers/0/drain", &[("origin", evil)], None);
    assert_eq!(r.status, 403);
    let r = post(
        &d,
        "/api/reload",
        &[("sec-fetch-site", "cross-site")],
        Some(""),
    );
    assert_eq!(r.status, 403);

    // Without a configured token, loopback no longer means tokenless: 401.
    let json = ("content-type", "application/json");
    let r = post(&d, "/api/deploy", &[json], Some(&deploy));
    assert_eq!(r.status, 401, "{}", r.body);
    let r = post(
        &d,
        "/api/strategy",
        &[json],
        Some(r#"{"strategy":"random"}"#),
    );
    assert_eq!(r.status, 401);

    // The generated token: private, logged, and it works only with a JSON content type
    // and the configured command.
    let token_file = d.dir.path().join("run/admin-token");
    assert_eq!(mode(&token_file), 0o600);
    assert!(
        d.log().contains(&format!(
            "generated an admin token in {}",
            token_file.display()
        )),
        "{}",
        d.log()
    );
    let token = d.admin_token().unwrap();
    assert_eq!(token.len(), 64);
    let bearer = format!("Bearer {token}");
    let auth = ("authorization", bearer.as_str());
    let r = post(
        &d,
        "/api/strategy",
        &[auth, ("content-type", "text/plain")],
        Some(r#"{"strategy":"random"}"#),
    );
    assert_eq!(r.status, 415, "{}", r.body);
    let r = post(&d, "/api/deploy", &[auth, json], Some(&deploy));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("allow_deploy_command"), "{}", r.body);
    let r = post(
        &d,
        "/api/deploy",
        &[auth, json],
        Some(r#"{"env":{"LD_PRELOAD":"/tmp/evil.so"}}"#),
    );
    assert_eq!(r.status, 403, "{}", r.body);

    std::thread::sleep(Duration::from_secs(1));
    assert!(!marker.exists(), "the command ran");
    let status = d.status();
    assert_eq!(status["strategy"], "round_robin");
    assert_eq!(status["deploy"]["state"], "idle");
    assert_eq!(d.worker_pids(), pids, "no worker was restarted or drained");
    let text = d.metrics();
    assert_eq!(
        metric_value(&text, "drover_admin_refused_total{reason=\"cross_site\"}"),
        5.0
    );
    assert_eq!(
        metric_value(&text, "drover_admin_refused_total{reason=\"token\"}"),
        2.0
    );
    // The token does its job.
    let r = post(
        &d,
        "/api/strategy",
        &[auth, json],
        Some(r#"{"strategy":"random"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn host_must_name_the_admin_listener_dns_rebinding_is_refused() {
    let d = Drover::start_opts(Options {
        workers: 1,
        admin_keys: "  allowed_hosts: [admin.test]\n",
        ..Options::default()
    });
    let p = d.admin_port;
    let get = |path: &str, host: &str| {
        raw(
            p,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
    };
    let (status, body) = get("/api/config", &format!("evil.example:{p}"));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("allowed_hosts"), "{body}");
    assert_eq!(get("/metrics", &format!("evil.example:{p}")).0, 403);
    assert_eq!(get("/api/status", "localhost.evil.example").0, 403);
    for host in [
        format!("127.0.0.1:{p}"),
        format!("localhost:{p}"),
        format!("[::1]:{p}"),
        format!("admin.test:{p}"),
    ] {
        assert_eq!(get("/api/config", &host).0, 200, "{host}");
    }
    assert_eq!(d.metric("drover_admin_refused_total{reason=\"host\"}"), 3.0);
}

/// A plain HTTP server for one page, on its own port (another origin than the admin).
fn serve_page(html: String) -> (u16, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        l.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                        html.len(),
                        html
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    (port, h)
}

#[test]
fn a_page_on_another_origin_in_chromium_can_neither_post_nor_open_the_stream() {
    let d = Drover::start(2, "");
    let marker = d.dir.path().join("pwned-by-page");
    let a = d.admin_port;
    let html = format!(
        r#"<!doctype html><html><body><script>
window.results = {{}};
const admin = "http://127.0.0.1:{a}";
const send = (path, type, body) => fetch(admin + path, {{ method: "POST", mode: "no-cors", headers: type ? {{ "content-type": type }} : {{}}, body }}).then(() => "sent", (e) => "error " + e);
(async () => {{
  results.deploy = await send("/api/deploy", "text/plain", JSON.stringify({{ command: ["sh", "-c", "touch {m}; exec sleep 30"], health_timeout: "2s" }}));
  results.strategy = await send("/api/strategy", "text/plain", JSON.stringify({{ strategy: "random" }}));
  results.restart = await send("/api/workers/restart", "application/x-www-form-urlencoded", "a=b");
  results.drain = await send("/api/workers/0/drain", null, null);
  results.ws = await new Promise((resolve) => {{
    let msgs = 0;
    const ws = new WebSocket("ws://127.0.0.1:{a}/api/stream");
    ws.onmessage = () => {{ msgs++; }};
    ws.onopen = () => setTimeout(() => resolve("open, messages: " + msgs), 2500);
    ws.onerror = () => resolve("error, messages: " + msgs);
    ws.onclose = () => resolve("closed, messages: " + msgs);
    setTimeout(() => resolve("timeout, messages: " + msgs), 6000);
  }});
  results.done = true;
}})();
</script></body></html>"#,
        m = marker.display()
    );
    let (page_port, _server) = serve_page(html);
    let pids = d.worker_pids();
    let browser = cdp::Browser::launch().expect("headless chromium (apt-get install -y chromium)");
    let mut page = browser.page().expect("page target");
    page.navigate(&format!("http://127.0.0.1:{page_port}/"))
        .unwrap();
    page.wait_for(
        "window.results && window.results.done",
        Duration::from_secs(20),
    )
    .expect("the page ran its attack");
    let results = page.eval("JSON.stringify(window.results)").unwrap();
    let ws = page.eval("window.results.ws").unwrap();
    assert!(
        ws.as_str()
            .is_some_and(|s| s.ends_with("messages: 0") && !s.starts_with("open")),
        "the cross-origin WebSocket opened: {results}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(!marker.exists(), "the page ran a command: {results}");
    assert_eq!(d.status()["strategy"], "round_robin");
    assert_eq!(d.worker_pids(), pids);
    // The requests reached drover and drover refused them (not just the browser).
    let refused = d.metric("drover_admin_refused_total{reason=\"cross_site\"}");
    assert!(refused >= 5.0, "{refused} refused; {results}");

    // The dashboard on the admin's own origin still works on the defaults.
    page.navigate(&d.admin_url("/dashboard")).unwrap();
    page.wait_for(
        "Number(document.body.dataset.updates) >= 2 && document.getElementById('conn').textContent === 'live'",
        Duration::from_secs(20),
    )
    .expect("same-origin dashboard receives snapshots over the WebSocket");
}

#[test]
fn stream_needs_the_operator_token_a_same_origin_and_a_free_subscriber_place() {
    use tungstenite::client::IntoClientRequest;
    let d = Drover::start_opts(Options {
        workers: 1,
        token: Some(TOKEN),
        admin_keys: "  max_stream_subscribers: 2\n",
        ..Options::default()
    });
    let url = format!("ws://127.0.0.1:{}/api/stream", d.admin_port);
    let status_of = |r: Result<_, tungstenite::Error>| match r {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Ok(_) => 101,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(status_of(tungstenite::connect(url.as_str())), 401);
    let subprotocol = format!(
        "drover.live, drover-token.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(TOKEN)
    );
    let with = |extra: &[(&str, String)]| {
        let mut req = url.as_str().into_client_request().unwrap();
        for (k, v) in extra {
            let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
            req.headers_mut().insert(name, v.parse().unwrap());
        }
        tungstenite::connect(req)
    };
    let wrong = format!(
        "drover.live, drover-token.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("wrong-token-wrong-token")
    );
    assert_eq!(status_of(with(&[("sec-websocket-protocol", wrong)])), 401);
    assert_eq!(
        status_of(with(&[
            ("sec-websocket-protocol", subprotocol.clone()),
            ("origin", "http://evil.example".into()),
        ])),
        403
    );
    let (mut first, resp) = with(&[("sec-websocket-protocol", subprotocol.clone())]).unwrap();
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("drover.live"),
        "the server selects drover.live and never echoes the token"
    );
    let msg = first.read().unwrap();
    let snapshot: serde_json::Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    assert!(snapshot.is_object());
    let (_second, _) = with(&[("authorization", format!("Bearer {TOKEN}"))]).unwrap();
    assert_eq!(
        status_of(with(&[("authorization", format!("Bearer {TOKEN}"))])),
        503,
        "a third subscriber is over max_stream_subscribers"
    );
    drop(first);
    assert!(
        wait_until(Duration::from_secs(5), || with(&[(
            "authorization",
            format!("Bearer {TOKEN}")
        )])
        .is_ok()),
        "a place frees when a subscriber leaves"
    );
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn admin_listener_survives_2000_idle_connections_with_the_data_plane_unaffected() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard >= 2200,
        "this test needs 2,200 file descriptors (hard limit {hard})"
    );

    let d = Drover::start(2, "");
    let fds_before = open_fds(d.pid());
    let admin: SocketAddr = format!("127.0.0.1:{}", d.admin_port).parse().unwrap();
    let started = Instant::now();
    let mut idle = Vec::new();
    let mut refused_connects = 0;
    for i in 0..2000 {
        match TcpStream::connect_timeout(&admin, Duration::from_secs(3)) {
            Ok(mut s) => {
                // The first 50 send half a request head and stop (slowloris).
                if i < 50 {
                    let _ = s.write_all(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n");
                }
                idle.push(s);
            }
            Err(_) => refused_connects += 1,
        }
    }
    let flood_sent = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let fds_during = open_fds(d.pid());
    eprintln!(
        "flood: {} connections open from the test ({refused_connects} connects failed) in {:?}; drover fds {fds_before} -> {fds_during}",
        idle.len(),
        started.elapsed()
    );
    assert!(
        fds_during <= fds_before + 256 + 16,
        "drover holds {fds_during} fds (was {fds_before}): the connection cap did not hold"
    );

    // The data plane serves every request during the flood.
    let a = agent();
    for _ in 0..200 {
        let r = request(&a, "GET", &d.url("/"), &[], None).expect("data plane reachable");
        assert_eq!(r.status, 200);
    }
    // The admin answers again within the header timeout (10 s) while every idle socket
    // of the test is still open.
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(15), || {
            request(&agent(), "GET", &d.admin_url("/readyz"), &[], None)
                .map(|r| r.status == 200)
                .unwrap_or(false)
        }),
        "admin did not recover"
    );
    eprintln!("flood: admin answered again after {:?}", t.elapsed());
    // The half-sent heads were closed by drover.
    let mut closed = 0;
    for s in idle.iter_mut().take(50) {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 256];
        loop {
            match s.read(&mut b) {
                Ok(0) => {
                    closed += 1;
                    break;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    closed += 1;
                    break;
                }
            }
        }
    }
    assert_eq!(
        closed, 50,
        "slow request heads are cut at the header timeout"
    );
    // Every idle connection drover accepted is closed once its header timeout (10 s)
    // passes: at the latest 10 s after the last one was opened (plus slack for load).
    let pid = d.pid();
    let deadline = flood_sent + Duration::from_secs(14);
    let back = wait_until(deadline.saturating_duration_since(Instant::now()), || {
        open_fds(pid) <= fds_before + 16
    });
    let fds_after = open_fds(pid);
    eprintln!(
        "flood: drover fds {:?} after the flood began: {fds_after}",
        started.elapsed()
    );
    assert!(back, "{fds_after} fds (was {fds_before})");
    drop(idle);
    let text = d.metrics();
    eprintln!(
        "flood: refused at the connection cap: {}",
        metric_value(
            &text,
            "drover_admin_refused_total{reason=\"connection_cap\"}"
        )
    );
    let probes = (
        metric_value(&text, "drover_health_checks_total{result=\"pass\"}"),
        metric_value(&text, "drover_health_checks_total{result=\"fail\"}"),
    );
    eprintln!("flood: health probes (pass, fail) over the test: {probes:?}");
    assert!(
        !d.log().contains("out of rotation"),
        "a worker was taken out of rotation: {}",
        d.log()
    );
    assert_eq!(d.healthy_workers(), 2);
    assert!(!d.log().contains("Accept() failed"), "{}", d.log());
    assert!(!d.log().contains("os error 24"), "{}", d.log());
}

#[test]
fn config_and_status_hide_secrets_and_need_the_operator_token() {
    let worker = worker_bin().display().to_string();
    let d = Drover::start_opts(Options {
        workers: 1,
        token: Some(TOKEN),
        command: Some(vec![
            worker,
            "--db-password=hunter2".into(),
            "--api-key".into(),
            "k3yk3yk3y".into(),
            "postgres://app:pw@d@db:5432/app".into(),
        ]),
        worker_keys: "  env:\n    DB_PASSWORD: envsecret\n",
        extra: "observability:\n  alerts:\n    webhook: http://127.0.0.1:9/services/T000/B000/XYZSECRET?token=abc\nsessions:\n  enabled: false\n  store: redis\n  redis:\n    url: redis://:p@ss@127.0.0.1:6390/0\n",
        ..Options::default()
    });
    for path in ["/api/config", "/api/status", "/api/sessions", "/api/live"] {
        let r = request(&agent(), "GET", &d.admin_url(path), &[], None).unwrap();
        assert_eq!(r.status, 401, "{path} without the operator's token");
    }
    let config = d.admin_get("/api/config");
    let status = d.admin_get("/api/status");
    assert_eq!((config.status, status.status), (200, 200));
    let shown = format!("{}\n{}", config.body, status.body);
    for secret in [
        "hunter2",
        "k3yk3yk3y",
        "pw@d",
        "app:pw",
        "XYZSECRET",
        "token=abc",
        "p@ss",
        ":p@",
        "envsecret",
        TOKEN,
    ] {
        assert!(!shown.contains(secret), "`{secret}` shown: {shown}");
    }
    for kept in [
        "127.0.0.1:6390",
        "db:5432",
        "--db-password=<redacted>",
        "http://127.0.0.1:9/<redacted>",
    ] {
        assert!(shown.contains(kept), "`{kept}` missing: {shown}");
    }
    let log = d.log();
    assert!(!log.contains("hunter2") && !log.contains(TOKEN), "{log}");
}

#[test]
fn deploying_another_command_needs_allow_deploy_command() {
    let worker = worker_bin().display().to_string();
    let d = Drover::start_opts(Options {
        workers: 1,
        token: Some(TOKEN),
        admin_keys: "  allow_deploy_command: true\n",
        ..Options::default()
    });
    let marker = d.dir.path().join("deployed");
    let body = serde_json::json!({
        "version": "v2",
        "command": ["sh", "-c", format!("touch {}; exec {worker}", marker.display())],
        "health_timeout": "20s",
    })
    .to_string();
    let r = d.admin_post("/api/deploy", &body);
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        wait_until(Duration::from_secs(25), || d.status()["deploy"]["state"]
            == "done"),
        "{}",
        d.status()["deploy"]
    );
    assert!(marker.exists(), "the allowed command ran");
}

// ---------------------------------------------------------------------------------
// 2. The runtime folder
// ---------------------------------------------------------------------------------

/// A config without `runtime_dir` (so the default applies) in a private folder.
fn default_runtime_config(dir: &Path, port: u16, admin: u16) -> PathBuf {
    let yaml = format!(
        "listen: 127.0.0.1:{port}\nadmin:\n  listen: 127.0.0.1:{admin}\nhealth_check:\n  interval: 200ms\n{}sessions:\n  enabled: true\n",
        workers_yaml(1, "")
    );
    let p = dir.join("drover.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

#[test]
fn a_runtime_folder_planted_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: acting as another user (setpriv to nobody) needs root");
        return;
    }
    // A sticky, world-writable temporary folder like /tmp, as TMPDIR.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let conf_dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = default_runtime_config(conf_dir.path(), port, admin);
    let target = tmp.path().join(format!("drover-0-{port}"));
    let t = target.display();
    let start = || {
        run_drover(
            &["-c", config.to_str().unwrap()],
            &[("TMPDIR", tmp.path())],
            Duration::from_secs(15),
        )
    };

    // Created before drover's first start, open to all, with planted keys and snapshot.
    as_nobody(&format!(
        "mkdir -m 0777 {t} && printf '%064d\\n' 1 > {t}/session-secret && printf '%064d\\n' 2 > {t}/session-data-key && printf 'DRVSESS1' > {t}/sessions.snapshot && chmod 0666 {t}/*"
    ));
    let (code, out) = start();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("{t} is owned by uid 65534")), "{out}");
    assert!(out.contains("Fix:"), "{out}");
    assert!(!out.contains("restored"), "{out}");

    // The same folder with a private mode: still another user's.
    std::fs::remove_dir_all(&target).unwrap();
    as_nobody(&format!("mkdir -m 0700 {t}"));
    let (code, out) = start();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("owned by uid 65534"), "{out}");

    // A link to a folder the other user controls.
    std::fs::remove_dir_all(&target).unwrap();
    let theirs = tmp.path().join("theirs");
    as_nobody(&format!(
        "mkdir -m 0777 {} && ln -s {} {t}",
        theirs.display(),
        theirs.display()
    ));
    let (code, out) = start();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("is a symbolic link"), "{out}");
    assert_eq!(
        std::fs::read_dir(&theirs).unwrap().count(),
        0,
        "nothing written through the link"
    );

    // Without a planted folder, drover creates a private one and runs.
    std::fs::remove_file(&target).unwrap();
    let mut child = Command::new(drover_bin())
        .args(["-c", config.to_str().unwrap()])
        .env("TMPDIR", tmp.path())
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("DROVER_RUNTIME_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = wait_until(Duration::from_secs(20), || {
        request(
            &agent(),
            "GET",
            &format!("http://127.0.0.1:{admin}/readyz"),
            &[],
            None,
        )
        .map(|r| r.status == 200)
        .unwrap_or(false)
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    assert!(
        ready,
        "drover did not start on a fresh default runtime folder"
    );
    assert_eq!(mode(&target), 0o700);
    assert_eq!(std::fs::metadata(&target).unwrap().uid(), 0);
    for f in [
        "admin-token",
        "session-secret",
        "session-data-key",
        "drover.pid",
    ] {
        assert_eq!(mode(&target.join(f)), 0o600, "{f}");
    }
}

#[test]
fn runtime_files_are_private_links_are_replaced_and_a_fifo_does_not_hang_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    let victim = dir.path().join("victim");
    let victim2 = dir.path().join("victim2");
    std::fs::write(&victim, "precious").unwrap();
    std::fs::write(&victim2, "precious too").unwrap();
    std::os::unix::fs::symlink(&victim, run.join("drover.pid")).unwrap();
    std::os::unix::fs::symlink(&victim2, run.join("sessions.snapshot.tmp")).unwrap();
    nix::unistd::mkfifo(
        &run.join("sessions.snapshot"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();

    // The harness's config uses `dir/run` as runtime_dir; put this dir in its place.
    let mut d = Drover::prepare(&Options {
        workers: 1,
        extra: "sessions:\n  enabled: true\n",
        ..Options::default()
    });
    let harness_dir = d.dir.path().to_path_buf();
    std::fs::rename(&run, harness_dir.join("run")).unwrap();
    let run = harness_dir.join("run");
    let t = Instant::now();
    d.spawn();
    d.wait_ready(1);
    eprintln!("ready {:?} after start with a FIFO snapshot", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(15));
    assert!(
        d.log().contains("snapshot not loaded") && d.log().contains("FIFO"),
        "{}",
        d.log()
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let pid_meta = std::fs::symlink_metadata(run.join("drover.pid")).unwrap();
    assert!(pid_meta.is_file(), "the link was replaced by a file");
    assert_eq!(mode(&run.join("drover.pid")), 0o600);
    assert_eq!(
        std::fs::read_to_string(run.join("drover.pid"))
            .unwrap()
            .trim(),
        d.pid().to_string()
    );
    // A session, then a graceful stop writes the snapshot over the FIFO.
    assert_eq!(d.get("/session/incr").unwrap().status, 200);
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), Some(0), "{}", d.log());
    assert_eq!(std::fs::read_to_string(&victim2).unwrap(), "precious too");
    let snap = run.join("sessions.snapshot");
    assert!(std::fs::symlink_metadata(&snap).unwrap().is_file());
    assert_eq!(mode(&snap), 0o600);
    for f in ["admin-token", "session-secret", "session-data-key"] {
        assert_eq!(mode(&run.join(f)), 0o600, "{f}");
    }

    // A key loosened to 0644 stops the start, saying how to fix it.
    std::fs::set_permissions(
        run.join("session-secret"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (code, out) = run_drover(
        &["-c", d.config_path.to_str().unwrap()],
        &[],
        Duration::from_secs(15),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("session-secret has mode 0644") && out.contains("chmod 600"),
        "{out}"
    );
}

#[test]
fn upgrade_refuses_to_signal_a_pid_that_is_not_drover() {
    let d = Drover::start(1, "");
    let mut other = Command::new("sleep").arg("60").spawn().unwrap();
    let pid_file = d.dir.path().join("run/drover.pid");
    std::fs::write(&pid_file, format!("{}\n", other.id())).unwrap();
    std::fs::set_permissions(&pid_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out) = run_drover(
        &["-u", "-c", d.config_path.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    );
    let alive = process_alive(other.id());
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not drover"), "{out}");
    assert!(alive, "drover -u signalled an unrelated process");
    assert_eq!(
        d.get("/").unwrap().status,
        200,
        "the running drover is untouched"
    );
}

// ---------------------------------------------------------------------------------
// 3. Workers' environment
// ---------------------------------------------------------------------------------

fn environ(pid: u32) -> Vec<(String, String)> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .filter_map(|v| {
            let t = String::from_utf8_lossy(v);
            t.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

#[test]
fn workers_environment_holds_no_drover_secret() {
    let admin_token = "env-admin-token-0123456789";
    let session_secret = "env-session-secret-0123456789abcdef0123456789";
    let mut d = Drover::prepare(&Options {
        workers: 2,
        admin_keys: "  token: ${DROVER_ADMIN_TOKEN}\n",
        worker_keys: "  env:\n    FROM_CONFIG: yes\n  inherit_env: [APP_*]\n",
        extra: "sessions:\n  enabled: true\n  secrets: [\"${SESSION_SECRET}\"]\n",
        env: [
            ("DROVER_ADMIN_TOKEN", admin_token),
            ("SESSION_SECRET", session_secret),
            ("UNRELATED_VAR", "x"),
            ("APP_MODE", "prod"),
            ("LANG", "C.UTF-8"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec(),
        ..Options::default()
    });
    // The token comes from drover's environment; the harness needs it for reads.
    d.token = Some(admin_token.to_string());
    d.spawn();
    d.wait_ready(2);
    let pids = d.worker_pids();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        let env = environ(pid);
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        for present in [
            "PATH",
            "LANG",
            "APP_MODE",
            "FROM_CONFIG",
            "WORKER_ID",
            "PORT",
        ] {
            assert!(names.contains(&present), "{present} missing: {names:?}");
        }
        for absent in [
            "DROVER_ADMIN_TOKEN",
            "SESSION_SECRET",
            "UNRELATED_VAR",
            "RUST_LOG",
        ] {
            assert!(
                !names.contains(&absent),
                "{absent} reached worker {pid}: {names:?}"
            );
        }
        for (k, v) in &env {
            assert!(
                !v.contains(admin_token) && !v.contains(session_secret),
                "a secret reached worker {pid} in {k}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// 4. Smaller holes
// ---------------------------------------------------------------------------------

#[test]
fn worker_metrics_cannot_duplicate_drovers_families_and_unused_names_expire() {
    let d = Drover::start(
        1,
        "observability:\n  worker_metrics:\n    max_names: 4\n    expire_after: 2s\n",
    );
    // A restart, so drover's own drover_worker_restarts_total has a sample.
    let _ = d.get("/crash");
    assert!(wait_until(Duration::from_secs(10), || d
        .metric("drover_worker_restarts_total{worker=\"worker-0\"}")
        == 1.0));
    d.wait_ready(1);
    d.get("/metrics-report?name=restarts_total&value=5")
        .unwrap();
    d.get("/metrics-report?name=metrics_rejected_total&value=9")
        .unwrap();
    let text = d.metrics();
    assert_eq!(
        text.matches("# TYPE drover_worker_restarts_total ").count(),
        1,
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "drover_worker_restarts_total{worker=\"worker-0\"}"),
        1.0,
        "drover's own family keeps its value"
    );
    assert_eq!(
        metric_value(&text, "drover_app_restarts_total{backend=\"worker-0\"}"),
        5.0
    );
    assert_eq!(
        metric_value(&text, "drover_worker_metrics_rejected_total"),
        0.0
    );
    let problems = promtext::check(&text);
    assert!(problems.is_empty(), "{problems:#?}");
    let checked = promtext::promtool_check(&text).unwrap();
    eprintln!("promtool ran: {checked}");

    // Two more names fill the 4 places; a fifth is refused while they are fresh...
    d.get("/metrics-report?name=junk_a&value=1").unwrap();
    d.get("/metrics-report?name=junk_b&value=1").unwrap();
    d.get("/metrics-report?name=queue_depth&value=3").unwrap();
    let text = d.metrics();
    assert_eq!(
        metric_value(&text, "drover_worker_metrics_rejected_total"),
        1.0
    );
    assert!(!text.contains("drover_app_queue_depth"));
    // ...and accepted once the others went unreported for expire_after.
    std::thread::sleep(Duration::from_millis(2300));
    d.get("/metrics-report?name=queue_depth&value=3").unwrap();
    let text = d.metrics();
    assert_eq!(
        metric_value(&text, "drover_app_queue_depth{backend=\"worker-0\"}"),
        3.0
    );
    assert!(!text.contains("drover_app_junk_a"), "{text}");
    let problems = promtext::check(&text);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn header_keyed_rate_limit_with_client_ip_stops_a_client_rotating_its_key() {
    // The test's requests come through a "proxy" (loopback) whose X-Forwarded-For is
    // believed, so each request can come from the address the test chooses.
    let d = Drover::start(
        1,
        "forwarded:\n  trusted_proxies: [127.0.0.1/32]\nroutes:\n  - name: header-only\n    path_prefix: /h/\n    rate_limit:\n      requests_per_second: 1\n      burst: 3\n      key: header:x-api-key\n  - name: header-and-ip\n    path_prefix: /c/\n    rate_limit:\n      requests_per_second: 1\n      burst: 3\n      key: header:x-api-key+client_ip\n",
    );
    let allowed = |prefix: &str, key: &dyn Fn(usize) -> String, ip: &dyn Fn(usize) -> String| {
        (0..10)
            .filter(|i| {
                let (k, a) = (key(*i), ip(*i));
                let r = d
                    .get_with(
                        &format!("{prefix}x"),
                        &[("x-api-key", &k), ("x-forwarded-for", &a)],
                    )
                    .unwrap();
                r.status != 429
            })
            .count()
    };
    // One client rotating its key.
    let rotating = |i: usize| format!("rotated-{i}");
    let one_address = |_: usize| "10.0.0.1".to_string();
    assert_eq!(
        allowed("/h/", &rotating, &one_address),
        10,
        "header key alone: rotation is not limited (the documented bypass)"
    );
    assert_eq!(
        allowed("/c/", &rotating, &one_address),
        3,
        "header + client IP: the address's budget holds"
    );
    // One key used from many addresses: the key's budget holds on both.
    let shared = |_: usize| "shared-key".to_string();
    let many = |i: usize| format!("10.1.0.{}", i + 1);
    assert_eq!(allowed("/h/", &shared, &many), 3);
    assert_eq!(allowed("/c/", &shared, &many), 3);
}

#[test]
fn secret_files_open_to_others_or_owned_by_another_user_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    let secrets = dir.path().join("session.secrets");
    let keys = dir.path().join("session.keys");
    std::fs::write(&token, "file-token-0123456789abcdef\n").unwrap();
    std::fs::write(&secrets, "s".repeat(40) + "\n").unwrap();
    std::fs::write(&keys, "ab".repeat(32) + "\n").unwrap();
    for f in [&token, &secrets, &keys] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let config = dir.path().join("drover.yaml");
    std::fs::write(
        &config,
        format!(
            "admin:\n  token_file: admin.token\n{}sessions:\n  secret_file: session.secrets\n  encryption:\n    key_file: session.keys\n",
            workers_yaml(1, "")
        ),
    )
    .unwrap();
    let check = || {
        run_drover(
            &["-t", "-c", config.to_str().unwrap()],
            &[],
            Duration::from_secs(10),
        )
    };
    let (code, out) = check();
    assert_eq!(code, Some(1), "{out}");
    for (field, f) in [
        ("admin.token_file", &token),
        ("sessions.secret_file", &secrets),
        ("sessions.encryption.key_file", &keys),
    ] {
        assert!(
            out.contains(field)
                && out.contains(&format!("{} has mode 0644", f.display()))
                && out.contains(&format!("chmod 600 {}", f.display())),
            "{field}: {out}"
        );
    }
    for f in [&token, &secrets, &keys] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let (code, out) = check();
    assert_eq!((code, out.trim()), (Some(0), "ok"));
    if is_root() {
        nix::unistd::chown(&token, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let (code, out) = check();
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("owned by uid 65534"), "{out}");
    }
}

#[test]
fn worker_output_reaches_drovers_log_with_control_characters_escaped() {
    let worker = worker_bin().display().to_string();
    let d = Drover::start_opts(Options {
        workers: 1,
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            format!("printf 'evil\\033[2J\\033[31mRED\\rFORGED ERROR line\\n'; printf 'bidi \\342\\200\\256txt\\n' >&2; exec {worker}"),
        ]),
        ..Options::default()
    });
    let log = std::fs::read(&d.log_path).unwrap();
    let text = String::from_utf8_lossy(&log);
    assert!(
        text.contains("worker-0: evil\\x1b[2J\\x1b[31mRED\\x0dFORGED ERROR line"),
        "{text}"
    );
    assert!(text.contains("worker-0: bidi \\u{202e}txt"), "{text}");
    assert!(!log.contains(&0x1b), "a raw escape byte reached the log");
    assert!(
        !log.contains(&b'\r'),
        "a raw carriage return reached the log"
    );
}

/// CPU ticks (user + system) the process has used, from `/proc/<pid>/stat`.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn data_plane_out_of_descriptors_pauses_accepting_without_spinning_and_recovers() {
    let d = Drover::start(2, "");
    let pid = d.pid();
    assert_eq!(d.get("/").unwrap().status, 200);
    // Leave drover 40 descriptors above what it holds now (util-linux's prlimit, as an
    // operator's low `ulimit -n` would).
    let limit = open_fds(pid) + 40;
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success());

    // 200 clients connect: the kernel completes every handshake (the listen backlog),
    // drover accepts until it is out of descriptors, and the rest wait in the backlog.
    let addr: SocketAddr = format!("127.0.0.1:{}", d.port).parse().unwrap();
    let flood: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok())
        .collect();
    assert!(flood.len() > 100, "only {} connects succeeded", flood.len());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        open_fds(pid) >= limit - 2,
        "drover holds {} of its {limit} descriptors: the flood did not exhaust them",
        open_fds(pid)
    );

    // While a connection waits that it cannot accept, drover must not spin on `accept`.
    let ticks = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(pid) - ticks;
    eprintln!("out of descriptors: drover used {spent} CPU ticks in 2 s");
    assert!(
        spent < 50,
        "drover used {spent} ticks (of 200 in 2 s) while out of descriptors: accept spins"
    );

    // The flood leaves; drover accepts again and serves.
    drop(flood);
    assert!(
        wait_until(Duration::from_secs(15), || {
            // A new agent each time: a new connection, which drover must accept.
            request(&agent(), "GET", &d.url("/"), &[], None)
                .map(|r| r.status == 200)
                .unwrap_or(false)
        }),
        "drover did not serve again after the descriptors were freed"
    );
}
