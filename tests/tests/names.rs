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
