//! mTLS between agents, proven on the wire and against hostile clients.
//! Real agents in network namespaces, real openssl clients. Need root.
use std::{fs, net::IpAddr, path::Path, process::Command, time::Duration};

use mesh_tests::{
    API_PORT, Mesh, Node, VIP, pki, run_to_string, vip, wait_until,
    wire::{parse_tls, tcp_conns},
};

/// `mesh/2`: app connections are streams of one pooled TLS connection
/// between the agents, which still shows TLS 1.3, the destination's SNI,
/// both ALPN ids offered, and no plaintext.
#[test]
fn only_tls_1_3_with_alpn_mesh_crosses_the_wire() {
    let mesh = Mesh::nodes(&["wa", "wb"])
        .default_policy("allow")
        .service("web", "wa", 8080)
        .service_with("api", "wb", API_PORT, |s| s.vip(VIP))
        .start();
    mesh.start_echo_server("wb", "api", API_PORT);
    let capture = mesh.capture("wa", &format!("tcp port {API_PORT}"));
    let marker = "MARKER-7f3a9c-the-quick-brown-fox";
    for _ in 0..3 {
        let echoed = mesh.echo("wa", "web", vip(), API_PORT, marker);
        assert_eq!(
            echoed, marker,
            "the echo did not come back through the mesh"
        );
    }
    let pcap = capture.stop();

    assert!(
        !mesh_tests::wire::file_contains(&pcap, marker.as_bytes()).expect("read pcap"),
        "the marker crossed the wire in clear"
    );
    let conns = tcp_conns(&pcap).expect("capture reassembles");
    assert_eq!(
        conns.len(),
        1,
        "three app connections, one pooled connection between the agents"
    );
    let conn = &conns[0];
    assert_eq!(conn.client.ip(), mesh.node("wa").addr(false));
    assert_eq!(conn.server.ip(), mesh.node("wb").addr(false));
    for (direction, bytes) in [
        ("to server", &conn.to_server),
        ("to client", &conn.to_client),
    ] {
        assert!(
            bytes.len() > marker.len(),
            "{direction}: only {} bytes",
            bytes.len()
        );
        let tls = parse_tls(bytes).unwrap_or_else(|e| panic!("{direction} is not TLS: {e}"));
        // After the hellos, only application_data (23), and the optional
        // middlebox change_cipher_spec (20).
        assert!(
            tls.content_types
                .iter()
                .skip(1)
                .all(|t| *t == 23 || *t == 20),
            "{direction}: record types {:?}",
            tls.content_types
        );
    }
    let hello = parse_tls(&conn.to_server)
        .expect("tls")
        .client_hello
        .expect("a ClientHello");
    assert_eq!(hello.alpn, ["mesh/2", "mesh/1"]);
    assert_eq!(hello.supported_versions, [0x0304], "TLS 1.3 only");
    assert_eq!(hello.sni.as_deref(), Some("api.svc.mesh.local"));
    let server = parse_tls(&conn.to_client)
        .expect("tls")
        .server_hello
        .expect("a ServerHello");
    assert_eq!(server.selected_version, Some(0x0304));
    // Cheapest per byte of TLS 1.3's suites: both agents put it first.
    assert_eq!(server.cipher_suite, 0x1301, "TLS_AES_128_GCM_SHA256");
    // The negotiated ALPN is encrypted in TLS 1.3: both agents require it
    // and say so once the handshake is done.
    let log_a = fs::read_to_string(mesh.agent_log("wa")).expect("log");
    let log_b = fs::read_to_string(mesh.agent_log("wb")).expect("log");
    assert!(
        log_a.contains("mTLS established") && log_a.contains("alpn=\"mesh/2\""),
        "{log_a}"
    );
    assert!(
        log_b.contains("mTLS accepted src=web dst=api alpn=\"mesh/2\""),
        "{log_b}"
    );
}

