//! The `sessions:` section: file format and its validation into [`SessionsConfig`].
//!
//! Kept apart from `file.rs`/`validate.rs` because it is the largest section and has its
//! own key material rules (secrets read from files, minimum lengths, shared-store rules).

use super::duration::Dur;
use super::error::ConfigIssue;
pub use super::redis::RedisStoreFile;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Below this many bytes an HMAC secret is guessable; 32 matches SHA-256's block strength.
pub const MIN_SECRET_BYTES: usize = 32;
/// Session data travels in a request header; beyond this a worker's header limit bites.
pub const MAX_DATA_BYTES_LIMIT: usize = 64 * 1024;

/// `sessions:` as written: sticky sessions owned by drover (docs/SESSIONS.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsFile {
    /// Whether drover issues session cookies and keeps session records (default true).
    pub enabled: bool,
    /// `memory` (embedded, one instance) or `redis` (shared by several instances).
    pub store: String,
    /// The session cookie's name and attributes.
    pub cookie: SessionCookieFile,
    /// HMAC keys for the cookie; the first signs, all verify (rotation). Empty: a key is
    /// generated once and kept in `runtime_dir/session-secret`.
    pub secrets: Vec<String>,
    /// File with one secret per line (first signs), instead of or after `secrets`.
    pub secret_file: Option<String>,
    /// Absolute lifetime of a session, from creation; activity does not extend it.
    pub ttl: Dur,
    /// Sliding expiry: a session unused this long is gone.
    pub idle_timeout: Dur,
    /// Placement of a client's first request (no valid cookie): `balance` (the
    /// balancing strategy picks; the cookie then pins the session) or `client_ip` (hash
    /// the client address, so clients that refuse cookies still stick).
    pub without_cookie: String,
    /// Request header carrying the session data to the worker.
    pub data_header: String,
    /// Response header in which the worker returns new session data (empty value clears).
    pub update_header: String,
    /// Response header with which the worker rotates (`regenerate`) or ends (`destroy`)
    /// the session.
    pub control_header: String,
    /// Request header carrying the session id (hex) to the worker.
    pub id_header: String,
    /// Request header telling the worker `new`, `existing` or `unavailable` (store down).
    pub state_header: String,
    /// Largest session data accepted from a worker; larger updates are refused and logged.
    pub max_data_bytes: usize,
    /// Which requests of a session run one at a time, from reading the record to the
    /// worker's response head: `unsafe_methods` (anything but GET, HEAD, OPTIONS,
    /// TRACE), `all`, or `none`. The others never wait.
    pub serialize: String,
    /// Path prefixes whose requests are serialised whatever their method (GET routes
    /// that change the session).
    pub serialize_paths: Vec<String>,
    /// A serialised request waits at most this long for the one before it, then runs
    /// without the lock (its write is still checked for overlap).
    pub lock_timeout: Dur,
    /// Settings of the `memory` store.
    pub memory: MemoryStoreFile,
    /// How drover reaches Redis: for the `redis` store and for shared rate limits
    /// (`rate_limit.store: redis`).
    pub redis: RedisStoreFile,
    /// Encryption of session data at rest.
    pub encryption: EncryptionFile,
}

impl Default for SessionsFile {
    fn default() -> Self {
        SessionsFile {
            enabled: true,
            store: "memory".into(),
            cookie: SessionCookieFile::default(),
            secrets: Vec::new(),
            secret_file: None,
            ttl: Dur::secs(24 * 3600),
            idle_timeout: Dur::secs(30 * 60),
            without_cookie: "balance".into(),
            data_header: "X-Drover-Session".into(),
            update_header: "X-Drover-Session-Set".into(),
            control_header: "X-Drover-Session-Control".into(),
            id_header: "X-Drover-Session-Id".into(),
            state_header: "X-Drover-Session-State".into(),
            max_data_bytes: 4096,
            serialize: "unsafe_methods".into(),
            serialize_paths: Vec::new(),
            lock_timeout: Dur::secs(5),
            memory: MemoryStoreFile::default(),
            redis: RedisStoreFile::default(),
            encryption: EncryptionFile::default(),
        }
    }
}

