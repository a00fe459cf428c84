//! Test harness: real `drover` and `upstream-worker` processes on free loopback ports.
//!
//! `Drover::start(yaml)` writes a temp config (listen/admin ports and the worker command
//! filled in), starts the real binary, waits until it is ready, and kills it (and so,
//! through the parent-death signal, its workers) when dropped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    // Bind to 0 and hand out what the OS picked; a process-wide counter avoids handing
    // the same port twice to two tests of one run.
    use std::sync::Mutex;
    static USED: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let p = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut used = USED.lock().unwrap();
        if !used.contains(&p) {
            used.push(p);
            return p;
        }
    }
}

pub fn drover_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_drover"))
}

/// The worker binary is a sibling package that `cargo test -p drover` does not rebuild;
/// build it once per test binary so tests never run a stale worker.
pub fn worker_bin() -> PathBuf {
    static BUILD: Once = Once::new();
    let path = drover_bin().with_file_name("upstream-worker");
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "upstream-worker"]);
        // Into the same target dir as drover (coverage tools build elsewhere).
        if let Some(target_dir) = path.parent().and_then(|p| p.parent()) {
            cmd.arg("--target-dir").arg(target_dir);
        }
        if path.to_string_lossy().contains("/release/") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build -p upstream-worker");
        assert!(st.success(), "building upstream-worker failed");
    });
    path
}

pub struct Drover {
    pub child: Option<Child>,
    pub port: u16,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub token: Option<String>,
    pub agent: ureq::Agent,
    /// Extra environment drover is started with.
    pub env: Vec<(String, String)>,
}

/// Everything a test may set when starting drover ([`Drover::start_opts`]).
#[derive(Default)]
pub struct Options<'a> {
    pub workers: usize,
    /// Indented YAML added under `workers:`.
    pub worker_keys: &'a str,
    /// Indented YAML added under `admin:`.
    pub admin_keys: &'a str,
    /// The worker command instead of `upstream-worker`.
    pub command: Option<Vec<String>>,
    /// Top-level YAML appended to the file.
    pub extra: &'a str,
    pub token: Option<&'a str>,
    /// Extra environment for drover.
    pub env: Vec<(String, String)>,
}

pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(|s| s.as_str())
    }
    pub fn worker(&self) -> Option<usize> {
        self.header("x-worker-id").and_then(|v| v.parse().ok())
    }
    pub fn pid(&self) -> Option<u32> {
        self.header("x-worker-pid").and_then(|v| v.parse().ok())
    }
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(15))
        .max_idle_connections_per_host(64)
        .build()
}

