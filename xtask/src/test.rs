//! `cargo xtask test`: formatting, lints and the whole test suite, including
//! the network-namespace and eBPF tests (so it must run as root), the fuzz
//! regressions and a short run of each fuzz target.

use std::ffi::OsString;

use anyhow::ensure;

use crate::{build, cmd, setup};

/// Checks fmt, clippy (of the fuzz crate too) and the doc links, runs a
/// smoke run of the benchmark, builds the debug agent and runs every test
/// serially (they share cgroups and namespaces), passing `extra` to the test
/// binaries, then replays the fuzz regressions and runs each fuzz target for
/// `FUZZ_SECONDS`. Fails at once if not root, and on the first failing step.
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
    // The docs' links must resolve (a moved item breaks them silently).
    cmd::run(
        cmd::cargo()
            .args(["doc", "--workspace", "--exclude", "mesh-ebpf", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings")
            .env_remove("AYA_BUILD_SKIP"),
    )?;
    // The fuzz crate is outside the workspace: lint it on its own (stable).
    let fuzz_manifest = crate::fuzz::dir().join("Cargo.toml");
    cmd::run(
        cmd::cargo()
            .args(["fmt", "--check", "--manifest-path"])
            .arg(&fuzz_manifest),
    )?;
    cmd::run(
        cmd::cargo()
            .args(["clippy", "--manifest-path"])
            .arg(&fuzz_manifest)
            .args(["--all-targets", "--", "-D", "warnings"])
            .env_remove("AYA_BUILD_SKIP"),
    )?;
    let agent = build::agent(false)?;
    // The benchmark must not rot: a seconds-long run, no thresholds.
    crate::bench::run(&crate::bench::Options {
        runs: 1,
        smoke: true,
        only: Vec::new(),
    })?;
    // The demo's apps, and the test apps that need it, have their own
    // tests (plain HTTP, no mesh): `test_*.py` in each folder.
    for dir in ["tests/apps/playground", "tests/apps"] {
        cmd::run(
            std::process::Command::new("python3")
                .args(["-m", "unittest", "discover", "-s", dir, "-t", dir])
                .current_dir(cmd::workspace_root()),
        )?;
    }
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
    )?;
    // Every input that once failed a fuzz target, and the seeds, replayed
    // through the targets' code (stable); then each target fuzzes a few
    // seconds, so none rots.
    cmd::run(
        cmd::cargo()
            .args(["test", "--manifest-path"])
            .arg(&fuzz_manifest)
            .arg("--lib")
            .env_remove("AYA_BUILD_SKIP"),
    )?;
    crate::fuzz::run(FUZZ_SECONDS, &[])
}

/// How long `cargo xtask test` runs each fuzz target.
const FUZZ_SECONDS: u64 = 10;
