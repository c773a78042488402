//! Handshake floods against a node's service port: strangers are refused in
//! the kernel, a flooding mesh node gets no more than its share of the
//! handshake slots, and calls from other nodes keep their latency. Real
//! agents and kernel programs; every flood is bounded in count and time.
//! Needs root.
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use mesh_tests::{API_PORT, Mesh, app, run_to_string};

const VIP: &str = "240.0.0.21";
/// Connections a flood keeps open (reopening those the agent closes).
const FLOOD: usize = 1500;
/// A call under a flood may take at most this many times its quiet
/// median, plus [`NOISE_MS`] (calls take ~5 ms here, a new connection
/// each, with the debug agent; a flood the agent does not contain costs
/// far more).
const SLOWDOWN: f64 = 2.0;
/// The shared 2-core machine's own jitter on one median.
const NOISE_MS: f64 = 5.0;

/// Nodes `<p>a` (`web`, the caller), `<p>b` (`api`), `<p>c` (`batch`, a
/// mesh node that will flood), and `<p>x`, which is on the same network but
/// not in the config: a stranger. b's agent gets `b_args`.
fn mesh(p: &str, b_args: &[&str]) -> Mesh {
    let [a, b, c, x] = ["a", "b", "c", "x"].map(|n| format!("{p}{n}"));
    let mesh = Mesh::nodes(&[&a, &b, &c])
        .stranger(&x)
        .default_policy("allow")
        .service("web", &a, 8080)
        .service("batch", &c, 8081)
        .service_with("api", &b, API_PORT, |s| s.vip(VIP))
        .agent_args(&b, b_args)
        .start();
    mesh.start_echo_server(&b, "api", API_PORT);
    mesh
}

/// Milliseconds of `n` calls from `web` on `<p>a` to `api`, one after
/// another; fails the test if any call fails.
fn calls(mesh: &Mesh, p: &str, n: usize) -> Vec<f64> {
    let mut cmd = mesh.cmd_as(&format!("{p}a"), "web", "python3");
    cmd.arg(app("call_latency.py"))
        .arg(VIP)
        .arg(API_PORT.to_string())
        .arg(n.to_string());
    let out = run_to_string(&mut cmd, Duration::from_secs(120));
    let ms: Vec<f64> = out.lines().filter_map(|l| l.parse().ok()).collect();
    assert_eq!(ms.len(), n, "calls failed:\n{out}");
    ms
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Starts `apps/flood_client.py` on `node` against b's service port.
fn flood(mesh: &Mesh, node: &str, b: &str, seconds: u32, mode: &str, sources: &[String]) -> Child {
    let mut cmd: Command = mesh.cmd(node, "python3");
    cmd.arg(app("flood_client.py"))
        .arg(mesh.node(b).v4.to_string())
        .arg(API_PORT.to_string())
        .arg(FLOOD.to_string())
        .arg(seconds.to_string())
        .arg(mode)
        .args(sources)
        .stdout(Stdio::piped());
    let child = cmd.spawn().expect("flood client");
    // Let it reach full strength before measuring anything.
    std::thread::sleep(Duration::from_millis(1500));
    child
}

/// The flood's JSON summary, once it is over.
fn summary(flood: Child) -> serde_json::Value {
    let out = flood.wait_with_output().expect("flood client");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("flood summary: {e}: {:?}", out.stdout))
}

/// Calls under a flood keep their latency: the median at most
/// [`SLOWDOWN`] times the quiet median plus [`NOISE_MS`].
fn assert_latency_kept(p: &str, quiet: &[f64], flooded: &[f64]) {
    let (quiet, flooded) = (median(quiet.to_vec()), median(flooded.to_vec()));
    let bound = quiet * SLOWDOWN + NOISE_MS;
    assert!(
        flooded <= bound,
        "{p}: calls took {flooded:.1} ms under the flood, {quiet:.1} ms without (bound {bound:.1} ms)"
    );
}

