//! `cargo xtask bench --catalog`: the catalog in etcd at issue 13's scale
//! (1,000 services, 10,000 instances, 2,000 intentions) on the etcd that
//! docs/fleet.md sets up: three members with TLS, client certificates and
//! RBAC (the test harness's `Topology::etcd_auth`). Each run: a new
//! cluster; the catalog imported with `mesh-agent catalog import` as etcd
//! user `admin` (timed); then mesh-agent's `catalog_scale` bench
//! (`mesh-agent/benches/catalog_scale.rs`) as `admin`: one
//! agent's first load (list and judge) and the memory it adds, then
//! [`WATCHERS`] watching catalogs, each registered as a node of the
//! catalog as an agent is (node key and its instances' health under a
//! lease), and the time from before a write is sent to every watcher's new
//! config (one process, no data path). Medians over `--runs`, the targets,
//! and the report in docs/catalog-scale.md.
//!
//! No real agent runs: an agent cannot load this catalog (see
//! [`document`]).

use std::{
    fmt::Write as _,
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use mesh_tests::{Mesh, etcd::MEMBERS};
use serde_json::Value;

use crate::{bench, build, cmd, setup};

const NODES: usize = 100;
const SERVICES: usize = 1_000;
/// Instances per service: 10,000 in all.
const PER_SERVICE: usize = 10;
const INTENTIONS: usize = 2_000;
const WATCHERS: usize = 50;
const CHANGES: usize = 20;
/// The harness's one mesh node: it writes a config and a CA for at least
/// one; no agent runs on it.
const NODE: &str = "catalog-bench";

/// Runs the catalog bench `runs` times, prints the medians and writes
/// docs/catalog-scale.md.
pub fn run(runs: usize) -> anyhow::Result<()> {
    setup::ensure()?;
    let agent = build::agent(true)?;
    let bench = build::catalog_bench()?;
    if !mesh_tests::is_root() {
        bail!(
            "the catalog bench needs root (etcd in network namespaces); try: sudo -E cargo xtask bench --catalog"
        );
    }
    let runs = runs.max(1);
    let mut samples: Vec<Value> = Vec::new();
    for run in 0..runs {
        eprintln!("bench: catalog run {}/{runs}", run + 1);
        samples.push(one_run(&agent, &bench)?);
    }
    let table = table(&samples);
    print!("{table}");
    let doc = cmd::workspace_root().join("docs/catalog-scale.md");
    fs::write(&doc, document(&table, runs)?)
        .with_context(|| format!("failed to write {}", doc.display()))?;
    eprintln!("bench: report in {}", doc.display());
    Ok(())
}

/// One run on a new cluster: the `catalog_scale` bench's report, with
/// `import_s`.
fn one_run(agent: &std::path::Path, bench: &std::path::Path) -> anyhow::Result<Value> {
    let mut mesh = Mesh::nodes(&[NODE])
        .etcd_auth()
        .agent(agent.to_owned())
        .build();
    mesh.log_filter = "warn".to_owned();
    mesh.start_etcd();
    let file = mesh.dir.join("catalog.toml");
    fs::write(&file, catalog_text())?;
    // Not `Mesh::cli_etcd`: import prints a line per key, more than a
    // pipe holds while that waits for the exit.
    let started = Instant::now();
    let out = mesh
        .cmd(MEMBERS[0], &mesh.agent)
        .args(["catalog", "import"])
        .arg(&file)
        .args(["--catalog", &mesh.etcd_url()])
        .args(mesh.etcd_client_args("admin"))
        .output()
        .context("failed to run mesh-agent catalog import")?;
    let import_s = started.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "catalog import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mesh_tests::output_with_timeout(
        mesh.cmd(MEMBERS[0], bench)
            .args(["--watchers", &WATCHERS.to_string()])
            .args(["--changes", &CHANGES.to_string()])
            .args(["--catalog", &mesh.etcd_url()])
            .args(mesh.etcd_client_args("admin"))
            .env("RUST_LOG", "warn"),
        Duration::from_secs(600),
    );
    let (ok, text) = mesh_tests::outcome(&out);
    ensure!(ok, "the catalog_scale bench failed: {text}");
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_default();
    let mut report: Value =
        serde_json::from_str(line).with_context(|| format!("catalog bench said: {text}"))?;
    ensure!(
        report["registered_nodes"].as_u64() == Some(WATCHERS as u64),
        "{WATCHERS} watchers, but {} nodes registered at the end",
        report["registered_nodes"]
    );
    report["import_s"] = import_s.into();
    Ok(report)
}

