//! Measures the catalog in etcd at scale (`mesh-agent catalog bench`, run
//! by `cargo xtask bench --catalog`): how long an agent takes to list and
//! judge it, how much memory holding it costs, and how long a change takes
//! to reach many watching agents (here `EtcdCatalog`s in one process,
//! without the data path, as the agents of a fleet would run them).

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Catalog, CatalogError, EtcdCatalog, EtcdOptions, layout};
use crate::config::Action;

/// What [`measure`] found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Objects in the catalog.
    pub keys: usize,
    /// The first watcher's `load`: connect, list, judge.
    pub first_load_ms: f64,
    /// Resident memory the first watcher's catalog added to this process.
    pub rss_growth_mib: f64,
    pub watchers: usize,
    /// From a write's answer to each watcher's new config, over every
    /// (change, watcher).
    pub propagation_p50_ms: f64,
    pub propagation_p99_ms: f64,
    pub samples: usize,
}

/// Bound on one change reaching every watcher.
const CHANGE_BOUND: Duration = Duration::from_secs(30);

/// Loads `watchers` catalogs from `options`, then writes `changes` changes
/// (an intention between the first two services, allow and deny in turn),
/// each once every watcher has the previous one.
pub fn measure(
    options: &EtcdOptions,
    watchers: usize,
    changes: usize,
) -> Result<Report, CatalogError> {
    let watchers = watchers.max(1);
    let before = rss_bytes();
    let started = Instant::now();
    let mut first = EtcdCatalog::new(options.clone());
    let config = first.load()?;
    let first_load_ms = started.elapsed().as_secs_f64() * 1e3;
    let rss_growth_mib = rss_bytes().saturating_sub(before) as f64 / (1 << 20) as f64;
    let keys = first.len();
    let (source, destination) = match &config.services[..] {
        [a, b, ..] => (a.name.clone(), b.name.clone()),
        _ => {
            return Err(CatalogError::Rejected(
                "the bench needs two services".into(),
            ));
        }
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
        catalog.load()?;
        catalogs.push(catalog);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CatalogError::Runtime)?;
    let mut latencies = runtime.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for mut catalog in catalogs {
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    catalog.changed().await;
                    if tx.send(Instant::now()).is_err() {
                        return;
                    }
                }
            });
        }
        let mut client = options.connect().await?;
        let key = layout::Object::Intention {
            source: source.clone(),
            destination: destination.clone(),
        }
        .key(&options.prefix);
        let mut latencies = Vec::with_capacity(changes * watchers);
        for i in 0..changes {
            let deny = (i % 2 == 0) != denied_now;
            let action = if deny { Action::Deny } else { Action::Allow };
            let value = super::etcd::intention_value(&source, &destination, action);
            client
                .put(key.as_str(), value, None)
                .await
                .map_err(|e| CatalogError::Etcd {
                    endpoints: options.endpoints.join(","),
                    source: e,
                })?;
            let written = Instant::now();
            for _ in 0..watchers {
                let seen = tokio::time::timeout(CHANGE_BOUND, rx.recv())
                    .await
                    .ok()
                    .flatten()
                    .ok_or_else(|| {
                        CatalogError::Rejected(format!(
                            "change {i} did not reach every watcher within {CHANGE_BOUND:?}"
                        ))
                    })?;
                latencies.push(seen.saturating_duration_since(written).as_secs_f64() * 1e3);
            }
        }
        Ok::<_, CatalogError>(latencies)
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
        samples: latencies.len(),
    })
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
