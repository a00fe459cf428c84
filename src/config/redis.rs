//! `sessions.redis`: how drover reaches Redis (one node, Sentinel or Cluster; TLS; ACL
//! user and password) and what it asks of it (durability, local cache). The same
//! connection serves the session store and shared rate limits (`rate_limit.store:
//! redis`).

use super::duration::Dur;
use super::error::ConfigIssue;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use crate::redis_link::settings::{RedisConfig, RedisTls, RedisTopology};

/// Most sentinel or cluster seed addresses accepted.
pub const MAX_REDIS_NODES: usize = 64;
/// Largest local cache (entries) accepted.
pub const MAX_LOCAL_CACHE: usize = 10_000_000;
/// Largest PEM file (CA, certificate, key) read.
const PEM_CAP: u64 = 1 << 20;

/// `sessions.redis` as written: how drover reaches Redis (docs/OPERATIONS.md, "Several drovers").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisStoreFile {
    /// One Redis node: `redis://[user:pass@]host:port[/db]`, or `rediss://` for TLS.
    /// Ignored when `sentinel` or `cluster` is set.
    pub url: String,
    /// Follow a Sentinel-managed master (replication with automatic failover).
    pub sentinel: Option<SentinelFile>,
    /// Redis Cluster: seed nodes; the slot map is discovered from them.
    pub cluster: Option<ClusterFile>,
    /// TLS to every node and sentinel; on when `tls.enabled` is set or the url is `rediss://`.
    pub tls: RedisTlsFile,
    /// ACL user (Redis 6+); empty: the `default` user.
    pub username: Option<String>,
    /// Password of `username` (or of `requirepass`); write `${VAR}` to keep it out of
    /// the file, or use `password_file`.
    pub password: Option<String>,
    /// File whose first line is the password (owner-only, like every secret file).
    pub password_file: Option<String>,
    /// Prefix of every key drover writes: sessions, locks, shared rate limits (default `drover:`);
    /// no `{` or `}` with `cluster`.
    pub key_prefix: String,
    /// Per-call timeout; a slower Redis counts as down for that request.
    pub timeout: Dur,
    /// A lock left by a crashed instance expires after this long.
    pub lock_ttl: Dur,
    /// How many replicas must hold a session write before drover moves on (`WAIT`).
    pub durability: DurabilityFile,
    /// Session records cached in drover's memory, invalidated by Redis.
    pub local_cache: LocalCacheFile,
}

impl Default for RedisStoreFile {
    fn default() -> Self {
        RedisStoreFile {
            url: "redis://127.0.0.1:6379".into(),
            sentinel: None,
            cluster: None,
            tls: RedisTlsFile::default(),
            username: None,
            password: None,
            password_file: None,
            key_prefix: "drover:".into(),
            timeout: Dur::ms(250),
            lock_ttl: Dur::secs(10),
            durability: DurabilityFile::default(),
            local_cache: LocalCacheFile::default(),
        }
    }
}

/// `sessions.redis.sentinel`: a master found through Redis Sentinel and followed through failovers.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SentinelFile {
    /// The name the sentinels monitor the master under (`sentinel monitor NAME ...`).
    pub master_name: String,
    /// Sentinel addresses, `host:port` (26379 by default).
    pub nodes: Vec<String>,
    /// Credentials of the sentinels themselves (`requirepass` in sentinel.conf), if any.
    pub username: Option<String>,
    /// Password of the sentinels (their `requirepass`); `${VAR}` keeps it out of the file.
    pub password: Option<String>,
    /// File whose first line is the sentinels' password (owner-only); instead of `password`.
    pub password_file: Option<String>,
}

/// `sessions.redis.cluster`: Redis Cluster; drover follows slot moves.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterFile {
    /// Seed nodes, `host:port`; any reachable one is enough to learn the slot map.
    pub nodes: Vec<String>,
}

