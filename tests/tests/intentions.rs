//! Intentions, enforced by the kernel at the source and by the destination
//! agent, changed live with `mesh-agent intention`. Need root.
use std::{
    fs,
    net::IpAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use mesh_tests::{API_PORT, Mesh, app, pki, run_to_string, wait_until};

const VIP: &str = "240.0.0.11";

fn vip() -> IpAddr {
    VIP.parse().expect("vip")
}

/// Runs `mesh-agent <args> --config <mesh config>`; returns (success, output).
fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

#[test]
fn deny_and_delete_apply_live_within_a_second() {
    let mesh = Mesh::nodes(&["ia", "ib"])
        .comment("the mesh")
        .default_policy("deny")
        .service("web", "ia", 8080)
        .service_with("api", "ib", API_PORT, |s| s.vip(VIP))
        .intention_with("web", "api", "allow", |i| i.comment("web may call api"))
        .start();
    mesh.start_echo_server("ib", "api", API_PORT);
    assert_eq!(
        mesh.echo("ia", "web", vip(), API_PORT, "hi"),
        "hi",
        "allowed pair"
    );

    // A long-lived connection, open before the change.
    let log = mesh.dir.join("app-hold.log");
    let mut hold = mesh.cmd_as("ia", "web", "python3");
    hold.arg(app("hold_client.py"))
        .arg(VIP)
        .arg(API_PORT.to_string())
        .arg("20");
    mesh.spawn_app(hold, "hold");
    assert!(
        wait_until(Duration::from_secs(10), || fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("OPEN")),
        "hold client did not connect: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );

    let written = now_secs();
    let started = Instant::now();
    let (ok, out) = mesh.cli(&["intention", "create", "-deny", "web", "api"]);
    assert!(ok, "intention create: {out}");
    // A new connect fails at the source with EPERM.
    let eperm = wait_until(Duration::from_secs(3), || {
        mesh.transfer("ia", Some("web"), vip(), API_PORT, 10)
            .starts_with("ERRNO 1 ")
    });
    let to_eperm = started.elapsed();
    assert!(eperm, "connect did not fail with EPERM after the deny");
    assert!(
        to_eperm <= Duration::from_secs(1),
        "EPERM after {to_eperm:?}"
    );
    // The live connection is cut.
    assert!(
        wait_until(Duration::from_secs(3), || fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("CLOSED")),
        "live connection was not cut"
    );
    let text = fs::read_to_string(&log).expect("log");
    let closed: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("CLOSED "))
        .and_then(|t| t.trim().parse().ok())
        .expect("CLOSED time");
    let cut_after = closed - written;
    assert!(
        cut_after <= 1.0,
        "live connection cut after {cut_after:.3} s"
    );
    // Both agents watch; whichever notices first closes its end.
    let logs = ["ia", "ib"].map(|n| fs::read_to_string(mesh.agent_log(n)).expect("log"));
    assert!(
        logs.iter()
            .any(|l| l.contains("connection cut: intentions now deny web -> api")),
        "{logs:?}"
    );

    // The file kept its comments; the rule is listed; explain agrees.
    let config = fs::read_to_string(mesh.config()).expect("config");
    assert!(config.contains("# web may call api") && config.contains("# the mesh"));
    let (_, list) = mesh.cli(&["intention", "list"]);
    assert!(list.contains("web") && list.contains("deny"), "{list}");
    let (_, explain) = mesh.cli(&["explain", "web", "api"]);
    assert!(
        explain.starts_with("deny: web -> api by intention web -> api"),
        "{explain}"
    );

    // Delete it: the mesh's default is deny, so still denied...
    let (ok, out) = mesh.cli(&["intention", "delete", "web", "api"]);
    assert!(ok, "intention delete: {out}");
    let (_, explain) = mesh.cli(&["explain", "web", "api"]);
    assert!(
        explain.starts_with("deny: web -> api by default policy"),
        "{explain}"
    );
    // ...and allowing it again works at once.
    let (ok, out) = mesh.cli(&["intention", "create", "-allow", "web", "api"]);
    assert!(ok, "intention create: {out}");
    assert!(
        wait_until(Duration::from_secs(1), || mesh.echo(
            "ia",
            "web",
            vip(),
            API_PORT,
            "back"
        ) == "back"),
        "allowed again, but the call fails"
    );
    // status counts per pair, on each side.
    let pairs = ["ia", "ib"].map(|n| mesh.status(n)["connections"][0].clone());
    for pair in &pairs {
        assert_eq!(
            (pair["source"].as_str(), pair["destination"].as_str()),
            (Some("web"), Some("api"))
        );
        assert!(pair["allowed"].as_u64() >= Some(3), "{pairs:?}");
    }
    let cut: u64 = pairs.iter().filter_map(|p| p["cut"].as_u64()).sum();
    assert!(cut >= 1, "{pairs:?}");
    // The source refused the later connects in the kernel; its agent counted
    // only what reached it.
    assert!(pairs[0]["denied"].as_u64() == Some(0), "{pairs:?}");
}

#[test]
fn default_policy_decides_without_intentions() {
    for (default, expect_ok) in [("allow", true), ("deny", false)] {
        let (a, b) = (format!("d{default}a"), format!("d{default}b"));
        let mesh = Mesh::nodes(&[&a, &b])
            .default_policy(default)
            .service("web", &a, 8080)
            .service_with("api", &b, API_PORT, |s| s.vip(VIP))
            .start();
        mesh.start_transfer_server(&format!("d{default}b"), "api", API_PORT, 100);
        let out = mesh.transfer(&format!("d{default}a"), Some("web"), vip(), API_PORT, 100);
        if expect_ok {
            assert!(out.starts_with("OK "), "default allow: {out}");
        } else {
            assert!(
                out.starts_with("ERRNO 1 "),
                "default deny at the source: {out}"
            );
        }
    }
}

#[test]
fn the_destination_refuses_a_denied_caller_even_with_a_valid_leaf() {
    // web -> api is denied. A hand-made TLS client holding a perfectly valid
    // leaf for web (as if web's agent skipped its own checks) is still
    // refused by api's agent, and api sees nothing.
    let mesh = Mesh::nodes(&["ma", "mb"])
        .default_policy("allow")
        .service("web", "ma", 8080)
        .service_with("api", "mb", API_PORT, |s| s.vip(VIP))
        .intention("web", "api", "deny")
        .start();
    let accepts = mesh.start_transfer_server("mb", "api", API_PORT, 100);
    let certs = mesh.dir.join("certs");
    fs::create_dir_all(&certs).expect("dir");
    let node_a = pki::Ca::load_node(&mesh.ca_dir(), "ma");
    let leaf = pki::write_leaf(
        &certs,
        "web",
        &node_a,
        &pki::Leaf::valid_now("spiffe://mesh.local/svc/web"),
    );
    let b = mesh.node("mb").v4;
    let mut cmd = mesh.cmd("ma", "sh");
    cmd.arg("-c").arg(format!(
        "(printf 'hello\\n'; sleep 1) | openssl s_client -connect {b}:{API_PORT} -tls1_3 \
         -servername api.svc.mesh.local -alpn mesh/1 -cert {} -key {} -cert_chain {} 2>&1",
        leaf.cert.display(),
        leaf.key.display(),
        leaf.chain.as_ref().expect("chain").display()
    ));
    let out = run_to_string(&mut cmd, Duration::from_secs(20));
    let log = mesh.agent_log("mb");
    assert!(
        wait_until(Duration::from_secs(5), || fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("denied by intentions")),
        "api's agent did not refuse: {out}"
    );
    let text = fs::read_to_string(&log).expect("log");
    let line = text
        .lines()
        .find(|l| l.contains("denied by intentions"))
        .expect("line");
    for part in [
        "src=web",
        "dst=api",
        &format!("dialed={b}:{API_PORT}"),
        "rule=intention web -> api",
    ] {
        assert!(line.contains(part), "refusal log lacks {part:?}: {line}");
    }
    assert_eq!(
        fs::read_to_string(&accepts).expect("log"),
        "",
        "api saw a connection"
    );
    assert_eq!(mesh.status("mb")["connections"][0]["denied"], 1);
    let warnings = text.lines().filter(|l| l.contains(" WARN ")).count();
    assert_eq!(warnings, 1, "the refusal is logged once:\n{text}");
}

#[test]
fn explain_agrees_with_what_is_enforced_for_every_pair() {
    // Three callers on node a, three services on node b, and intentions of
    // every shape, including wildcards and ties.
    let (a, b) = ("xa", "xb");
    let mut topology = Mesh::nodes(&[a, b]).default_policy("deny");
    for (i, s) in ["s1", "s2", "s3"].iter().enumerate() {
        topology = topology.service(s, a, 7000 + u16::try_from(i).expect("i"));
    }
    for (i, d) in ["d1", "d2", "d3"].iter().enumerate() {
        let vip = format!("240.0.1.{}", i + 1);
        let port = 6001 + u16::try_from(i).expect("i");
        topology = topology.service_with(d, b, port, |s| s.vip(&vip));
    }
    for (s, d, action) in [
        ("*", "d1", "allow"),
        ("s1", "*", "allow"),
        ("s2", "*", "deny"),
        ("s2", "d2", "allow"),
        ("s3", "d3", "deny"),
        ("*", "d3", "allow"),
        ("s3", "*", "allow"),
        ("*", "d2", "deny"),
    ] {
        topology = topology.intention(s, d, action);
    }
    let mesh = topology.start();
    for (i, d) in ["d1", "d2", "d3"].iter().enumerate() {
        mesh.start_transfer_server(b, d, 6001 + u16::try_from(i).expect("i"), 10);
    }
    let mut allowed = 0;
    for s in ["s1", "s2", "s3"] {
        for (i, d) in ["d1", "d2", "d3"].iter().enumerate() {
            let (_, explain) = mesh.cli(&["explain", s, d]);
            let vip: IpAddr = format!("240.0.1.{}", i + 1).parse().expect("vip");
            let port = 6001 + u16::try_from(i).expect("i");
            let out = mesh.transfer(a, Some(s), vip, port, 10);
            if explain.starts_with("allow:") {
                allowed += 1;
                assert!(
                    out.starts_with("OK "),
                    "{s} -> {d}: explain says {explain} but got {out}"
                );
            } else {
                assert!(explain.starts_with("deny:"), "{explain}");
                assert!(
                    out.starts_with("ERRNO 1 "),
                    "{s} -> {d}: explain says {explain} but got {out}"
                );
            }
        }
    }
    assert!(
        (2..=7).contains(&allowed),
        "the generated config should mix verdicts: {allowed} allowed"
    );
}

#[test]
fn a_broken_edit_is_rejected_and_the_last_good_config_stays() {
    let mesh = Mesh::nodes(&["ba", "bb"])
        .default_policy("deny")
        .service("web", "ba", 8080)
        .service_with("api", "bb", API_PORT, |s| s.vip(VIP))
        .intention("web", "api", "allow")
        .start();
    mesh.start_echo_server("bb", "api", API_PORT);
    let good = fs::read_to_string(mesh.config()).expect("config");
    // A hand edit that breaks the file: an unknown service.
    let broken = good.replace("destination = \"api\"", "destination = \"apii\"");
    fs::write(mesh.config(), &broken).expect("write");
    let line = broken
        .lines()
        .position(|l| l.contains("apii"))
        .expect("line")
        + 1;
    let log = mesh.agent_log("ba");
    let expected = format!("mesh.toml:{line}:15:");
    assert!(
        wait_until(Duration::from_secs(2), || {
            let text = fs::read_to_string(&log).unwrap_or_default();
            text.contains("config change rejected, keeping the last good config")
                && text.contains(&expected)
        }),
        "no clear rejection in agent ba's log: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    // web -> api is still allowed by the last good config. (`exec` itself
    // needs a valid file to find web's cgroup: give it the good copy.)
    let good_copy = mesh.dir.join("good.toml");
    fs::write(&good_copy, &good).expect("write");
    let mut echo = mesh.cmd("ba", &mesh.agent);
    echo.arg("exec")
        .arg("--config")
        .arg(&good_copy)
        .args(["--node", "ba", "--service", "web", "--", "python3"])
        .arg(app("echo_client.py"))
        .args([VIP, &API_PORT.to_string(), "still"]);
    assert_eq!(run_to_string(&mut echo, Duration::from_secs(20)), "still");
    // A later good edit applies again.
    fs::write(
        mesh.config(),
        good.replace("action = \"allow\"", "action = \"deny\""),
    )
    .expect("write");
    assert!(
        wait_until(Duration::from_secs(1), || mesh
            .transfer("ba", Some("web"), vip(), API_PORT, 10)
            .starts_with("ERRNO 1 ")),
        "the next good edit was not applied"
    );
}

#[test]
fn kernel_denials_are_logged_once_per_interval_and_all_counted() {
    let mesh = Mesh::nodes(&["ka", "kb"])
        .default_policy("deny")
        .service("web", "ka", 8080)
        .service_with("api", "kb", API_PORT, |s| s.vip(VIP))
        .start();
    mesh.start_echo_server("kb", "api", API_PORT);
    let connects = |node: &str, service: Option<&str>, host: &str, n: u32| {
        let mut cmd = match service {
            Some(s) => mesh.cmd_as(node, s, "python3"),
            None => mesh.cmd(node, "python3"),
        };
        cmd.arg(app("connect_loop.py"))
            .arg(host)
            .arg(API_PORT.to_string())
            .arg(n.to_string());
        run_to_string(&mut cmd, Duration::from_secs(60))
    };

    // A denied app in a tight loop: every connect() is refused with EPERM.
    assert_eq!(
        connects("ka", Some("web"), VIP, 1000).trim(),
        r#"{"EPERM": 1000}"#
    );
    // The agent hears of it, with who, what and why, but not 1000 times:
    // one report per key and CPU every 10 s.
    let log = mesh.agent_log("ka");
    let reports = || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("intentions deny web -> api"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(5), || !reports().is_empty()),
        "no report of the kernel's EPERM in agent ka's log"
    );
    let lines = reports();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(lines.len() <= cpus, "{} reports:\n{lines:#?}", lines.len());
    let first = &lines[0];
    for field in [
        "connect() refused with EPERM",
        "src=web",
        "dst=api",
        "rule=default policy",
        "comm=python3",
        &format!("dialed={VIP}:{API_PORT}"),
        "pid=",
    ] {
        assert!(first.contains(field), "no {field:?} in {first}");
    }
    // Every one of them is counted, in /metrics and in status.
    let series = "mesh_denials_total{source=\"web\",destination=\"api\",rule=\"default policy\",side=\"source\"}";
    assert_eq!(
        mesh.metric("ka", series),
        Some(1000.0),
        "{}",
        mesh.metrics("ka")
    );
    let status = mesh.status("ka");
    let pair = status["connections"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["source"] == "web"))
        .unwrap_or_else(|| panic!("no web -> api in {status}"));
    assert_eq!(pair["denied_at_source"], 1000, "{pair}");

    // The loopback guard's EPERM is reported the same way, for a caller
    // without a mesh identity.
    assert_eq!(
        connects("kb", None, "127.0.0.1", 5).trim(),
        r#"{"EPERM": 5}"#
    );
    let series = "mesh_denials_total{source=\"-\",destination=\"api\",rule=\"loopback guard\",side=\"source\"}";
    assert_eq!(
        mesh.metric("kb", series),
        Some(5.0),
        "{}",
        mesh.metrics("kb")
    );
    assert!(
        wait_until(Duration::from_secs(5), || fs::read_to_string(
            mesh.agent_log("kb")
        )
        .unwrap_or_default()
        .contains("only api itself may use its loopback port")),
        "no loopback guard report in agent kb's log"
    );
}
