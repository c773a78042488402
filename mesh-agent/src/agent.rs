//! `mesh-agent run`: one agent for one node.
//!
//! Start-up order matters: the listeners first (binding the outbound port
//! also keeps a second agent for the same node from touching the first one's
//! cgroups), then cgroups (the programs need the agent's and the services'
//! cgroup ids), then the programs, attached last so no connection is
//! redirected before someone is listening.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{net::TcpListener, signal::unix::SignalKind};
use tracing::{info, warn};

use crate::{
    admin::{Admin, Readiness},
    catalog::{Catalog, CatalogError},
    cgroup::{self, Cgroup2, CgroupError},
    config::Config,
    denials::Denials,
    drain::Drain,
    ebpf::{EbpfError, Kernel, LoadParams, MapContents},
    health::{Board, link::Links},
    identity::{Identities, IdentityError, NodeCa},
    policy::Policy,
    proxy::{self, Inbound, Inputs, Outbound, admission::Admission},
    snapshot::{Publisher, Snapshot},
    telemetry::Telemetry,
    tls::{Tls, TlsError},
};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("node {node:?} is not declared in {path}")]
    UnknownNode { node: String, path: PathBuf },
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
        service: String,
        node: String,
        port: u16,
    },
    #[error(
        "{} changed: restart the agent to apply {} (an agent sets up its CA and leaves at start)",
        .0.join(", "),
        if .0.len() == 1 { "it" } else { "them" }
    )]
    NeedsRestart(Vec<String>),
    #[error("failed to read the netns cookie: {0}")]
    NetnsCookie(std::io::Error),
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
    pub node: String,
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
}

/// What `prepare` sets up before the async runtime starts.
pub struct Prepared {
    /// Where the config comes from; followed for changes once running.
    catalog: Box<dyn Catalog>,
    /// Its contents at start.
    config: Config,
    cgroup2: Cgroup2,
    listeners: Listeners,
    identities: Arc<Identities>,
    /// The running agent's sockets this one took over, if it was one.
    taken: Option<crate::handover::Taken>,
}

/// The agent's listening sockets (non-blocking, not yet registered with tokio).
struct Listeners {
    out4: std::net::TcpListener,
    out6: Option<std::net::TcpListener>,
    in4: std::net::TcpListener,
    in6: Option<std::net::TcpListener>,
    admin: std::net::TcpListener,
    /// `<node address>:<link port>`: other agents follow this one's health.
    link: std::net::TcpListener,
    dns: Option<std::net::UdpSocket>,
    /// DNS over TCP, on the UDP socket's address.
    dns_tcp: Option<std::net::TcpListener>,
}

/// Loads the config, binds the listeners and finds the cgroup2 hierarchy.
/// Runs before the async runtime starts: mounting cgroup2 may need a
/// single-threaded process.
pub fn prepare(opts: &RunOptions) -> Result<Prepared, AgentError> {
    raise_fd_limit();
    let mut catalog: Box<dyn Catalog> = opts.catalog.open();
    let config = catalog.load()?;
    if config.node(&opts.node).is_none() {
        return Err(AgentError::UnknownNode {
            node: opts.node.clone(),
            path: config.path.clone(),
        });
    }
    check_link_port(&config, &opts.node, opts.link_port)?;
    // An agent of this node already runs: take its sockets over (an
    // upgrade) instead of binding them.
    let mut taken = crate::handover::take(&opts.node)?;
    let listeners = match &mut taken {
        Some(taken) => Listeners::taken(taken, opts)?,
        None => Listeners::bind(&config, opts)?,
    };
    if let Some(t) = &taken {
        info!(
            old_agent = t.pid,
            "taking over from the running agent of this node"
        );
    }
    let ca = NodeCa::load_or_issue(&config, &opts.node)?;
    crate::tls::verify::self_check(&ca, &config.mesh.trust_domain, &opts.node).map_err(|why| {
        AgentError::NodeCa {
            node: opts.node.clone(),
            why,
        }
    })?;
    let left = ca
        .not_after()
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    if left < Duration::from_secs(30 * 24 * 3600) {
        warn!(
            node = %opts.node,
            days_left = left.as_secs() / 86400,
            "the node CA expires soon: issue a new one with `mesh-agent ca issue-node` (leaves cannot outlive it)"
        );
    }
    let local = config.services_on(&opts.node).map(|s| s.name.clone());
    let identities = Identities::new(&config.mesh.trust_domain, ca, config.mesh.leaf_ttl, local)?;
    Ok(Prepared {
        cgroup2: Cgroup2::find_or_mount()?,
        listeners,
        identities: Arc::new(identities),
        catalog,
        config,
        taken,
    })
}

