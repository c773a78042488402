//! Agents: the mesh's config file, starting an agent and waiting for its
//! `/ready`, stopping and tracking agents, and the CLI on the host.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{ADMIN_PORT, Mesh, bpffs, outcome};

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

impl Mesh {
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
        crate::wait_exit(&mut child, timeout)
            .unwrap_or_else(|| panic!("the old agent of {node} did not exit within {timeout:?}"))
    }

    /// Sends `signal` (e.g. `SIGTERM`, `SIGKILL`) to the agent of `node` and
    /// waits for it to exit; returns its exit status. An agent still running
    /// 10 s after the signal is killed, and the test fails.
    pub fn stop_agent(&self, node: &str, signal: Signal) -> std::process::ExitStatus {
        let child = self.take_agent(node);
        let (status, in_time) = signal_and_wait(child, signal);
        assert!(in_time, "agent {node} did not exit within 10 s of {signal}");
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
    /// Kills the apps, then stops the agents; never panics (runs in Drop).
    pub(crate) fn kill_all(&self) {
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
            signal_and_wait(child, Signal::SIGTERM);
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
fn signal_and_wait(mut child: Child, signal: Signal) -> (std::process::ExitStatus, bool) {
    if let Ok(Some(status)) = child.try_wait() {
        return (status, true); // already gone, e.g. after a Ctrl-C in the terminal
    }
    // `ip netns exec` execs the agent, so the child's pid is the agent's.
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
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
