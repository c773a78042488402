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

/// `mesh-agent ARGS` on `node` (its agent is the one asked), against the
/// mesh's file or etcd.
fn cli_on(mesh: &Mesh, node: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = mesh.cmd(node, agent_bin());
    // A relative ca_dir in etcd is relative to the working directory.
    cmd.args(args).current_dir(&mesh.dir);
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

    let (ok, out) = cli_on(&mesh, "ra", &["ca", "rotate"]);
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
    // On the wire, decrypted: rb presents its node CA under the new root,
    // then the new root cross-signed by the old.
    let node_file = ca.join("nodes/rb.crt");
    let chain = presented_chain(&mesh, "ra", "rb");
    assert_eq!(chain.len(), 3, "{} certificates", chain.len());
    assert_eq!(chain[1..], pem_certs(&node_file)[..]);
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
    let (ok, out) = cli_on(&mesh, "ra", &["ca", "retire-old"]);
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
    let (ok, out) = cli_on(&mesh, "ra", &["ca", "retire-old"]);
    assert!(ok, "{out}");
    for node in ["ra", "rb", "rc"] {
        assert!(
            wait_until(Duration::from_secs(3), || roots(&mesh, node)
                == [new_root.clone()]),
            "{node} still trusts {:?}",
            roots(&mesh, node)
        );
    }
    // On the wire: [leaf, node CA under the new root], nothing else.
    let chain = presented_chain(&mesh, "ra", "rb");
    let files = pem_certs(&node_file);
    assert_eq!(files.len(), 1);
    assert_eq!(chain.len(), 2, "{} certificates", chain.len());
    assert_eq!(chain[1], files[0]);
    let (_, issuer) = x509_parser::parse_x509_certificate(&chain[1]).expect("X.509");
    assert!(
        issuer
            .issuer()
            .to_string()
            .contains("mesh root CA mesh.local "),
        "{}",
        issuer.issuer()
    );
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

/// Every certificate of a PEM file, as DER.
fn pem_certs(path: &Path) -> Vec<Vec<u8>> {
    let bytes = fs::read(path).expect("read PEM");
    x509_parser::pem::Pem::iter_from_buffer(&bytes)
        .map(|p| p.expect("PEM").contents)
        .collect()
}

/// The chain `server`'s agent presents for api, as it crossed the wire:
/// captured on `server` while `openssl s_client` on `client` opens a
/// handshake with a key log, then decrypted by tshark.
fn presented_chain(mesh: &Mesh, client: &str, server: &str) -> Vec<Vec<u8>> {
    let keylog = mesh.dir.join(format!("keylog-{client}"));
    let _ = fs::remove_file(&keylog);
    let capture = mesh.capture(server, &format!("tcp port {API_PORT}"));
    let addr = mesh.node(server).addr(false);
    let mut cmd = mesh.cmd(client, "sh");
    cmd.arg("-c").arg(format!(
        "openssl s_client -connect {addr}:{API_PORT} -tls1_3 -servername api.svc.mesh.local \
         -alpn mesh/1 -keylogfile {} </dev/null 2>&1",
        keylog.display()
    ));
    mesh_tests::run_to_string(&mut cmd, Duration::from_secs(20));
    let pcap = capture.stop();
    let chains = mesh_tests::wire::decrypted_chains(&pcap, &keylog).expect("tshark");
    let [chain] = chains.as_slice() else {
        panic!("{} decrypted certificate messages", chains.len());
    };
    chain.clone()
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

/// Node vc is revoked while it holds a stream to vb's store (as caller)
/// and web on ra holds one to vc's store (vc as destination): both end
/// within a second, and so do vc's agent links; its new connections are
/// refused with `revoked` in the log and the counter, the rest of the mesh
/// works; `readmit` is refused until vc has a new node CA, and then vc
/// works both ways again.
#[test]
fn a_revoked_node_is_cut_off_within_a_second() {
    revocation(false);
}

/// The same with the catalog in etcd, one of its three members down.
#[test]
fn a_revoked_node_is_cut_off_with_the_catalog_in_etcd() {
    revocation(true);
}

fn revocation(etcd: bool) {
    let mut topology = Mesh::nodes(&["va", "vb", "vc"]);
    if etcd {
        topology = topology.etcd();
    }
    let vc_store = Ipv4Addr::new(240, 0, 0, 64);
    let mesh = topology
        .default_policy("allow")
        .service("web", "va", 8080)
        .service_with("api", "vb", API_PORT, |s| s.vip(&API_VIP.to_string()))
        .service_with("store", "vb", STORE_PORT, |s| s.vip(&STORE_VIP.to_string()))
        .service_with("jobs", "vc", JOBS_PORT, |s| s.vip(&JOBS_VIP.to_string()))
        .service_with("files", "vc", 5004, |s| s.vip(&vc_store.to_string()))
        .start();
    if etcd {
        // With a member of the cluster down, the first the agents and the
        // CLI are given.
        mesh.kill_etcd_member(mesh_tests::etcd::MEMBERS[0]);
    }
    mesh.start_health_server("vb", "api", API_PORT);
    mesh.start_echo_server("vb", "store", STORE_PORT);
    mesh.start_health_server("vc", "jobs", JOBS_PORT);
    mesh.start_echo_server("vc", "files", 5004);
    let hold = |node: &str, service: &str, vip: Ipv4Addr, port: u16| {
        let name = format!("hold-{node}");
        let mut cmd = mesh.cmd_as(node, service, "python3");
        cmd.arg(app("hold_client.py"))
            .args([&vip.to_string(), &port.to_string(), "60"]);
        mesh.spawn_app(cmd, &name);
        mesh.dir.join(format!("app-{name}.log"))
    };
    let said = |log: &Path, what: &str| fs::read_to_string(log).unwrap_or_default().contains(what);
    // vc as the caller, and vc as the destination.
    let from_vc = hold("vc", "jobs", STORE_VIP, STORE_PORT);
    let into_vc = hold("va", "web", vc_store, 5004);
    assert!(
        wait_until(Duration::from_secs(10), || said(&from_vc, "OPEN")
            && said(&into_vc, "OPEN")),
        "the streams did not open"
    );
    let api = IpAddr::V4(API_VIP);
    let jobs = IpAddr::V4(JOBS_VIP);
    let calls = |node: &str, service: &str, host: IpAddr, port: u16| {
        failed_calls(&mesh.http_calls(node, service, host, port, 3, Duration::from_millis(10)))
    };
    assert_eq!(calls("vc", "jobs", api, API_PORT), []);

    let (ok, out) = cli_on(&mesh, "va", &["node", "revoke", "vc"]);
    assert!(ok, "{out}");
    let revoked = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(3), || said(&from_vc, "CLOSED")
            && said(&into_vc, "CLOSED")),
        "vc's streams were not cut"
    );
    let cut = revoked.elapsed();
    eprintln!("vc's streams cut {cut:?} after `node revoke` returned");
    assert!(
        cut <= Duration::from_secs(1),
        "cut {cut:?} after the revocation was written"
    );
    // Its links too: the others count it unreachable.
    assert!(
        wait_until(Duration::from_secs(3), || {
            let ca = mesh.admin_json("va", "/ca");
            ca["nodes"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|n| n["node"] == "vc" && n["reachable"] == false)
            })
        }),
        "{}",
        mesh.admin_json("va", "/ca")
    );

    // Its apps' new calls fail (its own agent sees the others unreachable).
    assert_eq!(calls("vc", "jobs", api, API_PORT).len(), 3);
    // Whoever holds its keys is refused, with `revoked` in the log and the
    // counter: a leaf for jobs made with vc's node CA key.
    let certs = mesh.dir.join("certs");
    fs::create_dir_all(&certs).expect("dir");
    let stolen = pki::write_leaf(
        &certs,
        "stolen-jobs",
        &pki::Ca::load_node(&mesh.ca_dir(), "vc"),
        &pki::Leaf::valid_now("spiffe://mesh.local/svc/jobs"),
    );
    s_client(&mesh, "vc", mesh.node("vb").addr(false), &stolen);
    let refusals = "mesh_handshake_failures_total{side=\"inbound\",reason=\"revoked\"}";
    assert!(
        wait_until(Duration::from_secs(5), || mesh.metric("vb", refusals)
            >= Some(1.0)),
        "{}",
        mesh.metrics("vb")
    );
    let log_b = fs::read_to_string(mesh.agent_log("vb")).expect("log");
    assert!(log_b.contains("node \"vc\" is revoked"), "{log_b}");
    // The rest of the mesh works; calls into vc fail.
    assert_eq!(calls("va", "web", jobs, JOBS_PORT).len(), 3);
    let log_a = fs::read_to_string(mesh.agent_log("va")).expect("log");
    assert!(log_a.contains("node vc is revoked"), "{log_a}");
    assert_eq!(calls("va", "web", api, API_PORT), []);

    // Not back without a new node CA.
    let (ok, out) = cli_on(&mesh, "va", &["node", "readmit", "vc"]);
    assert!(
        !ok && out.contains("is revoked: issue it a new one first"),
        "{out}"
    );
    let nodes = mesh.ca_dir().join("nodes");
    fs::rename(nodes.join("vc.crt"), nodes.join("vc.crt.revoked")).expect("mv");
    fs::rename(nodes.join("vc.key"), nodes.join("vc.key.revoked")).expect("mv");
    let (ok, out) = mesh.cli(&["ca", "issue-node", "--node", "vc"]);
    assert!(ok, "{out}");
    // vc's agent takes its new CA from the files; still shut out.
    assert!(
        wait_until(Duration::from_secs(3), || fs::read_to_string(
            mesh.agent_log("vc")
        )
        .unwrap_or_default()
        .contains("the CA files changed")),
        "vc did not reload its CA"
    );
    assert_eq!(calls("vc", "jobs", api, API_PORT).len(), 3);
    let (ok, out) = cli_on(&mesh, "va", &["node", "readmit", "vc"]);
    assert!(ok, "{out}");
    assert!(
        wait_until(Duration::from_secs(5), || calls(
            "vc", "jobs", api, API_PORT
        )
        .is_empty()),
        "vc cannot call after readmit"
    );
    assert!(
        wait_until(Duration::from_secs(5), || calls(
            "va", "web", jobs, JOBS_PORT
        )
        .is_empty()),
        "vc cannot be called after readmit"
    );
}

