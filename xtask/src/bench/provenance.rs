//! Where and how a report was made.

use std::{fs, process::Command};

use anyhow::{Context as _, ensure};

use crate::cmd;

/// The reports the benches write: not counted as changes that make the
/// tree dirty (each run rewrites one).
pub(super) const REPORTS: [&str; 2] = ["docs/benchmarks.md", "docs/catalog-scale.md"];

/// Where and how a report was made: date (UTC), commit (`-dirty` if the
/// tree has changes other than [`REPORTS`]), machine, runs and what each
/// figure is (`figures`), command line; Markdown list items.
pub fn provenance(runs: usize, figures: &str) -> anyhow::Result<String> {
    let root = cmd::workspace_root();
    let stdout = |cmd: &mut Command| -> anyhow::Result<String> {
        let out = cmd
            .output()
            .with_context(|| format!("failed to run {cmd:?}"))?;
        ensure!(out.status.success(), "{cmd:?} failed ({})", out.status);
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let date = stdout(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?;
    let commit =
        stdout(
            Command::new("git")
                .current_dir(root)
                .args(["rev-parse", "--short", "HEAD"]),
        )?;
    let dirty = !stdout(
        Command::new("git")
            .current_dir(root)
            .args(["status", "--porcelain", "--", "."])
            .args(REPORTS.map(|r| format!(":!{r}"))),
    )?
    .is_empty();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").context("failed to read /proc/cpuinfo")?;
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("failed to read the kernel release")?;
    let mem_kib: f64 = fs::read_to_string("/proc/meminfo")
        .context("failed to read /proc/meminfo")?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("/proc/meminfo has no MemTotal")?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=,:".contains(c))
            {
                a
            } else {
                format!("'{a}'")
            }
        })
        .collect();
    Ok(format!(
        "- Date: {date}\n\
         - Commit: {commit}{}\n\
         - Machine: {cpus} CPUs ({model}), kernel {}, {:.1} GiB memory\n\
         - Runs: {runs}; {figures}\n\
         - Command: `cargo xtask {}`\n",
        if dirty {
            "-dirty (uncommitted changes in the tree)"
        } else {
            ""
        },
        kernel.trim(),
        mem_kib / (1024.0 * 1024.0),
        args.join(" ")
    ))
}
