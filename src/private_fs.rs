//! Files drover keeps to itself: the runtime folder and what lives in it (pid file,
//! Pingora's upgrade socket, generated keys and admin token, the session snapshot), and
//! the secret files a config names (`token_file`, `secret_file`, `key_file`).
//!
//! Rules (after PostgreSQL's data folder checks, OpenSSH's StrictModes and mkstemp):
//! - The runtime folder is created with mode 0700, or, if it exists, must be a real
//!   directory (not a symbolic link) owned by drover's effective user with no group or
//!   other permission bits. Its ancestors must not be writable by other users unless
//!   sticky (like `/tmp`). Anything else is refused with an error saying how to fix it.
//! - Files drover writes are created next to their destination under a temporary name
//!   with `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600, written, synced, then renamed over the
//!   destination (a link planted at the destination is replaced, never followed).
//! - Files drover reads must be regular files (a FIFO or device is refused without
//!   blocking: they are opened with `O_NONBLOCK`), owned by drover's effective user,
//!   closed to group and others, and no larger than a cap given by the caller.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a private file or folder was refused.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFsError {
    /// An I/O error other than the refusals below (`NotFound` included, see
    /// [`PrivateFsError::is_not_found`]).
    #[error("{path}: {source}")]
    Io {
        /// The file or folder the operation failed on.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    #[error("{path} is a symbolic link; drover does not follow links here. Fix: remove the link (`rm {path}`) and let drover create the real thing")]
    /// A link where [`Links::Refuse`] applies, or the runtime folder itself is a link.
    Symlink {
        /// The link.
        path: PathBuf,
    },
    #[error("{path} is owned by uid {owner} but drover runs as uid {euid}, so another user controls it. Fix: remove it and let drover create it, or `chown {euid} {path}` if you trust its content")]
    /// Owned by a uid other than drover's effective uid.
    WrongOwner {
        /// The refused file or folder.
        path: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// drover's effective uid.
        euid: u32,
    },
    #[error("{path} has mode {mode:04o}: group or other users can access it. Fix: `chmod {want:o} {path}`")]
    /// Some group or other permission bit is set.
    OpenToOthers {
        /// The refused file or folder.
        path: PathBuf,
        /// Its permission bits (`st_mode & 0o7777`).
        mode: u32,
        /// The mode the fix message suggests: 0o700 for a folder, 0o600 for a file.
        want: u32,
    },
    #[error("{path} is not a directory")]
    /// The runtime folder exists but is not a directory.
    NotADirectory {
        /// The path expected to be a directory.
        path: PathBuf,
    },
    #[error(
        "{path} is not a regular file but a {kind}; drover refuses to read it. Fix: remove it"
    )]
    /// A file to read is a directory, FIFO, socket or device.
    NotAFile {
        /// The refused path.
        path: PathBuf,
        /// What it is instead, for the message: "directory", "FIFO", "socket", ...
        kind: &'static str,
    },
    #[error("{path} is larger than {cap} bytes; drover refuses to read it")]
    /// Larger than the caller's cap (checked on the size and again while reading).
    TooLarge {
        /// The refused file.
        path: PathBuf,
        /// The cap in bytes.
        cap: u64,
    },
    #[error("{path}: its folder {ancestor} can be written by other users (mode {mode:04o}, not sticky), who could replace it. Fix: `chmod go-w {ancestor}` or choose another folder")]
    /// A folder above the runtime folder is writable by others without the sticky bit,
    /// or owned by someone other than root or drover's user.
    UnsafeAncestor {
        /// The folder being verified.
        path: PathBuf,
        /// The unsafe folder above it (after resolving links).
        ancestor: PathBuf,
        /// The ancestor's permission bits (`st_mode & 0o7777`).
        mode: u32,
    },
}

impl PrivateFsError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        PrivateFsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the file simply does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, PrivateFsError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

type Result<T> = std::result::Result<T, PrivateFsError>;

/// drover's effective user id.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else if ft.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

