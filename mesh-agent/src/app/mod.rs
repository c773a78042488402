//! `mesh-agent run`: one agent for one node, built in steps.
//!
//! [`App::build`] runs before the async runtime (config, listeners or the
//! running agent's sockets, node CA, cgroup2); [`App::spawn`] starts the
//! rest and returns once ready; [`Running::stopped`] waits for a signal or a
//! handover and [`Running::stop`] drains and cleans up.
//!
//! Start-up order matters: the listeners first (binding the outbound port
//! also keeps a second agent for the same node from touching the first one's
//! cgroups), then cgroups (the programs need the agent's and the services'
//! cgroup ids), then the programs, attached last so no connection is
//! redirected before someone is listening.

mod cgroups;
mod enroll;
mod kernel;
mod listeners;
mod maps;
mod reload;
mod tasks;
mod trust;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::signal::unix::SignalKind;
use tracing::{info, warn};

use self::{cgroups::Cgroups, listeners::Listeners};
use crate::{
    catalog::{Catalog, CatalogError},
    cgroup::{Cgroup2, CgroupError},
    config::Config,
    ebpf::EbpfError,
    identity::{Identities, IdentityError, NodeCa},
    names::{NodeName, ServiceName},
    tls::TlsError,
};

pub use self::tasks::{Running, Stop};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Ui(#[from] crate::ui::UiError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("node {node:?} is not declared in {path}")]
    UnknownNode { node: NodeName, path: PathBuf },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "the CA files of node {node:?} do not work: {why} (does nodes/{node}.key belong to nodes/{node}.crt, and was it issued by this root.crt?)"
    )]
    NodeCa { node: String, why: String },
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    #[error("failed to listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "service {service:?} listens on port {port} of node {node:?}, the agents' link port: give it another port, or run every agent with another --link-port"
    )]
    LinkPort {
        service: ServiceName,
        node: NodeName,
        port: u16,
    },
    #[error(
        "{} changed: restart the agent to apply {} (an agent sets up its CA and leaves at start)",
        .0.join(", "),
        if .0.len() == 1 { "it" } else { "them" }
    )]
    NeedsRestart(Vec<String>),
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    #[error("failed to install signal handlers: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Handover(#[from] crate::handover::HandoverError),
    #[error(
        "the running agent of this node has its {what} on {running}, this one would use {wanted}: stop it first to change that"
    )]
    HandoverMismatch {
        what: &'static str,
        running: String,
        wanted: String,
    },
}

/// Options of `mesh-agent run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where the catalog is.
    pub catalog: crate::catalog::Source,
    pub node: NodeName,
    pub outbound_port: u16,
    /// The admin endpoint's address (loopback only).
    pub admin: SocketAddr,
    /// Where to answer DNS for `.mesh`; `None`: no DNS.
    pub dns: Option<SocketAddr>,
    /// Where names outside `.mesh` go; `None`: the node's previous resolver.
    pub dns_upstream: Option<SocketAddr>,
    /// On SIGTERM/SIGINT, how long open connections may go on.
    pub drain: Duration,
    /// Most inbound TLS handshakes in progress at once.
    pub max_handshakes: usize,
    /// Most from one source address once half of `max_handshakes` are taken.
    pub max_handshakes_per_source: usize,
    /// Whether sk_lookup refuses connections to service ports from
    /// addresses that are not mesh nodes.
    pub only_mesh_sources: bool,
    /// The port agents exchange health on (`health::link`), the same for
    /// every agent of the mesh.
    pub link_port: u16,
    /// Whether to speak `mesh/2` (pooled, multiplexed) to other agents;
    /// else `mesh/1` only.
    pub multiplex: bool,
    /// Where bpffs is (or is to be mounted): the pins go under
    /// `<bpffs>/mesh/<node>`.
    pub bpffs: std::path::PathBuf,
    /// The web UI on the admin endpoint (`--ui on`), and who may write
    /// there; `None`: no UI (`--ui off`).
    pub ui: Option<crate::ui::UiOptions>,
}

