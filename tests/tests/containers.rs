//! Containers with their own network namespace, served by the node's
//! agent: real podman (rootful, cgroupfs, runc, bridge network) and a bare
//! `unshare --net` process, real agents and kernel programs. Need root.

use std::{fs, net::IpAddr, process::Command, time::Duration};

use mesh_tests::{
    API_PORT, Mesh, VIP, cgroup2_root, outcome, output_with_timeout, wait_until,
    wire::{parse_tls, tcp_conns},
};

/// Waits until `node`'s agent serves a container of `service` (in its
/// `status`), up to `timeout`; returns the status entries of `service`.
fn served(
    mesh: &Mesh,
    node: &str,
    service: &str,
    n: usize,
    timeout: Duration,
) -> Vec<serde_json::Value> {
    let mut last = Vec::new();
    let ok = wait_until(timeout, || {
        last = mesh.containers_served(node, service);
        last.len() == n
    });
    assert!(
        ok,
        "{node} does not serve {n} container(s) of {service}: {last:?}"
    );
    last
}

/// The number of open fds of `node`'s agent, as a function, once the
/// agent is at rest (its own connections and tasks settled).
fn agent_fds(mesh: &Mesh, node: &str) -> impl Fn() -> usize {
    let pid = mesh.agent_pid(node).expect("agent pid");
    std::thread::sleep(Duration::from_millis(500));
    move || {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// The lines of the (accept) log at `path`; 0 if there is none.
fn lines(path: &std::path::Path) -> usize {
    fs::read_to_string(path).unwrap_or_default().lines().count()
}

/// A command run as `service` on `node` inside the network namespace of
/// process `pid` (joining the service's cgroup first), as a second process
/// of a running container would.
fn in_netns_of(mesh: &Mesh, node: &str, service: &str, pid: u32, program: &str) -> Command {
    let dir = cgroup2_root().join(format!("mesh/{node}/{service}/bare"));
    let _ = mesh;
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"d=$1 pid=$2; shift 2; mkdir -p "$d" && echo $$ > "$d/cgroup.procs" && exec nsenter --net=/proc/$pid/ns/net "$@""#)
        .arg("sh")
        .arg(dir)
        .arg(pid.to_string())
        .arg(program);
    c
}

/// The runtime-agnostic case: processes of `web` and of `api` each in a
/// bare network namespace of their own (`unshare --net`) in their
/// service's cgroup: web reaches api by its VIP through both agents.
#[test]
fn a_bare_netns_process_in_a_service_cgroup_is_served_both_ways() {
    let mesh = Mesh::nodes(&["ua", "ub"])
        .default_policy("allow")
        .service("web", "ua", 8080)
        .service_with("api", "ub", API_PORT, |s| s.vip(VIP))
        .start();
    let log = mesh.dir.join("accepts-bare.log");
    let mut api = mesh.cmd_own_netns("ub", "api", "sh");
    api.arg("-c").arg(format!(
        "ip link set lo up && exec python3 {} {API_PORT} {}",
        mesh_tests::app("echo_server.py").display(),
        log.display()
    ));
    mesh.spawn_app(api, "api-bare");
    let mut anchor = mesh.cmd_own_netns("ua", "web", "sleep");
    anchor.arg("600");
    let web_pid = mesh.spawn_app(anchor, "web-bare");
    served(&mesh, "ub", "api", 1, Duration::from_secs(5));
    let web = served(&mesh, "ua", "web", 1, Duration::from_secs(5));
    // `sleep` is the anchor's own process after the exec.
    let mut client = in_netns_of(&mesh, "ua", "web", web_pid, "python3");
    client
        .arg(mesh_tests::app("echo_client.py"))
        .args([VIP, &API_PORT.to_string(), "hello-bare"]);
    let out = output_with_timeout(&mut client, Duration::from_secs(30));
    let (ok, text) = outcome(&out);
    assert!(
        ok && text == "hello-bare",
        "web -> api from a bare netns: {text}"
    );
    let accepts = fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(accepts.lines().count(), 1, "{accepts}");
    assert!(
        web[0]["cgroup"]
            .as_str()
            .unwrap_or("")
            .ends_with("/mesh/ua/web/bare"),
        "{web:?}"
    );
}

/// Two nodes, a container on each: `frontend` on a calls `api.mesh`,
/// served by a container on b. Only TLS 1.3 crosses the wire; a deny cuts
/// the pair and the next connect() fails with EPERM inside the container;
/// status, metrics and the access log name the containers.
#[test]
fn a_container_calls_a_container_on_another_node_over_mtls() {
    let mesh = Mesh::nodes(&["pa", "pb"])
        .default_policy("deny")
        .service("frontend", "pa", 8080)
        .service_with("api", "pb", API_PORT, |s| s.vip(VIP))
        .intention("frontend", "api", "allow")
        .start();
    let (api, accepts) = mesh.container_echo_server("pb", "api", API_PORT, "api");
    let frontend = mesh.run_container("pa", "frontend", &["sleep", "600"]);
    let fe = served(&mesh, "pa", "frontend", 1, Duration::from_secs(5));
    let ap = served(&mesh, "pb", "api", 1, Duration::from_secs(5));
    assert_eq!(fe[0]["netns"], mesh.container_netns(&frontend));
    assert_eq!(ap[0]["netns"], mesh.container_netns(&api));
    assert!(
        fe[0]["cgroup"]
            .as_str()
            .unwrap_or("")
            .contains("/mesh/pa/frontend/"),
        "{fe:?}"
    );
    assert_eq!(fe[0]["dns"], true);

    let capture = mesh.capture("pa", &format!("tcp port {API_PORT}"));
    let marker = "MARKER-in-a-container-5b1d";
    for host in ["api.mesh", VIP] {
        let (echo, err) = mesh.container_echo(&frontend, host, API_PORT, marker);
        assert_eq!(echo, marker, "frontend -> {host}: {err}");
    }
    let pcap = capture.stop();
    assert!(!mesh_tests::wire::file_contains(&pcap, marker.as_bytes()).expect("read pcap"));
    for conn in tcp_conns(&pcap).expect("capture reassembles") {
        let hello = parse_tls(&conn.to_server)
            .expect("TLS")
            .client_hello
            .expect("a ClientHello");
        assert_eq!(hello.supported_versions, [0x0304], "TLS 1.3 only");
    }
    assert_eq!(lines(&accepts), 2);

    // Named in the access log, status and metrics of both sides.
    let log_a = fs::read_to_string(mesh.agent_log("pa")).expect("log");
    let fe_cgroup = fe[0]["cgroup"].as_str().expect("cgroup");
    assert!(
        log_a.contains(&format!("container=\"{fe_cgroup}\"")),
        "{log_a}"
    );
    let ap_cgroup = ap[0]["cgroup"].as_str().expect("cgroup");
    let log_b = fs::read_to_string(mesh.agent_log("pb")).expect("log");
    assert!(
        log_b.contains(&format!("container=\"{ap_cgroup}\"")),
        "{log_b}"
    );
    assert_eq!(
        mesh.metric("pa", "mesh_containers{service=\"frontend\"}"),
        Some(1.0)
    );
    let series = format!(
        "mesh_container_connections_total{{service=\"api\",cgroup=\"{ap_cgroup}\",netns=\"{}\",side=\"inbound\"}}",
        ap[0]["netns"]
    );
    assert_eq!(
        mesh.metric("pb", &series),
        Some(2.0),
        "{}",
        mesh.metrics("pb")
    );

    // A live connection from the container, open before the deny.
    let hold = mesh.container_spawn(
        &frontend,
        "hold.log",
        &format!("python3 /apps/hold_client.py {VIP} {API_PORT} 20"),
    );
    let said = |what: &str| fs::read_to_string(&hold).unwrap_or_default().contains(what);
    assert!(
        wait_until(Duration::from_secs(10), || said("OPEN")),
        "the hold client did not connect"
    );

    // A deny: the live connection is cut; the next connect() fails with
    // EPERM inside the container, before any packet leaves.
    let toml = Mesh::nodes(&["pa", "pb"])
        .default_policy("deny")
        .service("frontend", "pa", 8080)
        .service_with("api", "pb", API_PORT, |s| s.vip(VIP))
        .intention("frontend", "api", "deny")
        .toml(&mesh);
    mesh.write_config(&toml);
    let denied = wait_until(Duration::from_secs(5), || {
        let (_, err) = mesh.container_echo(&frontend, VIP, API_PORT, "x");
        err.contains("PermissionError") || err.contains("Operation not permitted")
    });
    assert!(denied, "the deny did not reach the container's connect()");
    assert!(
        wait_until(Duration::from_secs(3), || said("CLOSED")),
        "the live connection was not cut"
    );
    // Logged by the caller's agent, naming the container.
    let logged = wait_until(Duration::from_secs(5), || {
        fs::read_to_string(mesh.agent_log("pa")).is_ok_and(|log| {
            log.lines().any(|l| {
                l.contains("connect() refused with EPERM: intentions deny frontend -> api")
                    && l.contains(&format!("container=\"{fe_cgroup}\""))
            })
        })
    });
    assert!(logged, "no denial line naming the container");
    let metrics = mesh.metrics("pa");
    let counted = metrics.lines().any(|l| {
        l.starts_with("mesh_denials_total{source=\"frontend\",destination=\"api\"")
            && l.contains("side=\"source\"")
    });
    assert!(counted, "the kernel's denial is not counted: {metrics}");
}

/// A service in a container binding 127.0.0.1 is reached through the
/// agent only: not from the node itself, not from another container on
/// the bridge, not from a node without mTLS.
#[test]
fn a_container_service_is_reachable_only_through_the_mesh() {
    reachable_only_through_the_mesh("127.0.0.1", ["ra", "rb", "rx"]);
}

/// The same for a service that binds 0.0.0.0 in its container by
/// mistake: the agent's sk_lookup program in the container's namespace
/// refuses its port on the container's own addresses.
#[test]
fn a_container_service_bound_to_any_address_is_still_only_reachable_through_the_mesh() {
    reachable_only_through_the_mesh("0.0.0.0", ["qa", "qb", "qx"]);
}

fn reachable_only_through_the_mesh(bind: &str, [a, b, x]: [&str; 3]) {
    let mesh = Mesh::nodes(&[a, b])
        .default_policy("allow")
        .service("web", a, 8080)
        .service_with("api", b, API_PORT, |s| s.vip(VIP))
        .stranger(x)
        .start();
    let (api, accepts) = mesh.container_echo_server_on(b, "api", bind, API_PORT, "api");
    served(&mesh, b, "api", 1, Duration::from_secs(5));
    let ip: IpAddr = mesh.container_ip(&api);
    let port = API_PORT.to_string();
    // From node b itself, to the container's bridge address.
    let from_node = || {
        let mut cmd = mesh.cmd(b, "python3");
        cmd.arg(mesh_tests::app("echo_client.py"))
            .args([&ip.to_string(), &port, "x"]);
        cmd
    };
    let (ok, text) = outcome(&output_with_timeout(
        &mut from_node(),
        Duration::from_secs(30),
    ));
    assert!(!ok && text.contains("refused"), "from the node: {text}");
    // From another container on the bridge (no service's cgroup).
    let other = mesh.run_container_anywhere(b, &["sleep", "600"]);
    let (echo, err) = mesh.container_echo(&other, &ip.to_string(), API_PORT, "x");
    assert!(
        echo.is_empty() && err.contains("refused"),
        "from another container: {echo} {err}"
    );
    // From a node without mTLS, to the catalog address: sk_lookup steers
    // it to the agent, which wants a TLS handshake.
    let mut cmd = mesh.cmd(x, "python3");
    cmd.arg(mesh_tests::app("echo_client.py")).args([
        &mesh.node(b).addr(false).to_string(),
        &port,
        "plain",
    ]);
    let (_, text) = outcome(&output_with_timeout(&mut cmd, Duration::from_secs(30)));
    assert!(
        !text.contains("plain"),
        "plaintext reached the service: {text}"
    );
    assert_eq!(
        fs::read_to_string(&accepts).unwrap_or_default(),
        "",
        "the service saw a connection"
    );
    // Through the mesh it works.
    assert_eq!(
        mesh.echo(a, "web", mesh_tests::vip(), API_PORT, "mesh"),
        "mesh"
    );
    // And the container's guard stays while no agent runs (it is pinned).
    mesh.stop_agent(b, mesh_tests::Signal::SIGKILL);
    let (ok, text) = outcome(&output_with_timeout(
        &mut from_node(),
        Duration::from_secs(30),
    ));
    assert!(
        !ok && text.contains("refused"),
        "from the node, agent down: {text}"
    );
    // The service saw the mesh's call only.
    let seen = fs::read_to_string(&accepts).unwrap_or_default();
    assert_eq!(seen.lines().count(), 1, "{seen}");
}

/// Two replicas of one service on one node (two containers, two network
/// namespaces): the node's instance is both; connections to it take the
/// replicas in turn, and one that stops is skipped.
#[test]
fn two_replicas_on_one_node_share_its_connections() {
    let mesh = Mesh::nodes(&["la", "lb"])
        .default_policy("allow")
        .service("web", "la", 8080)
        .service_with("api", "lb", API_PORT, |s| s.vip(VIP))
        .start();
    let (first, first_log) = mesh.container_echo_server("lb", "api", API_PORT, "first");
    let (_second, second_log) = mesh.container_echo_server("lb", "api", API_PORT, "second");
    served(&mesh, "lb", "api", 2, Duration::from_secs(5));
    for i in 0..10 {
        let text = format!("call-{i}");
        assert_eq!(
            mesh.echo("la", "web", mesh_tests::vip(), API_PORT, &text),
            text
        );
    }
    assert_eq!(lines(&first_log) + lines(&second_log), 10);
    assert!(
        lines(&first_log) >= 3 && lines(&second_log) >= 3,
        "{} / {}",
        lines(&first_log),
        lines(&second_log)
    );
    // One replica gone: every call goes to the other, none fails.
    mesh.remove_container(&first);
    for i in 0..5 {
        let text = format!("after-{i}");
        assert_eq!(
            mesh.echo("la", "web", mesh_tests::vip(), API_PORT, &text),
            text
        );
    }
    served(&mesh, "lb", "api", 1, Duration::from_secs(5));
}

/// Containers started and stopped 50 times: each is served within 1 s of
/// its start and forgotten when it goes, and the agent ends with the fds
/// it started with.
#[test]
fn fifty_containers_come_and_go_and_leave_nothing_behind() {
    let mesh = Mesh::nodes(&["ca"])
        .default_policy("allow")
        .service("web", "ca", 8080)
        .start();
    let fds = agent_fds(&mesh, "ca");
    let before = fds();
    for i in 0..50 {
        let c = mesh.run_container("ca", "web", &["sleep", "600"]);
        let started = std::time::Instant::now();
        served(&mesh, "ca", "web", 1, Duration::from_secs(5));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "cycle {i}: served after {:?}",
            started.elapsed()
        );
        mesh.remove_container(&c);
        served(&mesh, "ca", "web", 0, Duration::from_secs(5));
    }
    assert!(
        wait_until(Duration::from_secs(5), || fds() <= before),
        "fds: {} before, {} after",
        before,
        fds()
    );
    assert_eq!(mesh.metric("ca", "mesh_containers{service=\"web\"}"), None);
    // No container's guard left pinned.
    let pins = mesh_tests::bpffs().join("mesh/ca");
    let left: Vec<String> = fs::read_dir(&pins)
        .expect("the node's pins")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("link_netns_"))
        .collect();
    assert!(left.is_empty(), "guards left pinned: {left:?}");
    let log = fs::read_to_string(mesh.agent_log("ca")).expect("log");
    assert_eq!(log.matches("container served").count(), 50);
    assert_eq!(log.matches("container gone").count(), 50);
}

