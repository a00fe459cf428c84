//! The session cookie: a random id, its issue time and the backend the session was
//! first placed on, signed with HMAC-SHA256.
//!
//! Value layout (base64url, no padding, 59 characters):
//! `id (16 bytes) || issued_at unix seconds (8 bytes, big endian) || pin (4 bytes) ||
//! HMAC[..16]`. The MAC covers everything before it, so a client can neither pick an
//! id, extend a session past the absolute TTL by editing the time, nor choose its
//! backend. `pin` is a 32-bit hash of the backend name (0: none), like nginx's
//! `sticky cookie`: a session that has no record yet (drover keeps none until the
//! cookie comes back or the worker sets data) still returns to the worker that served
//! its first request. The 54-character layout without `pin` (drover before sessions
//! were stored lazily) still verifies. Several keys verify (rotation); the first signs.
//! Truncating the MAC to 128 bits keeps the cookie short at no practical cost (forging
//! needs 2^128 online guesses).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

const ID_LEN: usize = 16;
const MAC_LEN: usize = 16;
const PIN_LEN: usize = 4;
const PAYLOAD_LEN: usize = ID_LEN + 8 + PIN_LEN;
const RAW_LEN: usize = PAYLOAD_LEN + MAC_LEN;
const LEGACY_PAYLOAD_LEN: usize = ID_LEN + 8;
const LEGACY_RAW_LEN: usize = LEGACY_PAYLOAD_LEN + MAC_LEN;
/// Encoded length of a cookie value drover issues.
pub const ENCODED_LEN: usize = (RAW_LEN * 4).div_ceil(3);
/// Encoded length of the layout without a pin, still accepted.
pub const LEGACY_ENCODED_LEN: usize = (LEGACY_RAW_LEN * 4).div_ceil(3);
/// Clocks of instances sharing sessions may disagree this much.
const CLOCK_SKEW_SECS: u64 = 60;

/// A session id: 16 random bytes. It is a bearer credential, so `Debug` shows only a prefix.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; ID_LEN]);

impl SessionId {
    /// 128 bits from the thread-local CSPRNG (ChaCha12 seeded from the OS).
    pub fn random() -> Self {
        let mut id = [0u8; ID_LEN];
        rand::rng().fill_bytes(&mut id);
        SessionId(id)
    }

    /// The id in lower-case hex (32 characters); [`SessionId::hex_bytes`] avoids the allocation.
    pub fn hex(&self) -> String {
        self.hex_bytes().iter().map(|b| char::from(*b)).collect()
    }

    /// The id in lower-case hex, on the stack (the id header on every request).
    pub fn hex_bytes(&self) -> [u8; ID_LEN * 2] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; ID_LEN * 2];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[(b >> 4) as usize];
            out[2 * i + 1] = DIGITS[(b & 15) as usize];
        }
        out
    }

    /// A 64-bit digest for hashing onto the affinity ring and lock stripes.
    pub fn hash64(&self) -> u64 {
        u64::from_le_bytes([
            self.0[0], self.0[1], self.0[2], self.0[3], self.0[4], self.0[5], self.0[6], self.0[7],
        ])
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids are bearer credentials: logs show a prefix only.
        write!(f, "SessionId({}…)", &self.hex()[..8])
    }
}

/// The 32-bit pin a cookie carries for a backend name (never 0, which means "none").
pub fn pin_of(backend: &str) -> u32 {
    let h = crate::stable_hash::fnv1a(backend.as_bytes());
    match (h ^ (h >> 32)) as u32 {
        0 => 1,
        p => p,
    }
}

/// What a genuine cookie says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// The session the cookie names.
    pub id: SessionId,
    /// When the cookie was issued, in Unix seconds; the absolute TTL counts from it.
    pub issued_at: u64,
    /// [`pin_of`] the backend of the session's first request; `None` in old cookies.
    pub pin: Option<u32>,
}

