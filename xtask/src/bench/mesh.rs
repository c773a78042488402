//! The benchmark's mesh: its nodes, agents, servers, relays and stunnel
//! pairs, and the clients that measure through them.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use mesh_tests::{Mesh, run_to_string};
use serde_json::Value;

use super::{
    FLOOD_CONNS, IDLE_HOLD_SECS,
    host::{cpu_of, fds_of, rss_kib},
    stunnel::{STUNNELS, stunnels},
};

pub(super) const VIP: &str = "240.0.0.99";

/// The VIP of `server2`, the service with two instances (bench-b, bench-c).
pub(super) const VIP2: &str = "240.0.0.98";

/// bench-d's agent: offers and accepts only `mesh/1`.
pub(super) const MESH1_AGENT_ARGS: [&str; 1] = ["--no-multiplex"];

/// The VIP of `server3` (see [`INSTANCES`](super::INSTANCES)).
pub(super) const VIP3: &str = "240.0.0.97";

/// The VIP of `server4`, served from a container on bench-b (see
/// [`CONTAINERS`](super::CONTAINERS)).
pub(super) const VIP4: &str = "240.0.0.96";

/// What `n` served containers cost bench-b's agent: per container, RSS
/// and fds; and the fds above where it started once they are gone.
pub(super) struct ContainerCost {
    pub(super) rss_kib: f64,
    pub(super) fds: f64,
    pub(super) fds_left: f64,
}

/// The number `name` of meshbench's JSON answer: a field that is missing
/// or not a number is an error, never a 0.
pub(super) fn field(answer: &Value, name: &str) -> anyhow::Result<f64> {
    answer[name]
        .as_f64()
        .with_context(|| format!("meshbench's answer has no number {name:?}: {answer}"))
}

/// The benchmark's mesh and its processes.
pub(super) struct Bench {
    mesh: Mesh,
    meshbench: PathBuf,
    /// Connection errors a connrate run may have: none, but in a smoke
    /// run (any number).
    smoke: bool,
    /// Pids of each stunnel mode's client (node a) and server (node b).
    stunnel: BTreeMap<&'static str, [u32; 2]>,
    /// (title, text) of each stunnel config, for the report.
    pub(super) stunnel_configs: Vec<(String, String)>,
    /// (mode, full, resumed) handshakes of each stunnel pair's check.
    pub(super) stunnel_handshakes: Vec<(&'static str, usize, usize)>,
    /// Pids of the two socat relays (node a, node b).
    relay: [u32; 2],
}

impl Bench {
    pub(super) fn start(agent: PathBuf, meshbench: PathBuf, smoke: bool) -> anyhow::Result<Self> {
        let mesh = topology(agent);
        let b = mesh.node("bench-b").v4;
        serve(&mesh, &meshbench, b);
        serve_in_container(&mesh, &meshbench)?;
        wait_health(&mesh)?;
        let relay = relays(&mesh, b);
        let stunnels = stunnels(&mesh, &meshbench, b)?;
        Ok(Self {
            mesh,
            meshbench,
            smoke,
            stunnel: stunnels.pids,
            stunnel_configs: stunnels.configs,
            stunnel_handshakes: stunnels.handshakes,
            relay,
        })
    }

    /// Runs `meshbench ARGS --to <target of mode>` on [`caller`]`(mode)`;
    /// its JSON line.
    pub(super) fn client(&self, mode: &str, args: &[&str]) -> anyhow::Result<Value> {
        let b = self.mesh.node("bench-b").v4;
        let (target, service) = match mode {
            "direct" => (format!("{b}:7001"), None),
            "relay" => ("127.0.0.1:7007".to_owned(), None),
            "mesh/1" => (format!("{VIP}:5001"), Some("client1")),
            "mesh" => (format!("{VIP}:5001"), Some("client")),
            "mesh 2 instances" => (format!("{VIP2}:5002"), Some("client")),
            "mesh 2 instances 1 passing" => (format!("{VIP3}:5003"), Some("client")),
            "mesh container" => (format!("{VIP4}:5004"), Some("client")),
            _ => match STUNNELS.iter().find(|s| s.mode == mode) {
                Some(s) => (format!("127.0.0.1:{}", s.client_port), None),
                None => bail!("no client mode {mode:?}"),
            },
        };
        let node = caller(mode);
        let mut args = args.join(" ");
        if self.smoke && args.starts_with("connrate") {
            args.push_str(" --max-errors 1000000");
        }
        let line = format!(
            "ulimit -n $(ulimit -Hn); exec {} {args} --to {target}",
            self.meshbench.display(),
        );
        let mut c = match service {
            Some(s) => self.mesh.cmd_as(node, s, "sh"),
            None => self.mesh.cmd(node, "sh"),
        };
        c.args(["-c", &line]);
        let out = mesh_tests::output_with_timeout(&mut c, Duration::from_secs(120));
        let (ok, text) = mesh_tests::outcome(&out);
        ensure!(ok, "meshbench {args} ({mode}) failed: {text}");
        let json = text
            .lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or_default();
        serde_json::from_str(json)
            .with_context(|| format!("meshbench {args} ({mode}) said: {text}"))
    }

