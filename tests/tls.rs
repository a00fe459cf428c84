// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! TLS termination at the edge (issue 16): HTTPS listeners with real clients (curl,
//! h2load, headless Chromium, rustls), certificates chosen by SNI and rotated on reload
//! under load, bad certificates refused with reasons, redirect to HTTPS and HSTS,
//! `X-Forwarded-Proto` and the session cookie's `Secure` flag by scheme, HTTP/2 with
//! prior knowledge on the cleartext listener, and TLS to upstreams.

#[allow(dead_code)]
#[path = "support/cdp.rs"]
mod cdp;
mod common;
#[path = "support/tls.rs"]
mod tls;

use common::{wait_until, Drover, Options};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tls::{curl, Issued, TestCa};

/// `tls:` with one HTTPS listener on `port` and these certificates.
fn tls_yaml(port: u16, certs: &[&Issued], more: &str) -> String {
    let mut y = format!("tls:\n  listen: [127.0.0.1:{port}]\n  certificates:\n");
    for c in certs {
        y.push_str(&format!(
            "    - cert_file: {}\n      key_file: {}\n",
            c.cert.display(),
            c.key.display()
        ));
    }
    y.push_str(more);
    y
}

fn start(workers: usize, extra: &str) -> Drover {
    Drover::start_opts(Options {
        workers,
        extra,
        ..Options::default()
    })
}

fn https(port: u16, path: &str) -> String {
    format!("https://a.test:{port}{path}")
}

fn resolve(port: u16) -> String {
    format!("a.test:{port}:127.0.0.1")
}

#[test]
fn curl_gets_http11_and_h2_over_tls_and_workers_see_https() {
    let ca = TestCa::new();
    let a = ca.issue("a", &["a.test"]);
    let tls_port = common::free_port();
    let d = start(1, &tls_yaml(tls_port, &[&a], ""));
    let ca_path = ca.cert.display().to_string();
    for (flag, want) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (code, out, err) = curl(&[
            flag,
            "--cacert",
            &ca_path,
            "--resolve",
            &resolve(tls_port),
            "-w",
            "\n%{http_code} %{http_version}",
            &https(tls_port, "/echo"),
        ]);
        assert_eq!(code, 0, "curl {flag}: {err}");
        let (body, meta) = out.rsplit_once('\n').unwrap();
        assert_eq!(meta, format!("200 {want}"), "curl {flag}");
        let echoed: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(echoed["headers"]["x-forwarded-proto"], "https", "{flag}");
    }
    // The cleartext listener still says http.
    let r = d.get("/echo").unwrap();
    let echoed: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "http");
    // Every version went through the same pipeline (counted at its end).
    // (Counted once the exchange is over, which may be just after the client has read
    // the answer.)
    assert!(wait_until(Duration::from_secs(5), || {
        let m = d.metrics();
        common::metric_value(&m, "drover_requests_by_version_total{version=\"2\"}") == 1.0
            && common::metric_value(&m, "drover_requests_by_version_total{version=\"1.1\"}") >= 2.0
    }));
    // When the certificate expires is exported (issued for 2 days).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let not_after = common::metric_value(
        &d.metrics(),
        &format!(
            "drover_tls_certificate_not_after_seconds{{cert_file=\"{}\"}}",
            a.cert.display()
        ),
    );
    assert!(
        not_after > now + 86_400.0 && not_after < now + 3.0 * 86_400.0,
        "{not_after}"
    );
    // TLS 1.1 is refused; 1.3 and 1.2 are offered.
    let (code, _, _) = curl(&[
        "--tlsv1.1",
        "--tls-max",
        "1.1",
        "--cacert",
        &ca_path,
        "--resolve",
        &resolve(tls_port),
        &https(tls_port, "/"),
    ]);
    assert_ne!(code, 0, "TLS 1.1 must be refused");
    let (code, out, err) = curl(&[
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "--cacert",
        &ca_path,
        "--resolve",
        &resolve(tls_port),
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        &https(tls_port, "/"),
    ]);
    assert_eq!((code, out.as_str()), (0, "200"), "TLS 1.2: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_unknown_or_missing_names_get_the_default() {
    let ca = TestCa::new();
    let a = ca.issue("a", &["a.test"]);
    let b = ca.issue("b", &["b.test", "*.wild.test"]);
    let tls_port = common::free_port();
    // b is the default although a is listed first.
    let extra = format!(
        "tls:\n  listen: [127.0.0.1:{tls_port}]\n  certificates:\n    - cert_file: {}\n      key_file: {}\n    - cert_file: {}\n      key_file: {}\n      default: true\n",
        a.cert.display(),
        a.key.display(),
        b.cert.display(),
        b.key.display()
    );
    let _d = tokio::task::spawn_blocking(move || start(1, &extra))
        .await
        .unwrap();
    // A fresh client config per connection: no TLS session resumption, so every
    // handshake is a full one and shows the certificate the server picks now.
    let cfg = || tls::client_config(&ca.cert, &[b"http/1.1"]);
    let cases = [
        ("a.test", &a.leaf_der),
        ("b.test", &b.leaf_der),
        ("x.wild.test", &b.leaf_der),
        ("other.test", &b.leaf_der),
    ];
    for (name, want) in cases {
        // Verification for other.test fails (b does not name it), which proves the
        // default was served: look at the certificate with a verifier-less probe.
        let seen = if name == "other.test" {
            leaf_without_verifying(tls_port, name).await
        } else {
            let s = tls::get_once(cfg(), tls_port, name, "/").await.unwrap();
            assert_eq!(s.status, 200);
            s.leaf_der
        };
        assert_eq!(&seen, want, "certificate for SNI {name}");
    }
    // No SNI at all (an IP address as the name): the default.
    let s = tls::get_once(cfg(), tls_port, "127.0.0.1", "/")
        .await
        .unwrap();
    assert_eq!(s.leaf_der, b.leaf_der);
    // ALPN offered h2 first: the server picked it.
    let h2 = tls::client_config(&ca.cert, &[b"h2", b"http/1.1"]);
    let (_, conn) = connect_raw(h2, tls_port, "a.test").await;
    assert_eq!(conn.as_deref(), Some(&b"h2"[..]));
}

