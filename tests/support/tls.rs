//! A test CA made with the `openssl` command line, certificates it issues, and a small
//! HTTPS client on rustls (through `pingora-rustls`, which drover already depends on)
//! that reports what it negotiated: the peer certificate, the ALPN protocol.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub cert: PathBuf,
    key: PathBuf,
    serial: std::cell::Cell<u32>,
}

/// One issued certificate: the chain file (leaf then CA) and its key (mode 0600).
#[derive(Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// DER of the leaf, to tell which certificate a handshake saw.
    pub leaf_der: Vec<u8>,
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn private(p: &Path) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "3",
                "-subj",
                "/CN=drover test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            dir.path(),
        );
        private(&dir.path().join("ca.key"));
        TestCa {
            cert: dir.path().join("ca.pem"),
            key: dir.path().join("ca.key"),
            dir,
            serial: std::cell::Cell::new(1),
        }
    }

    /// Issues a certificate for `names` (DNS names; `127.0.0.1` is always added as an IP
    /// name) under `file` (`file.pem` = leaf + CA, `file.key`), in `dir` or the CA's own
    /// folder.
    pub fn issue(&self, file: &str, names: &[&str]) -> Issued {
        self.issue_in(self.dir.path(), file, names)
    }

    pub fn issue_in(&self, dir: &Path, file: &str, names: &[&str]) -> Issued {
        let n = self.serial.get();
        self.serial.set(n + 1);
        let mut san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        san.push("IP:127.0.0.1".into());
        let ext = dir.join(format!("{file}.ext"));
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
                san.join(",")
            ),
        )
        .unwrap();
        let key = dir.join(format!("{file}.key"));
        let csr = dir.join(format!("{file}.csr"));
        let leaf = dir.join(format!("{file}.leaf.pem"));
        let d = |p: &Path| p.display().to_string();
        let cn = format!("/CN={}", names.first().copied().unwrap_or("localhost"));
        openssl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &d(&key),
                "-out",
                &d(&csr),
                "-subj",
                &cn,
            ],
            dir,
        );
        private(&key);
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &d(&csr),
                "-CA",
                &d(&self.cert),
                "-CAkey",
                &d(&self.key),
                "-set_serial",
                &n.to_string(),
                "-days",
                "2",
                "-out",
                &d(&leaf),
                "-extfile",
                &d(&ext),
            ],
            dir,
        );
        let leaf_pem = std::fs::read(&leaf).unwrap();
        let ca_pem = std::fs::read(&self.cert).unwrap();
        let cert = dir.join(format!("{file}.pem"));
        std::fs::write(&cert, [leaf_pem.clone(), ca_pem].concat()).unwrap();
        let leaf_der = pingora_rustls_der(&leaf_pem);
        Issued {
            cert,
            key,
            leaf_der,
        }
    }

    /// base64 of the SHA-256 of a certificate's public key (Chromium's
    /// `--ignore-certificate-errors-spki-list`).
    pub fn spki_hash(cert: &Path) -> String {
        let script = format!(
            "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
            cert.display()
        );
        let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

fn pingora_rustls_der(pem: &[u8]) -> Vec<u8> {
    let mut r = pem;
    let der = rustls_pemfile::certs(&mut r)
        .next()
        .expect("a certificate")
        .expect("valid PEM")
        .to_vec();
    der
}

/// What one HTTPS exchange saw.
#[derive(Debug)]
pub struct Seen {
    pub status: u16,
    pub alpn: Option<Vec<u8>>,
    pub leaf_der: Vec<u8>,
    pub head: String,
    pub body: String,
}

/// A client config trusting only `ca` and offering `alpn`.
pub fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<pingora_rustls::ClientConfig> {
    pingora_rustls::install_default_crypto_provider();
    let mut roots = pingora_rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = pingora_rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// Opens a new TLS connection to `port` with SNI `name`, sends one HTTP/1.1 GET of
/// `path` (Connection: close) and reads the whole answer.
pub async fn get_once(
    cfg: Arc<pingora_rustls::ClientConfig>,
    port: u16,
    name: &str,
    path: &str,
) -> Result<Seen, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let server_name =
        pingora_rustls::ServerName::try_from(name.to_string()).map_err(|e| format!("name: {e}"))?;
    let mut tls = pingora_rustls::TlsConnector::from(cfg)
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (alpn, leaf_der) = {
        let (_, conn) = tls.get_ref();
        (
            conn.alpn_protocol().map(|a| a.to_vec()),
            conn.peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec())
                .unwrap_or_default(),
        )
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    // A close_notify-less end is fine for this client: the answer has a length.
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .ok_or_else(|| format!("no response head in {:?}", text))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok(Seen {
        status,
        alpn,
        leaf_der,
        head,
        body,
    })
}

/// Runs curl with `args` and returns (exit code, stdout, stderr).
pub fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// One TLS connection kept open across requests (HTTP/1.1 keep-alive).
pub struct KeepAlive {
    tls: tokio_rustls_stream::Stream,
    host: String,
}

mod tokio_rustls_stream {
    pub type Stream = pingora_rustls::ClientTlsStream<tokio::net::TcpStream>;
}

impl KeepAlive {
    pub async fn connect(
        cfg: Arc<pingora_rustls::ClientConfig>,
        port: u16,
        name: &str,
    ) -> Result<KeepAlive, String> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let sn = pingora_rustls::ServerName::try_from(name.to_string())
            .map_err(|e| format!("name: {e}"))?;
        let tls = pingora_rustls::TlsConnector::from(cfg)
            .connect(sn, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        Ok(KeepAlive {
            tls,
            host: name.to_string(),
        })
    }

    /// The leaf certificate this connection was set up with.
    pub fn leaf_der(&self) -> Vec<u8> {
        self.tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    /// GET `path` on the connection; the status of an answer with a Content-Length.
    pub async fn get(&mut self, path: &str) -> Result<u16, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.tls
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self
                .tls
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed before the response head".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or("no content-length")?;
        while buf.len() < head_end + len {
            let n = self
                .tls
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed in the body".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        head.split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line in {head:?}"))
    }
}