impl Listeners {
    /// Binds every listener for `opts`.
    fn bind(config: &Config, opts: &RunOptions) -> Result<Self, AgentError> {
        let loopback4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let loopback6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        Ok(Self {
            out4: listen(SocketAddr::new(loopback4, opts.outbound_port))?,
            out6: listen_optional(SocketAddr::new(loopback6, opts.outbound_port))?,
            in4: listen(SocketAddr::new(loopback4, 0))?,
            in6: listen_optional(SocketAddr::new(loopback6, 0))?,
            admin: listen(crate::admin::check_addr(opts.admin)?)?,
            link: link_listener(config, opts)?,
            dns: dns_socket(opts),
            dns_tcp: dns_listener(opts),
        })
    }

    /// The sockets the running agent handed over; each must be where
    /// `opts` would bind it (a DNS socket is bound if it handed none).
    fn taken(taken: &mut crate::handover::Taken, opts: &RunOptions) -> Result<Self, AgentError> {
        let mut tcp = |name: &'static str| {
            taken.sockets.remove(name).map(|fd| {
                let l = std::net::TcpListener::from(fd);
                let _ = l.set_nonblocking(true);
                l
            })
        };
        let missing = |what: &'static str| AgentError::HandoverMismatch {
            what,
            running: "nothing".to_owned(),
            wanted: what.to_owned(),
        };
        let out4 = tcp("out4").ok_or_else(|| missing("outbound listener"))?;
        let out6 = tcp("out6");
        let in4 = tcp("in4").ok_or_else(|| missing("inbound listener"))?;
        let in6 = tcp("in6");
        let admin = tcp("admin").ok_or_else(|| missing("admin endpoint"))?;
        let link = tcp("link").ok_or_else(|| missing("link listener"))?;
        let dns_tcp = match (tcp("dns_tcp"), opts.dns) {
            (Some(l), Some(_)) => Some(l),
            (None, Some(_)) => dns_listener(opts),
            (_, None) => None,
        };
        let dns = match (taken.sockets.remove("dns"), opts.dns) {
            (Some(fd), Some(_)) => Some(std::net::UdpSocket::from(fd)),
            (None, Some(_)) => dns_socket(opts),
            (_, None) => None,
        };
        let same =
            |what: &'static str, running: std::io::Result<SocketAddr>, wanted: SocketAddr| {
                let running = running.map_err(|source| AgentError::Listen {
                    addr: wanted,
                    source,
                })?;
                if running == wanted {
                    return Ok(());
                }
                Err(AgentError::HandoverMismatch {
                    what,
                    running: running.to_string(),
                    wanted: wanted.to_string(),
                })
            };
        let loopback4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        same(
            "outbound listener",
            out4.local_addr(),
            SocketAddr::new(loopback4, opts.outbound_port),
        )?;
        same("admin endpoint", admin.local_addr(), opts.admin)?;
        let link_addr = link.local_addr();
        let link_port = link_addr.as_ref().map_or(0, SocketAddr::port);
        if link_port != opts.link_port {
            return Err(AgentError::HandoverMismatch {
                what: "link listener",
                running: format!("port {link_port}"),
                wanted: format!("port {}", opts.link_port),
            });
        }
        if let (Some(socket), Some(wanted)) = (&dns, opts.dns) {
            same("DNS socket", socket.local_addr(), wanted)?;
        }
        if let (Some(listener), Some(wanted)) = (&dns_tcp, opts.dns) {
            same("DNS TCP listener", listener.local_addr(), wanted)?;
        }
        Ok(Self {
            out4,
            out6,
            in4,
            in6,
            admin,
            link,
            dns,
            dns_tcp,
        })
    }

    /// Duplicates of every socket, by name, for the next agent.
    fn duplicates(&self) -> Vec<(String, std::os::fd::OwnedFd)> {
        use std::os::fd::AsFd;
        let mut all: Vec<(&str, std::os::fd::BorrowedFd<'_>)> = vec![
            ("out4", self.out4.as_fd()),
            ("in4", self.in4.as_fd()),
            ("admin", self.admin.as_fd()),
            ("link", self.link.as_fd()),
        ];
        if let Some(l) = &self.out6 {
            all.push(("out6", l.as_fd()));
        }
        if let Some(l) = &self.in6 {
            all.push(("in6", l.as_fd()));
        }
        if let Some(s) = &self.dns {
            all.push(("dns", s.as_fd()));
        }
        if let Some(l) = &self.dns_tcp {
            all.push(("dns_tcp", l.as_fd()));
        }
        all.into_iter()
            .filter_map(|(name, fd)| {
                fd.try_clone_to_owned()
                    .inspect_err(|e| warn!(socket = name, error = %e, "cannot keep this socket for a handover"))
                    .ok()
                    .map(|fd| (name.to_owned(), fd))
            })
            .collect()
    }
}