    /// Starts `flood` ("quiet": none) against the mesh service's port on
    /// bench-b; it stops when the returned guard is dropped.
    pub(super) fn flood(&self, flood: &str) -> anyhow::Result<Option<Killed>> {
        let (node, port) = match flood {
            "node flood" => ("bench-c", "5001"),
            "stranger flood" => ("bench-x", "5001"),
            "control" => ("bench-x", "5999"),
            _ => return Ok(None),
        };
        // At the lowest priority: a real attacker brings its own CPUs; here
        // it would take them from the two the mesh runs on.
        let mut c = self.mesh.cmd(node, "nice");
        c.args(["-n", "19", "python3"])
            .arg(mesh_tests::app("flood_client.py"))
            .arg(self.mesh.node("bench-b").v4.to_string())
            .args([port, &FLOOD_CONNS.to_string(), "60", "stall"])
            .stdout(Stdio::null());
        let child = c.spawn().context("start the flood client")?;
        // Let it reach full strength.
        std::thread::sleep(Duration::from_millis(1500));
        Ok(Some(Killed(child)))
    }

    /// (user, system) CPU seconds used so far by the processes that do
    /// `mode`'s proxying (none for `direct`).
    pub(super) fn cpu_seconds(&self, mode: &str) -> anyhow::Result<(f64, f64)> {
        let pids: Vec<u32> = match mode {
            "relay" => self.relay.to_vec(),
            "mesh/1" | "mesh" => [caller(mode), "bench-b"]
                .iter()
                .map(|n| self.agent_pid(n))
                .collect::<anyhow::Result<_>>()?,
            _ => self
                .stunnel
                .get(mode)
                .map(|p| p.to_vec())
                .unwrap_or_default(),
        };
        pids.into_iter()
            .map(cpu_of)
            .try_fold((0.0, 0.0), |(u, s), cpu| {
                let (du, ds) = cpu?;
                Ok((u + du, s + ds))
            })
    }

    pub(super) fn agent_pid(&self, node: &str) -> anyhow::Result<u32> {
        self.mesh
            .agent_pid(node)
            .with_context(|| format!("the agent of {node} is not running"))
    }

    /// Connections bench-a's agent sent to `server2`'s instance on `node`.
    pub(super) fn server2_connections(&self, node: &str) -> f64 {
        self.mesh
            .metric(
                "bench-a",
                &format!("mesh_instance_connections_total{{service=\"server2\",node=\"{node}\"}}"),
            )
            // Not there if no connection went to that instance.
            .unwrap_or(0.0)
    }

    /// (full, resumed) mTLS handshakes `node`'s agent made so far as a
    /// client.
    pub(super) fn outbound_handshakes(&self, node: &str) -> (f64, f64) {
        let text = self.mesh.metrics(node);
        let count = |kind: &str| {
            let series = format!("mesh_handshakes_total{{side=\"outbound\",kind=\"{kind}\"}}");
            // Not there before the first handshake of the kind.
            mesh_tests::metric_value(&text, &series).unwrap_or(0.0)
        };
        (count("full"), count("resumed"))
    }

    /// Resident memory of bench-a's and bench-b's agents together.
    pub(super) fn agents_rss_kib(&self) -> anyhow::Result<f64> {
        ["bench-a", "bench-b"]
            .iter()
            .map(|n| rss_kib(self.agent_pid(n)?))
            .sum()
    }

    /// Starts `n` bare network namespaces (`unshare --net sleep`), each in
    /// a cgroup of its own below the `idle` service's on bench-b, waits
    /// until bench-b's agent serves them all, reads its RSS and fds, stops
    /// them and waits until it has forgotten them.
    pub(super) fn container_cost(&self, n: usize) -> anyhow::Result<ContainerCost> {
        let pid = self.agent_pid("bench-b")?;
        let served = || self.mesh.containers_served("bench-b", "idle").len();
        let (rss_before, fds_before) = (rss_kib(pid)?, settled_fds(pid)?);
        let mut held = Vec::new();
        for i in 0..n {
            let mut c = self
                .mesh
                .cmd_own_netns_in("bench-b", "idle", &format!("c{i}"), "sleep");
            c.arg("600").stdin(Stdio::null()).stdout(Stdio::null());
            held.push(Killed(c.spawn().context("start a bare namespace")?));
        }
        ensure!(
            mesh_tests::wait_until(Duration::from_secs(60), || served() == n),
            "bench-b's agent serves {} of {n} containers",
            served()
        );
        let (rss_after, fds_after) = (rss_kib(pid)?, settled_fds(pid)?);
        drop(held);
        ensure!(
            mesh_tests::wait_until(Duration::from_secs(30), || served() == 0),
            "bench-b's agent still serves {} containers after they went",
            served()
        );
        Ok(ContainerCost {
            rss_kib: ((rss_after - rss_before) / n as f64).max(0.0),
            fds: (fds_after - fds_before) / n as f64,
            fds_left: settled_fds(pid)? - fds_before,
        })
    }

