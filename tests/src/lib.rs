//! Test harness: builds a mesh of nodes out of network namespaces on this
//! machine, runs real agents and real apps in them, and tears everything
//! down on drop, also when a test panics.
//!
//! Topology of one [`Mesh`]: a "switch" namespace holding a bridge, and one
//! namespace per node with a veth to the bridge, addressed from
//! `10.77.<k>.0/24` and `fd77:0:0:<k>::/64`. Nothing is added to the host's
//! own network namespace. Everything here needs root.
#![forbid(unsafe_code)]

pub mod etcd;
pub mod health;
pub mod pki;
pub mod playground;
pub mod topology;
pub mod wire;

pub use topology::Topology;

use std::{
    fs,
    io::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // The line is `Uid:\t<real>\t<effective>\t<saved>\t<fs>`.
    fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1))
                == Some("0")
        })
        .unwrap_or(false)
}

/// Panics unless running as root: the netns tests must never skip silently.
pub fn require_root() {
    assert!(
        is_root(),
        "these tests need root (network namespaces, eBPF); run `sudo -E cargo xtask test`"
    );
}

/// The agent binary under test: `$MESH_AGENT_BIN`, else the workspace's
/// debug build. Panics if it does not exist.
pub fn agent_bin() -> PathBuf {
    let path = std::env::var_os("MESH_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/mesh-agent"));
    assert!(
        path.exists(),
        "{} not found; build it with `cargo xtask build` or run `cargo xtask test`",
        path.display()
    );
    path
}

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A test app shipped in `tests/apps/`.
pub fn app(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("apps")
        .join(name)
}

/// Where the tests' agents pin their programs (`run --bpffs`): a bpffs
/// mounted on the host outside `/sys` (which `ip netns exec` replaces), so
/// pins outlive an agent killed in a test. Mounted on first use, and left
/// mounted (like the host's own `/sys/fs/bpf`).
pub fn bpffs() -> PathBuf {
    let dir = PathBuf::from("/run/mesh-tests/bpffs");
    static MOUNT: std::sync::Once = std::sync::Once::new();
    MOUNT.call_once(|| {
        let mounted = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/run/mesh-tests/bpffs"));
        if !mounted {
            fs::create_dir_all(&dir).expect("create the tests' bpffs directory");
            let status = Command::new("mount")
                .args(["-t", "bpf", "bpf"])
                .arg(&dir)
                .status()
                .expect("run mount");
            assert!(status.success(), "mount -t bpf bpf {}", dir.display());
        }
    });
    dir
}

/// Ids of the bpf links of the mesh's programs right now (from `bpftool
/// -j link show`: links whose program is named `mesh_*`).
pub fn loaded_mesh_links() -> Vec<u64> {
    let programs: Vec<u64> = mesh_programs()
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect();
    bpftool(&["link", "show"])
        .into_iter()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|p| programs.contains(&p)))
        .filter_map(|l| l["id"].as_u64())
        .collect()
}

/// Names of the mesh's eBPF programs loaded in the kernel right now
/// (from `bpftool -j prog show`).
pub fn loaded_mesh_programs() -> Vec<String> {
    mesh_programs()
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect()
}

/// `bpftool -j prog show` entries of programs named `mesh_*`.
fn mesh_programs() -> Vec<serde_json::Value> {
    bpftool(&["prog", "show"])
        .into_iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("mesh_")))
        .collect()
}

/// The entries `bpftool -j ARGS` lists.
fn bpftool(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool runs");
    assert!(out.status.success(), "bpftool {args:?} failed");
    match serde_json::from_slice(&out.stdout).expect("bpftool json") {
        serde_json::Value::Array(entries) => entries,
        _ => Vec::new(),
    }
}