/// `<node address>:<link port>`: other agents follow this one's health.
fn link_listener(config: &Config, opts: &RunOptions) -> Result<std::net::TcpListener, AgentError> {
    let address = config
        .node(&opts.node)
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |n| n.address);
    crate::health::link::listen(address, opts.link_port).map_err(|source| AgentError::Listen {
        addr: SocketAddr::new(address, opts.link_port),
        source,
    })
}

/// The `.mesh` DNS socket, if asked for and free: a node may already run a
/// resolver there, and DNS is a convenience, not a reason to refuse to
/// protect the node.
fn dns_socket(opts: &RunOptions) -> Option<std::net::UdpSocket> {
    let addr = opts.dns?;
    crate::dns::bind(addr)
        .inspect_err(|e| warn!(error = %e, "no .mesh DNS on this node"))
        .ok()
}

/// The `.mesh` DNS listener for TCP (clients ask again over TCP after a
/// truncated UDP reply), if asked for and free.
fn dns_listener(opts: &RunOptions) -> Option<std::net::TcpListener> {
    let addr = opts.dns?;
    crate::dns::bind_tcp(addr)
        .inspect_err(|e| warn!(error = %e, "no .mesh DNS over TCP on this node"))
        .ok()
}

/// Runs the agent until SIGINT or SIGTERM, then detaches and cleans up.
pub async fn run(opts: RunOptions, prepared: Prepared) -> Result<(), AgentError> {
    let Prepared {
        catalog,
        config,
        cgroup2: cg,
        listeners,
        identities,
        taken,
    } = prepared;
    let mut sigterm =
        tokio::signal::unix::signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let mut sigint =
        tokio::signal::unix::signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;

    let cg = Arc::new(cg);
    let cgroups = Arc::new(std::sync::Mutex::new(Cgroups::enter(
        &cg, &config, &opts.node,
    )?));
    let result = serve(
        &cg,
        &cgroups,
        (catalog, config),
        (listeners, taken),
        identities,
        &opts,
        async {
            tokio::select! {
                _ = sigterm.recv() => info!("SIGTERM: stopping"),
                _ = sigint.recv() => info!("SIGINT: stopping"),
            }
        },
    )
    .await;
    match result {
        // The next agent uses the cgroups.
        Ok(Ending::HandedOver) => Ok(()),
        Ok(Ending::Stopped) => {
            cgroups.lock().unwrap_or_else(|e| e.into_inner()).leave(&cg);
            Ok(())
        }
        Err(e) => {
            cgroups.lock().unwrap_or_else(|e| e.into_inner()).leave(&cg);
            Err(e)
        }
    }
}

