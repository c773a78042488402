//! Pooled `mesh/2` connections between agents: mixed versions, a peer
//! agent killed under a pooled connection, leaf renewal under a steady
//! connection rate, revocation of streams that share a connection. Real
//! agents in network namespaces. Need root.
use std::{fs, net::IpAddr, time::Duration};

use mesh_tests::{
    API_PORT, Mesh, Signal, VIP, app,
    health::{answered_by, failed_calls},
    vip, wait_until,
};

/// Outbound mTLS handshakes (full and resumed) `node`'s agent made: one
/// per pooled connection, one per app connection in `mesh/1`.
fn outbound_handshakes(mesh: &Mesh, node: &str) -> f64 {
    let text = mesh.metrics(node);
    ["full", "resumed"]
        .iter()
        .filter_map(|kind| {
            let series = format!("mesh_handshakes_total{{side=\"outbound\",kind=\"{kind}\"}}");
            mesh_tests::metric_value(&text, &series)
        })
        .sum()
}

/// An agent that speaks only `mesh/1` (one before `mesh/2`, here
/// `--no-multiplex`) and one that pools meet on `mesh/1`, both ways.
#[test]
fn an_agent_that_speaks_only_mesh_1_still_interoperates() {
    let mesh = Mesh::nodes(&["va", "vb"])
        .default_policy("allow")
        .service("web", "va", 8080)
        .service_with("api", "vb", API_PORT, |s| s.vip(VIP))
        .service("ui", "vb", 8081)
        .service_with("store", "va", 5002, |s| s.vip("240.0.0.10"))
        .agent_args("va", &["--no-multiplex"])
        .start();
    mesh.start_health_server("vb", "api", API_PORT);
    mesh.start_health_server("va", "store", 5002);
    // Old -> new, then new -> old, three calls each.
    let results = mesh.http_calls("va", "web", vip(), API_PORT, 3, Duration::ZERO);
    assert_eq!(answered_by(&results, "vb"), 3, "{results:?}");
    let store: IpAddr = "240.0.0.10".parse().expect("vip");
    let results = mesh.http_calls("vb", "ui", store, 5002, 3, Duration::ZERO);
    assert_eq!(answered_by(&results, "va"), 3, "{results:?}");
    // Each app connection had its own mesh/1 connection, both ways.
    for node in ["va", "vb"] {
        assert_eq!(outbound_handshakes(&mesh, node), 3.0, "{node}");
    }
    let log_a = fs::read_to_string(mesh.agent_log("va")).expect("log");
    let log_b = fs::read_to_string(mesh.agent_log("vb")).expect("log");
    assert!(
        log_b.contains("mTLS established") && log_b.contains("alpn=\"mesh/1\""),
        "vb did not fall back to mesh/1:\n{log_b}"
    );
    assert!(!log_a.contains("mesh/2"), "{log_a}");
    assert!(!log_b.contains("alpn=\"mesh/2\""), "{log_b}");
}

/// A pooled connection whose peer agent was SIGKILLed is abandoned: once
/// that agent is back, the next app connection goes over a fresh one and
/// no call fails.
#[test]
fn a_pooled_connection_to_a_killed_agent_is_replaced_by_a_fresh_one() {
    let mesh = Mesh::nodes(&["ka", "kb"])
        .default_policy("allow")
        .service("web", "ka", 8080)
        .service_with("api", "kb", API_PORT, |s| s.vip(VIP))
        .start();
    mesh.start_health_server("kb", "api", API_PORT);
    let results = mesh.http_calls("ka", "web", vip(), API_PORT, 5, Duration::ZERO);
    assert_eq!(failed_calls(&results), [], "before the kill");
    assert_eq!(
        outbound_handshakes(&mesh, "ka"),
        1.0,
        "one pooled connection"
    );

    mesh.stop_agent("kb", Signal::SIGKILL);
    mesh.start_agent("kb");
    assert!(
        mesh.wait_instance_state("ka", "api", "kb", "passing", Duration::from_secs(15))
            .is_some(),
        "ka does not see api on kb passing again"
    );
    let results = mesh.http_calls("ka", "web", vip(), API_PORT, 20, Duration::from_millis(20));
    assert_eq!(failed_calls(&results), [], "after the restart");
    assert_eq!(
        outbound_handshakes(&mesh, "ka"),
        2.0,
        "one fresh pooled connection after the restart"
    );
}

/// With 4 s leaves (renewed every 2 s on both sides) and a call every
/// 50 ms for 8 s: no call fails, and pooled connections made with an old
/// leaf retire (new ones are made), yet far fewer than one per call.
#[test]
fn leaf_renewal_under_a_steady_connection_rate_fails_no_call() {
    let mesh = Mesh::nodes(&["na", "nb"])
        .default_policy("allow")
        .leaf_ttl("4s")
        .service("web", "na", 8080)
        .service_with("api", "nb", API_PORT, |s| s.vip(VIP))
        .start();
    mesh.start_health_server("nb", "api", API_PORT);
    let results = mesh.http_calls("na", "web", vip(), API_PORT, 160, Duration::from_millis(50));
    assert_eq!(failed_calls(&results), [], "calls across renewals");
    let renewals = |node: &str, service: &str| {
        fs::read_to_string(mesh.agent_log(node))
            .expect("log")
            .matches(&format!("renewed leaf service={service}"))
            .count()
    };
    let (web, api) = (renewals("na", "web"), renewals("nb", "api"));
    assert!(web >= 3 && api >= 3, "renewals: web {web}, api {api}");
    let made = outbound_handshakes(&mesh, "na");
    assert!(
        (3.0..=40.0).contains(&made),
        "{made} connections for 160 calls across {web} renewals"
    );
}

