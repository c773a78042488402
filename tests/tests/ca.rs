//! The CA's lifecycle as an operator lives it: expiry seen coming. Needs
//! root.
use std::{fs, process::Command, time::Duration};

use mesh_tests::{Mesh, metric_value, output_with_timeout};

const DAY: f64 = 86_400.0;

/// SHA-256 of a PEM certificate as `openssl x509 -fingerprint` prints it,
/// lowercase without colons (how the agent labels it).
fn openssl_fingerprint(cert: &std::path::Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let (_, hex) = text.trim().split_once('=').expect("fingerprint line");
    hex.replace(':', "").to_lowercase()
}

#[test]
fn expiry_of_roots_node_cas_and_leaves_is_visible() {
    let mesh = Mesh::nodes(&["xa", "xb"])
        .service("web", "xa", 8080)
        .service("api", "xb", 5001)
        .intention("web", "api", "allow")
        .build();
    // A root that expires in 20 days, node xb's CA in 10, xa's in a year.
    let ca = mesh.ca_dir();
    fs::remove_file(ca.join("root.crt")).expect("rm root.crt");
    fs::remove_file(ca.join("root.key")).expect("rm root.key");
    let (ok, out) = mesh.cli(&["ca", "init", "--days", "20"]);
    assert!(ok, "{out}");
    let (ok, out) = mesh.cli(&["ca", "issue-node", "--node", "xb", "--days", "10"]);
    assert!(ok, "{out}");
    // Out-of-range validity: clap's own message, nothing written.
    let (ok, out) = mesh.cli(&["ca", "issue-node", "--node", "xa", "--days", "0"]);
    assert!(!ok && out.contains("--days"), "{out}");
    assert!(!ca.join("nodes/xa.crt").exists());
    mesh.start_agent("xa");
    mesh.start_agent("xb");

    let root_fp = openssl_fingerprint(&ca.join("root.crt"));
    let xb_fp = openssl_fingerprint(&ca.join("nodes/xb.crt"));
    let metrics = mesh.metrics("xb");
    let root = format!(
        "mesh_ca_expiry_seconds{{kind=\"root\",subject=\"CN=mesh root CA mesh.local\",fingerprint=\"{root_fp}\"}}"
    );
    let left = metric_value(&metrics, &root).unwrap_or_else(|| panic!("{root} in {metrics}"));
    assert!((19.9 * DAY..=20.0 * DAY).contains(&left), "{left}");
    let node = format!(
        "mesh_ca_expiry_seconds{{kind=\"node\",subject=\"CN=mesh node xb\",fingerprint=\"{xb_fp}\"}}"
    );
    let left = metric_value(&metrics, &node).unwrap_or_else(|| panic!("{node} in {metrics}"));
    assert!((9.9 * DAY..=10.0 * DAY).contains(&left), "{left}");
    // Leaves: api's (24 h by default) and the agent's own.
    let api = metric_value(&metrics, "mesh_certificate_expiry_seconds{service=\"api\"}")
        .expect("api leaf expiry");
    assert!((0.9 * DAY..=DAY).contains(&api), "{api}");
    let agent = metric_value(&metrics, "mesh_agent_certificate_expiry_seconds").expect("agent");
    assert!((0.9 * DAY..=DAY).contains(&agent), "{agent}");
    let xa_node = metric_value(
        &mesh.metrics("xa"),
        &format!(
            "mesh_ca_expiry_seconds{{kind=\"node\",subject=\"CN=mesh node xa\",fingerprint=\"{}\"}}",
            openssl_fingerprint(&ca.join("nodes/xa.crt"))
        ),
    )
    .expect("xa's node CA");
    assert!(xa_node > 364.0 * DAY, "{xa_node}");

    // A warning for each CA certificate within 30 days, on the node that
    // holds it: xb warns of the root and its node CA, xa of the root only.
    let log_b = fs::read_to_string(mesh.agent_log("xb")).expect("log");
    assert!(log_b.contains("a trusted root CA expires soon"), "{log_b}");
    assert!(log_b.contains("this node's CA expires soon"), "{log_b}");
    let log_a = fs::read_to_string(mesh.agent_log("xa")).expect("log");
    assert!(log_a.contains("a trusted root CA expires soon"), "{log_a}");
    assert!(!log_a.contains("this node's CA expires soon"), "{log_a}");

    // `status`: the same, as JSON and as the table.
    let status = mesh.status("xb");
    let kinds: Vec<_> = status["cas"]
        .as_array()
        .expect("cas")
        .iter()
        .map(|c| (c["kind"].as_str().unwrap_or(""), c["fingerprint"].clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("root", serde_json::json!(root_fp)),
            ("node", serde_json::json!(xb_fp))
        ],
        "{status}"
    );
    assert!(
        status["agent"]["expires_in_secs"].as_u64() > Some(0),
        "{status}"
    );
    let mut cmd = mesh.cmd("xb", mesh_tests::agent_bin());
    cmd.arg("status");
    let out = output_with_timeout(&mut cmd, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // The first cell of a row, padded: "root  CN=...".
    let line = |kind: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(kind) && l.contains("  "))
            .unwrap_or_else(|| panic!("no {kind} row in:\n{text}"))
            .to_owned()
    };
    assert!(line("root").contains("(in 19d"), "{text}");
    assert!(line("node").contains("(in 9d"), "{text}");
    assert!(
        line("(this").contains("spiffe://mesh.local/agent/xb"),
        "{text}"
    );
}
