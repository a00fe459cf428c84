//! Who may call the admin plane.
//!
//! The rule (docs/OPERATIONS.md, "Threat model"):
//! - `GET /healthz`, `/readyz`, `/metrics` and `/dashboard` (a static page holding no
//!   data) are open: probes and Prometheus scrape them.
//! - Every state-changing request (any method but GET and HEAD) needs the token, also on
//!   loopback. Without `admin.token` / `admin.token_file` drover generates one from the
//!   OS CSPRNG into `runtime_dir/admin-token` (mode 0600) at first start and logs where.
//! - Every other read (`/api/*`, the `/api/stream` WebSocket) needs the token when the
//!   operator configured one; without one they are open, as the listener is then
//!   loopback-only (validation enforces it).
//!
//! The token travels as `Authorization: Bearer <token>`. Browsers cannot set headers on
//! a WebSocket, so `/api/stream` also takes it as a subprotocol:
//! `new WebSocket(url, ["drover.live", "drover-token." + base64url(token)])`; the server
//! answers with `drover.live` and never echoes the token.

use crate::private_fs::{self, Links, PrivateFsError};
use axum::http::HeaderMap;
use base64::Engine;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Name of the generated token's file in `runtime_dir`.
pub const TOKEN_FILE: &str = "admin-token";
/// Subprotocol the dashboard's WebSocket asks for (and the server selects).
pub const WS_PROTOCOL: &str = "drover.live";
/// Prefix of the subprotocol carrying the token, base64url without padding.
pub const WS_TOKEN_PREFIX: &str = "drover-token.";
const TOKEN_FILE_CAP: u64 = 4096;

/// Why no admin token could be read or generated; the guard logs it and answers
/// `AdminError::NoToken` (503).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read or created safely (see `private_fs`).
    #[error("admin token: {0}")]
    File(#[from] PrivateFsError),
    /// The token file's first line has fewer than 16 characters; it is never overwritten
    /// automatically.
    #[error("admin token: {path} is empty or shorter than 16 characters; delete it to generate a new one")]
    TooShort {
        /// The token file, `runtime_dir/admin-token`.
        path: PathBuf,
    },
}

/// The token the admin plane checks: the operator's, or the generated one.
pub struct Tokens {
    runtime_dir: PathBuf,
    generated: Mutex<Option<Arc<str>>>,
}

/// The token in force for one request.
pub struct Effective {
    /// The secret clients must present (`Authorization: Bearer`, or the WebSocket token
    /// subprotocol).
    pub token: Arc<str>,
    /// True when the operator configured it (then reads need it too).
    pub configured: bool,
}

impl Tokens {
    /// Touches no file yet: the generated token is read or created on the first `effective` call.
    pub fn new(runtime_dir: &Path) -> Self {
        Tokens {
            runtime_dir: runtime_dir.to_path_buf(),
            generated: Mutex::new(None),
        }
    }

    /// Where the generated token lives: `runtime_dir/admin-token`.
    pub fn path(&self) -> PathBuf {
        self.runtime_dir.join(TOKEN_FILE)
    }

    /// The operator's token if one is configured, else the generated one (read from, or
    /// created in, `runtime_dir/admin-token` on first use).
    pub fn effective(&self, configured: Option<&str>) -> Result<Effective, TokenError> {
        if let Some(t) = configured {
            return Ok(Effective {
                token: Arc::from(t),
                configured: true,
            });
        }
        let mut g = self.generated.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = &*g {
            return Ok(Effective {
                token: t.clone(),
                configured: false,
            });
        }
        let t: Arc<str> = Arc::from(load_or_create(&self.path())?);
        *g = Some(t.clone());
        Ok(Effective {
            token: t,
            configured: false,
        })
    }
}