fn check_owner_and_mode(path: &Path, meta: &std::fs::Metadata, want: u32) -> Result<()> {
    let me = euid();
    if meta.uid() != me {
        return Err(PrivateFsError::WrongOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            euid: me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PrivateFsError::OpenToOthers {
            path: path.to_path_buf(),
            mode,
            want,
        });
    }
    Ok(())
}

/// Creates `dir` (mode 0700) if it does not exist, then verifies it: a directory, not a
/// link, owned by drover's user, no group/other bits, in folders others cannot write.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| PrivateFsError::io(parent, e))?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                // Created by someone else in between: the checks below decide.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(PrivateFsError::io(dir, e)),
            }
        }
        Err(e) => return Err(PrivateFsError::io(dir, e)),
    }
    verify_dir(dir)
}

/// The checks of [`prepare_dir`] on an existing folder.
pub fn verify_dir(dir: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| PrivateFsError::io(dir, e))?;
    if meta.file_type().is_symlink() {
        return Err(PrivateFsError::Symlink {
            path: dir.to_path_buf(),
        });
    }
    if !meta.is_dir() {
        return Err(PrivateFsError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    check_owner_and_mode(dir, &meta, 0o700)?;
    verify_ancestors(dir)
}

/// Every folder above `dir` must be owned by root or by drover's user, and not writable
/// by others unless sticky: otherwise someone else could rename `dir` away and put
/// their own in its place.
fn verify_ancestors(dir: &Path) -> Result<()> {
    let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    let real = std::fs::canonicalize(parent).map_err(|e| PrivateFsError::io(parent, e))?;
    let me = euid();
    for ancestor in real.ancestors() {
        let meta = std::fs::metadata(ancestor).map_err(|e| PrivateFsError::io(ancestor, e))?;
        let mode = meta.mode() & 0o7777;
        let sticky = mode & 0o1000 != 0;
        let foreign_owner = meta.uid() != 0 && meta.uid() != me;
        if foreign_owner || (mode & 0o022 != 0 && !sticky) {
            return Err(PrivateFsError::UnsafeAncestor {
                path: dir.to_path_buf(),
                ancestor: ancestor.to_path_buf(),
                mode,
            });
        }
    }
    Ok(())
}

fn tmp_name(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    dest.with_file_name(name)
}

/// A file being written under a temporary name; [`AtomicFile::commit`] renames it over
/// the destination, dropping it without commit removes it.
pub struct AtomicFile {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl AtomicFile {
    /// Creates `<dest>.tmp` exclusively (`O_EXCL|O_NOFOLLOW`, mode 0600). A leftover
    /// temporary file (a crash) is removed first; a link there is removed, not followed.
    pub fn create(dest: &Path) -> Result<AtomicFile> {
        let tmp = tmp_name(dest);
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PrivateFsError::io(&tmp, e)),
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| PrivateFsError::io(&tmp, e))?;
        Ok(AtomicFile {
            file: Some(file),
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    /// The open temporary file, to write the content into before [`AtomicFile::commit`].
    pub fn file(&mut self) -> &mut File {
        self.file
            .as_mut()
            .expect("AtomicFile holds its file until commit")
    }

    /// Syncs and renames the file over the destination (a link there is replaced).
    pub fn commit(mut self) -> Result<()> {
        if let Some(f) = self.file.take() {
            f.sync_all().map_err(|e| PrivateFsError::io(&self.tmp, e))?;
        }
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| PrivateFsError::io(&self.dest, e))
    }

    /// Like [`AtomicFile::commit`], but fails if the destination exists (hard link, then
    /// unlink): two processes generating the same key cannot overwrite each other.
    pub fn commit_new(mut self) -> Result<()> {
        if let Some(f) = self.file.take() {
            f.sync_all().map_err(|e| PrivateFsError::io(&self.tmp, e))?;
        }
        let linked = std::fs::hard_link(&self.tmp, &self.dest);
        let _ = std::fs::remove_file(&self.tmp);
        linked.map_err(|e| PrivateFsError::io(&self.dest, e))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `dest` atomically (temporary file, mode 0600, rename).
pub fn write_private(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    f.file()
        .write_all(bytes)
        .map_err(|e| PrivateFsError::io(dest, e))?;
    f.commit()
}

/// Creates `dest` with `bytes` (mode 0600) unless it exists; `AlreadyExists` then.
pub fn create_private(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    f.file()
        .write_all(bytes)
        .map_err(|e| PrivateFsError::io(dest, e))?;
    f.commit_new()
}

/// How [`read_private`] treats a link at the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Refuse it (files in the runtime folder: drover never creates links there).
    Refuse,
    /// Follow it and check the target (files the operator named in the config).
    Follow,
}

/// Reads a file that must be a regular file owned by drover's user, closed to group and
/// others, and at most `cap` bytes. Never blocks on a FIFO.
pub fn read_private(path: &Path, cap: u64, links: Links) -> Result<Vec<u8>> {
    let mut flags = nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC;
    if links == Links::Refuse {
        flags |= nix::libc::O_NOFOLLOW;
    }
    let file = match OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) && links == Links::Refuse => {
            return Err(PrivateFsError::Symlink {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(PrivateFsError::io(path, e)),
    };
    let meta = file.metadata().map_err(|e| PrivateFsError::io(path, e))?;
    if !meta.is_file() {
        return Err(PrivateFsError::NotAFile {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    check_owner_and_mode(path, &meta, 0o600)?;
    if meta.len() > cap {
        return Err(PrivateFsError::TooLarge {
            path: path.to_path_buf(),
            cap,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| PrivateFsError::io(path, e))?;
    if bytes.len() as u64 > cap {
        return Err(PrivateFsError::TooLarge {
            path: path.to_path_buf(),
            cap,
        });
    }
    Ok(bytes)
}

/// [`read_private`] as UTF-8 text.
pub fn read_private_text(path: &Path, cap: u64, links: Links) -> Result<String> {
    let bytes = read_private(path, cap, links)?;
    String::from_utf8(bytes).map_err(|_| {
        PrivateFsError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_a_private_folder_and_refuses_an_open_one() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b/run");
        prepare_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        prepare_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = prepare_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("mode 0755") && e.contains("chmod 700"), "{e}");
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(
            prepare_dir(&link),
            Err(PrivateFsError::Symlink { .. })
        ));
    }

    #[test]
    fn refuses_a_folder_under_a_world_writable_non_sticky_one() {
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare_dir(&open.join("run")).unwrap_err();
        assert!(matches!(e, PrivateFsError::UnsafeAncestor { .. }), "{e}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        prepare_dir(&open.join("run2")).unwrap();
    }

    #[test]
    fn writes_atomically_with_mode_0600_replacing_links() {
        let base = tempfile::tempdir().unwrap();
        let victim = base.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let dest = base.path().join("drover.pid");
        std::os::unix::fs::symlink(&victim, &dest).unwrap();
        // A stale temporary file that is a link too.
        std::os::unix::fs::symlink(&victim, base.path().join("drover.pid.tmp")).unwrap();
        write_private(&dest, b"123\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "123\n");
        assert_eq!(mode(&dest), 0o600);
        assert!(!base.path().join("drover.pid.tmp").exists());
        let e = create_private(&dest, b"x").unwrap_err();
        assert!(
            matches!(e, PrivateFsError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
            "{e}"
        );
    }

    #[test]
    fn reads_only_private_regular_files_within_the_cap() {
        let base = tempfile::tempdir().unwrap();
        let p = base.path().join("key");
        write_private(&p, b"0123456789").unwrap();
        assert_eq!(read_private(&p, 10, Links::Refuse).unwrap(), b"0123456789");
        assert!(matches!(
            read_private(&p, 9, Links::Refuse),
            Err(PrivateFsError::TooLarge { .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_private(&p, 100, Links::Refuse)
            .unwrap_err()
            .to_string();
        assert!(e.contains("chmod 600"), "{e}");
        let fifo = base.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(
            read_private(&fifo, 100, Links::Refuse),
            Err(PrivateFsError::NotAFile { kind: "FIFO", .. })
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(matches!(
            read_private(&link, 100, Links::Refuse),
            Err(PrivateFsError::Symlink { .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_private(&link, 100, Links::Follow).is_ok());
    }
}
