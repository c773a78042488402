//! Stopping and restarting an agent: SIGTERM drains, apps see refused
//! connections (never a hang, never a plaintext path), a restart works.
//! Needs root.
use std::{
    fs,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use mesh_tests::{Mesh, Signal, app, wait_until};

const VIP: &str = "240.0.0.41";

#[test]
fn sigterm_drains_and_a_restart_never_opens_a_plaintext_path() {
    let mesh = Mesh::nodes(&["lca", "lcb"])
        .default_policy("allow")
        .service("web", "lca", 8080)
        .service_with("api", "lcb", 5001, |s| s.vip(VIP))
        .agent_args("lca", &["--drain-seconds", "2"])
        .start();
    let accepts = mesh.start_echo_server("lcb", "api", 5001);

    // A connection open through agent lca.
    let log = mesh.dir.join("app-hold.log");
    let mut hold = mesh.cmd_as("lca", "web", "python3");
    hold.arg(app("hold_client.py")).args([VIP, "5001", "20"]);
    mesh.spawn_app(hold, "hold");
    assert!(wait_until(Duration::from_secs(10), || fs::read_to_string(
        &log
    )
    .unwrap_or_default()
    .contains("OPEN")));
    let accepted = fs::read_to_string(&accepts).expect("log").lines().count();

    let sent = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    std::thread::scope(|s| {
        let stopping = s.spawn(|| mesh.stop_agent("lca", Signal::SIGTERM));
        std::thread::sleep(Duration::from_millis(500));
        // Draining: a new call is refused at once, not left hanging.
        let started = Instant::now();
        let out = mesh.transfer("lca", Some("web"), VIP, 5001, 10);
        assert!(out.starts_with("ERRNO 111 "), "during the drain: {out}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        // The admin endpoint still answers, and /ready says it drains.
        let ready = mesh.admin_get("lca", "/ready");
        assert!(
            matches!(&ready, Some((503, body)) if body["phase"] == "draining"),
            "/ready while draining: {ready:?}"
        );
        let status = stopping.join().expect("stop");
        assert!(status.success(), "agent exit: {status}");
    });
    wait_until(Duration::from_secs(3), || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("CLOSED")
    });
    let text = fs::read_to_string(&log).expect("log");
    let closed: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("CLOSED "))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("the open connection was not closed: {text}"));
    let after = closed - sent;
    assert!(
        (1.5..4.0).contains(&after),
        "open connection closed {after:.2} s after SIGTERM"
    );
    let agent_log = fs::read_to_string(mesh.agent_log("lca")).expect("log");
    assert!(
        agent_log.contains("draining") && agent_log.contains("grace period over"),
        "{agent_log}"
    );

    // Agent down: calls fail fast, by VIP and by catalog address, and
    // nothing reaches api in plaintext (agent lcb still refuses it).
    let b = mesh.node("lcb").v4;
    for host in [VIP.to_owned(), b.to_string()] {
        let started = Instant::now();
        let out = mesh.transfer("lca", Some("web"), &host, 5001, 10);
        assert!(!out.starts_with("OK"), "{host} with the agent down: {out}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{host} took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        fs::read_to_string(&accepts).expect("log").lines().count(),
        accepted,
        "api saw a connection while agent lca was down"
    );

    // Restarted, the mesh works again.
    mesh.start_agent("lca");
    assert_eq!(
        mesh.echo("lca", "web", VIP.parse().expect("ip"), 5001, "back"),
        "back"
    );
}

