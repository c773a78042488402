//! The catalog in etcd at scale, run by `cargo xtask bench --catalog`
//! (which sets up etcd and imports the catalog): how long an agent takes
//! to list and judge it, how much memory holding it costs, and how long a
//! change takes to reach many watching agents (here `EtcdCatalog`s in one
//! process, without the data path, as the agents of a fleet would run
//! them), timed from before the write is sent to each watcher's new
//! config. Each watcher also keeps its node's registration (node key and
//! its instances' health under a lease) and follows everyone's, as an
//! agent does.
//!
//! `cargo bench -p mesh-agent --bench catalog_scale -- --catalog
//! etcd://... [--etcd-cacert F --etcd-cert F --etcd-key F] [--watchers N]
//! [--changes N]`: prints the report as one line of JSON.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Parser;
use mesh_agent::{
    catalog::{
        Catalog, EtcdCatalog, EtcdOptions, EtcdTls, edits::intention_value, layout, registry,
    },
    config::{Action, Config},
    health::Board,
    snapshot::Snapshot,
};
use serde::Serialize;
use serde_json::Value;

/// The bench's arguments.
#[derive(Debug, Parser)]
struct Args {
    /// Catalogs watching in this process.
    #[arg(long, default_value_t = 50)]
    watchers: usize,
    /// Changes written to one intention.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// etcd://HOST:PORT[,HOST:PORT...][/PREFIX]
    #[arg(long)]
    catalog: String,
    #[arg(long, requires_all = ["etcd_cert", "etcd_key"])]
    etcd_cacert: Option<PathBuf>,
    #[arg(long, requires_all = ["etcd_cacert", "etcd_key"])]
    etcd_cert: Option<PathBuf>,
    #[arg(long, requires_all = ["etcd_cacert", "etcd_cert"])]
    etcd_key: Option<PathBuf>,
    /// Run as one agent of the bench, registered as this node (the
    /// bench starts its agents so).
    #[arg(long)]
    agent_node: Option<String>,
    /// etcd's processes, whose CPU time is reported.
    #[arg(long, value_delimiter = ',')]
    etcd_pids: Vec<u32>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<(), String> {
    // `cargo test --all-targets` runs bench targets too, with the test
    // harness's flags: without an etcd to measure there is nothing to do.
    if !std::env::args().any(|a| a == "--catalog" || a.starts_with("--catalog=")) {
        eprintln!(
            "catalog_scale: no --catalog given, nothing measured (cargo xtask bench --catalog runs it)"
        );
        return Ok(());
    }
    let args = Args::parse();
    // The catalogs' and registrations' warnings, filtered by `RUST_LOG`.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    // The agents get the bench's catalog and certificate flags.
    let mut passed = vec!["--catalog".to_owned(), args.catalog.clone()];
    for (flag, file) in [
        ("--etcd-cacert", &args.etcd_cacert),
        ("--etcd-cert", &args.etcd_cert),
        ("--etcd-key", &args.etcd_key),
    ] {
        if let Some(file) = file {
            passed.extend([flag.to_owned(), file.to_string_lossy().into_owned()]);
        }
    }
    let tls = match (args.etcd_cacert, args.etcd_cert, args.etcd_key) {
        (Some(ca), Some(cert), Some(key)) => Some(EtcdTls { ca, cert, key }),
        _ => None,
    };
    let options = EtcdOptions::parse(&args.catalog, tls).map_err(|e| e.to_string())?;
    if let Some(node) = &args.agent_node {
        return agent(&options, node);
    }
    let report = measure(
        &options,
        &passed,
        args.watchers,
        args.changes,
        &args.etcd_pids,
    )?;
    println!(
        "{}",
        serde_json::to_string(&report).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// What [`measure`] found.
#[derive(Debug, Serialize)]
struct Report {
    /// Objects in the catalog.
    keys: usize,
    /// The first agent's `load` (alone): connect, list, judge.
    first_load_ms: f64,
    /// Resident memory the catalog added to the first agent's process.
    rss_growth_mib: f64,
    /// Agent processes.
    watchers: usize,
    /// From before a write is sent to the first agent's config with it,
    /// while it runs alone (as on a host of its own), over the changes.
    alone_p50_ms: f64,
    alone_p99_ms: f64,
    /// From before a write is sent to each agent's config with it, over
    /// every (change, agent).
    propagation_p50_ms: f64,
    propagation_p99_ms: f64,
    propagation_max_ms: f64,
    samples: usize,
    /// Median over (change, agent) of the watch payload (keys and values)
    /// an agent received for one change.
    bytes_per_change: f64,
    /// CPU time of all etcd members per change (user + system), and as a
    /// share of one CPU over the changes' wall time.
    etcd_cpu_ms_per_change: f64,
    etcd_cpu_percent: f64,
    /// CPU time of one agent per change (mean over the agents): judging
    /// the catalog, and its lease, registration and watches meanwhile.
    agent_cpu_ms_per_change: f64,
    /// The same for changes of a service (its port): propagation to every
    /// agent, and CPU per agent.
    service_p50_ms: f64,
    service_p99_ms: f64,
    service_cpu_ms_per_change: f64,
    /// Nodes registered in etcd after the last change (one per agent, up
    /// to the catalog's nodes), and their instances' health keys.
    registered_nodes: usize,
    health_keys: usize,
}

/// Bound on one change reaching every agent.
const CHANGE_BOUND: Duration = Duration::from_secs(60);
/// Bound on an agent's load and first registration.
const READY_BOUND: Duration = Duration::from_secs(300);

/// A line from agent `index`.
type Said = (usize, String);

/// The agent processes: this bench run again with `--agent-node`.
struct Agents {
    children: Vec<std::process::Child>,
    lines: std::sync::mpsc::Receiver<Said>,
    tell: std::sync::mpsc::Sender<Said>,
}

impl Agents {
    fn spawn(&mut self, args: &[String], node: &str) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = std::process::Command::new(exe)
            .args(args)
            .args(["--agent-node", node])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn agent {node}: {e}"))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let index = self.children.len();
        let tell = self.tell.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tell.send((index, line)).is_err() {
                    return;
                }
            }
        });
        self.children.push(child);
        Ok(())
    }

    /// The next line from any agent, within `bound`.
    fn next(&self, bound: Duration) -> Result<Said, String> {
        self.lines
            .recv_timeout(bound)
            .map_err(|_| format!("no agent said anything within {bound:?}"))
    }

    /// Waits for a `ready {json}` line from each of `count` agents that
    /// have not said it yet; returns the first one's report.
    fn ready(&self, count: usize) -> Result<Value, String> {
        let mut first = None;
        for _ in 0..count {
            let (index, line) = self.next(READY_BOUND)?;
            let json = line
                .strip_prefix("ready ")
                .ok_or_else(|| format!("agent {index} said {line:?}"))?;
            let report: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
            first.get_or_insert(report);
        }
        first.ok_or_else(|| "no agent".to_owned())
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for child in &mut self.children {
            // Closing stdin ends it; a kill if it lingers.
            drop(child.stdin.take());
        }
        for child in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Now, in nanoseconds of the realtime clock: comparable between this
/// machine's processes.
fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The changes the bench writes: an intention between two services,
/// allow and deny in turn; or the first of them moved between its port
/// and [`OTHER_PORT`].
struct Changes {
    runtime: tokio::runtime::Runtime,
    client: etcd_client::Client,
    options: EtcdOptions,
    source: String,
    destination: String,
    /// The pair's action before the first change.
    denied_before: bool,
    /// The source service's nodes and port before the first change.
    nodes: Vec<String>,
    port: u16,
    /// Changes written so far, of each kind.
    made: [usize; 2],
}

/// What a change changes.
#[derive(Clone, Copy)]
enum Kind {
    /// The intention between the pair: the agents patch their config.
    Intention = 0,
    /// The source service's port: the agents check it against the others.
    Service = 1,
}

/// A port no service of the bench's catalogs has (theirs are 10,000 on).
const OTHER_PORT: u16 = 9_999;

/// What [`Changes::run`] saw: each agent's latency for each change (ms),
/// and the watch payload per change (bytes).
#[derive(Default)]
struct Seen {
    latencies: Vec<f64>,
    bytes: Vec<f64>,
}

impl Changes {
    /// Writes `count` changes, each once the first `watchers` agents have
    /// the one before, timed from before the write to each agent's config.
    /// `received`: each agent's payload total when it last reported.
    fn run(
        &mut self,
        kind: Kind,
        agents: &Agents,
        watchers: usize,
        count: usize,
        received: &mut [Option<u64>],
    ) -> Result<Seen, String> {
        let mut seen = Seen::default();
        for i in 0..count {
            let (key, value, want) = self.next(kind);
            let sent = now_ns();
            self.runtime
                .block_on(self.client.put(key.as_str(), value, None))
                .map_err(|e| format!("etcd at {}: {e}", self.options.endpoints.join(",")))?;
            let mut reached = vec![false; watchers];
            while reached.iter().any(|r| !r) {
                let (index, line) = agents.next(CHANGE_BOUND).map_err(|e| {
                    format!(
                        "change {i} reached {} of {watchers} agents: {e}",
                        reached.iter().filter(|r| **r).count()
                    )
                })?;
                // `seen <action> <port> <ns> <bytes>`
                let parts: Vec<&str> = line.split_whitespace().collect();
                let [_, action, port, at, total] = parts[..] else {
                    return Err(format!("agent {index} said {line:?}"));
                };
                let got = match kind {
                    Kind::Intention => action,
                    Kind::Service => port,
                };
                let (at, total): (u128, u64) = (
                    at.parse().map_err(|_| format!("agent {index}: {line:?}"))?,
                    total
                        .parse()
                        .map_err(|_| format!("agent {index}: {line:?}"))?,
                );
                if got == want && !std::mem::replace(&mut reached[index], true) {
                    seen.latencies.push(at.saturating_sub(sent) as f64 / 1e6);
                    if let Some(before) = received[index].replace(total) {
                        seen.bytes.push(total.saturating_sub(before) as f64);
                    }
                }
            }
        }
        seen.latencies.sort_by(f64::total_cmp);
        seen.bytes.sort_by(f64::total_cmp);
        Ok(seen)
    }

    /// The next change of `kind`: its key, value, and what an agent says
    /// once it has it.
    fn next(&mut self, kind: Kind) -> (String, String, String) {
        let turn = self.made[kind as usize].is_multiple_of(2);
        self.made[kind as usize] += 1;
        match kind {
            Kind::Intention => {
                let deny = turn != self.denied_before;
                let key = layout::Object::Intention {
                    source: self.source.clone(),
                    destination: self.destination.clone(),
                }
                .key(&self.options.prefix);
                let action = if deny { Action::Deny } else { Action::Allow };
                let value = intention_value(&self.source, &self.destination, action);
                (key, value, action.to_string())
            }
            Kind::Service => {
                let port = if turn { OTHER_PORT } else { self.port };
                let key = layout::Object::Service(self.source.clone()).key(&self.options.prefix);
                let nodes: Vec<String> = self.nodes.iter().map(|n| format!("{n:?}")).collect();
                let value = format!(
                    "[[service]]\nname = {:?}\nnodes = [{}]\nport = {port}\n",
                    self.source,
                    nodes.join(", ")
                );
                (key, value, port.to_string())
            }
        }
    }
}

/// The `q` quantile of sorted `v` (0 if empty).
fn quantile(v: &[f64], q: f64) -> f64 {
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

/// Starts `watchers` agent processes on `options`' catalog, each
/// registered as one of the catalog's nodes: the first alone (its load
/// timed, then `changes` changes to it alone), then the others; then
/// writes `changes` changes (an intention between the first two
/// services, allow and deny in turn), each once every agent has the
/// previous one, timed from before the write to each agent's config.
fn measure(
    options: &EtcdOptions,
    args: &[String],
    watchers: usize,
    changes: usize,
    etcd_pids: &[u32],
) -> Result<Report, String> {
    let watchers = watchers.max(1);
    // The catalog as an agent sees it: its nodes, the pair to change.
    let mut probe = EtcdCatalog::new(options.clone());
    let config = probe.load().map_err(|e| e.to_string())?;
    drop(probe);
    let (source, destination) = match &config.services[..] {
        [a, b, ..] => (a.name.to_string(), b.name.to_string()),
        _ => return Err("the bench needs two services".into()),
    };
    let denied_before = action(&config, &source, &destination) == Some(Action::Deny);
    let nodes: Vec<String> = config.nodes.iter().map(|n| n.name.to_string()).collect();
    let (tell, lines) = std::sync::mpsc::channel();
    let mut agents = Agents {
        children: Vec::new(),
        lines,
        tell,
    };
    // A worker of its own drives the connection (HTTP/2 pings) while this
    // thread waits for the agents.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let client = runtime
        .block_on(options.connect())
        .map_err(|e| e.to_string())?;
    let first_service = &config.services[0];
    let mut writes = Changes {
        runtime,
        client,
        options: options.clone(),
        source,
        destination,
        denied_before,
        nodes: first_service.nodes.iter().map(|n| n.to_string()).collect(),
        port: first_service.port,
        made: [0; 2],
    };
    let mut received = vec![None::<u64>; watchers];

    agents.spawn(args, &nodes[0])?;
    let first = agents.ready(1)?;
    let alone = writes.run(Kind::Intention, &agents, 1, changes, &mut received)?;
    for i in 1..watchers {
        agents.spawn(args, &nodes[i % nodes.len()])?;
    }
    agents.ready(watchers - 1)?;

    let agent_pids: Vec<u32> = agents.children.iter().map(|c| c.id()).collect();
    let cpu_before = cpu_ms(etcd_pids);
    let agents_before = cpu_ms(&agent_pids);
    let wall = Instant::now();
    let all = writes.run(Kind::Intention, &agents, watchers, changes, &mut received)?;
    let wall_ms = wall.elapsed().as_secs_f64() * 1e3;
    let etcd_ms = cpu_ms(etcd_pids) - cpu_before;
    let agents_cpu_ms = cpu_ms(&agent_pids) - agents_before;
    // Then changes of a service (an even count: the
    // catalog ends as it began).
    let service_changes = (changes / 2).max(1).next_multiple_of(2);
    let agents_before = cpu_ms(&agent_pids);
    let services = writes.run(
        Kind::Service,
        &agents,
        watchers,
        service_changes,
        &mut received,
    )?;
    let service_cpu_ms = cpu_ms(&agent_pids) - agents_before;
    // Still registered after the measurement, every one.
    let registered = writes
        .runtime
        .block_on(registry::list(options))
        .map_err(|e| e.to_string())?;
    drop(agents);
    Ok(Report {
        keys: first["keys"].as_u64().unwrap_or(0) as usize,
        first_load_ms: first["load_ms"].as_f64().unwrap_or(f64::NAN),
        rss_growth_mib: first["rss_growth_mib"].as_f64().unwrap_or(f64::NAN),
        watchers,
        alone_p50_ms: quantile(&alone.latencies, 0.5),
        alone_p99_ms: quantile(&alone.latencies, 0.99),
        propagation_p50_ms: quantile(&all.latencies, 0.5),
        propagation_p99_ms: quantile(&all.latencies, 0.99),
        propagation_max_ms: all.latencies.last().copied().unwrap_or(0.0),
        samples: all.latencies.len(),
        bytes_per_change: quantile(&all.bytes, 0.5),
        etcd_cpu_ms_per_change: etcd_ms / changes.max(1) as f64,
        etcd_cpu_percent: etcd_ms / wall_ms * 100.0,
        agent_cpu_ms_per_change: agents_cpu_ms / (changes.max(1) * watchers) as f64,
        service_p50_ms: quantile(&services.latencies, 0.5),
        service_p99_ms: quantile(&services.latencies, 0.99),
        service_cpu_ms_per_change: service_cpu_ms / (service_changes * watchers) as f64,
        registered_nodes: registered.nodes.len(),
        health_keys: registered.reports.values().map(|r| r.len()).sum(),
    })
}

/// One agent (`--agent-node`): loads the catalog (timed, with the memory
/// it adds), registers as `node` and follows the registrations as an
/// agent does (`app::App::spawn`), says `ready {json}`, then
/// `seen <action of the pair> <port of its source> <ns> <bytes received>` for every config,
/// until its stdin closes.
fn agent(options: &EtcdOptions, node: &str) -> Result<(), String> {
    let before = rss_bytes();
    let started = Instant::now();
    let mut catalog = EtcdCatalog::new(options.clone());
    let config = catalog.load().map_err(|e| e.to_string())?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let rss_growth_mib = rss_bytes().saturating_sub(before) as f64 / (1 << 20) as f64;
    let (source, destination) = match &config.services[..] {
        [a, b, ..] => (a.name.to_string(), b.name.to_string()),
        _ => return Err("the bench needs two services".into()),
    };
    let name = config
        .nodes
        .iter()
        .find(|n| n.name == node)
        .map(|n| n.name.clone())
        .ok_or_else(|| format!("no node {node} in the catalog"))?;
    // Ends this process when the bench closes stdin.
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    // As the agent's (`mesh-agent run`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async {
        let (publisher, snapshots) = Snapshot::new(config.clone()).publish();
        let board = Board::new(&name, Arc::new(publisher), Arc::default());
        board.sync(&config);
        let r = registry::Registration::new(options.clone(), &name, board, snapshots);
        tokio::spawn(r.clone().keep());
        tokio::spawn(r.clone().follow());
        tokio::time::timeout(READY_BOUND, r.first())
            .await
            .map_err(|_| format!("{node} not registered within {READY_BOUND:?}"))?;
        println!(
            "ready {}",
            serde_json::json!({
                "keys": catalog.len(),
                "load_ms": load_ms,
                "rss_growth_mib": rss_growth_mib,
            })
        );
        loop {
            let config = catalog.changed().await;
            let got =
                action(&config, &source, &destination).map_or("none".to_owned(), |a| a.to_string());
            let port = config
                .services
                .iter()
                .find(|s| s.name.as_str() == source)
                .map_or(0, |s| s.port);
            println!(
                "seen {got} {port} {} {}",
                now_ns(),
                catalog.received_bytes()
            );
        }
    })
}

/// CPU time (user + system) of the processes `pids`, in milliseconds.
fn cpu_ms(pids: &[u32]) -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as f64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command's closing parenthesis: utime and
            // stime are the 12th and 13th.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / ticks * 1e3)
        })
        .sum()
}

/// The action of the intention from `source` to `destination` in
/// `config`, if it has one.
fn action(config: &Config, source: &str, destination: &str) -> Option<Action> {
    config
        .intentions
        .iter()
        .find(|i| i.source.to_string() == source && i.destination.to_string() == destination)
        .map(|i| i.action)
}

/// This process's resident memory (`VmRSS`).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    kib * 1024
}
