//! `tls:` (HTTPS listeners, certificates, redirect, HSTS) and `http2:` (HTTP/2 to
//! clients). Certificates are loaded and checked here, so `drover -t`, start and every
//! reload refuse the same bad files; a reload that fails keeps the running certificates.

use super::duration::Dur;
use super::error::ConfigIssue;
use crate::tls::{CertSet, LoadedCert};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `tls:` as written: HTTPS listeners, their certificates, the HTTP redirect and HSTS.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFile {
    /// Addresses of HTTPS listeners (`IP:port`), besides the cleartext `listen`.
    pub listen: Vec<String>,
    /// Certificate chains and keys; the client's SNI name picks one.
    pub certificates: Vec<CertificateFile>,
    /// Offer HTTP/2 by ALPN (`h2`, then `http/1.1`); false: HTTP/1.1 only.
    pub http2: bool,
    /// Answer every request on the cleartext `listen` with a 308 to the same URL on
    /// the first HTTPS listener.
    pub redirect_http: bool,
    /// `Strict-Transport-Security` on HTTPS responses: its `max-age`; 0s = not sent.
    pub hsts_max_age: Dur,
    /// Add `includeSubDomains` to it.
    pub hsts_include_subdomains: bool,
    /// Add `preload` to it.
    pub hsts_preload: bool,
}

impl Default for TlsFile {
    fn default() -> Self {
        TlsFile {
            listen: Vec::new(),
            certificates: Vec::new(),
            http2: true,
            redirect_http: false,
            hsts_max_age: Dur::secs(0),
            hsts_include_subdomains: false,
            hsts_preload: false,
        }
    }
}

/// One `tls.certificates` entry: a certificate chain, its key, and the names it serves.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertificateFile {
    /// PEM file: the server certificate first, then its intermediates (`fullchain.pem`).
    pub cert_file: String,
    /// PEM private key of that certificate (mode 0600, or 0640 when owned by root).
    pub key_file: String,
    /// SNI names this certificate answers for (`*.example.com` for one label of
    /// wildcard). Empty: the certificate's own DNS names.
    pub server_names: Vec<String>,
    /// The certificate for clients without SNI or with an unknown name. Default: the
    /// first one listed.
    pub default: bool,
}

/// `http2:` as written: HTTP/2 to clients, over TLS by ALPN and as h2c (restart to change).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2File {
    /// HTTP/2 with prior knowledge (h2c) on the cleartext `listen`, next to HTTP/1.x.
    pub cleartext: bool,
    /// Streams a client may have open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Largest decoded request header list (HPACK), in bytes; more resets the stream.
    pub max_header_list_size: u32,
    /// Streams a client may reset before the server has seen them complete, per
    /// connection, before drover closes it (rapid reset, CVE-2023-44487).
    pub max_pending_resets: usize,
    /// An HTTP/2 connection without open streams for this long is closed.
    pub idle_timeout: Dur,
}

impl Default for Http2File {
    fn default() -> Self {
        Http2File {
            cleartext: false,
            max_concurrent_streams: 100,
            max_header_list_size: 64 * 1024,
            max_pending_resets: 20,
            idle_timeout: Dur::secs(60),
        }
    }
}

/// The validated `tls:` section.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// HTTPS listener addresses (`tls.listen`); empty: no HTTPS. Restart to change.
    pub listen: Vec<SocketAddr>,
    /// Certificates and keys loaded from `tls.certificates`, picked by the client's SNI name.
    pub certs: Arc<CertSet>,
    /// Offer `h2` by ALPN before `http/1.1` (`tls.http2`, default true).
    pub http2: bool,
    /// Answer every cleartext request with a 308 to the first HTTPS listener (`tls.redirect_http`).
    pub redirect_http: bool,
    /// The `Strict-Transport-Security` value, when sent.
    pub hsts: Option<http::HeaderValue>,
}

impl TlsConfig {
    /// Whether any HTTPS listener is configured.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty()
    }

    /// The port a redirect to HTTPS names (none when it is 443).
    pub fn redirect_port(&self) -> Option<u16> {
        self.listen.first().map(|a| a.port()).filter(|p| *p != 443)
    }
}