pub fn request(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Reply, String> {
    let mut req = agent.request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let res = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.status();
    let mut headers = HashMap::new();
    for name in resp.headers_names() {
        if let Some(v) = resp.header(&name) {
            headers.insert(name.to_ascii_lowercase(), v.to_string());
        }
    }
    let mut body = String::new();
    resp.into_reader()
        .take(16 << 20)
        .read_to_string(&mut body)
        .map_err(|e| e.to_string())?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// The YAML every test starts from: fast health checks and backoff so tests run quickly.
pub fn base_yaml(port: u16, admin_port: u16, dir: &Path) -> String {
    format!(
        "listen: 127.0.0.1:{port}\nruntime_dir: {rt}\nadmin:\n  listen: 127.0.0.1:{admin_port}\nhealth_check:\n  interval: 200ms\n  timeout: 500ms\n",
        rt = dir.join("run").display()
    )
}

impl Drover {
    /// Starts drover with `extra` YAML appended to the base config. `extra` must not
    /// repeat top-level keys of the base (listen, runtime_dir, admin, health_check)
    /// unless it passes `full` config via [`Drover::start_raw`].
    pub fn start(workers: usize, extra: &str) -> Drover {
        Self::start_with(workers, extra, None)
    }

    pub fn start_with(workers: usize, extra: &str, token: Option<&str>) -> Drover {
        Self::start_full(workers, "", extra, token)
    }

    /// Like [`Drover::start_with`], with `worker_keys` (indented YAML) added under
    /// `workers:`.
    pub fn start_full(
        workers: usize,
        worker_keys: &str,
        extra: &str,
        token: Option<&str>,
    ) -> Drover {
        Self::start_opts(Options {
            workers,
            worker_keys,
            extra,
            token,
            ..Options::default()
        })
    }

    /// Starts drover with every setting of `o` and waits until it is ready.
    pub fn start_opts(o: Options<'_>) -> Drover {
        // A port found free can be taken by another test's process before drover binds
        // it (as the local port of an outgoing connection): such a start gets fresh
        // ports, up to three times.
        for _ in 0..3 {
            let mut d = Self::prepare(&o);
            d.spawn();
            let taken = || d.log().contains("Address already in use");
            let ok = wait_until(Duration::from_secs(30), || d.is_ready(o.workers) || taken());
            if ok && !taken() {
                return d;
            }
            if !taken() {
                panic!("drover did not become ready; log:\n{}", d.log());
            }
        }
        panic!("drover's ports were taken three times in a row");
    }

    /// Writes the config of `o` without starting drover.
    pub fn prepare(o: &Options<'_>) -> Drover {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin_port = free_port();
        let mut yaml = base_yaml(port, admin_port, dir.path());
        let mut admin = String::from("admin:\n");
        if let Some(t) = o.token {
            admin.push_str(&format!("  token: {t}\n"));
        }
        admin.push_str(o.admin_keys);
        yaml = yaml.replace("admin:\n", &admin);
        match &o.command {
            Some(cmd) => yaml.push_str(&workers_yaml_with(o.workers, cmd, o.worker_keys)),
            None => yaml.push_str(&workers_yaml(o.workers, o.worker_keys)),
        }
        yaml.push_str(o.extra);
        yaml.push_str(sessions_default(o.extra));
        let yaml = with_carrier(yaml);
        let config_path = dir.path().join("drover.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        Drover {
            child: None,
            port,
            admin_port,
            log_path: dir.path().join("drover.log"),
            config_path,
            dir,
            token: o.token.map(String::from),
            agent: agent(),
            env: o.env.clone(),
        }
    }

    /// Starts drover on a whole config of the test's own: `yaml(port, admin_port, dir)`
    /// returns it for the ports and temp folder the harness picked (e.g. the shipped
    /// `conf/drover.yaml` with ports and paths replaced, or other worker commands).
    pub fn start_config(workers: usize, yaml: impl FnOnce(u16, u16, &Path) -> String) -> Drover {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin_port = free_port();
        let config_path = dir.path().join("drover.yaml");
        std::fs::write(&config_path, yaml(port, admin_port, dir.path())).unwrap();
        let mut d = Drover {
            child: None,
            port,
            admin_port,
            log_path: dir.path().join("drover.log"),
            config_path,
            dir,
            token: None,
            agent: agent(),
            env: Vec::new(),
        };
        d.spawn();
        d.wait_ready(workers);
        d
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = Command::new(drover_bin())
            .arg("-c")
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start drover");
        self.child = Some(child);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin_port, path)
    }

    pub fn get(&self, path: &str) -> Result<Reply, String> {
        request(&self.agent, "GET", &self.url(path), &[], None)
    }

    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        request(&self.agent, "GET", &self.url(path), headers, None)
    }

    /// Stops drover gracefully (SIGTERM) and starts it again on the same config and
    /// runtime_dir.
    pub fn restart_gracefully(&mut self, workers: usize) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(
            self.wait_exit(Duration::from_secs(20)),
            Some(0),
            "{}",
            self.log()
        );
        self.spawn();
        self.wait_ready(workers);
    }

    /// Kills drover with SIGKILL and starts it again on the same config.
    pub fn restart_hard(&mut self, workers: usize) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
        self.wait_ready(workers);
    }

    /// The token admin calls carry: the configured one, else the one drover generated
    /// into `runtime_dir/admin-token` at first start.
    pub fn admin_token(&self) -> Option<String> {
        self.token.clone().or_else(|| {
            std::fs::read_to_string(self.dir.path().join("run/admin-token"))
                .ok()
                .map(|t| t.trim().to_string())
        })
    }

    /// GET on the admin plane; with a configured token (reads then need it) it is sent.
    pub fn admin_get(&self, path: &str) -> Reply {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        request(&self.agent, "GET", &self.admin_url(path), &headers, None).expect("admin reachable")
    }

    /// POST on the admin plane with the token (configured or generated) and a JSON body.
    pub fn admin_post(&self, path: &str, body: &str) -> Reply {
        let auth = self.admin_token().map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        request(
            &self.agent,
            "POST",
            &self.admin_url(path),
            &headers,
            Some(body),
        )
        .expect("admin reachable")
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin_get("/api/status").body).expect("status is JSON")
    }

    pub fn metrics(&self) -> String {
        self.admin_get("/metrics").body
    }

    /// Value of the sample `name{labels}` (exact text as rendered), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    pub fn healthy_workers(&self) -> usize {
        self.status()["workers"]
            .as_array()
            .map(|ws| ws.iter().filter(|w| w["healthy"] == true).count())
            .unwrap_or(0)
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.status()["workers"]
            .as_array()
            .map(|ws| {
                ws.iter()
                    .filter_map(|w| w["pid"].as_u64().map(|p| p as u32))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn wait_ready(&self, workers: usize) {
        // Ready: the admin plane says so, the workers are healthy, and the data plane
        // (bound by Pingora after the control thread) accepts connections.
        let ok = wait_until(Duration::from_secs(30), || self.is_ready(workers));
        assert!(ok, "drover did not become ready; log:\n{}", self.log());
    }

    /// The admin plane says ready, `workers` workers are healthy, and the data plane
    /// accepts connections.
    pub fn is_ready(&self, workers: usize) -> bool {
        request(&self.agent, "GET", &self.admin_url("/readyz"), &[], None)
            .map(|r| r.status == 200)
            .unwrap_or(false)
            && (workers == 0 || self.healthy_workers() == workers)
            && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Rewrites the config file (keeping the harness's ports) with `extra` appended.
    pub fn rewrite_config(&self, workers: usize, extra: &str) {
        let mut yaml = base_yaml(self.port, self.admin_port, self.dir.path());
        yaml.push_str(&workers_yaml(workers, ""));
        yaml.push_str(extra);
        yaml.push_str(sessions_default(extra));
        std::fs::write(&self.config_path, with_carrier(yaml)).unwrap();
    }

    /// Waits for the drover process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Which HTTP/1 carrier the suite runs on: `DROVER_TEST_CARRIER=pingora` turns
/// `proxy.fast_path` off in every config a test does not set it in, so the same suite
/// proves the same behaviour on Pingora's carrier (`.ci/run` runs the session, edge and
/// resilience suites both ways).
pub fn with_carrier(yaml: String) -> String {
    if std::env::var("DROVER_TEST_CARRIER").as_deref() != Ok("pingora") {
        return yaml;
    }
    let mut v: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("test YAML parses");
    let Some(map) = v.as_mapping_mut() else {
        return yaml;
    };
    let proxy = map
        .entry("proxy".into())
        .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    if let Some(p) = proxy.as_mapping_mut() {
        p.entry("fast_path".into()).or_insert(false.into());
    }
    serde_yaml::to_string(&v).expect("YAML serialises")
}

/// Sticky sessions are on in drover's defaults; tests that do not configure them turn
/// them off so cookieless test clients are balanced by the strategy under test.
fn sessions_default(extra: &str) -> &'static str {
    if extra.contains("sessions:") {
        ""
    } else {
        "sessions:\n  enabled: false\n"
    }
}

/// A real `redis-server` on a free loopback port, with persistence off; killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.spawn();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port.
    pub fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        self.child = Some(child);
        let port = self.port;
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .map(|mut s| {
                    use std::io::Write;
                    let _ = s.write_all(b"PING\r\n");
                    let mut b = [0u8; 7];
                    s.read_exact(&mut b).is_ok() && &b == b"+PONG\r\n"
                })
                .unwrap_or(false)
        });
        assert!(up, "redis-server did not start on port {port}");
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn workers_yaml(count: usize, extra_worker_keys: &str) -> String {
    workers_yaml_with(
        count,
        &[worker_bin().display().to_string()],
        extra_worker_keys,
    )
}

/// `workers:` running `command` (each word quoted as a YAML string).
pub fn workers_yaml_with(count: usize, command: &[String], extra_worker_keys: &str) -> String {
    let words: Vec<String> = command
        .iter()
        .map(|w| serde_json::to_string(w).unwrap())
        .collect();
    format!(
        "workers:\n  count: {count}\n  command: [{}]\n  restart_backoff:\n    initial: 50ms\n    max: 1s\n  stop_timeout: 3s\n{extra_worker_keys}",
        words.join(", ")
    )
}

impl Drop for Drover {
    /// Stops drover the way an operator would (SIGTERM: drain, stop workers, exit), so
    /// every test also exercises shutdown and coverage tools see the binary's profile;
    /// SIGKILL if it has not exited within 10 s.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    f()
}

pub fn process_alive(pid: u32) -> bool {
    // Zombies count as gone: a reaped-or-not dead process is not running.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.split_whitespace().nth(2).is_none_or(|st| st != "Z"),
        Err(_) => false,
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Runs `threads` clients sending GET `path` until `stop` is set; returns (ok, failed,
/// failure messages).
pub fn load(
    url: String,
    threads: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    max_requests: usize,
) -> std::thread::JoinHandle<(usize, usize, Vec<String>)> {
    std::thread::spawn(move || {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let url = url.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let a = agent();
                    let (mut ok, mut bad, mut why) = (0, 0, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed)
                        && ok + bad < max_requests
                    {
                        match request(&a, "GET", &url, &[], None) {
                            Ok(r) if r.status == 200 => ok += 1,
                            Ok(r) => {
                                bad += 1;
                                why.push(format!("status {} {}", r.status, r.body));
                            }
                            Err(e) => {
                                bad += 1;
                                why.push(e);
                            }
                        }
                    }
                    (ok, bad, why)
                })
            })
            .collect();
        let mut total = (0, 0, Vec::new());
        for h in handles {
            let (o, b, w) = h.join().unwrap();
            total.0 += o;
            total.1 += b;
            total.2.extend(w);
        }
        total
    })
}
