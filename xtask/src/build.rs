//! `cargo xtask build`: builds mesh-agent; its build.rs builds the eBPF object
//! (aya-build, nightly, bpf-linker) and embeds it.

use std::{env, path::PathBuf};

use anyhow::ensure;

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

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace
/// root, where cargo runs) if set, else `<workspace>/target`.
fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => cmd::workspace_root().join(dir),
        _ => cmd::workspace_root().join("target"),
    }
}
