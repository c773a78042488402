//! The unit-level benches of `mesh-agent` (`benches/units.rs`).

use anyhow::{Context as _, ensure};

use crate::cmd;

/// Runs `cargo bench -p mesh-agent --bench units -- <part>`; its rows.
pub(super) fn unit_bench(part: &str) -> anyhow::Result<Vec<String>> {
    eprintln!("bench: {part} (cargo bench -p mesh-agent --bench units, release)");
    let out = cmd::cargo()
        .args(["bench", "-p", "mesh-agent", "--bench", "units", "--", part])
        .output()
        .with_context(|| format!("failed to run the {part} bench"))?;
    ensure!(
        out.status.success(),
        "the {part} bench failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("| "))
        .map(str::to_owned)
        .collect();
    ensure!(!rows.is_empty(), "the {part} bench printed no figure");
    Ok(rows)
}