/// A busy stream leaves the pooled connection for a `mesh/move` connection
/// of its own, which shows the same properties on the wire: TLS 1.3, the
/// destination's SNI, ALPN `mesh/move` alone, and no plaintext.
#[test]
fn a_busy_stream_moves_to_a_connection_of_its_own_with_the_same_tls() {
    const BIG: usize = 4 * 1024 * 1024;
    let mesh = Mesh::nodes(&["ma", "mb"])
        .default_policy("allow")
        .service("web", "ma", 8080)
        .service_with("api", "mb", API_PORT, |s| s.vip(VIP))
        .start();
    mesh.start_transfer_server("mb", "api", API_PORT, BIG);
    let capture = mesh.capture("ma", &format!("tcp port {API_PORT}"));
    let out = mesh.transfer_over("ma", Some("web"), vip(), API_PORT, BIG, 2.0);
    assert!(out.starts_with("OK"), "{out}");
    let pcap = capture.stop();
    for (node, side) in [("ma", "outbound"), ("mb", "inbound")] {
        let series = format!("mesh_moved_streams_total{{side=\"{side}\"}}");
        assert_eq!(mesh.metric(node, &series), Some(1.0), "{node}");
    }
    assert_eq!(mesh.metric("ma", "mesh_pooled_streams"), Some(0.0));

    let conns = tcp_conns(&pcap).expect("capture reassembles");
    assert_eq!(conns.len(), 2, "the pooled connection and the moved one");
    let mut offered = Vec::new();
    for conn in &conns {
        for bytes in [&conn.to_server, &conn.to_client] {
            let tls = parse_tls(bytes).expect("TLS both ways");
            assert!(
                tls.content_types
                    .iter()
                    .skip(1)
                    .all(|t| *t == 23 || *t == 20),
                "record types {:?}",
                tls.content_types
            );
        }
        let hello = parse_tls(&conn.to_server)
            .expect("tls")
            .client_hello
            .expect("a ClientHello");
        assert_eq!(hello.supported_versions, [0x0304], "TLS 1.3 only");
        assert_eq!(hello.sni.as_deref(), Some("api.svc.mesh.local"));
        offered.push(hello.alpn);
    }
    offered.sort();
    assert_eq!(offered, [vec!["mesh/2", "mesh/1"], vec!["mesh/move"]]);
    // Most of the bytes went over the moved connection.
    let moved = conns
        .iter()
        .find(|c| c.to_server.len() > BIG / 2)
        .expect("a connection carried most of the upload");
    assert!(moved.to_client.len() > BIG / 2, "and of the answer");
    let log_b = fs::read_to_string(mesh.agent_log("mb")).expect("log");
    assert!(
        log_b.contains("mTLS accepted src=web dst=api alpn=\"mesh/move\""),
        "{log_b}"
    );
}

/// Runs `openssl s_client` on `node` against `addr`:5001 with extra
/// arguments, sending a line; returns its output.
fn s_client(mesh: &Mesh, node: &str, addr: IpAddr, extra: &[&str]) -> String {
    let target = match addr {
        IpAddr::V4(a) => format!("{a}:{API_PORT}"),
        IpAddr::V6(a) => format!("[{a}]:{API_PORT}"),
    };
    let mut cmd = mesh.cmd(node, "sh");
    cmd.arg("-c").arg(format!(
        "(printf 'hello\\n'; sleep 1) | openssl s_client -connect {target} -tls1_3 \
         -servername api.svc.mesh.local -alpn mesh/1 {} 2>&1",
        extra.join(" ")
    ));
    run_to_string(&mut cmd, Duration::from_secs(20))
}

fn cert_args(files: &pki::CertFiles) -> Vec<String> {
    let mut args = vec![
        "-cert".to_owned(),
        files.cert.display().to_string(),
        "-key".to_owned(),
        files.key.display().to_string(),
    ];
    if let Some(chain) = &files.chain {
        args.extend(["-cert_chain".to_owned(), chain.display().to_string()]);
    }
    args
}

fn refusals(log: &Path) -> usize {
    fs::read_to_string(log)
        .unwrap_or_default()
        .matches("inbound connection refused")
        .count()
}