/// `sessions.cookie`: the session cookie's name and attributes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionCookieFile {
    /// Cookie name: letters, digits, `-`, `_`, `.` (default `drover_session`).
    pub name: String,
    /// `Path` attribute; starts with `/`, no `;` (default `/`).
    pub path: String,
    /// `Domain` attribute; None: a host-only cookie (default).
    pub domain: Option<String>,
    /// `HttpOnly` attribute, hiding the cookie from scripts (default true).
    pub http_only: bool,
    /// Set it when clients reach drover over HTTPS (a TLS terminator in front).
    pub secure: bool,
    /// `Strict`, `Lax` or `None` (`None` requires `secure: true`).
    pub same_site: String,
    /// Cookie lifetime in the browser; defaults to `ttl`.
    pub max_age: Option<Dur>,
}

impl Default for SessionCookieFile {
    fn default() -> Self {
        SessionCookieFile {
            name: "drover_session".into(),
            path: "/".into(),
            domain: None,
            http_only: true,
            secure: false,
            same_site: "Lax".into(),
            max_age: None,
        }
    }
}

/// `sessions.memory`: the embedded store of a single instance.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryStoreFile {
    /// Cap on stored sessions; at the cap the least recently seen of a sample is evicted.
    pub max_sessions: usize,
    /// Written on graceful shutdown and loaded at start; empty string disables.
    /// Default: `runtime_dir/sessions.snapshot`.
    pub snapshot_path: Option<String>,
    /// How often the sweeper removes expired sessions (one shard per tick).
    pub sweep_interval: Dur,
}

impl Default for MemoryStoreFile {
    fn default() -> Self {
        MemoryStoreFile {
            max_sessions: 1_000_000,
            snapshot_path: None,
            sweep_interval: Dur::ms(100),
        }
    }
}

/// `sessions.encryption`: session data encrypted at rest (ChaCha20-Poly1305).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionFile {
    /// Encrypt session data at rest (ChaCha20-Poly1305).
    pub enabled: bool,
    /// 32-byte keys as 64 hex characters; the first encrypts, all decrypt (rotation).
    /// Empty: a key is generated once and kept in `runtime_dir/session-data-key`.
    pub keys: Vec<String>,
    /// File with one key per line, instead of or after `keys`.
    pub key_file: Option<String>,
}

impl Default for EncryptionFile {
    fn default() -> Self {
        EncryptionFile {
            enabled: true,
            keys: Vec::new(),
            key_file: None,
        }
    }
}

/// Where session records live (`sessions.store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// In this process's memory (one instance); snapshotted on graceful shutdown.
    Memory,
    /// In Redis (`sessions.redis`), shared by every instance that points at it.
    Redis,
}

/// The cookie's `SameSite` attribute (`sessions.cookie.same_site`, case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// Sent on same-site requests only.
    Strict,
    /// Also sent on top-level cross-site navigations (the default).
    Lax,
    /// Sent on every request; needs `secure: true`.
    None,
}

impl SameSite {
    /// The attribute value as written in `Set-Cookie`.
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// How a client's first request (no valid cookie) is placed (`sessions.without_cookie`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithoutCookie {
    /// `client_ip`: hash the client address, so clients that refuse cookies still stick.
    ClientIp,
    /// `balance` (default): the balancing strategy picks; the cookie then pins the session.
    Balance,
}

/// Which requests of a session take its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerializeMode {
    /// POST, PUT, PATCH, DELETE and any other method that is not GET, HEAD, OPTIONS or
    /// TRACE (RFC 9110's safe methods).
    UnsafeMethods,
    /// `all`: every request of a session waits for the one before (PHP-style).
    All,
    /// `none`: no request waits; an overlapping write is still refused by compare-and-set.
    None,
}

/// The validated `sessions.cookie`: what goes into `Set-Cookie`.
#[derive(Debug, Clone, PartialEq)]
pub struct CookieConfig {
    /// Cookie name (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// `Path` attribute (starts with `/`).
    pub path: String,
    /// `Domain` attribute; None: a host-only cookie.
    pub domain: Option<String>,
    /// Add `HttpOnly`.
    pub http_only: bool,
    /// Always add `Secure`; false: only on requests that came over HTTPS.
    pub secure: bool,
    /// `SameSite` attribute (`None` only with `secure`).
    pub same_site: SameSite,
    /// `Max-Age`, the browser lifetime: `cookie.max_age`, else the session `ttl`.
    pub max_age: Duration,
}

