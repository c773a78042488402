//! Test harness: builds a mesh of nodes out of network namespaces on this
//! machine, runs real agents and real apps in them, and tears everything
//! down on drop, also when a test panics.
//!
//! Topology of one [`Mesh`]: a "switch" namespace holding a bridge, and one
//! namespace per node with a veth to the bridge, addressed from
//! `10.77.<k>.0/24` and `fd77:0:0:<k>::/64`. Nothing is added to the host's
//! own network namespace. Everything here needs root.
//!
//! `Mesh`'s methods live in `impl Mesh` blocks of the module of their
//! concern (namespaces, agents, apps, admin queries, captures, etcd,
//! health); the private modules' public items are re-exported here.
#![forbid(unsafe_code)]

mod admin;
mod agents;
mod apps;
mod bpf;
pub mod browser;
mod capture;
pub mod containers;
pub mod etcd;
pub mod health;
mod netns;
pub mod pki;
pub mod playground;
mod process;
pub mod topology;
pub mod wire;

pub use admin::{ADMIN_PORT, metric_value};
pub use agents::{READY_TIMEOUT, agent_bin, workspace_root};
pub use apps::app;
pub use bpf::{bpffs, bpftool_json, loaded_mesh_links, loaded_mesh_programs};
pub use capture::Capture;
pub use containers::Container;
pub use netns::{Node, cgroup2_root};
pub use nix::sys::signal::Signal;
pub use process::{outcome, output_with_timeout, run_to_string, wait_exit, wait_until};
pub use topology::Topology;

use std::{fs, net::IpAddr, path::PathBuf, process::Child, sync::Mutex};

/// The port of the tests' `api` service.
pub const API_PORT: u16 = 5001;
/// The VIP of `api` in the tests that share one (others pick their own).
pub const VIP: &str = "240.0.0.9";

/// [`VIP`] as an address.
pub fn vip() -> IpAddr {
    VIP.parse().expect("vip")
}

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
    /// Podman containers started in the nodes.
    containers: Mutex<Vec<Container>>,
}
