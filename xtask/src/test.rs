//! `cargo xtask test`: formatting, lints and the whole test suite, including
//! the network-namespace and eBPF tests, so it must run as root.

use std::ffi::OsString;

use anyhow::ensure;

use crate::{build, cmd, setup};

/// Checks fmt and clippy, runs a smoke run of the benchmark, builds the
/// debug agent and runs every test serially
/// (they share cgroups and namespaces), passing `extra` to the test binaries.
/// Fails at once if not root, and on the first failing step.
pub fn run(extra: &[OsString]) -> anyhow::Result<()> {
    ensure!(
        mesh_tests::is_root(),
        "cargo xtask test needs root: the network-namespace and eBPF tests cannot run \
         otherwise (try: sudo -E cargo xtask test)"
    );
    setup::ensure()?;
    cmd::run(cmd::cargo().args(["fmt", "--all", "--check"]))?;
    // Lint the agent as it really builds, with its eBPF object.
    cmd::run(
        cmd::cargo()
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
            .env_remove("AYA_BUILD_SKIP"),
    )?;
    let agent = build::agent(false)?;
    // The benchmark must not rot: a seconds-long run, no thresholds.
    crate::bench::run(&crate::bench::Options {
        runs: 1,
        smoke: true,
        only: Vec::new(),
    })?;
    // The demo's apps have their own tests (plain HTTP, no mesh).
    cmd::run(
        std::process::Command::new("python3")
            .args([
                "-m",
                "unittest",
                "discover",
                "-s",
                "tests/apps/playground",
                "-t",
                "tests/apps/playground",
            ])
            .current_dir(cmd::workspace_root()),
    )?;
    cmd::run(
        cmd::cargo()
            .args([
                "test",
                "--workspace",
                // Only builds for bpfel-unknown-none; the e2e tests run it.
                "--exclude",
                "mesh-ebpf",
                "--all-targets",
                "--",
                "--test-threads=1",
            ])
            .args(extra)
            .env("MESH_AGENT_BIN", agent)
            .env_remove("AYA_BUILD_SKIP"),
    )
}
