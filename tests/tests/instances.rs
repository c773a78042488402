//! Services with an instance on several nodes (`nodes = [...]`): the
//! catalog address names one instance, the VIP the caller's own node's
//! instance or else the first (the interim rule until load balancing),
//! only nodes hosting an instance may vouch for the service, and instances
//! come and go with the file. Real agents in network namespaces; need root.
use std::{fs, net::IpAddr, path::Path, time::Duration};

use mesh_tests::{Mesh, pki, run_to_string, wait_until};

const API_PORT: u16 = 5001;
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
    // The VIP: the first instance in `nodes` order (no local one on ia).
    call(&mesh, "ia", "web", vip());
    assert_eq!(counts(), (2, 1), "web -> VIP");

    // From ic, which hosts an instance: the VIP stays on the node.
    call(&mesh, "ic", "tool", vip());
    assert_eq!(counts(), (2, 2), "tool on ic -> VIP");
    let log_c = fs::read_to_string(mesh.agent_log("ic")).expect("agent log");
    assert!(
        log_c.contains("outbound, same node"),
        "tool -> VIP left node ic: {log_c}"
    );
    // The other instance by its catalog address, across the wire.
    call(&mesh, "ic", "tool", b);
    assert_eq!(counts(), (3, 2), "tool on ic -> <ib>:5001");
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