/// Why a cookie was not accepted; each reason is counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Wrong length, or not base64url of either cookie layout.
    Malformed,
    /// No configured key verifies the MAC (forged, or signed with a key since removed).
    BadSignature,
    /// Issued at least the TTL ago, or more than 60 s in the future (clock skew allowance).
    Expired,
}

impl Rejection {
    /// The `reason` label of the rejected-cookies counter.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::BadSignature => "bad_signature",
            Rejection::Expired => "expired",
        }
    }
}

/// Signs and verifies session cookie values with the configured secrets.
pub struct CookieCodec {
    keys: Vec<HmacSha256>,
    ttl_secs: u64,
}

impl CookieCodec {
    /// `keys` must not be empty; the first one signs.
    pub fn new(keys: &[Vec<u8>], ttl: Duration) -> Self {
        let keys = keys
            .iter()
            .filter_map(|k| HmacSha256::new_from_slice(k).ok())
            .collect();
        CookieCodec {
            keys,
            ttl_secs: ttl.as_secs().max(1),
        }
    }

    /// The cookie value for `id`, issued at `issued_at` (Unix seconds) and pinned to `pin` (`None`
    /// is written as 0), signed with the first key.
    pub fn encode(&self, id: &SessionId, issued_at: u64, pin: Option<u32>) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[..ID_LEN].copy_from_slice(&id.0);
        raw[ID_LEN..ID_LEN + 8].copy_from_slice(&issued_at.to_be_bytes());
        raw[ID_LEN + 8..PAYLOAD_LEN].copy_from_slice(&pin.unwrap_or(0).to_be_bytes());
        if let Some(key) = self.keys.first() {
            let mut mac = key.clone();
            mac.update(&raw[..PAYLOAD_LEN]);
            let tag = mac.finalize().into_bytes();
            raw[PAYLOAD_LEN..].copy_from_slice(&tag[..MAC_LEN]);
        }
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Returns what a genuine, unexpired cookie says.
    pub fn decode(&self, value: &str, now: u64) -> Result<Decoded, Rejection> {
        let payload_len = match value.len() {
            ENCODED_LEN => PAYLOAD_LEN,
            LEGACY_ENCODED_LEN => LEGACY_PAYLOAD_LEN,
            _ => return Err(Rejection::Malformed),
        };
        let raw_len = payload_len + MAC_LEN;
        let mut raw = [0u8; RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(value.as_bytes(), &mut raw) {
            Ok(n) if n == raw_len => {}
            _ => return Err(Rejection::Malformed),
        }
        let genuine = self.keys.iter().any(|key| {
            let mut mac = key.clone();
            mac.update(&raw[..payload_len]);
            // Constant-time comparison of the truncated tag.
            mac.verify_truncated_left(&raw[payload_len..raw_len])
                .is_ok()
        });
        if !genuine {
            return Err(Rejection::BadSignature);
        }
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&raw[..ID_LEN]);
        let mut t = [0u8; 8];
        t.copy_from_slice(&raw[ID_LEN..ID_LEN + 8]);
        let issued = u64::from_be_bytes(t);
        if issued > now + CLOCK_SKEW_SECS || now.saturating_sub(issued) >= self.ttl_secs {
            return Err(Rejection::Expired);
        }
        let pin = if payload_len == PAYLOAD_LEN {
            let mut p = [0u8; PIN_LEN];
            p.copy_from_slice(&raw[ID_LEN + 8..PAYLOAD_LEN]);
            Some(u32::from_be_bytes(p)).filter(|p| *p != 0)
        } else {
            None
        };
        Ok(Decoded {
            id: SessionId(id),
            issued_at: issued,
            pin,
        })
    }

