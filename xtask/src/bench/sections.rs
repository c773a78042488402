//! The report's sections: a table and its explanation per part, and the
//! samples as JSON.

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::{Map, Value, json};

use super::{
    BULK_SECS, CONNS, CONTAINERS, FLOOD_CONNS, FLOODS, IDLE_HOLD_SECS, INSTANCES, MODES, PARALLEL,
    RR_COUNT, Samples,
    ebpf::BPF_PROGRAMS,
    stunnel::{STUNNEL_CHECK_CONNS, STUNNEL_SUITE},
    targets::targets,
};

/// A part of the report: its title, what it measures (for the file), its
/// table.
pub(super) struct Section {
    pub(super) title: String,
    pub(super) prose: String,
    pub(super) table: String,
}

/// The report's sections, and every sample as JSON.
pub(super) fn sections(all: &Samples, runs: usize) -> (Vec<Section>, Map<String, Value>) {
    let mut sections = Vec::new();
    let mut json = Map::new();
    for section in SECTIONS {
        sections.extend(section(all, runs, &mut json));
    }
    (sections, json)
}

/// The report's sections in order: each from the samples, `None` if it
/// has nothing to show; each adds its samples to the JSON.
type SectionFn = fn(&Samples, usize, &mut Map<String, Value>) -> Option<Section>;
const SECTIONS: [SectionFn; 10] = [
    modes,
    stunnel_configs,
    ebpf,
    memory,
    floods,
    instances,
    containers,
    web_ui,
    units,
    targets_section,
];

/// (median, min, max) of the samples of `metric` in `column`.
fn stats_of(
    samples: &BTreeMap<(String, &str), Vec<f64>>,
    metric: &str,
    column: &str,
) -> Option<(f64, f64, f64)> {
    samples.get(&(metric.to_owned(), column)).map(|v| stats(v))
}

/// A cell: the median, with (min-max) if there were several runs.
fn fmt(s: Option<(f64, f64, f64)>, runs: usize) -> String {
    match s {
        Some((med, lo, hi)) if runs > 1 => format!("{med:.1} ({lo:.1}-{hi:.1})"),
        Some((med, _, _)) => format!("{med:.1}"),
        None => "-".to_owned(),
    }
}

/// The ratio of two cells' medians.
fn ratio(a: Option<(f64, f64, f64)>, b: Option<(f64, f64, f64)>) -> String {
    match (a, b) {
        (Some((a, _, _)), Some((b, _, _))) if b != 0.0 => format!("{:.2}", a / b),
        _ => "-".to_owned(),
    }
}

/// The metrics of a table of (metric, column) samples, in order.
fn metrics_of(samples: &BTreeMap<(String, &str), Vec<f64>>) -> Vec<String> {
    let mut m: Vec<String> = samples.keys().map(|(k, _)| k.clone()).collect();
    m.dedup();
    m
}

/// The main table: each mode's figures and the mesh's ratio to each other mode.
fn modes(all: &Samples, runs: usize, json: &mut Map<String, Value>) -> Option<Section> {
    let Samples {
        modes: samples,
        stunnel_handshakes,
        ..
    } = all;
    if samples.is_empty() {
        return None;
    }
    let mut table = format!(
        "| metric | {} | mesh/direct | mesh/relay | mesh/stunnel | mesh/stunnel resumed | mesh/mesh/1 |\n|---|{}---|---|---|---|---|\n",
        MODES.join(" | "),
        "---|".repeat(MODES.len())
    );
    for metric in metrics_of(samples) {
        let [d, r, s, sr, m1, m] = MODES.map(|mode| stats_of(samples, &metric, mode));
        let _ = writeln!(
            table,
            "| {metric} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt(d, runs),
            fmt(r, runs),
            fmt(s, runs),
            fmt(sr, runs),
            fmt(m1, runs),
            fmt(m, runs),
            ratio(m, d),
            ratio(m, r),
            ratio(m, s),
            ratio(m, sr),
            ratio(m, m1)
        );
        json.insert(metric.clone(), by_column(samples, &metric, &MODES));
    }
    Some(Section {
        title: "The mesh against direct TCP, a plain relay and stunnel".to_owned(),
        prose: modes_prose(stunnel_handshakes),
        table,
    })
}

/// The stunnel configs as run, and the handshakes of their check.
fn stunnel_configs(all: &Samples, _: usize, json: &mut Map<String, Value>) -> Option<Section> {
    let Samples {
        stunnel_configs,
        stunnel_handshakes,
        ..
    } = all;
    if stunnel_configs.is_empty() {
        return None;
    }
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
    json.insert(
        "stunnel handshakes (check)".to_owned(),
        json!(
            stunnel_handshakes
                .iter()
                .map(|(mode, full, resumed)| (*mode, json!({"full": full, "resumed": resumed})))
                .collect::<BTreeMap<_, _>>()
        ),
    );
    Some(Section {
        title: "stunnel's configs".to_owned(),
        prose: "Exactly as run; the handshake check ran the same configs with `debug = info` added. The two modes differ only in `sessionResume`.".to_owned(),
        table: table.trim_end().to_owned() + "\n",
    })
}

