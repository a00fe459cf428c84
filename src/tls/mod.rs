//! TLS at the edge: server certificates for drover's HTTPS listeners (chosen by SNI,
//! re-read on reload) and the trust anchors of upstreams drover reaches over TLS.
//!
//! The TLS library is rustls (through Pingora's `rustls` feature: pure Rust on `ring`,
//! no system OpenSSL; docs/DECISIONS.md). TLS 1.2 and 1.3 only, rustls's default cipher
//! suites (AEAD only, forward secrecy only), ALPN `h2` and `http/1.1`.

pub mod certs;

pub use certs::{CertResolver, CertSet, LoadedCert};

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a certificate, key or CA file was refused. Each message names the file and says
/// how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Opening or reading the file failed (path, I/O error).
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The path is a directory, FIFO, device or the like.
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    /// The file is over [`certs::PEM_FILE_CAP`] (1 MiB).
    #[error("{0} is larger than 1 MiB; drover refuses to read it")]
    TooLarge(PathBuf),
    /// The PEM could not be parsed (path, parser message).
    #[error("{0}: not valid PEM: {1}")]
    Pem(PathBuf, String),
    /// A certificate chain or CA file without a single certificate block.
    #[error("{0} holds no certificate (expected `-----BEGIN CERTIFICATE-----` blocks, leaf first, then the chain)")]
    NoCertificate(PathBuf),
    #[error("{0} holds no private key (expected a PKCS#8, PKCS#1 or SEC1 PEM key)")]
    /// A key file without a PKCS#8, PKCS#1 or SEC1 key.
    NoKey(PathBuf),
    /// rustls refused the pair: the key does not match the leaf or cannot sign.
    #[error("the key {key} does not belong to the certificate {cert} ({why}); check that both files come from the same issuance")]
    KeyMismatch {
        /// The certificate chain file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        why: String,
    },
    #[error("{path} is owned by uid {owner}, neither drover's user ({euid}) nor root, so another user controls the key. Fix: `chown {euid} {path}` and `chmod 600 {path}`")]
    /// The key file (after following links) is owned by neither drover's user nor root.
    KeyOwner {
        /// The key file.
        path: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// drover's effective uid.
        euid: u32,
    },
    #[error("{path} has mode {mode:04o}: other users can read the private key. Fix: `chmod 600 {path}` (or 640 for a root-owned key shared with a group)")]
    /// The key's mode is looser than 0600 (own key) or 0640 (root-owned key).
    KeyOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits (`st_mode & 0o7777`).
        mode: u32,
    },
    /// rustls has no process-wide default `CryptoProvider` installed.
    #[error("no TLS crypto provider is available")]
    NoProvider,
    /// A CA file certificate that x509-parser rejects (path, parser message); checked
    /// before Pingora's wrapper, which would panic on it.
    #[error("{0}: {1}")]
    Ca(PathBuf, String),
}

/// Trust anchors for an upstream reached over TLS: the certificates of a PEM CA file,
/// in the form Pingora's connector takes (`HttpPeer.options.ca`).
pub fn load_ca_file(path: &Path) -> Result<Arc<pingora_core::protocols::tls::CaType>, TlsError> {
    use pingora_core::utils::tls::WrappedX509;
    let bytes = std::fs::read(path).map_err(|e| TlsError::Read(path.to_path_buf(), e))?;
    if bytes.len() as u64 > certs::PEM_FILE_CAP {
        return Err(TlsError::TooLarge(path.to_path_buf()));
    }
    let ders: Vec<Vec<u8>> = rustls_pemfile::certs(&mut bytes.as_slice())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(path.to_path_buf(), e.to_string()))?;
    if ders.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    let mut out = Vec::with_capacity(ders.len());
    for der in ders {
        // Pingora's wrapper panics on a certificate it cannot parse: parse first.
        if let Err(e) = x509_parser::parse_x509_certificate(&der) {
            return Err(TlsError::Ca(path.to_path_buf(), e.to_string()));
        }
        out.push(WrappedX509::new(der, |d| {
            pingora_core::utils::tls::parse_x509(d)
        }));
    }
    Ok(Arc::from(out.into_boxed_slice()))
}
