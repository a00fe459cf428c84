//! CPU time, resident memory and open file descriptors of a process, from `/proc`.
//!
//! Read by the sampler once a second for drover and each worker (a few small reads per
//! process), never on the request path.

use std::path::PathBuf;

/// Linux reports CPU times in `/proc/<pid>/stat` in USER_HZ ticks, which the kernel fixes
/// at 100 for user space on every architecture (`sysconf(_SC_CLK_TCK)`).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
/// One reading of a process; cumulative where noted, so rates need two readings.
pub struct ProcStats {
    /// User + system CPU time since the process started, in seconds (cumulative).
    pub cpu_seconds: f64,
    /// Resident memory (`VmRSS`), in bytes; 0 if it could not be read.
    pub rss_bytes: u64,
    /// Entries in `/proc/<pid>/fd`; 0 if the folder could not be read.
    pub open_fds: u64,
}

/// Reads the stats of `pid` (`None` = this process). `None` if it is gone.
pub fn read(pid: Option<u32>) -> Option<ProcStats> {
    let dir = match pid {
        Some(p) => PathBuf::from(format!("/proc/{p}")),
        None => PathBuf::from("/proc/self"),
    };
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let cpu_seconds = parse_cpu_seconds(&stat)?;
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let rss_bytes = parse_rss_bytes(&status).unwrap_or(0);
    let open_fds = std::fs::read_dir(dir.join("fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(ProcStats {
        cpu_seconds,
        rss_bytes,
        open_fds,
    })
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field
/// 2) may contain spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")": field 3 (state) is the first; utime is field 14 → index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// `VmRSS` of a `/proc/<pid>/status` file, in bytes.
pub fn parse_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_tricky_command_name() {
        let stat = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
        assert_eq!(parse_cpu_seconds("garbage"), None);
    }

    #[test]
    fn parses_rss() {
        let status = "Name:\tx\nVmPeak:\t 100 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_rss_bytes(status), Some(2048 * 1024));
    }

    #[test]
    fn reads_this_process() {
        let s = read(None).expect("/proc/self is readable");
        assert!(s.rss_bytes > 1024 * 1024, "{s:?}");
        assert!(s.open_fds >= 3, "{s:?}");
        assert!(s.cpu_seconds >= 0.0);
        assert!(read(Some(u32::MAX)).is_none());
    }
}
