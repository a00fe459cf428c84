//! Encryption of session data at rest: ChaCha20-Poly1305 with a random 96-bit nonce per
//! write, the session id as associated data (a record copied under another id does not
//! decrypt), and a 4-byte key fingerprint so rotation finds the right key without trial
//! decryption. Blob layout: `1 || fingerprint(4) || nonce(12) || ciphertext+tag`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + 12;

/// Seals and opens session data with the configured data keys.
pub struct Sealer {
    /// First key encrypts; every key decrypts.
    keys: Vec<([u8; 4], ChaCha20Poly1305)>,
}

fn fingerprint(key: &[u8; 32]) -> [u8; 4] {
    let d = Sha256::digest(key);
    [d[0], d[1], d[2], d[3]]
}

impl Sealer {
    /// The first key seals; every key opens (rotation).
    pub fn new(keys: &[[u8; 32]]) -> Self {
        Sealer {
            keys: keys
                .iter()
                .map(|k| (fingerprint(k), ChaCha20Poly1305::new(Key::from_slice(k))))
                .collect(),
        }
    }

    /// Encrypts `plaintext` bound to `aad` (the session id) into the blob layout above, with a
    /// fresh random nonce. Without keys it returns `plaintext` unchanged.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let Some((fp, cipher)) = self.keys.first() else {
            return plaintext.to_vec();
        };
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(HEADER + plaintext.len() + 16);
        out.push(VERSION);
        out.extend_from_slice(fp);
        out.extend_from_slice(&nonce);
        // Encryption with a valid key and nonce length cannot fail.
        if let Ok(ct) = cipher.encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        ) {
            out.extend_from_slice(&ct);
        }
        out
    }

    /// `None` when the blob is damaged, forged, or sealed with a key no longer configured:
    /// the caller treats the record as absent.
    pub fn open(&self, aad: &[u8], blob: &[u8]) -> Option<Vec<u8>> {
        if blob.len() < HEADER + 16 || blob[0] != VERSION {
            return None;
        }
        let (_, cipher) = self.keys.iter().find(|(fp, _)| fp[..] == blob[1..5])?;
        cipher
            .decrypt(
                Nonce::from_slice(&blob[5..HEADER]),
                Payload {
                    msg: &blob[HEADER..],
                    aad,
                },
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_rotation_tamper_and_wrong_id() {
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        let s1 = Sealer::new(&[k1]);
        let blob = s1.seal(b"id-a", b"{\"counter\":3}");
        assert!(
            !blob.windows(7).any(|w| w == b"counter"),
            "plaintext leaked"
        );
        assert_eq!(
            s1.open(b"id-a", &blob).as_deref(),
            Some(&b"{\"counter\":3}"[..])
        );
        assert_eq!(s1.open(b"id-b", &blob), None, "bound to the session id");
        let rotated = Sealer::new(&[k2, k1]);
        assert!(rotated.open(b"id-a", &blob).is_some());
        assert_eq!(Sealer::new(&[k2]).open(b"id-a", &blob), None);
        let mut bad = blob.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(s1.open(b"id-a", &bad), None);
        assert_eq!(s1.open(b"id-a", &blob[..10]), None);
        assert_ne!(
            s1.seal(b"x", b"same"),
            s1.seal(b"x", b"same"),
            "fresh nonce"
        );
    }
}
