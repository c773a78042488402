//! Instance health checks (`[[service.check]]`), end to end: an instance
//! whose check fails gets no traffic from any node, a 429 keeps it in
//! rotation (warning), a stopped instance, a killed agent or a cut-off
//! node fail no call and are critical everywhere within the design's
//! bounds, traffic returns once they are back; a `ttl` check follows
//! `mesh-agent check`; DNS SRV lists exactly the instances that take
//! traffic; `catalog services` and the per-instance metrics count them.
//! Real agents and apps in network namespaces; need root.
//!
//! Timings are measured and printed (run with `--nocapture` to see them);
//! each assertion allows [`POLL_SLACK`] over the design's bound for the
//! poll that observes it on a busy 2-core machine.
use std::{
    net::IpAddr,
    process::Output,
    thread,
    time::{Duration, Instant},
};

use mesh_tests::{
    API_PORT, Mesh, Signal, Topology,
    health::{CallResult, answered_by, failed_calls},
    metric_value, output_with_timeout, run_to_string,
};

const VIP: &str = "240.0.0.71";
/// The checks' interval in these tests (`interval = "200ms"`).
const INTERVAL: Duration = Duration::from_millis(200);
/// Their `failures_before_critical`.
const FAILURES: u32 = 2;
/// The design: every agent learns an instance's state within `interval x
/// failures_before_critical + 1 s` of the change.
const BOUND: Duration = INTERVAL
    .saturating_mul(FAILURES)
    .saturating_add(Duration::from_secs(1));
/// The design: the instances of a node whose agent cannot be reached count
/// as critical within 3 s.
const UNREACHABLE_BOUND: Duration = Duration::from_secs(3);
/// What a poll of `/catalog` (curl in a namespace, every 50 ms) may add to
/// a measured time on a loaded machine.
const POLL_SLACK: Duration = Duration::from_millis(500);
/// The source agent's passive ejection of an instance that failed 3
/// dials (`proxy::balance::EJECTION`).
const EJECTION: Duration = Duration::from_secs(10);
/// Bound on one call of a stream (they take milliseconds).
const CALL_WAIT: Duration = Duration::from_secs(15);

/// An http check every 200 ms, critical after 2 failures in a row. The
/// 1 s timeout keeps a slow answer on a loaded machine from counting as
/// a failure; a 503 is answered at once.
fn http_check() -> String {
    format!(
        "http = \"/health\"\ninterval = \"200ms\"\ntimeout = \"1s\"\nfailures_before_critical = {FAILURES}"
    )
}

fn vip() -> IpAddr {
    VIP.parse().expect("vip")
}

/// Three nodes `[a, b, c]`: web on a, api on b and c with `check`.
fn web_and_api(nodes: [&str; 3], check: &str) -> Topology {
    let [a, b, c] = nodes;
    Mesh::nodes(&nodes)
        .default_policy("allow")
        .service("web", a, 8080)
        .service_on_with("api", &[b, c], API_PORT, |s| s.vip(VIP).check(check))
}

/// Starts a health server as api on each of `nodes` and waits until the
/// agent of `from` sees them all passing.
fn start_api(mesh: &Mesh, from: &str, nodes: &[&str]) -> Vec<u32> {
    let pids = nodes
        .iter()
        .map(|n| mesh.start_health_server(n, "api", API_PORT))
        .collect();
    for n in nodes {
        assert!(
            mesh.wait_instance_state(from, "api", n, "passing", Duration::from_secs(15))
                .is_some(),
            "api on {n} not passing on {from}: {:?}",
            mesh.catalog_instance(from, "api", n)
        );
    }
    pids
}

/// `count` calls from web on `node` to the api VIP, back to back.
fn calls(mesh: &Mesh, node: &str, count: usize) -> Vec<CallResult> {
    mesh.http_calls(node, "web", vip(), API_PORT, count, Duration::ZERO)
}

