//! Network namespaces: a mesh's nodes, their veths on the bridge and
//! addresses, commands run inside them, and the teardown on drop.

use std::{
    fs,
    io::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
};

use crate::{Mesh, agent_bin, require_root};

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
            containers: Mutex::new(Vec::new()),
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
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.remove_containers();
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