    /// A cookie in the layout without a pin (what drover issued before), for tests of
    /// compatibility.
    #[cfg(test)]
    pub fn encode_legacy(&self, id: &SessionId, issued_at: u64) -> String {
        let mut raw = [0u8; LEGACY_RAW_LEN];
        raw[..ID_LEN].copy_from_slice(&id.0);
        raw[ID_LEN..LEGACY_PAYLOAD_LEN].copy_from_slice(&issued_at.to_be_bytes());
        if let Some(key) = self.keys.first() {
            let mut mac = key.clone();
            mac.update(&raw[..LEGACY_PAYLOAD_LEN]);
            let tag = mac.finalize().into_bytes();
            raw[LEGACY_PAYLOAD_LEN..].copy_from_slice(&tag[..MAC_LEN]);
        }
        URL_SAFE_NO_PAD.encode(raw)
    }
}

/// The `Set-Cookie` value for a new session.
pub fn set_cookie(cfg: &crate::config::CookieConfig, value: &str) -> String {
    CookieHeader::new(cfg).set(value, false)
}

/// The `Set-Cookie` value that makes the browser drop the cookie (a destroyed session).
pub fn expire_cookie(cfg: &crate::config::CookieConfig) -> String {
    CookieHeader::new(cfg).expire(false)
}

/// `Set-Cookie` values for one cookie configuration, its attributes formatted once
/// (a first request of every client gets one).
pub struct CookieHeader {
    /// `name=`
    prefix: String,
    /// `; Path=…; Max-Age=…; SameSite=…[; Domain=…][; HttpOnly][; Secure]`
    attributes: String,
    /// The same with `Max-Age=0`.
    expired: String,
    /// `; Secure`, added over HTTPS when `attributes` lacks it (`cookie.secure: false`
    /// makes the flag follow the listener's scheme; `true` sets it always).
    secure_suffix: &'static str,
}

impl CookieHeader {
    /// Formats the attributes from `cfg` once: `Path`, `Max-Age`, `SameSite`, and `Domain`,
    /// `HttpOnly`, `Secure` when configured.
    pub fn new(cfg: &crate::config::CookieConfig) -> Self {
        let attributes = |max_age: u64| {
            let mut s = format!(
                "; Path={}; Max-Age={max_age}; SameSite={}",
                cfg.path,
                cfg.same_site.as_str()
            );
            if let Some(d) = &cfg.domain {
                s.push_str("; Domain=");
                s.push_str(d);
            }
            if cfg.http_only {
                s.push_str("; HttpOnly");
            }
            if cfg.secure {
                s.push_str("; Secure");
            }
            s
        };
        CookieHeader {
            prefix: format!("{}=", cfg.name),
            attributes: attributes(cfg.max_age.as_secs()),
            expired: attributes(0),
            secure_suffix: if cfg.secure { "" } else { "; Secure" },
        }
    }

    /// The cookie for a session; `https`: the request came over HTTPS.
    pub fn set(&self, value: &str, https: bool) -> String {
        let mut s = String::with_capacity(
            self.prefix.len() + value.len() + self.attributes.len() + self.secure_suffix.len(),
        );
        s.push_str(&self.prefix);
        s.push_str(value);
        s.push_str(&self.attributes);
        if https {
            s.push_str(self.secure_suffix);
        }
        s
    }

