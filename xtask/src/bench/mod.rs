//! `cargo xtask bench`: the mesh against direct TCP, stunnel and itself
//! without multiplexing, measured in one run on this machine, part by
//! part with the modes back to back within each part.
//!
//! Nodes are network namespaces on a bridge. On node B, three copies of
//! `meshbench serve`: one on B's address (direct), one behind two stunnel
//! servers (TLS 1.3, client certificates, ECDSA P-256), one as mesh
//! service `server` on 127.0.0.1. On node A, `meshbench` clients dial B
//! directly, a stunnel client on 127.0.0.1, or the service's VIP as mesh
//! service `client`. A fourth copy sits behind two socat relays (the same
//! hops as the mesh, without TLS): the cost of the hops alone.
//!
//! stunnel runs as two pairs ([`STUNNELS`](stunnel::STUNNELS)): `stunnel` makes a full
//! handshake per connection (`sessionResume = no`), `stunnel resumed`
//! resumes the last session (`sessionResume = yes`, stunnel's default: the
//! client keeps one session per destination, the server takes its TLS 1.3
//! ticket). Before the runs, each pair is started once at log level info
//! and must make the handshakes its name says.
//!
//! mesh/1: on a fourth node `bench-d`, whose agent runs `--no-multiplex`,
//! clients dial the same `server` VIP as mesh service `client1`: one TCP
//! and TLS connection per app connection (ALPN `mesh/1`, which bench-b's
//! agent still accepts), where bench-a's agent opens HTTP/2 streams on one
//! pooled `mesh/2` connection. The two columns are the agent before and
//! after multiplexing. Each figure is the median of `--runs` runs, with
//! min and max.
//!
//! eBPF: run time and run count of the programs of the agent that acts
//! ([`BPF_PROGRAMS`](ebpf::BPF_PROGRAMS), read through their pinned links), as deltas over the
//! `mesh` mode's runs of bulk, rr and connrate.
//!
//! Under flood: the mesh's rr and connection rate again, while a third
//! node `bench-c` (a mesh node, so the kernel lets it through) or a
//! stranger `bench-x` (not in the config) keeps 1,500 connections to the
//! service port open without a handshake (`tests/apps/flood_client.py`).
//!
//! Instances: the mesh's rr and connection rate to `server` (one instance,
//! on bench-b) and to `server2` (two instances, on bench-b and bench-c,
//! picked by `least_request`), side by side in each run: what a second
//! instance costs the caller. It also counts how many of the caller's
//! handshakes resumed a TLS session, which sets most of a new connection's
//! cost.
//!
//! Containers: the mesh's rr and connection rate to `server` (on bench-b's
//! own loopback) and to `server4` (the same `meshbench serve` in a podman
//! container on bench-b, under server4's cgroup), side by side in each
//! run; and what 100 enrolled containers cost bench-b's agent (RSS and
//! fds; bare `unshare --net` namespaces under the `idle` service's cgroup).
//!
//! Web UI: how long each page of the UI takes to draw with 1,000 services
//! and 1,000 intentions, in headless Chromium (`ui`).
//!
//! Results: Markdown tables on stdout, JSON in target/bench/, and from a
//! full run (no `--only`, no `--smoke`) the whole report, explanations
//! included, in docs/benchmarks.md.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::bail;

use crate::{build, cmd, setup};

mod ebpf;
mod host;
mod measure;
mod mesh;
mod provenance;
mod report;
mod sections;
mod stunnel;
mod targets;
#[cfg(test)]
mod tests;
mod ui;
mod units;

use ebpf::{BpfStats, BpfWindow};
use host::hold_cpu_dma_latency;
use measure::Sizes;
use mesh::Bench;
pub use provenance::provenance;
use report::report;
use units::unit_bench;

/// Options of `cargo xtask bench`.
pub struct Options {
    pub runs: usize,
    /// Seconds-long run of everything, for `cargo xtask test`.
    pub smoke: bool,
    /// Parts to measure (bulk, rr, connrate, idle, flood, instances,
    /// container, ui, pick, tunnel); empty: all.
    pub only: Vec<String>,
}