/// Asserts the state of api on `instance` as `node` knows it turns `state`
/// within `bound` (plus [`POLL_SLACK`]); returns how long it took.
#[track_caller]
fn expect_state(mesh: &Mesh, node: &str, instance: &str, state: &str, bound: Duration) -> Duration {
    let took = mesh.wait_instance_state(
        node,
        "api",
        instance,
        state,
        bound + Duration::from_secs(10),
    );
    let took = took.unwrap_or_else(|| {
        panic!(
            "{node} never saw api on {instance} {state}: {:?}",
            mesh.catalog_instance(node, "api", instance)
        )
    });
    println!("{node} saw api on {instance} {state} after {took:?} (bound {bound:?})");
    assert!(
        took <= bound + POLL_SLACK,
        "{node} saw api on {instance} {state} after {took:?}, over {bound:?}"
    );
    took
}

/// `mesh_instance_connect_failures_total` of api on `instance`, at `node`.
fn connect_failures(mesh: &Mesh, node: &str, instance: &str) -> f64 {
    mesh.metric(
        node,
        &format!("mesh_instance_connect_failures_total{{service=\"api\",node=\"{instance}\"}}"),
    )
    // Not there until the first failure.
    .unwrap_or(0.0)
}

/// Calls api from web on `node` in small batches until one reaches
/// `instance` (none failing), for at most `timeout`; returns how long it
/// took.
#[track_caller]
fn wait_traffic(mesh: &Mesh, node: &str, instance: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    let ok = mesh_tests::wait_until(timeout, || {
        let results = calls(mesh, node, 4);
        assert_eq!(failed_calls(&results), [], "calls failed");
        answered_by(&results, instance) > 0
    });
    assert!(ok, "no call reached {instance} within {timeout:?}");
    let took = start.elapsed();
    println!("traffic reached {instance} again after {took:?}");
    took
}

#[test]
fn an_instance_failing_its_http_check_gets_no_traffic_and_429_keeps_it() {
    let (a, b, c) = ("hpa", "hpb", "hpc");
    let mesh = web_and_api([a, b, c], &http_check()).start();
    start_api(&mesh, a, &[b, c]);

    // All passing: 200 calls spread over both.
    let results = calls(&mesh, a, 200);
    assert_eq!(failed_calls(&results), []);
    let (on_b, on_c) = (answered_by(&results, b), answered_by(&results, c));
    assert_eq!(on_b + on_c, 200);
    for (node, n) in [(b, on_b), (c, on_c)] {
        assert!(
            (60..=140).contains(&n),
            "{node} took {n} of 200 ({b} {on_b}, {c} {on_c})"
        );
    }

    // 503: critical on a within the bound, then no call goes to c (its
    // app still answers every other path: only the check says no).
    mesh.set_health(c, "api", 503);
    expect_state(&mesh, a, c, "critical", BOUND);
    let seen = mesh.catalog_instance(a, "api", c).expect("api on c");
    let output = seen["checks"][0]["output"].as_str().unwrap_or_default();
    assert!(output.contains("503"), "check output on {a}: {seen}");
    let results = calls(&mesh, a, 50);
    assert_eq!(failed_calls(&results), []);
    assert_eq!(
        answered_by(&results, b),
        50,
        "calls reached {c}: {results:?}"
    );

    // 429: warning, which takes traffic.
    mesh.set_health(c, "api", 429);
    expect_state(&mesh, a, c, "warning", BOUND);
    let series = format!("mesh_instance_health{{service=\"api\",node=\"{c}\"}}");
    let metrics = mesh.metrics(a);
    assert_eq!(metric_value(&metrics, &series), Some(1.0), "{metrics}");
    let results = calls(&mesh, a, 100);
    assert_eq!(failed_calls(&results), []);
    let on_c = answered_by(&results, c);
    assert!(on_c >= 20, "{c} (warning) took {on_c} of 100 calls");

    // 200: passing again.
    mesh.set_health(c, "api", 200);
    expect_state(&mesh, a, c, "passing", BOUND);
    let metrics = mesh.metrics(a);
    assert_eq!(metric_value(&metrics, &series), Some(0.0), "{metrics}");
}