#[test]
fn services_come_and_go_without_a_restart() {
    let base = Mesh::nodes(&["sva", "svb"])
        .default_policy("allow")
        .service("web", "sva", 8080)
        .service_with("api", "svb", 5001, |s| s.vip("240.0.0.42"));
    let mesh = base.start();
    mesh.start_transfer_server("svb", "api", 5001, 100);
    assert!(
        mesh.transfer("sva", Some("web"), "api.mesh", 5001, 100)
            .starts_with("OK ")
    );

    // Add `db` on node svb: a name, a VIP, a certificate, steering, all live.
    let with_db = base
        .clone()
        .service_with("db", "svb", 5002, |s| s.vip("240.0.0.43"));
    fs::write(mesh.config(), with_db.toml(&mesh)).expect("write");
    assert!(
        wait_until(Duration::from_secs(2), || mesh.status("svb")["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == "db"))),
        "db got no certificate"
    );
    let db_accepts = mesh.start_transfer_server("svb", "db", 5002, 100);
    let out = mesh.transfer("sva", Some("web"), "db.mesh", 5002, 100);
    assert!(
        out.starts_with("OK "),
        "web -> db.mesh after adding db: {out}"
    );
    assert_eq!(
        fs::read_to_string(&db_accepts)
            .expect("log")
            .lines()
            .count(),
        1
    );
    // db's loopback port is guarded at once, too.
    let out = mesh.transfer("svb", None, "127.0.0.1", 5002, 100);
    assert!(
        out.starts_with("ERRNO 1 "),
        "loopback guard for the new service: {out}"
    );

    // Remove api: it is no longer a mesh destination nor a name, and its
    // certificate is gone; db still works.
    let without_api = with_db.without_service("api");
    fs::write(mesh.config(), without_api.toml(&mesh)).expect("write");
    assert!(
        wait_until(Duration::from_secs(2), || !mesh.status("svb")["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == "api"))),
        "api still has a certificate"
    );
    // Each agent reads the file on its own: sva may apply it a moment later.
    assert!(
        wait_until(Duration::from_secs(2), || !mesh
            .admin_json("sva", "/config")["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == "api"))),
        "sva still has api"
    );
    let out = mesh.transfer("sva", Some("web"), "240.0.0.42", 5001, 100);
    assert!(!out.starts_with("OK"), "api is gone but reachable: {out}");
    let mut cmd = mesh.cmd("sva", "getent");
    cmd.args(["ahostsv4", "api.mesh"]);
    assert_eq!(
        mesh_tests::run_to_string(&mut cmd, Duration::from_secs(10)),
        ""
    );
    let out = mesh.transfer("sva", Some("web"), "db.mesh", 5002, 100);
    assert!(out.starts_with("OK "), "db after removing api: {out}");
}

/// An upgrade refuses nothing: `mesh-agent run` for a node whose agent runs
/// takes over its listening sockets. 1,000 calls at 10 ms intervals across
/// the handover all succeed, a stream open before it lives on through the
/// old agent's drain, the old agent exits by itself, and the kernel holds
/// the same number of programs and links as before. Here the caller's
/// node (hoa) is upgraded; first, an upgrade that would change a port is
/// refused and the old agent serves on.
#[test]
fn a_second_agent_takes_over_without_refusing_a_connection() {
    upgrade_under_calls(&["hoa"], |mesh| {
        let out = mesh_tests::output_with_timeout(
            mesh.cmd("hoa", &mesh.agent)
                .args([
                    "run",
                    "--node",
                    "hoa",
                    "--outbound-port",
                    "15009",
                    "--config",
                ])
                .arg(mesh.config())
                .arg("--bpffs")
                .arg(mesh_tests::bpffs()),
            Duration::from_secs(30),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("stop it first to change that"),
            "{err}"
        );
        let said = |what: &str| {
            fs::read_to_string(mesh.agent_log("hoa"))
                .unwrap_or_default()
                .contains(what)
        };
        assert!(
            wait_until(Duration::from_secs(5), || said(
                "handover aborted: serving on"
            )),
            "the old agent did not go on"
        );
    });
}

/// The destination's node (hob) upgraded under the same calls: the
/// caller's agent holds pooled `mesh/2` connections to the old agent,
/// which must not lose a call when it stops accepting streams and exits.
#[test]
fn upgrading_the_destination_agent_refuses_no_call() {
    upgrade_under_calls(&["hob"], |_| {});
}

/// Both agents upgraded, the destination's right after the caller's.
#[test]
fn upgrading_both_agents_one_after_the_other_refuses_no_call() {
    upgrade_under_calls(&["hoa", "hob"], |_| {});
}

/// Calls across an upgrade: enough at 10 ms to outlast the old agents.
const CALLS: usize = 1000;

/// Web on hoa calls api on hob [`CALLS`] times at 10 ms while a stream from web
/// to echo on hob stays open; after 50 calls, `before` runs, then each of
/// `nodes` in turn gets a second agent, which takes over from the running
/// one, handing over its check states too. No call fails, the stream lives on, each old agent exits 0 by
/// itself, the programs and links are as many as before, and each new
/// agent's SIGTERM removes its node's.
fn upgrade_under_calls(nodes: &[&str], before: impl FnOnce(&Mesh)) {
    let programs = || mesh_tests::loaded_mesh_programs().len();
    let links = || mesh_tests::loaded_mesh_links().len();
    let (programs0, links0) = (programs(), links());
    // api's check passes only after 3 runs in a row, a second apart: an
    // agent that started its checks anew would hold it critical ~2 s.
    let check = "http = \"/health\"\ninterval = \"1s\"\nsuccess_before_passing = 3";
    let mesh = Mesh::nodes(&["hoa", "hob"])
        .default_policy("allow")
        .service("web", "hoa", 8080)
        .service_with("api", "hob", 5001, |s| s.vip(VIP).check(check))
        .service_with("echo", "hob", 5002, |s| s.vip("240.0.0.42"))
        .start();
    mesh.start_health_server("hob", "api", 5001);
    assert!(
        mesh.wait_instance_state("hoa", "api", "hob", "passing", Duration::from_secs(15))
            .is_some(),
        "api never passing"
    );
    mesh.start_echo_server("hob", "echo", 5002);
    let hold_log = mesh.dir.join("app-hold.log");
    let mut hold = mesh.cmd_as("hoa", "web", "python3");
    hold.arg(app("hold_client.py"))
        .args(["240.0.0.42", "5002", "6"]);
    mesh.spawn_app(hold, "hold");
    let held = |what: &str| {
        fs::read_to_string(&hold_log)
            .unwrap_or_default()
            .contains(what)
    };
    assert!(
        wait_until(Duration::from_secs(10), || held("OPEN")),
        "no stream"
    );

    let vip = VIP.parse().expect("vip");
    let mut calls =
        mesh.http_call_stream("hoa", "web", vip, 5001, CALLS, Duration::from_millis(10));
    for i in 0..50 {
        assert!(
            calls.next(Duration::from_secs(10)).is_some(),
            "call {i} did not end"
        );
    }
    before(&mesh);
    for node in nodes {
        mesh.start_agent(node);
        let status = mesh.wait_agent_exit(node, Duration::from_secs(20));
        assert!(
            status.success(),
            "the old agent of {node} exited with {status}"
        );
        let log = fs::read_to_string(mesh.agent_log(node)).unwrap_or_default();
        assert!(log.contains("handed the listening sockets over"), "{log}");
        assert!(
            log.contains("took over: the old agent stops accepting"),
            "{log}"
        );
    }
    // Calls still flow after the last old agent exited (closing its
    // pooled connections and links): what is queued, then 100 more.
    while calls.next(Duration::ZERO).is_some() {}
    for i in 0..100 {
        assert!(
            calls.next(Duration::from_secs(10)).is_some(),
            "call {i} after the old agents exited did not end (too few calls?)"
        );
    }
    let results = calls.finish(Duration::from_secs(60));
    assert_eq!(results.len(), CALLS);
    assert_eq!(
        mesh_tests::health::failed_calls(&results),
        [],
        "calls failed across the handover of {nodes:?}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || held("STILL OPEN")),
        "the stream open before the handover was cut: {}",
        fs::read_to_string(&hold_log).unwrap_or_default()
    );
    assert_eq!((programs(), links()), (programs0 + 12, links0 + 12));
    // The new agents serve, and their SIGTERM still removes everything.
    assert_eq!(
        mesh.echo("hoa", "web", "240.0.0.42".parse().expect("ip"), 5002, "new"),
        "new"
    );
    for (i, node) in ["hoa", "hob"].into_iter().enumerate() {
        mesh.stop_agent(node, Signal::SIGTERM);
        let left = programs0 + 6 * (1 - i);
        assert!(
            wait_until(Duration::from_secs(5), || programs() == left),
            "programs left after the new agent of {node}'s SIGTERM"
        );
    }
}

/// The handover socket takes nothing from anyone but a starting agent: a
/// non-root asker, a root process saying something else, and one that
/// takes the sockets and then says garbage instead of `ready` each abort
/// the handover with the reason in the log; the agent serves on (calls
/// through it still work, the maps it froze are written again).
#[test]
fn the_handover_socket_refuses_strangers_and_garbage() {
    let mesh = Mesh::nodes(&["hga", "hgb"])
        .default_policy("allow")
        .service("web", "hga", 8080)
        .service_with("echo", "hgb", 5002, |s| s.vip("240.0.0.43"))
        .start();
    mesh.start_echo_server("hgb", "echo", 5002);
    let echo = "240.0.0.43".parse().expect("ip");
    assert_eq!(mesh.echo("hga", "web", echo, 5002, "before"), "before");
    let log = || fs::read_to_string(mesh.agent_log("hgb")).unwrap_or_default();
    let cases: [(Option<&str>, &str, &str, &str); 4] = [
        (
            Some("nobody"),
            "ask",
            "GOT 0 FDS 0",
            "uid 65534 may not take over",
        ),
        (
            None,
            "http",
            "GOT 0 FDS 0",
            "unexpected request \"GET / HTTP/1.0\"",
        ),
        (None, "long", "GOT 0 FDS 0", "unexpected request \"xxxx"),
        (
            None,
            "take-then-garbage",
            "FDS ",
            "stopped before it was ready (it said \"nope\")",
        ),
    ];
    for (i, (user, mode, answer, reason)) in cases.into_iter().enumerate() {
        let mut cmd = match user {
            Some(user) => {
                let mut c = mesh.cmd("hgb", "runuser");
                c.args(["-u", user, "--", "python3"]);
                c
            }
            None => mesh.cmd("hgb", "python3"),
        };
        cmd.args(["-c", HANDOVER_ASKER, "hgb", mode]);
        let out = mesh_tests::run_to_string(&mut cmd, Duration::from_secs(20));
        assert!(
            out.contains(answer) && !(mode == "take-then-garbage" && out.contains("FDS 0")),
            "{mode}: {out}"
        );
        assert!(
            wait_until(Duration::from_secs(5), || log()
                .matches("handover aborted: serving on")
                .count()
                > i),
            "{mode}: no abort logged: {}",
            log()
        );
        assert!(log().contains(reason), "{mode}: {}", log());
        let said = format!("after {mode}");
        assert_eq!(mesh.echo("hga", "web", echo, 5002, &said), said);
    }
    // The socket sent the 5 listening sockets once, to root, and only then.
    assert!(
        !log().contains("handed the listening sockets over"),
        "{}",
        log()
    );
}

/// Talks to the handover socket of node argv[1] (its abstract unix
/// socket) as argv[2] says, and prints what it received: bytes and fds.
const HANDOVER_ASKER: &str = r#"
import socket, sys
node, mode = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("\0mesh-agent/" + node)
first = {"ask": b"mesh-handover v1\n", "http": b"GET / HTTP/1.0\n",
         "long": b"x" * 100000, "take-then-garbage": b"mesh-handover v1\n"}[mode]
try:
    s.sendall(first)
except OSError as e:
    print("SEND", e)
s.settimeout(10)
try:
    data, anc, _, _ = s.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
except OSError as e:
    data, anc = b"", []
    print("RECV", e)
fds = sum(len(d) // 4 for (level, kind, d) in anc if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS)
print("GOT", len(data), "FDS", fds)
if mode == "take-then-garbage":
    s.sendall(b"nope\n")
s.close()
"#;

/// A node made anew (its network namespace recreated, as when a VM or a
/// container restarts) while the pins of its last agent, SIGKILLed, stay:
/// the new agent does not adopt links attached to the old namespace (here
/// it lives on, held by the first mesh); it attaches its programs in its
/// own, and calls between the new nodes go through.
#[test]
fn an_agent_on_a_node_made_anew_attaches_in_its_own_namespace() {
    let mesh = || {
        Mesh::nodes(&["rna", "rnb"])
            .default_policy("allow")
            .service("web", "rna", 8080)
            .service_with("api", "rnb", 5001, |s| s.vip(VIP))
            .start()
    };
    let before = mesh();
    before.stop_agent("rna", Signal::SIGKILL);
    before.stop_agent("rnb", Signal::SIGKILL);
    let anew = mesh();
    anew.start_echo_server("rnb", "api", 5001);
    let vip = VIP.parse().expect("vip");
    assert_eq!(anew.echo("rna", "web", vip, 5001, "anew"), "anew");
    for node in ["rna", "rnb"] {
        let log = fs::read_to_string(anew.agent_log(node)).unwrap_or_default();
        // Only sk_lookup's: the cgroup is the same path, the same cgroup.
        let replaced: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("replacing a pinned link attached to another"))
            .collect();
        assert!(
            replaced.len() == 1 && replaced[0].contains("program=\"mesh_sk_lookup\""),
            "{node}: {replaced:?}"
        );
    }
    drop(anew);
    drop(before);
}

/// An agent finding the pins an earlier version of the agent left: a map
/// it no longer uses (`DENIED`) and one whose definition it changed
/// (`SERVICES` at its old size, made here with bpftool): it unpins both,
/// runs with `SERVICES` as its own object defines it, and the intentions
/// hold (web may call api; cron is refused with EPERM).
#[test]
fn an_agent_replaces_the_maps_an_earlier_version_pinned() {
    let mesh = Mesh::nodes(&["uma", "umb"])
        .default_policy("deny")
        .service("web", "uma", 8080)
        .service("cron", "uma", 8081)
        .service_with("api", "umb", 5001, |s| s.vip(VIP))
        .intention("web", "api", "allow")
        .start();
    mesh.start_echo_server("umb", "api", 5001);
    mesh.stop_agent("uma", Signal::SIGKILL);
    let pins = mesh_tests::bpffs().join("mesh/uma");
    let services = pins.join("SERVICES");
    let services = services.to_str().expect("path");
    fs::remove_file(services).expect("unpin SERVICES");
    let make = |path: &str, definition: &str, name: &str| {
        let mut args = vec!["map", "create", path, "type"];
        args.extend(definition.split(' '));
        args.extend(["name", name]);
        mesh_tests::bpftool_json(&args);
    };
    make(services, "hash key 20 value 4 entries 8192", "SERVICES");
    let denied = pins.join("DENIED");
    make(
        denied.to_str().expect("path"),
        "hash key 8 value 4 entries 65536",
        "DENIED",
    );

    mesh.start_agent("uma");
    let shown = mesh_tests::bpftool_json(&["map", "show", "pinned", services]);
    assert_eq!(
        shown["max_entries"],
        mesh_common::MAX_DESTINATIONS,
        "{shown}"
    );
    assert!(!denied.exists(), "DENIED is still pinned");
    let vip = VIP.parse().expect("vip");
    assert_eq!(mesh.echo("uma", "web", vip, 5001, "new maps"), "new maps");
    let refused = mesh.transfer("uma", Some("cron"), vip, 5001, 10);
    assert!(refused.starts_with("ERRNO 1 "), "cron -> api: {refused}");
}
