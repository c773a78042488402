//! Containers in the nodes: rootful podman (cgroupfs manager, runc, the
//! bridge network) started in a node's network namespace, each container
//! in a network namespace of its own under a service's cgroup, on a root
//! filesystem made here: the host's `/usr` (read-only, for python3 and
//! socat) and the test apps at `/apps`. No image registry is used. And
//! the runtime-agnostic case: a bare `unshare --net` process moved into a
//! service's cgroup.

use std::{
    fs,
    net::IpAddr,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use crate::{Mesh, cgroup2_root, output_with_timeout, wait_until};

/// Where the shared root filesystem is made.
const ROOTFS: &str = "/run/mesh-tests/rootfs";

/// The root filesystem every test container runs on (made once; every
/// container mounts `/usr` and `/apps` over it).
pub fn rootfs() -> PathBuf {
    let root = PathBuf::from(ROOTFS);
    for dir in [
        "usr", "etc", "tmp", "proc", "sys", "dev", "run", "root", "apps", "var/tmp",
    ] {
        fs::create_dir_all(root.join(dir)).expect("rootfs dir");
    }
    let _ = fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777));
    for (link, to) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        if fs::symlink_metadata(root.join(link)).is_err() {
            symlink(to, root.join(link)).expect("rootfs symlink");
        }
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
    root
}

/// A container a test started; removed with its mesh.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub node: String,
    pub service: String,
}

