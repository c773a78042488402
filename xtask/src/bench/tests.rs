use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path};

use serde_json::Value;

use super::{
    CONTAINERS, FLOODS, INSTANCES, MODES, Options, PARALLEL, PARALLEL_RATE, Samples,
    ebpf::{BPF_PROGRAMS, BpfWindow},
    measures,
    report::document,
    sections::sections,
};

/// Made-up samples of every part.
fn samples() -> Samples<'static> {
    let three = vec![100.0, 120.0, 110.0];
    let mut modes = BTreeMap::new();
    for mode in MODES {
        modes.insert(("new conns per s".to_owned(), mode), three.clone());
    }
    let floods = FLOODS
        .iter()
        .map(|f| (("rr 1 B p50 us".to_owned(), *f), three.clone()))
        .collect();
    let instances = INSTANCES
        .iter()
        .map(|(c, _)| (("new conns per s".to_owned(), *c), three.clone()))
        .collect();
    let containers = CONTAINERS
        .iter()
        .map(|(c, _)| (("new conns per s".to_owned(), *c), three.clone()))
        .collect();
    let mut bpf = BpfWindow::default();
    let mut after = [(0.0, 0.0); BPF_PROGRAMS.len()];
    after[0] = (3000.0, 10.0);
    bpf.add(&[(0.0, 0.0); BPF_PROGRAMS.len()], &after, 5);
    Samples {
        modes,
        floods,
        instances,
        containers,
        ui: BTreeMap::new(),
        spread: vec![("connections to bench-b".to_owned(), 3.0)],
        extra: [("agents RSS idle MiB".to_owned(), 20.0)].into(),
        bpf,
        units: vec!["| pick among 1000 instances, lb random | 40.0 | ns per pick |".to_owned()],
        stunnel_configs: vec![("stunnel, client (bench-a)".to_owned(), "[cli]\n".to_owned())],
        stunnel_handshakes: vec![("stunnel", 4, 0), ("stunnel resumed", 1, 3)],
    }
}

#[test]
fn report_names_how_it_was_made_and_explains_every_table() {
    let (sections, json) = sections(&samples(), 3);
    let doc = document(&sections, 3).unwrap();
    for item in [
        "- Date: ",
        "- Commit: ",
        "- Machine: ",
        "- Runs: 3",
        "- Command: `cargo xtask ",
    ] {
        assert!(doc.contains(item), "no {item:?} in:\n{doc}");
    }
    let titles: Vec<&str> = sections.iter().map(|s| s.title.as_str()).collect();
    assert_eq!(
        titles,
        [
            "The mesh against direct TCP, a plain relay and stunnel",
            "stunnel's configs",
            "eBPF programs",
            "Memory",
            "Under a handshake flood",
            "Two instances vs one",
            "Into a container vs on the host",
            "Unit costs",
            "Targets",
        ]
    );
    for s in &sections {
        assert!(!s.prose.is_empty() && !s.table.is_empty(), "{}", s.title);
        assert!(
            doc.contains(&s.prose) && doc.contains(&s.table),
            "{}",
            s.title
        );
    }
    // Medians with min-max; a program that did not run says 0 calls.
    assert!(doc.contains("| new conns per s | 110.0 (100.0-120.0) |"));
    assert!(doc.contains("| mesh_connect4 | bench-a | 10 | 300.0 | 2.00 |"));
    assert!(doc.contains("| mesh_connect6 | bench-a | 0 | - | 0.00 |"));
    assert!(doc.contains("stunnel: 4 full, 0 resumed; stunnel resumed: 1 full, 3 resumed"));
    assert_eq!(json["ebpf"]["mesh_connect6"]["ns_per_call"], Value::Null);
}

/// Made-up figures for every metric each part measures, each mode,
/// flood and column with its own values; one cell left out.
fn full_samples() -> Samples<'static> {
    Samples {
        modes: mode_samples(),
        floods: flood_samples(),
        instances: instance_samples(),
        containers: container_samples(),
        ui: ui_samples(),
        spread: vec![
            ("connections to bench-b".to_owned(), 2001.0),
            ("connections to bench-c".to_owned(), 1999.0),
        ],
        extra: [
            ("agents RSS idle MiB".to_owned(), 21.25),
            (
                "KiB per idle proxied conn (1000 open, both agents)".to_owned(),
                9.5,
            ),
            (
                "KiB per idle proxied conn (5000 open, both agents)".to_owned(),
                8.75,
            ),
            ("agent RSS KiB per container (100 served)".to_owned(), 41.5),
            ("agent fds per container (100 served)".to_owned(), 4.0),
            ("agent fds left after the 100 went".to_owned(), 0.0),
        ]
        .into(),
        bpf: bpf_window(),
        units: vec![
            "| pick among 1000 instances, lb random | 40.0 | ns per pick |".to_owned(),
            "| mesh/2 stream p50 | 12.5 | us |".to_owned(),
        ],
        stunnel_configs: vec![
            (
                "stunnel, client (bench-a)".to_owned(),
                "[cli]\nclient = yes\n".to_owned(),
            ),
            ("stunnel, server (bench-b)".to_owned(), "[srv]\n".to_owned()),
        ],
        stunnel_handshakes: vec![("stunnel", 4, 0), ("stunnel resumed", 1, 3)],
    }
}

/// Made-up samples: four runs around `base`.
fn runs(base: f64) -> Vec<f64> {
    vec![base * 1.1, base * 0.9, base, base * 1.25]
}