/// The value of the sample `series` (name and labels exactly as rendered)
/// in a Prometheus text exposition.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether a command succeeded, and its stdout then stderr.
pub fn outcome(out: &Output) -> (bool, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Waits until `f` returns true, up to `timeout`; returns whether it did.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd` to completion, killing it after `timeout`.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("failed to spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("wait for child")
}

/// Runs `cmd` to completion (killed after `timeout`); stdout then stderr.
pub fn run_to_string(cmd: &mut Command, timeout: Duration) -> String {
    let out = output_with_timeout(cmd, timeout);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A running tcpdump (see [`Mesh::capture`]); killed if dropped unstopped.
pub struct Capture {
    child: Child,
    file: PathBuf,
    err: PathBuf,
}

impl Capture {
    /// Stops tcpdump (SIGINT, so it flushes) and returns the pcap file.
    pub fn stop(mut self) -> PathBuf {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let stopped = wait_until(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        assert!(stopped, "tcpdump did not stop: {}", self.log());
        let log = self.log();
        assert!(
            log.contains("0 packets dropped by kernel"),
            "tcpdump dropped packets: {log}"
        );
        self.file.clone()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cgroup2 mount point of this (host) mount namespace.
pub fn cgroup2_root() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .expect("a cgroup2 mount on the host")
}

static MESH_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The agents' default admin port (`mesh-agent run --admin`).
pub const ADMIN_PORT: u16 = 15000;
/// How long `Mesh::start_agent` waits for an agent's `/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one `/ready` request while waiting.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The admin address in `mesh-agent run` arguments: the value of
/// `--admin`, else the default. Panics on an address that does not parse.
fn admin_addr(args: &[&str]) -> SocketAddr {
    let value = args
        .iter()
        .find_map(|a| a.strip_prefix("--admin="))
        .or_else(|| args.windows(2).find(|w| w[0] == "--admin").map(|w| w[1]));
    value.map_or(SocketAddr::from((Ipv4Addr::LOCALHOST, ADMIN_PORT)), |v| {
        v.parse().unwrap_or_else(|e| panic!("--admin {v}: {e}"))
    })
}

/// A node of a [`Mesh`].
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's name in the mesh config (and in cgroup paths).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl Node {
    /// The node's address of the given family.
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.v6)
        } else {
            IpAddr::V4(self.v4)
        }
    }
}

/// A mesh of nodes (network namespaces) plus the processes running in them.
pub struct Mesh {
    /// Scratch directory: config file and logs. Removed on drop.
    pub dir: PathBuf,
    /// The `mesh-agent` binary the nodes run.
    pub agent: PathBuf,
    /// `RUST_LOG` of the agents (debug by default, for test failures).
    pub log_filter: String,
    pub nodes: Vec<Node>,
    /// The agents' catalog in etcd (`--catalog`), if not the file.
    pub catalog: Option<String>,
    /// The etcd certificates' directory, with etcd's RBAC on (`etcd`).
    pub etcd_pki: Option<PathBuf>,
    switch: String,
    agents: Mutex<Vec<(String, Child)>>,
    apps: Mutex<Vec<Child>>,
}

impl Mesh {
    /// Creates one namespace per node name, connected by a bridge.
    /// Node names get no prefix: keep them unique across meshes that run at
    /// the same time (they name cgroups, which the whole machine shares).
    pub fn new(node_names: &[&str]) -> Self {
        Self::with_agent(node_names, agent_bin())
    }

