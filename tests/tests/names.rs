//! Apps dial services by name: the agent answers `<service>.mesh` with the
//! service's VIP on the node's 127.0.0.1:53. Needs root.
use std::time::{Duration, Instant};

use mesh_tests::{Mesh, run_to_string};

#[test]
fn apps_reach_services_by_name() {
    let mesh = Mesh::nodes(&["na1", "nb1"])
        .default_policy("allow")
        .service("web", "na1", 8080)
        .service_with("api", "nb1", 5001, |s| s.vip("240.0.0.21"))
        .start();
    mesh.start_transfer_server("nb1", "api", 5001, 1000);

    // The system resolver (glibc, through /etc/resolv.conf) finds the VIP.
    let mut cmd = mesh.cmd("na1", "getent");
    cmd.args(["ahostsv4", "api.mesh"]);
    let out = run_to_string(&mut cmd, Duration::from_secs(10));
    assert!(out.starts_with("240.0.0.21 "), "getent: {out}");
    // Over TCP too (what a client does after a truncated UDP reply).
    let mut cmd = mesh.cmd("na1", "dig");
    cmd.args([
        "+tcp",
        "+short",
        "+time=2",
        "+tries=1",
        "@127.0.0.1",
        "api.mesh",
        "A",
    ]);
    let out = run_to_string(&mut cmd, Duration::from_secs(10));
    assert_eq!(out.trim(), "240.0.0.21", "dig +tcp: {out}");
    // A real client connects by name through the mesh.
    let out = mesh.transfer("na1", Some("web"), "api.mesh", 5001, 1000);
    assert!(out.starts_with("OK "), "web -> api.mesh: {out}");

    // Unknown names in the zone do not exist; names outside it are refused
    // at once (no upstream in the test namespaces), never a hang.
    for name in ["nope.mesh", "example.com"] {
        let started = Instant::now();
        let mut cmd = mesh.cmd("na1", "getent");
        cmd.args(["ahostsv4", name]);
        let out = run_to_string(&mut cmd, Duration::from_secs(10));
        assert!(out.is_empty(), "{name} resolved: {out}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{name} took {:?}",
            started.elapsed()
        );
    }
    let mut cmd = mesh.cmd("na1", "python3");
    cmd.args(["-c", "import socket\ntry:\n socket.getaddrinfo('example.com', 80)\nexcept socket.gaierror as e:\n print('gaierror', e.errno)"]);
    let out = run_to_string(&mut cmd, Duration::from_secs(10));
    assert!(out.starts_with("gaierror"), "{out}");
}

/// The agent forwards names outside `.mesh` to the node's previous
/// resolver; an upstream that sends forged replies first (another id,
/// another question, the right ones from another port) does not poison
/// it: apps get the real answer, and each query leaves from a port of its
/// own.
#[test]
fn forged_upstream_replies_do_not_reach_apps() {
    let mesh = Mesh::nodes(&["na2"])
        .stranger("dns2")
        .service("web", "na2", 8080)
        .build();
    let upstream = mesh.node("dns2").v4;
    let log = mesh.dir.join("spoofer-ports.log");
    let mut spoofer = mesh.cmd("dns2", "python3");
    spoofer
        .arg(mesh_tests::app("dns_spoofer.py"))
        .args([&upstream.to_string(), "5353", "192.0.2.7", "6.6.6.6"])
        .arg(&log);
    mesh.spawn_app(spoofer, "spoofer");
    let listening = mesh_tests::wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(mesh.dir.join("app-spoofer.log"))
            .unwrap_or_default()
            .contains("LISTENING")
    });
    assert!(listening, "the spoofer did not start");
    mesh.start_agent_with("na2", &["--dns-upstream", &format!("{upstream}:5353")]);
    for _ in 0..3 {
        let mut dig = mesh.cmd("na2", "dig");
        dig.args([
            "+short",
            "+time=3",
            "+tries=1",
            "@127.0.0.1",
            "example.org",
            "A",
        ]);
        let out = run_to_string(&mut dig, Duration::from_secs(10));
        assert_eq!(out.trim(), "192.0.2.7", "dig: {out}");
    }
    let ports: std::collections::BTreeSet<String> = std::fs::read_to_string(&log)
        .expect("spoofer log")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ports.len(), 3, "source ports {ports:?}");
}