#[test]
fn clients_without_a_valid_mesh_identity_are_refused() {
    let mesh = Mesh::nodes(&["ra", "rb"])
        .default_policy("allow")
        .service("web", "ra", 8080)
        .service_with("api", "rb", API_PORT, |s| s.vip(VIP))
        .start();
    let accepts = mesh.start_transfer_server("rb", "api", API_PORT, 100);
    let b = mesh.node("rb").addr(false);
    let certs = mesh.dir.join("certs");
    fs::create_dir_all(&certs).expect("dir");
    let ca = mesh.ca_dir();
    let node_a = pki::Ca::load_node(&ca, "ra");
    let node_b = pki::Ca::load_node(&ca, "rb");
    let other_root = pki::Ca::new_root("other.td");
    let other_node = other_root.new_node("other.td", "ra");
    let web = "spiffe://mesh.local/svc/web";
    let now = time::OffsetDateTime::now_utc();
    let expired = pki::Leaf {
        uri: web,
        not_before: now - time::Duration::hours(2),
        not_after: now - time::Duration::hours(1),
    };

    // (what, extra s_client args, what agent rb logs)
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("no client certificate", vec![], "peer sent no certificates"),
        (
            "another trust domain",
            cert_args(&pki::write_leaf(
                &certs,
                "other",
                &other_node,
                &pki::Leaf::valid_now("spiffe://other.td/svc/web"),
            )),
            "invalid peer certificate",
        ),
        (
            "an expired leaf",
            cert_args(&pki::write_leaf(&certs, "expired", &node_a, &expired)),
            "invalid peer certificate: Expired",
        ),
        (
            "a SPIFFE ID that is no service of the mesh",
            cert_args(&pki::write_leaf(
                &certs,
                "ghost",
                &node_a,
                &pki::Leaf::valid_now("spiffe://mesh.local/svc/ghost"),
            )),
            "not a meshed service",
        ),
        (
            "a leaf for web signed by the node that hosts api, not web",
            cert_args(&pki::write_leaf(
                &certs,
                "wrong-node",
                &node_b,
                &pki::Leaf::valid_now(web),
            )),
            "is signed by node \"rb\", which hosts no instance of \"web\" (its nodes: [\"ra\"])",
        ),
        (
            "a self-signed certificate with the right URI SAN",
            cert_args(&pki::write_self_signed(&certs, "self", web)),
            "invalid peer certificate",
        ),
    ];
    let log = mesh.agent_log("rb");
    for (what, args, reason) in &cases {
        let before = refusals(&log);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = s_client(&mesh, "ra", b, &args);
        assert!(
            wait_until(Duration::from_secs(5), || refusals(&log) > before),
            "{what}: agent rb did not refuse; s_client said:\n{out}"
        );
        let text = fs::read_to_string(&log).expect("log");
        let last = text
            .lines()
            .rev()
            .find(|l| l.contains("inbound connection refused"))
            .unwrap_or("");
        assert!(
            last.contains(reason),
            "{what}: refusal reason {last:?} lacks {reason:?}"
        );
    }
    // A plaintext client, too.
    let before = refusals(&log);
    let out = mesh.transfer("ra", None, b, API_PORT, 100);
    assert!(!out.starts_with("OK"), "plaintext client: {out}");
    assert!(wait_until(Duration::from_secs(5), || refusals(&log) > before));
    assert_eq!(
        fs::read_to_string(&accepts).expect("log"),
        "",
        "the service saw a connection"
    );

    // Control: the same client with a valid leaf for web does get through,
    // so the refusals above are about the certificates.
    let good = pki::write_leaf(&certs, "good", &node_a, &pki::Leaf::valid_now(web));
    let args = cert_args(&good);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = s_client(&mesh, "ra", b, &args);
    assert!(
        wait_until(Duration::from_secs(5), || !fs::read_to_string(&accepts)
            .unwrap_or_default()
            .is_empty()),
        "a valid leaf was refused: {out}\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    // A valid leaf that negotiates mesh/2 and then says nothing: closed
    // once the handshake bound (5 s) is over, not held forever.
    let mut quiet = mesh.cmd("ra", "sh");
    quiet.arg("-c").arg(format!(
        "sleep 9 | openssl s_client -connect {b}:{API_PORT} -tls1_3 \
         -servername api.svc.mesh.local -alpn mesh/2 {} 2>&1",
        args.join(" ")
    ));
    let out = run_to_string(&mut quiet, Duration::from_secs(20));
    assert!(out.contains("ALPN protocol: mesh/2"), "{out}");
    let said = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        said.contains("sent no HTTP/2 preface within 5s"),
        "the quiet mesh/2 peer was not closed:\n{said}"
    );
}

