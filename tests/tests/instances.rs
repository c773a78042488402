//! Services with an instance on several nodes (`nodes = [...]`): the
//! catalog address names one instance, the VIP is balanced over them (the
//! caller's own node's first, by default) and fails over when one is down,
//! only nodes hosting an instance may vouch for the service, and instances
//! come and go with the file. Real agents in network namespaces; need root.
use std::{
    fs,
    io::{BufRead, BufReader},
    net::IpAddr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use mesh_tests::{API_PORT, Mesh, pki, run_to_string, wait_until};

const VIP: &str = "240.0.0.61";

fn vip() -> IpAddr {
    VIP.parse().expect("vip")
}

/// Connections the echo server behind `log` accepted.
fn accepts(log: &Path) -> usize {
    fs::read_to_string(log).unwrap_or_default().lines().count()
}

/// Echoes a line from `service` on `node` to `host`:5001; asserts it came
/// back.
#[track_caller]
fn call(mesh: &Mesh, node: &str, service: &str, host: IpAddr) {
    let text = format!("hello from {service} on {node}");
    let echoed = mesh.echo(node, service, host, API_PORT, &text);
    assert_eq!(echoed, text, "{service} on {node} -> {host}:{API_PORT}");
}

#[test]
fn each_instance_is_reached_by_its_catalog_address_and_the_vip_prefers_the_local_one() {
    let mesh = Mesh::nodes(&["ia", "ib", "ic"])
        .default_policy("allow")
        .service("web", "ia", 8080)
        .service("tool", "ic", 8081)
        .service_on_with("api", &["ib", "ic"], API_PORT, |s| s.vip(VIP))
        .start();
    let on_b = mesh.start_echo_server("ib", "api", API_PORT);
    let on_c = mesh.start_echo_server("ic", "api", API_PORT);
    let (b, c) = (mesh.node("ib").addr(false), mesh.node("ic").addr(false));
    let counts = || (accepts(&on_b), accepts(&on_c));

    // From a node without an instance: the catalog address is that instance.
    call(&mesh, "ia", "web", b);
    assert_eq!(counts(), (1, 0), "web -> <ib>:5001");
    call(&mesh, "ia", "web", c);
    assert_eq!(counts(), (1, 1), "web -> <ic>:5001");
    // The VIP: one of them (no local one on ia).
    call(&mesh, "ia", "web", vip());
    let (on_b_now, on_c_now) = counts();
    assert_eq!(on_b_now + on_c_now, 3, "web -> VIP");

    // From ic, which hosts an instance: the VIP stays on the node.
    call(&mesh, "ic", "tool", vip());
    assert_eq!(counts(), (on_b_now, on_c_now + 1), "tool on ic -> VIP");
    let log_c = fs::read_to_string(mesh.agent_log("ic")).expect("agent log");
    assert!(
        log_c.contains("outbound, same node"),
        "tool -> VIP left node ic: {log_c}"
    );
    // The other instance by its catalog address, across the wire.
    call(&mesh, "ic", "tool", b);
    assert_eq!(
        counts(),
        (on_b_now + 1, on_c_now + 1),
        "tool on ic -> <ib>:5001"
    );
    let log_b = fs::read_to_string(mesh.agent_log("ib")).expect("agent log");
    assert!(
        log_b.contains("inbound connection done src=tool dst=api"),
        "{log_b}"
    );

    // Each hosting node issued api its own leaf, from its own node CA.
    for node in ["ib", "ic"] {
        let status = mesh.status(node);
        let names: Vec<&str> = status["services"]
            .as_array()
            .expect("services")
            .iter()
            .filter_map(|s| s["name"].as_str())
            .collect();
        assert!(names.contains(&"api"), "{node}: {status}");
    }
    let config = mesh.admin_json("ia", "/config");
    let api = config["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "api"))
        .cloned()
        .expect("api in /config");
    assert_eq!(api["nodes"], serde_json::json!(["ib", "ic"]));
    assert_eq!(api["cgroup"], serde_json::Value::Null, "no api on ia");
}

/// Runs `openssl s_client` on `node` against `addr`:5001 for api,
/// presenting `files`; returns its output.
fn s_client(mesh: &Mesh, node: &str, addr: IpAddr, files: &pki::CertFiles) -> String {
    let mut args = format!(
        "-cert {} -key {}",
        files.cert.display(),
        files.key.display()
    );
    if let Some(chain) = &files.chain {
        args += &format!(" -cert_chain {}", chain.display());
    }
    let mut cmd = mesh.cmd(node, "sh");
    cmd.arg("-c").arg(format!(
        "(printf 'hello\\n'; sleep 1) | openssl s_client -connect {addr}:{API_PORT} -tls1_3 \
         -servername api.svc.mesh.local -alpn mesh/1 {args} 2>&1"
    ));
    run_to_string(&mut cmd, Duration::from_secs(20))
}

#[test]
fn only_nodes_hosting_an_instance_vouch_for_the_service() {
    let mesh = Mesh::nodes(&["va", "vb", "vc"])
        .default_policy("allow")
        .service("web", "va", 8080)
        .service_on_with("api", &["vb", "vc"], API_PORT, |s| s.vip(VIP))
        .start();
    let accepts_b = mesh.start_echo_server("vb", "api", API_PORT);
    let b = mesh.node("vb").addr(false);
    let certs = mesh.dir.join("certs");
    fs::create_dir_all(&certs).expect("dir");
    let api = pki::Leaf::valid_now("spiffe://mesh.local/svc/api");
    let log = mesh.agent_log("vb");
    let refused = || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("inbound connection refused"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };

    // A leaf for api signed by node va's intermediate: va hosts no api.
    let node_a = pki::Ca::load_node(&mesh.ca_dir(), "va");
    let bad = pki::write_leaf(&certs, "api-by-va", &node_a, &api);
    let out = s_client(&mesh, "va", b, &bad);
    let reason = "is signed by node \"va\", which hosts no instance of \"api\"";
    assert!(
        wait_until(Duration::from_secs(5), || refused()
            .iter()
            .any(|l| l.contains(reason))),
        "agent vb did not refuse api signed by va; s_client said:\n{out}\nrefusals: {:?}",
        refused()
    );
    assert_eq!(accepts(&accepts_b), 0, "the service saw a connection");

    // Control: a leaf for api signed by node vc, which hosts an instance,
    // is accepted by vb.
    let node_c = pki::Ca::load_node(&mesh.ca_dir(), "vc");
    let good = pki::write_leaf(&certs, "api-by-vc", &node_c, &api);
    let out = s_client(&mesh, "va", b, &good);
    assert!(
        wait_until(Duration::from_secs(5), || accepts(&accepts_b) == 1),
        "api signed by vc was refused: {out}\nrefusals: {:?}",
        refused()
    );
}

/// The nodes of api in the config in force on `node`.
fn api_nodes(mesh: &Mesh, node: &str) -> serde_json::Value {
    mesh.admin_json(node, "/config")["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "api"))
        .map(|api| api["nodes"].clone())
        .unwrap_or_default()
}

/// Whether `node`'s agent holds a leaf for `service`.
fn has_leaf(mesh: &Mesh, node: &str, service: &str) -> bool {
    mesh.status(node)["services"]
        .as_array()
        .is_some_and(|s| s.iter().any(|s| s["name"] == service))
}

#[test]
fn instances_come_and_go_with_the_file() {
    let one = Mesh::nodes(&["ina", "inb", "inc"])
        .default_policy("allow")
        .service("web", "ina", 8080)
        .service_on_with("api", &["inb"], API_PORT, |s| s.vip(VIP));
    let two =
        one.clone()
            .without_service("api")
            .service_on_with("api", &["inb", "inc"], API_PORT, |s| s.vip(VIP));
    let mesh = one.start();
    let on_b = mesh.start_echo_server("inb", "api", API_PORT);
    let c = mesh.node("inc").addr(false);
    assert!(!has_leaf(&mesh, "inc", "api"));

    // Add an instance on inc: its agent makes the cgroup, issues the leaf
    // and steers the port; the others learn its catalog address.
    mesh.replace_config(two.toml(&mesh).as_bytes());
    assert!(
        wait_until(Duration::from_secs(5), || has_leaf(&mesh, "inc", "api")),
        "agent inc did not take the instance"
    );
    let cgroup = mesh_tests::cgroup2_root().join("mesh/inc/api");
    assert!(cgroup.is_dir(), "no cgroup {}", cgroup.display());
    let on_c = mesh.start_echo_server("inc", "api", API_PORT);
    let ok = wait_until(Duration::from_secs(5), || {
        let text = "to the new instance";
        mesh.echo("ina", "web", c, API_PORT, text) == text
    });
    assert!(ok, "web could not reach the new instance on inc");
    assert!(accepts(&on_c) >= 1 && accepts(&on_b) == 0);

    // Remove it again: inc drops the leaf and stops steering the port.
    mesh.replace_config(one.toml(&mesh).as_bytes());
    assert!(
        wait_until(Duration::from_secs(5), || !has_leaf(&mesh, "inc", "api")),
        "agent inc kept the instance"
    );
    assert!(
        wait_until(Duration::from_secs(5), || api_nodes(&mesh, "ina")
            == serde_json::json!(["inb"])),
        "agent ina kept the instance on inc"
    );
    let before = accepts(&on_c);
    let out = mesh.echo("ina", "web", c, API_PORT, "to the gone instance");
    assert_ne!(out, "to the gone instance", "the gone instance answered");
    assert_eq!(accepts(&on_c), before, "the gone instance was reached");
    // The VIP still reaches the instance that stays.
    call(&mesh, "ina", "web", vip());
    assert_eq!(accepts(&on_b), 1);
}

/// Calls `host`:`port` `count` times in a row, `interval` seconds apart,
/// each an echo with a 10 s timeout; prints one line per call: `ok`, or
/// `fail <error>`.
const CALLS: &str = r#"
import socket, sys, time
host, port, count, interval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
for i in range(count):
    start = time.monotonic()
    try:
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(b"call %d" % i)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        print("ok" if data == b"call %d" % i else "fail echoed %r" % data, flush=True)
    except Exception as e:
        print("fail %s" % e, flush=True)
    time.sleep(max(0.0, interval - (time.monotonic() - start)))
"#;

/// The command running [`CALLS`] as `service` on `node` to the VIP.
fn calls(
    mesh: &Mesh,
    node: &str,
    service: &str,
    count: usize,
    interval: f64,
) -> std::process::Command {
    let mut cmd = mesh.cmd_as(node, service, "python3");
    cmd.arg("-c")
        .arg(CALLS)
        .arg(VIP)
        .arg(API_PORT.to_string())
        .arg(count.to_string())
        .arg(interval.to_string());
    cmd
}

/// The calls of a [`CALLS`] run that failed, from its output.
#[track_caller]
fn failures(out: &str, count: usize) -> Vec<String> {
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| *l == "ok" || l.starts_with("fail"))
        .collect();
    assert_eq!(lines.len(), count, "calls did not all run:\n{out}");
    lines
        .iter()
        .filter(|l| **l != "ok")
        .map(|l| l.to_string())
        .collect()
}

/// Connections `node`'s agent refused because its api instance was down.
fn refused_down(mesh: &Mesh, node: &str) -> usize {
    fs::read_to_string(mesh.agent_log(node))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("inbound connection refused") && l.contains("down"))
        .count()
}

#[test]
fn the_vip_spreads_prefers_the_local_instance_and_fails_over() {
    let mesh = Mesh::nodes(&["la", "lb", "lc"])
        .default_policy("allow")
        .service("web", "la", 8080)
        .service("tool", "lc", 8081)
        .service_on_with("api", &["lb", "lc"], API_PORT, |s| s.vip(VIP))
        .start();
    let on_b = mesh.start_echo_server("lb", "api", API_PORT);
    let log_c = mesh.dir.join("accepts-api-lc.log");
    let _ = fs::write(&log_c, "");
    let pid_c = mesh.start_echo_server_logging("lc", "api", API_PORT, &log_c);

    // 200 connections from la: spread over both (least_request, no local one).
    let out = run_to_string(
        &mut calls(&mesh, "la", "web", 200, 0.0),
        Duration::from_secs(120),
    );
    assert_eq!(failures(&out, 200), Vec::<String>::new());
    let (b, c) = (accepts(&on_b), accepts(&log_c));
    assert_eq!(b + c, 200);
    for (node, n) in [("lb", b), ("lc", c)] {
        assert!(
            (60..=140).contains(&n),
            "{node} took {n} of 200 (lb {b}, lc {c})"
        );
    }

    // From lc, which hosts one: every call stays on lc.
    let out = run_to_string(
        &mut calls(&mesh, "lc", "tool", 20, 0.0),
        Duration::from_secs(60),
    );
    assert_eq!(failures(&out, 20), Vec::<String>::new());
    assert_eq!(
        (accepts(&on_b), accepts(&log_c)),
        (b, c + 20),
        "tool on lc -> VIP"
    );

    // Stop api on lc while la calls: 100 calls 50 ms apart, none fails.
    // It is stopped right after the 20th call ends, between calls: a
    // connection lc had already accepted when it died would be lost with
    // it (its bytes went to lc), which no failover can undo.
    let (b, c) = (accepts(&on_b), accepts(&log_c));
    let mut run = calls(&mesh, "la", "web", 100, 0.05);
    let mut caller = run.stdout(Stdio::piped()).spawn().expect("calls");
    let mut out = String::new();
    let stdout = caller.stdout.take().expect("stdout");
    for (i, line) in BufReader::new(stdout).lines().enumerate() {
        let line = line.expect("calls output");
        out += &line;
        out.push('\n');
        if i == 19 {
            mesh.stop_app(pid_c);
        }
    }
    let stopped = Instant::now();
    caller.wait().expect("calls");
    assert_eq!(failures(&out, 100), Vec::<String>::new(), "calls failed");
    let (b2, c2) = (accepts(&on_b), accepts(&log_c));
    assert_eq!(b2 - b + c2 - c, 100, "every call reached an instance");
    // Ejected after 3 refusals: la's agent stopped trying lc (it would
    // have tried it about half the time otherwise). An ejection that ends
    // during the run costs one more try each.
    let tries = refused_down(&mesh, "lc");
    assert!(
        (3..=6).contains(&tries),
        "lc refused {tries} connections:\n{out}"
    );
    let log_a = fs::read_to_string(mesh.agent_log("la")).expect("agent log");
    assert!(log_a.contains("instance ejected"), "{log_a}");

    // Start it again: once the ejection is over, traffic returns to lc.
    mesh.start_echo_server_logging("lc", "api", API_PORT, &log_c);
    let back = wait_until(Duration::from_secs(90), || {
        let out = run_to_string(
            &mut calls(&mesh, "la", "web", 4, 0.0),
            Duration::from_secs(30),
        );
        failures(&out, 4).is_empty() && accepts(&log_c) > c2
    });
    assert!(
        back,
        "no call reached lc again {:?} after it stopped",
        stopped.elapsed()
    );
}

#[test]
fn round_robin_alternates() {
    let mesh = Mesh::nodes(&["ra", "rb", "rc"])
        .default_policy("allow")
        .service("web", "ra", 8080)
        .service_on_with("api", &["rb", "rc"], API_PORT, |s| {
            s.vip(VIP).lb("round_robin")
        })
        .start();
    let on_b = mesh.start_echo_server("rb", "api", API_PORT);
    let on_c = mesh.start_echo_server("rc", "api", API_PORT);
    let mut turns = Vec::new();
    for _ in 0..6 {
        let before = (accepts(&on_b), accepts(&on_c));
        call(&mesh, "ra", "web", vip());
        let after = (accepts(&on_b), accepts(&on_c));
        turns.push(if after.0 > before.0 { "rb" } else { "rc" });
    }
    let first = turns[0];
    let other = if first == "rb" { "rc" } else { "rb" };
    let expected: Vec<&str> = (0..6)
        .map(|i| if i % 2 == 0 { first } else { other })
        .collect();
    assert_eq!(turns, expected);
}

#[test]
fn a_slow_last_instance_gets_the_whole_failover_budget() {
    // api's one instance is on ssb, where no agent runs and something
    // accepts connections but never answers: each try hangs. With no other
    // instance to try, the try gets the whole 2 s budget (a dial that is
    // only slow, e.g. a SYN retransmitted after 1 s, then still succeeds),
    // not the 1 s a try gets while another instance is left.
    let mesh = Mesh::nodes(&["ssa", "ssb"])
        .default_policy("allow")
        .service("web", "ssa", 8080)
        .service_with("api", "ssb", API_PORT, |s| s.vip(VIP))
        .build();
    mesh.start_agent("ssa");
    let b = mesh.node("ssb").addr(false);
    let mut silent = mesh.cmd("ssb", "socat");
    silent.args([
        &format!("TCP-LISTEN:{API_PORT},bind={b},reuseaddr,fork"),
        "SYSTEM:sleep 30",
    ]);
    mesh.spawn_app(silent, "silent-ssb");
    mesh.wait_listening("ssb", API_PORT);
    let started = Instant::now();
    let echoed = mesh.echo("ssa", "web", vip(), API_PORT, "hello");
    let took = started.elapsed();
    println!("a call to a silent last instance ended after {took:?}: {echoed:?}");
    assert_ne!(echoed, "hello");
    assert!(
        (Duration::from_millis(1800)..Duration::from_secs(5)).contains(&took),
        "the call ended after {took:?}: expected the 2 s budget"
    );
}
