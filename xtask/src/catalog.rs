//! `cargo xtask bench --catalog`: the catalog in etcd at issue 13's scale
//! (1,000 services, 10,000 instances, 2,000 intentions). One etcd member on
//! loopback (its own data directory, removed after), the catalog imported
//! with `mesh-agent catalog import` (timed), then `mesh-agent catalog
//! bench`: one agent's first load (list and judge) and the memory it adds,
//! and the time from a write to 50 watching agents' new configs (one
//! process, no data path). Medians over `--runs`, then the targets.

use std::{
    fmt::Write as _,
    fs,
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{build, cmd, setup};

const NODES: usize = 100;
const SERVICES: usize = 1_000;
/// Instances per service: 10,000 in all.
const PER_SERVICE: usize = 10;
const INTENTIONS: usize = 2_000;
const WATCHERS: usize = 50;
const CHANGES: usize = 20;

/// Runs the catalog bench `runs` times and prints the medians.
pub fn run(runs: usize) -> anyhow::Result<()> {
    setup::ensure()?;
    let agent = build::agent(true)?;
    let scratch = Scratch::new()?;
    let dir = scratch.0.clone();
    let file = dir.join("mesh.toml");
    fs::write(&file, catalog_text())?;
    let mut samples: Vec<Value> = Vec::new();
    for run in 0..runs.max(1) {
        eprintln!("bench: catalog run {}/{runs}", run + 1);
        let etcd = Etcd::start(&dir.join(format!("etcd-{run}")))?;
        let url = format!("etcd://127.0.0.1:{}/mesh", etcd.port);
        let started = Instant::now();
        let import = output(
            Command::new(&agent)
                .args(["catalog", "import"])
                .arg(&file)
                .args(["--catalog", &url]),
        )?;
        let import_s = started.elapsed().as_secs_f64();
        eprintln!("bench: {}", import.lines().last().unwrap_or_default());
        let report = output(Command::new(&agent).args([
            "catalog",
            "bench",
            "--watchers",
            &WATCHERS.to_string(),
            "--changes",
            &CHANGES.to_string(),
            "--catalog",
            &url,
        ]))?;
        let mut report: Value =
            serde_json::from_str(report.trim()).context("catalog bench output")?;
        report["import_s"] = import_s.into();
        samples.push(report);
        drop(etcd);
    }
    print!("{}", table(&samples));
    Ok(())
}

/// The bench's directory (etcd's data), removed on drop, failures included.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("mesh-catalog-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The medians and the targets, as Markdown.
fn table(samples: &[Value]) -> String {
    let median = |field: &str| {
        let mut v: Vec<f64> = samples.iter().filter_map(|s| s[field].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let keys = samples
        .first()
        .and_then(|s| s["keys"].as_u64())
        .unwrap_or(0);
    let mut out = format!(
        "\nCatalog in etcd: {SERVICES} services, {} instances, {INTENTIONS} intentions, {NODES} nodes ({keys} keys); medians of {} run(s), one etcd member on loopback.\n\n| metric | value | target | met |\n|---|---|---|---|\n",
        SERVICES * PER_SERVICE,
        samples.len()
    );
    let rows = [
        ("import (s)", median("import_s"), None),
        ("first snapshot (ms)", median("first_load_ms"), Some(2000.0)),
        (
            "agent RSS growth (MiB)",
            median("rss_growth_mib"),
            Some(64.0),
        ),
        (
            "propagation p50 to 50 watchers (ms)",
            median("propagation_p50_ms"),
            None,
        ),
        (
            "propagation p99 to 50 watchers (ms)",
            median("propagation_p99_ms"),
            Some(1000.0),
        ),
    ];
    for (name, value, target) in rows {
        let (wanted, met) = match target {
            Some(t) => (format!("<= {t}"), if value <= t { "yes" } else { "no" }),
            None => ("-".to_owned(), "-"),
        };
        let _ = writeln!(out, "| {name} | {value:.1} | {wanted} | {met} |");
    }
    out
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

/// A command's stdout; fails with its stderr.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One etcd member on 127.0.0.1, killed on drop.
struct Etcd {
    child: Child,
    port: u16,
}

impl Etcd {
    fn start(data: &Path) -> anyhow::Result<Self> {
        // Both held until both are known, so they differ; then freed for
        // etcd.
        let (client_listener, peer_listener) = (free_port()?, free_port()?);
        let port = client_listener.local_addr()?.port();
        let peer = peer_listener.local_addr()?.port();
        drop((client_listener, peer_listener));
        let log = fs::File::create(data.with_extension("log"))?;
        let child = cmd::new("etcd")
            .arg("--data-dir")
            .arg(data)
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{port}")])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{port}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
            ])
            .args(["--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("failed to start etcd (cargo xtask setup installs it)")?;
        let etcd = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let health = cmd::new("etcdctl")
                .args(["--endpoints", &format!("http://127.0.0.1:{port}")])
                .args(["endpoint", "health"])
                .output();
            if health.is_ok_and(|o| o.status.success()) {
                return Ok(etcd);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("etcd did not become healthy within 20 s")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A listener on a free loopback port; its port is free again once dropped.
fn free_port() -> anyhow::Result<TcpListener> {
    Ok(TcpListener::bind("127.0.0.1:0")?)
}