/// Containers keep working across an agent SIGKILL (refused while it is
/// down: fail closed) and a restart, and across an upgrade (handover) with
/// no call lost.
#[test]
fn containers_keep_working_across_a_restart_and_an_upgrade() {
    let mesh = Mesh::nodes(&["ka", "kb"])
        .default_policy("allow")
        .service("web", "ka", 8080)
        .service_with("api", "kb", API_PORT, |s| s.vip(VIP))
        .start();
    let (_api, _) = mesh.container_echo_server("kb", "api", API_PORT, "api");
    let web = mesh.run_container("ka", "web", &["sleep", "600"]);
    served(&mesh, "ka", "web", 1, Duration::from_secs(5));
    served(&mesh, "kb", "api", 1, Duration::from_secs(5));
    let call = |text: &str| mesh.container_echo(&web, VIP, API_PORT, text);
    assert_eq!(call("before").0, "before");

    mesh.stop_agent("ka", mesh_tests::Signal::SIGKILL);
    let (echo, err) = call("while-down");
    assert!(
        echo.is_empty() && err.contains("refused"),
        "with the agent down: {echo} {err}"
    );
    mesh.start_agent("ka");
    served(&mesh, "ka", "web", 1, Duration::from_secs(5));
    assert_eq!(call("after-restart").0, "after-restart");

    // The destination's agent upgraded while calls go on.
    let calls = std::thread::scope(|s| {
        let calls = s.spawn(|| {
            (0..40)
                .map(|i| {
                    std::thread::sleep(Duration::from_millis(25));
                    let text = format!("during-{i}");
                    call(&text).0 == text
                })
                .filter(|ok| !ok)
                .count()
        });
        mesh.start_agent("kb");
        mesh.wait_agent_exit("kb", Duration::from_secs(30));
        mesh.start_agent("ka");
        mesh.wait_agent_exit("ka", Duration::from_secs(30));
        calls.join().expect("calls")
    });
    assert_eq!(calls, 0, "calls failed during the upgrades");
    served(&mesh, "ka", "web", 1, Duration::from_secs(5));
    let log = fs::read_to_string(mesh.agent_log("ka")).expect("log");
    assert!(
        log.contains("serving the container on the sockets the previous agent held"),
        "{log}"
    );
    assert_eq!(call("after-upgrade").0, "after-upgrade");
}

