//! The catalog in etcd: a real 3-member cluster in network namespaces,
//! seeded with `mesh-agent catalog import`, real agents run with
//! `--catalog`. Need root, and etcd (`cargo xtask setup` installs it).
use std::{fs, time::Duration};

use mesh_tests::{
    API_PORT, Mesh, Signal, VIP, app,
    etcd::PREFIX,
    health::{answered_by, failed_calls},
    vip, wait_until,
};

/// Agents run from the catalog in etcd, each through one etcd client; a
/// change written to etcd reaches them as a changed file does: a deny refuses new calls and cuts live
/// ones within 1 s, an invalid value is rejected naming its key (the last
/// good catalog stays), and importing the same file again changes nothing.
#[test]
fn agents_run_from_a_catalog_in_etcd_and_follow_its_changes() {
    let mesh = Mesh::nodes(&["fa", "fb"])
        .etcd()
        .default_policy("allow")
        .service("web", "fa", 8080)
        .service_with("api", "fb", API_PORT, |s| s.vip(VIP))
        .start();
    mesh.start_echo_server("fb", "api", API_PORT);
    assert_eq!(mesh.echo("fa", "web", vip(), API_PORT, "hello"), "hello");
    for node in ["fa", "fb"] {
        let log = fs::read_to_string(mesh.agent_log(node)).unwrap_or_default();
        assert!(log.contains("catalog=etcd http://"), "{log}");
        // One client (its catalog watch, registration and registrations'
        // watch share it): at most one connection per member.
        let connections = mesh.etcd_connections(node);
        assert!(
            (1..=3).contains(&connections),
            "{node} holds {connections} connections to etcd"
        );
    }

    // Importing the same file again writes nothing.
    let config = mesh.config();
    let (ok, out) = mesh.cli_etcd(&["catalog", "import", &config.to_string_lossy()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("0 added, 0 changed, 0 removed, 5 unchanged"),
        "{out}"
    );

    // A value that is not what its key says is rejected by both agents,
    // which keep serving with the catalog they have.
    let bad = format!("{PREFIX}/v1/services/db");
    let (ok, out) = mesh.etcdctl(&["put", &bad, "[[service]]\nname = \"other\"\n"]);
    assert!(ok, "{out}");
    for node in ["fa", "fb"] {
        let log = mesh.agent_log(node);
        let rejected = wait_until(Duration::from_secs(5), || {
            fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("catalog change rejected")
        });
        assert!(rejected, "{node} did not reject the value");
        let text = fs::read_to_string(&log).unwrap_or_default();
        assert!(text.contains(&bad), "the rejection names the key: {text}");
    }
    let (ok, out) = mesh.etcdctl(&["del", &bad]);
    assert!(ok, "{out}");
    assert_eq!(mesh.echo("fa", "web", vip(), API_PORT, "still"), "still");

    // A service moved to another port in etcd (each agent checks that one
    // service against the others and patches its config): calls from the
    // caller's node reach it there, at the destination's node; and back.
    let api = format!("{PREFIX}/v1/services/api");
    let (ok, value) = mesh.etcdctl(&["get", &api, "--print-value-only"]);
    let at = |port: u16| format!("port = {port}");
    let moved = value.replace(&at(API_PORT), &at(API_PORT + 1));
    assert!(ok && moved != value, "{value}");
    mesh.start_echo_server("fb", "api", API_PORT + 1);
    for (value, port) in [(&moved, API_PORT + 1), (&value, API_PORT)] {
        mesh.etcdctl_ok(&["put", &api, value.trim_end()]);
        let reached = wait_until(Duration::from_secs(5), || {
            mesh.echo("fa", "web", vip(), port, "moved") == "moved"
        });
        assert!(
            reached,
            "api not reached on port {port}: {}",
            mesh.echo("fa", "web", vip(), port, "moved")
        );
    }

    // A live connection, then a deny written to etcd.
    let mut hold = mesh.cmd_as("fa", "web", "python3");
    hold.arg(app("hold_client.py"))
        .arg(VIP)
        .arg(API_PORT.to_string())
        .arg("20");
    mesh.spawn_app(hold, "hold");
    let hold_log = mesh.dir.join("app-hold.log");
    let said = |what: &str| {
        fs::read_to_string(&hold_log)
            .unwrap_or_default()
            .contains(what)
    };
    assert!(
        wait_until(Duration::from_secs(10), || said("OPEN")),
        "hold client did not connect"
    );
    let (ok, out) = mesh.cli_etcd(&["intention", "create", "-deny", "web", "api"]);
    // Written by now (the bound counts from the CLI's return, not its start).
    let denied = std::time::Instant::now();
    assert!(ok, "{out}");
    assert!(
        out.contains("created deny web -> api in etcd /mesh"),
        "{out}"
    );
    assert!(
        wait_until(Duration::from_secs(3), || said("CLOSED")),
        "the live connection was not cut"
    );
    let cut = denied.elapsed();
    assert!(
        cut <= Duration::from_millis(1500),
        "cut {cut:?} after the write"
    );
    // The other commands read the catalog in etcd too.
    let (ok, out) = mesh.cli_etcd(&["explain", "web", "api"]);
    assert!(ok && out.contains("deny: web -> api by"), "{out}");
    let (ok, out) = mesh.cli_etcd(&["intention", "list"]);
    assert!(ok && out.contains("web -> api: deny"), "{out}");
    let (ok, out) = mesh.cli_etcd(&["validate"]);
    assert!(
        ok && out.contains("ok (2 nodes, 2 services, 1 intentions)"),
        "{out}"
    );
    // An edit that would not validate writes nothing.
    let (ok, out) = mesh.cli_etcd(&["intention", "create", "-allow", "web", "nosuch"]);
    assert!(!ok && out.contains("nosuch"), "{out}");
    let (_, keys) = mesh.etcdctl(&["get", "--prefix", "--keys-only", PREFIX]);
    assert!(!keys.contains("nosuch"), "{keys}");
    let refused = mesh.transfer("fa", Some("web"), vip(), API_PORT, 10);
    assert!(
        refused.starts_with("ERRNO 1 "),
        "a new call was not refused with EPERM: {refused}"
    );
}

/// An agent does not start without its catalog: not with etcd down, not
/// with an empty prefix; each says why.
#[test]
fn an_agent_refuses_to_start_without_its_catalog() {
    let mesh = Mesh::nodes(&["fn"])
        .etcd()
        .service("web", "fn", 8080)
        .build();
    let run = || {
        let out = mesh_tests::output_with_timeout(
            mesh.cmd("fn", &mesh.agent)
                .args(["run", "--node", "fn", "--catalog", &mesh.etcd_url()])
                .current_dir(&mesh.dir),
            Duration::from_secs(30),
        );
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), text)
    };
    let (ok, err) = run();
    assert!(!ok && err.contains("etcd at http://"), "{err}");
    mesh.start_etcd();
    let (ok, err) = run();
    assert!(
        !ok && err.contains("no catalog in etcd under /mesh/v1/"),
        "{err}"
    );
}

