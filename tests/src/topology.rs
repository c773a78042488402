//! Test topologies: which nodes, services and intentions a [`Mesh`] runs,
//! written as a builder instead of config text.
//!
//! ```no_run
//! use mesh_tests::Mesh;
//!
//! let mesh = Mesh::nodes(&["a", "b"])
//!     .default_policy("deny")
//!     .service("web", "a", 8080)
//!     .service_with("api", "b", 5001, |s| s.vip("240.0.0.9"))
//!     .service_on("db", &["a", "b"], 5002) // an instance on each
//!     .service_on_with("cache", &["a", "b"], 5003, |s| {
//!         s.check("http = \"/health\"\ninterval = \"200ms\"")
//!     })
//!     .intention("web", "api", "allow")
//!     .start(); // namespaces, config, root CA, an agent per node, ready
//! ```
//!
//! The config is rendered with the mesh's own addresses (which are known
//! only once its namespaces exist), in the order things were added.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use crate::{Mesh, agent_bin};

/// A mesh to build: its nodes, strangers, `[mesh]` settings, services (and
/// their checks), intentions, and the agents' extra arguments.
/// [`Topology::build`] or [`Topology::start`] make it; [`Topology::toml`]
/// renders it for a mesh that runs (to write a changed config).
#[derive(Debug, Clone)]
pub struct Topology {
    nodes: Vec<String>,
    strangers: Vec<String>,
    agent: Option<PathBuf>,
    comment: Option<String>,
    default_policy: Option<String>,
    leaf_ttl: Option<String>,
    v6: bool,
    services: Vec<Service>,
    intentions: Vec<Intention>,
    agent_args: BTreeMap<String, Vec<String>>,
    /// Per node, the etcd user its web UI writes as (`--ui-etcd-cert`).
    ui_etcd_writers: BTreeMap<String, String>,
    etcd: bool,
    etcd_auth: bool,
}

/// A `[[service]]` of a [`Topology`]; see [`Topology::service_with`].
#[derive(Debug, Clone)]
pub struct Service {
    name: String,
    /// The nodes hosting an instance.
    nodes: Vec<String>,
    /// Rendered as `nodes = [...]` (else `node = "..."`).
    list: bool,
    port: u16,
    vip: Option<String>,
    public: bool,
    lb: Option<String>,
    /// The bodies of its `[[service.check]]` tables, in order.
    checks: Vec<String>,
    /// `cgroup = "..."` (else the agent's default).
    cgroup: Option<String>,
}

impl Service {
    /// An explicit virtual IP (else the agent picks a stable one).
    pub fn vip(mut self, vip: &str) -> Self {
        self.vip = Some(vip.to_owned());
        self
    }

    /// How a VIP connection picks an instance: `lb = "..."`.
    pub fn lb(mut self, lb: &str) -> Self {
        self.lb = Some(lb.to_owned());
        self
    }

    /// Its processes' cgroup: `cgroup = "..."`.
    pub fn cgroup(mut self, path: &str) -> Self {
        self.cgroup = Some(path.to_owned());
        self
    }

    /// Internet-facing: `public = true` (not steered inbound).
    pub fn public(mut self) -> Self {
        self.public = true;
        self
    }

    /// Adds a `[[service.check]]` table, rendered after the service's own
    /// keys with `body` as its lines, e.g. `"http = \"/health\"\ninterval =
    /// \"200ms\""`. Checks keep the order they were added in.
    pub fn check(mut self, body: &str) -> Self {
        self.checks.push(body.to_owned());
        self
    }
}

/// An `[[intention]]` of a [`Topology`]; see [`Topology::intention_with`].
#[derive(Debug, Clone)]
pub struct Intention {
    source: String,
    destination: String,
    action: String,
    comment: Option<String>,
}

impl Intention {
    /// A `# text` line above the table (the intention editor keeps it).
    pub fn comment(mut self, text: &str) -> Self {
        self.comment = Some(text.to_owned());
        self
    }
}

