//! The eBPF programs' run time and count, read with bpftool.

use std::{fs, process::Command};

use anyhow::{Context as _, ensure};
use serde_json::Value;

/// The mesh's eBPF programs (`mesh-ebpf`), each with the node whose
/// agent's copy does the work in the measured window: the caller's for
/// those on the cgroup root, the destination's for sk_lookup (attached to
/// its node's network namespace).
pub(super) const BPF_PROGRAMS: [(&str, &str); 6] = [
    ("mesh_connect4", "bench-a"),
    ("mesh_connect6", "bench-a"),
    ("mesh_sock_ops", "bench-a"),
    ("mesh_bind4", "bench-a"),
    ("mesh_bind6", "bench-a"),
    ("mesh_sk_lookup", "bench-b"),
];

/// `kernel.bpf_stats_enabled` on for the run, restored after.
pub(super) struct BpfStats(String);

impl BpfStats {
    pub(super) fn enable() -> anyhow::Result<Self> {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let old = fs::read_to_string(path).with_context(|| format!("failed to read {path}"))?;
        fs::write(path, "1").with_context(|| format!("failed to write 1 to {path}"))?;
        Ok(Self(old.trim().to_owned()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// (run_time_ns, run_cnt) of each of [`BPF_PROGRAMS`] now: the program
/// that the node's pinned link runs (`<bpffs>/mesh/<node>/link_<program>`).
pub(super) fn bpf_counters() -> anyhow::Result<[(f64, f64); BPF_PROGRAMS.len()]> {
    let mut out = [(0.0, 0.0); BPF_PROGRAMS.len()];
    for (slot, (program, node)) in out.iter_mut().zip(BPF_PROGRAMS) {
        let link = mesh_tests::bpffs()
            .join("mesh")
            .join(node)
            .join(format!("link_{program}"));
        let link = bpftool(&["link", "show", "pinned", &link.to_string_lossy()])?;
        let id = link["prog_id"].as_u64().with_context(|| {
            format!("bpftool: link of {program} on {node} has no prog_id: {link}")
        })?;
        let prog = bpftool(&["prog", "show", "id", &id.to_string()])?;
        // bpftool leaves both out of a program that has not run since
        // bpf_stats_enabled was set.
        let number = |key: &str| prog.get(key).map_or(Some(0.0), Value::as_f64);
        *slot = number("run_time_ns")
            .zip(number("run_cnt"))
            .with_context(|| format!("bpftool: {program} on {node}: {prog}"))?;
    }
    Ok(out)
}

/// The one object `bpftool -j ARGS` shows.
pub(super) fn bpftool(args: &[&str]) -> anyhow::Result<Value> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("failed to run bpftool")?;
    ensure!(
        out.status.success(),
        "bpftool {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bpftool {args:?}: not JSON"))?;
    Ok(match value {
        Value::Array(mut all) if all.len() == 1 => all.remove(0),
        other => other,
    })
}

/// [`BPF_PROGRAMS`]' run time and count summed over the measured window,
/// and the app connections the window made.
#[derive(Default)]
pub(super) struct BpfWindow {
    /// (run_time_ns, run_cnt) per program, in [`BPF_PROGRAMS`]' order.
    pub(super) totals: [(f64, f64); BPF_PROGRAMS.len()],
    pub(super) app_conns: usize,
    /// Whether any window was measured.
    pub(super) measured: bool,
}

impl BpfWindow {
    pub(super) fn add(
        &mut self,
        before: &[(f64, f64); BPF_PROGRAMS.len()],
        after: &[(f64, f64); BPF_PROGRAMS.len()],
        app_conns: usize,
    ) {
        for ((total, b), a) in self.totals.iter_mut().zip(before).zip(after) {
            total.0 += a.0 - b.0;
            total.1 += a.1 - b.1;
        }
        self.app_conns += app_conns;
        self.measured = true;
    }

    /// Nanoseconds per call of `program`; `None` if it did not run.
    pub(super) fn ns_per_call(&self, program: &str) -> Option<f64> {
        let i = BPF_PROGRAMS.iter().position(|(p, _)| *p == program)?;
        let (ns, calls) = self.totals[i];
        (calls > 0.0).then(|| ns / calls)
    }
}