#[test]
fn stopping_an_instance_fails_no_call() {
    let (a, b, c) = ("hsa", "hsb", "hsc");
    let check = format!(
        "tcp = true\ninterval = \"200ms\"\ntimeout = \"1s\"\nfailures_before_critical = {FAILURES}"
    );
    let mesh = web_and_api([a, b, c], &check).start();
    let pids = start_api(&mesh, a, &[b, c]);

    // 100 calls 50 ms apart; api on c stops right after the 20th ends,
    // between calls (a call c had accepted when it died would be lost
    // with it, which no failover can undo).
    let mut stream =
        mesh.http_call_stream(a, "web", vip(), API_PORT, 100, Duration::from_millis(50));
    for i in 0..20 {
        assert!(stream.next(CALL_WAIT).is_some(), "call {i} did not end");
    }
    mesh.stop_app(pids[1]);
    let stopped = Instant::now();
    expect_state(&mesh, a, c, "critical", BOUND);
    // From the bound on, a's agent does not even try c.
    thread::sleep((stopped + BOUND + POLL_SLACK).saturating_duration_since(Instant::now()));
    let tried = connect_failures(&mesh, a, c);
    let results = stream.finish(Duration::from_secs(60));
    assert_eq!(results.len(), 100);
    assert_eq!(failed_calls(&results), [], "calls failed");
    assert_eq!(answered_by(&results[21..], b), 79, "{results:?}");
    println!("{a} tried {c} {tried} times after it stopped");

    // Still none after a's passive ejection of c (if any) is over: it is
    // the check that keeps c out.
    thread::sleep(
        (stopped + EJECTION + Duration::from_secs(1)).saturating_duration_since(Instant::now()),
    );
    let results = calls(&mesh, a, 20);
    assert_eq!(failed_calls(&results), []);
    assert_eq!(answered_by(&results, b), 20);
    assert_eq!(
        connect_failures(&mesh, a, c),
        tried,
        "{a}'s agent tried {c} after the bound"
    );

    // Start it again: passing, and traffic returns.
    mesh.start_health_server(c, "api", API_PORT);
    expect_state(&mesh, a, c, "passing", BOUND);
    wait_traffic(&mesh, a, c, Duration::from_secs(5));
}

#[test]
fn an_instance_back_from_critical_takes_traffic_at_once() {
    // Calls made right after api on c stops fail over, after 3 failed
    // dials to c: a ejects c for 10 s. Once c's check passes again, the
    // check vouches for it: the ejection must not keep it out longer.
    let (a, b, c) = ("hea", "heb", "hec");
    let mesh = web_and_api([a, b, c], &http_check()).start();
    let pids = start_api(&mesh, a, &[b, c]);
    mesh.stop_app(pids[1]);
    let results = calls(&mesh, a, 30);
    assert_eq!(failed_calls(&results), [], "calls failed");
    let log = std::fs::read_to_string(mesh.agent_log(a)).unwrap_or_default();
    assert!(log.contains("instance ejected"), "{a} did not eject {c}");
    expect_state(&mesh, a, c, "critical", BOUND);

    mesh.start_health_server(c, "api", API_PORT);
    expect_state(&mesh, a, c, "passing", BOUND);
    let took = wait_traffic(&mesh, a, c, EJECTION + Duration::from_secs(5));
    assert!(
        took <= Duration::from_secs(3),
        "api on {c} passing, but no call reached it for {took:?}"
    );
}

#[test]
fn a_killed_agent_is_critical_within_3s_and_no_call_fails() {
    let (a, b, c) = ("hka", "hkb", "hkc");
    let mesh = web_and_api([a, b, c], &http_check()).start();
    start_api(&mesh, a, &[b, c]);

    let mut stream =
        mesh.http_call_stream(a, "web", vip(), API_PORT, 100, Duration::from_millis(50));
    for i in 0..20 {
        assert!(stream.next(CALL_WAIT).is_some(), "call {i} did not end");
    }
    let killed = Instant::now();
    mesh.stop_agent(c, Signal::SIGKILL);
    let took = mesh
        .wait_instance_state(a, "api", c, "critical", Duration::from_secs(10))
        .map(|_| killed.elapsed());
    let seen = mesh.catalog_instance(a, "api", c);
    println!("{a} saw api on {c} critical {took:?} after its agent was killed");
    let took = took.unwrap_or_else(|| panic!("api on {c} never critical on {a}: {seen:?}"));
    assert!(
        took <= UNREACHABLE_BOUND + POLL_SLACK,
        "api on {c} critical after {took:?}"
    );
    let reason = seen
        .as_ref()
        .map(|s| s["reason"].to_string())
        .unwrap_or_default();
    assert!(reason.contains("unreachable"), "{seen:?}");
    let results = stream.finish(Duration::from_secs(60));
    assert_eq!(results.len(), 100);
    assert_eq!(failed_calls(&results), [], "calls failed");
    assert_eq!(answered_by(&results[21..], b), 79, "{results:?}");

    // Its agent back: passing again, and traffic returns (once a's passive
    // ejection of c, from the failed dials right after the kill, is over).
    let restarted = Instant::now();
    mesh.start_agent(c);
    println!(
        "agent {c} ready {:?} after its restart",
        restarted.elapsed()
    );
    expect_state(&mesh, a, c, "passing", Duration::from_secs(5));
    wait_traffic(&mesh, a, c, EJECTION + Duration::from_secs(5));
}