/// How `serve` ended.
enum Ending {
    /// SIGTERM or SIGINT: everything removed.
    Stopped,
    /// The next agent of the node took over: it keeps the pins, cgroups
    /// and registration.
    HandedOver,
}

async fn serve(
    cg: &Arc<Cgroup2>,
    cgroups: &Arc<std::sync::Mutex<Cgroups>>,
    (catalog, config): (Box<dyn Catalog>, Config),
    (listeners, taken): (Listeners, Option<crate::handover::Taken>),
    identities: Arc<Identities>,
    opts: &RunOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Ending, AgentError> {
    let (publisher, snapshots) = Snapshot::new(config).publish();
    let publisher = Arc::new(publisher);
    let snapshot = publisher.borrow().clone();
    // Runs this node's checks; every agent's view of every instance.
    let board = Board::new(&opts.node, publisher.clone());
    board.sync(&snapshot.config);
    if let Some(taken) = &taken {
        board.adopt(&taken.reports, &taken.remote);
    }
    // For the next agent of this node (an upgrade).
    let offer = crate::handover::Offer::new(&opts.node, listeners.duplicates(), board.clone());
    let handed = offer.handed.clone();
    let tls = Tls::with_multiplex(
        identities.clone(),
        Arc::new(snapshots.clone()),
        opts.multiplex,
    )?;
    let tokio_listener = |l: std::net::TcpListener| {
        let addr = l
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        TcpListener::from_std(l).map_err(|source| AgentError::Listen { addr, source })
    };
    let out4 = tokio_listener(listeners.out4)?;
    let out6 = listeners.out6.map(tokio_listener).transpose()?;
    let in4 = tokio_listener(listeners.in4)?;
    let in6 = listeners.in6.map(tokio_listener).transpose()?;
    let admin = tokio_listener(listeners.admin)?;
    let link_listener = tokio_listener(listeners.link)?;
    let dns_tcp = listeners.dns_tcp.map(tokio_listener).transpose()?;
    let dns = listeners
        .dns
        .map(tokio::net::UdpSocket::from_std)
        .transpose()
        .map_err(|source| AgentError::Listen {
            addr: opts
                .dns
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 53))),
            source,
        })?;

    // The ids the last agent of this node gave, if it left them pinned.
    let pins = crate::ebpf::pins::Pins::open(&opts.bpffs, &opts.node)?;
    let ids = Arc::new(proxy::ServiceIds::seeded(
        crate::ebpf::pinned_service_names(&pins),
    ));
    let (contents, agent_cgroup) = {
        let cgroups = cgroups.lock().unwrap_or_else(|e| e.into_inner());
        (
            contents(
                &snapshot.config,
                &opts.node,
                &ids,
                &cgroups,
                &snapshot.policy,
            ),
            cgroups.agent_id,
        )
    };
    let params = LoadParams {
        netns_cookie: netns_cookie(&in4)?,
        agent_cgroup,
        outbound_port: opts.outbound_port,
        check_peers: opts.only_mesh_sources,
        admin_port: opts.admin.port(),
    };
    let kernel = Arc::new(Kernel::start(
        &params,
        &contents,
        &in4,
        in6.as_ref(),
        cg.root(),
        &pins,
    )?);
    // Other agents' health, and ours to them.
    let links = Links::new(
        &opts.node,
        tls.link(),
        board.clone(),
        opts.link_port,
        opts.only_mesh_sources.then(|| snapshots.clone()),
    );
    links.sync(&snapshot.config);
    let telemetry = Arc::new(Telemetry::default());
    let drain = Drain::default();
    let admission = Admission::new(opts.max_handshakes, opts.max_handshakes_per_source);
    let pi = Inputs::new(
        opts.node.clone(),
        snapshots.clone(),
        tls,
        telemetry.clone(),
        drain.clone(),
    );
    let denials = Denials::new(
        kernel.clone(),
        ids.clone(),
        snapshots.clone(),
        telemetry.clone(),
    );

    // One for both outbound listeners: what it knows of each instance.
    let balancer = Arc::new(crate::proxy::balance::Balancer::default());
    let mut tasks = tokio::task::JoinSet::new();
    // Instances back from critical are no longer skipped for failed dials;
    // instances that left the catalog are forgotten.
    tasks.spawn(crate::proxy::balance::follow_health(
        balancer.clone(),
        snapshots.clone(),
    ));
    // One for both outbound listeners: connections to other agents.
    let pool = Arc::new(crate::proxy::pool::Pool::default());
    tasks.spawn(pool.clone().sweep_forever());
    for l in [Some(out4), out6].into_iter().flatten() {
        let outbound = Outbound::new(
            l,
            pi.clone(),
            kernel.clone(),
            ids.clone(),
            balancer.clone(),
            pool.clone(),
        );
        tasks.spawn(outbound.run());
    }
    // One registry for both: a stream's move may come in on either.
    let moves = Arc::new(crate::proxy::inbound::Moves::default());
    for l in [Some(in4), in6].into_iter().flatten() {
        tasks.spawn(Inbound::new(l, pi.clone(), admission.clone(), moves.clone()).run());
    }
    tasks.spawn(links.clone().serve(link_listener));
    // With etcd: this node's registration, and which nodes are registered.
    let registration = match &opts.catalog {
        crate::catalog::Source::Etcd(options) => {
            let r = crate::catalog::registry::Registration::new(
                options.clone(),
                &opts.node,
                board.clone(),
                snapshots.clone(),
            );
            tasks.spawn(r.clone().keep());
            tasks.spawn(r.clone().follow());
            Some(r)
        }
        crate::catalog::Source::File(_) => None,
    };
    tasks.spawn(sweep(kernel.clone()));
    if let Some(events) = kernel.denial_events()? {
        tasks.spawn(denials.clone().report(events));
    }
    let reload = Reload {
        node: opts.node.clone(),
        publisher,
        board: board.clone(),
        links: links.clone(),
        link_port: opts.link_port,
        cg: cg.clone(),
        cgroups: cgroups.clone(),
        identities: identities.clone(),
        ids: ids.clone(),
        kernel: kernel.clone(),
    };
    let reach = catalog.reach();
    tasks.spawn(follow(catalog, reload));
    let readiness = Arc::new(Readiness::default());
    let admin = Admin::new(
        admin,
        crate::admin::Sources {
            node: opts.node.clone(),
            readiness: readiness.clone(),
            snapshot: snapshots.clone(),
            identities: identities.clone(),
            kernel: kernel.clone(),
            admission,
            denials,
            telemetry,
            board: board.clone(),
            ids: ids.clone(),
            balancer,
            pool,
            catalog: reach,
        },
    );
    // Not in `tasks`: it answers through the drain (`/ready`: 503).
    let admin_task = tokio::spawn(admin.run());
    if let Some(addr) = opts.dns {
        let upstream = opts
            .dns_upstream
            .or_else(|| crate::dns::previous_resolver(addr));
        info!(%addr, upstream = ?upstream, udp = dns.is_some(), tcp = dns_tcp.is_some(), "answering DNS for .mesh");
        if let Some(listener) = dns_tcp {
            let limits = crate::dns::TcpLimits::default();
            tasks.spawn(crate::dns::serve_tcp(
                listener,
                snapshots.clone(),
                upstream,
                limits,
            ));
        }
        if let Some(socket) = dns {
            tasks.spawn(crate::dns::serve(socket, snapshots, upstream));
        }
    }
    tasks.spawn(identities.clone().renew_forever());
    tasks.spawn(offer.serve(kernel.clone()));
    for (service, leaf) in identities.all() {
        info!(%service, spiffe_id = %leaf.spiffe_id, serial = %leaf.serial, "leaf issued");
    }
    if let Some(r) = &registration {
        // Ready once other agents can see this node (an unregistered node's
        // instances take no traffic); etcd down: ready anyway, the
        // registration follows when it returns.
        if tokio::time::timeout(Duration::from_secs(5), r.first())
            .await
            .is_err()
        {
            warn!(
                "not registered in etcd, or the registrations not listed, yet; serving meanwhile"
            );
        }
    }
    readiness.ready();
    if let Some(taken) = taken {
        let old = taken.pid;
        match taken.ready() {
            Ok(()) => info!(
                old_agent = old,
                "took over: the old agent stops accepting and drains"
            ),
            Err(e) => {
                warn!(error = %e, "the old agent did not hear this one is ready; both serve until it stops")
            }
        }
    }
    info!(
        node = %opts.node,
        catalog = %opts.catalog,
        outbound_port = opts.outbound_port,
        admin = %opts.admin,
        services = contents.services.len(),
        local = contents.cgroups.len(),
        "agent ready"
    );
    let mut ending = tokio::select! {
        () = stop => Ending::Stopped,
        () = handed.notified() => Ending::HandedOver,
    };
    if matches!(ending, Ending::Stopped) && !kernel.owns_pins() {
        // Another agent of this node started meanwhile and adopted the
        // programs: leave it what it uses.
        info!(
            "another agent of this node runs the kernel programs now: leaving them, the cgroups and the registration to it"
        );
        ending = Ending::HandedOver;
    }
    readiness.draining();
    // Stop accepting. Stopped: the listeners close, so new connections are
    // refused at once (the programs still redirect to the closed port),
    // never hang. Handed over: the next agent holds them and accepts.
    tasks.shutdown().await;
    if let Ending::HandedOver = ending {
        // Its admin endpoint answers on the same socket.
        admin_task.abort();
    }
    if let (Some(r), Ending::Stopped) = (&registration, &ending) {
        r.leave().await;
    }
    drain.stop();
    board.stop();
    links.stop();
    drain.wait(opts.drain).await;
    admin_task.abort();
    let _ = admin_task.await;
    if let Ending::HandedOver = ending {
        return Ok(ending);
    }
    // A deliberate stop opens the node: unpinned, the programs are
    // detached when the last reference to the kernel goes (connection
    // tasks may still hold it), at the latest when the process exits.
    match kernel.unpin() {
        Ok(true) => {}
        Ok(false) => info!("another agent of this node runs the kernel programs now: leaving them"),
        Err(e) => {
            warn!(error = %e, "could not remove the pinned programs; `mesh-agent down --node {}` does", opts.node)
        }
    }
    if let Ok(kernel) = Arc::try_unwrap(kernel) {
        kernel.stop();
    }
    Ok(ending)
}

