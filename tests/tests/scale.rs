//! Real agents on a catalog ten times the project's first goal (the
//! 10x of `cargo xtask bench --catalog`): 10,000 services of 10 instances
//! (100 with one on the caller's node), 1,000 nodes, 20,000 intentions,
//! under a default deny. They apply it as a reload, put every destination
//! and the intentions' rules in the kernel, and follow a change. The
//! times are printed, not asserted (debug build, shared machine). Needs
//! root.
use std::{
    fmt::Write as _,
    fs,
    time::{Duration, Instant},
};

use mesh_tests::{API_PORT, Mesh, VIP, vip, wait_until};

const NODES: usize = 1_000;
const SERVICES: usize = 10_000;
const INTENTIONS: usize = 20_000;
/// Every `LOCAL_EVERY`th service has an instance on the caller's node too.
const LOCAL_EVERY: usize = 100;

#[test]
fn a_node_applies_a_catalog_of_ten_thousand_services_and_enforces_it() {
    let mesh = Mesh::nodes(&["za", "zb"])
        .default_policy("deny")
        .service("web", "za", 8080)
        .service_with("api", "zb", API_PORT, |s| s.vip(VIP))
        .intention("web", "api", "allow")
        .start();
    mesh.start_echo_server("zb", "api", API_PORT);
    let mut text = fs::read_to_string(mesh.config()).expect("config");
    for n in 0..NODES {
        let _ = writeln!(
            text,
            "[[node]]\nname = \"x{n}\"\naddress = \"10.201.{}.{}\"\n",
            n / 250,
            n % 250 + 1
        );
    }
    for s in 0..SERVICES {
        let mut nodes: Vec<String> = (0..10)
            .map(|k| format!("\"x{}\"", (s + k * 7) % NODES))
            .collect();
        if s % LOCAL_EVERY == 0 {
            nodes[0] = "\"za\"".to_owned();
        }
        let _ = writeln!(
            text,
            "[[service]]\nname = \"s{s}\"\nnodes = [{}]\nport = {}\n",
            nodes.join(", "),
            20_000 + s
        );
    }
    for i in 0..INTENTIONS {
        let (a, b) = (i / 2, (i / 2 + 1 + i % 2) % SERVICES);
        let _ = writeln!(
            text,
            "[[intention]]\nsource = \"s{a}\"\ndestination = \"s{b}\"\naction = \"allow\"\n"
        );
    }
    let started = Instant::now();
    // Whole, as an editor saving it would (the agent polls the file).
    let next = mesh.dir.join("mesh.toml.next");
    fs::write(&next, &text).expect("write the large config");
    fs::rename(&next, mesh.config()).expect("move it in place");
    let applied = |node: &str| {
        fs::read_to_string(mesh.agent_log(node))
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.contains("config applied") && l.contains(&format!("services={}", SERVICES + 2))
            })
    };
    assert!(
        wait_until(Duration::from_secs(120), || applied("za") && applied("zb")),
        "not applied within 120 s"
    );
    eprintln!("applied on both nodes in {:?}", started.elapsed());
    // The allowed pair works; a local service with no intention to api is
    // refused in the kernel.
    assert_eq!(mesh.echo("za", "web", vip(), API_PORT, "at 10x"), "at 10x");
    let denied = mesh.transfer("za", Some("s0"), vip(), API_PORT, 10);
    assert!(denied.starts_with("ERRNO 1 "), "s0 -> api: {denied}");
    // One intention more, written as the CLI writes it: applied and in
    // the kernel (s0 may call api) as a reload of the whole catalog.
    let written = Instant::now();
    let (ok, out) = mesh.cli(&["intention", "create", "--allow", "s0", "api"]);
    assert!(ok, "intention create: {out}");
    assert!(
        wait_until(Duration::from_secs(60), || {
            mesh.echo("za", "s0", vip(), API_PORT, "now allowed") == "now allowed"
        }),
        "s0 -> api still refused a minute after the intention"
    );
    eprintln!("one intention applied in {:?}", written.elapsed());
    let mut get = mesh.cmd("za", "curl");
    get.args(["-sS", "-m", "5", "http://127.0.0.1:15000/metrics"]);
    let metrics = mesh_tests::run_to_string(&mut get, Duration::from_secs(10));
    // Every destination in the kernel (VIPs and instance addresses), and
    // about one rule per intention of a local caller, not one per denied
    // (local caller, destination) pair (a million here).
    let destinations = SERVICES + 2 + SERVICES * 10 + 2;
    for (map, least, most) in [
        ("SERVICES", destinations, destinations),
        ("RULES", 2, 1_000),
    ] {
        let prefix = format!("mesh_ebpf_map_entries{{map=\"{map}\"}} ");
        let entries: usize = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no entry count of {map}: {metrics}"));
        assert!(
            (least..=most).contains(&entries),
            "{map}: {entries} entries"
        );
    }
}
