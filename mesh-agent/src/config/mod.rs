//! The mesh configuration: one TOML file, parsed once into typed structs.
//!
//! Every agent reads the same file (format: docs/configuration.md).
//! [`Config::from_bytes`] is the one acceptance rule: it checks everything
//! it can and reports every problem with the file, line and column (see
//! [`ConfigError`]), so nothing downstream re-checks strings, and the agent
//! and every command accept exactly the same files.

pub mod edit;
mod error;
mod pieces;
mod raw;
mod validate;
mod values;
mod vip;

#[cfg(test)]
mod tests;

pub use error::{ConfigError, Problem};
pub use pieces::{Piece, judge as judge_pieces};
pub use vip::default_vip;

/// The mesh's cgroup, below the cgroup2 root: each node's agent and
/// services have theirs under `/mesh/<node>/` (a service's default; the
/// agent's always).
pub const MESH_ROOT: &str = "/mesh";

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::names::{NodeName, ServiceName};

/// Where a local service listens: loopback only, by design.
pub fn local_addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// A parsed and validated mesh configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was loaded from, as given to [`Config::load`] or [`Config::from_bytes`].
    pub path: PathBuf,
    pub mesh: Mesh,
    /// In file order.
    pub nodes: Vec<Node>,
    /// In file order.
    pub services: Vec<Service>,
    /// In file order.
    pub intentions: Vec<Intention>,
    /// In file order (`mesh-agent node revoke`).
    pub revoked: Vec<Revoked>,
}

/// A `[[revoked]]` (`mesh-agent node revoke|readmit`): agents refuse every
/// certificate chaining through `node_ca`, for ever, and every certificate
/// of `node` until it is readmitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub node: NodeName,
    /// SHA-256 of the node CA's DER, lowercase hex.
    pub node_ca: String,
    pub readmitted: bool,
    /// 1-based line of its `[[revoked]]` header.
    pub line: usize,
}

/// Mesh-wide settings, the `[mesh]` table (optional, as are all its fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    /// Default `"mesh.local"`.
    pub trust_domain: String,
    /// What happens when no intention matches. Default [`Action::Deny`].
    pub default_policy: Action,
    /// Directory of the root CA. Default `"ca"`; a relative path is resolved
    /// against the config file's directory.
    pub ca_dir: PathBuf,
    /// Lifetime of leaf certificates. Default 24h, at least 1s.
    pub leaf_ttl: Duration,
}

/// A `[[node]]`: a host running an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: NodeName,
    /// The address other nodes reach it at.
    pub address: IpAddr,
}

/// A `[[service]]`: an app listening on `127.0.0.1:port` on each node that
/// hosts one of its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: ServiceName,
    /// The [`Node`]s hosting an instance, in file order: never empty, no
    /// duplicates, each a declared node (`node = "b"` is `["b"]`).
    pub nodes: Vec<NodeName>,
    /// In `1..=65535`.
    pub port: u16,
    /// The address clients dial: explicit, or [`default_vip`] of the name.
    pub vip: IpAddr,
    /// Internet-facing: not steered inbound, binds itself. Default false.
    pub public: bool,
    /// The cgroup path as written (absolute, no `..`); `None` means the default.
    pub cgroup: Option<PathBuf>,
    /// How a connection to the VIP picks an instance. Default
    /// [`Balance::LeastRequest`].
    pub lb: Balance,
    /// Its `[[service.check]]`s, in file order, run by the agent of each
    /// node hosting an instance. None: every instance is passing.
    pub checks: Vec<Check>,
}

/// A `[[service.check]]` (Consul semantics: docs/configuration.md, "Health checks").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// As written (not empty, no control character), or a default made
    /// from the kind (`"http /health"`, `"tcp"`, `"ttl"`). Unique within
    /// the service.
    pub name: String,
    pub kind: CheckKind,
    /// Between two runs of an `http` or `tcp` check: default 10s, from
    /// 100ms to 24h. Unused for `ttl` (10s, not to be set).
    pub interval: Duration,
    /// Bound on one run: default the smaller of 10s (Consul's) and
    /// `interval`; above zero, at most 24h. Unused for `ttl` (10s, not to
    /// be set).
    pub timeout: Duration,
    /// Consecutive successes before a critical check turns passing
    /// (0 and 1 both mean the first success). Default 0, at most 1000.
    pub success_before_passing: u32,
    /// Consecutive failures before a passing check turns critical
    /// (0 and 1 both mean the first failure). Default 0, at most 1000.
    pub failures_before_critical: u32,
}

/// What a [`Check`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// GET `http://127.0.0.1:<port><path>`: 2xx passing, 429 warning,
    /// anything else or no answer within the timeout critical. `path`
    /// starts with '/' and is a valid HTTP request path and query: no
    /// whitespace, control character or fragment, at most 1024 bytes.
    Http { path: String },
    /// Connect to `127.0.0.1:<port>`: passing if it is accepted in time.
    Tcp,
    /// Critical unless `mesh-agent check pass|warn|fail` reports within
    /// this long (1s to 24h).
    Ttl(Duration),
}