/// Made-up samples of each metric of each mode that measures it, but
/// one.
fn mode_samples() -> BTreeMap<(String, &'static str), Vec<f64>> {
    let parallel = format!("new conns per s ({PARALLEL} at a time)");
    let mode_metrics = [
        ("bulk", "bulk Gbit/s"),
        ("bulk", "proxy CPU s per GB (both ends)"),
        ("bulk", "proxy system CPU s per GB (both ends)"),
        ("rr", "rr 1 B p50 us"),
        ("rr", "rr 1 B p99 us"),
        ("rr", "rr 1024 B p50 us"),
        ("rr", "rr 1024 B p99 us"),
        ("connrate", "new conns per s"),
        ("connrate", "new conn p50 us"),
        ("connrate", "new conn p99 us"),
        ("connrate", "caller agent handshakes per new conn"),
        ("connrate", "caller agent handshakes resumed %"),
        ("connrate", parallel.as_str()),
    ];
    let mut modes = BTreeMap::new();
    for (i, (part, metric)) in mode_metrics.iter().enumerate() {
        for (j, mode) in MODES.into_iter().enumerate() {
            let skip = (metric.starts_with("proxy") && mode == "direct")
                || (metric.starts_with("caller") && !mode.starts_with("mesh"))
                || (*metric == "rr 1 B p99 us" && mode == "mesh/1");
            if measures(part, mode) && !skip {
                let base = (i as f64 + 1.0) * 13.7 + j as f64 * 4.3;
                modes.insert(((*metric).to_owned(), mode), runs(base));
            }
        }
    }
    modes
}

/// Made-up samples of each flood.
fn flood_samples() -> BTreeMap<(String, &'static str), Vec<f64>> {
    let mut floods = BTreeMap::new();
    for (j, flood) in FLOODS.into_iter().enumerate() {
        floods.insert(("rr 1 B p50 us".to_owned(), flood), runs(60.0 + j as f64));
        floods.insert(
            ("new conns per s".to_owned(), flood),
            runs(900.0 - 20.0 * j as f64),
        );
    }
    floods
}

/// Made-up samples of each instances column.
fn instance_samples() -> BTreeMap<(String, &'static str), Vec<f64>> {
    let mut instances = BTreeMap::new();
    for (j, (column, _)) in INSTANCES.into_iter().enumerate() {
        instances.insert(
            ("new conns per s".to_owned(), column),
            runs(950.0 - 7.0 * j as f64),
        );
        instances.insert(
            ("rr 1 B p50 us".to_owned(), column),
            runs(55.0 + 1.5 * j as f64),
        );
        instances.insert(
            ("handshakes resumed %".to_owned(), column),
            runs(90.0 + j as f64),
        );
    }
    instances
}

/// Made-up samples of each containers column.
fn container_samples() -> BTreeMap<(String, &'static str), Vec<f64>> {
    let mut containers = BTreeMap::new();
    for (j, (column, _)) in CONTAINERS.into_iter().enumerate() {
        containers.insert(
            ("new conns per s".to_owned(), column),
            runs(940.0 - 30.0 * j as f64),
        );
        containers.insert(
            ("rr 1 B p50 us".to_owned(), column),
            runs(56.0 + 2.5 * j as f64),
        );
    }
    containers
}

fn ui_samples() -> BTreeMap<(String, &'static str), Vec<f64>> {
    let mut ui = BTreeMap::new();
    for (j, (_, page)) in super::ui::PAGES.into_iter().enumerate() {
        ui.insert(
            (super::ui::FIRST_DRAW.to_owned(), page),
            runs(120.0 + 10.0 * j as f64),
        );
    }
    ui.insert(("document KiB".to_owned(), "document"), runs(400.0));
    ui.insert(("document served ms".to_owned(), "document"), runs(12.0));
    ui
}

/// A made-up eBPF window in which the first program did not run.
fn bpf_window() -> BpfWindow {
    let mut bpf = BpfWindow::default();
    let mut after = [(0.0, 0.0); BPF_PROGRAMS.len()];
    for (i, slot) in after.iter_mut().enumerate().skip(1) {
        *slot = (1234.5 * i as f64, 7.0 * i as f64);
    }
    bpf.add(&[(0.0, 0.0); BPF_PROGRAMS.len()], &after, 4003);
    bpf
}

/// The report's sections as [`document`] writes them, and the JSON.
fn rendered(all: &Samples, runs: usize) -> String {
    let (sections, json) = sections(all, runs);
    let mut out = format!("# runs: {runs}\n");
    for s in &sections {
        let _ = write!(out, "\n## {}\n\n{}\n\n{}", s.title, s.prose, s.table);
    }
    out + &serde_json::to_string_pretty(&Value::Object(json)).unwrap() + "\n"
}

/// The report from fixed samples, byte for byte as recorded in
/// `xtask/testdata/bench-report.txt` (`XTASK_BLESS=1` rewrites it).
#[test]
fn report_text_is_unchanged() {
    let got = rendered(&full_samples(), 3) + &rendered(&full_samples(), 1);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/bench-report.txt");
    if std::env::var_os("XTASK_BLESS").is_some() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &got).unwrap();
    }
    let want = fs::read_to_string(&path).unwrap();
    assert!(got == want, "the report differs from {}", path.display());
}

#[test]
fn the_parallel_rate_names_its_clients() {
    assert_eq!(
        PARALLEL_RATE,
        format!("new conns per s ({PARALLEL} at a time)")
    );
}

#[test]
fn only_a_full_run_writes_the_report() {
    let opts = |smoke, only: &[&str]| Options {
        runs: 3,
        smoke,
        only: only.iter().map(|p| (*p).to_owned()).collect(),
    };
    assert!(opts(false, &[]).writes());
    assert!(!opts(true, &[]).writes());
    assert!(!opts(false, &["rr"]).writes());
}
