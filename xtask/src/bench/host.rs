//! What the machine's /proc and /dev say about a process, and the CPU
//! latency request.

use std::{fs, io::Write as _};

use anyhow::Context as _;

/// (user, system) CPU seconds of `pid` and its reaped children (socat
/// forks per connection).
pub(super) fn cpu_of(pid: u32) -> anyhow::Result<(f64, f64)> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    // Fields after the command name (which may contain spaces).
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14 to 17 of the whole line:
    // 11 to 14 here (counting from state = 0), in clock ticks of 1/100 s.
    let at = |i: usize| -> anyhow::Result<f64> {
        let ticks: f64 = f
            .get(i)
            .and_then(|x| x.parse().ok())
            .with_context(|| format!("{path} has no field {}: {stat}", i + 3))?;
        Ok(ticks / 100.0)
    };
    Ok((at(11)? + at(13)?, at(12)? + at(14)?))
}

/// `VmRSS` of `pid`, in KiB.
pub(super) fn rss_kib(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    fs::read_to_string(&path)
        .with_context(|| format!("failed to read {path}"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{path} has no VmRSS"))
}

/// Open file descriptors of `pid`.
pub(super) fn fds_of(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/fd");
    let n = fs::read_dir(&path)
        .with_context(|| format!("failed to read {path}"))?
        .count();
    Ok(n as f64)
}

/// Writes 0 to /dev/cpu_dma_latency and keeps it open (the kernel holds the
/// request while the file is open).
pub(super) fn hold_cpu_dma_latency() -> Option<fs::File> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open("/dev/cpu_dma_latency")
        .ok()?;
    f.write_all(&0i32.to_ne_bytes()).ok()?;
    Some(f)
}