/// Faults of etcd do not reach the data path, and changes made after them
/// still arrive: the leader is SIGKILLed while calls flow (none fails; an
/// intention written after the election reaches both agents), and an agent
/// cut off from etcd keeps serving, then catches up on heal although the
/// history it missed was compacted away.
#[test]
fn etcd_faults_fail_no_call_and_changes_after_them_arrive() {
    let mesh = Mesh::nodes(&["ka", "kb"])
        .etcd()
        .default_policy("allow")
        .service("web", "ka", 8080)
        .service("ui", "ka", 8081)
        .service_with("api", "kb", API_PORT, |s| s.vip(VIP))
        .start();
    mesh.start_health_server("kb", "api", API_PORT);
    let mut calls =
        mesh.http_call_stream("ka", "web", vip(), API_PORT, 60, Duration::from_millis(50));
    for i in 0..10 {
        assert!(
            calls.next(Duration::from_secs(10)).is_some(),
            "call {i} did not end"
        );
    }
    let leader = mesh.etcd_leader().expect("a leader");
    mesh.kill_etcd_member(leader);
    let elected = wait_until(Duration::from_secs(10), || {
        mesh.etcd_leader().is_some_and(|l| l != leader)
    });
    assert!(elected, "no new leader: {}", mesh.etcd_logs());
    let results = calls.finish(Duration::from_secs(60));
    assert_eq!(
        failed_calls(&results),
        [],
        "calls failed across the leader's death"
    );

    // Written after the election: ui may no longer call api.
    let deny = "[[intention]]\nsource = \"ui\"\ndestination = \"api\"\naction = \"deny\"\n";
    mesh.etcdctl_ok(&["put", &format!("{PREFIX}/v1/intentions/ui/api"), deny]);
    let refused = |node: &str, service: &str| {
        mesh.transfer(node, Some(service), vip(), API_PORT, 10)
            .starts_with("ERRNO 1 ")
    };
    assert!(
        wait_until(Duration::from_secs(5), || refused("ka", "ui")),
        "the intention written after the election did not arrive"
    );
    mesh.restart_etcd_member(leader);

    // ka cut off from etcd: it keeps its catalog and serves.
    let log = mesh.agent_log("ka");
    let said = |what: &str| fs::read_to_string(&log).unwrap_or_default().contains(what);
    let times = |what: &str| {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(what)
            .count()
    };
    // (The leader's death may have broken ka's watch already.)
    let lost = times("catalog in etcd unreachable");
    mesh.partition_from_etcd("ka", true);
    // Found by the client's keepalive (6 s, then 3 s for the answer).
    assert!(
        wait_until(Duration::from_secs(25), || times(
            "catalog in etcd unreachable"
        ) > lost),
        "ka did not notice it lost etcd"
    );
    // It says so in /status, `mesh-agent status` and the metrics.
    let status = mesh.status("ka");
    assert_eq!(status["catalog"]["connected"], false, "{status}");
    assert!(
        status["catalog"]["store"]
            .as_str()
            .is_some_and(|s| s.starts_with("etcd http://")),
        "{status}"
    );
    let text = mesh_tests::run_to_string(
        mesh.cmd("ka", &mesh.agent).arg("status"),
        Duration::from_secs(10),
    );
    assert!(text.contains("UNREACHABLE since"), "{text}");
    assert_eq!(mesh.metric("ka", "mesh_catalog_connected"), Some(0.0));
    assert_eq!(mesh.metric("kb", "mesh_catalog_connected"), Some(1.0));
    let results = mesh.http_calls("ka", "web", vip(), API_PORT, 3, Duration::ZERO);
    assert_eq!(
        failed_calls(&results),
        [],
        "ka stopped serving without etcd"
    );
    // Meanwhile: the deny goes, web is denied instead, and the history
    // is compacted.
    mesh.etcdctl_ok(&["del", &format!("{PREFIX}/v1/intentions/ui/api")]);
    let deny_web = deny.replace("\"ui\"", "\"web\"");
    mesh.etcdctl_ok(&["put", &format!("{PREFIX}/v1/intentions/web/api"), &deny_web]);
    let revision = mesh
        .etcd_status()
        .iter()
        .filter_map(|s| s["Status"]["header"]["revision"].as_i64())
        .max()
        .expect("a revision");
    mesh.etcdctl_ok(&["compact", &revision.to_string()]);
    // Healed: ka lists again and applies both changes.
    mesh.partition_from_etcd("ka", false);
    assert!(
        wait_until(Duration::from_secs(10), || refused("ka", "web")),
        "ka did not catch up after the partition healed:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(!refused("ka", "ui"), "ui -> api is allowed again");
    assert_eq!(mesh.metric("ka", "mesh_catalog_connected"), Some(1.0));
    assert_eq!(mesh.status("ka")["catalog"]["connected"], true);
    assert!(said("catalog in etcd reachable again"));
    let catalog_lines: Vec<String> = fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("catalog"))
        .map(|l| l.chars().take(300).collect())
        .collect();
    assert!(
        said("listing again"),
        "ka did not list after the compaction (revision {revision}):\n{}",
        catalog_lines.join("\n")
    );
}

