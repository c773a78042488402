//! `cargo xtask build`: builds mesh-agent; its build.rs builds the eBPF object
//! (aya-build, nightly, bpf-linker) and embeds it.

use std::{env, path::PathBuf, process::Stdio};

use anyhow::{Context as _, ensure};

use crate::cmd;

/// Builds mesh-agent with the debug or release profile and returns the
/// absolute path of the binary. Fails if cargo fails or the binary is missing.
pub fn agent(release: bool) -> anyhow::Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    eprintln!("build: mesh-agent ({profile}): building");
    let mut build = cmd::cargo();
    // The agent without its eBPF object is useless, so never skip building it.
    build
        .args(["build", "-p", "mesh-agent"])
        .env_remove("AYA_BUILD_SKIP");
    if release {
        build.arg("--release");
    }
    cmd::run(&mut build)?;
    let binary = target_dir().join(profile).join("mesh-agent");
    ensure!(
        binary.is_file(),
        "cargo built mesh-agent but {} does not exist",
        binary.display()
    );
    Ok(binary)
}

/// Builds mesh-agent's `catalog_scale` bench (the bench profile) and
/// returns the absolute path of its executable, for `cargo xtask bench
/// --catalog` to run in a network namespace.
pub fn catalog_bench() -> anyhow::Result<PathBuf> {
    eprintln!("build: mesh-agent's catalog_scale bench: building");
    let out = cmd::cargo()
        .args(["bench", "-p", "mesh-agent", "--bench", "catalog_scale"])
        .args(["--no-run", "--message-format=json-render-diagnostics"])
        .env_remove("AYA_BUILD_SKIP")
        .stderr(Stdio::inherit())
        .output()
        .context("failed to run cargo bench --no-run")?;
    ensure!(
        out.status.success(),
        "cargo bench --no-run failed ({})",
        out.status
    );
    // One JSON message a line; the bench's artifact names its executable.
    let executable = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "catalog_scale")
        .and_then(|m| m["executable"].as_str().map(PathBuf::from));
    executable.context("cargo built the catalog_scale bench but named no executable")
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace
/// root, where cargo runs) if set, else `<workspace>/target`.
fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => cmd::workspace_root().join(dir),
        _ => cmd::workspace_root().join("target"),
    }
}