#[test]
fn a_node_cut_off_is_critical_within_3s_and_no_call_fails() {
    let (a, b, c) = ("hna", "hnb", "hnc");
    let mesh = web_and_api([a, b, c], &http_check()).start();
    start_api(&mesh, a, &[b, c]);
    let link = |state: &str| {
        let mut cmd = mesh.cmd(c, "ip");
        cmd.args(["link", "set", "eth0", state]);
        let out = output_with_timeout(&mut cmd, Duration::from_secs(10));
        assert!(out.status.success(), "ip link set eth0 {state} on {c}");
    };

    // Its cable pulled, c's agent just falls silent: a hears nothing,
    // and each dial to c hangs until the 1 s try bound.
    let mut stream =
        mesh.http_call_stream(a, "web", vip(), API_PORT, 60, Duration::from_millis(50));
    for i in 0..10 {
        assert!(stream.next(CALL_WAIT).is_some(), "call {i} did not end");
    }
    let cut = Instant::now();
    link("down");
    let took = mesh
        .wait_instance_state(a, "api", c, "critical", Duration::from_secs(10))
        .map(|_| cut.elapsed());
    println!("{a} saw api on {c} critical {took:?} after the cut");
    let took = took.unwrap_or_else(|| panic!("api on {c} never critical on {a}"));
    assert!(
        took <= UNREACHABLE_BOUND + POLL_SLACK,
        "api on {c} critical after {took:?}"
    );
    let results = stream.finish(Duration::from_secs(120));
    assert_eq!(results.len(), 60);
    assert_eq!(failed_calls(&results), [], "calls failed");

    link("up");
    expect_state(&mesh, a, c, "passing", Duration::from_secs(5));
    wait_traffic(&mesh, a, c, EJECTION + Duration::from_secs(5));
}

/// Runs `mesh-agent ARGS` in `node`'s namespace (the CLI talks to the
/// node's agent), bounded at 20 s.
fn agent_cli(mesh: &Mesh, node: &str, args: &[&str]) -> Output {
    let mut cmd = mesh.cmd(node, &mesh.agent);
    cmd.args(args);
    output_with_timeout(&mut cmd, Duration::from_secs(20))
}

