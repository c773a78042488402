//! `cargo xtask bench`: the mesh against direct TCP, stunnel and itself
//! without multiplexing, measured in one run on this machine, part by
//! part with the modes back to back within each part.
//!
//! Nodes are network namespaces on a bridge. On node B, three copies of
//! `meshbench serve`: one on B's address (direct), one behind a stunnel
//! server (TLS 1.3, client certificates, ECDSA P-256), one as mesh service
//! `server` on 127.0.0.1. On node A, `meshbench` clients dial B directly,
//! a stunnel client on 127.0.0.1, or the service's VIP as mesh service
//! `client`. A fourth copy sits behind two socat relays (the same hops as
//! the mesh, without TLS): the cost of the hops alone.
//!
//! mesh/1: on a fourth node `bench-d`, whose agent runs `--no-multiplex`,
//! clients dial the same `server` VIP as mesh service `client1`: one TCP
//! and TLS connection per app connection (ALPN `mesh/1`, which bench-b's
//! agent still accepts), where bench-a's agent opens HTTP/2 streams on one
//! pooled `mesh/2` connection. The two columns are the agent before and
//! after multiplexing. Each figure is the median of `--runs` runs, with
//! min and max.
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
//! Results: a markdown table on stdout and JSON in target/bench/.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
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
}

/// Parts that are unit-level benches in `mesh-agent` (no namespaces, no
/// root): with only these, nothing else is set up.
const UNIT_PARTS: [&str; 2] = ["pick", "tunnel"];
const VIP: &str = "240.0.0.99";
/// The VIP of `server2`, the service with two instances (bench-b, bench-c).
const VIP2: &str = "240.0.0.98";
/// `relay` is the mesh's path without TLS: two socat processes (plain
/// TCP, 256 KiB buffers, TCP_NODELAY), the floor for any pair of userspace
/// proxies. It forks per connection, so it skips the connection-rate runs.
/// `mesh/1` is the mesh without multiplexing (from bench-d, see the module
/// doc), `mesh` the mesh as it runs by default (from bench-a).
const MODES: [&str; 5] = ["direct", "relay", "stunnel", "mesh/1", "mesh"];
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

