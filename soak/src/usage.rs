//! A daemon's resident memory and open file descriptors, from /proc.

#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub rss_kib: u64,
    pub fds: u64,
}

/// `None` when the process is gone.
pub fn of(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Usage { rss_kib, fds })
}

/// Whether `end` stays within a generous bound of `start`: memory at most
/// four times and 200 MiB above, descriptors at most 64 more. A leak per
/// session or per fault grows past that over a long run; allocator slack
/// and caches do not.
pub fn within_bound(start: Usage, end: Usage) -> bool {
    end.rss_kib <= (start.rss_kib * 4).max(start.rss_kib + 200 * 1024) && end.fds <= start.fds + 64
}