    /// Like [`Mesh::new`], running the given `mesh-agent` binary.
    pub fn with_agent(node_names: &[&str], agent: PathBuf) -> Self {
        require_root();
        let n = MESH_COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("mt{}x{n}", std::process::id());
        let k = (std::process::id() + n) % 200 + 1;
        let dir = std::env::temp_dir().join(format!("mesh-test-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create test dir");
        let switch = format!("{id}-sw");
        let mut mesh = Self {
            dir,
            agent,
            log_filter: "info,mesh=debug,mesh_agent=debug".to_owned(),
            nodes: Vec::new(),
            catalog: None,
            etcd_pki: None,
            switch: switch.clone(),
            agents: Mutex::new(Vec::new()),
            apps: Mutex::new(Vec::new()),
        };
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for (i, name) in node_names.iter().enumerate() {
            let i = u8::try_from(i + 1).expect("fewer than 255 nodes");
            let node = Node {
                name: (*name).to_owned(),
                netns: format!("{id}-{name}"),
                v4: Ipv4Addr::new(10, 77, u8::try_from(k).unwrap_or(1), i),
                v6: format!("fd77::{k:x}:{i}").parse().expect("v6 address"),
            };
            ip(&["netns", "add", &node.netns]);
            // Owned by the mesh from here on, so Drop removes it even if a
            // later step fails.
            mesh.nodes.push(node.clone());
            // `ip netns exec` shows processes this file as /etc/resolv.conf:
            // the node's agent answers DNS for `.mesh` on 127.0.0.1:53.
            let etc = netns_etc(&node.netns);
            fs::create_dir_all(&etc).expect("/etc/netns dir");
            fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n").expect("resolv.conf");
            let port = format!("p{i}");
            ip(&[
                "link",
                "add",
                "eth0",
                "netns",
                &node.netns,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &switch,
            ]);
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"]);
            let (ns, v4, v6) = (&node.netns, node.v4, node.v6);
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
            ip(&[
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        mesh
    }

    /// Gives this (host) namespace an address on the mesh's bridge,
    /// `10.77.<k>.254`, so a browser or curl here reaches the nodes. The
    /// interface goes away with the mesh. Returns the host's address.
    pub fn expose_to_host(&self) -> Ipv4Addr {
        let first = self.nodes.first().expect("a node").v4.octets();
        let host = Ipv4Addr::new(first[0], first[1], first[2], 254);
        let name = format!("{}h", self.switch.trim_end_matches("-sw"));
        let name: String = name
            .chars()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        ip(&[
            "link",
            "add",
            &name,
            "type",
            "veth",
            "peer",
            "name",
            "ph",
            "netns",
            &self.switch,
        ]);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            "ph",
            "master",
            "br0",
            "up",
        ]);
        ip(&["addr", "add", &format!("{host}/24"), "dev", &name]);
        ip(&["link", "set", &name, "up"]);
        host
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Path of the mesh's config file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("mesh.toml")
    }

    /// Writes the config file, and the first time creates the mesh's root
    /// CA with `mesh-agent ca init` (in `ca/` beside the config, the default
    /// `ca_dir`). Each agent issues its node CA from it at start.
    pub fn write_config(&self, toml: &str) {
        fs::write(self.config(), toml).expect("write config");
        if !self.ca_dir().join("root.crt").exists() {
            let out = Command::new(&self.agent)
                .args(["ca", "init", "--config"])
                .arg(self.config())
                .output()
                .expect("run mesh-agent ca init");
            assert!(
                out.status.success(),
                "ca init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Replaces the config file with `bytes` at once (a temp file renamed
    /// over it), as an editor should: a watching agent never reads half a
    /// file. Unlike `write_config`, it takes any bytes, even invalid ones.
    pub fn replace_config(&self, bytes: &[u8]) {
        let tmp = self.dir.join(".mesh.toml.tmp");
        fs::write(&tmp, bytes).expect("write config");
        fs::rename(&tmp, self.config()).expect("rename config");
    }

    /// The mesh's CA directory (the config's default `ca_dir`).
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    /// A command run inside `node`'s namespace.
    pub fn cmd(&self, node: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.node(node).netns])
            .arg(program);
        c
    }

    /// A command run inside `node`'s namespace in the cgroup `rel` (below
    /// the cgroup2 root, made if missing), as a container runtime or
    /// systemd would place it: joined from the host, where cgroup2 is
    /// mounted, before entering the namespace.
    pub fn cmd_in_cgroup(
        &self,
        node: &str,
        rel: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Command {
        let dir = cgroup2_root().join(rel.trim_start_matches('/'));
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"d=$1 ns=$2; shift 2; mkdir -p "$d" && echo $$ > "$d/cgroup.procs" && exec ip netns exec "$ns" "$@""#)
            .arg("sh")
            .arg(dir)
            .arg(&self.node(node).netns)
            .arg(program);
        c
    }

    /// A command run inside `node`'s namespace as mesh service `service`
    /// (through `mesh-agent exec`).
    pub fn cmd_as(
        &self,
        node: &str,
        service: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Command {
        let mut c = self.cmd(node, &self.agent);
        c.arg("exec")
            .arg("--config")
            .arg(self.config())
            .args(["--node", node, "--service", service, "--"])
            .arg(program);
        c
    }

    /// Starts the agent of `node` and waits until its `/ready` says so.
    pub fn start_agent(&self, node: &str) {
        self.start_agent_with(node, &[]);
    }

    /// Like `start_agent`, with extra `mesh-agent run` arguments. Waits at
    /// most [`READY_TIMEOUT`] for `GET /ready` on the agent's admin address
    /// (`--admin` in `extra`, else the default) to answer 200 from this
    /// agent's process; fails at once, with the log, if the agent exits.
    pub fn start_agent_with(&self, node: &str, extra: &[&str]) {
        let log = self.agent_log(node);
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("agent log");
        let admin = admin_addr(extra);
        let mut cmd = self.cmd(node, &self.agent);
        cmd.arg("run");
        match &self.catalog {
            // Its relative ca_dir is relative to the working directory.
            Some(url) => cmd
                .args(["--catalog", url])
                .args(self.etcd_client_args(node))
                .current_dir(&self.dir),
            None => cmd.arg("--config").arg(self.config()),
        };
        let child = cmd
            .args(["--node", node])
            .arg("--bpffs")
            .arg(bpffs())
            .args(extra)
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file)
            .spawn()
            .expect("spawn agent");
        // Tracked before waiting, so Drop stops it even if it never gets ready.
        let pid = child.id();
        self.agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((node.to_owned(), child));
        let log_text = || fs::read_to_string(&log).unwrap_or_default();
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no answer");
        loop {
            if let Some(status) = self.agent_exit(pid) {
                panic!(
                    "agent {node} exited ({status}) before it was ready:\n{}",
                    log_text()
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "agent {node} was not ready within {READY_TIMEOUT:?} (last /ready: {last}):\n{}",
                log_text()
            );
            // `ip netns exec` execs the agent: its pid is the child's. The
            // pid tells this agent's answer from another's on the address.
            match self.admin_get_at(node, admin, "/ready", left.min(PROBE_TIMEOUT)) {
                Some((200, body)) if body["pid"] == pid => return,
                Some((code, body)) => last = format!("{code} {body}"),
                None => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            thread::sleep(Duration::from_millis(50).min(left));
        }
    }

    /// The exit status of the agent with `pid`, if it has exited.
    fn agent_exit(&self, pid: u32) -> Option<std::process::ExitStatus> {
        self.agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
            .find(|(_, c)| c.id() == pid)
            .and_then(|(_, c)| c.try_wait().ok().flatten())
    }

    /// The oldest running agent of `node`, no longer tracked (the caller
    /// waits for it). Panics if there is none.
    fn take_agent(&self, node: &str) -> Child {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        let i = agents
            .iter()
            .position(|(n, _)| n == node)
            .unwrap_or_else(|| panic!("no running agent for {node}"));
        agents.remove(i).1
    }

    /// Waits for the oldest running agent of `node` to exit by itself (one
    /// that handed over to a newer agent) for at most `timeout`; returns its
    /// exit status. Panics if it does not.
    pub fn wait_agent_exit(&self, node: &str, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.take_agent(node);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the old agent of {node} did not exit within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the agent of `node` and waits
    /// for it to exit; returns its exit status. An agent still running 10 s
    /// after the signal is killed, and the test fails.
    pub fn stop_agent(&self, node: &str, signal: &str) -> std::process::ExitStatus {
        let child = self.take_agent(node);
        let (status, in_time) = signal_and_wait(child, signal);
        assert!(
            in_time,
            "agent {node} did not exit within 10 s of SIG{signal}"
        );
        status
    }

    /// The agent log of `node`.
    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.dir.join(format!("agent-{node}.log"))
    }

    /// The pid of `node`'s running agent.
    pub fn agent_pid(&self, node: &str) -> Option<u32> {
        self.agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, c)| c.id())
    }

    /// Starts a long-running app; it is killed when the mesh is dropped.
    /// Returns its pid (`ip netns exec` and `mesh-agent exec` exec it).
    pub fn spawn_app(&self, mut cmd: Command, name: &str) -> u32 {
        let log = fs::File::create(self.dir.join(format!("app-{name}.log"))).expect("app log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn app");
        let pid = child.id();
        self.apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
        pid
    }

    /// Kills the app started with pid `pid` (SIGKILL) and reaps it.
    pub fn stop_app(&self, pid: u32) {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let i = apps
            .iter()
            .position(|c| c.id() == pid)
            .expect("no such app");
        let mut child = apps.remove(i);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the transfer server (`apps/transfer_server.py`) as `service`
    /// on `node`, listening on 127.0.0.1:`port`; it answers `nbytes`.
    /// Returns the file where it logs each accepted connection.
    pub fn start_transfer_server(
        &self,
        node: &str,
        service: &str,
        port: u16,
        nbytes: usize,
    ) -> PathBuf {
        self.start_transfer_server_on(node, service, "127.0.0.1", port, nbytes)
    }

    /// Like `start_transfer_server`, listening on `bind` (e.g. "::" for any
    /// address, as a careless service would).
    pub fn start_transfer_server_on(
        &self,
        node: &str,
        service: &str,
        bind: &str,
        port: u16,
        nbytes: usize,
    ) -> PathBuf {
        let log = self.dir.join(format!("accepts-{service}.log"));
        let _ = fs::write(&log, "");
        let mut cmd = self.cmd_as(node, service, "python3");
        cmd.arg(app("transfer_server.py"))
            .arg(port.to_string())
            .arg(nbytes.to_string())
            .arg(&log)
            .arg(bind);
        self.spawn_app(cmd, service);
        self.wait_listening(node, port);
        log
    }

    /// Waits until something listens on TCP `port` in `node`'s namespace.
    pub fn wait_listening(&self, node: &str, port: u16) {
        let ok = wait_until(Duration::from_secs(15), || {
            let out = self
                .cmd(node, "ss")
                .args(["-Hltn", &format!("sport = :{port}")])
                .output()
                .expect("ss");
            !out.stdout.is_empty()
        });
        assert!(ok, "nothing listens on port {port} in node {node}");
    }

    /// Runs the transfer client (`apps/transfer_client.py`) on `node`, as
    /// `service` if given, against `host`:`port`. Returns its stdout.
    pub fn transfer(
        &self,
        node: &str,
        service: Option<&str>,
        host: impl std::fmt::Display,
        port: u16,
        nbytes: usize,
    ) -> String {
        self.transfer_over(node, service, host, port, nbytes, 0.0)
    }

    /// Like `transfer`, spreading the upload over `seconds`.
    pub fn transfer_over(
        &self,
        node: &str,
        service: Option<&str>,
        host: impl std::fmt::Display,
        port: u16,
        nbytes: usize,
        seconds: f64,
    ) -> String {
        let mut cmd = match service {
            Some(s) => self.cmd_as(node, s, "python3"),
            None => self.cmd(node, "python3"),
        };
        cmd.arg(app("transfer_client.py"))
            .arg(host.to_string())
            .arg(port.to_string())
            .arg(nbytes.to_string())
            .arg(seconds.to_string());
        run_to_string(
            &mut cmd,
            Duration::from_secs(60) + Duration::from_secs_f64(seconds),
        )
    }

    /// Starts `apps/echo_server.py` as `service` on `node`, on
    /// 127.0.0.1:`port`. Returns the file where it logs accepted connections
    /// (one per node: instances of a service log apart).
    pub fn start_echo_server(&self, node: &str, service: &str, port: u16) -> PathBuf {
        let log = self.dir.join(format!("accepts-{service}-{node}.log"));
        let _ = fs::write(&log, "");
        self.start_echo_server_logging(node, service, port, &log);
        log
    }

    /// Like `start_echo_server`, appending to `log` (which is kept); returns
    /// the server's pid, for [`Mesh::stop_app`].
    pub fn start_echo_server_logging(
        &self,
        node: &str,
        service: &str,
        port: u16,
        log: &Path,
    ) -> u32 {
        let mut cmd = self.cmd_as(node, service, "python3");
        cmd.arg(app("echo_server.py"))
            .arg(port.to_string())
            .arg(log);
        let pid = self.spawn_app(cmd, &format!("{service}-{node}"));
        self.wait_listening(node, port);
        pid
    }

    /// Runs `apps/echo_client.py` as `service` on `node`; returns the echo.
    pub fn echo(&self, node: &str, service: &str, host: IpAddr, port: u16, text: &str) -> String {
        let mut cmd = self.cmd_as(node, service, "python3");
        cmd.arg(app("echo_client.py"))
            .arg(host.to_string())
            .arg(port.to_string())
            .arg(text);
        run_to_string(&mut cmd, Duration::from_secs(30))
    }

    /// `mesh-agent status --json` of `node`'s agent.
    pub fn status(&self, node: &str) -> serde_json::Value {
        let mut cmd = self.cmd(node, &self.agent);
        cmd.args(["status", "--json"]);
        let out = output_with_timeout(&mut cmd, Duration::from_secs(10));
        assert!(
            out.status.success(),
            "status of {node} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// `GET <path>` of `node`'s admin endpoint (127.0.0.1:15000): the HTTP
    /// status and the body as JSON (`Null` if it is not JSON); `None` if
    /// nothing answered within 5 s.
    pub fn admin_get(&self, node: &str, path: &str) -> Option<(u16, serde_json::Value)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ADMIN_PORT));
        self.admin_get_at(node, addr, path, Duration::from_secs(5))
    }

    /// `GET <path>` of the admin endpoint at `addr` in `node`'s namespace,
    /// with curl, bounded by `timeout`; as `admin_get`.
    pub fn admin_get_at(
        &self,
        node: &str,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Option<(u16, serde_json::Value)> {
        let mut cmd = self.cmd(node, "curl");
        let secs = timeout.as_secs_f64().max(0.001);
        cmd.args(["-s", "-m", &format!("{secs:.3}")]).args([
            "-w",
            "\n%{http_code}",
            &format!("http://{addr}{path}"),
        ]);
        let out = output_with_timeout(&mut cmd, timeout);
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n')?;
        let code: u16 = code.trim().parse().ok().filter(|c| *c != 0)?;
        Some((code, serde_json::from_str(body).unwrap_or_default()))
    }

    /// `GET <path>` of `node`'s admin endpoint (127.0.0.1:15000), as JSON.
    pub fn admin_json(&self, node: &str, path: &str) -> serde_json::Value {
        let mut cmd = self.cmd(node, "curl");
        cmd.args(["-sSf", "-m", "5", &format!("http://127.0.0.1:15000{path}")]);
        let out = output_with_timeout(&mut cmd, Duration::from_secs(10));
        assert!(
            out.status.success(),
            "GET {path} of {node} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("admin JSON")
    }

    /// The current certificate serial of local `service` on `node`.
    pub fn serial(&self, node: &str, service: &str) -> String {
        let status = self.status(node);
        status["services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == service))
            .and_then(|s| s["serial"].as_str())
            .unwrap_or_else(|| panic!("no serial for {service} in {status}"))
            .to_owned()
    }

    /// The Prometheus text of `node`'s agent (`/metrics`).
    pub fn metrics(&self, node: &str) -> String {
        let mut cmd = self.cmd(node, "curl");
        cmd.args(["-sS", "-m", "5", "http://127.0.0.1:15000/metrics"]);
        run_to_string(&mut cmd, Duration::from_secs(10))
    }

    /// The value of the sample `series` (name and labels exactly as
    /// rendered) in `node`'s `/metrics`; `None` if it is not there (a
    /// labelled counter appears with its first count: a caller that means
    /// "none yet" says so).
    pub fn metric(&self, node: &str, series: &str) -> Option<f64> {
        metric_value(&self.metrics(node), series)
    }

    /// Runs `mesh-agent ARGS --config <this mesh's file>` on the host (the
    /// CLI edits and reads the file); returns whether it succeeded and its
    /// stdout and stderr.
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(&self.agent)
            .args(args)
            .arg("--config")
            .arg(self.config())
            .output()
            .expect("run mesh-agent");
        outcome(&out)
    }

    /// Starts tcpdump on `node`'s eth0 with `filter`; stop it with
    /// [`Capture::stop`] to get the pcap file.
    pub fn capture(&self, node: &str, filter: &str) -> Capture {
        let file = self.dir.join(format!("capture-{node}.pcap"));
        let err = self.dir.join(format!("capture-{node}.err"));
        let mut cmd = self.cmd(node, "tcpdump");
        // A 32 MiB buffer (-B is in KiB): a bulk transfer over veth comes
        // in 64 KiB segments.
        cmd.args(["-i", "eth0", "-U", "--immediate-mode", "-B", "32768", "-w"])
            .arg(&file)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err).expect("tcpdump log"));
        let child = cmd.spawn().expect("spawn tcpdump");
        let started = wait_until(Duration::from_secs(10), || {
            fs::read_to_string(&err)
                .unwrap_or_default()
                .contains("listening on")
        });
        let capture = Capture { child, file, err };
        assert!(started, "tcpdump did not start: {}", capture.log());
        capture
    }

    /// Kills the apps, then stops the agents; never panics (runs in Drop).
    fn kill_all(&self) {
        for mut child in self
            .apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let agents: Vec<_> = self
            .agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for (_, child) in agents {
            signal_and_wait(child, "TERM");
        }
        // What an agent killed by the test left pinned.
        for node in &self.nodes {
            let _ = Command::new(&self.agent)
                .args(["down", "--node", &node.name, "--bpffs"])
                .arg(bpffs())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Sends `signal` to `child` (unless it already exited) and waits up to 10 s,
/// then SIGKILLs it. Returns its status and whether it exited in time.
fn signal_and_wait(mut child: Child, signal: &str) -> (std::process::ExitStatus, bool) {
    if let Ok(Some(status)) = child.try_wait() {
        return (status, true); // already gone, e.g. after a Ctrl-C in the terminal
    }
    // `ip netns exec` execs the agent, so the child's pid is the agent's.
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return (status, true);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let status = child
        .wait()
        .unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(-1));
    (status, false)
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.kill_all();
        if thread::panicking() {
            // Show what the agents said; it is what one needs to debug.
            for node in &self.nodes {
                if let Ok(text) = fs::read_to_string(self.agent_log(&node.name)) {
                    // Not eprintln!: a second panic here would abort the cleanup.
                    let _ = writeln!(io::stderr(), "---- agent log of {} ----\n{text}", node.name);
                }
            }
        }
        let cgroups = cgroup2_root().join("mesh");
        for node in &self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "del", &node.netns])
                .status();
            let _ = fs::remove_dir_all(netns_etc(&node.netns));
            // An agent stopped together with its apps (Ctrl-C reaches both)
            // may have found a service cgroup still busy: remove what is
            // empty now.
            remove_empty_cgroups(&cgroups.join(&node.name));
        }
        let _ = fs::remove_dir(&cgroups);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch])
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Removes `dir` and the cgroups below it, where empty (rmdir only).
fn remove_empty_cgroups(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_cgroups(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// `/etc/netns/<netns>`: files `ip netns exec` bind-mounts over /etc.
fn netns_etc(netns: &str) -> PathBuf {
    Path::new("/etc/netns").join(netns)
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