/// The eBPF programs' calls and run time in the `mesh` mode's window.
fn ebpf(all: &Samples, _: usize, json: &mut Map<String, Value>) -> Option<Section> {
    let Samples { bpf, .. } = all;
    if !bpf.measured {
        return None;
    }
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
    Some(Section {
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
    })
}

/// The agents' memory.
fn memory(all: &Samples, _: usize, json: &mut Map<String, Value>) -> Option<Section> {
    let Samples { extra, .. } = all;
    if extra.is_empty() {
        return None;
    }
    let mut table = "| mesh only | value |\n|---|---|\n".to_owned();
    for (k, v) in extra {
        let _ = writeln!(table, "| {k} | {v:.1} |");
        json.insert(k.clone(), json!(v));
    }
    Some(Section {
        title: "Memory".to_owned(),
        prose: format!(
            "agents RSS idle: the resident memory of bench-a's and bench-b's agents after all \
             runs (heap kept from them included). KiB per idle proxied conn: the two agents' RSS \
             growth per connection while `meshbench idle` holds that many open through the mesh, \
             read one second after they opened; after {IDLE_HOLD_SECS} s meshbench checks that every \
             one still echoes (one that does not fails the run). 10,000 would need over 20,000 \
             descriptors in one agent (two sockets per proxied connection). Per container: \
             bench-b's agent's RSS and open fds once it serves that many containers (bare network \
             namespaces, see below), over what it had before, per container, read before the idle \
             connections (fds once they hold still for 1 s); and its fds once the containers are \
             gone and forgotten, over what it had before (0: nothing left)."
        ),
        table,
    })
}

/// The mesh's figures under each flood.
fn floods(all: &Samples, runs: usize, json: &mut Map<String, Value>) -> Option<Section> {
    let Samples {
        floods: flood_samples,
        ..
    } = all;
    if flood_samples.is_empty() {
        return None;
    }
    let mut table = format!(
        "| mesh under flood ({FLOOD_CONNS} connections held without a handshake) | {} | node/quiet | stranger/quiet | control/quiet |\n|---|{}---|---|---|\n",
        FLOODS.join(" | "),
        "---|".repeat(FLOODS.len())
    );
    let mut under = serde_json::Map::new();
    for metric in metrics_of(flood_samples) {
        let [q, n, x, c] = FLOODS.map(|flood| stats_of(flood_samples, &metric, flood));
        let _ = writeln!(
            table,
            "| {metric} | {} | {} | {} | {} | {} | {} | {} |",
            fmt(q, runs),
            fmt(n, runs),
            fmt(x, runs),
            fmt(c, runs),
            ratio(n, q),
            ratio(x, q),
            ratio(c, q)
        );
        under.insert(metric.clone(), by_column(flood_samples, &metric, &FLOODS));
    }
    json.insert("under flood".to_owned(), Value::Object(under));
    Some(Section {
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
    })
}

/// The mesh to one instance, to two, and to two of which one passes.
fn instances(all: &Samples, runs: usize, json: &mut Map<String, Value>) -> Option<Section> {
    let Samples {
        instances: instance_samples,
        spread,
        ..
    } = all;
    if instance_samples.is_empty() {
        return None;
    }
    let (mut table, mut section) = versus_first(
        instance_samples,
        runs,
        "mesh to a service with",
        &INSTANCES.map(|(column, _)| column),
        &["2/1", "2 with 1 passing/1"],
    );
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
    Some(Section {
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
    })
}

/// A table of `samples` with a row per metric: the cell of each of
/// `columns`, then each later column over the first (headed `ratios`);
/// and the samples by column as JSON.
fn versus_first(
    samples: &BTreeMap<(String, &str), Vec<f64>>,
    runs: usize,
    corner: &str,
    columns: &[&str],
    ratios: &[&str],
) -> (String, Map<String, Value>) {
    let headers: Vec<&str> = [corner]
        .iter()
        .chain(columns)
        .chain(ratios)
        .copied()
        .collect();
    let mut table = format!(
        "| {} |\n|{}\n",
        headers.join(" | "),
        "---|".repeat(headers.len())
    );
    let mut section = Map::new();
    for metric in metrics_of(samples) {
        let cells: Vec<_> = columns
            .iter()
            .map(|column| stats_of(samples, &metric, column))
            .collect();
        let shown = cells.iter().map(|c| fmt(*c, runs));
        let over = cells.iter().skip(1).map(|c| ratio(*c, cells[0]));
        let row: Vec<String> = std::iter::once(metric.clone())
            .chain(shown)
            .chain(over)
            .collect();
        let _ = writeln!(table, "| {} |", row.join(" | "));
        section.insert(metric.clone(), by_column(samples, &metric, columns));
    }
    (table, section)
}