/// A deny cuts, within 1 s, every live stream of the pair's pooled
/// connection, and the destination refuses new streams of that pair.
#[test]
fn a_deny_cuts_every_stream_of_a_pooled_connection() {
    let mesh = Mesh::nodes(&["ra", "rb"])
        .default_policy("allow")
        .service("web", "ra", 8080)
        .service_with("api", "rb", API_PORT, |s| s.vip(VIP))
        .start();
    mesh.start_echo_server("rb", "api", API_PORT);
    let logs: Vec<_> = (0..3)
        .map(|i| {
            let name = format!("hold-{i}");
            let mut hold = mesh.cmd_as("ra", "web", "python3");
            hold.arg(app("hold_client.py"))
                .arg(VIP)
                .arg(API_PORT.to_string())
                .arg("20");
            mesh.spawn_app(hold, &name);
            mesh.dir.join(format!("app-{name}.log"))
        })
        .collect();
    let said = |log: &std::path::PathBuf, what: &str| {
        fs::read_to_string(log).unwrap_or_default().contains(what)
    };
    assert!(
        wait_until(Duration::from_secs(10), || logs
            .iter()
            .all(|l| said(l, "OPEN"))),
        "hold clients did not connect"
    );
    assert_eq!(
        outbound_handshakes(&mesh, "ra"),
        1.0,
        "three streams, one pooled connection"
    );
    assert_eq!(mesh.metric("ra", "mesh_pooled_connections"), Some(1.0));
    assert_eq!(mesh.metric("ra", "mesh_pooled_streams"), Some(3.0));
    let denied = std::time::Instant::now();
    let (ok, out) = mesh.cli(&["intention", "create", "-deny", "web", "api"]);
    assert!(ok, "intention create: {out}");
    assert!(
        wait_until(Duration::from_secs(3), || logs
            .iter()
            .all(|l| said(l, "CLOSED"))),
        "live streams were not all cut"
    );
    let cut = denied.elapsed();
    assert!(
        cut <= Duration::from_millis(1500),
        "streams cut {cut:?} after the intention was written"
    );
    let log_b = fs::read_to_string(mesh.agent_log("rb")).expect("log");
    assert!(
        log_b
            .matches("connection cut: intentions now deny web -> api")
            .count()
            + fs::read_to_string(mesh.agent_log("ra"))
                .expect("log")
                .matches("connection cut: intentions now deny web -> api")
                .count()
            >= 3,
        "{log_b}"
    );
}

/// A busy stream moves off its pooled connection to one of its own (the
/// pool no longer counts it), and a deny still cuts it within 1 s.
#[test]
fn a_moved_stream_is_still_cut_by_a_deny() {
    const BIG: usize = 32 * 1024 * 1024;
    let mesh = Mesh::nodes(&["ma", "mb"])
        .default_policy("allow")
        .service("web", "ma", 8080)
        .service_with("api", "mb", API_PORT, |s| s.vip(VIP))
        .start();
    mesh.start_transfer_server("mb", "api", API_PORT, BIG);
    // The upload is paced over 20 s: it is still flowing at the deny.
    let mut upload = mesh.cmd_as("ma", "web", "python3");
    upload
        .arg(app("transfer_client.py"))
        .arg(VIP)
        .arg(API_PORT.to_string())
        .arg(BIG.to_string())
        .arg("20");
    mesh.spawn_app(upload, "upload");
    let log = mesh.dir.join("app-upload.log");
    let moved = "mesh_moved_streams_total{side=\"outbound\"}";
    assert!(
        wait_until(Duration::from_secs(10), || mesh
            .metrics("ma")
            .contains(&format!("{moved} 1"))),
        "the stream did not move"
    );
    assert_eq!(
        mesh.metric("ma", "mesh_pooled_streams"),
        Some(0.0),
        "left the pool"
    );
    assert_eq!(
        mesh.metric(
            "ma",
            "mesh_connections_active{source=\"web\",destination=\"api\",side=\"outbound\"}"
        ),
        Some(1.0)
    );
    let denied = std::time::Instant::now();
    let (ok, out) = mesh.cli(&["intention", "create", "-deny", "web", "api"]);
    assert!(ok, "intention create: {out}");
    let ended = || {
        let said = fs::read_to_string(&log).unwrap_or_default();
        said.contains("ERRNO") || said.contains("MISMATCH")
    };
    assert!(
        wait_until(Duration::from_secs(3), ended),
        "the moved stream was not cut: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    let cut = denied.elapsed();
    assert!(
        cut <= Duration::from_millis(1500),
        "cut {cut:?} after the intention was written"
    );
}
