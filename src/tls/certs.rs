//! Server certificates: read from PEM files, checked, and chosen by SNI at handshake.
//!
//! A [`CertSet`] is built at config validation (so `drover -t`, start and every reload
//! check the same things) and published through the listeners' [`CertResolver`] with an
//! `ArcSwap`: a reload that loads new files swaps the set, new handshakes see it at once,
//! and connections already up keep the certificate they negotiated. A file that fails a
//! check fails the whole config, so the running set stays (see `lifecycle/reload.rs`).

use super::TlsError;
use arc_swap::ArcSwap;
use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{CertificateDer, ClientHello, PrivateKeyDer, ResolvesServerCert};
use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest certificate chain or key file read (a chain of a few certificates is ~10 KiB).
pub const PEM_FILE_CAP: u64 = 1024 * 1024;

/// One loaded certificate: its chain and key, and what the operator sees about it.
#[derive(Clone)]
pub struct LoadedCert {
    /// The chain and signing key rustls serves for this certificate.
    pub key: Arc<CertifiedKey>,
    /// Names it answers for: `server_names` from the config, else the certificate's DNS
    /// names (subjectAltName, or the common name when it has none). Lower case;
    /// `*.example.com` for wildcards.
    pub names: Vec<String>,
    /// The chain file it was read from (as configured); the label of the expiry metric.
    pub cert_file: PathBuf,
    /// The leaf's subject and expiry, for logs and `/api/status`.
    pub subject: String,
    /// The leaf's validity end as readable text (x509-parser's `ASN1Time` display).
    pub not_after: String,
    /// The leaf's validity end as seconds since the epoch.
    pub not_after_unix: i64,
}

impl std::fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCert")
            .field("names", &self.names)
            .field("cert_file", &self.cert_file)
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// Certificates by server name, and the default one for clients that send no name or a
/// name no certificate has.
#[derive(Debug, Default, Clone)]
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// Every certificate, in config order: for `/api/status`, logs and the expiry metric.
    pub certs: Vec<LoadedCert>,
}

impl CertSet {
    /// Builds the set; `default` indexes `certs` (the first when `None`). An earlier
    /// certificate wins a name two of them claim.
    pub fn new(certs: Vec<LoadedCert>, default: Option<usize>) -> CertSet {
        let mut set = CertSet {
            default: certs
                .get(default.unwrap_or(0))
                .map(|c| c.key.clone())
                .or_else(|| certs.first().map(|c| c.key.clone())),
            ..CertSet::default()
        };
        for c in &certs {
            for n in &c.names {
                match n.strip_prefix("*.") {
                    Some(parent) => {
                        set.wildcard
                            .entry(parent.to_string())
                            .or_insert_with(|| c.key.clone());
                    }
                    None => {
                        set.exact.entry(n.clone()).or_insert_with(|| c.key.clone());
                    }
                }
            }
        }
        set.certs = certs;
        set
    }

    /// The certificate for a client's SNI name: an exact name, then a wildcard one label
    /// up (`*.example.com` covers `a.example.com`, not `a.b.example.com`), then the default.
    pub fn choose(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(k) = self.wildcard.get(parent) {
                    return Some(k.clone());
                }
            }
        }
        self.default.clone()
    }

    /// True when no certificate is configured (no HTTPS listener can serve).
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

/// The listeners' certificate resolver: the current [`CertSet`], swapped on reload.
pub struct CertResolver {
    set: ArcSwap<CertSet>,
    expiry: std::sync::OnceLock<prometheus::IntGaugeVec>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver")
            .field("certs", &self.set.load().certs.len())
            .finish()
    }
}

impl CertResolver {
    /// A resolver serving `set`; the expiry metric is exported only after
    /// [`CertResolver::register`].
    pub fn new(set: Arc<CertSet>) -> Self {
        CertResolver {
            set: ArcSwap::new(set),
            expiry: std::sync::OnceLock::new(),
        }
    }

    /// Exports `drover_tls_certificate_not_after_seconds{cert_file}` (when each loaded
    /// certificate expires, for alerting on renewals that did not happen) in `registry`.
    pub fn register(&self, registry: &prometheus::Registry) {
        let g = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                crate::metric_names::TLS_CERTIFICATE_NOT_AFTER,
                "When each served TLS certificate expires (Unix time), by certificate file",
            ),
            &["cert_file"],
        )
        .expect("valid metric");
        if registry.register(Box::new(g.clone())).is_ok() {
            let _ = self.expiry.set(g);
        }
        self.publish();
    }

    fn publish(&self) {
        if let Some(g) = self.expiry.get() {
            g.reset();
            for c in &self.set.load().certs {
                g.with_label_values(&[&c.cert_file.display().to_string()])
                    .set(c.not_after_unix);
            }
        }
    }

    /// New handshakes use `set` from now on; established connections keep theirs.
    pub fn replace(&self, set: Arc<CertSet>) {
        self.set.store(set);
        self.publish();
    }

    /// The set new handshakes use now.
    pub fn current(&self) -> Arc<CertSet> {
        self.set.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.set.load().choose(hello.server_name())
    }
}