impl Mesh {
    /// `podman` run in `node`'s network namespace (not `ip netns exec`: runc
    /// needs the host's `/sys`), with the cgroupfs manager and runc.
    pub fn podman(&self, node: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.node(node).netns))
            .args(["podman", "--cgroup-manager=cgroupfs", "--runtime", "runc"]);
        c
    }

    /// Starts a container of `service` on `node` running `command`, under
    /// the service's cgroup, on the bridge network, its resolver the agent
    /// (`--dns 127.0.0.1`), with the test apps at `/apps` and this mesh's
    /// directory at `/mesh` (logs). Returns it once running.
    pub fn run_container(&self, node: &str, service: &str, command: &[&str]) -> Container {
        self.start_container(node, Some(service), &[], command)
    }

    /// Like [`Mesh::run_container`], with each (host directory, container
    /// path) of `mounts` mounted read-only too.
    pub fn run_container_mounting(
        &self,
        node: &str,
        service: &str,
        mounts: &[(&Path, &str)],
        command: &[&str],
    ) -> Container {
        self.start_container(node, Some(service), mounts, command)
    }

    /// Like [`Mesh::run_container`], in no service's cgroup (podman's
    /// default): a container that is not in the mesh.
    pub fn run_container_anywhere(&self, node: &str, command: &[&str]) -> Container {
        self.start_container(node, None, &[], command)
    }

    fn start_container(
        &self,
        node: &str,
        service: Option<&str>,
        mounts: &[(&Path, &str)],
        command: &[&str],
    ) -> Container {
        let apps = crate::app("");
        let mut cmd = self.podman(node);
        cmd.args(["run", "-d"]);
        if let Some(service) = service {
            cmd.arg("--cgroup-parent")
                .arg(format!("/mesh/{node}/{service}"));
        }
        for (host, path) in mounts {
            cmd.arg("-v").arg(format!("{}:{path}:ro", host.display()));
        }
        cmd.args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
        ])
        .args(["--dns", "127.0.0.1"])
        .args(["-v", "/usr:/usr:ro"])
        .arg("-v")
        .arg(format!("{}:/apps:ro", apps.display()))
        .arg("-v")
        .arg(format!("{}:/mesh", self.dir.display()))
        .arg("--rootfs")
        .arg(rootfs())
        .args(command);
        let out = run(&mut cmd);
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!id.is_empty(), "podman run printed no id");
        let container = Container {
            id,
            node: node.to_owned(),
            service: service.unwrap_or_default().to_owned(),
        };
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(container.clone());
        container
    }

    /// Starts `apps/echo_server.py` on 127.0.0.1:`port` in a container of
    /// `service` on `node`, logging accepts to `accepts-<tag>.log` in the
    /// mesh's directory; returns the container and the log once it listens.
    pub fn container_echo_server(
        &self,
        node: &str,
        service: &str,
        port: u16,
        tag: &str,
    ) -> (Container, PathBuf) {
        self.container_echo_server_on(node, service, "127.0.0.1", port, tag)
    }

    /// Like [`Mesh::container_echo_server`], listening on `bind` (e.g.
    /// `0.0.0.0`, as a careless service would).
    pub fn container_echo_server_on(
        &self,
        node: &str,
        service: &str,
        bind: &str,
        port: u16,
        tag: &str,
    ) -> (Container, PathBuf) {
        let log = format!("accepts-{tag}.log");
        let _ = fs::write(self.dir.join(&log), "");
        let c = self.run_container(
            node,
            service,
            &[
                "python3",
                "/apps/echo_server.py",
                &port.to_string(),
                &format!("/mesh/{log}"),
                bind,
            ],
        );
        self.wait_container_listening(&c, port);
        (c, self.dir.join(log))
    }

    /// Starts `command` in container `c` in the background (`podman exec
    /// -d`), its output appended to `<mesh dir>/<log>`; returns that file.
    pub fn container_spawn(&self, c: &Container, log: &str, command: &str) -> PathBuf {
        let line = format!("{command} >> /mesh/{log} 2>&1");
        run(self
            .podman(&c.node)
            .args(["exec", "-d", &c.id, "sh", "-c", &line]));
        self.dir.join(log)
    }

    /// What container `c` printed so far (`podman logs`).
    pub fn container_logs(&self, c: &Container) -> String {
        let out = output_with_timeout(
            self.podman(&c.node).args(["logs", &c.id]),
            Duration::from_secs(30),
        );
        crate::outcome(&out).1
    }

    /// Runs `command` in container `c` (`podman exec`); its output.
    pub fn container_exec(&self, c: &Container, command: &[&str]) -> Output {
        let mut cmd = self.podman(&c.node);
        cmd.args(["exec", &c.id]).args(command);
        output_with_timeout(&mut cmd, Duration::from_secs(60))
    }

    /// Runs `apps/echo_client.py` in container `c` against `host:port`;
    /// returns what came back (empty on failure) and stderr.
    pub fn container_echo(
        &self,
        c: &Container,
        host: &str,
        port: u16,
        text: &str,
    ) -> (String, String) {
        let out = self.container_exec(
            c,
            &[
                "python3",
                "/apps/echo_client.py",
                host,
                &port.to_string(),
                text,
            ],
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Waits until something listens on TCP `port` in container `c`.
    pub fn wait_container_listening(&self, c: &Container, port: u16) {
        let pid = self.container_pid(c);
        let ok = wait_until(Duration::from_secs(15), || {
            let out = Command::new("nsenter")
                .arg(format!("--net=/proc/{pid}/ns/net"))
                .args(["ss", "-Hltn", &format!("sport = :{port}")])
                .output()
                .expect("ss");
            !out.stdout.is_empty()
        });
        assert!(ok, "nothing listens on port {port} in container {}", c.id);
    }

    /// The host pid of container `c`'s first process.
    pub fn container_pid(&self, c: &Container) -> u32 {
        let out = run(self
            .podman(&c.node)
            .args(["inspect", "-f", "{{.State.Pid}}", &c.id]));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("container pid")
    }

    /// Container `c`'s address on the bridge network.
    pub fn container_ip(&self, c: &Container) -> IpAddr {
        let out = run(self.podman(&c.node).args([
            "inspect",
            "-f",
            "{{.NetworkSettings.IPAddress}}",
            &c.id,
        ]));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("container address")
    }

    /// The inode of container `c`'s network namespace (what the agent's
    /// status shows).
    pub fn container_netns(&self, c: &Container) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        let pid = self.container_pid(c);
        fs::metadata(format!("/proc/{pid}/ns/net"))
            .expect("container netns")
            .ino()
    }

    /// The containers of `service` `node`'s agent serves, as its status
    /// lists them.
    pub fn containers_served(&self, node: &str, service: &str) -> Vec<serde_json::Value> {
        self.status(node)["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c["service"] == service)
            .collect()
    }

    /// Stops and removes container `c` at once.
    pub fn remove_container(&self, c: &Container) {
        let _ = output_with_timeout(
            self.podman(&c.node).args(["rm", "-f", "-t", "0", &c.id]),
            Duration::from_secs(60),
        );
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|x| x.id != c.id);
    }

    /// Removes every container the tests started (before the namespaces go).
    pub(crate) fn remove_containers(&self) {
        let all: Vec<Container> = self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for c in all {
            let _ = output_with_timeout(
                self.podman(&c.node).args(["rm", "-f", "-t", "0", &c.id]),
                Duration::from_secs(60),
            );
        }
    }

    /// A command run as a bare process of `service` on `node` in a network
    /// namespace of its own: it joins the service's cgroup, then
    /// `unshare --net` (its loopback is down; the agent sets it up).
    pub fn cmd_own_netns(&self, node: &str, service: &str, program: &str) -> Command {
        self.cmd_own_netns_in(node, service, "bare", program)
    }

    /// Like [`Mesh::cmd_own_netns`], in the cgroup `sub` below the service's.
    pub fn cmd_own_netns_in(&self, node: &str, service: &str, sub: &str, program: &str) -> Command {
        let dir = cgroup2_root().join(format!("mesh/{node}/{service}/{sub}"));
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"d=$1; shift; mkdir -p "$d" && echo $$ > "$d/cgroup.procs" && exec unshare --net "$@""#)
            .arg("sh")
            .arg(dir)
            .arg(program);
        c
    }
}

/// Runs `cmd`; panics with its stderr unless it succeeds.
fn run(cmd: &mut Command) -> Output {
    let out = output_with_timeout(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Whether `path` exists (for tests that look for what is left behind).
pub fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}