/// What [`App::build`] sets up before the async runtime starts.
pub struct App {
    opts: RunOptions,
    /// Where the config comes from; followed for changes once running.
    catalog: Box<dyn Catalog>,
    /// Its contents at start.
    config: Config,
    cgroup2: Arc<Cgroup2>,
    listeners: Listeners,
    identities: Arc<Identities>,
    /// The running agent's sockets this one took over, if it was one.
    taken: Option<crate::handover::Taken>,
}

impl App {
    /// Loads the config, binds the listeners (or takes them over from the
    /// running agent of the node), loads the node CA and finds the cgroup2
    /// hierarchy. Runs before the async runtime starts: mounting cgroup2
    /// may need a single-threaded process.
    pub fn build(opts: RunOptions) -> Result<Self, AppError> {
        raise_fd_limit();
        let mut catalog: Box<dyn Catalog> = opts.catalog.open();
        let config = catalog.load()?;
        reload::check_node(&config, &opts.node)?;
        reload::check_link_port(&config, &opts.node, opts.link_port)?;
        // An agent of this node already runs: take its sockets over (an
        // upgrade) instead of binding them.
        let mut taken = crate::handover::take(&opts.node)?;
        let listeners = match &mut taken {
            Some(taken) => Listeners::taken(taken, &opts)?,
            None => Listeners::bind(&config, &opts)?,
        };
        if let Some(t) = &taken {
            info!(
                old_agent = t.pid,
                "taking over from the running agent of this node"
            );
        }
        let ca = node_ca(&config, &opts.node, true)?;
        let local = config.services_on(&opts.node).map(|s| s.name.clone());
        let identities =
            Identities::new(&config.mesh.trust_domain, ca, config.mesh.leaf_ttl, local)?;
        Ok(Self {
            cgroup2: Arc::new(Cgroup2::find_or_mount()?),
            listeners,
            identities: Arc::new(identities),
            catalog,
            config,
            taken,
            opts,
        })
    }

    /// Runs the agent until SIGINT, SIGTERM or a handover, then stops.
    pub async fn run(self) -> Result<(), AppError> {
        let signal = signals()?;
        let running = self.spawn().await?;
        let reason = running.stopped(signal).await;
        running.stop(reason).await;
        Ok(())
    }

    /// Enters the cgroups, starts the kernel side and every task; returns
    /// once the agent is ready (and told the agent it took over from).
    /// On failure the cgroups are left as they were found.
    pub async fn spawn(self) -> Result<Running, AppError> {
        let cg = self.cgroup2.clone();
        let cgroups = cgroups::Shared::new(Cgroups::enter(&cg, &self.config, &self.opts.node)?);
        tasks::start(self, cgroups.clone())
            .await
            .inspect_err(|_| cgroups.lock().leave(&cg))
    }
}

/// The node CA of `node` (issued first if `issue` and the root key is
/// there), checked against the roots.
fn node_ca(config: &Config, node: &NodeName, issue: bool) -> Result<NodeCa, AppError> {
    let ca = if issue {
        NodeCa::load_or_issue(config, node)?
    } else {
        NodeCa::load(config, node)?
    };
    crate::tls::verify::self_check(&ca, &config.mesh.trust_domain, node).map_err(|why| {
        AppError::NodeCa {
            node: node.to_string(),
            why,
        }
    })?;
    Ok(ca)
}

/// Completes on the first SIGTERM or SIGINT (handlers installed now).
fn signals() -> Result<impl Future<Output = ()>, AppError> {
    let mut sigterm =
        tokio::signal::unix::signal(SignalKind::terminate()).map_err(AppError::Signal)?;
    let mut sigint =
        tokio::signal::unix::signal(SignalKind::interrupt()).map_err(AppError::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = sigterm.recv() => info!("SIGTERM: stopping"),
            _ = sigint.recv() => info!("SIGINT: stopping"),
        }
    })
}

/// A proxy holds two sockets per connection: raise the soft limit on open
/// files to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        warn!(error = %e, soft, hard, "could not raise the open-files limit");
    }
}
