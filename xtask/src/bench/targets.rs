//! The issues' targets against a run's medians.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{PARALLEL, ebpf::BpfWindow};

/// A target: a figure at least or at most this.
#[derive(Clone, Copy)]
pub(super) enum Want {
    AtLeast(f64),
    AtMost(f64),
}

impl Want {
    pub(super) fn met(self, got: f64) -> bool {
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
pub(super) fn targets(
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