/// `mesh-agent check STATE --service api --note NOTE` on `node`; asserts
/// it succeeded.
#[track_caller]
fn ttl(mesh: &Mesh, node: &str, state: &str, note: &str) {
    let out = agent_cli(
        mesh,
        node,
        &["check", state, "--service", "api", "--note", note],
    );
    assert!(
        out.status.success(),
        "check {state}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `mesh-agent catalog instances --service SERVICE` on `node`: its table.
#[track_caller]
fn instances_table(mesh: &Mesh, node: &str, service: &str) -> String {
    let out = agent_cli(mesh, node, &["catalog", "instances", "--service", service]);
    assert!(
        out.status.success(),
        "catalog instances: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The row of `node` in a `catalog instances` table.
fn row<'t>(table: &'t str, service: &str, node: &str) -> &'t str {
    table
        .lines()
        .find(|l| l.split_whitespace().take(2).eq([service, node]))
        .unwrap_or_else(|| panic!("no row for {service} on {node}:\n{table}"))
}

#[test]
fn a_ttl_check_is_driven_by_mesh_agent_check() {
    // Two nodes are enough: the check's instance on b, a caller on a.
    // db, also on b, has an http check that needs 6 successes in a row.
    let (a, b) = ("hta", "htb");
    let mesh = Mesh::nodes(&[a, b])
        .default_policy("allow")
        .service("web", a, 8080)
        .service_with("api", b, API_PORT, |s| {
            s.vip(VIP).check("name = \"heartbeat\"\nttl = \"2s\"")
        })
        .service_with("db", b, 5002, |s| {
            s.check("http = \"/health\"\ninterval = \"1s\"\nsuccess_before_passing = 6")
        })
        .build();
    // The apps run before the agents: every run of db's check succeeds.
    mesh.start_health_server(b, "api", API_PORT);
    mesh.start_health_server(b, "db", 5002);

    // A new instance with checks starts critical: db although its check
    // passed (db's app answers 200 from the first run on: it stays
    // critical until its 6th success, 5 s in), api until the first `check
    // pass`.
    let started = Instant::now();
    mesh.start_agent(b);
    let mut db = serde_json::Value::Null;
    let passed_yet_critical = mesh_tests::wait_until(Duration::from_secs(2), || {
        db = mesh.catalog_instance(b, "db", b).unwrap_or_default();
        let output = db["checks"][0]["output"].as_str().unwrap_or_default();
        db["state"] == "critical" && output.contains("of 6 successes before passing")
    });
    assert!(passed_yet_critical, "db on {b}: {db}");
    let table = instances_table(&mesh, b, "api");
    assert!(row(&table, "api", b).contains("critical"), "{table}");
    mesh.start_agent(a);
    let reported = mesh_tests::wait_until(Duration::from_secs(5), || {
        mesh.catalog_instance(a, "api", b)
            .is_some_and(|i| i["state"] == "critical" && i["checks"][0]["name"] == "heartbeat")
    });
    assert!(reported, "{a}: {:?}", mesh.catalog_instance(a, "api", b));
    let table = instances_table(&mesh, a, "api");
    assert!(row(&table, "api", b).contains("critical"), "{table}");
    // No instance takes traffic: the app's call fails, and fast.
    let call = Instant::now();
    let result = mesh.http_get(a, "web", vip(), API_PORT, "/");
    assert!(result.is_err(), "a call reached api: {result:?}");
    assert!(
        call.elapsed() < Duration::from_secs(4),
        "{:?}",
        call.elapsed()
    );

    // `check pass` on b: passing, on a within 1 s; calls go through.
    ttl(&mesh, b, "pass", "ok");
    let passed = Instant::now();
    expect_state(&mesh, a, b, "passing", Duration::from_secs(1));
    let seen = mesh.catalog_instance(a, "api", b).expect("api on b");
    assert_eq!(seen["checks"][0]["name"], "heartbeat", "{seen}");
    assert_eq!(seen["checks"][0]["output"], "ok", "{seen}");
    assert_eq!(
        mesh.http_get(a, "web", vip(), API_PORT, "/"),
        Ok(b.to_owned())
    );

    // No update for 2 s: critical, saying why.
    let expired = mesh.wait_instance_state(b, "api", b, "critical", Duration::from_secs(10));
    assert!(expired.is_some(), "the ttl never expired");
    let expired = passed.elapsed();
    println!("the ttl check expired {expired:?} after `check pass`");
    assert!(
        (Duration::from_millis(1800)..=Duration::from_secs(2) + POLL_SLACK).contains(&expired),
        "the 2 s ttl expired after {expired:?}"
    );
    expect_state(&mesh, a, b, "critical", BOUND);
    let table = instances_table(&mesh, a, "api");
    assert!(row(&table, "api", b).contains("TTL expired"), "{table}");

    // `check warn`: warning, which takes traffic; `check fail`: critical.
    ttl(&mesh, b, "warn", "busy");
    expect_state(&mesh, a, b, "warning", Duration::from_secs(1));
    assert_eq!(
        mesh.http_get(a, "web", vip(), API_PORT, "/"),
        Ok(b.to_owned())
    );
    ttl(&mesh, b, "fail", "broken");
    expect_state(&mesh, a, b, "critical", Duration::from_secs(1));
    let table = instances_table(&mesh, a, "api");
    assert!(row(&table, "api", b).contains("broken"), "{table}");

    // Bad bodies change nothing: each gets a clear 4xx and api stays
    // critical ("broken").
    let big = mesh.dir.join("big-update.json");
    // Over the 16 KiB bound, small enough to be sent whole before the answer.
    let note = "x".repeat(20 * 1024);
    std::fs::write(
        &big,
        format!(r#"{{"service":"api","state":"passing","note":"{note}"}}"#),
    )
    .expect("write");
    for (body, status, error) in [
        (
            "{\"service\": \"api\", \"state\": ",
            "400",
            "not a ttl update",
        ),
        (
            "{\"service\": \"api\", \"state\": \"sunny\"}",
            "400",
            "unknown variant",
        ),
        ("[]", "400", "not a ttl update"),
        ("@big", "413", "at most 16384 bytes"),
    ] {
        let data = if body == "@big" {
            format!("@{}", big.display())
        } else {
            body.to_owned()
        };
        let mut curl = mesh.cmd(b, "curl");
        curl.args(["-sS", "-w", "\nHTTP %{http_code}", "-X", "POST"])
            .args([
                "-H",
                "content-type: application/json",
                "--data-binary",
                &data,
            ])
            .arg("http://127.0.0.1:15000/check");
        let out = run_to_string(&mut curl, Duration::from_secs(10));
        assert!(
            out.ends_with(&format!("HTTP {status}")) && out.contains(error),
            "POST /check {body:?}: {out}"
        );
    }
    let table = instances_table(&mesh, a, "api");
    assert!(row(&table, "api", b).contains("broken"), "{table}");
    expect_state(&mesh, a, b, "critical", Duration::ZERO);

    // Updates the agent refuses: a service not on this node, a service
    // without a ttl check.
    for (service, error) in [
        ("web", "service \"web\" has no instance on node \"htb\""),
        ("db", "service \"db\" has no ttl check"),
    ] {
        let out = agent_cli(&mesh, b, &["check", "pass", "--service", service]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("check pass --service {service}: {}", stderr.trim());
        assert!(
            !out.status.success(),
            "check pass --service {service} succeeded"
        );
        assert!(
            stderr.contains(error),
            "check pass --service {service}: {stderr}"
        );
    }

    // Only root or api's own processes may report api's check: not
    // another user outside any service's cgroup, nor one in web's.
    let as_nobody = |service: Option<&str>| {
        let mut cmd = match service {
            Some(service) => mesh.cmd_as(b, service, "runuser"),
            None => mesh.cmd(b, "runuser"),
        };
        cmd.args(["-u", "nobody", "--"]).arg(&mesh.agent).args([
            "check",
            "pass",
            "--service",
            "api",
            "--note",
            "spoofed",
        ]);
        output_with_timeout(&mut cmd, Duration::from_secs(20))
    };
    let out = as_nobody(None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("only root or service \"api\"'s own processes")
            && stderr.contains("outside any service's cgroup"),
        "{stderr}"
    );
    let out = as_nobody(Some("db"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("in service \"db\"'s cgroup"),
        "{stderr}"
    );
    let table = instances_table(&mesh, a, "api");
    assert!(!row(&table, "api", b).contains("spoofed"), "{table}");
    let out = as_nobody(Some("api"));
    assert!(
        out.status.success(),
        "api's own process: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    expect_state(&mesh, a, b, "passing", Duration::from_secs(1));

    // db turned passing after its 6th success in a row (about 5 s in).
    let took = mesh.wait_instance_state(b, "db", b, "passing", Duration::from_secs(10));
    assert!(
        took.is_some(),
        "db never passing: {:?}",
        mesh.catalog_instance(b, "db", b)
    );
    let passing = started.elapsed();
    println!("db passing {passing:?} after its agent started");
    // Its first run came after `started`, the 6th success 5 intervals later.
    assert!(
        passing >= Duration::from_millis(4900),
        "db passing after {passing:?}"
    );
}

/// `dig +short <name> SRV` at the agent's DNS on `node`: the records as
/// `(port, target)`, sorted.
fn srv(mesh: &Mesh, node: &str, name: &str) -> Vec<(u16, String)> {
    let mut cmd = mesh.cmd(node, "dig");
    cmd.args(["@127.0.0.1", "+short", "+time=2", "+tries=1", name, "SRV"]);
    let out = output_with_timeout(&mut cmd, Duration::from_secs(10));
    assert!(
        out.status.success(),
        "dig: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut records: Vec<(u16, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "priority weight port target"
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(2)?.parse().ok()?, (*f.get(3)?).to_owned()))
        })
        .collect();
    records.sort();
    records
}

/// `mesh-agent catalog services` on `node`: the instance counts of
/// `service` (instances, passing, warning, critical).
fn catalog_services(mesh: &Mesh, node: &str, service: &str) -> [u32; 4] {
    let mut cmd = mesh.cmd(node, &mesh.agent);
    cmd.args(["catalog", "services"]);
    let out = output_with_timeout(&mut cmd, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("SERVICE  VIP"), "{text}");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(service))
        .unwrap_or_else(|| panic!("no {service} in:\n{text}"));
    let f: Vec<u32> = line
        .split_whitespace()
        .skip(3)
        .take(4)
        .map(|n| n.parse().expect("a count"))
        .collect();
    [f[0], f[1], f[2], f[3]]
}

#[test]
fn srv_lists_exactly_the_instances_that_take_traffic() {
    let nodes = ["hda", "hdb", "hdc"];
    let mesh = web_and_api(nodes, &http_check()).start();
    start_api(&mesh, "hda", &["hdb", "hdc"]);
    let both = vec![
        (API_PORT, "hdb.node.mesh.".to_owned()),
        (API_PORT, "hdc.node.mesh.".to_owned()),
    ];
    assert_eq!(srv(&mesh, "hda", "api.mesh"), both);
    assert_eq!(catalog_services(&mesh, "hda", "api"), [2, 2, 0, 0]);
    // Per-instance connection counts add up to the calls made.
    assert_eq!(failed_calls(&calls(&mesh, "hda", 10)), []);
    let sent: f64 = ["hdb", "hdc"]
        .iter()
        .map(|n| {
            mesh.metric(
                "hda",
                &format!("mesh_instance_connections_total{{service=\"api\",node=\"{n}\"}}"),
            )
            // Not there if no call went to that instance.
            .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(sent, 10.0);
    // The node names resolve to the nodes' addresses.
    let mut cmd = mesh.cmd("hda", "dig");
    cmd.args([
        "@127.0.0.1",
        "+short",
        "+time=2",
        "+tries=1",
        "hdc.node.mesh",
        "A",
    ]);
    let out = output_with_timeout(&mut cmd, Duration::from_secs(10));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        mesh.node("hdc").addr(false).to_string()
    );

    // Critical: gone from the answer, on every node.
    mesh.set_health("hdc", "api", 503);
    expect_state(&mesh, "hda", "hdc", "critical", BOUND);
    let only_b = vec![(API_PORT, "hdb.node.mesh.".to_owned())];
    assert_eq!(srv(&mesh, "hda", "api.mesh"), only_b);
    expect_state(&mesh, "hdb", "hdc", "critical", BOUND);
    assert_eq!(srv(&mesh, "hdb", "api.mesh"), only_b);
    // Warning takes traffic, so it is listed (as Consul's DNS does).
    mesh.set_health("hdc", "api", 429);
    expect_state(&mesh, "hda", "hdc", "warning", BOUND);
    assert_eq!(srv(&mesh, "hda", "api.mesh"), both);
    // Every instance critical: the name exists, with no records.
    mesh.set_health("hdb", "api", 503);
    mesh.set_health("hdc", "api", 503);
    expect_state(&mesh, "hda", "hdb", "critical", BOUND);
    expect_state(&mesh, "hda", "hdc", "critical", BOUND);
    assert_eq!(srv(&mesh, "hda", "api.mesh"), []);
    assert_eq!(catalog_services(&mesh, "hda", "api"), [2, 0, 0, 2]);
    let mut cmd = mesh.cmd("hda", "dig");
    cmd.args(["@127.0.0.1", "+time=2", "+tries=1", "api.mesh", "SRV"]);
    let out = output_with_timeout(&mut cmd, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("status: NOERROR"), "{text}");
}