/// A service's `lb`: how a connection to its VIP picks an instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Balance {
    /// A passing instance on the caller's node, else the less busy of two
    /// picked at random (Envoy's `least_request`).
    #[default]
    LeastRequest,
    /// Any passing instance, uniformly.
    Random,
    /// The passing instances in turn.
    RoundRobin,
}

/// What an intention (or the default policy) does with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// The source or destination of an intention.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Match {
    /// `"*"`: every service.
    Any,
    /// One declared service.
    Name(ServiceName),
}

/// An `[[intention]]`: allow or deny connections from one service to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intention {
    pub source: Match,
    pub destination: Match,
    pub action: Action,
    /// 1-based line of the `[[intention]]` entry, for logs.
    pub line: usize,
}

/// Whether `name` is a valid node or service name: 1 to 63 lowercase ASCII
/// letters, digits and '-', not starting or ending with '-'.
pub fn is_name(name: &str) -> bool {
    name.parse::<crate::names::ServiceName>().is_ok()
}

/// Whether `domain` is a valid trust domain: a lowercase DNS name of
/// letters, digits, '-' and '.' (as `[mesh] trust_domain` accepts).
pub fn is_trust_domain(domain: &str) -> bool {
    values::trust_domain(domain).is_ok()
}

impl Config {
    /// Reads the file at `path` and parses it with [`Config::from_bytes`].
    ///
    /// Fails with [`ConfigError::Io`] if the file cannot be read and with
    /// [`ConfigError::Invalid`] if it is not a valid config.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::from_bytes(&Self::read(path)?, path)
    }

    /// The bytes of the file at `path`, for [`Config::from_bytes`].
    ///
    /// Fails with [`ConfigError::Io`] if the file cannot be read.
    pub fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
        std::fs::read(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// The one acceptance rule for config files: the agent's start and
    /// reload, every command, and the intention editor go through here.
    /// `path` names the file in problems and is the base for a relative
    /// `ca_dir`.
    ///
    /// Accepts strict UTF-8 (a leading byte order mark is skipped, as the
    /// TOML parser does), TOML of the expected shape, at least one
    /// `[[node]]`, and values that pass every check. Fails with
    /// [`ConfigError::Invalid`] listing every problem found; invalid UTF-8,
    /// a TOML syntax error or a wrong shape (unknown key, missing field,
    /// wrong type) stops parsing, so it is reported alone.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Config, ConfigError> {
        validate::parse(bytes, path)
    }

    /// [`Config::from_bytes`] of text already in memory.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::from_bytes(text.as_bytes(), path)
    }

    /// The node called `name`, if declared.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Whether `node` is shut out: revoked and not readmitted.
    pub fn is_banned(&self, node: &str) -> bool {
        self.revoked.iter().any(|r| r.node == node && !r.readmitted)
    }

    /// Whether the node CA with SHA-256 `node_ca` was revoked.
    pub fn is_revoked_ca(&self, node_ca: &str) -> bool {
        self.revoked.iter().any(|r| r.node_ca == node_ca)
    }

    /// The service called `name`, if declared.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The services with an instance on the node called `node`, in file order.
    pub fn services_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Service> + 'a {
        self.services.iter().filter(move |s| s.hosted_on(node))
    }

    /// Every instance of a meshed (non-public) service, as (service, node
    /// name), in file order.
    pub fn meshed_instances(&self) -> impl Iterator<Item = (&Service, &NodeName)> + '_ {
        self.services
            .iter()
            .filter(|s| !s.public)
            .flat_map(|s| s.nodes.iter().map(move |node| (s, node)))
    }

    /// The nodes hosting an instance of `service`, in its `nodes` order.
    pub fn instances<'a>(&'a self, service: &'a Service) -> impl Iterator<Item = &'a Node> + 'a {
        service.nodes.iter().filter_map(|n| self.node(n))
    }
}

impl Mesh {
    /// What changed from `self` to `new` that a running agent can only
    /// apply by restarting (its CA, identities and leaf lifetime are set
    /// up at start): one line per setting, empty if none.
    pub fn restart_needed(&self, new: &Mesh) -> Vec<String> {
        let mut changed = Vec::new();
        if self.trust_domain != new.trust_domain {
            changed.push(format!(
                "trust_domain {:?} -> {:?}",
                self.trust_domain, new.trust_domain
            ));
        }
        if self.ca_dir != new.ca_dir {
            changed.push(format!(
                "ca_dir {:?} -> {:?}",
                self.ca_dir.display().to_string(),
                new.ca_dir.display().to_string()
            ));
        }
        if self.leaf_ttl != new.leaf_ttl {
            changed.push(format!(
                "leaf_ttl {:?} -> {:?}",
                self.leaf_ttl, new.leaf_ttl
            ));
        }
        changed
    }
}

impl Service {
    /// Whether an instance runs on the node called `node`.
    pub fn hosted_on(&self, node: &str) -> bool {
        self.nodes.iter().any(|n| n == node)
    }
}
