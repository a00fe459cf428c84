//! Key material when the file configures none: generated once from the OS CSPRNG and
//! kept in `runtime_dir` (mode 0600) so cookies and the snapshot stay valid across
//! restarts of a single instance. Shared stores refuse generated keys (see config).

use rand::RngCore;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Reads the hex key in `path`, or creates it with 32 random bytes.
pub fn load_or_create(path: &Path) -> std::io::Result<[u8; 32]> {
    if let Ok(text) = std::fs::read_to_string(path) {
        return crate::config::parse_data_key(&text).ok_or_else(|| {
            std::io::Error::other(format!(
                "{} does not hold a 64-hex-character key; delete it to generate a new one",
                path.display()
            ))
        });
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(hex.as_bytes())?;
    f.write_all(b"\n")?;
    log::info!("sessions: generated a new key in {}", path.display());
    Ok(key)
}

#[cfg(test)]
mod tests {
    #[test]
    fn generates_once_then_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let a = super::load_or_create(&p).unwrap();
        let b = super::load_or_create(&p).unwrap();
        assert_eq!(a, b);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&p, "nonsense").unwrap();
        assert!(super::load_or_create(&p).is_err());
    }
}
