//! The measurements of one run: each part's modes back to back, the mesh
//! under flood, one instance against two, and the agents' memory.

use std::collections::BTreeMap;

use super::{
    BULK_SECS, CONNS, CONTAINER_COUNTS, CONTAINERS, FLOODS, IDLE_COUNTS, INSTANCES, MODES, Options,
    PARALLEL, PARALLEL_RATE, RR_COUNT, Samples,
    ebpf::bpf_counters,
    measures,
    mesh::{Bench, caller, field},
};

/// The sizes of a run: a full run's, or a smoke run's seconds-long ones.
pub(super) struct Sizes {
    /// Seconds of bulk.
    pub(super) secs: u64,
    /// Round trips of an rr run.
    pub(super) rr_count: usize,
    /// Connections one after another of a connrate run.
    pub(super) conns: usize,
    /// Idle connections held, one count per measurement.
    pub(super) idle: Vec<usize>,
    /// Runs of every part.
    pub(super) runs: usize,
    /// Containers whose cost to the agent is measured.
    pub(super) containers: usize,
}

impl Sizes {
    pub(super) fn of(opts: &Options) -> Self {
        if opts.smoke {
            Self {
                secs: 1,
                rr_count: 200,
                conns: 100,
                idle: vec![100],
                runs: 1,
                containers: CONTAINER_COUNTS[1],
            }
        } else {
            Self {
                secs: BULK_SECS,
                rr_count: RR_COUNT,
                conns: CONNS,
                idle: IDLE_COUNTS.to_vec(),
                runs: opts.runs.max(1),
                containers: CONTAINER_COUNTS[0],
            }
        }
    }
}

/// The samples of one column (a mode, flood or instances column) of a
/// table of (metric, column) samples.
struct Column<'m, 'a> {
    samples: &'m mut BTreeMap<(String, &'a str), Vec<f64>>,
    column: &'a str,
}

impl Column<'_, '_> {
    /// Adds `v` to the samples of `metric` in this column.
    fn put(&mut self, metric: &str, v: f64) {
        self.samples
            .entry((metric.to_owned(), self.column))
            .or_default()
            .push(v);
    }
}

/// Run `run` (0-based) of every part `opts` wants, but memory and the unit
/// benches.
pub(super) fn one_run(
    bench: &Bench,
    opts: &Options,
    sizes: &Sizes,
    run: usize,
    all: &mut Samples<'static>,
) -> anyhow::Result<()> {
    let runs = sizes.runs;
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
        part_of_mode(bench, sizes, part, mode, all)?;
    }
    if opts.wants("flood") {
        eprintln!("bench: run {}/{runs}: mesh under flood", run + 1);
        floods(bench, sizes, &mut all.floods)?;
    }
    if opts.wants("instances") {
        eprintln!("bench: run {}/{runs}: 1 vs 2 instances", run + 1);
        side_by_side(bench, sizes, run, INSTANCES, &mut all.instances)?;
    }
    if opts.wants("container") {
        eprintln!(
            "bench: run {}/{runs}: on the host vs in a container",
            run + 1
        );
        side_by_side(bench, sizes, run, CONTAINERS, &mut all.containers)?;
    }
    Ok(())
}

/// Measures `part` (bulk, rr or connrate) of `mode` once; the `mesh`
/// mode's runs are also the eBPF window.
fn part_of_mode(
    bench: &Bench,
    sizes: &Sizes,
    part: &str,
    mode: &'static str,
    all: &mut Samples<'static>,
) -> anyhow::Result<()> {
    // The eBPF window: the default mesh's runs.
    let bpf_before = (mode == "mesh").then(bpf_counters).transpose()?;
    let mut out = Column {
        samples: &mut all.modes,
        column: mode,
    };
    let app_conns = match part {
        "bulk" => bulk(bench, sizes, mode, &mut out)?,
        "rr" => rr(bench, sizes, mode, &mut out)?,
        "connrate" => connrate(bench, sizes, mode, &mut out)?,
        _ => 0,
    };
    if let Some(before) = bpf_before {
        all.bpf.add(&before, &bpf_counters()?, app_conns);
    }
    Ok(())
}

/// One bulk stream, and the CPU the proxies of `mode` spent on it; the
/// app connections it made.
fn bulk(bench: &Bench, sizes: &Sizes, mode: &str, out: &mut Column) -> anyhow::Result<usize> {
    let cpu_before = bench.cpu_seconds(mode)?;
    let bulk = bench.client(mode, &["bulk", "--secs", &sizes.secs.to_string()])?;
    let cpu_after = bench.cpu_seconds(mode)?;
    let (user, system) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    let bytes = field(&bulk, "bytes")?;
    out.put("bulk Gbit/s", field(&bulk, "gbit_per_s")?);
    if mode != "direct" && bytes > 0.0 {
        out.put(
            "proxy CPU s per GB (both ends)",
            (user + system) / (bytes / 1e9),
        );
        // The kernel's share: socket copies and TCP, which any
        // userspace proxy pays per byte.
        out.put(
            "proxy system CPU s per GB (both ends)",
            system / (bytes / 1e9),
        );
    }
    Ok(1)
}

/// rr of 1 B and of 1 KiB; the app connections it made.
fn rr(bench: &Bench, sizes: &Sizes, mode: &str, out: &mut Column) -> anyhow::Result<usize> {
    let mut app_conns = 0;
    for size in ["1", "1024"] {
        let rr = bench.client(
            mode,
            &["rr", "--size", size, "--count", &sizes.rr_count.to_string()],
        )?;
        app_conns += 1;
        out.put(&format!("rr {size} B p50 us"), field(&rr, "p50_us")?);
        out.put(&format!("rr {size} B p99 us"), field(&rr, "p99_us")?);
    }
    Ok(app_conns)
}