/// The validated `sessions:` section. Key lists may be empty: the session module then
/// generates and persists keys under `runtime_dir` (memory store only).
#[derive(Clone, PartialEq)]
pub struct SessionsConfig {
    /// Whether sessions are on (`sessions.enabled`).
    pub enabled: bool,
    /// Where records live (`sessions.store`).
    pub store: StoreKind,
    /// The session cookie.
    pub cookie: CookieConfig,
    /// HMAC keys of the cookie, each at least [`MIN_SECRET_BYTES`] long: `secrets`, then the lines
    /// of `secret_file`. The first signs, all verify. Empty: generated under `runtime_dir`.
    pub secrets: Vec<Vec<u8>>,
    /// Absolute lifetime from creation; activity does not extend it (> 0, default 24h).
    pub ttl: Duration,
    /// Sliding expiry: a session unused this long is gone (> 0, default 30m).
    pub idle_timeout: Duration,
    /// Placement of a client's first request (no valid cookie).
    pub without_cookie: WithoutCookie,
    /// Request header carrying the session data to the worker.
    pub data_header: http::HeaderName,
    /// Response header with the worker's new session data; an empty value clears it.
    pub update_header: http::HeaderName,
    /// Response header with which the worker rotates (`regenerate`) or ends (`destroy`) the
    /// session.
    pub control_header: http::HeaderName,
    /// Request header carrying the session id (hex) to the worker.
    pub id_header: http::HeaderName,
    /// Request header telling the worker `new`, `existing` or `unavailable` (store down).
    pub state_header: http::HeaderName,
    /// Largest session data accepted from a worker, in bytes (1 to [`MAX_DATA_BYTES_LIMIT`],
    /// default 4096).
    pub max_data_bytes: usize,
    /// Which requests of a session take its lock.
    pub serialize: SerializeMode,
    /// Path prefixes whose requests take the lock whatever their method.
    pub serialize_paths: Vec<String>,
    /// Longest wait for a session's lock; then the request runs without it (its write is still
    /// compare-and-set). Default 5s.
    pub lock_timeout: Duration,
    /// Cap on records in the memory store (`sessions.memory.max_sessions`, 1 to 100000000).
    pub max_sessions: usize,
    /// File the memory store is saved to on graceful shutdown and loaded from at start (default
    /// `runtime_dir/sessions.snapshot`); None: no snapshot (`snapshot_path: ""`).
    pub snapshot_path: Option<PathBuf>,
    /// How often the memory store's sweeper runs (one shard of expired records per tick).
    pub sweep_interval: Duration,
    /// How drover reaches Redis (checked in full when the store or a shared rate limit
    /// uses it).
    pub redis: super::redis::RedisConfig,
    /// Encrypt session data at rest (`sessions.encryption.enabled`, default true).
    pub encrypt: bool,
    /// ChaCha20-Poly1305 keys: `encryption.keys`, then the lines of `key_file`. The first encrypts,
    /// all decrypt. Empty: generated under `runtime_dir`.
    pub data_keys: Vec<[u8; 32]>,
}

impl std::fmt::Debug for SessionsConfig {
    /// Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionsConfig")
            .field("enabled", &self.enabled)
            .field("store", &self.store)
            .field("cookie", &self.cookie)
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("ttl", &self.ttl)
            .field("idle_timeout", &self.idle_timeout)
            .field("encrypt", &self.encrypt)
            .finish_non_exhaustive()
    }
}

fn issue(field: &str, message: impl Into<String>) -> ConfigIssue {
    ConfigIssue {
        field: field.to_string(),
        line: None,
        message: message.into(),
    }
}

fn read_lines(path: &Path, field: &str, issues: &mut Vec<ConfigIssue>) -> Vec<String> {
    match super::validate::read_secret_file(path) {
        Ok(text) => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect(),
        Err(e) => {
            issues.push(issue(field, e.to_string()));
            Vec::new()
        }
    }
}

fn header_name(field: &str, v: &str, issues: &mut Vec<ConfigIssue>) -> http::HeaderName {
    match http::HeaderName::from_bytes(v.as_bytes()) {
        Ok(h) => h,
        Err(_) => {
            issues.push(issue(field, format!("`{v}` is not a valid header name")));
            http::HeaderName::from_static("x-invalid")
        }
    }
}

/// Parses a 32-byte key written as 64 hex characters.
pub fn parse_data_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        key[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(key)
}

