//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `fuzz/` (libFuzzer,
//! nightly) one after another, each for a bounded time, each with its
//! corpus in `fuzz/corpus/<target>` (the committed `seed-*` files plus what
//! libFuzzer adds, which git ignores). A failing input is left in
//! `fuzz/artifacts/<target>/` and fails the task.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, ensure};

use crate::{cmd, setup};

/// Runs `targets` (every target if empty) for `seconds` each.
pub fn run(seconds: u64, targets: &[String]) -> anyhow::Result<()> {
    let all = list()?;
    for target in targets {
        ensure!(
            all.contains(target),
            "no fuzz target {target:?}; the targets are: {}",
            all.join(", ")
        );
    }
    let targets = if targets.is_empty() { &all } else { targets };
    for target in targets {
        let corpus = dir().join("corpus").join(target);
        cmd::run(
            cargo_fuzz()
                .args(["run", target])
                .arg(&corpus)
                .arg("--")
                .arg(format!("-max_total_time={seconds}")),
        )?;
    }
    Ok(())
}

/// The targets, as `cargo fuzz list` reads them from `fuzz/Cargo.toml`.
pub fn list() -> anyhow::Result<Vec<String>> {
    let out = cmd::probe(cargo_fuzz().arg("list")).context(
        "`cargo +nightly fuzz list` failed: is cargo-fuzz installed? (cargo xtask setup)",
    )?;
    Ok(out.split_whitespace().map(str::to_owned).collect())
}

/// `cargo +nightly fuzz`, run from the workspace root (it finds `fuzz/`).
fn cargo_fuzz() -> Command {
    let mut cargo = cmd::cargo();
    cargo.args(["+nightly", "fuzz"]);
    for var in setup::CARGO_ENV_REMOVE {
        cargo.env_remove(var);
    }
    // The targets link the agent library, which embeds its eBPF object.
    cargo.env_remove("AYA_BUILD_SKIP");
    cargo
}

/// The fuzz crate.
pub fn dir() -> PathBuf {
    cmd::workspace_root().join("fuzz")
}