/// The cgroups this agent uses: its own, and one per local service.
struct Cgroups {
    /// The agent's own cgroup (`/mesh/<node>/_agent`) and its id.
    agent: PathBuf,
    agent_id: u64,
    /// Where the agent came from; it moves back there on exit.
    origin: Option<PathBuf>,
    /// Per local service: its cgroup path, id, and whether it is ours
    /// (the default path under /mesh, which we remove when done).
    services: std::collections::BTreeMap<String, (PathBuf, u64, bool)>,
    /// Our cgroups of services that left the config, to remove at exit if
    /// they were still busy then.
    gone: Vec<PathBuf>,
}

impl Cgroups {
    fn enter(cg: &Cgroup2, config: &Config, node: &str) -> Result<Self, CgroupError> {
        let origin = cgroup::current();
        let agent = cgroup::agent_path(node);
        let agent_id = cg.create(&agent)?;
        cg.join(&agent, std::process::id())?;
        let mut this = Self {
            agent,
            agent_id,
            origin,
            services: Default::default(),
            gone: Vec::new(),
        };
        this.sync(cg, config, node)?;
        Ok(this)
    }

    /// Creates the cgroups of `node`'s services that are missing and lets go
    /// of those of services no longer there (removing ours, where empty).
    fn sync(&mut self, cg: &Cgroup2, config: &Config, node: &str) -> Result<(), CgroupError> {
        let mut want = std::collections::BTreeMap::new();
        for s in config.services_on(node) {
            let (path, ours) = cgroup::service_path(s, node);
            let id = cg.create(&path)?;
            want.insert(s.name.clone(), (path, id, ours));
        }
        for (name, (path, _, ours)) in &self.services {
            if *ours && want.get(name).is_none_or(|(p, _, _)| p != path) {
                cg.remove_empty(path, Path::new("/"));
                self.gone.push(path.clone());
            }
        }
        self.services = want;
        Ok(())
    }