/// Reads a certificate chain file: a regular file within [`PEM_FILE_CAP`]. Certificates
/// are public; the file need not be private.
fn read_cert_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let (file, _) = open_regular(path)?;
    read_capped(file, path)
}

/// Opens `path` without blocking on a FIFO and refuses anything but a regular file.
fn open_regular(path: &Path) -> Result<(std::fs::File, std::fs::Metadata), TlsError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| TlsError::Read(path.to_path_buf(), e))?;
    let meta = file
        .metadata()
        .map_err(|e| TlsError::Read(path.to_path_buf(), e))?;
    if !meta.is_file() {
        return Err(TlsError::NotAFile(path.to_path_buf()));
    }
    Ok((file, meta))
}

fn read_capped(file: std::fs::File, path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    file.take(PEM_FILE_CAP + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| TlsError::Read(path.to_path_buf(), e))?;
    if bytes.len() as u64 > PEM_FILE_CAP {
        return Err(TlsError::TooLarge(path.to_path_buf()));
    }
    Ok(bytes)
}

/// Reads a private key file. Like other secret files drover reads it must be a regular
/// file; as PostgreSQL does for its `ssl_key_file`, it must be owned by drover's user
/// with mode 0600 (or stricter), or owned by root and at most group-readable (0640: a
/// key shared through a group such as Debian's `ssl-cert`). Links are followed (certbot's
/// `live/` folder is links) and the target is checked.
pub fn read_key_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let (file, meta) = open_regular(path)?;
    let me = crate::private_fs::euid();
    let mode = meta.mode() & 0o7777;
    let allowed = if meta.uid() == me {
        mode & 0o077 == 0
    } else if meta.uid() == 0 {
        mode & 0o037 == 0
    } else {
        return Err(TlsError::KeyOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            euid: me,
        });
    };
    if !allowed {
        return Err(TlsError::KeyOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    read_capped(file, path)
}

/// Loads and checks one certificate chain and its key: the chain parses, the key parses,
/// the key belongs to the leaf certificate, and rustls can sign with it.
/// `server_names` empty: the certificate's own DNS names.
pub fn load(
    cert_file: &Path,
    key_file: &Path,
    server_names: &[String],
) -> Result<LoadedCert, TlsError> {
    let cert_pem = read_cert_file(cert_file)?;
    let key_pem = read_key_file(key_file)?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(cert_file.to_path_buf(), e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_file.to_path_buf()));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsError::Pem(key_file.to_path_buf(), e.to_string()))?
        .ok_or_else(|| TlsError::NoKey(key_file.to_path_buf()))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(chain[0].as_ref())
        .map_err(|e| TlsError::Pem(cert_file.to_path_buf(), e.to_string()))?;
    let mut names: Vec<String> = server_names
        .iter()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    if names.is_empty() {
        names = dns_names(&leaf);
    }
    let subject = leaf.subject().to_string();
    let not_after = leaf.validity().not_after.to_string();
    let not_after_unix = leaf.validity().not_after.timestamp();
    pingora_rustls::install_default_crypto_provider();
    let provider = pingora_rustls::CryptoProvider::get_default().ok_or(TlsError::NoProvider)?;
    if !leaf.validity().is_valid() {
        log::warn!(
            "tls: {} is not valid now (valid until {not_after}); clients will refuse it",
            cert_file.display()
        );
    }
    drop(leaf);
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::KeyMismatch {
        cert: cert_file.to_path_buf(),
        key: key_file.to_path_buf(),
        why: e.to_string(),
    })?;
    Ok(LoadedCert {
        key: Arc::new(key),
        names,
        cert_file: cert_file.to_path_buf(),
        subject,
        not_after,
        not_after_unix,
    })
}

/// The DNS names of a certificate: its subjectAltName DNS entries, or its common name
/// when it has no subjectAltName.
fn dns_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_files_must_be_private_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(&key, b"-----BEGIN PRIVATE KEY-----\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_key_file(&key).is_ok());
        for mode in [0o640, 0o644, 0o604] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_key_file(&key).unwrap_err();
            assert!(matches!(e, TlsError::KeyOpen { .. }), "{mode:o}: {e}");
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        assert!(matches!(
            read_key_file(dir.path()),
            Err(TlsError::NotAFile(_))
        ));
        let e = read_key_file(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn a_big_file_is_refused_before_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, vec![b'a'; PEM_FILE_CAP as usize + 1]).unwrap();
        assert!(matches!(read_cert_file(&cert), Err(TlsError::TooLarge(_))));
    }

    #[test]
    fn an_empty_set_chooses_nothing() {
        let set = CertSet::new(Vec::new(), None);
        assert!(set.is_empty());
        assert!(set.choose(Some("a.test")).is_none());
        assert!(set.choose(None).is_none());
    }
}
