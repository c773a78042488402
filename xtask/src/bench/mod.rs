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
//! stunnel runs as two pairs ([`STUNNELS`]): `stunnel` makes a full
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
//! ([`BPF_PROGRAMS`], read through their pinned links), as deltas over the
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

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use mesh_tests::{Mesh, pki, run_to_string};
use serde_json::{Value, json};

use crate::{build, cmd, setup};

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
const VIP: &str = "240.0.0.99";
/// The VIP of `server2`, the service with two instances (bench-b, bench-c).
const VIP2: &str = "240.0.0.98";
/// `relay` is the mesh's path without TLS: two socat processes (plain
/// TCP, 256 KiB buffers, TCP_NODELAY), the floor for any pair of userspace
/// proxies. It forks per connection, so it skips the connection-rate runs.
/// The stunnel modes are [`STUNNELS`]. `mesh/1` is the mesh without
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
/// bench-d's agent: offers and accepts only `mesh/1`.
const MESH1_AGENT_ARGS: [&str; 1] = ["--no-multiplex"];
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
/// The VIP of `server3` (see [`INSTANCES`]).
const VIP3: &str = "240.0.0.97";
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

/// One stunnel pair: a client on bench-a's 127.0.0.1:`client_port`, a
/// server on bench-b's address:`server_port` in front of the same
/// `meshbench serve` (127.0.0.1:7002).
struct Stunnel {
    /// Its mode in [`MODES`].
    mode: &'static str,
    client_port: u16,
    server_port: u16,
    /// `sessionResume` of both ends.
    resume: bool,
}

/// The stunnel modes: full handshakes, and stunnel's default resumption.
const STUNNELS: [Stunnel; 2] = [
    Stunnel {
        mode: "stunnel",
        client_port: 7004,
        server_port: 7003,
        resume: false,
    },
    Stunnel {
        mode: "stunnel resumed",
        client_port: 7014,
        server_port: 7013,
        resume: true,
    },
];
/// Connections of the check that a stunnel pair makes the handshakes its
/// mode says.
const STUNNEL_CHECK_CONNS: usize = 4;

/// The cipher suite the agents negotiate (rustls prefers it on x86 with
/// AES-NI); stunnel's default would be TLS_AES_256_GCM_SHA384.
const STUNNEL_SUITE: &str = "TLS_AES_128_GCM_SHA256";

/// The mesh's eBPF programs (`mesh-ebpf`), each with the node whose
/// agent's copy does the work in the measured window: the caller's for
/// those on the cgroup root, the destination's for sk_lookup (attached to
/// its node's network namespace).
const BPF_PROGRAMS: [(&str, &str); 6] = [
    ("mesh_connect4", "bench-a"),
    ("mesh_connect6", "bench-a"),
    ("mesh_sock_ops", "bench-a"),
    ("mesh_bind4", "bench-a"),
    ("mesh_bind6", "bench-a"),
    ("mesh_sk_lookup", "bench-b"),
];

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

/// Everything a run measured, for [`report`].
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

/// The number `name` of meshbench's JSON answer: a field that is missing
/// or not a number is an error, never a 0.
fn field(answer: &Value, name: &str) -> anyhow::Result<f64> {
    answer[name]
        .as_f64()
        .with_context(|| format!("meshbench's answer has no number {name:?}: {answer}"))
}

/// The benchmark's mesh and its processes.
struct Bench {
    mesh: Mesh,
    meshbench: PathBuf,
    /// Connection errors a connrate run may have: none, but in a smoke
    /// run (any number).
    smoke: bool,
    /// Pids of each stunnel mode's client (node a) and server (node b).
    stunnel: BTreeMap<&'static str, [u32; 2]>,
    /// (title, text) of each stunnel config, for the report.
    stunnel_configs: Vec<(String, String)>,
    /// (mode, full, resumed) handshakes of each stunnel pair's check.
    stunnel_handshakes: Vec<(&'static str, usize, usize)>,
    /// Pids of the two socat relays (node a, node b).
    relay: [u32; 2],
}

impl Bench {
    fn start(agent: PathBuf, meshbench: PathBuf, smoke: bool) -> anyhow::Result<Self> {
        // bench-c floods as a mesh node (from outside any service cgroup,
        // so its agent leaves the flood alone) and hosts server2's second
        // instance; bench-x floods as a stranger (not in the config).
        // bench-d is the `mesh/1` caller (see the module doc).
        let mut mesh = Mesh::nodes(&["bench-a", "bench-b", "bench-c", "bench-d"])
            .stranger("bench-x")
            .agent(agent)
            .default_policy("allow")
            .service("client", "bench-a", 8080)
            .service("client1", "bench-d", 8081)
            .service_with("server", "bench-b", 5001, |s| s.vip(VIP))
            .service_on_with("server2", &["bench-b", "bench-c"], 5002, |s| s.vip(VIP2))
            .service_on_with("server3", &["bench-b", "bench-c"], 5003, |s| {
                s.vip(VIP3).check("ttl = \"24h\"")
            })
            .build();
        // Quiet: the harness learns readiness from `/ready`, not the log.
        mesh.log_filter = "warn".to_owned();
        for node in ["bench-a", "bench-b", "bench-c"] {
            mesh.start_agent(node);
        }
        // Not the builder's `agent_args`: only `Topology::start` reads
        // them, and that would start the agents before `log_filter` is set.
        mesh.start_agent_with("bench-d", &MESH1_AGENT_ARGS);
        let b = mesh.node("bench-b").v4;

        let serve = |bind: String, service: Option<&str>| {
            let mut c = match service {
                Some(s) => mesh.cmd_as("bench-b", s, &meshbench),
                None => mesh.cmd("bench-b", &meshbench),
            };
            c.args(["serve", "--bind", &bind]);
            c
        };
        mesh.spawn_app(serve("127.0.0.1:5001".into(), Some("server")), "serve-mesh");
        mesh.spawn_app(
            serve("127.0.0.1:5002".into(), Some("server2")),
            "serve-mesh2-b",
        );
        let mut c = mesh.cmd_as("bench-c", "server2", &meshbench);
        c.args(["serve", "--bind", "127.0.0.1:5002"]);
        mesh.spawn_app(c, "serve-mesh2-c");
        mesh.wait_listening("bench-c", 5002);
        mesh.spawn_app(serve(format!("{b}:7001"), None), "serve-direct");
        mesh.spawn_app(serve("127.0.0.1:7002".into(), None), "serve-stunnel");
        mesh.spawn_app(serve("127.0.0.1:7005".into(), None), "serve-relay");
        mesh.spawn_app(
            serve("127.0.0.1:5003".into(), Some("server3")),
            "serve-mesh3-b",
        );
        for port in [5001, 5002, 5003, 7001, 7002, 7005] {
            mesh.wait_listening("bench-b", port);
        }
        // server3 passes on bench-b only (its ttl check on bench-c is never
        // reported, so that instance stays critical).
        let mut pass = mesh.cmd("bench-b", &mesh.agent);
        pass.args(["check", "pass", "--service", "server3"]);
        run_to_string(&mut pass, Duration::from_secs(10));
        // Both instances of server2 passing in the caller's view (bench-c's
        // health reaches bench-a over their agent link), or the pick would
        // skip one and the two-instance figures would measure one.
        let health = |service: &str, node: &str| {
            let series = format!("mesh_instance_health{{service=\"{service}\",node=\"{node}\"}}");
            mesh_tests::metric_value(&mesh.metrics("bench-a"), &series)
        };
        if !mesh_tests::wait_until(Duration::from_secs(10), || {
            health("server2", "bench-b") == Some(0.0)
                && health("server2", "bench-c") == Some(0.0)
                && health("server3", "bench-b") == Some(0.0)
                && health("server3", "bench-c") == Some(2.0)
        }) {
            bail!(
                "bench-a does not see server2 on both nodes and server3 on bench-b only passing: {}",
                mesh.metrics("bench-a")
            );
        }
        // The plain relay: a -> 127.0.0.1:7007 -> socat -> b:7006 -> socat -> 127.0.0.1:7005.
        let socat = |node: &str, listen: String, to: String| {
            let mut c = mesh.cmd(node, "socat");
            c.args([
                "-b262144",
                &format!("TCP-LISTEN:{listen},reuseaddr,fork,nodelay"),
                &format!("TCP:{to},nodelay"),
            ]);
            c
        };
        let relay_b = mesh.spawn_app(
            socat("bench-b", format!("7006,bind={b}"), "127.0.0.1:7005".into()),
            "relay-b",
        );
        let relay_a = mesh.spawn_app(
            socat("bench-a", "7007,bind=127.0.0.1".into(), format!("{b}:7006")),
            "relay-a",
        );
        mesh.wait_listening("bench-b", 7006);
        mesh.wait_listening("bench-a", 7007);

        // stunnel: TLS 1.3, client certificates, ECDSA P-256, one small CA,
        // the agents' cipher suite ([`STUNNEL_SUITE`]).
        let dir = mesh.dir.join("stunnel");
        fs::create_dir_all(&dir)?;
        let root = pki::Ca::new_root("bench.local");
        root.save(&dir.join("ca"));
        let certs = [
            ("a", "spiffe://bench.local/svc/a"),
            ("b", "spiffe://bench.local/svc/b"),
        ]
        .map(|(name, uri)| pki::write_leaf(&dir, name, &root, &pki::Leaf::valid_now(uri)));
        let mut stunnel = BTreeMap::new();
        let mut stunnel_configs = Vec::new();
        let mut stunnel_handshakes = Vec::new();
        for pair in &STUNNELS {
            let handshakes = pair.check(&mesh, &meshbench, &dir, b, &certs)?;
            stunnel_handshakes.push((pair.mode, handshakes.0, handshakes.1));
            let [client, server] = pair.configs(&dir, b, &certs, false);
            let pids = [
                ("client", "bench-a", &client),
                ("server", "bench-b", &server),
            ]
            .map(|(side, node, text)| {
                let path = dir.join(format!("{}-{side}.conf", pair.client_port));
                fs::write(&path, text)?;
                let mut c = mesh.cmd(node, "stunnel4");
                c.arg(&path);
                anyhow::Ok(mesh.spawn_app(c, &format!("stunnel-{}-{side}", pair.client_port)))
            });
            let [cli, srv] = pids;
            stunnel.insert(pair.mode, [cli?, srv?]);
            mesh.wait_listening("bench-b", pair.server_port);
            mesh.wait_listening("bench-a", pair.client_port);
            stunnel_configs.push((format!("{}, client (bench-a)", pair.mode), client));
            stunnel_configs.push((format!("{}, server (bench-b)", pair.mode), server));
        }
        Ok(Self {
            mesh,
            meshbench,
            smoke,
            stunnel,
            stunnel_configs,
            stunnel_handshakes,
            relay: [relay_a, relay_b],
        })
    }