/// `sessions.redis.tls`: TLS to every node and sentinel, with an optional client certificate.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTlsFile {
    /// TLS to every node (and sentinel). A `rediss://` url turns it on too.
    pub enabled: bool,
    /// PEM file of the CA(s) that signed the servers' certificates; default: the
    /// system's trust store.
    pub ca_file: Option<String>,
    /// Client certificate (PEM) for servers that require one (`tls-auth-clients yes`).
    pub cert_file: Option<String>,
    /// Its private key (PEM; owner-only, like every secret file).
    pub key_file: Option<String>,
}

/// `sessions.redis.durability`: the replicas a session write waits for (`WAIT`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DurabilityFile {
    /// After each session write, wait (`WAIT`) until this many replicas hold it. 0: do
    /// not wait (Redis' asynchronous replication; a failover may lose the last writes).
    pub replicas: u32,
    /// Longest wait for those replicas; a write not acknowledged in time is kept, and
    /// counted as unreplicated (`drover_session_writes_unreplicated_total`).
    pub timeout: Dur,
}

impl Default for DurabilityFile {
    fn default() -> Self {
        DurabilityFile {
            replicas: 0,
            timeout: Dur::ms(50),
        }
    }
}

/// `sessions.redis.local_cache`: session records cached in drover, invalidated by RESP3 client
/// tracking.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalCacheFile {
    /// Session records kept in drover's memory, invalidated by Redis itself (RESP3
    /// client tracking): a read of a cached session costs no round trip. Needs Redis 6+
    /// (RESP3). 0 turns it off (and speaks RESP2, for older servers).
    pub max_entries: usize,
    /// Longest time a cached record is used without asking Redis again (bounds how
    /// stale a read can be if an invalidation is lost with a broken connection).
    pub ttl: Dur,
}

impl Default for LocalCacheFile {
    fn default() -> Self {
        LocalCacheFile {
            max_entries: 100_000,
            ttl: Dur::secs(2),
        }
    }
}

fn issue(field: &str, message: impl Into<String>) -> ConfigIssue {
    ConfigIssue {
        field: field.to_string(),
        line: None,
        message: message.into(),
    }
}

/// Why a `host:port` was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPortError {
    /// Not `host[:port]`: empty, a URL, or with a path, user info or space (holds the text).
    #[error("`{0}` is not `host:port`")]
    NotHostPort(String),
    /// An IPv6 address with a port but without brackets, e.g. `::1:7000` (holds the text).
    #[error("`{0}`: write an IPv6 address as `[addr]:port`")]
    UnbracketedIpv6(String),
    /// The port is not a number from 1 to 65535.
    #[error("`{text}`: `{port}` is not a port")]
    BadPort {
        /// The whole text.
        text: String,
        /// The part taken as the port.
        port: String,
    },
}

/// `host:port` (IPv6 in brackets), with `default_port` when the port is left out.
pub fn host_port(text: &str, default_port: u16) -> Result<(String, u16), HostPortError> {
    let t = text.trim();
    let bad = || HostPortError::NotHostPort(t.to_string());
    if t.is_empty() || t.contains("://") || t.contains(['/', '@', ' ']) {
        return Err(bad());
    }
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(bad()),
        }
    } else {
        match t.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return Err(HostPortError::UnbracketedIpv6(t.to_string())),
            None => (t, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        Some(p) => {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| HostPortError::BadPort {
                    text: t.to_string(),
                    port: p.to_string(),
                })?
        }
        None => default_port,
    };
    Ok((host.to_string(), port))
}

fn nodes(
    list: &[String],
    default_port: u16,
    field: &str,
    issues: &mut Vec<ConfigIssue>,
) -> Vec<(String, u16)> {
    if list.is_empty() {
        issues.push(issue(field, "lists no node; give at least one `host:port`"));
    }
    if list.len() > MAX_REDIS_NODES {
        issues.push(issue(field, format!("at most {MAX_REDIS_NODES} nodes")));
    }
    list.iter()
        .filter_map(|n| match host_port(n, default_port) {
            Ok(hp) => Some(hp),
            Err(e) => {
                issues.push(issue(field, e.to_string()));
                None
            }
        })
        .collect()
}

