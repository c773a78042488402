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
//! Results: Markdown tables on stdout, JSON in target/bench/, and from a
//! full run (no `--only`, no `--smoke`) the whole report, explanations
//! included, in docs/benchmarks.md.

use std::collections::BTreeMap;

use anyhow::bail;

use crate::{build, cmd, setup};

mod ebpf;
mod host;
mod mesh;
mod provenance;
mod report;
mod stunnel;
mod targets;
#[cfg(test)]
mod tests;
mod units;

use ebpf::{BpfStats, BpfWindow, bpf_counters};
use host::hold_cpu_dma_latency;
use mesh::{Bench, caller, field};
pub use provenance::provenance;
use report::report;
use units::unit_bench;

/// Options of `cargo xtask bench`.
pub struct Options {
    pub runs: usize,
    /// Seconds-long run of everything, for `cargo xtask test`.
    pub smoke: bool,
    /// Parts to measure (bulk, rr, connrate, idle, flood, instances,
    /// pick, tunnel); empty: all.
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
    if !mesh_tests::is_root() {
        bail!(
            "the benchmark needs root (network namespaces, eBPF); try: sudo -E cargo xtask bench"
        );
    }
    // Idle virtual CPUs inflate latency: ask for no C-state latency while we
    // run (held as long as the file is open).
    let _dma = hold_cpu_dma_latency();
    let _stats = BpfStats::enable()?;