    /// The `Set-Cookie` value that deletes the cookie (`Max-Age=0`); `https` adds `Secure` as in
    /// [`CookieHeader::set`].
    pub fn expire(&self, https: bool) -> String {
        let mut s = String::with_capacity(self.prefix.len() + self.expired.len() + 8);
        s.push_str(&self.prefix);
        s.push_str(&self.expired);
        if https {
            s.push_str(self.secure_suffix);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> CookieCodec {
        CookieCodec::new(
            &[b"k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1".to_vec()],
            Duration::from_secs(100),
        )
    }

    #[test]
    fn round_trips_and_has_fixed_length() {
        let c = codec();
        let id = SessionId::random();
        let v = c.encode(&id, 1000, Some(77));
        assert_eq!(v.len(), ENCODED_LEN);
        assert_eq!(ENCODED_LEN, 59);
        let d = c.decode(&v, 1050).unwrap();
        assert_eq!((d.id, d.issued_at, d.pin), (id, 1000, Some(77)));
        let none = c.decode(&c.encode(&id, 1000, None), 1050).unwrap();
        assert_eq!(none.pin, None);
    }

    #[test]
    fn cookies_without_a_pin_still_verify() {
        let c = codec();
        let id = SessionId::random();
        let v = c.encode_legacy(&id, 1000);
        assert_eq!(v.len(), LEGACY_ENCODED_LEN);
        assert_eq!(LEGACY_ENCODED_LEN, 54);
        let d = c.decode(&v, 1050).unwrap();
        assert_eq!((d.id, d.issued_at, d.pin), (id, 1000, None));
    }

    #[test]
    fn pins_are_never_zero_and_differ_per_backend() {
        let pins: std::collections::HashSet<u32> =
            (0..64).map(|i| pin_of(&format!("worker-{i}"))).collect();
        assert_eq!(pins.len(), 64);
        assert!(!pins.contains(&0));
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let c = codec();
        for v in [
            c.encode(&SessionId::random(), 1000, Some(5)),
            c.encode_legacy(&SessionId::random(), 1000),
        ] {
            let mut raw = URL_SAFE_NO_PAD.decode(&v).unwrap();
            for i in 0..raw.len() * 8 {
                raw[i / 8] ^= 1 << (i % 8);
                let forged = URL_SAFE_NO_PAD.encode(&raw);
                assert_eq!(
                    c.decode(&forged, 1001),
                    Err(Rejection::BadSignature),
                    "bit {i}"
                );
                raw[i / 8] ^= 1 << (i % 8);
            }
        }
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let c = codec();
        for v in [
            "",
            "x",
            "%%%",
            &"A".repeat(ENCODED_LEN - 1),
            &"é".repeat(27),
            &"!".repeat(ENCODED_LEN),
        ] {
            assert_eq!(c.decode(v, 0), Err(Rejection::Malformed), "{v:?}");
        }
    }

    #[test]
    fn expires_after_ttl_and_refuses_future_times() {
        let c = codec();
        let v = c.encode(&SessionId::random(), 1000, None);
        assert!(c.decode(&v, 1099).is_ok());
        assert_eq!(c.decode(&v, 1100), Err(Rejection::Expired));
        let future = c.encode(&SessionId::random(), 5000, None);
        assert_eq!(c.decode(&future, 1000), Err(Rejection::Expired));
    }

    #[test]
    fn old_keys_verify_after_rotation_and_unknown_keys_do_not() {
        let old = codec();
        let v = old.encode(&SessionId::random(), 1000, None);
        let rotated = CookieCodec::new(
            &[
                b"k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2".to_vec(),
                b"k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1".to_vec(),
            ],
            Duration::from_secs(100),
        );
        assert!(rotated.decode(&v, 1001).is_ok());
        let other = CookieCodec::new(
            &[b"k3k3k3k3k3k3k3k3k3k3k3k3k3k3k3k3".to_vec()],
            Duration::from_secs(100),
        );
        assert_eq!(other.decode(&v, 1001), Err(Rejection::BadSignature));
    }

    #[test]
    fn set_cookie_carries_every_configured_flag() {
        let cfg = crate::config::CookieConfig {
            name: "sid".into(),
            path: "/app".into(),
            domain: Some("example.com".into()),
            http_only: true,
            secure: true,
            same_site: crate::config::SameSite::Strict,
            max_age: Duration::from_secs(60),
        };
        assert_eq!(
            set_cookie(&cfg, "V"),
            "sid=V; Path=/app; Max-Age=60; SameSite=Strict; Domain=example.com; HttpOnly; Secure"
        );
        assert_eq!(
            expire_cookie(&cfg),
            "sid=; Path=/app; Max-Age=0; SameSite=Strict; Domain=example.com; HttpOnly; Secure"
        );
    }
}