fn first_line(path: &Path, field: &str, issues: &mut Vec<ConfigIssue>) -> Option<String> {
    match super::validate::read_secret_file(path) {
        Ok(text) => Some(text.lines().next().unwrap_or("").trim().to_string()),
        Err(e) => {
            issues.push(issue(field, e.to_string()));
            None
        }
    }
}

fn password(
    inline: &Option<String>,
    file: &Option<String>,
    prefix: &str,
    resolve: &impl Fn(&str) -> PathBuf,
    issues: &mut Vec<ConfigIssue>,
) -> Option<String> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            issues.push(issue(
                &format!("{prefix}.password_file"),
                "set `password` or `password_file`, not both",
            ));
            None
        }
        (Some(p), None) => Some(p.clone()),
        (None, Some(f)) => first_line(&resolve(f), &format!("{prefix}.password_file"), issues),
        (None, None) => None,
    }
}

/// Why a public PEM file was not read.
#[derive(Debug, thiserror::Error)]
enum PemFileError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a regular file of at most 1 MiB", path.display())]
    NotARegularFile { path: PathBuf },
}

/// A public PEM file (CA, certificate): any readable regular file up to 1 MiB.
fn public_pem(path: &Path, field: &str, issues: &mut Vec<ConfigIssue>) -> Option<Vec<u8>> {
    let io = |source| PemFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let read = || -> Result<Vec<u8>, PemFileError> {
        let meta = std::fs::metadata(path).map_err(io)?;
        if !meta.is_file() || meta.len() > PEM_CAP {
            return Err(PemFileError::NotARegularFile {
                path: path.to_path_buf(),
            });
        }
        std::fs::read(path).map_err(io)
    };
    match read() {
        Ok(b) if String::from_utf8_lossy(&b).contains("-----BEGIN") => Some(b),
        Ok(_) => {
            issues.push(issue(field, format!("{}: no PEM block", path.display())));
            None
        }
        Err(e) => {
            issues.push(issue(field, e.to_string()));
            None
        }
    }
}