    /// Moves the agent back to where it came from and removes the cgroups it
    /// created, where empty.
    fn leave(&self, cg: &Cgroup2) {
        let back = self.origin.clone().unwrap_or_else(|| PathBuf::from("/"));
        if let Err(e) = cg.join(&back, std::process::id()) {
            warn!(error = %e, "could not leave the agent cgroup");
        }
        cg.remove_empty(&self.agent, Path::new("/"));
        for (path, _, ours) in self.services.values() {
            if *ours {
                cg.remove_empty(path, Path::new("/"));
            }
        }
        for path in &self.gone {
            cg.remove_empty(path, Path::new("/"));
        }
    }
}

/// Everything the config-derived kernel maps hold for `node`: mesh
/// destinations, local callers by cgroup, local ports, the pairs the
/// intentions deny (every local caller x every meshed service), and the
/// nodes' addresses.
fn contents(
    config: &Config,
    node: &str,
    ids: &proxy::ServiceIds,
    cgroups: &Cgroups,
    policy: &Policy,
) -> MapContents {
    let mut c = MapContents {
        peers: config.nodes.iter().map(|n| n.address).collect(),
        ..MapContents::default()
    };
    for s in &config.services {
        let id = ids.id(&s.name);
        // Public services are reached directly, not through the mesh.
        if s.public {
            continue;
        }
        c.services.push((SocketAddr::new(s.vip, s.port), id));
        // The catalog address of every instance names the service.
        for host in config.instances(s) {
            c.services.push((SocketAddr::new(host.address, s.port), id));
        }
        if s.hosted_on(node) {
            c.local_ports.push((s.port, id));
        }
    }
    for (name, (_, cgroup_id, _)) in &cgroups.services {
        c.cgroups.push((*cgroup_id, ids.id(name)));
    }
    for src in config.services_on(node) {
        for dst in config.services.iter().filter(|d| !d.public) {
            if !policy.decide(&src.name, &dst.name).allowed() {
                c.denied.insert((ids.id(&src.name), ids.id(&dst.name)));
            }
        }
    }
    c.names = ids.all();
    c
}

