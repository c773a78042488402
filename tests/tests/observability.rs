//! What an operator sees: Prometheus metrics, the config in force, and one
//! access-log line per connection. Needs root.
use std::{fs, time::Duration};

use mesh_tests::{Mesh, run_to_string};

fn get(mesh: &Mesh, node: &str, path: &str) -> String {
    let mut cmd = mesh.cmd(node, "curl");
    cmd.args(["-sS", "-m", "5", &format!("http://127.0.0.1:15000{path}")]);
    run_to_string(&mut cmd, Duration::from_secs(10))
}

/// `# TYPE` of every family of obb's `/metrics` below, in order (a
/// family without samples is left out: no denials, moved streams or
/// instance dials on obb).
const FAMILIES: [&str; 16] = [
    "mesh_agent_certificate_expiry_seconds gauge",
    "mesh_ca_expiry_seconds gauge",
    "mesh_catalog_connected gauge",
    "mesh_certificate_expiry_seconds gauge",
    "mesh_connection_bytes counter",
    "mesh_connections_active gauge",
    "mesh_connections_closed counter",
    "mesh_connections_opened counter",
    "mesh_ebpf_map_entries gauge",
    "mesh_handshake_failures counter",
    "mesh_handshakes counter",
    "mesh_handshakes_in_progress gauge",
    "mesh_instance_connections_active gauge",
    "mesh_instance_health gauge",
    "mesh_pooled_connections gauge",
    "mesh_pooled_streams gauge",
];

#[test]
fn metrics_config_and_access_log() {
    let mesh = Mesh::nodes(&["oba", "obb"])
        .default_policy("deny")
        .service("web", "oba", 8080)
        .service("cron", "oba", 8081)
        .service_with("api", "obb", 5001, |s| s.vip("240.0.0.31"))
        .intention("web", "api", "allow")
        .agent_args("oba", &["--log-format", "json"])
        .start();
    mesh.start_transfer_server("obb", "api", 5001, 2000);
    let out = mesh.transfer("oba", Some("web"), "api.mesh", 5001, 2000);
    assert!(out.starts_with("OK "), "{out}");
    // A plaintext client: a handshake failure on obb.
    let b = mesh.node("obb").v4;
    let out = mesh.transfer("oba", None, b, 5001, 10);
    assert!(!out.starts_with("OK"), "{out}");

    let metrics = get(&mesh, "obb", "/metrics");
    // Every family keeps its name and type, whichever component registers
    // it.
    let families: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(families, FAMILIES, "{metrics}");
    for line in [
        "mesh_connections_opened_total{source=\"web\",destination=\"api\",side=\"inbound\"} 1",
        "mesh_connections_active{source=\"web\",destination=\"api\",side=\"inbound\"} 0",
        "mesh_connection_bytes_total{source=\"web\",destination=\"api\",side=\"inbound\",direction=\"to_destination\"} 2000",
        "mesh_handshake_failures_total{side=\"inbound\",reason=\"not_tls\"} 1",
        // No intention from api: the default policy (deny) alone.
        "mesh_ebpf_map_entries{map=\"RULES\"} 1",
        "mesh_certificate_expiry_seconds{service=\"api\"} 8",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
    }
    // The answer: the count-and-hash line (70 bytes), then 2000 bytes.
    assert!(
        metrics.contains("direction=\"to_source\"} 2070"),
        "bytes to the source: {metrics}"
    );
    let metrics_a = get(&mesh, "oba", "/metrics");
    // web -> api allow, and the default policy (deny).
    assert!(
        metrics_a.contains("mesh_ebpf_map_entries{map=\"RULES\"} 2"),
        "{metrics_a}"
    );

    let config: serde_json::Value =
        serde_json::from_str(&get(&mesh, "obb", "/config")).expect("json");
    assert_eq!(config["intentions"]["default_policy"], "deny");
    assert_eq!(config["services"].as_array().map(Vec::len), Some(3));

    // One JSON access-log line on oba for the call, with bytes each way.
    let log = fs::read_to_string(mesh.agent_log("oba")).expect("log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    let line = &lines[0];
    assert_eq!(
        (line["src"].as_str(), line["dst"].as_str()),
        (Some("web"), Some("api"))
    );
    assert_eq!(line["verdict"], "allowed");
    assert_eq!(line["to_destination"], 2000);
    assert!(line["duration_ms"].as_u64().is_some(), "{line}");
}