    /// Runs `meshbench ARGS --to <target of mode>` on [`caller`]`(mode)`;
    /// its JSON line.
    fn client(&self, mode: &str, args: &[&str]) -> anyhow::Result<Value> {
        let b = self.mesh.node("bench-b").v4;
        let (target, service) = match mode {
            "direct" => (format!("{b}:7001"), None),
            "relay" => ("127.0.0.1:7007".to_owned(), None),
            "mesh/1" => (format!("{VIP}:5001"), Some("client1")),
            "mesh" => (format!("{VIP}:5001"), Some("client")),
            "mesh 2 instances" => (format!("{VIP2}:5002"), Some("client")),
            "mesh 2 instances 1 passing" => (format!("{VIP3}:5003"), Some("client")),
            _ => match STUNNELS.iter().find(|s| s.mode == mode) {
                Some(s) => (format!("127.0.0.1:{}", s.client_port), None),
                None => bail!("no client mode {mode:?}"),
            },
        };
        let node = caller(mode);
        let mut args = args.join(" ");
        if self.smoke && args.starts_with("connrate") {
            args.push_str(" --max-errors 1000000");
        }
        let line = format!(
            "ulimit -n $(ulimit -Hn); exec {} {args} --to {target}",
            self.meshbench.display(),
        );
        let mut c = match service {
            Some(s) => self.mesh.cmd_as(node, s, "sh"),
            None => self.mesh.cmd(node, "sh"),
        };
        c.args(["-c", &line]);
        let out = mesh_tests::output_with_timeout(&mut c, Duration::from_secs(120));
        let (ok, text) = mesh_tests::outcome(&out);
        ensure!(ok, "meshbench {args} ({mode}) failed: {text}");
        let json = text
            .lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or_default();
        serde_json::from_str(json)
            .with_context(|| format!("meshbench {args} ({mode}) said: {text}"))
    }

    /// Starts `flood` ("quiet": none) against the mesh service's port on
    /// bench-b; it stops when the returned guard is dropped.
    fn flood(&self, flood: &str) -> anyhow::Result<Option<Killed>> {
        let (node, port) = match flood {
            "node flood" => ("bench-c", "5001"),
            "stranger flood" => ("bench-x", "5001"),
            "control" => ("bench-x", "5999"),
            _ => return Ok(None),
        };
        // At the lowest priority: a real attacker brings its own CPUs; here
        // it would take them from the two the mesh runs on.
        let mut c = self.mesh.cmd(node, "nice");
        c.args(["-n", "19", "python3"])
            .arg(mesh_tests::app("flood_client.py"))
            .arg(self.mesh.node("bench-b").v4.to_string())
            .args([port, &FLOOD_CONNS.to_string(), "60", "stall"])
            .stdout(Stdio::null());
        let child = c.spawn().context("start the flood client")?;
        // Let it reach full strength.
        std::thread::sleep(Duration::from_millis(1500));
        Ok(Some(Killed(child)))
    }

    /// (user, system) CPU seconds used so far by the processes that do
    /// `mode`'s proxying (none for `direct`).
    fn cpu_seconds(&self, mode: &str) -> anyhow::Result<(f64, f64)> {
        let pids: Vec<u32> = match mode {
            "relay" => self.relay.to_vec(),
            "mesh/1" | "mesh" => [caller(mode), "bench-b"]
                .iter()
                .map(|n| self.agent_pid(n))
                .collect::<anyhow::Result<_>>()?,
            _ => self
                .stunnel
                .get(mode)
                .map(|p| p.to_vec())
                .unwrap_or_default(),
        };
        pids.into_iter()
            .map(cpu_of)
            .try_fold((0.0, 0.0), |(u, s), cpu| {
                let (du, ds) = cpu?;
                Ok((u + du, s + ds))
            })
    }

    fn agent_pid(&self, node: &str) -> anyhow::Result<u32> {
        self.mesh
            .agent_pid(node)
            .with_context(|| format!("the agent of {node} is not running"))
    }