/// The serial of the certificate `node`'s agent presents for api now.
fn presented_serial(mesh: &Mesh, node: &Node, server: IpAddr) -> String {
    let out = s_client(mesh, &node.name, server, &[]);
    let pem: String = out
        .split_inclusive('\n')
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
        .chain(["-----END CERTIFICATE-----\n"])
        .collect();
    assert!(
        pem.starts_with("-----BEGIN"),
        "no server certificate in:\n{out}"
    );
    pki::serial_hex(&pem)
}

#[test]
fn leaves_renew_at_half_life_without_dropping_connections() {
    let mesh = Mesh::nodes(&["na", "nb"])
        .default_policy("allow")
        .leaf_ttl("4s")
        .service("web", "na", 8080)
        .service_with("api", "nb", API_PORT, |s| s.vip(VIP))
        .start();
    mesh.start_transfer_server("nb", "api", API_PORT, 1 << 20);
    let b = mesh.node("nb").addr(false);
    let first = mesh.serial("nb", "api");
    assert_eq!(presented_serial(&mesh, mesh.node("na"), b), first);

    // A transfer paced over 9 s runs across several 2 s renewals.
    let out = mesh.transfer_over("na", Some("web"), vip(), API_PORT, 1 << 20, 9.0);
    assert!(out.starts_with("OK "), "transfer across renewals: {out}");
    let log = fs::read_to_string(mesh.agent_log("nb")).expect("log");
    let renewals = log.matches("renewed leaf service=api").count();
    assert!(
        renewals >= 3,
        "only {renewals} renewals of api during the transfer"
    );

    // New connections present the current, new certificate.
    let now = mesh.serial("nb", "api");
    assert_ne!(now, first, "api's serial did not change");
    let presented = presented_serial(&mesh, mesh.node("na"), b);
    let after = mesh.serial("nb", "api");
    assert!(
        presented == now || presented == after,
        "presented {presented}, status said {now} then {after}"
    );
    assert_ne!(presented, first);
}

#[test]
fn status_shows_each_local_service_certificate() {
    let mesh = Mesh::nodes(&["sa", "sb"])
        .default_policy("allow")
        .leaf_ttl("24h")
        .service("web", "sa", 8080)
        .service_with("api", "sb", API_PORT, |s| s.vip(VIP))
        .start();
    let status = mesh.status("sb");
    assert_eq!(status["node"], "sb");
    let api = &status["services"][0];
    assert_eq!(api["name"], "api");
    assert_eq!(api["spiffe_id"], "spiffe://mesh.local/svc/api");
    let secs = api["expires_in_secs"].as_u64().expect("expiry");
    assert!(
        (23 * 3600..=24 * 3600).contains(&secs),
        "expires in {secs} s"
    );
    // Idle connections from any local process do not lock the endpoint:
    // past its 256 slots a connection is closed at once, and one that
    // says nothing is closed after the 2 s bound, so the endpoint answers
    // again although every one of them is still held open by its client.
    let mut idle = mesh.cmd("sb", "python3");
    idle.args(["-c", IDLE_ADMIN_CLIENTS]);
    let out = run_to_string(&mut idle, Duration::from_secs(30));
    println!("idle admin clients: {out}");
    let field = |name: &str| -> f64 {
        out.split_whitespace()
            .skip_while(|w| *w != name)
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {out:?}"))
    };
    assert_eq!(field("CONNECTED"), 300.0, "{out}");
    // Each connection is either closed at once (over the 256 slots) or
    // held until the 2 s bound; never more than 256 held at a time. (On
    // a busy machine the 300 may take seconds to open, the listen backlog
    // being full, and slots free up meanwhile: so not "exactly 44 at
    // once", but the most held at once, from when each was closed.)
    let (at_once, held) = (field("CLOSED_AT_ONCE"), field("HELD_THEN_CLOSED"));
    let most = field("MOST_HELD_AT_ONCE");
    assert_eq!(at_once + held, 300.0, "{out}");
    assert!(most <= 260.0, "more held at once than the 256 slots: {out}");
    assert!(
        at_once >= 1.0 || most >= 250.0,
        "the cap was never reached: {out}"
    );
    let last = field("LONGEST_HELD");
    assert!(
        (1.5..=3.5).contains(&last),
        "held ones not closed after 2 s: {out}"
    );
    assert_eq!(
        mesh.status("sb")["node"],
        "sb",
        "status after 300 idle admin connections"
    );
    // The human table, from the same endpoint.
    let mut cmd = mesh.cmd("sb", &mesh.agent);
    cmd.arg("status");
    let table = run_to_string(&mut cmd, Duration::from_secs(10));
    let serial = api["serial"].as_str().expect("serial");
    assert!(table.contains("api") && table.contains(serial), "{table}");
    // No agent in a namespace: a clear error, not a hang.
    let mut cmd = Command::new(&mesh.agent);
    cmd.args(["status", "--admin", "127.0.0.1:1"]);
    let err = run_to_string(&mut cmd, Duration::from_secs(10));
    assert!(
        err.contains("cannot reach the agent's admin endpoint"),
        "{err}"
    );
}

