//! `runtime_dir/drover.pid`: written by drover at start, read by `drover -u` to find the
//! process to take over from. Before `drover -u` signals that pid, it checks that the
//! process really is a drover of the same user: a stale pid file can name a pid the
//! kernel has since given to an unrelated process.

use crate::private_fs::{self, Links, PrivateFsError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A pid file is one decimal number and a newline.
const PID_FILE_CAP: u64 = 64;

/// Why `drover -u` found no drover to take over from (see [`running_drover`]).
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    /// The pid file is missing, unsafe (link, wrong owner or mode) or over 64 bytes.
    #[error("no running drover found through {path}: {source}")]
    Unreadable {
        /// The pid file.
        path: PathBuf,
        /// The refusal or I/O error from the private read.
        source: PrivateFsError,
    },
    /// The content is not a decimal pid greater than 1.
    #[error("{path} does not hold a process id")]
    Garbage {
        /// The pid file.
        path: PathBuf,
    },
    /// No `/proc/<pid>` exists.
    #[error("{path} names pid {pid}, which is not running")]
    NotRunning {
        /// The pid file.
        path: PathBuf,
        /// The pid it names.
        pid: i32,
    },
    /// The process belongs to another user.
    #[error("{path} names pid {pid}, which runs as uid {owner}, not as drover's uid {euid}: not signalling it")]
    OtherUser {
        /// The pid file.
        path: PathBuf,
        /// The pid it names.
        pid: i32,
        /// Owner uid of `/proc/<pid>`.
        owner: u32,
        /// Our effective uid.
        euid: u32,
    },
    /// The process runs a program with another file name than ours.
    #[error("{path} names pid {pid}, which runs `{exe}`, not drover: not signalling it (a stale pid file?)")]
    NotDrover {
        /// The pid file.
        path: PathBuf,
        /// The pid it names.
        pid: i32,
        /// Target of `/proc/<pid>/exe` (empty when unreadable).
        exe: String,
    },
}

/// Writes our pid (mode 0600, temporary file then rename: a link is never followed).
pub fn write(path: &Path) -> Result<(), PrivateFsError> {
    private_fs::write_private(path, format!("{}\n", std::process::id()).as_bytes())
}

/// Reads the pid file and returns the pid of the running drover it names, after
/// checking that the process runs as our user and executes a program named like ours.
pub fn running_drover(path: &Path) -> Result<i32, PidFileError> {
    let text = private_fs::read_private_text(path, PID_FILE_CAP, Links::Refuse).map_err(|e| {
        PidFileError::Unreadable {
            path: path.to_path_buf(),
            source: e,
        }
    })?;
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| PidFileError::Garbage {
            path: path.to_path_buf(),
        })?;
    verify(path, pid)?;
    Ok(pid)
}

/// The program name of a `/proc/<pid>/exe` link target (the kernel appends
/// ` (deleted)` once the binary was replaced on disk, as an upgrade does).
fn program_name(target: &Path) -> String {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(" (deleted)").unwrap_or(&name).to_string()
}

fn verify(path: &Path, pid: i32) -> Result<(), PidFileError> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(meta) = std::fs::metadata(&proc_dir) else {
        return Err(PidFileError::NotRunning {
            path: path.to_path_buf(),
            pid,
        });
    };
    let me = private_fs::euid();
    if meta.uid() != me {
        return Err(PidFileError::OtherUser {
            path: path.to_path_buf(),
            pid,
            owner: meta.uid(),
            euid: me,
        });
    }
    let exe = std::fs::read_link(proc_dir.join("exe")).unwrap_or_default();
    let ours = std::env::current_exe()
        .map(|p| program_name(&p))
        .unwrap_or_else(|_| "drover".into());
    if program_name(&exe) != ours {
        return Err(PidFileError::NotDrover {
            path: path.to_path_buf(),
            pid,
            exe: exe.display().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_the_deleted_marker() {
        assert_eq!(
            program_name(Path::new("/usr/local/bin/drover (deleted)")),
            "drover"
        );
        assert_eq!(program_name(Path::new("/usr/bin/sleep")), "sleep");
    }

    #[test]
    fn refuses_a_pid_that_is_not_this_program() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("drover.pid");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        private_fs::write_private(&p, format!("{}\n", child.id()).as_bytes()).unwrap();
        let e = running_drover(&p).unwrap_err();
        assert!(matches!(e, PidFileError::NotDrover { .. }), "{e}");
        let _ = child.kill();
        let _ = child.wait();
        private_fs::write_private(&p, b"nonsense").unwrap();
        assert!(matches!(
            running_drover(&p),
            Err(PidFileError::Garbage { .. })
        ));
        // Our own pid passes (the test binary is "this program").
        write(&p).unwrap();
        assert_eq!(running_drover(&p).unwrap(), std::process::id() as i32);
    }
}