/// Binds the agent's ports in its network namespace, printing what each
/// bind did: the outbound port (15001, TCP) and DNS (53, UDP and TCP);
/// prints "bound" and sleeps. A process of a service that is in the
/// service's cgroup is refused 15001 by the kernel (EPERM, root or not).
const SQUAT: &str = r#"
import socket, time
keep = []
for port, kind in ((15001, socket.SOCK_STREAM), (53, socket.SOCK_DGRAM), (53, socket.SOCK_STREAM)):
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            s.listen()
        keep.append(s)
        print("port", port, "taken", flush=True)
    except OSError as e:
        print("port", port, "refused:", e, flush=True)
print("bound", flush=True)
time.sleep(600)
"#;

/// Bad input: a container that tries to bind the agent's ports, one that
/// bound them before it joined its service's cgroup, a cgroup with
/// processes in two namespaces, namespaces that vanish while being
/// enrolled: a clear log line each, no crash, the node serves on.
#[test]
fn bad_containers_are_logged_and_the_node_serves_on() {
    let mesh = Mesh::nodes(&["ba", "bb"])
        .default_policy("allow")
        .service("web", "ba", 8080)
        .service_with("api", "bb", API_PORT, |s| s.vip(VIP))
        .start();
    mesh.start_echo_server("bb", "api", API_PORT);
    let agent = mesh.agent_pid("ba").expect("agent");
    let log = || fs::read_to_string(mesh.agent_log("ba")).unwrap_or_default();

    // A container of web trying the agent's ports: the outbound port is
    // refused (whether or not the agent was first); calls by VIP go
    // through the agent.
    let squat = mesh.run_container("ba", "web", &["python3", "-c", SQUAT]);
    served(&mesh, "ba", "web", 1, Duration::from_secs(5));
    assert!(wait_until(Duration::from_secs(5), || mesh
        .container_logs(&squat)
        .contains("bound")));
    let said = mesh.container_logs(&squat);
    assert!(
        said.contains("port 15001 refused: [Errno 1] Operation not permitted"),
        "{said}"
    );
    assert_eq!(
        mesh.container_echo(&squat, VIP, API_PORT, "squat").0,
        "squat"
    );

    // A process that bound both ports in its own namespace before it
    // joined web's cgroup: the agent cannot listen there and says so; DNS
    // is left to it too.
    let early = mesh.dir.join("early.log");
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "sh", "-c"]).arg(format!(
        "ip link set lo up && exec python3 -c '{}' > {} 2>&1",
        SQUAT.replace('\'', "\""),
        early.display()
    ));
    let pid = mesh.spawn_app(cmd, "early");
    assert!(wait_until(Duration::from_secs(10), || fs::read_to_string(
        &early
    )
    .unwrap_or_default()
    .contains("bound")));
    let dir = cgroup2_root().join("mesh/ba/web/early");
    fs::create_dir_all(&dir).expect("cgroup");
    fs::write(dir.join("cgroup.procs"), pid.to_string()).expect("join the cgroup");
    assert!(
        wait_until(Duration::from_secs(5), || log()
            .contains("container not served")
            && log().contains("cannot listen on 127.0.0.1:15001")),
        "{}",
        log()
    );
    served(&mesh, "ba", "web", 1, Duration::from_secs(5));
    mesh.stop_app(pid);

    // Two namespaces in one cgroup: both served, said once.
    for _ in 0..2 {
        let mut odd = mesh.cmd_own_netns("ba", "web", "sleep");
        odd.arg("600");
        mesh.spawn_app(odd, "odd");
    }
    served(&mesh, "ba", "web", 3, Duration::from_secs(5));
    assert!(wait_until(Duration::from_secs(5), || log().contains(
        "a cgroup holds processes in several network namespaces"
    )));

    // Namespaces that vanish at once, 30 times over.
    for _ in 0..30 {
        let mut brief = mesh.cmd_own_netns("ba", "web", "sh");
        brief.args(["-c", "sleep 0.2"]);
        let _ = output_with_timeout(&mut brief, Duration::from_secs(10));
    }
    served(&mesh, "ba", "web", 3, Duration::from_secs(5));
    assert_eq!(mesh.agent_pid("ba"), Some(agent));
    assert!(!log().contains("panicked"), "{}", log());
    assert_eq!(
        mesh.echo("ba", "web", mesh_tests::vip(), API_PORT, "still"),
        "still"
    );
}