    /// Opens `n` idle connections through the mesh; KiB of agent RSS each.
    /// meshbench then checks, after [`IDLE_HOLD_SECS`], that every one
    /// still echoes: one that does not fails the run.
    pub(super) fn idle_kib_per_conn(&self, n: usize) -> anyhow::Result<f64> {
        let before = self.agents_rss_kib()?;
        let line = format!(
            "ulimit -n $(ulimit -Hn); exec {} idle --count {n} --hold-secs {IDLE_HOLD_SECS} --to {VIP}:5001",
            self.meshbench.display()
        );
        let mut c = self.mesh.cmd_as("bench-a", "client", "sh");
        let log = self.mesh.dir.join(format!("app-idle-{n}.log"));
        let file = fs::File::create(&log)?;
        c.args(["-c", &line])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let mut idle = Killed(c.spawn().context("start meshbench idle")?);
        let said = |what: &str| {
            fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(&format!("\"{what}\""))
        };
        let mut exited = None;
        mesh_tests::wait_until(Duration::from_secs(120), || {
            exited = idle.0.try_wait().ok().flatten();
            exited.is_some() || said("open")
        });
        if exited.is_some() || !said("open") {
            bail!(
                "{n} idle connections did not open: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
        let after = self.agents_rss_kib()?;
        let status = idle.wait(Duration::from_secs(IDLE_HOLD_SECS + 120))?;
        ensure!(
            status.success() && said("alive"),
            "meshbench idle --count {n} failed ({status}): {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        Ok(((after - before) / n as f64).max(0.0))
    }
}

/// The open fds of `pid` once they hold still: the same in two reads 1 s
/// apart (at most 10 s).
fn settled_fds(pid: u32) -> anyhow::Result<f64> {
    let mut last = fds_of(pid)?;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(1));
        let now = fds_of(pid)?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// The mesh of four nodes and a stranger, its agents started (bench-d's
/// with [`MESH1_AGENT_ARGS`]).
fn topology(agent: PathBuf) -> Mesh {
    // bench-c floods as a mesh node (from outside any service cgroup,
    // so its agent leaves the flood alone) and hosts server2's second
    // instance; bench-x floods as a stranger (not in the config).
    // bench-d is the `mesh/1` caller (see the module doc).
    let mut mesh = Mesh::nodes(&["bench-a", "bench-b", "bench-c", "bench-d"])
        .stranger("bench-x")
        .agent(agent)
        .default_policy("allow")
        .service("client", "bench-a", 8080)
        .service("client1", "bench-d", 8081)
        .service_with("server", "bench-b", 5001, |s| s.vip(VIP))
        .service_on_with("server2", &["bench-b", "bench-c"], 5002, |s| s.vip(VIP2))
        .service_on_with("server3", &["bench-b", "bench-c"], 5003, |s| {
            s.vip(VIP3).check("ttl = \"24h\"")
        })
        .service_with("server4", "bench-b", 5004, |s| s.vip(VIP4))
        .service("idle", "bench-b", 5009)
        .build();
    // Quiet: the harness learns readiness from `/ready`, not the log.
    mesh.log_filter = "warn".to_owned();
    for node in ["bench-a", "bench-b", "bench-c"] {
        mesh.start_agent(node);
    }
    // Not the builder's `agent_args`: only `Topology::start` reads
    // them, and that would start the agents before `log_filter` is set.
    mesh.start_agent_with("bench-d", &MESH1_AGENT_ARGS);
    mesh
}

/// The `meshbench serve` copies on bench-b (and server2's second instance
/// on bench-c), listening when this returns.
fn serve(mesh: &Mesh, meshbench: &Path, b: Ipv4Addr) {
    let serve = |bind: String, service: Option<&str>| {
        let mut c = match service {
            Some(s) => mesh.cmd_as("bench-b", s, meshbench),
            None => mesh.cmd("bench-b", meshbench),
        };
        c.args(["serve", "--bind", &bind]);
        c
    };
    mesh.spawn_app(serve("127.0.0.1:5001".into(), Some("server")), "serve-mesh");
    mesh.spawn_app(
        serve("127.0.0.1:5002".into(), Some("server2")),
        "serve-mesh2-b",
    );
    let mut c = mesh.cmd_as("bench-c", "server2", meshbench);
    c.args(["serve", "--bind", "127.0.0.1:5002"]);
    mesh.spawn_app(c, "serve-mesh2-c");
    mesh.wait_listening("bench-c", 5002);
    mesh.spawn_app(serve(format!("{b}:7001"), None), "serve-direct");
    mesh.spawn_app(serve("127.0.0.1:7002".into(), None), "serve-stunnel");
    mesh.spawn_app(serve("127.0.0.1:7005".into(), None), "serve-relay");
    mesh.spawn_app(
        serve("127.0.0.1:5003".into(), Some("server3")),
        "serve-mesh3-b",
    );
    for port in [5001, 5002, 5003, 7001, 7002, 7005] {
        mesh.wait_listening("bench-b", port);
    }
}

/// `meshbench serve` as `server4` in a podman container on bench-b (its
/// directory mounted), listening and served by bench-b's agent when this
/// returns.
fn serve_in_container(mesh: &Mesh, meshbench: &Path) -> anyhow::Result<()> {
    let dir = meshbench.parent().context("meshbench has no directory")?;
    let c = mesh.run_container_mounting(
        "bench-b",
        "server4",
        &[(dir, "/bench")],
        &["/bench/meshbench", "serve", "--bind", "127.0.0.1:5004"],
    );
    mesh.wait_container_listening(&c, 5004);
    let served = || !mesh.containers_served("bench-b", "server4").is_empty();
    ensure!(
        mesh_tests::wait_until(Duration::from_secs(10), served),
        "bench-b's agent does not serve server4's container"
    );
    Ok(())
}

/// Marks server3 passing on bench-b and waits until bench-a sees server2
/// passing on both nodes and server3 on bench-b only.
fn wait_health(mesh: &Mesh) -> anyhow::Result<()> {
    // server3 passes on bench-b only (its ttl check on bench-c is never
    // reported, so that instance stays critical).
    let mut pass = mesh.cmd("bench-b", &mesh.agent);
    pass.args(["check", "pass", "--service", "server3"]);
    run_to_string(&mut pass, Duration::from_secs(10));
    // Both instances of server2 passing in the caller's view (bench-c's
    // health reaches bench-a over their agent link), or the pick would
    // skip one and the two-instance figures would measure one.
    let health = |service: &str, node: &str| {
        let series = format!("mesh_instance_health{{service=\"{service}\",node=\"{node}\"}}");
        mesh_tests::metric_value(&mesh.metrics("bench-a"), &series)
    };
    if !mesh_tests::wait_until(Duration::from_secs(10), || {
        health("server2", "bench-b") == Some(0.0)
            && health("server2", "bench-c") == Some(0.0)
            && health("server3", "bench-b") == Some(0.0)
            && health("server3", "bench-c") == Some(2.0)
    }) {
        bail!(
            "bench-a does not see server2 on both nodes and server3 on bench-b only passing: {}",
            mesh.metrics("bench-a")
        );
    }
    Ok(())
}

/// The plain relay: a -> 127.0.0.1:7007 -> socat -> b:7006 -> socat ->
/// 127.0.0.1:7005; the pids of its socats (node a, node b).
fn relays(mesh: &Mesh, b: Ipv4Addr) -> [u32; 2] {
    let socat = |node: &str, listen: String, to: String| {
        let mut c = mesh.cmd(node, "socat");
        c.args([
            "-b262144",
            &format!("TCP-LISTEN:{listen},reuseaddr,fork,nodelay"),
            &format!("TCP:{to},nodelay"),
        ]);
        c
    };
    let relay_b = mesh.spawn_app(
        socat("bench-b", format!("7006,bind={b}"), "127.0.0.1:7005".into()),
        "relay-b",
    );
    let relay_a = mesh.spawn_app(
        socat("bench-a", "7007,bind=127.0.0.1".into(), format!("{b}:7006")),
        "relay-a",
    );
    mesh.wait_listening("bench-b", 7006);
    mesh.wait_listening("bench-a", 7007);
    [relay_a, relay_b]
}

/// The node `mode`'s clients run on: bench-d for `mesh/1`, else bench-a.
pub(super) fn caller(mode: &str) -> &'static str {
    if mode == "mesh/1" {
        "bench-d"
    } else {
        "bench-a"
    }
}

/// A child process; killed when dropped.
pub(super) struct Killed(Child);

impl Killed {
    /// Its exit status, waiting at most `timeout` (then it is killed).
    pub(super) fn wait(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "pid {} still running after {timeout:?}",
                self.0.id()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        // `ip netns exec`, nice and sh exec their command: this is the
        // process itself.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