/// An organization's PKI, made by openssl in `dir`: a root (RSA 4096 for
/// "org", RSA 2048 for others) and an intermediate (ECDSA P-384) with the
/// extensions `ext`, valid from `start` to `end` (openssl ca's
/// YYYYMMDDHHMMSSZ; `None`: from now, 20 days). Returns (root, ica, ica key).
fn org_pki(
    dir: &Path,
    org: &str,
    ext: &str,
    dates: Option<(&str, &str)>,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let root = if org == "org" { RSA_4096 } else { RSA_2048 };
    org_pki_with(dir, org, ext, dates, (root, P_384))
}

/// openssl `-newkey` arguments of the key types an organization may use.
const RSA_2048: &str = "rsa:2048";
const RSA_4096: &str = "rsa:4096";
const P_256: &str = "ec -pkeyopt ec_paramgen_curve:P-256";
const P_384: &str = "ec -pkeyopt ec_paramgen_curve:P-384";

/// [`org_pki`] with the root's and the intermediate's key types.
fn org_pki_with(
    dir: &Path,
    org: &str,
    ext: &str,
    dates: Option<(&str, &str)>,
    (root_key, ica_key): (&str, &str),
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    fs::create_dir_all(dir).expect("dir");
    fs::write(dir.join("ica.ext"), ext).expect("ext");
    fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
         default_md = sha256\npolicy = p\nunique_subject = no\n[p]\norganizationName = optional\n\
         commonName = supplied\n",
    )
    .expect("cnf");
    fs::write(dir.join("index.txt"), "").expect("index");
    fs::write(dir.join("serial"), "01\n").expect("serial");
    let dates = match dates {
        Some((from, to)) => format!("-startdate {from} -enddate {to}"),
        None => "-days 20".to_owned(),
    };
    let script = format!(
        "set -e
openssl req -x509 -newkey {root_key} -nodes -keyout root.key -out root.pem -days 30 \
  -subj '/O={org}/CN={org} Root CA' -addext 'basicConstraints=critical,CA:TRUE' \
  -addext 'keyUsage=critical,keyCertSign,cRLSign'
openssl req -newkey {ica_key} -nodes -keyout ica.key -out ica.csr \
  -subj '/O={org}/CN={org} Mesh Intermediate'
openssl ca -batch -config ca.cnf -notext -cert root.pem -keyfile root.key -in ica.csr \
  -out ica.pem -extfile ica.ext {dates}
"
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        dir.join("root.pem"),
        dir.join("ica.pem"),
        dir.join("ica.key"),
    )
}