/// The medians and the targets, as Markdown.
fn table(samples: &[Value]) -> String {
    let median = |field: &str| {
        let mut v: Vec<f64> = samples.iter().filter_map(|s| s[field].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        // Every run's report has every field: a missing one shows as NaN.
        (v.len() == samples.len())
            .then(|| v.get(v.len() / 2).copied())
            .flatten()
            .unwrap_or(f64::NAN)
    };
    let mut out = "| metric | value | target | met |\n|---|---|---|---|\n".to_owned();
    let watchers = format!("to {WATCHERS} watchers (ms)");
    // (metric, field, decimals, at most)
    let rows = [
        ("keys in the catalog", "keys", 0, None),
        ("import (s)", "import_s", 1, None),
        ("first snapshot (ms)", "first_load_ms", 1, Some(2000.0)),
        ("agent RSS growth (MiB)", "rss_growth_mib", 1, Some(64.0)),
        (
            &*format!("propagation p50 {watchers}"),
            "propagation_p50_ms",
            1,
            Some(1000.0),
        ),
        (
            &*format!("propagation p99 {watchers}"),
            "propagation_p99_ms",
            1,
            Some(1000.0),
        ),
        (
            &*format!("propagation max {watchers}"),
            "propagation_max_ms",
            1,
            None,
        ),
        ("nodes registered at the end", "registered_nodes", 0, None),
        ("their health keys", "health_keys", 0, None),
    ];
    for (name, field, decimals, at_most) in rows {
        let value = median(field);
        let (wanted, met) = match at_most {
            Some(t) => (format!("<= {t}"), if value <= t { "yes" } else { "no" }),
            None => ("-".to_owned(), "-"),
        };
        let _ = writeln!(out, "| {name} | {value:.decimals$} | {wanted} | {met} |");
    }
    out
}

/// docs/catalog-scale.md: how it was made, what it measures, the table.
fn document(table: &str, runs: usize) -> anyhow::Result<String> {
    Ok(format!(
        "# The catalog in etcd at scale\n\n\
         Written by `cargo xtask bench --catalog`; run it again rather than edit this file.\n\n\
         {}\n\
         ## What runs\n\n\
         The catalog: {SERVICES} services on {PER_SERVICE} of {NODES} nodes each ({} instances), \
         {INTENTIONS} intentions (each service to the next two), imported with `mesh-agent catalog \
         import` as etcd user `admin` (the time includes starting the process).\n\n\
         etcd as docs/fleet.md sets it up, built by the test harness (`Topology::etcd_auth`, \
         `tests/src/etcd.rs`): three members, each in a network namespace of its own on one bridge, \
         TLS with client certificates, RBAC on (user `root`; `admin` with readwrite on the prefix; \
         a user per mesh node with read on the prefix and readwrite on its own registration). Raft \
         runs with the harness's short timings (heartbeat 50 ms, election 500 ms).\n\n\
         The bench (`mesh-agent/benches/catalog_scale.rs`) runs in the first member's namespace \
         as `admin`. first \
         snapshot: the first watcher's load (connect, list, judge); RSS growth: the memory that \
         catalog adds to the process. Then {WATCHERS} watchers (`EtcdCatalog`s, as agents run them, \
         without the data path), each also registered as one of the catalog's nodes as an agent is \
         (`Registration`: the node key and its {} instances' health under a lease kept alive every \
         3.3 s, and a watch of every node's key), all registered and listed before the first write \
         and checked still registered after the last. The bench takes one certificate, so the \
         registrations are written as `admin` rather than each node's user; etcd checks `admin`'s \
         requests against its role as it checks a node's (only `root` is not checked). {CHANGES} \
         writes of one intention, allow and deny in turn, each once every watcher has the one \
         before: propagation runs from before the write is sent to each watcher's first config with \
         the new action ({} samples a run). The watchers share this machine's CPUs and each judges \
         the whole catalog on every change, so they wait for each other; the agents of a fleet have \
         a host each.\n\n\
         No real agent runs: an agent cannot load this catalog yet. Its eBPF map `SERVICES` holds \
         2 x 4,096 entries (`MAX_SERVICES` in mesh-common), one per VIP and per instance address, \
         and this catalog needs {} (`bpf_map_update_elem` fails and the agent exits); with the \
         default policy deny, a node's `DENIED` map (65,536 pairs, `MAX_DENIED_PAIRS`) would need \
         {} for its {} services.\n\n\
         ## Results\n\n{table}",
        bench::provenance(runs, "each figure is the median of the runs")?,
        SERVICES * PER_SERVICE,
        SERVICES * PER_SERVICE / NODES,
        CHANGES * WATCHERS,
        SERVICES + SERVICES * PER_SERVICE,
        SERVICES * PER_SERVICE / NODES * (SERVICES - 2),
        SERVICES * PER_SERVICE / NODES,
    ))
}

/// The catalog: nodes `n0..`, services `s0..` on `PER_SERVICE` nodes each,
/// intentions from each service to the next two.
fn catalog_text() -> String {
    let mut out = String::from("[mesh]\ndefault_policy = \"deny\"\nca_dir = \"/nonexistent\"\n\n");
    for n in 0..NODES {
        let _ = writeln!(
            out,
            "[[node]]\nname = \"n{n}\"\naddress = \"10.200.{}.{}\"\n",
            n / 250,
            n % 250 + 1
        );
    }
    for s in 0..SERVICES {
        let nodes: Vec<String> = (0..PER_SERVICE)
            .map(|k| format!("\"n{}\"", (s + k * 7) % NODES))
            .collect();
        let _ = writeln!(
            out,
            "[[service]]\nname = \"s{s}\"\nnodes = [{}]\nport = {}\n",
            nodes.join(", "),
            10_000 + s
        );
    }
    for i in 0..INTENTIONS {
        let (source, destination) = (i / 2, (i / 2 + 1 + i % 2) % SERVICES);
        let _ = writeln!(
            out,
            "[[intention]]\nsource = \"s{source}\"\ndestination = \"s{destination}\"\naction = \"allow\"\n"
        );
    }
    out
}