impl Mesh {
    /// A topology whose config lists the nodes called `names`, in this
    /// order. Node names name cgroups, which the whole machine shares:
    /// meshes that run at the same time need distinct ones.
    pub fn nodes(names: &[impl AsRef<str>]) -> Topology {
        Topology {
            nodes: names.iter().map(|n| n.as_ref().to_owned()).collect(),
            strangers: Vec::new(),
            agent: None,
            comment: None,
            default_policy: None,
            leaf_ttl: None,
            v6: false,
            services: Vec::new(),
            intentions: Vec::new(),
            agent_args: BTreeMap::new(),
            ui_etcd_writers: BTreeMap::new(),
            etcd: false,
            etcd_auth: false,
        }
    }
}

impl Topology {
    /// Adds a namespace on the same network that the config leaves out:
    /// a stranger to the mesh, with no agent. Strangers come after the
    /// nodes (their addresses too).
    pub fn stranger(mut self, name: &str) -> Self {
        self.strangers.push(name.to_owned());
        self
    }

    /// Keeps the catalog in a 3-member etcd cluster (`crate::etcd`, its
    /// members are strangers `etcd1`..`etcd3`): `start` starts it, imports
    /// the config file into it and runs the agents with `--catalog`.
    pub fn etcd(mut self) -> Self {
        self.etcd = true;
        for member in crate::etcd::MEMBERS {
            self.strangers.push(member.to_owned());
        }
        self
    }

    /// [`Topology::etcd`] with TLS, client certificates and etcd's RBAC
    /// on (`crate::etcd`): each agent is etcd user `<node>`, the CLI
    /// `admin`.
    pub fn etcd_auth(mut self) -> Self {
        self.etcd_auth = true;
        self.etcd()
    }

    /// Runs this `mesh-agent` binary (default: [`agent_bin`]).
    pub fn agent(mut self, path: PathBuf) -> Self {
        self.agent = Some(path);
        self
    }

    /// A `# text` line at the top of the file (one per line of `text`).
    pub fn comment(mut self, text: &str) -> Self {
        self.comment = Some(text.to_owned());
        self
    }

    /// `default_policy` ("allow" or "deny"); left out unless set.
    pub fn default_policy(mut self, policy: &str) -> Self {
        self.default_policy = Some(policy.to_owned());
        self
    }

    /// `leaf_ttl`, e.g. "4s"; left out unless set.
    pub fn leaf_ttl(mut self, ttl: &str) -> Self {
        self.leaf_ttl = Some(ttl.to_owned());
        self
    }

    /// Whether the nodes' addresses in the config are IPv6 (default IPv4).
    pub fn v6(mut self, v6: bool) -> Self {
        self.v6 = v6;
        self
    }

    /// Adds service `name` on `node`, listening on 127.0.0.1:`port`.
    pub fn service(self, name: &str, node: &str, port: u16) -> Self {
        self.service_with(name, node, port, |s| s)
    }

    /// Like `service`, with options set by `f` (e.g. `|s| s.vip(..)`).
    pub fn service_with(
        mut self,
        name: &str,
        node: &str,
        port: u16,
        f: impl FnOnce(Service) -> Service,
    ) -> Self {
        self.services.push(f(Service {
            name: name.to_owned(),
            nodes: vec![node.to_owned()],
            list: false,
            port,
            vip: None,
            public: false,
            lb: None,
            cgroup: None,
            checks: Vec::new(),
        }));
        self
    }

    /// Adds service `name` with one instance on each of `nodes`
    /// (`nodes = [...]`), each listening on 127.0.0.1:`port`.
    pub fn service_on(self, name: &str, nodes: &[&str], port: u16) -> Self {
        self.service_on_with(name, nodes, port, |s| s)
    }

    /// Like `service_on`, with options set by `f` (e.g. `|s| s.vip(..)`).
    pub fn service_on_with(
        mut self,
        name: &str,
        nodes: &[&str],
        port: u16,
        f: impl FnOnce(Service) -> Service,
    ) -> Self {
        self.services.push(f(Service {
            name: name.to_owned(),
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
            list: true,
            port,
            vip: None,
            public: false,
            lb: None,
            cgroup: None,
            checks: Vec::new(),
        }));
        self
    }

    /// Removes the service called `name`.
    pub fn without_service(mut self, name: &str) -> Self {
        self.services.retain(|s| s.name != name);
        self
    }