/// The mesh to a service on the host and to one in a container.
fn containers(all: &Samples, runs: usize, json: &mut Map<String, Value>) -> Option<Section> {
    let samples = &all.containers;
    if samples.is_empty() {
        return None;
    }
    let (table, section) = versus_first(
        samples,
        runs,
        "mesh to a service",
        &CONTAINERS.map(|(column, _)| column),
        &["container/host"],
    );
    json.insert("containers".to_owned(), Value::Object(section));
    Some(Section {
        title: "Into a container vs on the host".to_owned(),
        prose: format!(
            "The mesh's connection rate ({CONNS} one after another) and rr p50 (1 B, {RR_COUNT} round \
             trips over one connection) from bench-a to `server` (`meshbench serve` on bench-b's own \
             loopback) and to `server4` (the same server in a podman container on bench-b, its own \
             network namespace, under server4's cgroup: bench-b's agent connects to it with a socket \
             made in the container's namespace), both in each run, the order swapped every other \
             run. What many containers cost the agent is in \"Memory\" (bare `unshare --net` \
             namespaces, each in a cgroup of its own below a service's: the agent's work per \
             container does not depend on the runtime)."
        ),
        table,
    })
}

/// The web UI's pages and document with 1,000 services.
fn web_ui(all: &Samples, runs: usize, json: &mut Map<String, Value>) -> Option<Section> {
    let samples = &all.ui;
    if samples.is_empty() {
        return None;
    }
    let mut table = "| web UI | value |\n|---|---|\n".to_owned();
    let mut section = Map::new();
    let pages = super::ui::PAGES
        .iter()
        .map(|(_, page)| (super::ui::FIRST_DRAW, *page));
    let document = samples
        .keys()
        .filter(|(_, column)| *column == "document")
        .map(|(metric, column)| (metric.as_str(), *column));
    for (metric, column) in pages.chain(document) {
        let Some(values) = samples.get(&(metric.to_owned(), column)) else {
            continue;
        };
        let name = if column == "document" {
            metric.to_owned()
        } else {
            format!("{metric}, {column} page")
        };
        let cell = fmt(stats_of(samples, metric, column), runs);
        let _ = writeln!(table, "| {name} | {cell} |");
        section.insert(name, json!(values));
    }
    json.insert("web UI".to_owned(), Value::Object(section));
    Some(Section {
        title: "Web UI".to_owned(),
        prose: format!(
            "The web UI of an agent whose catalog holds {} services and as many intentions, in \
             headless Chromium (Debian's, through ChromeDriver) on this host, through a port \
             forwarded to the agent's admin endpoint. First draw: from navigation (a new \
             document each time) to the page's first view drawn with the agent's document, as the \
             page's own `performance.now()` tells it. The document: `GET /ui/api/mesh` as curl on \
             the agent's node received it (size, and time to the last byte).",
            super::ui::SERVICES
        ),
        table,
    })
}

/// The unit benches' rows.
fn units(all: &Samples, _: usize, json: &mut Map<String, Value>) -> Option<Section> {
    let Samples { units, .. } = all;
    if units.is_empty() {
        return None;
    }
    let table = format!(
        "| unit cost | value | unit |\n|---|---|---|\n{}\n",
        units.join("\n")
    );
    json.insert("units".to_owned(), json!(units));
    Some(Section {
        title: "Unit costs".to_owned(),
        prose: "`cargo bench -p mesh-agent --bench units` (release; `--only pick`, `--only tunnel`; no \
                namespaces, no root): picking an instance among 1,000 (`proxy::balance`, each policy, \
                every instance passing, the mean of 100,000 picks), and a `mesh/2` stream (open, 1 byte \
                each way, close; `proxy::tunnel` over one loopback TCP connection, no TLS, both ends on \
                one thread; p50 and p99 of 1,000 streams). Each figure is the median of 5 measurements."
            .to_owned(),
        table,
    })
}

/// The issues' targets against the medians, if any was measured.
fn targets_section(all: &Samples, _: usize, _: &mut Map<String, Value>) -> Option<Section> {
    let median =
        |samples, metric: &str, column: &str| stats_of(samples, metric, column).map(|(m, _, _)| m);
    let targets = targets(
        &|metric, mode| median(&all.modes, metric, mode),
        &|metric, flood| median(&all.floods, metric, flood),
        &|metric, column| median(&all.instances, metric, column),
        &|metric, column| median(&all.containers, metric, column),
        &|metric, page| median(&all.ui, metric, page),
        &all.extra,
        &all.bpf,
    );
    if targets.lines().count() <= 2 {
        return None;
    }
    Some(Section {
        title: "Targets".to_owned(),
        prose: "The issues' targets against this run's medians; rr as latency added over direct: \
                (mesh - direct) / (stunnel - direct). The connection-rate targets are shown against \
                both stunnel modes. A target whose figures this run did not measure is left out."
            .to_owned(),
        table: targets,
    })
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
