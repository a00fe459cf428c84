//! A session record and its byte encoding (Redis values and the memory snapshot).
//!
//! Layout (version 2): `2 | version u64 | flags u8 | created u64 | last_seen u64 |
//! hits u32 | worker len u8 | worker | has data u8 | data len u32 | data`, integers big
//! endian. `version` sits at bytes 1..9 so the Redis compare-and-set script can read it
//! without decoding the rest. Version 1 records (no `version`, no `flags`) still decode,
//! as version 0.

use std::sync::Arc;

/// What drover keeps about one session. `data` is what the worker set, sealed when
/// encryption is on (the store never sees plaintext then).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Name of the backend the session is pinned to (`worker-N` or `host:port`).
    pub worker: Option<Arc<str>>,
    /// When the session was created, in Unix ms; the absolute TTL counts from it.
    pub created_ms: u64,
    /// When a request last touched the session, in Unix ms; the idle timeout counts from it.
    pub last_seen_ms: u64,
    /// Incremented each time a request writes the record (saturating).
    pub hits: u32,
    /// What the worker set (sealed when encryption is on); `None` until it sets some.
    pub data: Option<Box<[u8]>>,
    /// Bumped by every write of `data`: a write carries the version it read and is
    /// applied only if the store still holds it (compare-and-set), so an update that
    /// overlapped another one is detected instead of silently overwriting it.
    pub version: u64,
    /// A tombstone: the id was rotated away (regenerate) and must not be used again.
    pub revoked: bool,
}

const FORMAT_V1: u8 = 1;
const FORMAT: u8 = 2;
const FLAG_REVOKED: u8 = 1;

impl Record {
    /// An empty, unpinned record created and last seen at `now_ms` (Unix ms), version 0.
    pub fn new(now_ms: u64) -> Self {
        Record {
            created_ms: now_ms,
            last_seen_ms: now_ms,
            ..Record::default()
        }
    }

    /// When the record stops being valid: the earlier of absolute and idle expiry.
    pub fn expires_ms(&self, ttl_ms: u64, idle_ms: u64) -> u64 {
        (self.created_ms.saturating_add(ttl_ms)).min(self.last_seen_ms.saturating_add(idle_ms))
    }

    /// A tombstone for a rotated id.
    pub fn tombstone(now_ms: u64) -> Self {
        Record {
            revoked: true,
            ..Record::new(now_ms)
        }
    }

    /// The version field as the Redis script compares it (bytes 1..9 of the encoding).
    pub fn version_bytes(version: u64) -> [u8; 8] {
        version.to_be_bytes()
    }

    /// The version-2 byte layout above, for Redis and the snapshot; a backend name over 255 bytes
    /// is truncated.
    pub fn encode(&self) -> Vec<u8> {
        let worker = self.worker.as_deref().unwrap_or("").as_bytes();
        let worker = &worker[..worker.len().min(255)];
        let data = self.data.as_deref().unwrap_or(&[]);
        let mut out =
            Vec::with_capacity(1 + 8 + 1 + 8 + 8 + 4 + 1 + worker.len() + 1 + 4 + data.len());
        out.push(FORMAT);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.push(if self.revoked { FLAG_REVOKED } else { 0 });
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        out.extend_from_slice(&self.last_seen_ms.to_be_bytes());
        out.extend_from_slice(&self.hits.to_be_bytes());
        out.push(worker.len() as u8);
        out.extend_from_slice(worker);
        out.push(self.data.is_some() as u8);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    /// `None` for anything that is not a well-formed record of this version.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let mut r = Reader(bytes);
        let (version, flags) = match r.take(1)?[0] {
            FORMAT_V1 => (0, 0),
            FORMAT => (
                u64::from_be_bytes(r.take(8)?.try_into().ok()?),
                r.take(1)?[0],
            ),
            _ => return None,
        };
        let created_ms = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let last_seen_ms = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let hits = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
        let wlen = r.take(1)?[0] as usize;
        let worker = std::str::from_utf8(r.take(wlen)?).ok()?;
        let has_data = r.take(1)?[0] == 1;
        let dlen = u32::from_be_bytes(r.take(4)?.try_into().ok()?) as usize;
        let data = r.take(dlen)?;
        if !r.0.is_empty() {
            return None;
        }
        Some(Record {
            worker: (!worker.is_empty()).then(|| Arc::from(worker)),
            created_ms,
            last_seen_ms,
            hits,
            data: has_data.then(|| data.into()),
            version,
            revoked: flags & FLAG_REVOKED != 0,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes_and_rejects_truncation() {
        let r = Record {
            worker: Some("worker-3".into()),
            created_ms: 11,
            last_seen_ms: 22,
            hits: 7,
            data: Some(b"{\"a\":1}".to_vec().into()),
            version: 0x0102_0304_0506_0708,
            revoked: false,
        };
        let bytes = r.encode();
        assert_eq!(&bytes[1..9], &Record::version_bytes(r.version));
        assert_eq!(Record::decode(&bytes), Some(r.clone()));
        for n in 0..bytes.len() {
            assert_eq!(Record::decode(&bytes[..n]), None);
        }
        let empty = Record::new(5);
        assert_eq!(Record::decode(&empty.encode()), Some(empty));
        let tomb = Record::tombstone(9);
        assert_eq!(Record::decode(&tomb.encode()), Some(tomb));
    }

    #[test]
    fn version_1_records_still_decode_as_version_0() {
        // 1 | created | last_seen | hits | worker | has data | data (the old layout).
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&11u64.to_be_bytes());
        v1.extend_from_slice(&22u64.to_be_bytes());
        v1.extend_from_slice(&7u32.to_be_bytes());
        v1.push(8);
        v1.extend_from_slice(b"worker-3");
        v1.push(1);
        v1.extend_from_slice(&2u32.to_be_bytes());
        v1.extend_from_slice(b"{}");
        let r = Record::decode(&v1).unwrap();
        assert_eq!(r.version, 0);
        assert!(!r.revoked);
        assert_eq!(r.worker.as_deref(), Some("worker-3"));
        assert_eq!(r.data.as_deref(), Some(&b"{}"[..]));
        assert_eq!(Record::decode(&[3u8]), None);
    }

    #[test]
    fn expiry_is_the_earlier_of_absolute_and_idle() {
        let mut r = Record::new(1000);
        assert_eq!(r.expires_ms(10_000, 500), 1500);
        r.last_seen_ms = 10_800;
        assert_eq!(r.expires_ms(10_000, 500), 11_000);
    }
}
