//! CPU time from /proc, for the traffic benchmarks' cores per round.

use anyhow::{Context as _, Result, ensure};

/// Clock ticks per second, the unit of /proc's CPU times.
pub fn clock_tick() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime+stime of a process (all its threads), in clock ticks.
pub fn task_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may hold spaces) start at the
    // third, the state; utime and stime are the 14th and 15th.
    let rest = text.rsplit_once(')').with_context(|| format!("{path}: no command name"))?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields.get(n - 3).and_then(|f| f.parse().ok()).with_context(|| format!("{path}: field {n}"))
    };
    Ok(field(14)? + field(15)?)
}

/// All CPUs' user+nice+system+irq+softirq from /proc/stat, in clock ticks.
pub fn busy_ticks() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let line = text.lines().find(|l| l.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
    let values: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
    ensure!(values.len() >= 7, "unexpected /proc/stat line: {line}");
    Ok(values[0] + values[1] + values[2] + values[5] + values[6])
}