/// The validated `http2:` section: HTTP/2 to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Config {
    /// Accept h2c (HTTP/2 with prior knowledge) on the cleartext `listen`, next to HTTP/1.x.
    pub cleartext: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams open at once per connection (1 to 10000, default
    /// 100).
    pub max_concurrent_streams: u32,
    /// Largest decoded request header list, in bytes; a larger one resets the stream (1024 to
    /// 1048576, default 65536).
    pub max_header_list_size: u32,
    /// Streams a client may reset before drover accepted them, per connection; more closes it with
    /// GOAWAY (rapid reset; 1 to 10000, default 20).
    pub max_pending_resets: usize,
    /// An HTTP/2 connection with no open stream for this long is closed (> 0, default 60s).
    pub idle_timeout: std::time::Duration,
}

fn issue(field: &str, message: impl Into<String>) -> ConfigIssue {
    ConfigIssue {
        field: field.to_string(),
        line: None,
        message: message.into(),
    }
}

/// Validates `tls:`; `resolve` makes a path in the file absolute (relative to the file).
pub fn validate_tls(
    f: &TlsFile,
    resolve: impl Fn(&str) -> PathBuf,
    issues: &mut Vec<ConfigIssue>,
) -> TlsConfig {
    let mut listen = Vec::new();
    for (i, a) in f.listen.iter().enumerate() {
        match a.parse::<SocketAddr>() {
            Ok(addr) => listen.push(addr),
            Err(_) => issues.push(issue(
                &format!("tls.listen[{i}]"),
                format!("`{a}` is not an IP:port address (e.g. `0.0.0.0:443`)"),
            )),
        }
    }
    let mut loaded: Vec<LoadedCert> = Vec::new();
    let mut default = None;
    for (i, c) in f.certificates.iter().enumerate() {
        let field = format!("tls.certificates[{i}]");
        if c.cert_file.is_empty() || c.key_file.is_empty() {
            issues.push(issue(
                &field,
                "needs both `cert_file` and `key_file` (PEM files)",
            ));
            continue;
        }
        for n in &c.server_names {
            if !valid_server_name(n) {
                issues.push(issue(
                    &format!("{field}.server_names"),
                    format!("`{n}` is not a host name (letters, digits, `-`, `.`; `*.` first for a wildcard)"),
                ));
            }
        }
        if c.default {
            if default.is_some() {
                issues.push(issue(
                    &format!("{field}.default"),
                    "only one certificate can be the default",
                ));
            }
            default = Some(loaded.len());
        }
        match crate::tls::certs::load(
            &resolve(&c.cert_file),
            &resolve(&c.key_file),
            &c.server_names,
        ) {
            Ok(l) => loaded.push(l),
            Err(e) => issues.push(issue(&field, e.to_string())),
        }
    }
    if !listen.is_empty() && f.certificates.is_empty() {
        issues.push(issue(
            "tls.certificates",
            "`tls.listen` is set but no certificate is listed: add `- cert_file: … key_file: …`",
        ));
    }
    if f.redirect_http && listen.is_empty() {
        issues.push(issue(
            "tls.redirect_http",
            "needs an HTTPS listener in `tls.listen` to redirect to",
        ));
    }
    let hsts = (!f.hsts_max_age.0.is_zero()).then(|| {
        let mut v = format!("max-age={}", f.hsts_max_age.0.as_secs());
        if f.hsts_include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if f.hsts_preload {
            v.push_str("; preload");
        }
        http::HeaderValue::from_str(&v).unwrap_or(http::HeaderValue::from_static("max-age=0"))
    });
    if f.hsts_preload && f.hsts_max_age.0.as_secs() < 31_536_000 {
        issues.push(issue(
            "tls.hsts_preload",
            "preload lists require `hsts_max_age` of at least 365d (31536000 s) and `hsts_include_subdomains`",
        ));
    }
    TlsConfig {
        listen,
        certs: Arc::new(CertSet::new(loaded, default)),
        http2: f.http2,
        redirect_http: f.redirect_http,
        hsts,
    }
}