/// Agents register their nodes and their instances' health in etcd under
/// leases. An agent cut off from etcd has its instances expire from the
/// other agents' view within TTL + 3 s (calls go to the other instance),
/// and registers again when the partition heals. An agent whose node was
/// registered by another one meanwhile writes nothing over it. A stopped
/// agent's registration goes at once.
#[test]
fn registrations_expire_with_their_agent_and_stale_agents_write_nothing() {
    let mesh = Mesh::nodes(&["ra", "rb", "rc"])
        .etcd()
        .default_policy("allow")
        .service("web", "ra", 8080)
        .service_on_with("api", &["rb", "rc"], API_PORT, |s| {
            s.vip(VIP).check("http = \"/health\"\ninterval = \"300ms\"")
        })
        .start();
    for node in ["rb", "rc"] {
        mesh.start_health_server(node, "api", API_PORT);
        assert!(
            mesh.wait_instance_state("ra", "api", node, "passing", Duration::from_secs(10))
                .is_some(),
            "api on {node} did not pass"
        );
    }
    let agents = format!("{PREFIX}/agents/v1/");
    let keys = mesh.etcdctl_ok(&["get", "--prefix", "--keys-only", &agents]);
    for key in [
        "nodes/ra",
        "nodes/rb",
        "nodes/rc",
        "health/rb/api",
        "health/rc/api",
    ] {
        assert!(keys.contains(&format!("{agents}{key}")), "{key}: {keys}");
    }
    let (ok, out) = mesh.cli_etcd(&["catalog", "instances", "--service", "api"]);
    assert!(ok, "{out}");
    let states = |out: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
            .collect()
    };
    assert_eq!(states(&out), ["STATE", "passing", "passing"], "{out}");
    // Health states are written as they change.
    let rc_health = format!("{agents}health/rc/api");
    for (status, state) in [(500, "critical"), (200, "passing")] {
        mesh.set_health("rc", "api", status);
        let written = wait_until(Duration::from_secs(5), || {
            mesh.etcdctl(&["get", "--print-value-only", &rc_health])
                .1
                .contains(&format!("state = \"{state}\""))
        });
        assert!(written, "rc's api did not turn {state} in etcd");
    }

    // rb cut off from etcd: its lease expires, ra stops sending to it.
    let cut = std::time::Instant::now();
    mesh.partition_from_etcd("rb", true);
    let expired = mesh.wait_instance_state("ra", "api", "rb", "critical", Duration::from_secs(20));
    let within = cut.elapsed();
    assert!(expired.is_some(), "rb's instance did not expire at ra");
    assert!(
        within <= Duration::from_secs(13),
        "rb's instance expired {within:?} after the partition"
    );
    let reason = mesh.catalog_instance("ra", "api", "rb").expect("instance")["reason"].clone();
    assert!(
        reason
            .as_str()
            .is_some_and(|r| r.contains("no live registration")),
        "{reason}"
    );
    let (_, out) = mesh.cli_etcd(&["catalog", "instances", "--service", "api"]);
    assert_eq!(states(&out), ["STATE", "critical", "passing"], "{out}");
    let results = mesh.http_calls("ra", "web", vip(), API_PORT, 6, Duration::ZERO);
    assert_eq!(failed_calls(&results), [], "calls failed");
    assert_eq!(answered_by(&results, "rc"), 6, "{results:?}");
    // Healed: rb registers again and takes calls again.
    mesh.partition_from_etcd("rb", false);
    assert!(
        mesh.wait_instance_state("ra", "api", "rb", "passing", Duration::from_secs(15))
            .is_some(),
        "rb did not register again:\n{}",
        fs::read_to_string(mesh.agent_log("rb")).unwrap_or_default()
    );
    let log = fs::read_to_string(mesh.agent_log("rb")).unwrap_or_default();
    assert!(log.contains("registration in etcd expired"), "{log}");

    // Another agent (here etcdctl) registers rc: rc's agent, now stale,
    // writes nothing over it, and registers again once it is gone.
    let granted = mesh.etcdctl_ok(&["lease", "grant", "60"]);
    let lease = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_owned();
    let rc_node = format!("{agents}nodes/rc");
    let other = "address = \"10.9.9.9\"\nversion = \"newer\"\n";
    mesh.etcdctl_ok(&["put", &format!("--lease={lease}"), &rc_node, other]);
    let rc_log = mesh.agent_log("rc");
    let said = |what: &str| {
        fs::read_to_string(&rc_log)
            .unwrap_or_default()
            .contains(what)
    };
    assert!(
        wait_until(Duration::from_secs(10), || said(
            "another agent registered this node"
        )),
        "rc did not notice"
    );
    std::thread::sleep(Duration::from_secs(4));
    let now = mesh.etcdctl_ok(&["get", "--print-value-only", &rc_node]);
    assert_eq!(now.trim(), other.trim(), "the stale agent wrote over it");
    mesh.etcdctl_ok(&["lease", "revoke", &lease]);
    assert!(
        wait_until(Duration::from_secs(10), || said("registered again")),
        "rc did not register again"
    );
    let now = mesh.etcdctl_ok(&["get", "--print-value-only", &rc_node]);
    assert!(now.contains("version = \""), "{now}");
    assert!(!now.contains("newer"), "{now}");
    // A value written by hand under no lease is no agent's: rc takes its
    // key back.
    mesh.etcdctl_ok(&["put", &rc_node, other]);
    let taken_back = wait_until(Duration::from_secs(10), || {
        !mesh
            .etcdctl(&["get", "--print-value-only", &rc_node])
            .1
            .contains("newer")
    });
    assert!(taken_back, "rc left a hand-written key in place of its own");

    // A stopped agent's registration goes at once.
    mesh.stop_agent("rb", Signal::SIGTERM);
    let keys = mesh.etcdctl_ok(&["get", "--prefix", "--keys-only", &agents]);
    assert!(!keys.contains(&format!("{agents}nodes/rb")), "{keys}");
    assert!(!keys.contains(&format!("{agents}health/rb/")), "{keys}");
    assert!(
        mesh.wait_instance_state("ra", "api", "rb", "critical", Duration::from_secs(3))
            .is_some(),
        "rb's instance still counts at ra"
    );
}

