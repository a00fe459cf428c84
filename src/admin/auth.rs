//! Bearer-token check for state-changing admin endpoints.

use axum::http::HeaderMap;

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

/// With no token configured the admin plane is loopback-only (validation enforces it)
/// and mutating calls are allowed; with one, the request must carry it.
pub fn check(token: Option<&str>, headers: &HeaderMap) -> Result<(), &'static str> {
    let Some(token) = token else {
        return Ok(());
    };
    let Some(value) = headers.get("authorization") else {
        return Err("missing Authorization: Bearer <token>");
    };
    let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return Err("Authorization must be `Bearer <token>`");
    };
    if constant_time_eq(given, token.as_bytes()) {
        Ok(())
    } else {
        Err("wrong token")
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
        assert!(check(None, &h).is_ok());
        assert_eq!(
            check(Some("t0k"), &h),
            Err("missing Authorization: Bearer <token>")
        );
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert!(check(Some("t0k"), &h).is_err());
        h.insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(check(Some("t0k"), &h), Err("wrong token"));
        h.insert("authorization", "Bearer t0k".parse().unwrap());
        assert!(check(Some("t0k"), &h).is_ok());
    }
}