fn valid_server_name(n: &str) -> bool {
    let bare = n.strip_prefix("*.").unwrap_or(n);
    !bare.is_empty()
        && bare.len() <= 253
        && bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Validates `http2:`; out-of-range values are pushed onto `issues` (the returned config is then
/// unusable).
pub fn validate_http2(f: &Http2File, issues: &mut Vec<ConfigIssue>) -> Http2Config {
    if f.max_concurrent_streams == 0 || f.max_concurrent_streams > 10_000 {
        issues.push(issue(
            "http2.max_concurrent_streams",
            "out of range; accepted: 1 to 10000",
        ));
    }
    if !(1024..=1_048_576).contains(&f.max_header_list_size) {
        issues.push(issue(
            "http2.max_header_list_size",
            "out of range; accepted: 1024 to 1048576",
        ));
    }
    if f.max_pending_resets == 0 || f.max_pending_resets > 10_000 {
        issues.push(issue(
            "http2.max_pending_resets",
            "out of range; accepted: 1 to 10000",
        ));
    }
    if f.idle_timeout.0.is_zero() {
        issues.push(issue("http2.idle_timeout", "must be greater than zero"));
    }
    Http2Config {
        cleartext: f.cleartext,
        max_concurrent_streams: f.max_concurrent_streams,
        max_header_list_size: f.max_header_list_size,
        max_pending_resets: f.max_pending_resets,
        idle_timeout: f.idle_timeout.0,
    }
}

/// Checks a CA file an upstream names (`upstreams[i].ca_file`).
pub fn load_upstream_ca(
    path: &Path,
    field: &str,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Arc<pingora_core::protocols::tls::CaType>> {
    match crate::tls::load_ca_file(path) {
        Ok(ca) => Some(ca),
        Err(e) => {
            issues.push(issue(field, e.to_string()));
            None
        }
    }
}

/// How drover speaks to a backend (`workers.protocol`, `upstreams[i].protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.1 (drover's engine can serve these).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over cleartext: gRPC workers.
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`); needs `tls: true`.
    H2,
}

/// A `protocol` value drover does not speak.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a protocol; accepted: http1, h2c (HTTP/2 in cleartext, e.g. gRPC workers), h2 (HTTP/2 over TLS)")]
pub struct UnknownProtocol(pub String);

impl std::str::FromStr for Protocol {
    type Err = UnknownProtocol;
    fn from_str(s: &str) -> Result<Self, UnknownProtocol> {
        match s {
            "http1" | "" => Ok(Protocol::Http1),
            "h2c" => Ok(Protocol::H2c),
            "h2" => Ok(Protocol::H2),
            other => Err(UnknownProtocol(other.to_string())),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::H2 => "h2",
        })
    }
}

/// TLS to an upstream: the name it is verified against (and sent as SNI), whether it is
/// verified at all, and the CA file that anchors it (the system roots when none).
#[derive(Clone, Debug)]
pub struct UpstreamTls {
    /// Name sent as SNI and verified in the certificate: `upstreams[i].sni`, else the host of
    /// `address`.
    pub sni: String,
    /// Verify the certificate and its name (default true); false accepts any certificate (tests
    /// only).
    pub verify: bool,
    /// `upstreams[i].ca_file` resolved against the config file; equality compares it, not `ca`.
    pub ca_file: Option<PathBuf>,
    /// The CAs loaded from `ca_file`; None: the system's roots.
    pub ca: Option<Arc<pingora_core::protocols::tls::CaType>>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.sni == other.sni && self.verify == other.verify && self.ca_file == other.ca_file
    }
}
impl Eq for UpstreamTls {}

/// The connection drover opens to a backend: its protocol, and TLS if any.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Link {
    /// HTTP version spoken to the backend.
    pub protocol: Protocol,
    /// TLS settings; None: cleartext.
    pub tls: Option<UpstreamTls>,
}

impl Link {
    /// HTTP/1.1 in cleartext: what drover's own engine speaks to workers.
    pub fn plain(&self) -> bool {
        self.protocol == Protocol::Http1 && self.tls.is_none()
    }

    /// Sets the protocol and TLS settings of a backend's Pingora peer.
    pub fn apply(&self, peer: &mut pingora_core::upstreams::peer::HttpPeer) {
        use pingora_core::protocols::ALPN;
        if let Some(t) = &self.tls {
            peer.scheme = pingora_core::upstreams::peer::Scheme::HTTPS;
            peer.sni = t.sni.clone();
            peer.options.verify_cert = t.verify;
            peer.options.verify_hostname = t.verify;
            peer.options.ca = t.ca.clone();
        }
        peer.options.alpn = match self.protocol {
            Protocol::Http1 => ALPN::H1,
            Protocol::H2c | Protocol::H2 => ALPN::H2,
        };
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use std::path::Path;

    fn err(yaml: &str) -> String {
        let yaml = format!("workers:\n  command: [/bin/sh]\n{yaml}");
        parse(&yaml, Path::new("/etc/drover/d.yaml"))
            .unwrap_err()
            .to_string()
    }

    fn ok(yaml: &str) -> crate::config::Config {
        let yaml = format!("workers:\n  command: [/bin/sh]\n{yaml}");
        parse(&yaml, Path::new("/etc/drover/d.yaml")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn tls_and_http2_errors_name_the_field_and_line() {
        let e = err("tls:\n  listen: [nope]\n  redirect_http: true\n");
        assert!(e.contains("tls.listen[0]"), "{e}");
        assert!(e.contains(":5: tls.redirect_http"), "{e}");
        let e = err("tls:\n  listen: [127.0.0.1:8443]\n");
        assert!(e.contains("no certificate is listed"), "{e}");
        let e = err("tls:\n  certificates:\n    - cert_file: /nonexistent/c.pem\n      key_file: /nonexistent/k.pem\n");
        assert!(
            e.contains("tls.certificates[0]") && e.contains("cannot read /nonexistent/c.pem"),
            "{e}"
        );
        let e = err("listen: 127.0.0.1:8443\ntls:\n  listen: [127.0.0.1:8443]\n");
        assert!(e.contains("also the cleartext `listen`"), "{e}");
        let e = err("http2:\n  max_concurrent_streams: 0\n  max_header_list_size: 10\n");
        assert!(
            e.contains("http2.max_concurrent_streams") && e.contains("http2.max_header_list_size"),
            "{e}"
        );
        let e = err("tls:\n  hsts_max_age: 60s\n  hsts_preload: true\n");
        assert!(e.contains("tls.hsts_preload"), "{e}");
    }

    #[test]
    fn upstream_protocols_and_tls_are_checked() {
        let e = err("upstreams:\n  - address: 127.0.0.1:1\n    protocol: h2\n");
        assert!(
            e.contains("upstreams[0].protocol") && e.contains("tls: true"),
            "{e}"
        );
        let e = err("upstreams:\n  - address: 127.0.0.1:1\n    sni: x\n");
        assert!(
            e.contains("upstreams[0].sni") && e.contains("only with `tls: true`"),
            "{e}"
        );
        let e = err("upstreams:\n  - address: 127.0.0.1:1\n    tls: true\n    ca_file: /nonexistent/ca.pem\n");
        assert!(e.contains("upstreams[0].ca_file"), "{e}");
        let e = parse(
            "workers:\n  command: [/bin/sh]\n  protocol: h2\n",
            Path::new("/etc/drover/d.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(":3: workers.protocol"), "{e}");
        let c = ok("upstreams:\n  - address: localhost:443\n    tls: true\n");
        let t = c.upstreams[0].link.tls.as_ref().unwrap();
        assert_eq!((t.sni.as_str(), t.verify), ("localhost", true));
        assert!(
            !c.plain_backends,
            "a TLS upstream turns drover's engine off"
        );
        assert!(ok("").plain_backends);
        let c = ok("tls:\n  hsts_max_age: 24h\n  hsts_include_subdomains: true\n");
        assert_eq!(
            c.tls.hsts.unwrap().to_str().unwrap(),
            "max-age=86400; includeSubDomains"
        );
    }

    #[test]
    fn discovered_upstreams_carry_their_link() {
        let c = ok("upstreams:\n  - address: app.internal:443\n    discover: dns\n    tls: true\n    protocol: h2\n");
        let d = &c.discovered[0];
        assert_eq!(d.link.protocol, crate::config::Protocol::H2);
        assert_eq!(d.link.tls.as_ref().unwrap().sni, "app.internal");
        assert!(
            !c.plain_backends,
            "a discovered TLS upstream turns drover's engine off too"
        );
        let c = ok("upstreams:\n  - srv: _grpc._tcp.app\n    protocol: h2c\n");
        assert_eq!(c.discovered[0].link.protocol, crate::config::Protocol::H2c);
        assert!(!c.plain_backends);
        let e = err("upstreams:\n  - srv: _https._tcp.app\n    tls: true\n");
        assert!(
            e.contains("upstreams[0].sni") && e.contains("needs `sni`"),
            "{e}"
        );
        let c = ok("upstreams:\n  - srv: _https._tcp.app\n    tls: true\n    sni: app.example\n");
        assert_eq!(
            c.discovered[0].link.tls.as_ref().unwrap().sni,
            "app.example"
        );
        assert!(ok("upstreams:\n  - srv: _http._tcp.app\n").plain_backends);
    }
}