    /// Adds the intention `source -> destination`, `action` ("allow" or
    /// "deny"); either side may be "*".
    pub fn intention(self, source: &str, destination: &str, action: &str) -> Self {
        self.intention_with(source, destination, action, |i| i)
    }

    /// Like `intention`, with options set by `f` (e.g. `|i| i.comment(..)`).
    pub fn intention_with(
        mut self,
        source: &str,
        destination: &str,
        action: &str,
        f: impl FnOnce(Intention) -> Intention,
    ) -> Self {
        self.intentions.push(f(Intention {
            source: source.to_owned(),
            destination: destination.to_owned(),
            action: action.to_owned(),
            comment: None,
        }));
        self
    }

    /// Extra `mesh-agent run` arguments for `node`'s agent (added to any
    /// given before).
    pub fn agent_args(mut self, node: &str, args: &[&str]) -> Self {
        self.agent_args
            .entry(node.to_owned())
            .or_default()
            .extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// With the catalog in etcd and RBAC: `node`'s web UI writes as etcd
    /// user `user` (its certificate, made with the mesh).
    pub fn ui_etcd_writer(mut self, node: &str, user: &str) -> Self {
        self.ui_etcd_writers
            .insert(node.to_owned(), user.to_owned());
        self
    }

    /// Creates the mesh: namespaces for the nodes, then the strangers;
    /// the config file and the root CA. Starts no agent.
    pub fn build(&self) -> Mesh {
        let names: Vec<&str> = self
            .nodes
            .iter()
            .chain(&self.strangers)
            .map(String::as_str)
            .collect();
        let agent = self.agent.clone().unwrap_or_else(agent_bin);
        let mut mesh = Mesh::with_agent(&names, agent);
        mesh.write_config(&self.toml(&mesh));
        if self.etcd_auth {
            mesh.etcd_pki = Some(mesh.dir.join("etcd-pki"));
        }
        if self.etcd {
            mesh.catalog = Some(mesh.etcd_url());
        }
        mesh
    }

    /// Like `build`, then starts the agent of every node, in order, with
    /// its `agent_args`, each waited for until ready.
    pub fn start(&self) -> Mesh {
        let mesh = self.build();
        if self.etcd {
            mesh.start_etcd();
            let config = mesh.config();
            let (ok, out) = mesh.cli_etcd(&["catalog", "import", &config.to_string_lossy()]);
            assert!(ok, "catalog import: {out}");
        }
        for node in &self.nodes {
            let mut args: Vec<String> = self.agent_args.get(node).cloned().unwrap_or_default();
            if let Some(user) = self.ui_etcd_writers.get(node) {
                args.extend(mesh.etcd_ui_writer_args(user));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            mesh.start_agent_with(node, &args);
        }
        mesh
    }

    /// The config file of this topology with `mesh`'s node addresses.
    /// Panics if `mesh` lacks one of the nodes.
    pub fn toml(&self, mesh: &Mesh) -> String {
        self.render(|name| mesh.node(name).addr(self.v6))
    }

    /// The config file, with `address` giving each node's address.
    fn render(&self, address: impl Fn(&str) -> IpAddr) -> String {
        let mut out = String::new();
        for line in self.comment.iter().flat_map(|c| c.lines()) {
            out += &format!("# {line}\n");
        }
        let settings = [
            ("default_policy", &self.default_policy),
            ("leaf_ttl", &self.leaf_ttl),
        ];
        if settings.iter().any(|(_, v)| v.is_some()) {
            out += "[mesh]\n";
            for (key, value) in settings {
                if let Some(value) = value {
                    out += &format!("{key} = \"{value}\"\n");
                }
            }
            out += "\n";
        }
        for name in &self.nodes {
            out += &format!(
                "[[node]]\nname = \"{name}\"\naddress = \"{}\"\n\n",
                address(name)
            );
        }
        for s in &self.services {
            out += &format!("[[service]]\nname = \"{}\"\n", s.name);
            if s.list {
                let nodes: Vec<String> = s.nodes.iter().map(|n| format!("\"{n}\"")).collect();
                out += &format!("nodes = [{}]\n", nodes.join(", "));
            } else {
                out += &format!("node = \"{}\"\n", s.nodes.join(""));
            }
            out += &format!("port = {}\n", s.port);
            if let Some(vip) = &s.vip {
                out += &format!("vip = \"{vip}\"\n");
            }
            if s.public {
                out += "public = true\n";
            }
            if let Some(lb) = &s.lb {
                out += &format!("lb = \"{lb}\"\n");
            }
            if let Some(cgroup) = &s.cgroup {
                out += &format!("cgroup = \"{cgroup}\"\n");
            }
            out += "\n";
            for body in &s.checks {
                out += "[[service.check]]\n";
                for line in body.lines() {
                    out += line;
                    out += "\n";
                }
                out += "\n";
            }
        }
        for i in &self.intentions {
            if let Some(comment) = &i.comment {
                out += &format!("# {comment}\n");
            }
            out += &format!(
                "[[intention]]\nsource = \"{}\"\ndestination = \"{}\"\naction = \"{}\"\n\n",
                i.source, i.destination, i.action
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    #[test]
    fn renders_every_part_in_order() {
        let topology = Mesh::nodes(&["a", "b"])
            .stranger("x")
            .comment("the mesh")
            .default_policy("deny")
            .leaf_ttl("4s")
            .v6(true)
            .service("web", "a", 8080)
            .service_with("api", "b", 5001, |s| s.vip("fd77:ffff::2"))
            .service_with("front", "a", 5000, |s| s.public())
            .service_on_with("db", &["a", "b"], 5003, |s| {
                s.vip("fd77:ffff::3")
                    .check("http = \"/health\"\ninterval = \"200ms\"\n")
                    .check("ttl = \"2s\"")
            })
            .service("gone", "b", 5002)
            .without_service("gone")
            .intention_with("web", "api", "allow", |i| i.comment("web may call api"))
            .intention("*", "api", "deny");
        let text = topology.render(|name| {
            IpAddr::V6(Ipv6Addr::new(
                0xfd77,
                0,
                0,
                0,
                0,
                0,
                1,
                u16::from(name == "b"),
            ))
        });
        assert_eq!(
            text,
            "# the mesh\n[mesh]\ndefault_policy = \"deny\"\nleaf_ttl = \"4s\"\n\n\
             [[node]]\nname = \"a\"\naddress = \"fd77::1:0\"\n\n\
             [[node]]\nname = \"b\"\naddress = \"fd77::1:1\"\n\n\
             [[service]]\nname = \"web\"\nnode = \"a\"\nport = 8080\n\n\
             [[service]]\nname = \"api\"\nnode = \"b\"\nport = 5001\nvip = \"fd77:ffff::2\"\n\n\
             [[service]]\nname = \"front\"\nnode = \"a\"\nport = 5000\npublic = true\n\n\
             [[service]]\nname = \"db\"\nnodes = [\"a\", \"b\"]\nport = 5003\nvip = \"fd77:ffff::3\"\n\n\
             [[service.check]]\nhttp = \"/health\"\ninterval = \"200ms\"\n\n\
             [[service.check]]\nttl = \"2s\"\n\n\
             # web may call api\n\
             [[intention]]\nsource = \"web\"\ndestination = \"api\"\naction = \"allow\"\n\n\
             [[intention]]\nsource = \"*\"\ndestination = \"api\"\naction = \"deny\"\n\n"
        );
        // The stranger is a namespace, not a node of the config.
        assert_eq!(topology.strangers, ["x"]);
    }

    #[test]
    fn no_mesh_table_without_settings_and_args_add_up() {
        let topology = Mesh::nodes(&["a"])
            .agent_args("a", &["--drain-seconds", "2"])
            .agent_args("a", &["--log-format", "json"]);
        let text = topology.render(|_| IpAddr::from([10, 0, 0, 1]));
        assert_eq!(text, "[[node]]\nname = \"a\"\naddress = \"10.0.0.1\"\n\n");
        assert_eq!(
            topology.agent_args["a"],
            ["--drain-seconds", "2", "--log-format", "json"]
        );
    }
}