impl Options {
    fn wants(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }

    /// Whether the report goes to docs/benchmarks.md: a full run only.
    fn writes(&self) -> bool {
        !self.smoke && self.only.is_empty()
    }
}

/// Parts that are unit-level benches in `mesh-agent` (`benches/units.rs`,
/// no namespaces, no root): with only these, nothing else is set up.
const UNIT_PARTS: [&str; 2] = ["pick", "tunnel"];
/// `relay` is the mesh's path without TLS: two socat processes (plain
/// TCP, 256 KiB buffers, TCP_NODELAY), the floor for any pair of userspace
/// proxies. It forks per connection, so it skips the connection-rate runs.
/// The stunnel modes are [`STUNNELS`](stunnel::STUNNELS). `mesh/1` is the mesh without
/// multiplexing (from bench-d, see the module doc), `mesh` the mesh as it
/// runs by default (from bench-a).
const MODES: [&str; 6] = [
    "direct",
    "relay",
    "stunnel",
    "stunnel resumed",
    "mesh/1",
    "mesh",
];
/// Concurrent clients in the connection-rate capacity run.
const PARALLEL: usize = 8;
/// The metric of the connection rate with [`PARALLEL`] clients.
const PARALLEL_RATE: &str = "new conns per s (8 at a time)";
/// The mesh with no flood, under the two floods, and beside a control
/// flood: the stranger's, at a port of bench-b that is no service (the
/// kernel resets it, the mesh is not involved): what the flood client's
/// own CPU costs on this two-core machine.
const FLOODS: [&str; 4] = ["quiet", "node flood", "stranger flood", "control"];
/// Connections a flood keeps open.
const FLOOD_CONNS: usize = 1500;
/// The instances part's columns: the mesh to `server` (one instance) and
/// to `server2` (two), and the `client` mode of each.
/// The third, a control: `server3`, two instances of which only bench-b's
/// passes (bench-c's ttl check is never reported), so every connection
/// goes to bench-b as with one instance, through the same pick, health
/// view and failover code as with two. It separates what the mesh's
/// multi-instance path costs from what spreading connections over two
/// nodes' agents and servers costs on a two-core machine.
const INSTANCES: [(&str, &str); 3] = [
    ("1 instance", "mesh"),
    ("2 instances", "mesh 2 instances"),
    ("2 instances, 1 passing", "mesh 2 instances 1 passing"),
];
/// The containers part's columns: the mesh to `server` on bench-b's own
/// loopback, and to `server4` in a container on bench-b.
const CONTAINERS: [(&str, &str); 2] = [
    ("on the host", "mesh"),
    ("in a container", "mesh container"),
];
/// Containers (bare network namespaces) whose cost to the agent is
/// measured; a smoke run's count.
const CONTAINER_COUNTS: [usize; 2] = [100, 5];
/// A full run's sizes: seconds of bulk, rr round trips, connections one
/// after another (twice as many in the parallel run), idle connections.
const BULK_SECS: u64 = 5;
const RR_COUNT: usize = 2000;
const CONNS: usize = 1000;
/// 10,000 would need over 20,000 descriptors in one agent (two sockets per
/// proxied connection), the hard limit on these machines.
const IDLE_COUNTS: [usize; 2] = [1000, 5000];
/// Seconds `meshbench idle` holds its connections before checking each
/// still echoes; the agents' memory is read in the first of them.
const IDLE_HOLD_SECS: u64 = 5;

/// Whether `part` measures `mode`: socat forks per connection (no
/// connection rate for the relay), and resumption changes only a
/// connection's start (`stunnel resumed` runs the connection rate only).
fn measures(part: &str, mode: &str) -> bool {
    match mode {
        "relay" => part != "connrate",
        "stunnel resumed" => part == "connrate",
        _ => true,
    }
}