/// What a container costs the agent is bounded: 20 bare namespaces, each
/// in a cgroup of its own, cost at most 6 fds each (outbound listeners
/// on 127.0.0.1 and ::1, DNS over UDP and TCP, the namespace, the
/// sk_lookup link), and all of them are given back when they go.
#[test]
fn a_container_costs_a_few_fds_and_gives_them_back() {
    let mesh = Mesh::nodes(&["fa"])
        .default_policy("allow")
        .service("web", "fa", 8080)
        .start();
    let fds = agent_fds(&mesh, "fa");
    let before = fds();
    let n = 20;
    let pids: Vec<u32> = (0..n)
        .map(|i| {
            let mut c = mesh.cmd_own_netns_in("fa", "web", &format!("c{i}"), "sleep");
            c.arg("600");
            mesh.spawn_app(c, &format!("ns-{i}"))
        })
        .collect();
    served(&mesh, "fa", "web", n, Duration::from_secs(10));
    let during = fds();
    assert!(
        during <= before + 6 * n,
        "{before} fds before, {during} with {n} containers"
    );
    for pid in pids {
        mesh.stop_app(pid);
    }
    served(&mesh, "fa", "web", 0, Duration::from_secs(5));
    assert!(
        wait_until(Duration::from_secs(5), || fds() <= before),
        "fds: {before} before, {} after",
        fds()
    );
}

