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
    let tls = match (args.etcd_cacert, args.etcd_cert, args.etcd_key) {
        (Some(ca), Some(cert), Some(key)) => Some(EtcdTls { ca, cert, key }),
        _ => None,
    };
    let options = EtcdOptions::parse(&args.catalog, tls).map_err(|e| e.to_string())?;
    let report = measure(&options, args.watchers, args.changes)?;
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
    /// The first watcher's `load`: connect, list, judge.
    first_load_ms: f64,
    /// Resident memory the first watcher's catalog added to this process.
    rss_growth_mib: f64,
    watchers: usize,
    /// From before a write is sent to each watcher's config with it, over
    /// every (change, watcher).
    propagation_p50_ms: f64,
    propagation_p99_ms: f64,
    propagation_max_ms: f64,
    samples: usize,
    /// Nodes registered in etcd after the last change (one per watcher, up
    /// to the catalog's nodes), and their instances' health keys.
    registered_nodes: usize,
    health_keys: usize,
}

/// Bound on one change reaching every watcher.
const CHANGE_BOUND: Duration = Duration::from_secs(30);
/// Bound on every watcher's first registration and listing.
const REGISTERED_BOUND: Duration = Duration::from_secs(60);

/// Loads `watchers` catalogs from `options`; registers watcher `i` as the
/// catalog's node `i` (while there are nodes) and waits until each is
/// registered and has listed the registrations; then writes `changes`
/// changes (an intention between the first two services, allow and deny
/// in turn), each once every watcher has the previous one.
fn measure(options: &EtcdOptions, watchers: usize, changes: usize) -> Result<Report, String> {
    let watchers = watchers.max(1);
    let before = rss_bytes();
    let started = Instant::now();
    let mut first = EtcdCatalog::new(options.clone());
    let config = first.load().map_err(|e| e.to_string())?;
    let first_load_ms = started.elapsed().as_secs_f64() * 1e3;
    let rss_growth_mib = rss_bytes().saturating_sub(before) as f64 / (1 << 20) as f64;
    let keys = first.len();
    let (source, destination) = match &config.services[..] {
        [a, b, ..] => (a.name.to_string(), b.name.to_string()),
        _ => return Err("the bench needs two services".into()),
    };
    // Each change must differ from what the catalog holds (a put of the
    // same value changes nothing a watcher reports).
    let denied_now = config.intentions.iter().any(|i| {
        i.source.to_string() == source
            && i.destination.to_string() == destination
            && i.action == Action::Deny
    });
    let mut catalogs = vec![first];
    for _ in 1..watchers {
        let mut catalog = EtcdCatalog::new(options.clone());
        catalog.load().map_err(|e| e.to_string())?;
        catalogs.push(catalog);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let (mut latencies, registered) = runtime.block_on(async {
        // Registrations as the agents keep them (`app::App::spawn`).
        let mut registrations = Vec::new();
        for node in config.nodes.iter().take(watchers) {
            let (publisher, snapshots) = Snapshot::new(config.clone()).publish();
            let board = Board::new(&node.name, Arc::new(publisher), Arc::default());
            board.sync(&config);
            let r = registry::Registration::new(options.clone(), &node.name, board, snapshots);
            tokio::spawn(r.clone().keep());
            tokio::spawn(r.clone().follow());
            registrations.push(r);
        }
        let all = async {
            for r in &registrations {
                r.first().await;
            }
        };
        tokio::time::timeout(REGISTERED_BOUND, all)
            .await
            .map_err(|_| {
                format!(
                    "the {} watchers' registrations were not all in etcd within {REGISTERED_BOUND:?}",
                    registrations.len()
                )
            })?;
        // Each watcher reports (its index, when, the pair's action) for
        // every config it gets.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (index, mut catalog) in catalogs.into_iter().enumerate() {
            let tx = tx.clone();
            let (source, destination) = (source.clone(), destination.clone());
            tokio::spawn(async move {
                loop {
                    let config = catalog.changed().await;
                    let seen = (
                        index,
                        Instant::now(),
                        action(&config, &source, &destination),
                    );
                    if tx.send(seen).is_err() {
                        return;
                    }
                }
            });
        }
        let mut client = options.connect().await.map_err(|e| e.to_string())?;
        let key = layout::Object::Intention {
            source: source.clone(),
            destination: destination.clone(),
        }
        .key(&options.prefix);
        let mut latencies = Vec::with_capacity(changes * watchers);
        for i in 0..changes {
            let deny = (i % 2 == 0) != denied_now;
            let want = if deny { Action::Deny } else { Action::Allow };
            let value = intention_value(&source, &destination, want);
            let sent = Instant::now();
            client
                .put(key.as_str(), value, None)
                .await
                .map_err(|e| format!("etcd at {}: {e}", options.endpoints.join(",")))?;
            // Every watcher's first config with this change.
            let deadline = tokio::time::Instant::now() + CHANGE_BOUND;
            let mut reached = vec![false; watchers];
            while reached.iter().any(|r| !r) {
                let (index, at, got) = tokio::time::timeout_at(deadline, rx.recv())
                    .await
                    .ok()
                    .flatten()
                    .ok_or_else(|| {
                        format!(
                            "change {i} reached {} of {watchers} watchers within {CHANGE_BOUND:?}",
                            reached.iter().filter(|r| **r).count()
                        )
                    })?;
                if got == Some(want) && !std::mem::replace(&mut reached[index], true) {
                    latencies.push(at.duration_since(sent).as_secs_f64() * 1e3);
                }
            }
        }
        // Still registered after the measurement, every one.
        let registered = registry::list(options)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((latencies, registered))
    })?;
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok(Report {
        keys,
        first_load_ms,
        rss_growth_mib,
        watchers,
        propagation_p50_ms: at(0.5),
        propagation_p99_ms: at(0.99),
        propagation_max_ms: latencies.last().copied().unwrap_or(0.0),
        samples: latencies.len(),
        registered_nodes: registered.nodes.len(),
        health_keys: registered.reports.values().map(|r| r.len()).sum(),
    })
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