/// `resolve` turns a path from the file into one relative to the config file.
pub fn validate_sessions(
    f: &SessionsFile,
    resolve: impl Fn(&str) -> PathBuf,
    runtime_dir: &Path,
    shared_limits: bool,
) -> Result<SessionsConfig, Vec<ConfigIssue>> {
    let mut issues = Vec::new();
    let store = match f.store.as_str() {
        "memory" => StoreKind::Memory,
        "redis" => StoreKind::Redis,
        other => {
            issues.push(issue(
                "sessions.store",
                format!("`{other}` is not a store; accepted: memory, redis"),
            ));
            StoreKind::Memory
        }
    };
    let c = &f.cookie;
    let cookie_name_ok = !c.name.is_empty()
        && c.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !cookie_name_ok {
        issues.push(issue(
            "sessions.cookie.name",
            format!(
                "`{}` is not a valid cookie name (letters, digits, `-`, `_`, `.`)",
                c.name
            ),
        ));
    }
    if !c.path.starts_with('/') || c.path.contains(';') {
        issues.push(issue(
            "sessions.cookie.path",
            format!("`{}` must start with `/` and contain no `;`", c.path),
        ));
    }
    if let Some(d) = &c.domain {
        if d.is_empty() || d.contains([';', ' ', ',']) {
            issues.push(issue(
                "sessions.cookie.domain",
                format!("`{d}` is not a domain"),
            ));
        }
    }
    let same_site = match c.same_site.to_ascii_lowercase().as_str() {
        "strict" => SameSite::Strict,
        "lax" => SameSite::Lax,
        "none" => SameSite::None,
        other => {
            issues.push(issue(
                "sessions.cookie.same_site",
                format!("`{other}` is not accepted; accepted: Strict, Lax, None"),
            ));
            SameSite::Lax
        }
    };
    if same_site == SameSite::None && !c.secure {
        issues.push(issue(
            "sessions.cookie.same_site",
            "`None` requires `secure: true` (browsers reject it otherwise)",
        ));
    }
    if f.ttl.0.is_zero() {
        issues.push(issue("sessions.ttl", "must be greater than zero"));
    }
    if f.idle_timeout.0.is_zero() {
        issues.push(issue("sessions.idle_timeout", "must be greater than zero"));
    }
    let without_cookie = match f.without_cookie.as_str() {
        "client_ip" => WithoutCookie::ClientIp,
        "balance" => WithoutCookie::Balance,
        other => {
            issues.push(issue(
                "sessions.without_cookie",
                format!("`{other}` is not accepted; accepted: balance, client_ip"),
            ));
            WithoutCookie::Balance
        }
    };
    let serialize = match f.serialize.as_str() {
        "unsafe_methods" => SerializeMode::UnsafeMethods,
        "all" => SerializeMode::All,
        "none" => SerializeMode::None,
        other => {
            issues.push(issue(
                "sessions.serialize",
                format!("`{other}` is not accepted; accepted: unsafe_methods, all, none"),
            ));
            SerializeMode::UnsafeMethods
        }
    };
    for p in &f.serialize_paths {
        if !p.starts_with('/') {
            issues.push(issue(
                "sessions.serialize_paths",
                format!("`{p}` must be a path prefix starting with `/`"),
            ));
        }
    }
    if f.max_data_bytes == 0 || f.max_data_bytes > MAX_DATA_BYTES_LIMIT {
        issues.push(issue(
            "sessions.max_data_bytes",
            format!(
                "{} is out of range; accepted: 1 to {MAX_DATA_BYTES_LIMIT}",
                f.max_data_bytes
            ),
        ));
    }
    if f.lock_timeout.0.is_zero() {
        issues.push(issue("sessions.lock_timeout", "must be greater than zero"));
    }
    if f.memory.max_sessions == 0 || f.memory.max_sessions > 100_000_000 {
        issues.push(issue(
            "sessions.memory.max_sessions",
            "out of range; accepted: 1 to 100000000",
        ));
    }
    if f.memory.sweep_interval.0.is_zero() {
        issues.push(issue(
            "sessions.memory.sweep_interval",
            "must be greater than zero",
        ));
    }
    if f.redis.lock_ttl.0 < f.lock_timeout.0 {
        issues.push(issue(
            "sessions.redis.lock_ttl",
            "must be at least `sessions.lock_timeout`",
        ));
    }
    let redis_used = (f.enabled && store == StoreKind::Redis) || shared_limits;
    let redis = super::redis::validate_redis(&f.redis, &resolve, redis_used, &mut issues);

    let mut secret_texts = f.secrets.clone();
    if let Some(p) = &f.secret_file {
        secret_texts.extend(read_lines(&resolve(p), "sessions.secret_file", &mut issues));
    }
    for s in &secret_texts {
        if s.len() < MIN_SECRET_BYTES {
            issues.push(issue(
                "sessions.secrets",
                format!("a secret is {} bytes; at least {MIN_SECRET_BYTES} are required (e.g. `openssl rand -hex 32`)", s.len()),
            ));
        }
    }
    let mut key_texts = f.encryption.keys.clone();
    if let Some(p) = &f.encryption.key_file {
        key_texts.extend(read_lines(
            &resolve(p),
            "sessions.encryption.key_file",
            &mut issues,
        ));
    }
    let mut data_keys = Vec::new();
    for k in &key_texts {
        match parse_data_key(k) {
            Some(key) => data_keys.push(key),
            None => issues.push(issue(
                "sessions.encryption.keys",
                "a key is not 64 hex characters (32 bytes; e.g. `openssl rand -hex 32`)",
            )),
        }
    }
    if f.enabled && store == StoreKind::Redis {
        // Generated keys live on one host; instances sharing Redis must share keys.
        if secret_texts.is_empty() {
            issues.push(issue(
                "sessions.secrets",
                "the redis store is shared by instances, so they need the same configured secret",
            ));
        }
        if f.encryption.enabled && key_texts.is_empty() {
            issues.push(issue(
                "sessions.encryption.keys",
                "the redis store is shared by instances, so they need the same configured key",
            ));
        }
    }
    let snapshot_path = match f.memory.snapshot_path.as_deref() {
        None => Some(runtime_dir.join("sessions.snapshot")),
        Some("") => None,
        Some(p) => Some(resolve(p)),
    };
    if !issues.is_empty() {
        return Err(issues);
    }
    Ok(SessionsConfig {
        enabled: f.enabled,
        store,
        cookie: CookieConfig {
            name: c.name.clone(),
            path: c.path.clone(),
            domain: c.domain.clone(),
            http_only: c.http_only,
            secure: c.secure,
            same_site,
            max_age: c.max_age.map(|d| d.0).unwrap_or(f.ttl.0),
        },
        secrets: secret_texts.into_iter().map(String::into_bytes).collect(),
        ttl: f.ttl.0,
        idle_timeout: f.idle_timeout.0,
        without_cookie,
        data_header: header_name("sessions.data_header", &f.data_header, &mut issues),
        update_header: header_name("sessions.update_header", &f.update_header, &mut issues),
        control_header: header_name("sessions.control_header", &f.control_header, &mut issues),
        id_header: header_name("sessions.id_header", &f.id_header, &mut issues),
        state_header: header_name("sessions.state_header", &f.state_header, &mut issues),
        max_data_bytes: f.max_data_bytes,
        serialize,
        serialize_paths: f.serialize_paths.clone(),
        lock_timeout: f.lock_timeout.0,
        max_sessions: f.memory.max_sessions,
        snapshot_path,
        sweep_interval: f.memory.sweep_interval.0,
        redis,
        encrypt: f.encryption.enabled,
        data_keys,
    })
    .and_then(|cfg| {
        if issues.is_empty() {
            Ok(cfg)
        } else {
            Err(issues)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(f: &SessionsFile) -> Result<SessionsConfig, Vec<ConfigIssue>> {
        let dir = std::env::temp_dir();
        validate_sessions(f, |p| dir.join(p), &dir, false)
    }

    #[test]
    fn defaults_balance_first_requests_and_serialise_unsafe_methods() {
        let c = validate(&SessionsFile::default()).unwrap();
        assert_eq!(c.without_cookie, WithoutCookie::Balance);
        assert_eq!(c.serialize, SerializeMode::UnsafeMethods);
        assert!(c.serialize_paths.is_empty());
        assert_eq!(c.control_header.as_str(), "x-drover-session-control");
    }

    #[test]
    fn serialize_settings_are_checked() {
        let mut f = SessionsFile {
            serialize: "reads".into(),
            serialize_paths: vec!["cart".into()],
            ..SessionsFile::default()
        };
        let issues = validate(&f).unwrap_err();
        let fields: Vec<&str> = issues.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["sessions.serialize", "sessions.serialize_paths"]);
        assert!(issues[0].message.contains("unsafe_methods, all, none"));
        f.serialize = "all".into();
        f.serialize_paths = vec!["/cart".into()];
        f.without_cookie = "client_ip".into();
        let c = validate(&f).unwrap();
        assert_eq!(c.serialize, SerializeMode::All);
        assert_eq!(c.without_cookie, WithoutCookie::ClientIp);
        assert_eq!(c.serialize_paths, ["/cart"]);
    }
}