/// New connections one after another (with the caller agent's handshakes
/// for a mesh mode), then [`PARALLEL`] at a time; the app connections it
/// made.
fn connrate(bench: &Bench, sizes: &Sizes, mode: &str, out: &mut Column) -> anyhow::Result<usize> {
    let conns = sizes.conns;
    let before = bench.outbound_handshakes(caller(mode));
    let cr = bench.client(mode, &["connrate", "--count", &conns.to_string()])?;
    let after = bench.outbound_handshakes(caller(mode));
    out.put("new conns per s", field(&cr, "per_s")?);
    out.put("new conn p50 us", field(&cr, "p50_us")?);
    out.put("new conn p99 us", field(&cr, "p99_us")?);
    // Shows which hop a mesh mode used: mesh/1 makes one
    // handshake per connection, mesh/2 reuses its pool.
    if mode.starts_with("mesh") {
        let (full, resumed) = (after.0 - before.0, after.1 - before.1);
        out.put(
            "caller agent handshakes per new conn",
            (full + resumed) / conns as f64,
        );
        if full + resumed > 0.0 {
            out.put(
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
    out.put(PARALLEL_RATE, field(&cr, "per_s")?);
    Ok(3 * conns)
}

/// The mesh's rr and connection rate under each of [`FLOODS`].
fn floods(
    bench: &Bench,
    sizes: &Sizes,
    samples: &mut BTreeMap<(String, &'static str), Vec<f64>>,
) -> anyhow::Result<()> {
    for flood in FLOODS {
        let flooding = bench.flood(flood)?;
        let rr = bench.client(
            "mesh",
            &["rr", "--size", "1", "--count", &sizes.rr_count.to_string()],
        )?;
        let cr = bench.client("mesh", &["connrate", "--count", &sizes.conns.to_string()])?;
        drop(flooding);
        let mut out = Column {
            samples,
            column: flood,
        };
        out.put("rr 1 B p50 us", field(&rr, "p50_us")?);
        out.put("new conns per s", field(&cr, "per_s")?);
    }
    Ok(())
}

/// The mesh's rr and connection rate to each of `columns` ([`INSTANCES`],
/// [`CONTAINERS`]: (column, client mode)), and the share of bench-a's
/// handshakes that resumed.
fn side_by_side<const N: usize>(
    bench: &Bench,
    sizes: &Sizes,
    run: usize,
    columns: [(&'static str, &'static str); N],
    samples: &mut BTreeMap<(String, &'static str), Vec<f64>>,
) -> anyhow::Result<()> {
    // Alternate which goes first, so none always follows the
    // other's teardown.
    let mut order = columns;
    if run % 2 == 1 {
        order.reverse();
    }
    for (column, mode) in order {
        let before = bench.outbound_handshakes("bench-a");
        let rr = bench.client(
            mode,
            &["rr", "--size", "1", "--count", &sizes.rr_count.to_string()],
        )?;
        let cr = bench.client(mode, &["connrate", "--count", &sizes.conns.to_string()])?;
        let after = bench.outbound_handshakes("bench-a");
        let (full, resumed) = (after.0 - before.0, after.1 - before.1);
        let mut out = Column { samples, column };
        out.put("new conns per s", field(&cr, "per_s")?);
        out.put("rr 1 B p50 us", field(&rr, "p50_us")?);
        // What a new connection costs depends most on this: a
        // full handshake signs and verifies, a resumed one not.
        if full + resumed > 0.0 {
            out.put("handshakes resumed %", 100.0 * resumed / (full + resumed));
        }
    }
    Ok(())
}

/// Where the two-instance connections went, as bench-a's agent counted
/// (nothing if the instances part did not run).
pub(super) fn spread(bench: &Bench, all: &Samples) -> Vec<(String, f64)> {
    if all.instances.is_empty() {
        return Vec::new();
    }
    ["bench-b", "bench-c"]
        .iter()
        .map(|n| (format!("connections to {n}"), bench.server2_connections(n)))
        .collect()
}

/// The agents' RSS when idle, and per idle connection for each count of
/// `sizes.idle` if `opts` wants the idle part.
pub(super) fn memory(
    bench: &Bench,
    opts: &Options,
    sizes: &Sizes,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut extra = BTreeMap::new();
    extra.insert(
        "agents RSS idle MiB".to_owned(),
        bench.agents_rss_kib()? / 1024.0,
    );
    // Before the idle connections: their sockets take a while to go,
    // and the heap they leave would hide what containers take.
    if opts.wants("container") {
        let n = sizes.containers;
        let cost = bench.container_cost(n)?;
        extra.insert(
            format!("agent RSS KiB per container ({n} served)"),
            cost.rss_kib,
        );
        extra.insert(format!("agent fds per container ({n} served)"), cost.fds);
        extra.insert(format!("agent fds left after the {n} went"), cost.fds_left);
    }
    for &n in sizes.idle.iter().filter(|_| opts.wants("idle")) {
        let per_conn = bench.idle_kib_per_conn(n)?;
        extra.insert(
            format!("KiB per idle proxied conn ({n} open, both agents)"),
            per_conn,
        );
    }
    Ok(extra)
}
