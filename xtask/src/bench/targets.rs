//! The issues' targets against a run's medians.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{PARALLEL_RATE, ebpf::BpfWindow};

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

/// How a target's figure comes from the run's medians.
#[derive(Clone, Copy)]
enum Figure {
    /// The mesh's median of a metric over `mode`'s.
    Ratio(&'static str, &'static str),
    /// The latency the mesh adds over direct, as a share of what stunnel
    /// adds: (mesh - direct) / (stunnel - direct).
    Added(&'static str),
    /// The mesh's median of a metric.
    Mesh(&'static str),
    /// The largest single figure whose name starts with this.
    Most(&'static str),
    /// Nanoseconds per call of an eBPF program.
    NsPerCall(&'static str),
    /// A metric under a flood over the same with none (`quiet`).
    Under(&'static str, &'static str),
    /// A metric in an instances column over the same to one instance.
    OverOne(&'static str, &'static str),
    /// A metric into a container over the same on the host.
    InContainer(&'static str),
    /// The largest median of a metric over the web UI's pages.
    SlowestPage(&'static str),
}

/// The medians a run measured, as [`targets`] takes them.
struct Medians<'a> {
    median: &'a dyn Fn(&str, &str) -> Option<f64>,
    flooded: &'a dyn Fn(&str, &str) -> Option<f64>,
    instances: &'a dyn Fn(&str, &str) -> Option<f64>,
    containers: &'a dyn Fn(&str, &str) -> Option<f64>,
    ui: &'a dyn Fn(&str, &str) -> Option<f64>,
    extra: &'a BTreeMap<String, f64>,
    bpf: &'a BpfWindow,
}

impl Figure {
    /// The figure; `None` if the run did not measure what it needs.
    fn of(self, m: &Medians) -> Option<f64> {
        match self {
            Self::Ratio(metric, over) => {
                Some((m.median)(metric, "mesh")? / (m.median)(metric, over)?)
            }
            Self::Added(metric) => {
                let direct = (m.median)(metric, "direct")?;
                Some(
                    ((m.median)(metric, "mesh")? - direct)
                        / ((m.median)(metric, "stunnel")? - direct),
                )
            }
            Self::Mesh(metric) => (m.median)(metric, "mesh"),
            Self::Most(prefix) => m
                .extra
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| *v)
                .reduce(f64::max),
            Self::NsPerCall(program) => m.bpf.ns_per_call(program),
            Self::Under(metric, flood) => {
                Some((m.flooded)(metric, flood)? / (m.flooded)(metric, "quiet")?)
            }
            Self::OverOne(metric, column) => {
                Some((m.instances)(metric, column)? / (m.instances)(metric, "1 instance")?)
            }
            Self::InContainer(metric) => Some(
                (m.containers)(metric, "in a container")? / (m.containers)(metric, "on the host")?,
            ),
            Self::SlowestPage(metric) => super::ui::PAGES
                .iter()
                .filter_map(|(_, page)| (m.ui)(metric, page))
                .reduce(f64::max),
        }
    }
}

/// The issues' targets, in the report's order: name, what is wanted, the
/// figure.
const TARGETS: [(&str, Want, Figure); 30] = {
    use Figure::{Added, InContainer, Mesh, Most, NsPerCall, OverOne, Ratio, SlowestPage, Under};
    use Want::{AtLeast, AtMost};
    const CPU: &str = "proxy CPU s per GB (both ends)";
    [
        (
            "bulk, mesh/direct",
            AtLeast(0.5),
            Ratio("bulk Gbit/s", "direct"),
        ),
        (
            "bulk, mesh/stunnel",
            AtLeast(1.8),
            Ratio("bulk Gbit/s", "stunnel"),
        ),
        (
            "CPU per GB, mesh/stunnel",
            AtMost(0.4),
            Ratio(CPU, "stunnel"),
        ),
        (
            "rr 1 B p50 added over direct, mesh/stunnel",
            AtMost(0.5),
            Added("rr 1 B p50 us"),
        ),
        (
            "rr 1 KiB p50 added over direct, mesh/stunnel",
            AtMost(0.5),
            Added("rr 1024 B p50 us"),
        ),
        (
            "new conns per s, mesh/stunnel",
            AtLeast(10.0),
            Ratio("new conns per s", "stunnel"),
        ),
        (
            "new conns per s (8 at a time), mesh/stunnel",
            AtLeast(10.0),
            Ratio(PARALLEL_RATE, "stunnel"),
        ),
        (
            "new conns per s, mesh/stunnel resumed",
            AtLeast(10.0),
            Ratio("new conns per s", "stunnel resumed"),
        ),
        (
            "new conns per s (8 at a time), mesh/stunnel resumed",
            AtLeast(10.0),
            Ratio(PARALLEL_RATE, "stunnel resumed"),
        ),
        // Issue 12: multiplexing (mesh/2) against one connection per app
        // connection (mesh/1, bench-d's agent).
        (
            "new conns per s, mesh/mesh/1",
            AtLeast(2.0),
            Ratio("new conns per s", "mesh/1"),
        ),
        (
            "new conns per s (8 at a time), mesh/mesh/1",
            AtLeast(2.0),
            Ratio(PARALLEL_RATE, "mesh/1"),
        ),
        (
            "new conn p50 us, mesh",
            AtMost(300.0),
            Mesh("new conn p50 us"),
        ),
        (
            "bulk, mesh/mesh/1",
            AtLeast(0.95),
            Ratio("bulk Gbit/s", "mesh/1"),
        ),
        (
            "CPU per GB, mesh/mesh/1",
            AtMost(1.05),
            Ratio(CPU, "mesh/1"),
        ),
        (
            "rr 1 B p50, mesh/mesh/1",
            AtMost(1.05),
            Ratio("rr 1 B p50 us", "mesh/1"),
        ),
        (
            "rr 1 KiB p50, mesh/mesh/1",
            AtMost(1.05),
            Ratio("rr 1024 B p50 us", "mesh/1"),
        ),
        (
            "KiB per idle proxied conn (worst)",
            AtMost(24.0),
            Most("KiB per idle"),
        ),
        ("agents RSS idle MiB", AtMost(32.0), Most("agents RSS idle")),
        (
            "mesh_connect4 ns per call (bench-a's)",
            AtMost(1000.0),
            NsPerCall("mesh_connect4"),
        ),
        (
            "rr 1 B p50 under node flood / quiet",
            AtMost(1.1),
            Under("rr 1 B p50 us", "node flood"),
        ),
        (
            "new conns per s under node flood / quiet",
            AtLeast(0.9),
            Under("new conns per s", "node flood"),
        ),
        (
            "rr 1 B p50 under stranger flood / quiet",
            AtMost(1.1),
            Under("rr 1 B p50 us", "stranger flood"),
        ),
        (
            "new conns per s under stranger flood / quiet",
            AtLeast(0.9),
            Under("new conns per s", "stranger flood"),
        ),
        // 2 instances cost at most 5% of connection rate and rr p50.
        (
            "new conns per s, 2 instances / 1",
            AtLeast(0.95),
            OverOne("new conns per s", "2 instances"),
        ),
        (
            "rr 1 B p50, 2 instances / 1",
            AtMost(1.05),
            OverOne("rr 1 B p50 us", "2 instances"),
        ),
        (
            "new conns per s, 2 instances with 1 passing / 1",
            AtLeast(0.95),
            OverOne("new conns per s", "2 instances, 1 passing"),
        ),
        (
            "rr 1 B p50, 2 instances with 1 passing / 1",
            AtMost(1.05),
            OverOne("rr 1 B p50 us", "2 instances, 1 passing"),
        ),
        // Into a container within 10% of on the host.
        (
            "new conns per s, into a container / on the host",
            AtLeast(0.9),
            InContainer("new conns per s"),
        ),
        (
            "rr 1 B p50, into a container / on the host",
            AtMost(1.1),
            InContainer("rr 1 B p50 us"),
        ),
        // Issue 24: the web UI "loads in well under a second" with 1,000
        // services.
        (
            "web UI first draw ms, 1,000 services (slowest page)",
            AtMost(1000.0),
            SlowestPage(super::ui::FIRST_DRAW),
        ),
    ]
};

/// The issues' targets against this run's medians: a table of ratios.
/// `flooded(metric, flood)` is a median of the under-flood runs,
/// `instances(metric, column)` of the instances part.
pub(super) fn targets(
    median: &dyn Fn(&str, &str) -> Option<f64>,
    flooded: &dyn Fn(&str, &str) -> Option<f64>,
    instances: &dyn Fn(&str, &str) -> Option<f64>,
    containers: &dyn Fn(&str, &str) -> Option<f64>,
    ui: &dyn Fn(&str, &str) -> Option<f64>,
    extra: &BTreeMap<String, f64>,
    bpf: &BpfWindow,
) -> String {
    let medians = Medians {
        median,
        flooded,
        instances,
        containers,
        ui,
        extra,
        bpf,
    };
    let mut out = "| target | wanted | this run | met |\n|---|---|---|---|\n".to_owned();
    for (name, wanted, figure) in TARGETS {
        let Some(got) = figure.of(&medians) else {
            continue;
        };
        let _ = writeln!(
            out,
            "| {name} | {wanted} | {got:.2} | {} |",
            if wanted.met(got) { "yes" } else { "no" }
        );
    }
    out
}