/// Applies every valid change of the catalog without a restart (see
/// [`Reload::apply`]); a change that cannot be applied is logged and the
/// last good config stays in force.
async fn follow(mut catalog: Box<dyn Catalog>, reload: Reload) {
    loop {
        let new = catalog.changed().await;
        if let Err(e) = reload.apply(new) {
            warn!(error = %e, "config change not applied, keeping the last good config");
        }
    }
}

/// What a reload changes: the snapshot, and its side effects (cgroups,
/// leaves, kernel maps).
struct Reload {
    node: String,
    /// The writer of the snapshot channel's config (the board writes its
    /// health).
    publisher: Arc<Publisher>,
    /// Restarts the checks that changed.
    board: Arc<Board>,
    /// Follows the agents of the nodes that came, stops following those
    /// that went.
    links: Arc<Links>,
    /// No local service may take it (sk_lookup would steer it away).
    link_port: u16,
    cg: Arc<Cgroup2>,
    cgroups: Arc<std::sync::Mutex<Cgroups>>,
    identities: Arc<Identities>,
    ids: Arc<proxy::ServiceIds>,
    kernel: Arc<Kernel>,
}

impl Reload {
    /// Makes a new config the one in force: cgroups and leaves for services
    /// that came, dropped for those that went; then one new [`Snapshot`]
    /// (config, intentions, names, hosts) is published; then the kernel
    /// maps (adds before removes). Handlers see the new snapshot before the
    /// kernel sends them connections for new services.
    fn apply(&self, new: Config) -> Result<(), AgentError> {
        let node = &self.node;
        if new.node(node).is_none() {
            return Err(AgentError::UnknownNode {
                node: node.clone(),
                path: new.path.clone(),
            });
        }
        check_link_port(&new, node, self.link_port)?;
        let changed = self
            .publisher
            .borrow()
            .config
            .mesh
            .restart_needed(&new.mesh);
        if !changed.is_empty() {
            return Err(AgentError::NeedsRestart(changed));
        }
        let local: Vec<String> = new.services_on(node).map(|s| s.name.clone()).collect();
        let mut cgroups = self.cgroups.lock().unwrap_or_else(|e| e.into_inner());
        cgroups.sync(&self.cg, &new, node)?;
        self.identities.sync(&local)?;
        // The one swap (keeping the health in force: the health board
        // publishes through the same channel). Live connections re-decide
        // their pair on this.
        self.publisher
            .send_modify(|current| *current = Arc::new(current.reloaded(new)));
        // Only health can have changed since, never the config.
        let snapshot = self.publisher.borrow().clone();
        let contents = contents(
            &snapshot.config,
            node,
            &self.ids,
            &cgroups,
            &snapshot.policy,
        );
        self.kernel.update(&contents)?;
        self.board.sync(&snapshot.config);
        self.links.sync(&snapshot.config);
        info!(
            local_services = local.len(),
            denied_pairs = contents.denied.len(),
            "config applied"
        );
        Ok(())
    }
}