/// Containers of two services on one node: the caller's agent delivers
/// into the other container itself (bytes never leave the node), by name,
/// VIP and catalog address; a deny still gives EPERM.
#[test]
fn containers_of_two_services_on_one_node_call_each_other() {
    let mesh = Mesh::nodes(&["sa"])
        .default_policy("deny")
        .service("web", "sa", 8080)
        .service_with("api", "sa", API_PORT, |s| s.vip(VIP))
        .intention("web", "api", "allow")
        .start();
    let (api, accepts) = mesh.container_echo_server("sa", "api", API_PORT, "api");
    let web = mesh.run_container("sa", "web", &["sleep", "600"]);
    served(&mesh, "sa", "web", 1, Duration::from_secs(5));
    served(&mesh, "sa", "api", 1, Duration::from_secs(5));
    let catalog = mesh.node("sa").addr(false).to_string();
    for host in ["api.mesh", VIP, catalog.as_str()] {
        let (echo, err) = mesh.container_echo(&web, host, API_PORT, "same-node");
        assert_eq!(echo, "same-node", "web -> {host}: {err}");
    }
    assert_eq!(lines(&accepts), 3);
    let log = fs::read_to_string(mesh.agent_log("sa")).expect("log");
    assert_eq!(log.matches("outbound, same node").count(), 3, "{log}");
    // api may not call web (no intention): EPERM in api's container.
    let (echo, err) = mesh.container_echo(&api, "web.mesh", 8080, "x");
    assert!(
        echo.is_empty() && err.contains("PermissionError"),
        "api -> web: {echo} {err}"
    );
}