/// Reads the generated token, or creates it: 32 bytes from the OS CSPRNG, hex.
fn load_or_create(path: &Path) -> Result<String, TokenError> {
    let read = || -> Result<String, TokenError> {
        let text = private_fs::read_private_text(path, TOKEN_FILE_CAP, Links::Refuse)?;
        let t = text.lines().next().unwrap_or("").trim().to_string();
        if t.len() < 16 {
            return Err(TokenError::TooShort {
                path: path.to_path_buf(),
            });
        }
        Ok(t)
    };
    match read() {
        Ok(t) => return Ok(t),
        Err(TokenError::File(e)) if e.is_not_found() => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match private_fs::create_private(path, format!("{hex}\n").as_bytes()) {
        Ok(()) => {
            log::info!(
                "admin: generated an admin token in {} (mode 0600); state-changing admin calls need `Authorization: Bearer $(cat {})`",
                path.display(),
                path.display()
            );
            Ok(hex)
        }
        Err(PrivateFsError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            read()
        }
        Err(e) => Err(e.into()),
    }
}

/// Compares in time independent of where the strings differ, so the token cannot be
/// guessed byte by byte from response timings.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    diff == 0 && a.len() == b.len()
}

/// Why a request's token was refused; the text is the 401 answer's `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// No `Authorization` header.
    #[error("missing Authorization: Bearer <token>")]
    Missing,
    /// An `Authorization` header of another scheme.
    #[error("Authorization must be `Bearer <token>`")]
    NotBearer,
    /// A WebSocket upgrade with neither the header nor the `drover-token.` subprotocol.
    #[error("missing token: send Authorization: Bearer <token> or the subprotocol drover-token.<base64url(token)>")]
    MissingForWebSocket,
    /// A `drover-token.` subprotocol that does not decode.
    #[error("the drover-token subprotocol is not base64url")]
    BadSubprotocol,
    /// A token that is not the admin token.
    #[error("wrong token")]
    Wrong,
}

/// Checks `Authorization: Bearer <token>` against `token`.
pub fn check(token: &str, headers: &HeaderMap) -> Result<(), TokenRefusal> {
    let Some(value) = headers.get("authorization") else {
        return Err(TokenRefusal::Missing);
    };
    let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return Err(TokenRefusal::NotBearer);
    };
    if constant_time_eq(given, token.as_bytes()) {
        Ok(())
    } else {
        Err(TokenRefusal::Wrong)
    }
}

/// Like [`check`], also accepting the token as a `drover-token.<base64url>` WebSocket
/// subprotocol (what a browser can send).
pub fn check_ws(token: &str, headers: &HeaderMap) -> Result<(), TokenRefusal> {
    if headers.contains_key("authorization") {
        return check(token, headers);
    }
    let offered = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(WS_TOKEN_PREFIX));
    let Some(encoded) = offered else {
        return Err(TokenRefusal::MissingForWebSocket);
    };
    let given = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| TokenRefusal::BadSubprotocol)?;
    if constant_time_eq(&given, token.as_bytes()) {
        Ok(())
    } else {
        Err(TokenRefusal::Wrong)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_exactly() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokex"));
        assert!(!constant_time_eq(b"secret", b"secret-token"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn checks_bearer_header() {
        let mut h = HeaderMap::new();
        assert_eq!(check("t0k", &h), Err(TokenRefusal::Missing));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert!(check("t0k", &h).is_err());
        h.insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(check("t0k", &h), Err(TokenRefusal::Wrong));
        h.insert("authorization", "Bearer t0k".parse().unwrap());
        assert!(check("t0k", &h).is_ok());
    }

    #[test]
    fn websocket_token_travels_as_a_subprotocol() {
        let mut h = HeaderMap::new();
        assert!(check_ws("s3cret/token+x", &h).is_err());
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("s3cret/token+x");
        h.insert(
            "sec-websocket-protocol",
            format!("drover.live, drover-token.{enc}").parse().unwrap(),
        );
        assert!(check_ws("s3cret/token+x", &h).is_ok());
        assert_eq!(check_ws("other-token", &h), Err(TokenRefusal::Wrong));
    }

    #[test]
    fn generates_a_private_token_once() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokens::new(dir.path());
        let a = t.effective(None).unwrap();
        assert!(!a.configured && a.token.len() == 64);
        let again = Tokens::new(dir.path()).effective(None).unwrap();
        assert_eq!(a.token, again.token, "read back after a restart");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(t.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let op = t.effective(Some("operator-token-123456")).unwrap();
        assert!(op.configured && &*op.token == "operator-token-123456");
    }
}