/// Fails if a service of `node` listens on `port`, the link port: sk_lookup
/// would steer other agents' links to it to the inbound listener.
fn check_link_port(config: &Config, node: &str, port: u16) -> Result<(), AgentError> {
    match config.services_on(node).find(|s| s.port == port) {
        Some(s) => Err(AgentError::LinkPort {
            service: s.name.clone(),
            node: node.to_owned(),
            port,
        }),
        None => Ok(()),
    }
}

/// Drops stale `CONNS` records now and then (see `Kernel::sweep_stale`).
async fn sweep(kernel: Arc<Kernel>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        let n = kernel.sweep_stale();
        if n > 0 {
            tracing::debug!(records = n, "dropped stale connection records");
        }
    }
}

/// A non-blocking listening socket on `addr`.
fn listen(addr: SocketAddr) -> Result<std::net::TcpListener, AgentError> {
    let l = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| AgentError::Listen { addr, source })?;
    Ok(l)
}

/// Like `listen`, but a missing IPv6 loopback is not an error.
fn listen_optional(addr: SocketAddr) -> Result<Option<std::net::TcpListener>, AgentError> {
    match listen(addr) {
        Ok(l) => Ok(Some(l)),
        Err(AgentError::Listen { source, .. })
            if source.raw_os_error() == Some(libc::EADDRNOTAVAIL) =>
        {
            warn!(%addr, "IPv6 loopback unavailable; IPv6 is not meshed on this node");
            Ok(None)
        }
        Err(e) => Err(e),
    }
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

/// The cookie of the network namespace `socket` lives in.
fn netns_cookie(socket: &impl std::os::fd::AsRawFd) -> Result<u64, AgentError> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes given, and
    // the fd is an open socket for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(AgentError::NetnsCookie(std::io::Error::last_os_error()));
    }
    Ok(cookie)
}