/// With etcd's RBAC on (TLS, a client certificate per node, README's
/// roles), agents read the catalog and keep their registrations; node pb
/// cannot register an instance for node pc nor change an intention; the
/// admin can.
#[test]
fn each_node_writes_only_its_own_registration() {
    let mesh = Mesh::nodes(&["pa", "pb", "pc"])
        .etcd_auth()
        .default_policy("allow")
        .service("web", "pa", 8080)
        .service_with("api", "pb", API_PORT, |s| s.vip(VIP))
        .service("db", "pc", 5432)
        .start();
    mesh.start_echo_server("pb", "api", API_PORT);
    assert_eq!(mesh.echo("pa", "web", vip(), API_PORT, "hello"), "hello");
    let agents = format!("{PREFIX}/agents/v1/");
    let keys = mesh.etcdctl_ok(&["get", "--prefix", "--keys-only", &agents]);
    for key in [
        "nodes/pa",
        "nodes/pb",
        "nodes/pc",
        "health/pb/api",
        "health/pc/db",
    ] {
        assert!(keys.contains(&format!("{agents}{key}")), "{key}: {keys}");
    }

    // pb's certificate: its own keys only.
    let (ok, out) = mesh.etcdctl_as("pb", &["put", &format!("{agents}health/pb/extra"), "x"]);
    assert!(ok, "pb may write its own keys: {out}");
    mesh.etcdctl_ok(&["del", &format!("{agents}health/pb/extra")]);
    for key in [
        "nodes/pc",
        "health/pc/db",
        "health/pc/api",
        "nodes/pcx",
        "nodes/p",
    ] {
        let (ok, out) = mesh.etcdctl_as("pb", &["put", &format!("{agents}{key}"), "x"]);
        assert!(
            !ok && out.contains("permission denied"),
            "pb wrote {key}: {out}"
        );
    }
    let intention = format!("{PREFIX}/v1/intentions/web/api");
    let deny = "[[intention]]\nsource = \"web\"\ndestination = \"api\"\naction = \"deny\"\n";
    let (ok, out) = mesh.etcdctl_as("pb", &["put", &intention, deny]);
    assert!(!ok && out.contains("permission denied"), "{out}");
    let (ok, out) = mesh.cli_etcd_as("pb", &["intention", "create", "-deny", "web", "api"]);
    assert!(!ok && out.contains("permission denied"), "{out}");
    let (ok, out) = mesh.etcdctl_as("pb", &["del", "--prefix", &format!("{PREFIX}/v1/")]);
    assert!(!ok && out.contains("permission denied"), "{out}");
    // Nothing changed: the call still goes through, pc still registered.
    assert_eq!(mesh.echo("pa", "web", vip(), API_PORT, "still"), "still");
    let keys = mesh.etcdctl_ok(&["get", "--prefix", "--keys-only", &agents]);
    assert!(keys.contains(&format!("{agents}nodes/pc")), "{keys}");
    // Any node may read the catalog and the registrations.
    let (ok, out) = mesh.cli_etcd_as("pb", &["catalog", "services"]);
    assert!(ok && out.contains("db") && out.contains("api"), "{out}");
    // Garbage under registration keys (root may write anything): each
    // reader says which key does not read, and nothing changes. A health
    // value: `catalog instances` names it and lists every instance.
    let health_key = format!("{agents}health/pb/api");
    mesh.etcdctl_ok(&["put", &health_key, "{not toml"]);
    let (ok, out) = mesh.cli_etcd(&["catalog", "instances", "--service", "api"]);
    assert!(
        ok && out.contains(&format!(
            "warning: ignored a registration that does not read: {health_key}: "
        )) && out.contains(" pb "),
        "{out}"
    );
    // A node's value: the agents log it naming the key, calls go on, and
    // pb takes its key back (a value under no lease is free).
    let node_key = format!("{agents}nodes/pb");
    mesh.etcdctl_ok(&["put", &node_key, "garbage = ["]);
    let logged = wait_until(Duration::from_secs(5), || {
        fs::read_to_string(mesh.agent_log("pa"))
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.contains("a registration in etcd that no agent wrote") && l.contains(&node_key)
            })
    });
    assert!(logged, "pa did not name the garbage key");
    assert_eq!(mesh.echo("pa", "web", vip(), API_PORT, "after"), "after");
    let taken_back = wait_until(Duration::from_secs(10), || {
        mesh.etcdctl(&["get", "--print-value-only", &node_key])
            .1
            .contains("address = ")
    });
    assert!(taken_back, "pb did not take its key back");

    // A stopping agent may revoke its lease (etcd checks write access to
    // every key under it): its registration goes at once.
    mesh.stop_agent("pc", Signal::SIGTERM);
    let keys = mesh.etcdctl_ok(&["get", "--prefix", "--keys-only", &agents]);
    assert!(!keys.contains(&format!("{agents}nodes/pc")), "{keys}");
    assert!(!keys.contains(&format!("{agents}health/pc/")), "{keys}");

    // The admin may.
    let (ok, out) = mesh.cli_etcd(&["intention", "create", "-deny", "web", "api"]);
    assert!(ok, "{out}");
    let refused = || {
        mesh.transfer("pa", Some("web"), vip(), API_PORT, 10)
            .starts_with("ERRNO 1 ")
    };
    assert!(
        wait_until(Duration::from_secs(5), refused),
        "the admin's deny did not arrive"
    );
}