/// Validates `sessions.redis`. `used`: the section matters (a Redis store or a shared
/// rate limit), so its files are read and its addresses checked.
pub fn validate_redis(
    f: &RedisStoreFile,
    resolve: impl Fn(&str) -> PathBuf,
    used: bool,
    issues: &mut Vec<ConfigIssue>,
) -> RedisConfig {
    let mut local = Vec::new();
    let issues_here = &mut local;
    if f.timeout.0.is_zero() {
        issues_here.push(issue("sessions.redis.timeout", "must be greater than zero"));
    }
    if f.durability.replicas > 16 {
        issues_here.push(issue(
            "sessions.redis.durability.replicas",
            "out of range; accepted: 0 to 16",
        ));
    }
    if f.durability.replicas > 0 && f.durability.timeout.0.is_zero() {
        issues_here.push(issue(
            "sessions.redis.durability.timeout",
            "must be greater than zero when `replicas` is set",
        ));
    }
    if f.local_cache.max_entries > MAX_LOCAL_CACHE {
        issues_here.push(issue(
            "sessions.redis.local_cache.max_entries",
            format!("out of range; accepted: 0 to {MAX_LOCAL_CACHE}"),
        ));
    }
    if f.local_cache.max_entries > 0 && f.local_cache.ttl.0.is_zero() {
        issues_here.push(issue(
            "sessions.redis.local_cache.ttl",
            "must be greater than zero (or set `max_entries: 0`)",
        ));
    }
    let url_tls = f.url.starts_with("rediss://");
    let topology = match (&f.sentinel, &f.cluster) {
        (Some(_), Some(_)) => {
            issues_here.push(issue(
                "sessions.redis.cluster",
                "set `sentinel` or `cluster`, not both",
            ));
            RedisTopology::Single { url: f.url.clone() }
        }
        (Some(s), None) => {
            if s.master_name.is_empty() || s.master_name.contains(char::is_whitespace) {
                issues_here.push(issue(
                    "sessions.redis.sentinel.master_name",
                    "must name the monitored master (as in `sentinel monitor NAME ...`)",
                ));
            }
            let list = if used {
                nodes(
                    &s.nodes,
                    26379,
                    "sessions.redis.sentinel.nodes",
                    issues_here,
                )
            } else {
                Vec::new()
            };
            let password = password(
                &s.password,
                &s.password_file,
                "sessions.redis.sentinel",
                &resolve,
                issues_here,
            );
            RedisTopology::Sentinel {
                master_name: s.master_name.clone(),
                nodes: list,
                username: s.username.clone().filter(|u| !u.is_empty()),
                password,
            }
        }
        (None, Some(c)) => {
            if f.key_prefix.contains(['{', '}']) {
                issues_here.push(issue(
                    "sessions.redis.key_prefix",
                    "must not contain `{` or `}` with `cluster` (drover puts each session's keys in one hash slot with a `{...}` tag)",
                ));
            }
            let list = if used {
                nodes(&c.nodes, 6379, "sessions.redis.cluster.nodes", issues_here)
            } else {
                Vec::new()
            };
            RedisTopology::Cluster { nodes: list }
        }
        (None, None) => {
            if used && !(f.url.starts_with("redis://") || url_tls) {
                issues_here.push(issue(
                    "sessions.redis.url",
                    format!(
                        "`{}` must start with redis:// (or rediss:// for TLS)",
                        crate::redact::url_userinfo(&f.url)
                    ),
                ));
            }
            if url_tls && !f.tls.enabled && used {
                // rediss:// is enough on its own.
            } else if f.tls.enabled && !url_tls && used {
                issues_here.push(issue(
                    "sessions.redis.tls.enabled",
                    "the url starts with redis://; write rediss:// for TLS",
                ));
            }
            RedisTopology::Single { url: f.url.clone() }
        }
    };
    let tls_on = f.tls.enabled || (url_tls && matches!(topology, RedisTopology::Single { .. }));
    let tls = if tls_on && used {
        let ca_pem = f
            .tls
            .ca_file
            .as_deref()
            .and_then(|p| public_pem(&resolve(p), "sessions.redis.tls.ca_file", issues_here));
        let client = match (&f.tls.cert_file, &f.tls.key_file) {
            (Some(c), Some(k)) => {
                let cert = public_pem(&resolve(c), "sessions.redis.tls.cert_file", issues_here);
                let key = match super::validate::read_secret_file(&resolve(k)) {
                    Ok(t) => Some(t.into_bytes()),
                    Err(e) => {
                        issues_here.push(issue("sessions.redis.tls.key_file", e.to_string()));
                        None
                    }
                };
                cert.zip(key)
            }
            (None, None) => None,
            _ => {
                issues_here.push(issue(
                    "sessions.redis.tls.cert_file",
                    "a client certificate needs both `cert_file` and `key_file`",
                ));
                None
            }
        };
        Some(RedisTls { ca_pem, client })
    } else {
        if !tls_on && used && (f.tls.ca_file.is_some() || f.tls.cert_file.is_some()) {
            issues_here.push(issue(
                "sessions.redis.tls.enabled",
                "TLS files are set but TLS is off; set `tls.enabled: true` (or a rediss:// url)",
            ));
        }
        None
    };
    let password = if used {
        password(
            &f.password,
            &f.password_file,
            "sessions.redis",
            &resolve,
            issues_here,
        )
    } else {
        f.password.clone()
    };
    issues.append(&mut local);
    RedisConfig {
        topology,
        tls,
        username: f.username.clone().filter(|u| !u.is_empty()),
        password,
        prefix: f.key_prefix.clone(),
        timeout: f.timeout.0,
        lock_ttl: f.lock_ttl.0,
        wait_replicas: f.durability.replicas,
        wait_timeout: f.durability.timeout.0,
        cache_entries: f.local_cache.max_entries,
        cache_ttl: f.local_cache.ttl.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<RedisConfig, Vec<ConfigIssue>> {
        let f: RedisStoreFile = serde_yaml::from_str(yaml).unwrap();
        let dir = std::env::temp_dir();
        let mut issues = Vec::new();
        let c = validate_redis(&f, |p| dir.join(p), true, &mut issues);
        if issues.is_empty() {
            Ok(c)
        } else {
            Err(issues)
        }
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            host_port("10.0.0.1:26380", 26379),
            Ok(("10.0.0.1".into(), 26380))
        );
        assert_eq!(
            host_port("sentinel-a", 26379),
            Ok(("sentinel-a".into(), 26379))
        );
        assert_eq!(host_port("[::1]:7000", 6379), Ok(("::1".into(), 7000)));
        assert!(host_port("::1:7000", 6379).is_err());
        assert!(host_port("redis://a:1", 6379).is_err());
        assert!(host_port("a:0", 6379).is_err());
        assert!(host_port("a:http", 6379).is_err());
    }

    #[test]
    fn topologies_and_their_mistakes() {
        let s = check("sentinel:\n  master_name: mymaster\n  nodes: [a:26379, b]\n").unwrap();
        assert_eq!(
            s.topology,
            RedisTopology::Sentinel {
                master_name: "mymaster".into(),
                nodes: vec![("a".into(), 26379), ("b".into(), 26379)],
                username: None,
                password: None,
            }
        );
        let c = check("cluster:\n  nodes: [a:7000, b:7001]\n").unwrap();
        assert_eq!(c.topology.kind(), "cluster");
        let e = check("cluster:\n  nodes: []\nsentinel:\n  master_name: m\n  nodes: [a]\n")
            .unwrap_err();
        assert_eq!(e[0].field, "sessions.redis.cluster");
        let e = check("cluster:\n  nodes: [a]\nkey_prefix: \"{x}\"\n").unwrap_err();
        assert_eq!(e[0].field, "sessions.redis.key_prefix");
        let e = check("sentinel:\n  master_name: ''\n  nodes: []\n").unwrap_err();
        let fields: Vec<_> = e.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "sessions.redis.sentinel.master_name",
                "sessions.redis.sentinel.nodes"
            ]
        );
        let e = check("url: http://x\n").unwrap_err();
        assert!(e[0].message.contains("rediss://"), "{e:?}");
        let e = check("tls:\n  enabled: true\n").unwrap_err();
        assert_eq!(e[0].field, "sessions.redis.tls.enabled");
        let e = check("password: a\npassword_file: b\n").unwrap_err();
        assert_eq!(e[0].field, "sessions.redis.password_file");
    }

    #[test]
    fn tls_files_are_read_and_the_key_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nx\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let yaml = format!(
            "url: rediss://h:6380\ntls:\n  ca_file: {}\n  cert_file: {}\n  key_file: {}\n",
            ca.display(),
            ca.display(),
            key.display()
        );
        let f: RedisStoreFile = serde_yaml::from_str(&yaml).unwrap();
        let mut issues = Vec::new();
        validate_redis(&f, |p: &str| PathBuf::from(p), true, &mut issues);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].field, "sessions.redis.tls.key_file");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut issues = Vec::new();
        let c = validate_redis(&f, |p: &str| PathBuf::from(p), true, &mut issues);
        assert!(issues.is_empty(), "{issues:?}");
        let tls = c.tls.unwrap();
        assert!(tls.ca_pem.is_some() && tls.client.is_some());
    }
}