    let bench = Bench::start(agent, meshbench, opts.smoke)?;
    let (secs, rr_count, conns, idle) = if opts.smoke {
        (1, 200, 100, vec![100])
    } else {
        (BULK_SECS, RR_COUNT, CONNS, IDLE_COUNTS.to_vec())
    };
    let runs = if opts.smoke { 1 } else { opts.runs.max(1) };
    let mut samples: BTreeMap<(String, &str), Vec<f64>> = BTreeMap::new();
    let mut flood_samples: BTreeMap<(String, &str), Vec<f64>> = BTreeMap::new();
    let mut instance_samples: BTreeMap<(String, &str), Vec<f64>> = BTreeMap::new();
    let mut bpf = BpfWindow::default();
    for run in 0..runs {
        // Part by part, the modes back to back within each: every mode of a
        // part meets the same conditions (a part's figures drift with what
        // ran a few seconds before: see docs/benchmarks.md).
        let parts = ["bulk", "rr", "connrate"];
        for (part, mode) in parts
            .into_iter()
            .filter(|p| opts.wants(p))
            .flat_map(|part| MODES.into_iter().map(move |mode| (part, mode)))
            .filter(|(part, mode)| measures(part, mode))
        {
            eprintln!("bench: run {}/{runs}: {part}, {mode}", run + 1);
            // The eBPF window: the default mesh's runs.
            let bpf_before = (mode == "mesh").then(bpf_counters).transpose()?;
            let mut app_conns = 0;
            let mut put = |metric: &str, v: f64| {
                samples
                    .entry((metric.to_owned(), mode))
                    .or_default()
                    .push(v);
            };
            if part == "bulk" {
                let cpu_before = bench.cpu_seconds(mode)?;
                let bulk = bench.client(mode, &["bulk", "--secs", &secs.to_string()])?;
                let cpu_after = bench.cpu_seconds(mode)?;
                app_conns += 1;
                let (user, system) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
                let bytes = field(&bulk, "bytes")?;
                put("bulk Gbit/s", field(&bulk, "gbit_per_s")?);
                if mode != "direct" && bytes > 0.0 {
                    put(
                        "proxy CPU s per GB (both ends)",
                        (user + system) / (bytes / 1e9),
                    );
                    // The kernel's share: socket copies and TCP, which any
                    // userspace proxy pays per byte.
                    put(
                        "proxy system CPU s per GB (both ends)",
                        system / (bytes / 1e9),
                    );
                }
            }
            for size in ["1", "1024"].into_iter().filter(|_| part == "rr") {
                let rr = bench.client(
                    mode,
                    &["rr", "--size", size, "--count", &rr_count.to_string()],
                )?;
                app_conns += 1;
                put(&format!("rr {size} B p50 us"), field(&rr, "p50_us")?);
                put(&format!("rr {size} B p99 us"), field(&rr, "p99_us")?);
            }
            if part == "connrate" {
                let before = bench.outbound_handshakes(caller(mode));
                let cr = bench.client(mode, &["connrate", "--count", &conns.to_string()])?;
                let after = bench.outbound_handshakes(caller(mode));
                put("new conns per s", field(&cr, "per_s")?);
                put("new conn p50 us", field(&cr, "p50_us")?);
                put("new conn p99 us", field(&cr, "p99_us")?);
                // Shows which hop a mesh mode used: mesh/1 makes one
                // handshake per connection, mesh/2 reuses its pool.
                if mode.starts_with("mesh") {
                    let (full, resumed) = (after.0 - before.0, after.1 - before.1);
                    put(
                        "caller agent handshakes per new conn",
                        (full + resumed) / conns as f64,
                    );
                    if full + resumed > 0.0 {
                        put(
                            "caller agent handshakes resumed %",
                            100.0 * resumed / (full + resumed),
                        );
                    }
                }
                let cr = bench.client(
                    mode,
                    &[
                        "connrate",
                        "--count",
                        &(2 * conns).to_string(),
                        "--parallel",
                        &PARALLEL.to_string(),
                    ],
                )?;
                app_conns += 3 * conns;
                put(
                    &format!("new conns per s ({PARALLEL} at a time)"),
                    field(&cr, "per_s")?,
                );
            }
            if let Some(before) = bpf_before {
                bpf.add(&before, &bpf_counters()?, app_conns);
            }
        }
        if opts.wants("flood") {
            eprintln!("bench: run {}/{runs}: mesh under flood", run + 1);
            for flood in FLOODS {
                let flooding = bench.flood(flood)?;
                let rr = bench.client(
                    "mesh",
                    &["rr", "--size", "1", "--count", &rr_count.to_string()],
                )?;
                let cr = bench.client("mesh", &["connrate", "--count", &conns.to_string()])?;
                drop(flooding);
                let mut put = |metric: &str, v: f64| {
                    flood_samples
                        .entry((metric.to_owned(), flood))
                        .or_default()
                        .push(v);
                };
                put("rr 1 B p50 us", field(&rr, "p50_us")?);
                put("new conns per s", field(&cr, "per_s")?);
            }
        }
        if opts.wants("instances") {
            eprintln!("bench: run {}/{runs}: 1 vs 2 instances", run + 1);
            // Alternate which goes first, so neither always follows the
            // other's teardown.
            let mut order = INSTANCES;
            if run % 2 == 1 {
                order.reverse();
            }
            for (column, mode) in order {
                let before = bench.outbound_handshakes("bench-a");
                let rr = bench.client(
                    mode,
                    &["rr", "--size", "1", "--count", &rr_count.to_string()],
                )?;
                let cr = bench.client(mode, &["connrate", "--count", &conns.to_string()])?;
                let after = bench.outbound_handshakes("bench-a");
                let (full, resumed) = (after.0 - before.0, after.1 - before.1);
                let mut put = |metric: &str, v: f64| {
                    instance_samples
                        .entry((metric.to_owned(), column))
                        .or_default()
                        .push(v);
                };
                put("new conns per s", field(&cr, "per_s")?);
                put("rr 1 B p50 us", field(&rr, "p50_us")?);
                // What a new connection costs depends most on this: a
                // full handshake signs and verifies, a resumed one not.
                if full + resumed > 0.0 {
                    put("handshakes resumed %", 100.0 * resumed / (full + resumed));
                }
            }
        }
    }
    // Where the two-instance connections went, as bench-a's agent counted.
    let spread: Vec<(String, f64)> = if instance_samples.is_empty() {
        Vec::new()
    } else {
        ["bench-b", "bench-c"]
            .iter()
            .map(|n| (format!("connections to {n}"), bench.server2_connections(n)))
            .collect()
    };
    let mut extra = BTreeMap::new();
    extra.insert(
        "agents RSS idle MiB".to_owned(),
        bench.agents_rss_kib()? / 1024.0,
    );
    for n in idle.into_iter().filter(|_| opts.wants("idle")) {
        let per_conn = bench.idle_kib_per_conn(n)?;
        extra.insert(
            format!("KiB per idle proxied conn ({n} open, both agents)"),
            per_conn,
        );
    }
    report(
        &Samples {
            modes: samples,
            floods: flood_samples,
            instances: instance_samples,
            spread,
            extra,
            bpf,
            units,
            stunnel_configs: bench.stunnel_configs.clone(),
            stunnel_handshakes: bench.stunnel_handshakes.clone(),
        },
        runs,
        opts,
    )
}

/// Everything a run measured, for [`report()`].
struct Samples<'a> {
    /// (metric, mode) of [`MODES`].
    modes: BTreeMap<(String, &'a str), Vec<f64>>,
    /// (metric, flood) of [`FLOODS`].
    floods: BTreeMap<(String, &'a str), Vec<f64>>,
    /// (metric, column) of [`INSTANCES`].
    instances: BTreeMap<(String, &'a str), Vec<f64>>,
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
    /// A run of the unit benches alone.
    fn units(units: Vec<String>) -> Self {
        Self {
            modes: BTreeMap::new(),
            floods: BTreeMap::new(),
            instances: BTreeMap::new(),
            spread: Vec::new(),
            extra: BTreeMap::new(),
            bpf: BpfWindow::default(),
            units,
            stunnel_configs: Vec::new(),
            stunnel_handshakes: Vec::new(),
        }
    }
}
