//! Developer tasks of the mesh workspace, run as `cargo xtask <task>`.
#![forbid(unsafe_code)]

mod bench;
mod build;
mod catalog;
mod cmd;
mod demo;
mod fuzz;
mod run;
mod setup;
mod test;

use std::{ffi::OsString, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks of the mesh workspace"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing needs (Debian packages, nightly,
    /// rust-src, bpf-linker, cargo-fuzz); skip what is present.
    Setup,
    /// Build mesh-agent, with its eBPF object.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Check formatting and lints, then run the whole test suite (needs root).
    Test {
        /// Appended to the test binaries' arguments, e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Benchmark the mesh against direct TCP and stunnel (needs root).
    ///
    /// Prints the tables and writes JSON to target/bench/. A full run (no
    /// --only, no --smoke) also writes the whole report to
    /// docs/benchmarks.md; --only and --smoke only print.
    Bench {
        /// How many runs of each measurement (medians are reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// A seconds-long run of everything, without thresholds; prints
        /// only.
        #[arg(long)]
        smoke: bool,
        /// Measure only these parts (repeatable; prints only): bulk, rr,
        /// connrate, idle, flood (rr and connrate of the mesh under a
        /// handshake flood), instances (rr and connrate to a service with 2
        /// instances vs 1), container (rr and connrate into a container vs
        /// on the host; the agent's RSS and fds with 100 containers), pick
        /// (ns per pick of an instance among 1,000),
        /// tunnel (us per mesh/2 stream: open, 1 byte each way, close);
        /// these two are `cargo bench -p mesh-agent --bench units`, not in
        /// --smoke.
        #[arg(long, value_parser = ["bulk", "rr", "connrate", "idle", "flood", "instances", "container", "pick", "tunnel"])]
        only: Vec<String>,
        /// Measure only the catalog in etcd at scale, 1x (1,000 services,
        /// 10,000 instances, 2,000 intentions) and 10x, on 3 etcd members
        /// with TLS and RBAC, agents registered: first snapshot, memory,
        /// propagation to 50 agent processes, watch bytes, etcd CPU.
        /// Writes docs/catalog-scale.md.
        #[arg(long, conflicts_with_all = ["only", "smoke"])]
        catalog: bool,
    },
    /// Run the fuzz targets (cargo-fuzz, nightly) one after another.
    Fuzz {
        /// How long to run each target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// The targets to run, as `cargo fuzz list` names them (all if none).
        targets: Vec<String>,
    },
    /// Build the release agent and run it with ARGS, or run the demo if none.
    Run {
        /// Where the demo keeps its catalog: `file` (mesh.toml) or `etcd`
        /// (a 3-member cluster with TLS and RBAC).
        #[arg(long, default_value = "file", value_parser = ["file", "etcd"])]
        catalog: String,
        /// Arguments of `mesh-agent run`, e.g. `--config F --node N`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    // Print the error chain on one line, without the backtrace anyhow's Debug
    // adds under RUST_BACKTRACE: the command line in the message says enough.
    match task(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn task(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Setup => setup::ensure(),
        Task::Build { release } => {
            setup::ensure()?;
            build::agent(release).map(drop)
        }
        Task::Test { args } => test::run(&args),
        Task::Run { catalog, args } => run::run(&args, catalog == "etcd"),
        Task::Fuzz { seconds, targets } => {
            setup::ensure()?;
            fuzz::run(seconds, &targets)
        }
        Task::Bench {
            catalog: true,
            runs,
            ..
        } => catalog::run(runs),
        Task::Bench {
            runs, smoke, only, ..
        } => bench::run(&bench::Options { runs, smoke, only }),
    }
}