/// Runs the benchmark.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let mut units = Vec::new();
    if !opts.smoke {
        for part in UNIT_PARTS.into_iter().filter(|p| opts.wants(p)) {
            units.extend(unit_bench(part)?);
        }
        if !opts.only.is_empty() && opts.only.iter().all(|p| UNIT_PARTS.contains(&p.as_str())) {
            return report(&Samples::units(units), 1, opts);
        }
    }
    let (agent, meshbench) = binaries()?;
    if !mesh_tests::is_root() {
        bail!(
            "the benchmark needs root (network namespaces, eBPF); try: sudo -E cargo xtask bench"
        );
    }
    // Idle virtual CPUs inflate latency: ask for no C-state latency while we
    // run (held as long as the file is open).
    let _dma = hold_cpu_dma_latency();
    let _stats = BpfStats::enable()?;

    let sizes = Sizes::of(opts);
    let mut all = Samples::units(units);
    if opts.wants("ui") {
        ui::measure(&agent, sizes.runs, &mut all.ui)?;
        if opts
            .only
            .iter()
            .all(|p| p == "ui" || UNIT_PARTS.contains(&p.as_str()))
            && !opts.only.is_empty()
        {
            return report(&all, sizes.runs, opts);
        }
    }
    let bench = Bench::start(agent, meshbench, opts.smoke)?;
    for run in 0..sizes.runs {
        measure::one_run(&bench, opts, &sizes, run, &mut all)?;
    }
    all.spread = measure::spread(&bench, &all);
    all.extra = measure::memory(&bench, opts, &sizes)?;
    all.stunnel_configs = bench.stunnel_configs.clone();
    all.stunnel_handshakes = bench.stunnel_handshakes.clone();
    report(&all, sizes.runs, opts)
}

/// The machine set up, the agent and meshbench built (release): their
/// paths.
fn binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    setup::ensure()?;
    let agent = build::agent(true)?;
    eprintln!("bench: building meshbench (release)");
    cmd::run(cmd::cargo().args([
        "build",
        "--release",
        "-p",
        "mesh-tests",
        "--bin",
        "meshbench",
    ]))?;
    let meshbench = agent.with_file_name("meshbench");
    Ok((agent, meshbench))
}

/// Everything a run measured, for [`report()`].
struct Samples<'a> {
    /// (metric, mode) of [`MODES`].
    modes: BTreeMap<(String, &'a str), Vec<f64>>,
    /// (metric, flood) of [`FLOODS`].
    floods: BTreeMap<(String, &'a str), Vec<f64>>,
    /// (metric, column) of [`INSTANCES`].
    instances: BTreeMap<(String, &'a str), Vec<f64>>,
    /// (metric, column) of [`CONTAINERS`].
    containers: BTreeMap<(String, &'a str), Vec<f64>>,
    /// (metric, page) of [`ui::PAGES`], and the document's figures.
    ui: BTreeMap<(String, &'a str), Vec<f64>>,
    /// `server2`'s connections per instance, as bench-a's agent counted.
    spread: Vec<(String, f64)>,
    /// Single figures (memory).
    extra: BTreeMap<String, f64>,
    bpf: BpfWindow,
    /// Rows of `benches/units.rs` (`| what | value | unit |`).
    units: Vec<String>,
    /// (title, text) of each stunnel config used.
    stunnel_configs: Vec<(String, String)>,
    /// (mode, full, resumed) handshakes of each stunnel pair's check.
    stunnel_handshakes: Vec<(&'static str, usize, usize)>,
}

impl Samples<'_> {
    /// The unit benches' rows and nothing else (a run of them alone, or
    /// the start of a full run's samples).
    fn units(units: Vec<String>) -> Self {
        Self {
            modes: BTreeMap::new(),
            floods: BTreeMap::new(),
            instances: BTreeMap::new(),
            containers: BTreeMap::new(),
            ui: BTreeMap::new(),
            spread: Vec::new(),
            extra: BTreeMap::new(),
            bpf: BpfWindow::default(),
            units,
            stunnel_configs: Vec::new(),
            stunnel_handshakes: Vec::new(),
        }
    }
}
