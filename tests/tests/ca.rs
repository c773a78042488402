//! The CA's lifecycle as an operator lives it: expiry seen coming, the
//! root rotated under load. Needs root.
use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Command,
    time::Duration,
};

use mesh_tests::{
    Mesh, Signal, agent_bin, app, health::failed_calls, metric_value, outcome, output_with_timeout,
    pki, wait_until,
};

const DAY: f64 = 86_400.0;
const API_PORT: u16 = 5001;
const API_VIP: Ipv4Addr = Ipv4Addr::new(240, 0, 0, 61);
const STORE_PORT: u16 = 5002;
const STORE_VIP: Ipv4Addr = Ipv4Addr::new(240, 0, 0, 62);
const JOBS_PORT: u16 = 5003;
const JOBS_VIP: Ipv4Addr = Ipv4Addr::new(240, 0, 0, 63);

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

/// The SHA-256 of a PEM file's first certificate and of its public key
/// (SubjectPublicKeyInfo), as openssl computes them.
fn fingerprints(cert: &Path) -> (String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum",
            cert.display()
        ))
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{out:?}");
    let key = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    (openssl_fingerprint(cert), key)
}

/// `mesh-agent ca ARGS` on `node` (its agent is the one asked), against
/// the mesh's file or etcd.
fn ca_cli(mesh: &Mesh, node: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = mesh.cmd(node, agent_bin());
    // A relative ca_dir in etcd is relative to the working directory.
    cmd.arg("ca").args(args).current_dir(&mesh.dir);
    match &mesh.catalog {
        Some(url) => cmd
            .args(["--catalog", url])
            .args(mesh.etcd_client_args("admin")),
        None => cmd.arg("--config").arg(mesh.config()),
    };
    outcome(&output_with_timeout(&mut cmd, Duration::from_secs(30)))
}

/// Whether `node`'s agent tells `asked`'s agent that it trusts the root
/// with SHA-256 `root` and presents a node CA signed by key `key`.
fn on_chain(mesh: &Mesh, asked: &str, node: &str, root: &str, key: &str) -> bool {
    let doc = mesh.admin_json(asked, "/ca");
    doc["nodes"].as_array().is_some_and(|nodes| {
        nodes.iter().any(|n| {
            n["node"] == node
                && n["trust"]["roots"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|f| f == root))
                && n["trust"]["issuer_key"] == key
        })
    })
}

/// The roots `node`'s agent trusts, by SHA-256.
fn roots(mesh: &Mesh, node: &str) -> Vec<String> {
    mesh.status(node)["cas"]
        .as_array()
        .expect("cas")
        .iter()
        .filter(|c| c["kind"] == "root")
        .filter_map(|c| c["fingerprint"].as_str().map(str::to_owned))
        .collect()
}

/// `ca rotate` and `ca retire-old` while web calls api every 10 ms and
/// holds a stream to store: no call fails, the stream lives on; node rc,
/// stopped during the rotation, comes back on the new chain and works both
/// ways; retire-old is refused while rc is behind; after it a leaf of the
/// old root is refused.
#[test]
fn a_root_rotation_fails_no_call_and_drops_no_stream() {
    rotation(false);
}

/// The same with the catalog in etcd.
#[test]
fn a_root_rotation_with_the_catalog_in_etcd() {
    rotation(true);
}