#[test]
fn nodes_run_without_the_root_key() {
    // As on real hosts: the operator issues each node's intermediate where
    // the root key is, then the key leaves; nodes keep root.crt and their
    // own nodes/<node>.{crt,key}.
    let mesh = Mesh::nodes(&["ka", "kb"])
        .default_policy("allow")
        .service("web", "ka", 8080)
        .service_with("api", "kb", API_PORT, |s| s.vip(VIP))
        .build();
    let ca = |args: &[&str]| {
        let mut cmd = Command::new(&mesh.agent);
        cmd.arg("ca").args(args).arg("--config").arg(mesh.config());
        let out = cmd.output().expect("mesh-agent ca");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ca_dir = mesh.ca_dir();
    fs::rename(ca_dir.join("root.key"), mesh.dir.join("root.key.offline")).expect("move key");

    // Without the root key and without its intermediate, a node says what to do.
    let mut cmd = mesh.cmd("ka", &mesh.agent);
    cmd.arg("run")
        .arg("--config")
        .arg(mesh.config())
        .args(["--node", "ka"]);
    let out = run_to_string(&mut cmd, Duration::from_secs(20));
    assert!(
        out.contains("no intermediate CA for node \"ka\"") && out.contains("ca issue-node"),
        "{out}"
    );
    let (ok, err) = ca(&["issue-node", "--node", "ka"]);
    assert!(
        !ok && err.contains("root.key"),
        "issue-node without the root key: {err}"
    );

    fs::rename(mesh.dir.join("root.key.offline"), ca_dir.join("root.key")).expect("key back");
    for node in ["ka", "kb"] {
        let (ok, err) = ca(&["issue-node", "--node", node]);
        assert!(ok, "issue-node {node}: {err}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(ca_dir.join(format!("nodes/{node}.key")))
                .expect("key")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "node key mode");
    }
    let (ok, err) = ca(&["issue-node", "--node", "ka"]);
    assert!(!ok && err.contains("refusing to overwrite"), "{err}");
    let (ok, err) = ca(&["init"]);
    assert!(!ok && err.contains("refusing to overwrite"), "{err}");
    fs::remove_file(ca_dir.join("root.key")).expect("root key gone");

    mesh.start_agent("ka");
    mesh.start_agent("kb");
    mesh.start_transfer_server("kb", "api", API_PORT, 1000);
    let out = mesh.transfer("ka", Some("web"), vip(), API_PORT, 1000);
    assert!(out.starts_with("OK "), "mesh without the root key: {out}");
}

/// `mesh/1` (here: the source runs `--no-multiplex`) makes one TLS
/// connection per app connection; the second resumes the first's session.
#[test]
fn a_second_connection_resumes_the_session_and_both_agents_count_it() {
    let mesh = Mesh::nodes(&["ra", "rb"])
        .default_policy("allow")
        .service("web", "ra", 8080)
        .service_with("api", "rb", API_PORT, |s| s.vip(VIP))
        .agent_args("ra", &["--no-multiplex"])
        .start();
    mesh.start_echo_server("rb", "api", API_PORT);
    for round in ["first", "second"] {
        let echoed = mesh.echo("ra", "web", vip(), API_PORT, round);
        assert_eq!(echoed.trim(), round, "the {round} call did not come back");
    }
    for (node, side) in [("ra", "outbound"), ("rb", "inbound")] {
        let text = mesh.metrics(node);
        for kind in ["full", "resumed"] {
            let line = format!("mesh_handshakes_total{{side=\"{side}\",kind=\"{kind}\"}} 1");
            assert!(text.contains(&line), "{node}: missing {line:?} in:\n{text}");
        }
    }
}

#[test]
fn peers_that_stall_their_handshake_cannot_exhaust_the_destination() {
    let mesh = Mesh::nodes(&["ha", "hb"])
        .default_policy("allow")
        .service("web", "ha", 8080)
        .service_with("api", "hb", API_PORT, |s| s.vip(VIP))
        .agent_args("hb", &["--max-handshakes", "4"])
        .start();
    mesh.start_echo_server("hb", "api", API_PORT);
    let b = mesh.node("hb").v4;
    // An outsider opens 6 connections to the service port and says nothing.
    let mut hold = mesh.cmd("ha", "python3");
    hold.args([
        "-c",
        &format!(
            "import socket, time\n\
             s = [socket.create_connection(('{b}', {API_PORT})) for _ in range(6)]\n\
             time.sleep(4)"
        ),
    ]);
    let mut hold = hold.spawn().expect("python3");
    let metrics = || mesh.metrics("hb");
    let refused =
        "mesh_handshake_failures_total{side=\"inbound\",reason=\"too_many_handshakes\"} 2\n";
    assert!(
        wait_until(Duration::from_secs(3), || metrics().contains(refused)),
        "the 5th and 6th stalled handshakes were not refused:\n{}",
        metrics()
    );
    let _ = hold.wait();
    // Once the stalled peers are gone, callers get through again.
    assert_eq!(
        mesh.echo("ha", "web", vip(), API_PORT, "after").trim(),
        "after"
    );
}

/// Opens 300 connections to the admin endpoint and says nothing on any
/// (the script never closes one); prints how many connected (a failure
/// to connect ends the script), how many the agent closed before 1.5 s
/// after their connect (at once, or as soon as a busy agent accepted
/// them), how many it held longer and then closed, the most it held at
/// once, the longest it held one, and how long opening them took.
const IDLE_ADMIN_CLIENTS: &str = r#"
import select, socket, time
t0 = time.time()
opened = {}
for _ in range(300):
    s = socket.create_connection(("127.0.0.1", 15000), timeout=2)
    opened[s] = time.time()
opening = time.time() - t0
open_ = set(opened)
at_once = held = 0
longest = 0.0
closes = []
while open_ and time.time() - t0 < 15:
    ready, _, _ = select.select(list(open_), [], [], 0.1)
    for s in ready:
        try:
            gone = s.recv(1) == b""
        except OSError:
            gone = True
        if gone:
            open_.discard(s)
            after = time.time() - opened[s]
            if after < 1.5:
                at_once += 1
            else:
                held += 1
                longest = max(longest, after)
                closes.append(time.time())
# A held connection was closed 2 s after the agent accepted it: the most
# held at once, from [close - 2 s, close].
events = sorted([(c - 2.0, 1) for c in closes] + [(c, -1) for c in closes])
most = now = 0
for _, step in events:
    now += step
    most = max(most, now)
print("CONNECTED", len(opened), "CLOSED_AT_ONCE", at_once, "HELD_THEN_CLOSED", held,
      "MOST_HELD_AT_ONCE", most, "LONGEST_HELD", round(longest, 2),
      "OPENING_TOOK", round(opening, 2), "STILL_OPEN", len(open_))
"#;
