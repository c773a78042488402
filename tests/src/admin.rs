//! Queries of an agent's admin endpoint (`/ready`, `/metrics`, JSON paths)
//! and of `mesh-agent status`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use crate::{Mesh, output_with_timeout, run_to_string};

/// The agents' default admin port (`mesh-agent run --admin`).
pub const ADMIN_PORT: u16 = 15000;

/// The value of the sample `series` (name and labels exactly as rendered)
/// in a Prometheus text exposition.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

impl Mesh {
    /// Forwards a port of this host's 127.0.0.1 (15000 if free) to `node`'s
    /// admin endpoint, through a process of `uid` in `node`'s namespace (the
    /// caller its agent sees: root, or a uid it may let write with
    /// `--ui-writers`), so a browser on this host reaches the web UI.
    /// Returns the port once it accepts; the forwarder goes with the mesh.
    pub fn forward_admin(&self, node: &str, uid: u32) -> u16 {
        let port = std::net::TcpListener::bind(("127.0.0.1", ADMIN_PORT))
            .or_else(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
            .and_then(|l| l.local_addr())
            .expect("a free port on 127.0.0.1")
            .port();
        // Colons in socat's EXEC are escaped.
        let inner = format!(
            "ip netns exec {ns} setpriv --reuid={uid} --regid={uid} --clear-groups \
             socat STDIO TCP\\:127.0.0.1\\:{ADMIN_PORT}",
            ns = self.node(node).netns
        );
        let mut socat = std::process::Command::new("socat");
        socat
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
            .arg(format!("EXEC:{inner}"));
        self.spawn_app(socat, &format!("admin-forwarder-{node}"));
        let up = crate::wait_until(Duration::from_secs(5), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "the admin forwarder did not listen on 127.0.0.1:{port}");
        port
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
}