/// With every etcd member stopped the mesh keeps serving on its last good
/// catalog and registrations; an agent restarted meanwhile refuses to start
/// (saying why) rather than run on nothing; once etcd is back, agents
/// reconnect and the restarted one starts.
#[test]
fn with_all_of_etcd_down_the_mesh_keeps_serving() {
    let mesh = Mesh::nodes(&["za", "zb", "zc"])
        .etcd()
        .default_policy("allow")
        .service("web", "za", 8080)
        .service_on_with("api", &["zb", "zc"], API_PORT, |s| s.vip(VIP))
        .start();
    for node in ["zb", "zc"] {
        mesh.start_health_server(node, "api", API_PORT);
    }
    let results = mesh.http_calls("za", "web", vip(), API_PORT, 4, Duration::ZERO);
    assert_eq!(failed_calls(&results), [], "calls failed");
    for member in mesh_tests::etcd::MEMBERS {
        mesh.kill_etcd_member(member);
    }
    assert!(
        wait_until(Duration::from_secs(25), || mesh
            .metric("za", "mesh_catalog_connected")
            == Some(0.0)),
        "za did not notice etcd is gone"
    );
    // Past a registration's TTL: nothing expires without etcd.
    std::thread::sleep(Duration::from_secs(11));
    let results = mesh.http_calls("za", "web", vip(), API_PORT, 10, Duration::ZERO);
    assert_eq!(failed_calls(&results), [], "calls failed without etcd");
    assert!(
        answered_by(&results, "zb") > 0 && answered_by(&results, "zc") > 0,
        "both instances still take calls: {results:?}"
    );

    mesh.stop_agent("zc", Signal::SIGTERM);
    let run_zc = || {
        let out = mesh_tests::output_with_timeout(
            mesh.cmd("zc", &mesh.agent)
                .args(["run", "--node", "zc", "--catalog", &mesh.etcd_url()])
                .current_dir(&mesh.dir),
            Duration::from_secs(30),
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run_zc();
    assert!(!ok && err.contains("etcd at http://"), "{err}");

    for member in mesh_tests::etcd::MEMBERS {
        mesh.restart_etcd_member(member);
    }
    assert!(
        wait_until(Duration::from_secs(20), || mesh
            .metric("za", "mesh_catalog_connected")
            == Some(1.0)),
        "za did not reconnect"
    );
    mesh.start_agent("zc");
    assert!(
        mesh.wait_instance_state("za", "api", "zc", "passing", Duration::from_secs(10))
            .is_some(),
        "zc is not back in za's view"
    );
    let results = mesh.http_calls("za", "web", vip(), API_PORT, 4, Duration::ZERO);
    assert_eq!(
        failed_calls(&results),
        [],
        "calls failed after etcd returned"
    );
}

/// With the leader SIGKILLed (and named first in `--catalog`), every
/// command that reads or edits the catalog in etcd succeeds through the
/// other members, ten times over: none sticks to the dead member.
#[test]
fn every_catalog_command_works_with_the_leader_down() {
    let mesh = Mesh::nodes(&["da", "db"])
        .etcd_auth()
        .default_policy("allow")
        .service("web", "da", 8080)
        .service_with("api", "db", API_PORT, |s| s.vip(VIP))
        .start();
    mesh.start_echo_server("db", "api", API_PORT);
    let leader = mesh.etcd_leader().expect("a leader");
    mesh.kill_etcd_member(leader);
    let url = mesh.etcd_url_from(leader);
    let config = mesh.config();
    let config = config.to_string_lossy();
    let commands: [(&[&str], &str); 8] = [
        (
            &["intention", "create", "-deny", "web", "api"],
            "deny web -> api in etcd",
        ),
        (&["intention", "list"], "web -> api: deny"),
        (&["explain", "web", "api"], "deny: web -> api by"),
        (
            &["intention", "delete", "web", "api"],
            "deleted web -> api in etcd",
        ),
        (&["validate"], "ok (2 nodes, 2 services, 0 intentions)"),
        (&["catalog", "import", &config], "0 removed"),
        (&["catalog", "services"], "api"),
        (&["catalog", "instances", "--service", "api"], "passing"),
    ];
    for round in 0..10 {
        for (args, expect) in &commands {
            let started = std::time::Instant::now();
            let (ok, out) = mesh.cli_etcd_url("admin", &url, args);
            assert!(
                ok && out.contains(expect),
                "round {round}: {args:?} with {leader} down (after {:?}): {out}",
                started.elapsed()
            );
        }
    }
    // The agents served on meanwhile.
    assert_eq!(mesh.echo("da", "web", vip(), API_PORT, "still"), "still");
}