/// The ALPN protocol a handshake picked.
async fn connect_raw(
    cfg: Arc<pingora_rustls::ClientConfig>,
    port: u16,
    name: &str,
) -> (tokio::net::TcpStream, Option<Vec<u8>>) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let sn = pingora_rustls::ServerName::try_from(name.to_string()).unwrap();
    let tls = pingora_rustls::TlsConnector::from(cfg)
        .connect(sn, tcp)
        .await
        .unwrap();
    let alpn = tls.get_ref().1.alpn_protocol().map(|a| a.to_vec());
    (tls.into_inner().0, alpn)
}

/// The leaf certificate the server presents for `name`, read with `openssl s_client`
/// (which does not stop at a name mismatch).
async fn leaf_without_verifying(port: u16, name: &str) -> Vec<u8> {
    let script = format!(
        "echo | openssl s_client -connect 127.0.0.1:{port} -servername {name} 2>/dev/null | openssl x509 -outform der"
    );
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_load_fails_no_request_and_a_bad_one_keeps_the_old() {
    let ca = TestCa::new();
    let live = tempfile::tempdir().unwrap();
    let v1 = ca.issue_in(live.path(), "site", &["a.test"]);
    let tls_port = common::free_port();
    let extra = tls_yaml(tls_port, &[&v1], "");
    let d = Arc::new(
        tokio::task::spawn_blocking(move || start(2, &extra))
            .await
            .unwrap(),
    );
    // A fresh client config per connection: no session resumption (a resumed session
    // rightly keeps the certificate it was made with), every handshake a full one.
    let ca_file = ca.cert.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let saw_new = Arc::new(AtomicUsize::new(0));
    let staged = ca.issue("staged", &["a.test"]);
    let new_der = staged.leaf_der.clone();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (ca_file, stop, ok, failed, saw_new, new_der) = (
            ca_file.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            saw_new.clone(),
            new_der.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let cfg = tls::client_config(&ca_file, &[b"http/1.1"]);
                match tls::get_once(cfg, tls_port, "a.test", "/").await {
                    Ok(s) if s.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if s.leaf_der == new_der {
                            saw_new.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(s) => failed.lock().unwrap().push(format!("status {}", s.status)),
                    Err(e) => failed.lock().unwrap().push(e),
                }
            }
        }));
    }
    // A keep-alive connection set up with the old certificate.
    let mut kept = tls::KeepAlive::connect(
        tls::client_config(&ca.cert, &[b"http/1.1"]),
        tls_port,
        "a.test",
    )
    .await
    .unwrap();
    assert_eq!(kept.get("/").await.unwrap(), 200);
    assert_eq!(kept.leaf_der(), v1.leaf_der);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before_rotation = ok.load(Ordering::Relaxed);
    // certbot-style renewal: new files written over the old ones, then SIGHUP.
    std::fs::copy(&staged.cert, &v1.cert).unwrap();
    std::fs::copy(&staged.key, &v1.key).unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while saw_new.load(Ordering::Relaxed) < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A mismatched pair (the new chain with another key) is refused on reload: the
    // running certificate stays and the reason is given.
    let other = ca.issue("other", &["a.test"]);
    std::fs::copy(&other.key, &v1.key).unwrap();
    let d2 = d.clone();
    let reply = tokio::task::spawn_blocking(move || d2.admin_post("/api/reload", ""))
        .await
        .unwrap();
    assert_ne!(reply.status, 200, "a mismatched key must fail the reload");
    assert!(
        reply.body.contains("tls.certificates[0]") && reply.body.contains("does not belong"),
        "{}",
        reply.body
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    // The connection made before the rotation was not dropped: it still serves.
    assert_eq!(kept.get("/").await.unwrap(), 200);
    let failed = failed.lock().unwrap().clone();
    let total = ok.load(Ordering::Relaxed);
    eprintln!(
        "rotation under load: {total} requests on new TLS connections ({before_rotation} before the SIGHUP), {} saw the new certificate, {} failed",
        saw_new.load(Ordering::Relaxed),
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(
        saw_new.load(Ordering::Relaxed) >= 20,
        "new handshakes must see the new certificate"
    );
    assert!(before_rotation > 0 && total > before_rotation);
    // After the refused reload the rotated certificate is still served.
    let cfg = tls::client_config(&ca.cert, &[b"http/1.1"]);
    let s = tls::get_once(cfg, tls_port, "a.test", "/").await.unwrap();
    assert_eq!(s.leaf_der, new_der);
    assert!(d.log().contains("does not belong to the certificate"));
}

#[test]
fn bad_certificate_files_are_refused_with_the_reason() {
    use std::os::unix::fs::PermissionsExt;
    let ca = TestCa::new();
    let a = ca.issue("a", &["a.test"]);
    let b = ca.issue("b", &["b.test"]);
    let dir = tempfile::tempdir().unwrap();
    let check = |tls: String| -> String {
        let path = dir.path().join("d.yaml");
        std::fs::write(&path, format!("workers:\n  command: [/bin/sh]\n{tls}")).unwrap();
        let out = Command::new(common::drover_bin())
            .args(["-t", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let pair = |cert: &Path, key: &Path| {
        format!(
            "tls:\n  listen: [127.0.0.1:1]\n  certificates:\n    - cert_file: {}\n      key_file: {}\n",
            cert.display(),
            key.display()
        )
    };
    let e = check(pair(&a.cert, &b.key));
    assert!(
        e.contains(":6: tls.certificates[0]:") && e.contains("does not belong"),
        "{e}"
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let e = check(pair(&empty, &a.key));
    assert!(e.contains("holds no certificate"), "{e}");
    std::fs::set_permissions(&a.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = check(pair(&a.cert, &a.key));
    assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
    let e = check("tls:\n  listen: [127.0.0.1:1]\n".into());
    assert!(
        e.contains("tls.certificates") && e.contains("no certificate is listed"),
        "{e}"
    );
}

#[test]
fn redirect_hsts_and_secure_cookie_follow_the_scheme() {
    let ca = TestCa::new();
    let a = ca.issue("a", &["a.test"]);
    let tls_port = common::free_port();
    let d = start(
        1,
        &tls_yaml(
            tls_port,
            &[&a],
            "  redirect_http: true\n  hsts_max_age: 3600s\n  hsts_include_subdomains: true\nsessions:\n  enabled: true\n  store: memory\n",
        ),
    );
    // Cleartext: 308 to the same URL on the HTTPS listener, no HSTS, no session work.
    let (code, out, err) = curl(&["-i", "-H", "Host: a.test:8080", &d.url("/session/incr?x=1")]);
    assert_eq!(code, 0, "{err}");
    let head = out.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 308"), "{out}");
    assert!(
        head.contains(&format!(
            "location: https://a.test:{tls_port}/session/incr?x=1\r\n"
        )),
        "{out}"
    );
    assert!(!head.contains("strict-transport-security"), "{out}");
    assert!(!head.contains("set-cookie"), "{out}");
    // HTTPS: HSTS, and the session cookie is Secure although `cookie.secure` is false.
    let ca_path = ca.cert.display().to_string();
    let (code, out, err) = curl(&[
        "-i",
        "--cacert",
        &ca_path,
        "--resolve",
        &resolve(tls_port),
        &https(tls_port, "/session/incr"),
    ]);
    assert_eq!(code, 0, "{err}");
    let head = out.to_ascii_lowercase();
    assert!(
        head.contains("strict-transport-security: max-age=3600; includesubdomains"),
        "{out}"
    );
    let cookie = head
        .lines()
        .find(|l| l.starts_with("set-cookie: drover_session="))
        .unwrap_or_else(|| panic!("no session cookie: {out}"));
    assert!(cookie.trim_end().ends_with("; secure"), "{cookie}");
}

#[test]
fn cleartext_cookie_is_not_secure_and_h2c_prior_knowledge_is_served() {
    let d = start(
        1,
        "http2:\n  cleartext: true\n  max_concurrent_streams: 50\n  max_header_list_size: 2048\nlimits:\n  max_header_bytes: 65536\nsessions:\n  enabled: true\n  store: memory\n",
    );
    let r = d.get("/session/incr").unwrap();
    let cookie = r.header("set-cookie").unwrap();
    assert!(!cookie.contains("Secure"), "{cookie}");
    let (code, out, err) = curl(&[
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_code} %{http_version}",
        &d.url("/"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("200 2"), "{out}");
    // The HTTP/2 limits are advertised in drover's SETTINGS (nghttp prints them) and
    // enforced: a header list over max_header_list_size is refused with 431 before
    // it reaches the pipeline (whose own limit here is larger).
    let out = Command::new("nghttp")
        .args(["-nv", &d.url("/")])
        .output()
        .expect("nghttp (nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):50"),
        "{text}"
    );
    assert!(
        text.contains("SETTINGS_MAX_HEADER_LIST_SIZE(0x06):2048"),
        "{text}"
    );
    let big = format!("X-Big: {}", "b".repeat(4000));
    let (code, out, err) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        &big,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &d.url("/"),
    ]);
    assert_eq!((code, out.as_str()), (0, "431"), "{err}");
    // HTTP/1.x on the same port, including a request shorter than the h2 preface.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    assert!(
        buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200"),
        "{buf}"
    );
    assert!(d.get("/").unwrap().status == 200);
}

/// h2load's summary line: `requests: N total, N started, N done, N succeeded, N failed, ...`
/// as (succeeded, failed).
pub fn h2load_summary(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no summary in h2load output:\n{out}"));
    let count = |word: &str| -> u64 {
        line.trim_start_matches("requests:")
            .split(',')
            .filter_map(|p| {
                let mut it = p.split_whitespace();
                Some((it.next()?.parse::<u64>().ok()?, it.next()?))
            })
            .find(|(_, w)| *w == word)
            .map(|(n, _)| n)
            .unwrap_or(u64::MAX)
    };
    (count("succeeded"), count("failed"))
}

#[test]
fn h2load_over_tls_and_h2c_succeeds_on_every_request() {
    if Command::new("h2load").arg("--version").output().is_err() {
        panic!("h2load is not installed (apt-get install -y nghttp2-client; .ci/run does)");
    }
    let ca = TestCa::new();
    let a = ca.issue("a", &["a.test"]);
    let tls_port = common::free_port();
    let d = start(
        2,
        &format!(
            "{}http2:\n  cleartext: true\n",
            tls_yaml(tls_port, &[&a], "")
        ),
    );
    for url in [format!("https://127.0.0.1:{tls_port}/"), d.url("/")] {
        let out = Command::new("h2load")
            .args(["-n", "3000", "-c", "8", "-m", "10", &url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (succeeded, failed) = h2load_summary(&text);
        eprintln!(
            "h2load {url}: {}",
            text.lines()
                .filter(|l| l.starts_with("finished in") || l.starts_with("requests:"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        assert_eq!((succeeded, failed), (3000, 0), "{text}");
    }
    assert_eq!(d.metric("drover_requests_in_flight"), 0.0);
}

#[test]
fn http2_requests_meet_the_same_rate_limit_and_header_limit_as_http11() {
    let ca = TestCa::new();
    let a = ca.issue("a", &["a.test"]);
    let tls_port = common::free_port();
    let d = start(
        1,
        &format!(
            "{}rate_limit:\n  requests_per_second: 1\n  burst: 10\nlimits:\n  max_header_bytes: 8192\n",
            tls_yaml(tls_port, &[&a], "")
        ),
    );
    // 40 HTTP/2 requests from one client: the burst passes, the rest get 429.
    let out = Command::new("h2load")
        .args(["-n", "40", "-c", "1", "-m", "1"])
        .arg(format!("https://127.0.0.1:{tls_port}/"))
        .output()
        .expect("h2load (nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    let codes = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        codes.contains("10 2xx") || codes.contains("11 2xx"),
        "{codes}"
    );
    assert!(
        codes.contains("30 4xx") || codes.contains("29 4xx"),
        "{codes}"
    );
    assert!(d.metric("drover_rate_limited_total{scope=\"global\"}") >= 29.0);
    // A header block over limits.max_header_bytes: 431 on HTTP/2 as on HTTP/1.1.
    let big = format!("X-Big: {}", "b".repeat(10_000));
    let ca_path = ca.cert.display().to_string();
    for flag in ["--http2", "--http1.1"] {
        let (code, out, err) = curl(&[
            flag,
            "--cacert",
            &ca_path,
            "--resolve",
            &resolve(tls_port),
            "-H",
            &big,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            &https(tls_port, "/"),
        ]);
        assert_eq!(code, 0, "{flag}: {err}");
        assert!(out.starts_with("431 "), "{flag}: {out}");
    }
}

#[test]
fn chromium_loads_the_page_over_https_with_h2_and_opens_a_wss_websocket() {
    let ca = TestCa::new();
    let a = ca.issue("a", &["a.test"]);
    let tls_port = common::free_port();
    // Node `ws` echo workers (tests/apps/socketio/ws-echo.js): a page and a WebSocket.
    let node = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v node"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/socketio/ws-echo.js");
    let _d = Drover::start_opts(Options {
        workers: 1,
        command: Some(vec![node, script.display().to_string()]),
        extra: &tls_yaml(tls_port, &[&a], ""),
        ..Options::default()
    });
    let spki = TestCa::spki_hash(&a.cert);
    let browser = cdp::Browser::launch_with(&[
        &format!("--ignore-certificate-errors-spki-list={spki}"),
        "--host-resolver-rules=MAP a.test 127.0.0.1",
    ])
    .expect("headless chromium");
    let mut page = browser.page().unwrap();
    page.navigate(&format!("https://a.test:{tls_port}/"))
        .unwrap();
    let proto = page
        .wait_for(
            "performance.getEntriesByType('navigation')[0]?.nextHopProtocol",
            Duration::from_secs(20),
        )
        .unwrap();
    assert_eq!(proto, "h2");
    let text = page.eval("document.body.innerText").unwrap();
    assert!(text.as_str().unwrap_or("").contains("worker 0"), "{text}");
    // The browser opens the WebSocket over HTTP/1.1 on the same TLS listener (drover
    // does not offer RFC 8441 WebSockets over HTTP/2) and gets the worker's echo.
    let echo = page
        .eval(
            "new Promise((ok, fail) => { const ws = new WebSocket(`wss://${location.host}/ws`); \
             ws.onopen = () => ws.send('ping'); \
             ws.onmessage = (e) => { ok(e.data); ws.close(); }; \
             ws.onerror = () => fail('websocket error'); \
             setTimeout(() => fail('timeout'), 10000); })",
        )
        .unwrap();
    assert_eq!(echo, "0:ping");
}

#[test]
fn upstream_tls_is_verified_against_the_configured_ca_and_name() {
    let ca = TestCa::new();
    let b = ca.issue("b", &["b.test"]);
    let b_tls = common::free_port();
    let _back = start(1, &tls_yaml(b_tls, &[&b], ""));
    let good = Drover::start_opts(Options {
        workers: 0,
        extra: &format!(
            "upstreams:\n  - address: 127.0.0.1:{b_tls}\n    tls: true\n    sni: b.test\n    ca_file: {}\n",
            ca.cert.display()
        ),
        ..Options::default()
    });
    let r = good.get("/").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("hello from worker"), "{}", r.body);
    drop(good);
    // The same upstream under a name its certificate does not carry: never served
    // (its health check fails over TLS too, so it never enters rotation).
    let mut wrong = Drover::prepare(&Options {
        workers: 0,
        extra: &format!(
            "upstreams:\n  - address: 127.0.0.1:{b_tls}\n    tls: true\n    sni: c.test\n    ca_file: {}\n",
            ca.cert.display()
        ),
        ..Options::default()
    });
    wrong.spawn();
    assert!(wait_until(Duration::from_secs(10), || {
        wrong.get("/").map(|r| r.status >= 502).unwrap_or(false)
    }));
    std::thread::sleep(Duration::from_millis(1500));
    let r = wrong.get("/").unwrap();
    assert!(r.status >= 502, "{} {}", r.status, r.body);
}