/// What an intermediate of a mesh needs: a CA with room for node CAs, DNS
/// names constrained to the trust domain.
const GOOD_ICA: &str = "basicConstraints = critical, CA:TRUE, pathlen:1
keyUsage = critical, keyCertSign, cRLSign
nameConstraints = critical, permitted;DNS:mesh.local
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// An openssl-made organization root (RSA 4096) and intermediate (P-384,
/// pathlen 1, DNS names constrained to the trust domain): imported, node
/// CAs chain through it and the mesh works; rb presents [leaf, node CA,
/// the intermediate] on the wire; a node CA made under another
/// organization's intermediate is refused.
#[test]
fn an_organizations_ca_signs_the_node_cas_and_the_mesh_works() {
    let mesh = Mesh::nodes(&["ra", "rb"])
        .default_policy("allow")
        .service("web", "ra", 8080)
        .service_with("api", "rb", API_PORT, |s| s.vip(&API_VIP.to_string()))
        .build();
    let (root, ica, key) = org_pki(&mesh.dir.join("org"), "org", GOOD_ICA, None);
    let args = |c: &Path, k: &Path, r: &Path| [c, k, r].map(|p| p.display().to_string());
    let [c, k, r] = args(&ica, &key, &root);
    let (ok, out) = mesh.cli(&["ca", "import", "--cert", &c, "--key", &k, "--chain", &r]);
    assert!(ok, "{out}");
    assert!(
        out.contains("imported O=org, CN=org Mesh Intermediate"),
        "{out}"
    );
    mesh.start_agent("ra");
    mesh.start_agent("rb");
    mesh.start_health_server("rb", "api", API_PORT);
    let api = IpAddr::V4(API_VIP);
    assert_eq!(
        failed_calls(&mesh.http_calls("ra", "web", api, API_PORT, 3, Duration::from_millis(10))),
        []
    );
    // openssl agrees: the node CA chains to the organization's root.
    let ca = mesh.ca_dir();
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(&ica)
        .arg(ca.join("nodes/rb.crt"))
        .output()
        .expect("openssl verify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let chain = presented_chain(&mesh, "ra", "rb");
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[1..], pem_certs(&ca.join("nodes/rb.crt"))[..]);
    assert_eq!(chain[2], pem_certs(&ica)[0]);

    // Another organization's intermediate: its node CA for ra is refused.
    let other = mesh.dir.join("other");
    let (_, other_ica, other_key) = org_pki(&other, "other", GOOD_ICA, None);
    let signer = mesh.dir.join("other-signer");
    fs::create_dir_all(&signer).expect("dir");
    fs::copy(&other_ica, signer.join("root.crt")).expect("copy");
    fs::copy(&other_key, signer.join("root.key")).expect("copy");
    let certs = mesh.dir.join("certs");
    fs::create_dir_all(&certs).expect("dir");
    let foreign = pki::Ca::load_root(&signer).new_node("mesh.local", "ra");
    let leaf = pki::write_leaf(
        &certs,
        "foreign-web",
        &foreign,
        &pki::Leaf::valid_now("spiffe://mesh.local/svc/web"),
    );
    let b = mesh.node("rb").addr(false);
    s_client(&mesh, "ra", b, &leaf);
    let unknown_issuer =
        "mesh_handshake_failures_total{side=\"inbound\",reason=\"unknown_issuer\"}";
    assert!(
        wait_until(Duration::from_secs(5), || mesh.metric("rb", unknown_issuer)
            == Some(1.0)),
        "{}",
        mesh.metrics("rb")
    );
}