    /// Connections bench-a's agent sent to `server2`'s instance on `node`.
    fn server2_connections(&self, node: &str) -> f64 {
        self.mesh
            .metric(
                "bench-a",
                &format!("mesh_instance_connections_total{{service=\"server2\",node=\"{node}\"}}"),
            )
            // Not there if no connection went to that instance.
            .unwrap_or(0.0)
    }

    /// (full, resumed) mTLS handshakes `node`'s agent made so far as a
    /// client.
    fn outbound_handshakes(&self, node: &str) -> (f64, f64) {
        let text = self.mesh.metrics(node);
        let count = |kind: &str| {
            let series = format!("mesh_handshakes_total{{side=\"outbound\",kind=\"{kind}\"}}");
            // Not there before the first handshake of the kind.
            mesh_tests::metric_value(&text, &series).unwrap_or(0.0)
        };
        (count("full"), count("resumed"))
    }

    /// Resident memory of bench-a's and bench-b's agents together.
    fn agents_rss_kib(&self) -> anyhow::Result<f64> {
        ["bench-a", "bench-b"]
            .iter()
            .map(|n| rss_kib(self.agent_pid(n)?))
            .sum()
    }

    /// Opens `n` idle connections through the mesh; KiB of agent RSS each.
    /// meshbench then checks, after [`IDLE_HOLD_SECS`], that every one
    /// still echoes: one that does not fails the run.
    fn idle_kib_per_conn(&self, n: usize) -> anyhow::Result<f64> {
        let before = self.agents_rss_kib()?;
        let line = format!(
            "ulimit -n $(ulimit -Hn); exec {} idle --count {n} --hold-secs {IDLE_HOLD_SECS} --to {VIP}:5001",
            self.meshbench.display()
        );
        let mut c = self.mesh.cmd_as("bench-a", "client", "sh");
        let log = self.mesh.dir.join(format!("app-idle-{n}.log"));
        let file = fs::File::create(&log)?;
        c.args(["-c", &line])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let mut idle = Killed(c.spawn().context("start meshbench idle")?);
        let said = |what: &str| {
            fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(&format!("\"{what}\""))
        };
        let mut exited = None;
        mesh_tests::wait_until(Duration::from_secs(120), || {
            exited = idle.0.try_wait().ok().flatten();
            exited.is_some() || said("open")
        });
        if exited.is_some() || !said("open") {
            bail!(
                "{n} idle connections did not open: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
        let after = self.agents_rss_kib()?;
        let status = idle.wait(Duration::from_secs(IDLE_HOLD_SECS + 120))?;
        ensure!(
            status.success() && said("alive"),
            "meshbench idle --count {n} failed ({status}): {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        Ok(((after - before) / n as f64).max(0.0))
    }
}

/// The node `mode`'s clients run on: bench-d for `mesh/1`, else bench-a.
fn caller(mode: &str) -> &'static str {
    if mode == "mesh/1" {
        "bench-d"
    } else {
        "bench-a"
    }
}

/// A child process; killed when dropped.
struct Killed(Child);

impl Killed {
    /// Its exit status, waiting at most `timeout` (then it is killed).
    fn wait(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "pid {} still running after {timeout:?}",
                self.0.id()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        // `ip netns exec`, nice and sh exec their command: this is the
        // process itself.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Stunnel {
    /// The client's and the server's config. Tuned as the agents are:
    /// logs to its own output only (with no syslog daemon it writes every
    /// connection to /dev/console, ~2.5 ms), no libwrap lookups,
    /// TCP_NODELAY on both sockets. `info` logs each handshake's kind.
    fn configs(
        &self,
        dir: &Path,
        b: Ipv4Addr,
        [a, bl]: &[pki::CertFiles; 2],
        info: bool,
    ) -> [String; 2] {
        let resume = if self.resume { "yes" } else { "no" };
        let common = format!(
            "foreground = yes\nsyslog = no\npid =\n{}sslVersionMin = TLSv1.3\n\
             verifyChain = yes\nCAfile = {}\nlibwrap = no\n\
             socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n",
            if info { "debug = info\n" } else { "" },
            dir.join("ca.crt").display()
        );
        let (client, server) = (self.client_port, self.server_port);
        [
            format!(
                "{common}[cli]\nclient = yes\naccept = 127.0.0.1:{client}\nconnect = {b}:{server}\n\
                 cert = {}\nkey = {}\nciphersuites = {STUNNEL_SUITE}\nsessionResume = {resume}\n",
                a.cert.display(),
                a.key.display()
            ),
            format!(
                "{common}[srv]\naccept = {b}:{server}\nconnect = 127.0.0.1:7002\n\
                 cert = {}\nkey = {}\nrequireCert = yes\nciphersuites = {STUNNEL_SUITE}\n\
                 sessionResume = {resume}\n",
                bl.cert.display(),
                bl.key.display()
            ),
        ]
    }

    /// Runs the pair at log level info for [`STUNNEL_CHECK_CONNS`]
    /// connections and counts the server's (full, resumed) handshakes;
    /// fails unless they are what the mode says: all full, or all but the
    /// first resumed.
    fn check(
        &self,
        mesh: &Mesh,
        meshbench: &Path,
        dir: &Path,
        b: Ipv4Addr,
        certs: &[pki::CertFiles; 2],
    ) -> anyhow::Result<(usize, usize)> {
        let [client, server] = self.configs(dir, b, certs, true);
        let mut pids = Vec::new();
        for (side, node, text) in [("client", "bench-a", client), ("server", "bench-b", server)] {
            let path = dir.join(format!("{}-{side}-check.conf", self.client_port));
            fs::write(&path, text)?;
            let mut c = mesh.cmd(node, "stunnel4");
            c.arg(&path);
            let name = format!("stunnel-{}-{side}-check", self.client_port);
            pids.push((
                mesh.spawn_app(c, &name),
                mesh.dir.join(format!("app-{name}.log")),
            ));
        }
        mesh.wait_listening("bench-b", self.server_port);
        mesh.wait_listening("bench-a", self.client_port);
        let mut c = mesh.cmd("bench-a", meshbench);
        c.args(["connrate", "--count", &STUNNEL_CHECK_CONNS.to_string()])
            .args(["--to", &format!("127.0.0.1:{}", self.client_port)]);
        let out = mesh_tests::output_with_timeout(&mut c, Duration::from_secs(30));
        for (pid, _) in &pids {
            mesh.stop_app(*pid);
        }
        let (ok, text) = mesh_tests::outcome(&out);
        ensure!(ok, "{}: meshbench connrate failed: {text}", self.mode);
        let log = fs::read_to_string(&pids[1].1)?;
        let count = |what: &str| log.matches(&format!("TLS accepted: {what}")).count();
        let (full, resumed) = (
            count("new session negotiated"),
            count("previous session reused"),
        );
        let n = STUNNEL_CHECK_CONNS;
        let want = if self.resume { (1, n - 1) } else { (n, 0) };
        ensure!(
            (full, resumed) == want,
            "{}: {n} connections made {full} full and {resumed} resumed handshakes, not {} and {} (server log: {})",
            self.mode,
            want.0,
            want.1,
            pids[1].1.display()
        );
        Ok((full, resumed))
    }
}

/// Runs `cargo bench -p mesh-agent --bench units -- <part>`; its rows.
fn unit_bench(part: &str) -> anyhow::Result<Vec<String>> {
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

/// (user, system) CPU seconds of `pid` and its reaped children (socat
/// forks per connection).
fn cpu_of(pid: u32) -> anyhow::Result<(f64, f64)> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    // Fields after the command name (which may contain spaces).
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14 to 17 of the whole line:
    // 11 to 14 here (counting from state = 0), in clock ticks of 1/100 s.
    let at = |i: usize| -> anyhow::Result<f64> {
        let ticks: f64 = f
            .get(i)
            .and_then(|x| x.parse().ok())
            .with_context(|| format!("{path} has no field {}: {stat}", i + 3))?;
        Ok(ticks / 100.0)
    };
    Ok((at(11)? + at(13)?, at(12)? + at(14)?))
}

/// `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    fs::read_to_string(&path)
        .with_context(|| format!("failed to read {path}"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{path} has no VmRSS"))
}

/// `kernel.bpf_stats_enabled` on for the run, restored after.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> anyhow::Result<Self> {
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
fn bpf_counters() -> anyhow::Result<[(f64, f64); BPF_PROGRAMS.len()]> {
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
fn bpftool(args: &[&str]) -> anyhow::Result<Value> {
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
struct BpfWindow {
    /// (run_time_ns, run_cnt) per program, in [`BPF_PROGRAMS`]' order.
    totals: [(f64, f64); BPF_PROGRAMS.len()],
    app_conns: usize,
    /// Whether any window was measured.
    measured: bool,
}

impl BpfWindow {
    fn add(
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
    fn ns_per_call(&self, program: &str) -> Option<f64> {
        let i = BPF_PROGRAMS.iter().position(|(p, _)| *p == program)?;
        let (ns, calls) = self.totals[i];
        (calls > 0.0).then(|| ns / calls)
    }
}

/// Writes 0 to /dev/cpu_dma_latency and keeps it open (the kernel holds the
/// request while the file is open).
fn hold_cpu_dma_latency() -> Option<fs::File> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open("/dev/cpu_dma_latency")
        .ok()?;
    f.write_all(&0i32.to_ne_bytes()).ok()?;
    Some(f)
}

/// (median, min, max)
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let med = s.get(s.len() / 2).copied().unwrap_or(f64::NAN);
    (
        med,
        s.first().copied().unwrap_or(f64::NAN),
        s.last().copied().unwrap_or(f64::NAN),
    )
}

/// A target: a figure at least or at most this.
#[derive(Clone, Copy)]
enum Want {
    AtLeast(f64),
    AtMost(f64),
}

impl Want {
    fn met(self, got: f64) -> bool {
        match self {
            Self::AtLeast(bound) => got >= bound,
            Self::AtMost(bound) => got <= bound,
        }
    }
}

impl std::fmt::Display for Want {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AtLeast(bound) => write!(f, ">= {bound}"),
            Self::AtMost(bound) => write!(f, "<= {bound}"),
        }
    }
}

/// The issues' targets against this run's medians: a table of ratios.
/// `flooded(metric, flood)` is a median of the under-flood runs,
/// `instances(metric, column)` of the instances part.
fn targets(
    median: &dyn Fn(&str, &str) -> Option<f64>,
    flooded: &dyn Fn(&str, &str) -> Option<f64>,
    instances: &dyn Fn(&str, &str) -> Option<f64>,
    extra: &BTreeMap<String, f64>,
    bpf: &BpfWindow,
) -> String {
    let under =
        |metric: &str, flood: &str| Some(flooded(metric, flood)? / flooded(metric, "quiet")?);
    let ratio = |metric: &str, over: &str| Some(median(metric, "mesh")? / median(metric, over)?);
    let over_one = |metric: &str, column: &str| {
        Some(instances(metric, column)? / instances(metric, "1 instance")?)
    };
    let added = |metric: &str| {
        let direct = median(metric, "direct")?;
        Some((median(metric, "mesh")? - direct) / (median(metric, "stunnel")? - direct))
    };
    let most = |prefix: &str| {
        extra
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| *v)
            .reduce(f64::max)
    };
    let parallel = format!("new conns per s ({PARALLEL} at a time)");
    let rows: [(&str, Want, Option<f64>); 27] = [
        (
            "bulk, mesh/direct",
            Want::AtLeast(0.5),
            ratio("bulk Gbit/s", "direct"),
        ),
        (
            "bulk, mesh/stunnel",
            Want::AtLeast(1.8),
            ratio("bulk Gbit/s", "stunnel"),
        ),
        (
            "CPU per GB, mesh/stunnel",
            Want::AtMost(0.4),
            ratio("proxy CPU s per GB (both ends)", "stunnel"),
        ),
        (
            "rr 1 B p50 added over direct, mesh/stunnel",
            Want::AtMost(0.5),
            added("rr 1 B p50 us"),
        ),
        (
            "rr 1 KiB p50 added over direct, mesh/stunnel",
            Want::AtMost(0.5),
            added("rr 1024 B p50 us"),
        ),
        (
            "new conns per s, mesh/stunnel",
            Want::AtLeast(10.0),
            ratio("new conns per s", "stunnel"),
        ),
        (
            "new conns per s (8 at a time), mesh/stunnel",
            Want::AtLeast(10.0),
            ratio(&parallel, "stunnel"),
        ),
        (
            "new conns per s, mesh/stunnel resumed",
            Want::AtLeast(10.0),
            ratio("new conns per s", "stunnel resumed"),
        ),
        (
            "new conns per s (8 at a time), mesh/stunnel resumed",
            Want::AtLeast(10.0),
            ratio(&parallel, "stunnel resumed"),
        ),
        // Issue 12: multiplexing (mesh/2) against one connection per app
        // connection (mesh/1, bench-d's agent).
        (
            "new conns per s, mesh/mesh/1",
            Want::AtLeast(2.0),
            ratio("new conns per s", "mesh/1"),
        ),
        (
            "new conns per s (8 at a time), mesh/mesh/1",
            Want::AtLeast(2.0),
            ratio(&parallel, "mesh/1"),
        ),
        (
            "new conn p50 us, mesh",
            Want::AtMost(300.0),
            median("new conn p50 us", "mesh"),
        ),
        (
            "bulk, mesh/mesh/1",
            Want::AtLeast(0.95),
            ratio("bulk Gbit/s", "mesh/1"),
        ),
        (
            "CPU per GB, mesh/mesh/1",
            Want::AtMost(1.05),
            ratio("proxy CPU s per GB (both ends)", "mesh/1"),
        ),
        (
            "rr 1 B p50, mesh/mesh/1",
            Want::AtMost(1.05),
            ratio("rr 1 B p50 us", "mesh/1"),
        ),
        (
            "rr 1 KiB p50, mesh/mesh/1",
            Want::AtMost(1.05),
            ratio("rr 1024 B p50 us", "mesh/1"),
        ),
        (
            "KiB per idle proxied conn (worst)",
            Want::AtMost(24.0),
            most("KiB per idle"),
        ),
        (
            "agents RSS idle MiB",
            Want::AtMost(32.0),
            most("agents RSS idle"),
        ),
        (
            "mesh_connect4 ns per call (bench-a's)",
            Want::AtMost(1000.0),
            bpf.ns_per_call("mesh_connect4"),
        ),
        (
            "rr 1 B p50 under node flood / quiet",
            Want::AtMost(1.1),
            under("rr 1 B p50 us", "node flood"),
        ),
        (
            "new conns per s under node flood / quiet",
            Want::AtLeast(0.9),
            under("new conns per s", "node flood"),
        ),
        (
            "rr 1 B p50 under stranger flood / quiet",
            Want::AtMost(1.1),
            under("rr 1 B p50 us", "stranger flood"),
        ),
        (
            "new conns per s under stranger flood / quiet",
            Want::AtLeast(0.9),
            under("new conns per s", "stranger flood"),
        ),
        // 2 instances cost at most 5% of connection rate and rr p50.
        (
            "new conns per s, 2 instances / 1",
            Want::AtLeast(0.95),
            over_one("new conns per s", "2 instances"),
        ),
        (
            "rr 1 B p50, 2 instances / 1",
            Want::AtMost(1.05),
            over_one("rr 1 B p50 us", "2 instances"),
        ),
        (
            "new conns per s, 2 instances with 1 passing / 1",
            Want::AtLeast(0.95),
            over_one("new conns per s", "2 instances, 1 passing"),
        ),
        (
            "rr 1 B p50, 2 instances with 1 passing / 1",
            Want::AtMost(1.05),
            over_one("rr 1 B p50 us", "2 instances, 1 passing"),
        ),
    ];
    let mut out = "| target | wanted | this run | met |\n|---|---|---|---|\n".to_owned();
    for (name, wanted, got) in rows {
        let Some(got) = got else { continue };
        let _ = writeln!(
            out,
            "| {name} | {wanted} | {got:.2} | {} |",
            if wanted.met(got) { "yes" } else { "no" }
        );
    }
    out
}

/// The samples of `metric` in each of `columns`, as JSON.
fn by_column(
    samples: &BTreeMap<(String, &str), Vec<f64>>,
    metric: &str,
    columns: &[&str],
) -> Value {
    json!(
        columns
            .iter()
            .map(|c| (
                c.to_string(),
                samples
                    .get(&(metric.to_owned(), *c))
                    .cloned()
                    .unwrap_or_default()
            ))
            .collect::<BTreeMap<_, _>>()
    )
}

/// A part of the report: its title, what it measures (for the file), its
/// table.
struct Section {
    title: String,
    prose: String,
    table: String,
}

/// Prints the tables and the targets, writes the JSON, and from a full
/// run the whole report to docs/benchmarks.md.
fn report(all: &Samples, runs: usize, opts: &Options) -> anyhow::Result<()> {
    let (sections, json) = sections(all, runs);
    let mut out = format!("Medians of {runs} run(s), (min-max); one machine.\n");
    for s in &sections {
        let _ = write!(out, "\n## {}\n\n{}", s.title, s.table);
    }
    println!("{out}");
    let dir = cmd::workspace_root().join("target/bench");
    fs::create_dir_all(&dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let path: &Path = &dir.join(format!("bench-{stamp}.json"));
    fs::write(path, serde_json::to_string_pretty(&Value::Object(json))?)?;
    eprintln!("bench: results in {}", path.display());
    if opts.writes() {
        let doc = cmd::workspace_root().join("docs/benchmarks.md");
        fs::write(&doc, document(&sections, runs)?)
            .with_context(|| format!("failed to write {}", doc.display()))?;
        eprintln!("bench: report in {}", doc.display());
    }
    Ok(())
}

/// The report's sections, and every sample as JSON.
fn sections(all: &Samples, runs: usize) -> (Vec<Section>, serde_json::Map<String, Value>) {
    let Samples {
        modes: samples,
        floods: flood_samples,
        instances: instance_samples,
        spread,
        extra,
        bpf,
        units,
        stunnel_configs,
        stunnel_handshakes,
    } = all;
    let fmt = |s: Option<(f64, f64, f64)>| match s {
        Some((med, lo, hi)) if runs > 1 => format!("{med:.1} ({lo:.1}-{hi:.1})"),
        Some((med, _, _)) => format!("{med:.1}"),
        None => "-".to_owned(),
    };
    let ratio = |a: Option<(f64, f64, f64)>, b: Option<(f64, f64, f64)>| match (a, b) {
        (Some((a, _, _)), Some((b, _, _))) if b != 0.0 => format!("{:.2}", a / b),
        _ => "-".to_owned(),
    };
    let metrics_of = |samples: &BTreeMap<(String, &str), Vec<f64>>| {
        let mut m: Vec<String> = samples.keys().map(|(k, _)| k.clone()).collect();
        m.dedup();
        m
    };
    let cell = |metric: &str, mode: &str| samples.get(&(metric.to_owned(), mode)).map(|v| stats(v));
    let flooded = |metric: &str, flood: &str| {
        flood_samples
            .get(&(metric.to_owned(), flood))
            .map(|v| stats(v))
    };
    let instanced = |metric: &str, column: &str| {
        instance_samples
            .get(&(metric.to_owned(), column))
            .map(|v| stats(v))
    };
    let mut sections = Vec::new();
    let mut json = serde_json::Map::new();

    if !samples.is_empty() {
        let mut table = format!(
            "| metric | {} | mesh/direct | mesh/relay | mesh/stunnel | mesh/stunnel resumed | mesh/mesh/1 |\n|---|{}---|---|---|---|---|\n",
            MODES.join(" | "),
            "---|".repeat(MODES.len())
        );
        for metric in metrics_of(samples) {
            let [d, r, s, sr, m1, m] = MODES.map(|mode| cell(&metric, mode));
            let _ = writeln!(
                table,
                "| {metric} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                fmt(d),
                fmt(r),
                fmt(s),
                fmt(sr),
                fmt(m1),
                fmt(m),
                ratio(m, d),
                ratio(m, r),
                ratio(m, s),
                ratio(m, sr),
                ratio(m, m1)
            );
            json.insert(metric.clone(), by_column(samples, &metric, &MODES));
        }
        sections.push(Section {
            title: "The mesh against direct TCP, a plain relay and stunnel".to_owned(),
            prose: modes_prose(stunnel_handshakes),
            table,
        });
    }
    if !stunnel_configs.is_empty() {
        let checked: Vec<String> = stunnel_handshakes
            .iter()
            .map(|(mode, full, resumed)| format!("{mode}: {full} full, {resumed} resumed"))
            .collect();
        let mut table = format!(
            "Handshakes of the check ({STUNNEL_CHECK_CONNS} connections each): {}.\n\n",
            checked.join("; ")
        );
        for (title, text) in stunnel_configs {
            let _ = write!(table, "{title}:\n\n```ini\n{text}```\n\n");
        }
        sections.push(Section {
            title: "stunnel's configs".to_owned(),
            prose: "Exactly as run; the handshake check ran the same configs with `debug = info` added. The two modes differ only in `sessionResume`.".to_owned(),
            table: table.trim_end().to_owned() + "\n",
        });
        json.insert(
            "stunnel handshakes (check)".to_owned(),
            json!(
                stunnel_handshakes
                    .iter()
                    .map(|(mode, full, resumed)| (*mode, json!({"full": full, "resumed": resumed})))
                    .collect::<BTreeMap<_, _>>()
            ),
        );
    }
    if bpf.measured {
        let mut table =
            "| program | agent of | calls | ns per call | calls per app connection |\n|---|---|---|---|---|\n"
                .to_owned();
        let mut section = serde_json::Map::new();
        for ((program, node), (ns, calls)) in BPF_PROGRAMS.iter().zip(bpf.totals) {
            let per_call = bpf.ns_per_call(program);
            let _ = writeln!(
                table,
                "| {program} | {node} | {calls:.0} | {} | {:.2} |",
                per_call.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")),
                calls / bpf.app_conns.max(1) as f64
            );
            section.insert(
                (*program).to_owned(),
                json!({"node": node, "calls": calls, "run_time_ns": ns, "ns_per_call": per_call}),
            );
        }
        section.insert("app connections".to_owned(), json!(bpf.app_conns));
        json.insert("ebpf".to_owned(), Value::Object(section));
        sections.push(Section {
            title: "eBPF programs".to_owned(),
            prose: format!(
                "Run time per call (`kernel.bpf_stats_enabled`) of the copies of the programs that act: \
                 bench-a's (the caller's agent) for connect4/6, sock_ops and bind4/6, bench-b's (the \
                 destination's) for sk_lookup, each read through its pinned link \
                 (`<bpffs>/mesh/<node>/link_<program>`), as deltas over the `mesh` column's runs of bulk, \
                 rr and connrate ({} app connections in all). Every agent attaches its connect, sock_ops and \
                 bind programs to the cgroup root, so each copy runs for every socket on the machine and \
                 acts only for its own node's network namespace: bench-a's copy also counts the other \
                 nodes' calls, which end at that check (here mostly bench-b's agent connecting to the \
                 service). On a real node there is one copy, and every call is its node's. sk_lookup runs \
                 for every connection into bench-b's namespace, the destination agent's loopback \
                 connections to the service included (passed on at once); the pooled `mesh/2` connection \
                 makes few connections to steer. A program that did not run in the window shows 0 calls.",
                bpf.app_conns
            ),
            table,
        });
    }
    if !extra.is_empty() {
        let mut table = "| mesh only | value |\n|---|---|\n".to_owned();
        for (k, v) in extra {
            let _ = writeln!(table, "| {k} | {v:.1} |");
            json.insert(k.clone(), json!(v));
        }
        sections.push(Section {
            title: "Memory".to_owned(),
            prose: format!(
                "agents RSS idle: the resident memory of bench-a's and bench-b's agents after all \
                 runs (heap kept from them included). KiB per idle proxied conn: the two agents' RSS \
                 growth per connection while `meshbench idle` holds that many open through the mesh, \
                 read one second after they opened; after {IDLE_HOLD_SECS} s meshbench checks that every \
                 one still echoes (one that does not fails the run). 10,000 would need over 20,000 \
                 descriptors in one agent (two sockets per proxied connection)."
            ),
            table,
        });
    }
    if !flood_samples.is_empty() {
        let mut table = format!(
            "| mesh under flood ({FLOOD_CONNS} connections held without a handshake) | {} | node/quiet | stranger/quiet | control/quiet |\n|---|{}---|---|---|\n",
            FLOODS.join(" | "),
            "---|".repeat(FLOODS.len())
        );
        let mut under = serde_json::Map::new();
        for metric in metrics_of(flood_samples) {
            let [q, n, x, c] = FLOODS.map(|flood| flooded(&metric, flood));
            let _ = writeln!(
                table,
                "| {metric} | {} | {} | {} | {} | {} | {} | {} |",
                fmt(q),
                fmt(n),
                fmt(x),
                fmt(c),
                ratio(n, q),
                ratio(x, q),
                ratio(c, q)
            );
            under.insert(metric.clone(), by_column(flood_samples, &metric, &FLOODS));
        }
        json.insert("under flood".to_owned(), Value::Object(under));
        sections.push(Section {
            title: "Under a handshake flood".to_owned(),
            prose: format!(
                "The mesh's connection rate ({CONNS} one after another) and rr p50 (1 B) while a flood \
                 client keeps {FLOOD_CONNS} connections to the service port open without a handshake, \
                 reconnecting whatever is closed: from a mesh node (`bench-c`, let through by the kernel, \
                 rationed by the agent), from a stranger (`bench-x`, reset by sk_lookup), and, as a \
                 control, the stranger's flood at a port of bench-b that is no service (the kernel resets \
                 it; no mesh program or agent is involved). The flood client runs at nice 19 but shares \
                 the CPUs with the agents, the client and the server: the control shows what the flood \
                 itself costs them, the mesh's share is node or stranger against control."
            ),
            table,
        });
    }
    if !instance_samples.is_empty() {
        let mut table = "| mesh to a service with | 1 instance | 2 instances | 2 instances, 1 passing | 2/1 | 2 with 1 passing/1 |\n|---|---|---|---|---|---|\n".to_owned();
        let columns = INSTANCES.map(|(column, _)| column);
        let mut section = serde_json::Map::new();
        for metric in metrics_of(instance_samples) {
            let [one, two, control] = columns.map(|column| instanced(&metric, column));
            let _ = writeln!(
                table,
                "| {metric} | {} | {} | {} | {} | {} |",
                fmt(one),
                fmt(two),
                fmt(control),
                ratio(two, one),
                ratio(control, one)
            );
            section.insert(
                metric.clone(),
                by_column(instance_samples, &metric, &columns),
            );
        }
        let spread_text: Vec<String> = spread.iter().map(|(k, v)| format!("{v:.0} {k}")).collect();
        let _ = write!(
            table,
            "\n2 instances, as bench-a's agent picked them (all runs): {}.\n",
            spread_text.join(", ")
        );
        section.insert(
            "spread".to_owned(),
            json!(spread.iter().cloned().collect::<BTreeMap<_, _>>()),
        );
        json.insert("instances".to_owned(), Value::Object(section));
        sections.push(Section {
            title: "Two instances vs one".to_owned(),
            prose: format!(
                "The mesh's connection rate ({CONNS} one after another) and rr p50 (1 B, {RR_COUNT} round \
                 trips over one connection) from bench-a to `server` (one instance, on bench-b), to \
                 `server2` (two instances, on bench-b and bench-c, the default `least_request`) and, as a \
                 control, to `server3` (two instances, of which only bench-b's passes: its ttl check on \
                 bench-c is never reported), all in each run, the order swapped every other run. The \
                 control takes the same pick, health and failover path as two instances but sends every \
                 connection to bench-b, like one instance: it shows what the multi-instance code costs, \
                 apart from what spreading the load over two nodes' agents and servers costs on shared \
                 CPUs. \"handshakes resumed %\" counts bench-a's outbound handshakes that resumed a TLS \
                 session (a ticket resumes only at the agent that issued it; the caller keeps them per \
                 service and destination node)."
            ),
            table,
        });
    }
    if !units.is_empty() {
        let table = format!(
            "| unit cost | value | unit |\n|---|---|---|\n{}\n",
            units.join("\n")
        );
        json.insert("units".to_owned(), json!(units));
        sections.push(Section {
            title: "Unit costs".to_owned(),
            prose: "`cargo bench -p mesh-agent --bench units` (release; `--only pick`, `--only tunnel`; no \
                    namespaces, no root): picking an instance among 1,000 (`proxy::balance`, each policy, \
                    every instance passing, the mean of 100,000 picks), and a `mesh/2` stream (open, 1 byte \
                    each way, close; `proxy::tunnel` over one loopback TCP connection, no TLS, both ends on \
                    one thread; p50 and p99 of 1,000 streams). Each figure is the median of 5 measurements."
                .to_owned(),
            table,
        });
    }
    let targets = targets(
        &|metric, mode| cell(metric, mode).map(|(m, _, _)| m),
        &|metric, flood| flooded(metric, flood).map(|(m, _, _)| m),
        &|metric, column| instanced(metric, column).map(|(m, _, _)| m),
        extra,
        bpf,
    );
    if targets.lines().count() > 2 {
        sections.push(Section {
            title: "Targets".to_owned(),
            prose: "The issues' targets against this run's medians; rr as latency added over direct: \
                    (mesh - direct) / (stunnel - direct). The connection-rate targets are shown against \
                    both stunnel modes. A target whose figures this run did not measure is left out."
                .to_owned(),
            table: targets,
        });
    }
    (sections, json)
}

/// What the main table's modes are, and which handshakes each makes.
fn modes_prose(stunnel_handshakes: &[(&str, usize, usize)]) -> String {
    let checked: Vec<String> = stunnel_handshakes
        .iter()
        .map(|(mode, full, resumed)| format!("{mode}: {full} full, {resumed} resumed"))
        .collect();
    format!(
        "Clients run on bench-a (mesh/1: bench-d) against `meshbench serve` on bench-b. \
         **direct**: plaintext TCP between the nodes (the limit). **relay**: the mesh's hops \
         without TLS, app -> socat -> socat -> server (plain TCP, 256 KiB buffers): what any pair of \
         userspace proxies costs. **stunnel**: stunnel4 on both ends, TLS 1.3, client certificates, \
         ECDSA P-256, the agents' suite {STUNNEL_SUITE}, `sessionResume = no`: a full handshake per \
         connection (both ends sign and verify a certificate; x25519). **stunnel resumed**: the same \
         with `sessionResume = yes`, stunnel's default: its client keeps the last session per \
         destination and resumes it with the server's TLS 1.3 ticket, so every connection but the \
         first skips the certificates (PSK with x25519), as a careful user runs it; measured for new \
         connections only (resumption changes nothing after a connection's start). Checked before \
         the runs, {STUNNEL_CHECK_CONNS} connections each, counted in the server's log at level info: \
         {}. **mesh/1**: the mesh without multiplexing, from bench-d whose agent runs `--no-multiplex`: \
         one TCP and TLS connection per app connection (ALPN `mesh/1`), resumed (\"caller agent \
         handshakes resumed %\"). **mesh**: app -> agent -> mTLS -> agent -> service as it runs by \
         default, HTTP/2 streams on one pooled `mesh/2` connection (\"caller agent handshakes per new \
         conn\" near 0).\n\n\
         bulk is one stream for {BULK_SECS} s; rr is request/response over one connection (p50 and \
         p99 of {RR_COUNT} round trips, each echo checked); new conns is connect + one round trip + \
         close, {CONNS} one after another and {} with {PARALLEL} clients at a time. Any failed \
         connection or wrong echo fails the run. proxy CPU is the user + system time of both proxies \
         of a mode (from /proc, reaped children included) per GB of bulk, and its system part alone. \
         stunnel is tuned as the agents are: it logs to its own output only (with no syslog daemon it \
         writes each connection to /dev/console, which alone cut its connection rate 4x), no libwrap, \
         TCP_NODELAY. A part's figures drift with what ran seconds before it, so the benchmark runs \
         part by part (bulk, rr, connrate), each part's modes back to back. The machine is small and \
         may be shared: compare ratios within one run.",
        checked.join("; "),
        2 * CONNS
    )
}

/// The whole report: where and how it was made, then each section.
fn document(sections: &[Section], runs: usize) -> anyhow::Result<String> {
    let mut doc = format!(
        "# Benchmarks\n\n\
         Written by `cargo xtask bench` (a full run: no `--only`, no `--smoke`); run it again \
         rather than edit this file. The catalog in etcd at scale is in \
         [catalog-scale.md](catalog-scale.md) (`cargo xtask bench --catalog`). Earlier hand-written \
         analyses (how the relay and multiplexing were tuned, and what did not help) are in this \
         file's history: `git log -p docs/benchmarks.md`.\n\n{}\n\
         It holds `/dev/cpu_dma_latency` at 0 while it runs (idle virtual CPUs otherwise inflate \
         latency) and turns on `kernel.bpf_stats_enabled` to time the eBPF programs. Nodes are \
         network namespaces on one bridge, each mesh node with its agent. JSON of every sample goes \
         to `target/bench/`.\n",
        provenance(
            runs,
            "each figure is the median of the runs, with (min-max) when there are several"
        )?
    );
    for s in sections {
        let _ = write!(doc, "\n## {}\n\n{}\n\n{}", s.title, s.prose, s.table);
    }
    Ok(doc)
}

/// The reports the benches write: not counted as changes that make the
/// tree dirty (each run rewrites one).
const REPORTS: [&str; 2] = ["docs/benchmarks.md", "docs/catalog-scale.md"];

/// Where and how a report was made: date (UTC), commit (`-dirty` if the
/// tree has changes other than [`REPORTS`]), machine, runs and what each
/// figure is (`figures`), command line; Markdown list items.
pub fn provenance(runs: usize, figures: &str) -> anyhow::Result<String> {
    let root = cmd::workspace_root();
    let stdout = |cmd: &mut Command| -> anyhow::Result<String> {
        let out = cmd
            .output()
            .with_context(|| format!("failed to run {cmd:?}"))?;
        ensure!(out.status.success(), "{cmd:?} failed ({})", out.status);
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let date = stdout(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?;
    let commit =
        stdout(
            Command::new("git")
                .current_dir(root)
                .args(["rev-parse", "--short", "HEAD"]),
        )?;
    let dirty = !stdout(
        Command::new("git")
            .current_dir(root)
            .args(["status", "--porcelain", "--", "."])
            .args(REPORTS.map(|r| format!(":!{r}"))),
    )?
    .is_empty();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").context("failed to read /proc/cpuinfo")?;
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("failed to read the kernel release")?;
    let mem_kib: f64 = fs::read_to_string("/proc/meminfo")
        .context("failed to read /proc/meminfo")?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("/proc/meminfo has no MemTotal")?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=,:".contains(c))
            {
                a
            } else {
                format!("'{a}'")
            }
        })
        .collect();
    Ok(format!(
        "- Date: {date}\n\
         - Commit: {commit}{}\n\
         - Machine: {cpus} CPUs ({model}), kernel {}, {:.1} GiB memory\n\
         - Runs: {runs}; {figures}\n\
         - Command: `cargo xtask {}`\n",
        if dirty {
            "-dirty (uncommitted changes in the tree)"
        } else {
            ""
        },
        kernel.trim(),
        mem_kib / (1024.0 * 1024.0),
        args.join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made-up samples of every part.
    fn samples() -> Samples<'static> {
        let three = vec![100.0, 120.0, 110.0];
        let mut modes = BTreeMap::new();
        for mode in MODES {
            modes.insert(("new conns per s".to_owned(), mode), three.clone());
        }
        let floods = FLOODS
            .iter()
            .map(|f| (("rr 1 B p50 us".to_owned(), *f), three.clone()))
            .collect();
        let instances = INSTANCES
            .iter()
            .map(|(c, _)| (("new conns per s".to_owned(), *c), three.clone()))
            .collect();
        let mut bpf = BpfWindow::default();
        let mut after = [(0.0, 0.0); BPF_PROGRAMS.len()];
        after[0] = (3000.0, 10.0);
        bpf.add(&[(0.0, 0.0); BPF_PROGRAMS.len()], &after, 5);
        Samples {
            modes,
            floods,
            instances,
            spread: vec![("connections to bench-b".to_owned(), 3.0)],
            extra: [("agents RSS idle MiB".to_owned(), 20.0)].into(),
            bpf,
            units: vec!["| pick among 1000 instances, lb random | 40.0 | ns per pick |".to_owned()],
            stunnel_configs: vec![("stunnel, client (bench-a)".to_owned(), "[cli]\n".to_owned())],
            stunnel_handshakes: vec![("stunnel", 4, 0), ("stunnel resumed", 1, 3)],
        }
    }

    #[test]
    fn report_names_how_it_was_made_and_explains_every_table() {
        let (sections, json) = sections(&samples(), 3);
        let doc = document(&sections, 3).unwrap();
        for item in [
            "- Date: ",
            "- Commit: ",
            "- Machine: ",
            "- Runs: 3",
            "- Command: `cargo xtask ",
        ] {
            assert!(doc.contains(item), "no {item:?} in:\n{doc}");
        }
        let titles: Vec<&str> = sections.iter().map(|s| s.title.as_str()).collect();
        assert_eq!(
            titles,
            [
                "The mesh against direct TCP, a plain relay and stunnel",
                "stunnel's configs",
                "eBPF programs",
                "Memory",
                "Under a handshake flood",
                "Two instances vs one",
                "Unit costs",
                "Targets",
            ]
        );
        for s in &sections {
            assert!(!s.prose.is_empty() && !s.table.is_empty(), "{}", s.title);
            assert!(
                doc.contains(&s.prose) && doc.contains(&s.table),
                "{}",
                s.title
            );
        }
        // Medians with min-max; a program that did not run says 0 calls.
        assert!(doc.contains("| new conns per s | 110.0 (100.0-120.0) |"));
        assert!(doc.contains("| mesh_connect4 | bench-a | 10 | 300.0 | 2.00 |"));
        assert!(doc.contains("| mesh_connect6 | bench-a | 0 | - | 0.00 |"));
        assert!(doc.contains("stunnel: 4 full, 0 resumed; stunnel resumed: 1 full, 3 resumed"));
        assert_eq!(json["ebpf"]["mesh_connect6"]["ns_per_call"], Value::Null);
    }

    /// Made-up figures for every metric each part measures, each mode,
    /// flood and column with its own values; one cell left out.
    fn full_samples() -> Samples<'static> {
        let parallel = format!("new conns per s ({PARALLEL} at a time)");
        let mode_metrics = [
            ("bulk", "bulk Gbit/s"),
            ("bulk", "proxy CPU s per GB (both ends)"),
            ("bulk", "proxy system CPU s per GB (both ends)"),
            ("rr", "rr 1 B p50 us"),
            ("rr", "rr 1 B p99 us"),
            ("rr", "rr 1024 B p50 us"),
            ("rr", "rr 1024 B p99 us"),
            ("connrate", "new conns per s"),
            ("connrate", "new conn p50 us"),
            ("connrate", "new conn p99 us"),
            ("connrate", "caller agent handshakes per new conn"),
            ("connrate", "caller agent handshakes resumed %"),
            ("connrate", parallel.as_str()),
        ];
        let runs = |base: f64| vec![base * 1.1, base * 0.9, base, base * 1.25];
        let mut modes = BTreeMap::new();
        for (i, (part, metric)) in mode_metrics.iter().enumerate() {
            for (j, mode) in MODES.into_iter().enumerate() {
                let skip = (metric.starts_with("proxy") && mode == "direct")
                    || (metric.starts_with("caller") && !mode.starts_with("mesh"))
                    || (*metric == "rr 1 B p99 us" && mode == "mesh/1");
                if measures(part, mode) && !skip {
                    let base = (i as f64 + 1.0) * 13.7 + j as f64 * 4.3;
                    modes.insert(((*metric).to_owned(), mode), runs(base));
                }
            }
        }
        let mut floods = BTreeMap::new();
        for (j, flood) in FLOODS.into_iter().enumerate() {
            floods.insert(("rr 1 B p50 us".to_owned(), flood), runs(60.0 + j as f64));
            floods.insert(
                ("new conns per s".to_owned(), flood),
                runs(900.0 - 20.0 * j as f64),
            );
        }
        let mut instances = BTreeMap::new();
        for (j, (column, _)) in INSTANCES.into_iter().enumerate() {
            instances.insert(
                ("new conns per s".to_owned(), column),
                runs(950.0 - 7.0 * j as f64),
            );
            instances.insert(
                ("rr 1 B p50 us".to_owned(), column),
                runs(55.0 + 1.5 * j as f64),
            );
            instances.insert(
                ("handshakes resumed %".to_owned(), column),
                runs(90.0 + j as f64),
            );
        }
        let mut bpf = BpfWindow::default();
        let mut after = [(0.0, 0.0); BPF_PROGRAMS.len()];
        for (i, slot) in after.iter_mut().enumerate().skip(1) {
            *slot = (1234.5 * i as f64, 7.0 * i as f64);
        }
        bpf.add(&[(0.0, 0.0); BPF_PROGRAMS.len()], &after, 4003);
        Samples {
            modes,
            floods,
            instances,
            spread: vec![
                ("connections to bench-b".to_owned(), 2001.0),
                ("connections to bench-c".to_owned(), 1999.0),
            ],
            extra: [
                ("agents RSS idle MiB".to_owned(), 21.25),
                (
                    "KiB per idle proxied conn (1000 open, both agents)".to_owned(),
                    9.5,
                ),
                (
                    "KiB per idle proxied conn (5000 open, both agents)".to_owned(),
                    8.75,
                ),
            ]
            .into(),
            bpf,
            units: vec![
                "| pick among 1000 instances, lb random | 40.0 | ns per pick |".to_owned(),
                "| mesh/2 stream p50 | 12.5 | us |".to_owned(),
            ],
            stunnel_configs: vec![
                (
                    "stunnel, client (bench-a)".to_owned(),
                    "[cli]\nclient = yes\n".to_owned(),
                ),
                ("stunnel, server (bench-b)".to_owned(), "[srv]\n".to_owned()),
            ],
            stunnel_handshakes: vec![("stunnel", 4, 0), ("stunnel resumed", 1, 3)],
        }
    }

    /// The report's sections as [`document`] writes them, and the JSON.
    fn rendered(all: &Samples, runs: usize) -> String {
        let (sections, json) = sections(all, runs);
        let mut out = format!("# runs: {runs}\n");
        for s in &sections {
            let _ = write!(out, "\n## {}\n\n{}\n\n{}", s.title, s.prose, s.table);
        }
        out + &serde_json::to_string_pretty(&Value::Object(json)).unwrap() + "\n"
    }

    /// The report from fixed samples, byte for byte as recorded in
    /// `xtask/testdata/bench-report.txt` (`XTASK_BLESS=1` rewrites it).
    #[test]
    fn report_text_is_unchanged() {
        let got = rendered(&full_samples(), 3) + &rendered(&full_samples(), 1);
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/bench-report.txt");
        if std::env::var_os("XTASK_BLESS").is_some() {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &got).unwrap();
        }
        let want = fs::read_to_string(&path).unwrap();
        assert!(got == want, "the report differs from {}", path.display());
    }

    #[test]
    fn only_a_full_run_writes_the_report() {
        let opts = |smoke, only: &[&str]| Options {
            runs: 3,
            smoke,
            only: only.iter().map(|p| (*p).to_owned()).collect(),
        };
        assert!(opts(false, &[]).writes());
        assert!(!opts(true, &[]).writes());
        assert!(!opts(false, &["rr"]).writes());
    }
}