#[test]
fn strangers_are_refused_in_the_kernel_and_calls_keep_their_latency() {
    let p = "fk";
    let mesh = mesh(p, &[]);
    let (b, x) = (format!("{p}b"), format!("{p}x"));
    let quiet = calls(&mesh, p, 20);

    // One address: connections that would stall are refused at the SYN.
    let f = flood(&mesh, &x, &b, 6, "stall", &[]);
    let flooded = calls(&mesh, p, 20);
    let one = summary(f);
    assert_eq!(one["connected"], 0, "a stranger got a connection: {one}");
    assert!(one["refused"].as_u64() >= Some(FLOOD as u64), "{one}");
    assert_latency_kept(p, &quiet, &flooded);

    // Many addresses: 50 more on the stranger's interface, connecting as
    // fast as it can for 6 s (tens of thousands of connects; none is held,
    // each is refused at once).
    let k = mesh.node(&x).v4.octets();
    let sources: Vec<String> = (100..150)
        .map(|i| format!("{}.{}.{}.{i}", k[0], k[1], k[2]))
        .collect();
    for s in &sources {
        let mut cmd = mesh.cmd(&x, "ip");
        cmd.args(["addr", "add", &format!("{s}/24"), "dev", "eth0"]);
        run_to_string(&mut cmd, Duration::from_secs(10));
    }
    let f = flood(&mesh, &x, &b, 6, "drip", &sources);
    let flooded = calls(&mesh, p, 20);
    let many = summary(f);
    assert_eq!(many["connected"], 0, "a stranger got a connection: {many}");
    assert_latency_kept(p, &quiet, &flooded);

    // Every refusal is counted, and none of them reached the agent's
    // handshakes.
    let metrics = mesh.metrics(&b);
    let refused = mesh_tests::metric_value(
        &metrics,
        "mesh_handshake_failures_total{side=\"inbound\",reason=\"not_a_mesh_node\"}",
    )
    .unwrap_or(0.0);
    let tried = one["tried"].as_u64().unwrap_or(0) + many["tried"].as_u64().unwrap_or(0);
    assert!(
        refused >= tried as f64,
        "{refused} refusals counted for {tried} connects:\n{metrics}"
    );
    assert!(
        !metrics.contains("reason=\"hello_timeout\""),
        "a stranger's connection reached a handshake:\n{metrics}"
    );
}

#[test]
fn a_flooding_node_gets_its_share_and_calls_from_others_keep_their_latency() {
    let p = "fn";
    let mesh = mesh(p, &[]);
    let (b, c) = (format!("{p}b"), format!("{p}c"));
    let quiet = calls(&mesh, p, 20);

    // c is a mesh node, so the kernel lets it through; it opens 1,500
    // connections and says nothing, reconnecting whatever is closed.
    let f = flood(&mesh, &c, &b, 8, "stall", &[]);
    let held = mesh
        .metric(&b, "mesh_handshakes_in_progress")
        .expect("the handshake gauge is always there");
    let flooded = calls(&mesh, p, 20);
    let stall = summary(f);
    assert_latency_kept(p, &quiet, &flooded);
    // Half of the default 1024 slots, plus at most one caller in flight.
    assert!(
        (64.0..=513.0).contains(&held),
        "{held} handshakes in progress under the flood"
    );

    // The same, dripping one byte of a ClientHello every 0.5 s.
    let f = flood(&mesh, &c, &b, 8, "drip", &[]);
    let flooded = calls(&mesh, p, 20);
    let drip = summary(f);
    assert_latency_kept(p, &quiet, &flooded);

    // The held ones were closed when their ClientHello was late.
    assert!(
        mesh.metric(
            &b,
            "mesh_handshake_failures_total{side=\"inbound\",reason=\"hello_timeout\"}"
        )
        .is_some_and(|n| n > 0.0),
        "stall {stall}, drip {drip}:\n{}",
        mesh.metrics(&b)
    );
}

#[test]
fn without_the_kernel_check_one_stranger_still_gets_only_its_share() {
    let p = "fa";
    // Small limits, so a stranger's flood surely passes half of them.
    let mesh = mesh(
        p,
        &[
            "--inbound-sources",
            "any",
            "--max-handshakes",
            "64",
            "--max-handshakes-per-source",
            "8",
        ],
    );
    let (b, x) = (format!("{p}b"), format!("{p}x"));
    let quiet = calls(&mesh, p, 20);
    let f = flood(&mesh, &x, &b, 8, "stall", &[]);
    let held = mesh
        .metric(&b, "mesh_handshakes_in_progress")
        .expect("the handshake gauge is always there");
    let flooded = calls(&mesh, p, 20);
    let stall = summary(f);
    assert!(
        (8.0..=33.0).contains(&held),
        "{held} handshakes in progress under the flood"
    );
    assert!(
        stall["connected"].as_u64() > Some(0),
        "the kernel refused a stranger with --inbound-sources any: {stall}"
    );
    assert_latency_kept(p, &quiet, &flooded);
    assert!(
        mesh.metric(
            &b,
            "mesh_handshake_failures_total{side=\"inbound\",reason=\"too_many_from_source\"}"
        )
        .is_some_and(|n| n > 0.0),
        "{}",
        mesh.metrics(&b)
    );
}