/// Bad organization CAs are refused with a message saying what is wrong,
/// and `ca_dir` stays as it was.
#[test]
fn a_bad_organization_ca_is_refused_and_nothing_changes() {
    let mesh = Mesh::nodes(&["ra"]).service("web", "ra", 8080).build();
    let ca = mesh.ca_dir();
    let listing = || {
        let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(&ca)
            .expect("ca dir")
            .filter_map(Result::ok)
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap_or_default(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let before = listing();
    let no_ca = GOOD_ICA.replace("CA:TRUE, pathlen:1", "CA:FALSE");
    let pathlen0 = GOOD_ICA.replace("pathlen:1", "pathlen:0");
    let excluded = GOOD_ICA.replace("permitted;DNS:mesh.local", "excluded;DNS:mesh.local");
    let elsewhere = GOOD_ICA.replace("permitted;DNS:mesh.local", "permitted;DNS:corp.example");
    let uri = GOOD_ICA.replace("permitted;DNS:mesh.local", "permitted;URI:mesh.local");
    // (name, the intermediate's extensions, its validity, what is said)
    type Case<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 6] = [
        ("no-ca", &no_ca, None, "is not a CA"),
        ("pathlen0", &pathlen0, None, "pathlen:0"),
        (
            "expired",
            GOOD_ICA,
            Some(("20200101000000Z", "20210101000000Z")),
            "is not valid now",
        ),
        (
            "excluded",
            &excluded,
            None,
            "DNS names of mesh.local are excluded",
        ),
        ("elsewhere", &elsewhere, None, "do not include mesh.local"),
        ("uri", &uri, None, "URI name constraints"),
    ];
    for (name, ext, dates, why) in cases {
        let (root, ica, key) = org_pki(&mesh.dir.join(name), name, ext, dates);
        let [c, k, r] = [&ica, &key, &root].map(|p| p.display().to_string());
        let (ok, out) = mesh.cli(&["ca", "import", "--cert", &c, "--key", &k, "--chain", &r]);
        assert!(
            !ok && out.contains(why) && out.contains("nothing changed"),
            "{name}: {out}"
        );
        assert_eq!(listing(), before, "{name} changed ca_dir");
    }
    // A key that is not the intermediate's.
    let (root, ica, _) = org_pki(&mesh.dir.join("good"), "good", GOOD_ICA, None);
    let (_, _, wrong_key) = org_pki(&mesh.dir.join("good2"), "good2", GOOD_ICA, None);
    let [c, k, r] = [&ica, &wrong_key, &root].map(|p| p.display().to_string());
    let (ok, out) = mesh.cli(&["ca", "import", "--cert", &c, "--key", &k, "--chain", &r]);
    assert!(
        !ok && out.contains("does not match the certificate"),
        "{out}"
    );
    // A chain that does not lead to the intermediate's issuer.
    let [c, k, r] = [
        &ica,
        &mesh.dir.join("good/ica.key"),
        &mesh.dir.join("good2/root.pem"),
    ]
    .map(|p| p.display().to_string());
    let (ok, out) = mesh.cli(&["ca", "import", "--cert", &c, "--key", &k, "--chain", &r]);
    assert!(!ok && out.contains("did not issue"), "{out}");
    assert_eq!(listing(), before);
}

/// Roots and intermediates of every usual key type import, and what they
/// sign verifies as agents verify it (`ca import` proves it before it
/// writes anything). No agent: the CLI only.
#[test]
fn organization_cas_of_every_usual_key_type_import() {
    let dir = tempfile_dir("org-keys");
    fs::write(
        dir.join("mesh.toml"),
        "[[node]]\nname = \"a\"\naddress = \"10.0.0.1\"\n",
    )
    .expect("config");
    for (i, keys) in [
        (RSA_2048, P_256),
        (RSA_4096, RSA_2048),
        (P_256, P_384),
        (P_384, RSA_4096),
    ]
    .into_iter()
    .enumerate()
    {
        let (root, ica, key) =
            org_pki_with(&dir.join(format!("pki{i}")), "org", GOOD_ICA, None, keys);
        let out = Command::new(agent_bin())
            .args(["ca", "import", "--config"])
            .arg(dir.join("mesh.toml"))
            .arg("--cert")
            .arg(&ica)
            .arg("--key")
            .arg(&key)
            .arg("--chain")
            .arg(&root)
            .output()
            .expect("mesh-agent");
        let (ok, text) = outcome(&out);
        assert!(ok && text.contains("imported"), "{keys:?}: {text}");
        assert_eq!(
            pem_certs(&dir.join("ca/trust.crt")),
            pem_certs(&root),
            "{keys:?}"
        );
    }
    let _ = fs::remove_dir_all(&dir);
}

/// A fresh directory under the system's temp dir.
fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mesh-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("dir");
    dir
}
