//! A real etcd cluster for a [`Mesh`]: three members, each in a stranger
//! namespace of the mesh (`etcd1`..`etcd3`), plain HTTP on 2379 (clients)
//! and 2380 (peers), data and logs in the mesh's directory. Short Raft
//! timings (heartbeat 50 ms, election 500 ms) so a lost leader is
//! replaced within about a second.
//!
//! With [`Topology::etcd_auth`](crate::Topology::etcd_auth) the clients
//! speak TLS with client certificates ([`Pki`]) and etcd's RBAC is on, set
//! up as docs/fleet.md tells: user `root`, user `admin` (readwrite on
//! the prefix), one user per node (read on the prefix, readwrite on its own
//! registrations), each authenticated by its certificate's CN.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::{Mesh, wait_until};

/// The namespaces of the members.
pub const MEMBERS: [&str; 3] = ["etcd1", "etcd2", "etcd3"];
/// The catalog's key prefix in the tests.
pub const PREFIX: &str = "/mesh";

impl Mesh {
    /// The etcd users' certificates, with RBAC on.
    fn pki(&self) -> Option<Pki> {
        self.etcd_pki.clone().map(|dir| Pki { dir })
    }

    /// `--etcd-cacert/--etcd-cert/--etcd-key` for `mesh-agent` as etcd
    /// user `user` (nothing without RBAC).
    pub fn etcd_client_args(&self, user: &str) -> Vec<String> {
        self.cert_flags(user, ["--etcd-cacert", "--etcd-cert", "--etcd-key"])
    }

    /// `--ui-etcd-cert` and `--ui-etcd-key` of `user` (nothing without RBAC).
    pub fn etcd_ui_writer_args(&self, user: &str) -> Vec<String> {
        let mut flags = self.cert_flags(user, ["--etcd-cacert", "--ui-etcd-cert", "--ui-etcd-key"]);
        flags.retain(|f| !f.starts_with("--etcd-cacert="));
        flags
    }

    /// `FLAG=file` for the CA, `user`'s certificate and its key (nothing
    /// without RBAC), under the three flag names given.
    fn cert_flags(&self, user: &str, [ca, cert, key]: [&str; 3]) -> Vec<String> {
        let Some(pki) = self.pki() else {
            return Vec::new();
        };
        let (cert_file, key_file) = pki.user(user);
        vec![
            format!("{ca}={}", pki.ca().display()),
            format!("{cert}={}", cert_file.display()),
            format!("{key}={}", key_file.display()),
        ]
    }

    /// `etcd://<member>:2379,...<PREFIX>`, for `--catalog`.
    pub fn etcd_url(&self) -> String {
        self.etcd_url_from(MEMBERS[0])
    }

    /// [`Mesh::etcd_url`] with `first` named first, the others after it.
    pub fn etcd_url_from(&self, first: &str) -> String {
        let at = MEMBERS.iter().position(|m| *m == first).expect("a member");
        let members: Vec<String> = MEMBERS
            .iter()
            .cycle()
            .skip(at)
            .take(MEMBERS.len())
            .map(|m| format!("{}:2379", self.node(m).v4))
            .collect();
        format!("etcd://{}{PREFIX}", members.join(","))
    }

    /// `--endpoints` for etcdctl.
    pub fn etcd_endpoints(&self) -> String {
        let members: Vec<String> = MEMBERS
            .iter()
            .map(|m| format!("{}://{}:2379", self.etcd_scheme(), self.node(m).v4))
            .collect();
        members.join(",")
    }