fn rotation(etcd: bool) {
    let mut topology = Mesh::nodes(&["ra", "rb", "rc"]);
    if etcd {
        topology = topology.etcd();
    }
    let mesh = topology
        .default_policy("allow")
        .service("web", "ra", 8080)
        .service_with("api", "rb", API_PORT, |s| s.vip(&API_VIP.to_string()))
        .service_with("store", "rb", STORE_PORT, |s| s.vip(&STORE_VIP.to_string()))
        .service_with("jobs", "rc", JOBS_PORT, |s| s.vip(&JOBS_VIP.to_string()))
        .start();
    mesh.start_health_server("rb", "api", API_PORT);
    mesh.start_echo_server("rb", "store", STORE_PORT);
    mesh.start_health_server("rc", "jobs", JOBS_PORT);
    let ca = mesh.ca_dir();
    let (old_root, _) = fingerprints(&ca.join("root.crt"));

    // rc is down while the rotation starts.
    mesh.stop_agent("rc", Signal::SIGTERM);
    let mut hold = mesh.cmd_as("ra", "web", "python3");
    hold.arg(app("hold_client.py"))
        .args([&STORE_VIP.to_string(), &STORE_PORT.to_string(), "120"]);
    mesh.spawn_app(hold, "hold");
    let hold_log = mesh.dir.join("app-hold.log");
    assert!(
        wait_until(Duration::from_secs(10), || fs::read_to_string(&hold_log)
            .unwrap_or_default()
            .contains("OPEN")),
        "the stream did not open"
    );
    let api = IpAddr::V4(API_VIP);
    let mut calls =
        mesh.http_call_stream("ra", "web", api, API_PORT, 1500, Duration::from_millis(10));
    assert_eq!(
        calls.next(Duration::from_secs(10)).map(|r| r.is_ok()),
        Some(true)
    );

    let (ok, out) = ca_cli(&mesh, "ra", &["rotate"]);
    assert!(ok, "{out}");
    let (new_root, new_key) = fingerprints(&ca.join("root.crt"));
    assert_ne!(new_root, old_root);
    let trust = fs::read_to_string(ca.join("trust.crt")).expect("trust.crt");
    assert_eq!(trust.matches("BEGIN CERTIFICATE").count(), 2, "{trust}");
    // The running agents take the new chain within a second or so.
    for node in ["ra", "rb"] {
        assert!(
            wait_until(Duration::from_secs(3), || on_chain(
                &mesh, "ra", node, &new_root, &new_key
            )),
            "{node} is not on the new chain: {}",
            mesh.admin_json("ra", "/ca")
        );
    }
    // A leaf of the old root is still accepted while both are trusted.
    let certs = mesh.dir.join("certs");
    let old = certs.join("old");
    fs::create_dir_all(&old).expect("dir");
    fs::copy(ca.join("root.old.crt"), old.join("root.crt")).expect("copy");
    fs::copy(ca.join("root.old.key"), old.join("root.key")).expect("copy");
    let old_node = pki::Ca::load_root(&old).new_node("mesh.local", "ra");
    let old_leaf = pki::write_leaf(
        &certs,
        "old-web",
        &old_node,
        &pki::Leaf::valid_now("spiffe://mesh.local/svc/web"),
    );
    let unknown_issuer =
        "mesh_handshake_failures_total{side=\"inbound\",reason=\"unknown_issuer\"}";
    let b = mesh.node("rb").addr(false);
    s_client(&mesh, "ra", b, &old_leaf);
    assert_eq!(
        mesh.metric("rb", unknown_issuer),
        None,
        "refused before retire-old"
    );

    // Refused while rc is behind, naming it; nothing changes.
    let (ok, out) = ca_cli(&mesh, "ra", &["retire-old"]);
    assert!(!ok && out.contains("rc: unreachable"), "{out}");
    assert!(!out.contains("ra:") && !out.contains("rb:"), "{out}");
    assert_eq!(
        fs::read_to_string(ca.join("trust.crt")).expect("trust"),
        trust
    );

    // rc comes back: it reads the new files at start.
    mesh.start_agent("rc");
    assert!(
        wait_until(Duration::from_secs(10), || on_chain(
            &mesh, "ra", "rc", &new_root, &new_key
        )),
        "rc is not on the new chain: {}",
        mesh.admin_json("ra", "/ca")
    );
    let (ok, out) = ca_cli(&mesh, "ra", &["retire-old"]);
    assert!(ok, "{out}");
    for node in ["ra", "rb", "rc"] {
        assert!(
            wait_until(Duration::from_secs(3), || roots(&mesh, node)
                == [new_root.clone()]),
            "{node} still trusts {:?}",
            roots(&mesh, node)
        );
    }
    // Calls go on past the end of the rotation; none fails, from the first
    // to the last.
    while calls.next(Duration::ZERO).is_some() {}
    let before = calls.results.len();
    let results = calls.finish(Duration::from_secs(90));
    assert_eq!(results.len(), 1500);
    assert!(
        1500 - before >= 100,
        "only {} calls after retire-old",
        1500 - before
    );
    assert_eq!(failed_calls(&results), [], "calls across the rotation");
    let hold_text = fs::read_to_string(&hold_log).expect("hold log");
    assert!(
        !hold_text.contains("CLOSED"),
        "the stream broke: {hold_text}"
    );

    // rc works both ways.
    let jobs = IpAddr::V4(JOBS_VIP);
    assert_eq!(
        failed_calls(&mesh.http_calls("rc", "jobs", api, API_PORT, 3, Duration::from_millis(10))),
        []
    );
    assert_eq!(
        failed_calls(&mesh.http_calls("ra", "web", jobs, JOBS_PORT, 3, Duration::from_millis(10))),
        []
    );

    // A leaf chaining only to the retired root is refused now.
    s_client(&mesh, "ra", b, &old_leaf);
    assert!(
        wait_until(Duration::from_secs(5), || mesh.metric("rb", unknown_issuer)
            == Some(1.0)),
        "{}",
        mesh.metrics("rb")
    );
}

/// `openssl s_client` on `node` to `addr`:API_PORT presenting `leaf`.
fn s_client(mesh: &Mesh, node: &str, addr: IpAddr, leaf: &pki::CertFiles) {
    let chain = leaf
        .chain
        .as_ref()
        .map(|c| format!("-cert_chain {}", c.display()))
        .unwrap_or_default();
    let mut cmd = mesh.cmd(node, "sh");
    cmd.arg("-c").arg(format!(
        "(printf 'GET /health HTTP/1.0\\r\\n\\r\\n'; sleep 1) | openssl s_client -connect {addr}:{API_PORT} \
         -tls1_3 -servername api.svc.mesh.local -alpn mesh/1 -cert {} -key {} {chain} 2>&1",
        leaf.cert.display(),
        leaf.key.display()
    ));
    mesh_tests::run_to_string(&mut cmd, Duration::from_secs(20));
}
