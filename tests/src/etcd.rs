//! A real etcd cluster for a [`Mesh`]: three members, each in a stranger
//! namespace of the mesh (`etcd1`..`etcd3`), plain HTTP on 2379 (clients)
//! and 2380 (peers), data and logs in the mesh's directory. Short Raft
//! timings (heartbeat 50 ms, election 500 ms) so a lost leader is
//! replaced within about a second.

use std::{fs, time::Duration};

use crate::{Mesh, wait_until};

/// The namespaces of the members.
pub const MEMBERS: [&str; 3] = ["etcd1", "etcd2", "etcd3"];
/// The catalog's key prefix in the tests.
pub const PREFIX: &str = "/mesh";

impl Mesh {
    /// `etcd://<member>:2379,...<PREFIX>`, for `--catalog`.
    pub fn etcd_url(&self) -> String {
        let members: Vec<String> = MEMBERS
            .iter()
            .map(|m| format!("{}:2379", self.node(m).v4))
            .collect();
        format!("etcd://{}{PREFIX}", members.join(","))
    }

    /// `--endpoints` for etcdctl.
    pub fn etcd_endpoints(&self) -> String {
        let members: Vec<String> = MEMBERS
            .iter()
            .map(|m| format!("http://{}:2379", self.node(m).v4))
            .collect();
        members.join(",")
    }

    /// Starts every member (see the module docs) and waits until the
    /// cluster has a leader and takes a write.
    pub fn start_etcd(&self) {
        let cluster: Vec<String> = MEMBERS
            .iter()
            .map(|m| format!("{m}=http://{}:2380", self.node(m).v4))
            .collect();
        let token = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for member in MEMBERS {
            self.start_etcd_member(member, &cluster.join(","), &token);
        }
        let up = wait_until(Duration::from_secs(20), || {
            self.etcdctl(&["put", &format!("{PREFIX}/ready"), "1"]).0
        });
        assert!(up, "etcd did not take a write: {}", self.etcd_logs());
    }

    /// Starts (or restarts, on its data) one member.
    pub fn start_etcd_member(&self, member: &str, cluster: &str, token: &str) {
        self.spawn_etcd_member(member, cluster, token, member);
    }

    /// Starts one member, logging to `app-<log>.log`.
    fn spawn_etcd_member(&self, member: &str, cluster: &str, token: &str, log: &str) {
        let ip = self.node(member).v4;
        let data = self.dir.join(format!("{member}.etcd"));
        let mut cmd = self.cmd(member, "etcd");
        cmd.args(["--name", member])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-peer-urls", &format!("http://{ip}:2380")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{ip}:2380"),
            ])
            .args(["--listen-client-urls", &format!("http://{ip}:2379")])
            .args(["--advertise-client-urls", &format!("http://{ip}:2379")])
            .args(["--initial-cluster", cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", token])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap"]);
        self.spawn_app(cmd, log);
    }

    /// Runs etcdctl (v3 API) against the cluster from the first member's
    /// namespace; returns whether it succeeded and its output.
    pub fn etcdctl(&self, args: &[&str]) -> (bool, String) {
        let out = crate::output_with_timeout(
            self.cmd(MEMBERS[0], "etcdctl")
                .args(["--endpoints", &self.etcd_endpoints()])
                .args(["--command-timeout", "3s"])
                .args(args),
            Duration::from_secs(10),
        );
        crate::outcome(&out)
    }

    /// Runs etcdctl until it succeeds (a write can fail while the cluster
    /// elects a leader), at most 10 s; panics with its last output.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(10), || {
            let (ok, out) = self.etcdctl(args);
            last = out;
            ok
        });
        assert!(ok, "etcdctl {args:?}: {last}");
        last
    }

    /// Runs `mesh-agent ARGS --catalog <etcd url>` from the first member's
    /// namespace (where etcd is reachable).
    pub fn cli_etcd(&self, args: &[&str]) -> (bool, String) {
        let out = crate::output_with_timeout(
            self.cmd(MEMBERS[0], &self.agent)
                .args(args)
                .args(["--catalog", &self.etcd_url()]),
            Duration::from_secs(30),
        );
        crate::outcome(&out)
    }

    /// The member that leads now, if one does.
    pub fn etcd_leader(&self) -> Option<&'static str> {
        let statuses = self.etcd_status();
        let leader = statuses.iter().find(|s| {
            let status = &s["Status"];
            status["leader"].as_u64().is_some() && status["leader"] == status["header"]["member_id"]
        })?;
        let endpoint = leader["Endpoint"].as_str()?;
        MEMBERS
            .into_iter()
            .find(|m| endpoint == format!("http://{}:2379", self.node(m).v4))
    }

    /// `etcdctl endpoint status` of the members that answer.
    pub fn etcd_status(&self) -> Vec<serde_json::Value> {
        // A member down fails the command; the others are still on stdout.
        let out = crate::output_with_timeout(
            self.cmd(MEMBERS[0], "etcdctl")
                .args(["--endpoints", &self.etcd_endpoints()])
                .args(["--command-timeout", "2s"])
                .args(["endpoint", "status", "--write-out", "json"]),
            Duration::from_secs(10),
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// SIGKILLs the etcd member in `member`'s namespace.
    pub fn kill_etcd_member(&self, member: &str) {
        let out = std::process::Command::new("ip")
            .args(["netns", "pids", &self.node(member).netns])
            .output()
            .expect("ip netns pids");
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid])
                .status();
        }
        let gone = wait_until(Duration::from_secs(5), || {
            let out = std::process::Command::new("ip")
                .args(["netns", "pids", &self.node(member).netns])
                .output()
                .expect("ip netns pids");
            out.stdout.is_empty()
        });
        assert!(gone, "etcd in {member} did not die");
    }

    /// Restarts a member on its data after [`Mesh::kill_etcd_member`].
    pub fn restart_etcd_member(&self, member: &str) {
        let cluster: Vec<String> = MEMBERS
            .iter()
            .map(|m| format!("{m}=http://{}:2380", self.node(m).v4))
            .collect();
        // Its own log: the first one tells how the member died.
        let log = format!("{member}-restarted");
        self.spawn_etcd_member(member, &cluster.join(","), "restarted", &log);
    }

    /// Cuts `node` off from every etcd member (blackhole routes in its
    /// namespace: packets vanish, as in a partition), or heals it.
    pub fn partition_from_etcd(&self, node: &str, cut: bool) {
        for member in MEMBERS {
            let ip = format!("{}/32", self.node(member).v4);
            let verb = if cut { "add" } else { "del" };
            let status = self
                .cmd(node, "ip")
                .args(["route", verb, "blackhole", &ip])
                .status()
                .expect("ip route");
            assert!(status.success(), "ip route {verb} blackhole {ip} in {node}");
        }
    }

    /// The members' logs, for failure messages.
    pub fn etcd_logs(&self) -> String {
        MEMBERS
            .iter()
            .map(|m| {
                let log =
                    fs::read_to_string(self.dir.join(format!("app-{m}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                format!(
                    "---- {m} ----\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