/// Runs the benchmark.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    if !opts.smoke {
        if opts.wants("pick") {
            unit_bench(
                "pick_among_a_thousand_costs",
                "pick among 1,000 instances",
                "ns per pick",
                "pick",
            )?;
        }
        if opts.wants("tunnel") {
            unit_bench(
                "stream_open_costs",
                "a mesh/2 stream: open, 1 byte each way, close",
                "per stream",
                "tunnel",
            )?;
        }
        if !opts.only.is_empty() && opts.only.iter().all(|p| UNIT_PARTS.contains(&p.as_str())) {
            return Ok(());
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
    let _stats = BpfStats::enable();

    let bench = Bench::start(agent, meshbench, opts.smoke)?;
    let (secs, rr_count, conns, idle) = if opts.smoke {
        (1, 200, 100, vec![100])
    } else {
        // 10,000 would need over 20,000 descriptors in one agent (two
        // sockets per proxied connection), the hard limit on these machines.
        (5, 2000, 1000, vec![1000, 5000])
    };
    let runs = if opts.smoke { 1 } else { opts.runs.max(1) };
    let mut samples: BTreeMap<(String, &str), Vec<f64>> = BTreeMap::new();
    let mut flood_samples: BTreeMap<(String, &str), Vec<f64>> = BTreeMap::new();
    let mut instance_samples: BTreeMap<(String, &str), Vec<f64>> = BTreeMap::new();
    for run in 0..runs {
        // Part by part, the modes back to back within each: every mode of a
        // part meets the same conditions (a part's figures drift with what
        // ran a few seconds before: see docs/benchmarks.md).
        let parts = ["bulk", "rr", "connrate"];
        for (part, mode) in parts
            .into_iter()
            .filter(|p| opts.wants(p))
            .flat_map(|part| MODES.into_iter().map(move |mode| (part, mode)))
        {
            if part == "connrate" && mode == "relay" {
                // socat forks per connection.
                continue;
            }
            eprintln!("bench: run {}/{runs}: {part}, {mode}", run + 1);
            let mut put = |metric: &str, v: f64| {
                samples
                    .entry((metric.to_owned(), mode))
                    .or_default()
                    .push(v);
            };
            if part == "bulk" {
                let cpu_before = bench.cpu_seconds(mode);
                let bulk = bench.client(mode, &["bulk", "--secs", &secs.to_string()])?;
                let cpu_after = bench.cpu_seconds(mode);
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
                    let made = (after.0 - before.0) + (after.1 - before.1);
                    put("caller agent handshakes per new conn", made / conns as f64);
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
                put(
                    &format!("new conns per s ({PARALLEL} at a time)"),
                    field(&cr, "per_s")?,
                );
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
        bench.agents_rss_kib() / 1024.0,
    );
    for n in idle.into_iter().filter(|_| opts.wants("idle")) {
        let per_conn = bench.idle_kib_per_conn(n)?;
        extra.insert(
            format!("KiB per idle proxied conn ({n} open, both agents)"),
            per_conn,
        );
    }
    for (prog, ns) in BpfStats::per_call_ns() {
        extra.insert(format!("{prog} ns per call"), ns);
    }
    report(
        &Samples {
            modes: samples,
            floods: flood_samples,
            instances: instance_samples,
            spread,
            extra,
        },
        runs,
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
    /// Single figures (memory, eBPF program costs).
    extra: BTreeMap<String, f64>,
}

/// The benchmark's mesh and its processes.
/// The cipher suite the agents negotiate (rustls prefers it on x86 with
/// AES-NI); stunnel's default would be TLS_AES_256_GCM_SHA384.
const STUNNEL_SUITE: &str = "ciphersuites = TLS_AES_128_GCM_SHA256\n";

/// The number `name` of meshbench's JSON answer: a field that is missing
/// or not a number is an error, never a 0.
fn field(answer: &Value, name: &str) -> anyhow::Result<f64> {
    answer[name]
        .as_f64()
        .with_context(|| format!("meshbench's answer has no number {name:?}: {answer}"))
}

struct Bench {
    mesh: Mesh,
    meshbench: PathBuf,
    /// Connection errors a connrate run may have: none, but in a smoke
    /// run (a tenth).
    smoke: bool,
    /// Pids of the stunnel client (node a) and server (node b).
    stunnel: [u32; 2],
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
        // the agents' cipher suite ([`STUNNEL_SUITE`]). Tuned as the agents are: logs to its file only (with no syslog
        // daemon it writes every connection to /dev/console, ~2.5 ms), no
        // libwrap lookups, TCP_NODELAY on both sockets.
        let dir = mesh.dir.join("stunnel");
        fs::create_dir_all(&dir)?;
        let root = pki::Ca::new_root("bench.local");
        root.save(&dir.join("ca"));
        let a = pki::write_leaf(
            &dir,
            "a",
            &root,
            &pki::Leaf::valid_now("spiffe://bench.local/svc/a"),
        );
        let bl = pki::write_leaf(
            &dir,
            "b",
            &root,
            &pki::Leaf::valid_now("spiffe://bench.local/svc/b"),
        );
        let conf = |name: &str, body: String| -> anyhow::Result<PathBuf> {
            let path = dir.join(format!("{name}.conf"));
            fs::write(
                &path,
                format!(
                    "foreground = yes\nsyslog = no\npid =\nsslVersionMin = TLSv1.3\n\
                     verifyChain = yes\nCAfile = {}\n{body}\nlibwrap = no\n\
                     socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n",
                    dir.join("ca.crt").display()
                ),
            )?;
            Ok(path)
        };
        let server = conf(
            "server",
            format!(
                "[srv]\naccept = {b}:7003\nconnect = 127.0.0.1:7002\ncert = {}\nkey = {}\nrequireCert = yes\n{STUNNEL_SUITE}",
                bl.cert.display(),
                bl.key.display()
            ),
        )?;
        let client = conf(
            "client",
            format!(
                "[cli]\nclient = yes\naccept = 127.0.0.1:7004\nconnect = {b}:7003\ncert = {}\nkey = {}\n{STUNNEL_SUITE}",
                a.cert.display(),
                a.key.display()
            ),
        )?;
        let mut c = mesh.cmd("bench-b", "stunnel4");
        c.arg(&server);
        let srv = mesh.spawn_app(c, "stunnel-server");
        let mut c = mesh.cmd("bench-a", "stunnel4");
        c.arg(&client);
        let cli = mesh.spawn_app(c, "stunnel-client");
        mesh.wait_listening("bench-b", 7003);
        mesh.wait_listening("bench-a", 7004);
        Ok(Self {
            mesh,
            meshbench,
            smoke,
            stunnel: [cli, srv],
            relay: [relay_a, relay_b],
        })
    }

    /// Runs `meshbench ARGS --to <target of mode>` on [`caller`]`(mode)`;
    /// its JSON line.
    fn client(&self, mode: &str, args: &[&str]) -> anyhow::Result<Value> {
        let b = self.mesh.node("bench-b").v4;
        let (target, service) = match mode {
            "direct" => (format!("{b}:7001"), None),
            "stunnel" => ("127.0.0.1:7004".to_owned(), None),
            "relay" => ("127.0.0.1:7007".to_owned(), None),
            "mesh/1" => (format!("{VIP}:5001"), Some("client1")),
            "mesh" => (format!("{VIP}:5001"), Some("client")),
            "mesh 2 instances" => (format!("{VIP2}:5002"), Some("client")),
            "mesh 2 instances 1 passing" => (format!("{VIP3}:5003"), Some("client")),
            _ => bail!("no client mode {mode:?}"),
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
    fn flood(&self, flood: &str) -> anyhow::Result<Option<Flood>> {
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
            .stdout(std::process::Stdio::null());
        let child = c.spawn().context("start the flood client")?;
        // Let it reach full strength.
        std::thread::sleep(Duration::from_millis(1500));
        Ok(Some(Flood(child)))
    }

    /// CPU seconds used so far by the processes that do `mode`'s proxying.
    /// (user, system) CPU seconds of the proxies of `mode`.
    fn cpu_seconds(&self, mode: &str) -> (f64, f64) {
        let pids: Vec<u32> = match mode {
            "stunnel" => self.stunnel.to_vec(),
            "relay" => self.relay.to_vec(),
            "mesh/1" | "mesh" => [caller(mode), "bench-b"]
                .iter()
                .filter_map(|n| self.mesh.agent_pid(n))
                .collect(),
            _ => Vec::new(),
        };
        pids.into_iter()
            .map(cpu_of)
            .fold((0.0, 0.0), |(u, s), (du, ds)| (u + du, s + ds))
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
            mesh_tests::metric_value(&text, &series).unwrap_or(0.0)
        };
        (count("full"), count("resumed"))
    }

    fn agents_rss_kib(&self) -> f64 {
        ["bench-a", "bench-b"]
            .iter()
            .filter_map(|n| self.mesh.agent_pid(n))
            .map(rss_kib)
            .sum()
    }

    /// Opens `n` idle connections through the mesh; KiB of agent RSS each.
    fn idle_kib_per_conn(&self, n: usize) -> anyhow::Result<f64> {
        let before = self.agents_rss_kib();
        let line = format!(
            "ulimit -n $(ulimit -Hn); exec {} idle --count {n} --hold-secs 60 --to {VIP}:5001",
            self.meshbench.display()
        );
        let mut c = self.mesh.cmd_as("bench-a", "client", "sh");
        c.args(["-c", &line]);
        let log = self.mesh.dir.join(format!("app-idle-{n}.log"));
        let pid = self.mesh.spawn_app(c, &format!("idle-{n}"));
        let open = mesh_tests::wait_until(Duration::from_secs(120), || {
            fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("\"open\"")
        });
        if !open {
            bail!(
                "{n} idle connections did not open: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
        let after = self.agents_rss_kib();
        let _ = Command::new("kill").arg(pid.to_string()).status();
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

/// A running flood client; killed when dropped.
struct Flood(std::process::Child);

impl Drop for Flood {
    fn drop(&mut self) {
        // `ip netns exec` and nice exec python: this is the flood client itself.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `test`, a unit-level bench in `mesh-agent` that prints its figures
/// (`proxy::balance`'s pick among 1,000 instances, `proxy::tunnel`'s stream
/// cost), built in release, and prints its lines containing `marker`
/// prefixed with `part`.
fn unit_bench(test: &str, what: &str, marker: &str, part: &str) -> anyhow::Result<()> {
    let mut cmd = cmd::cargo();
    cmd.args([
        "test",
        "--release",
        "-p",
        "mesh-agent",
        "--lib",
        test,
        "--",
        "--nocapture",
    ]);
    eprintln!("bench: {what} (release unit test)");
    let out = cmd
        .output()
        .with_context(|| format!("failed to run the {part} bench"))?;
    if !out.status.success() {
        bail!(
            "the {part} bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.contains(marker) {
            println!("{part}: {line}");
        }
    }
    Ok(())
}

/// utime + stime of `pid`, in seconds.
/// (user, system) CPU seconds of `pid` and its reaped children (socat
/// forks per connection).
fn cpu_of(pid: u32) -> (f64, f64) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces).
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here
    // (counting from state = 0), in clock ticks of 1/100 s.
    // cutime and cstime follow (children that were waited for).
    let at = |i: usize| f.get(i).copied().unwrap_or(0.0) / 100.0;
    (at(10) + at(12), at(11) + at(13))
}

fn rss_kib(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// `kernel.bpf_stats_enabled` on for the run, restored after.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> Self {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let old = fs::read_to_string(path).unwrap_or_else(|_| "0".into());
        let _ = fs::write(path, "1");
        Self(old.trim().to_owned())
    }

    /// Mean run time per call of each mesh program (all nodes together).
    fn per_call_ns() -> BTreeMap<String, f64> {
        let out = Command::new("bpftool")
            .args(["-j", "prog", "show"])
            .output();
        let progs: Value = out
            .ok()
            .and_then(|o| serde_json::from_slice(&o.stdout).ok())
            .unwrap_or(Value::Null);
        let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for p in progs.as_array().map(Vec::as_slice).unwrap_or_default() {
            let name = p["name"].as_str().unwrap_or("");
            if !name.starts_with("mesh_") {
                continue;
            }
            let e = sums.entry(name.to_owned()).or_default();
            // bpftool leaves both out of a program that never ran.
            e.0 += p["run_time_ns"].as_f64().unwrap_or(0.0);
            e.1 += p["run_cnt"].as_f64().unwrap_or(0.0);
        }
        sums.into_iter()
            .filter(|(_, (_, n))| *n > 0.0)
            .map(|(k, (t, n))| (k, t / n))
            .collect()
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
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
    let rows: [(&str, Want, Option<f64>); 25] = [
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
            ratio(
                &format!("new conns per s ({PARALLEL} at a time)"),
                "stunnel",
            ),
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
            ratio(&format!("new conns per s ({PARALLEL} at a time)"), "mesh/1"),
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
            "mesh_connect4 ns per call",
            Want::AtMost(1000.0),
            most("mesh_connect4"),
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
    let mut out = "\n| target | wanted | this run | met |\n|---|---|---|---|\n".to_owned();
    for (name, wanted, got) in rows {
        let Some(got) = got else { continue };
        out += &format!(
            "| {name} | {wanted} | {got:.2} | {} |\n",
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

/// Prints the tables and the targets, and writes the JSON.
fn report(all: &Samples, runs: usize) -> anyhow::Result<()> {
    let Samples {
        modes: samples,
        floods: flood_samples,
        instances: instance_samples,
        spread,
        extra,
    } = all;
    let metrics: Vec<&String> = {
        let mut m: Vec<&String> = samples.keys().map(|(k, _)| k).collect();
        m.dedup();
        m
    };
    let cell = |metric: &String, mode: &str| samples.get(&(metric.clone(), mode)).map(|v| stats(v));
    let fmt = |s: Option<(f64, f64, f64)>| match s {
        Some((med, lo, hi)) if runs > 1 => format!("{med:.1} ({lo:.1}-{hi:.1})"),
        Some((med, _, _)) => format!("{med:.1}"),
        None => "-".to_owned(),
    };
    let ratio = |a: Option<(f64, f64, f64)>, b: Option<(f64, f64, f64)>| match (a, b) {
        (Some((a, _, _)), Some((b, _, _))) if b != 0.0 => format!("{:.2}", a / b),
        _ => "-".to_owned(),
    };
    let mut out = format!(
        "Medians of {runs} run(s), (min-max); one machine, modes back to back per part.\n\n\
         | metric | direct | relay | stunnel | mesh/1 | mesh | mesh/direct | mesh/relay | mesh/stunnel | mesh/mesh/1 |\n\
         |---|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut json = serde_json::Map::new();
    for metric in metrics {
        let [d, r, s, m1, m] = MODES.map(|mode| cell(metric, mode));
        out += &format!(
            "| {metric} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            fmt(d),
            fmt(r),
            fmt(s),
            fmt(m1),
            fmt(m),
            ratio(m, d),
            ratio(m, r),
            ratio(m, s),
            ratio(m, m1)
        );
        json.insert(metric.clone(), by_column(samples, metric, &MODES));
    }
    out += "\n| mesh only | value |\n|---|---|\n";
    for (k, v) in extra {
        out += &format!("| {k} | {v:.1} |\n");
        json.insert(k.clone(), json!(v));
    }
    let flooded = |metric: &String, flood: &str| {
        flood_samples
            .get(&(metric.clone(), flood))
            .map(|v| stats(v))
    };
    if !flood_samples.is_empty() {
        out += &format!(
            "\n| mesh under flood ({FLOOD_CONNS} connections held without a handshake) | quiet | node flood | stranger flood | control | node/quiet | stranger/quiet | control/quiet |\n\
             |---|---|---|---|---|---|---|---|\n"
        );
        let mut metrics: Vec<&String> = flood_samples.keys().map(|(k, _)| k).collect();
        metrics.dedup();
        let mut under = serde_json::Map::new();
        for metric in metrics {
            let [q, n, x, c] = FLOODS.map(|flood| flooded(metric, flood));
            out += &format!(
                "| {metric} | {} | {} | {} | {} | {} | {} | {} |\n",
                fmt(q),
                fmt(n),
                fmt(x),
                fmt(c),
                ratio(n, q),
                ratio(x, q),
                ratio(c, q)
            );
            under.insert(metric.clone(), by_column(flood_samples, metric, &FLOODS));
        }
        json.insert("under flood".to_owned(), Value::Object(under));
    }
    let instanced = |metric: &String, column: &str| {
        instance_samples
            .get(&(metric.clone(), column))
            .map(|v| stats(v))
    };
    if !instance_samples.is_empty() {
        out += "\n| mesh to a service with | 1 instance | 2 instances | 2 instances, 1 passing | 2/1 | 2 with 1 passing/1 |\n|---|---|---|---|---|---|\n";
        let mut metrics: Vec<&String> = instance_samples.keys().map(|(k, _)| k).collect();
        metrics.dedup();
        let columns = INSTANCES.map(|(column, _)| column);
        let mut section = serde_json::Map::new();
        for metric in metrics {
            let [one, two, control] = columns.map(|column| instanced(metric, column));
            out += &format!(
                "| {metric} | {} | {} | {} | {} | {} |\n",
                fmt(one),
                fmt(two),
                fmt(control),
                ratio(two, one),
                ratio(control, one)
            );
            section.insert(
                metric.clone(),
                by_column(instance_samples, metric, &columns),
            );
        }
        let spread_text: Vec<String> = spread.iter().map(|(k, v)| format!("{v:.0} {k}")).collect();
        out += &format!(
            "\n2 instances, as bench-a's agent picked them (all runs): {}.\n",
            spread_text.join(", ")
        );
        section.insert(
            "spread".to_owned(),
            json!(spread.iter().cloned().collect::<BTreeMap<_, _>>()),
        );
        json.insert("instances".to_owned(), Value::Object(section));
    }
    out += &targets(
        &|metric, mode| cell(&metric.to_owned(), mode).map(|(m, _, _)| m),
        &|metric, flood| flooded(&metric.to_owned(), flood).map(|(m, _, _)| m),
        &|metric, column| instanced(&metric.to_owned(), column).map(|(m, _, _)| m),
        extra,
    );
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
    Ok(())
}
