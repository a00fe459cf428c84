//! Key material when the file configures none: generated once from the OS CSPRNG and
//! kept in `runtime_dir` (mode 0600) so cookies and the snapshot stay valid across
//! restarts of a single instance. Shared stores refuse generated keys (see config).
//!
//! A key file is read only if it is a regular file owned by drover's user and closed to
//! group and others (`private_fs`); a planted or loosened file stops the start.

use crate::private_fs::{self, Links, PrivateFsError};
use rand::RngCore;
use std::path::{Path, PathBuf};

/// A key file holds 64 hex characters and a newline.
const KEY_FILE_CAP: u64 = 4096;

/// Why a generated key file (`session-secret`, `session-data-key`) could not be used; drover does
/// not start.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read or created safely (owner, mode, links, size: see `private_fs`).
    #[error("{0}")]
    File(#[from] PrivateFsError),
    /// The file does not hold a 32-byte key as 64 hex characters; it is never overwritten.
    #[error("{path} does not hold a 64-hex-character key; delete it to generate a new one")]
    Malformed {
        /// The key file.
        path: PathBuf,
    },
}

/// Reads the hex key in `path`, or creates it with 32 random bytes.
pub fn load_or_create(path: &Path) -> Result<[u8; 32], KeyFileError> {
    let parse = |text: &str| {
        crate::config::parse_data_key(text).ok_or_else(|| KeyFileError::Malformed {
            path: path.to_path_buf(),
        })
    };
    match private_fs::read_private_text(path, KEY_FILE_CAP, Links::Refuse) {
        Ok(text) => return parse(&text),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    match private_fs::create_private(path, format!("{hex}\n").as_bytes()) {
        Ok(()) => {
            log::info!("sessions: generated a new key in {}", path.display());
            Ok(key)
        }
        // Another drover on the same runtime_dir (an upgrade) won the race: use its key.
        Err(PrivateFsError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            parse(&private_fs::read_private_text(
                path,
                KEY_FILE_CAP,
                Links::Refuse,
            )?)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generates_once_then_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let a = super::load_or_create(&p).unwrap();
        let b = super::load_or_create(&p).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&p, "nonsense").unwrap();
        assert!(super::load_or_create(&p).is_err());
    }

    #[test]
    fn refuses_a_key_open_to_others() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        super::load_or_create(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = super::load_or_create(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("mode 0644"), "{e}");
    }
}
