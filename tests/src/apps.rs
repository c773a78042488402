//! Test apps (`apps/*.py`) run in the nodes' namespaces: servers, and
//! clients that call them.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{Mesh, run_to_string, wait_until};

/// A test app shipped in `tests/apps/`.
pub fn app(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("apps")
        .join(name)
}

impl Mesh {
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
}