    fn etcd_scheme(&self) -> &'static str {
        if self.etcd_pki.is_some() {
            "https"
        } else {
            "http"
        }
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
        if let Some(pki) = self.pki() {
            let members: Vec<(&str, IpAddr)> = MEMBERS
                .iter()
                .map(|m| (*m, self.node(m).v4.into()))
                .collect();
            pki.write(&members, &self.agent_nodes());
        }
        for member in MEMBERS {
            self.start_etcd_member(member, &cluster.join(","), &token);
        }
        let up = wait_until(Duration::from_secs(20), || {
            self.etcdctl(&["put", &format!("{PREFIX}/ready"), "1"]).0
        });
        assert!(up, "etcd did not take a write: {}", self.etcd_logs());
        if self.etcd_pki.is_some() {
            self.enable_etcd_auth();
        }
    }

    /// The nodes that run agents (not etcd's namespaces).
    fn agent_nodes(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.name.clone())
            .filter(|n| !MEMBERS.contains(&n.as_str()))
            .collect()
    }

    /// etcd's users and roles as README ("A fleet", RBAC) sets them up,
    /// then `auth enable`.
    fn enable_etcd_auth(&self) {
        let prefix = format!("{PREFIX}/");
        let mut steps: Vec<String> = [
            "user add root --no-password",
            "user grant-role root root",
            "role add admin",
            &format!("role grant-permission admin --prefix=true readwrite {prefix}"),
            "user add admin --no-password",
            "user grant-role admin admin",
        ]
        .map(str::to_owned)
        .to_vec();
        for node in self.agent_nodes() {
            let role = format!("node-{node}");
            steps.extend([
                format!("role add {role}"),
                format!("role grant-permission {role} --prefix=true read {prefix}"),
                format!("role grant-permission {role} readwrite {PREFIX}/agents/v1/nodes/{node}"),
                format!(
                    "role grant-permission {role} --prefix=true readwrite {PREFIX}/agents/v1/health/{node}/"
                ),
                format!("user add {node} --no-password"),
                format!("user grant-role {node} {role}"),
            ]);
        }
        steps.push("auth enable".to_owned());
        for step in steps {
            let args: Vec<&str> = step.split(' ').collect();
            self.etcdctl_ok(&args);
        }
    }

    /// Starts (or restarts, on its data) one member.
    pub fn start_etcd_member(&self, member: &str, cluster: &str, token: &str) {
        self.spawn_etcd_member(member, cluster, token, member);
    }

    /// Starts one member, logging to `app-<log>.log`.
    fn spawn_etcd_member(&self, member: &str, cluster: &str, token: &str, log: &str) {
        let ip = self.node(member).v4;
        let data = self.dir.join(format!("{member}.etcd"));
        let scheme = self.etcd_scheme();
        let mut cmd = self.cmd(member, "etcd");
        if let Some(pki) = self.pki() {
            let (cert, key) = pki.user(member);
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(pki.ca())
                .arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key);
        }
        cmd.args(["--name", member])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-peer-urls", &format!("http://{ip}:2380")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{ip}:2380"),
            ])
            .args(["--listen-client-urls", &format!("{scheme}://{ip}:2379")])
            .args(["--advertise-client-urls", &format!("{scheme}://{ip}:2379")])
            .args(["--initial-cluster", cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", token])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap"]);
        self.spawn_app(cmd, log);
    }

    /// Runs etcdctl (v3 API) against the cluster from the first member's
    /// namespace (as etcd user `root` with RBAC on); returns whether it
    /// succeeded and its output.
    pub fn etcdctl(&self, args: &[&str]) -> (bool, String) {
        self.etcdctl_as("root", args)
    }

    /// [`Mesh::etcdctl`] as etcd user `user` (its certificate).
    pub fn etcdctl_as(&self, user: &str, args: &[&str]) -> (bool, String) {
        let out = crate::output_with_timeout(
            self.cmd(MEMBERS[0], "etcdctl")
                .args(["--endpoints", &self.etcd_endpoints()])
                .args(self.etcdctl_certs(user))
                .args(["--command-timeout", "3s"])
                .args(args),
            Duration::from_secs(10),
        );
        crate::outcome(&out)
    }

    /// etcdctl's certificate flags for `user` (nothing without RBAC).
    pub fn etcdctl_certs(&self, user: &str) -> Vec<String> {
        self.cert_flags(user, ["--cacert", "--cert", "--key"])
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
    /// namespace (where etcd is reachable), as etcd user `admin` with RBAC
    /// on.
    pub fn cli_etcd(&self, args: &[&str]) -> (bool, String) {
        self.cli_etcd_as("admin", args)
    }

    /// [`Mesh::cli_etcd`] as etcd user `user`.
    pub fn cli_etcd_as(&self, user: &str, args: &[&str]) -> (bool, String) {
        self.cli_etcd_url(user, &self.etcd_url(), args)
    }

    /// [`Mesh::cli_etcd`] as etcd user `user`, with `--catalog url`.
    pub fn cli_etcd_url(&self, user: &str, url: &str, args: &[&str]) -> (bool, String) {
        let out = crate::output_with_timeout(
            self.cmd(MEMBERS[0], &self.agent)
                .args(args)
                .args(["--catalog", url])
                .args(self.etcd_client_args(user)),
            Duration::from_secs(30),
        );
        crate::outcome(&out)
    }

    /// Established TCP connections from `node`'s namespace to etcd's
    /// client port (its agent's: tests run etcdctl and the CLI from the
    /// first member's namespace).
    pub fn etcd_connections(&self, node: &str) -> usize {
        let out = crate::output_with_timeout(
            self.cmd(node, "ss")
                .args(["-tnH", "state", "established", "( dport = :2379 )"]),
            Duration::from_secs(10),
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
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
            .find(|m| endpoint == format!("{}://{}:2379", self.etcd_scheme(), self.node(m).v4))
    }

    /// `etcdctl endpoint status` of the members that answer.
    pub fn etcd_status(&self) -> Vec<serde_json::Value> {
        // A member down fails the command; the others are still on stdout.
        let out = crate::output_with_timeout(
            self.cmd(MEMBERS[0], "etcdctl")
                .args(["--endpoints", &self.etcd_endpoints()])
                .args(self.etcdctl_certs("root"))
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

/// The certificates of an etcd cluster with RBAC: a CA, a server
/// certificate per member, a client certificate per user (CN = user), as
/// PEM files in one directory.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The certificate and key of `name` (a member or a user).
    pub fn user(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        )
    }

    /// Writes the CA, the members' server certificates (their address as
    /// SAN) and client certificates for `root`, `admin` and each of `nodes`.
    pub fn write(&self, members: &[(&str, IpAddr)], nodes: &[String]) {
        fs::create_dir_all(&self.dir).expect("etcd pki dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::default();
        ca.distinguished_name = named("mesh tests etcd CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        write(&self.ca(), &ca_cert.pem());
        let issuer = Issuer::new(ca, ca_key);
        let issue = |name: &str, san: Option<IpAddr>, server: bool| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::default();
            params.distinguished_name = named(name);
            params.subject_alt_names = san.into_iter().map(SanType::IpAddress).collect();
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            if server {
                params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ServerAuth);
            }
            let cert = params.signed_by(&key, &issuer).expect("certificate");
            let (crt, key_file) = self.user(name);
            write(&crt, &cert.pem());
            write(&key_file, &key.serialize_pem());
        };
        for (member, ip) in members {
            issue(member, Some(*ip), true);
        }
        for user in ["root", "admin"]
            .into_iter()
            .chain(nodes.iter().map(String::as_str))
        {
            issue(user, None, false);
        }
    }
}

fn named(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn write(path: &Path, pem: &str) {
    fs::write(path, pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
