//! The running agent: its components, the tasks that serve, and the stop.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, UdpSocket},
    sync::Notify,
    task::{JoinHandle, JoinSet},
};
use tracing::{info, warn};

use super::{App, AppError, RunOptions, cgroups, enroll, kernel, listeners::Sockets, reload};
use crate::{
    admin::{self, Admin, Caller, Readiness, Reply, Routes, Status},
    catalog::{Reach, registry::Registration},
    cgroup::Cgroup2,
    containers::Containers,
    denials::Denials,
    drain::Drain,
    ebpf::Kernel,
    handover::{Offer, Taken},
    health::{self, Board, link::Links},
    identity::Identities,
    peers::Peers,
    proxy::{
        Inbound, Inputs, Outbound, ServiceIds,
        admission::Admission,
        balance::{self, Balancer},
        inbound::Moves,
        outbound::Origin,
        pool::Pool,
    },
    snapshot::{Publisher, Snapshot, Watch},
    telemetry::{Registry, Telemetry},
    tls::Tls,
    ui::{Guard, Ui},
};

/// Why a running agent stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM or SIGINT: everything removed.
    Requested,
    /// The next agent of the node took over: it keeps the pins, cgroups
    /// and registration.
    HandedOver,
}

/// A running agent, ready; [`Running::stop`] ends it.
pub struct Running {
    opts: RunOptions,
    cg: Arc<Cgroup2>,
    cgroups: cgroups::Shared,
    /// Every serving task but the admin endpoint's.
    tasks: JoinSet<()>,
    /// Apart: it answers through the drain (`/ready`: 503).
    admin: JoinHandle<()>,
    registration: Option<Arc<Registration>>,
    readiness: Arc<Readiness>,
    /// Told once the next agent of the node is ready on the sockets.
    handed: Arc<Notify>,
    drain: Drain,
    board: Arc<Board>,
    links: Arc<Links>,
    kernel: Arc<Kernel>,
}

/// Between two harvests of the kernel's denial counts into the telemetry,
/// so the traffic that the links and the web UI show is at most this old.
const HARVEST: Duration = Duration::from_millis(500);

/// The handles the agent's tasks share, built once at start.
struct Parts {
    snapshots: Watch,
    publisher: Arc<Publisher>,
    board: Arc<Board>,
    links: Arc<Links>,
    /// The other agents as heard over the links (the web UI's nodes and
    /// topology).
    peers: Arc<Peers>,
    identities: Arc<Identities>,
    kernel: Arc<Kernel>,
    ids: Arc<ServiceIds>,
    telemetry: Arc<Telemetry>,
    drain: Drain,
    admission: Arc<Admission>,
    denials: Denials,
    /// One for both outbound listeners: what it knows of each instance.
    balancer: Arc<Balancer>,
    /// One for both outbound listeners: connections to other agents.
    pool: Arc<Pool>,
    inputs: Arc<Inputs>,
    /// The local services' containers being served.
    containers: Arc<Containers>,
    /// Their sockets, for the next agent.
    handed: enroll::Handed,
}

/// Starts everything of `app` in order (see the module docs of `app`) and
/// marks the agent ready.
pub(super) async fn start(app: App, cgroups: cgroups::Shared) -> Result<Running, AppError> {
    let App {
        opts,
        catalog,
        config,
        cgroup2: cg,
        listeners,
        identities,
        mut taken,
    } = app;
    // The containers' sockets the previous agent held, for `enroll`.
    let adopted = taken
        .as_mut()
        .map(|t| std::mem::take(&mut t.containers))
        .unwrap_or_default();
    let ca_files = super::trust::follow(config.clone(), identities.clone());
    let built = build(
        &opts,
        config,
        listeners,
        identities,
        taken.as_ref(),
        &cg,
        &cgroups,
    )?;
    let Built {
        parts,
        offer,
        sockets,
        map_services,
        map_local,
    } = built;
    let handed = offer.handed.clone();
    let mut tasks = JoinSet::new();
    parts.spawn_proxies(
        &mut tasks,
        [Some(sockets.out4), sockets.out6],
        [Some(sockets.in4), sockets.in6],
    );
    tasks.spawn(parts.links.clone().serve(sockets.link));
    let registration = parts.spawn_registration(&opts, &mut tasks);
    parts.spawn_kernel_tasks(&mut tasks)?;
    let reach = catalog.reach();
    tasks.spawn(reload::follow(catalog, parts.reload(&opts, &cg, &cgroups)));
    let readiness = Arc::new(Readiness::default());
    let admin = parts.admin(&opts, sockets.admin, readiness.clone(), reach)?;
    let admin = tokio::spawn(admin.run());
    parts.spawn_dns(&opts, &mut tasks, sockets.dns, sockets.dns_tcp);
    parts.spawn_enroll(&opts, &mut tasks, &cg, &cgroups, adopted)?;
    tasks.spawn(parts.identities.clone().renew_forever());
    tasks.spawn(parts.identities.clone().warn_expiry_forever());
    tasks.spawn(ca_files);
    tasks.spawn(offer.serve(parts.kernel.clone()));
    for (service, leaf) in parts.identities.all() {
        info!(%service, spiffe_id = %leaf.spiffe_id, serial = %leaf.serial, "leaf issued");
    }
    ready(registration.as_deref(), &readiness, taken).await;
    info!(
        node = %opts.node,
        catalog = %opts.catalog,
        outbound_port = opts.outbound_port,
        admin = %opts.admin,
        services = map_services,
        local = map_local,
        "agent ready"
    );
    Ok(Running {
        cg,
        cgroups,
        tasks,
        admin,
        registration,
        readiness,
        handed,
        drain: parts.drain,
        board: parts.board,
        links: parts.links,
        kernel: parts.kernel,
        opts,
    })
}

/// What [`build`] makes: the parts, the offer to the next agent, the
/// sockets in tokio, and how many services and local cgroups the maps hold.
struct Built {
    parts: Parts,
    offer: Offer,
    sockets: Sockets,
    map_services: usize,
    map_local: usize,
}

/// The snapshot, health board, handover offer, TLS, kernel side and links,
/// in that order, and the handles the tasks share.
fn build(
    opts: &RunOptions,
    config: crate::config::Config,
    listeners: super::listeners::Listeners,
    identities: Arc<Identities>,
    taken: Option<&Taken>,
    cg: &Cgroup2,
    cgroups: &cgroups::Shared,
) -> Result<Built, AppError> {
    let (publisher, snapshots) = Snapshot::new(config).publish();
    let publisher = Arc::new(publisher);
    let snapshot = publisher.borrow().clone();
    // Runs this node's checks; every agent's view of every instance.
    let containers = Arc::new(Containers::default());
    let board = Board::new(&opts.node, publisher.clone(), containers.clone());
    board.sync(&snapshot.config);
    if let Some(taken) = taken {
        board.adopt(&taken.reports, &taken.remote);
    }
    // For the next agent of this node (an upgrade).
    let handed = enroll::Handed::default();
    let offer = {
        let handed = handed.clone();
        Offer::new(&opts.node, listeners.duplicates(), board.clone())
            .with_containers(move || handed.duplicates())
    };
    let tls = Tls::with_multiplex(
        identities.clone(),
        Arc::new(snapshots.clone()),
        opts.multiplex,
    )?;
    let sockets = listeners.register(opts)?;
    let kernel::Started {
        kernel,
        ids,
        contents,
    } = kernel::start(opts, &snapshot, cg, cgroups, &sockets)?;
    let telemetry = Arc::new(Telemetry::default());
    // Other agents' health, versions and traffic, and ours to them.
    let peers = Peers::new(telemetry.clone(), Some(identities.clone()));
    let links = Links::new(
        &opts.node,
        tls.link(),
        board.clone(),
        peers.clone(),
        opts.link_port,
        opts.only_mesh_sources.then(|| snapshots.clone()),
    );
    links.sync(&snapshot.config);
    let drain = Drain::default();
    let inputs = Inputs::new(
        opts.node.clone(),
        snapshots.clone(),
        tls,
        telemetry.clone(),
        drain.clone(),
        containers.clone(),
    );
    let denials = Denials::new(
        kernel.clone(),
        ids.clone(),
        snapshots.clone(),
        telemetry.clone(),
        containers.clone(),
    );
    let parts = Parts {
        admission: Admission::new(opts.max_handshakes, opts.max_handshakes_per_source),
        balancer: Arc::new(Balancer::default()),
        pool: Arc::new(Pool::default()),
        snapshots,
        publisher,
        board,
        links,
        peers,
        identities,
        kernel,
        ids,
        telemetry,
        drain,
        denials,
        inputs,
        containers,
        handed,
    };
    Ok(Built {
        parts,
        offer,
        sockets,
        map_services: contents.services.len(),
        map_local: contents.cgroups.len(),
    })
}

/// Marks the agent ready once registered (with etcd; 5 s at most) and tells
/// the agent it took over from, if any.
async fn ready(registration: Option<&Registration>, readiness: &Readiness, taken: Option<Taken>) {
    if let Some(r) = registration {
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
}

impl Parts {
    /// The outbound and inbound proxies on their listeners.
    fn spawn_proxies(
        &self,
        tasks: &mut JoinSet<()>,
        outbound: [Option<TcpListener>; 2],
        inbound: [Option<TcpListener>; 2],
    ) {
        // Instances back from critical are no longer skipped for failed
        // dials; instances that left the catalog are forgotten.
        tasks.spawn(balance::follow_health(
            self.balancer.clone(),
            self.snapshots.clone(),
        ));
        tasks.spawn(self.pool.clone().sweep_forever());
        for l in outbound.into_iter().flatten() {
            let origin = Origin {
                netns: self.kernel.netns_cookie(),
                container: None,
            };
            let outbound = Outbound::new(
                l,
                self.inputs.clone(),
                self.kernel.clone(),
                self.ids.clone(),
                self.balancer.clone(),
                self.pool.clone(),
                origin,
            );
            tasks.spawn(outbound.run());
        }
        // One registry for both: a stream's move may come in on either.
        let moves = Arc::new(Moves::default());
        for l in inbound.into_iter().flatten() {
            let inbound = Inbound::new(
                l,
                self.inputs.clone(),
                self.admission.clone(),
                moves.clone(),
            );
            tasks.spawn(inbound.run());
        }
    }

    /// With etcd: this node's registration, and which nodes are registered.
    fn spawn_registration(
        &self,
        opts: &RunOptions,
        tasks: &mut JoinSet<()>,
    ) -> Option<Arc<Registration>> {
        let crate::catalog::Source::Etcd(options) = &opts.catalog else {
            return None;
        };
        let r = Registration::new(
            options.clone(),
            self.board.node(),
            self.board.clone(),
            self.snapshots.clone(),
        );
        tasks.spawn(r.clone().keep());
        tasks.spawn(r.clone().follow());
        Some(r)
    }

    /// The sweep of stale connection records and the denial reports.
    fn spawn_kernel_tasks(&self, tasks: &mut JoinSet<()>) -> Result<(), AppError> {
        tasks.spawn(kernel::sweep(self.kernel.clone()));
        if let Some(events) = self.kernel.denial_events()? {
            tasks.spawn(self.denials.clone().report(events));
        }
        tasks.spawn(self.denials.clone().harvest_every(HARVEST));
        Ok(())
    }

    /// What a reload changes.
    fn reload(
        &self,
        opts: &RunOptions,
        cg: &Arc<Cgroup2>,
        cgroups: &cgroups::Shared,
    ) -> reload::Reload {
        reload::Reload {
            node: self.board.node().clone(),
            publisher: self.publisher.clone(),
            board: self.board.clone(),
            links: self.links.clone(),
            link_port: opts.link_port,
            cg: cg.clone(),
            cgroups: cgroups.clone(),
            identities: self.identities.clone(),
            ids: self.ids.clone(),
            kernel: self.kernel.clone(),
        }
    }

    /// The admin endpoint on `listener`: the routes and metrics each
    /// component registers.
    fn admin(
        &self,
        opts: &RunOptions,
        listener: TcpListener,
        readiness: Arc<Readiness>,
        catalog: Arc<Reach>,
    ) -> Result<Admin, AppError> {
        let mut metrics = Registry::default();
        self.telemetry.register(&mut metrics);
        self.denials.register_metrics(&mut metrics);
        self.identities.register_metrics(&mut metrics);
        self.kernel
            .register_metrics(&mut metrics, self.telemetry.clone());
        self.admission.register_metrics(&mut metrics);
        self.pool.register_metrics(&mut metrics);
        self.balancer
            .register_metrics(&mut metrics, self.snapshots.clone());
        catalog.register_metrics(&mut metrics);
        self.containers.register_metrics(&mut metrics);
        let mut routes = Routes::default();
        metrics.serve_at(&mut routes);
        admin::routes(
            &mut routes,
            self.board.node(),
            readiness,
            self.snapshots.clone(),
        );
        health::doc::routes(&mut routes, &self.board);
        let status = Status {
            node: opts.node.to_string(),
            identities: self.identities.clone(),
            denials: self.denials.clone(),
            telemetry: self.telemetry.clone(),
            snapshots: self.snapshots.clone(),
            catalog: catalog.clone(),
            containers: self.containers.clone(),
        };
        routes.any("/status", move |_| Reply::document(&status.document()));
        admin::trust::routes(
            &mut routes,
            opts.node.clone(),
            self.identities.clone(),
            self.peers.clone(),
            self.snapshots.clone(),
        );
        if let Some(options) = &opts.ui {
            Ui {
                node: opts.node.clone(),
                guard: Guard::new(options)?,
                store: options.store(&opts.catalog),
                reach: catalog,
                snapshots: self.snapshots.clone(),
                peers: self.peers.clone(),
                telemetry: self.telemetry.clone(),
            }
            .routes(&mut routes);
        }
        let (kernel, ids) = (self.kernel.clone(), self.ids.clone());
        let callers = move |peer, local| {
            let record = kernel.take_orig(peer, local, kernel.netns_cookie())?;
            (record.dst_service == mesh_common::ADMIN_CALLER).then(|| Caller {
                uid: record.uid,
                service: ids.name(record.src_service),
            })
        };
        Ok(Admin::new(listener, routes, Box::new(callers)))
    }

    /// The enrollment of containers (`enroll`).
    fn spawn_enroll(
        &self,
        opts: &RunOptions,
        tasks: &mut JoinSet<()>,
        cg: &Cgroup2,
        cgroups: &cgroups::Shared,
        adopted: Vec<(crate::handover::SocketName, std::os::fd::OwnedFd)>,
    ) -> Result<(), AppError> {
        let serve = enroll::Serve {
            inputs: self.inputs.clone(),
            kernel: self.kernel.clone(),
            ids: self.ids.clone(),
            balancer: self.balancer.clone(),
            pool: self.pool.clone(),
            snapshots: self.snapshots.clone(),
            outbound_port: opts.outbound_port,
            dns: opts.dns.map(|addr| (addr.port(), dns_upstream(opts, addr))),
        };
        let enroll = enroll::Enroll::new(
            self.containers.clone(),
            cgroups.clone(),
            cg.root().to_owned(),
            serve,
            adopted,
            self.handed.clone(),
        )?;
        tasks.spawn(enroll.run());
        Ok(())
    }

    /// `.mesh` DNS on UDP and TCP, where asked for and bound.
    fn spawn_dns(
        &self,
        opts: &RunOptions,
        tasks: &mut JoinSet<()>,
        dns: Option<UdpSocket>,
        dns_tcp: Option<TcpListener>,
    ) {
        let Some(addr) = opts.dns else {
            return;
        };
        let upstream = dns_upstream(opts, addr);
        info!(%addr, upstream = ?upstream, udp = dns.is_some(), tcp = dns_tcp.is_some(), "answering DNS for .mesh");
        if let Some(listener) = dns_tcp {
            let limits = crate::dns::TcpLimits::default();
            tasks.spawn(crate::dns::serve_tcp(
                listener,
                self.snapshots.clone(),
                upstream,
                limits,
            ));
        }
        if let Some(socket) = dns {
            tasks.spawn(crate::dns::serve(socket, self.snapshots.clone(), upstream));
        }
    }
}

/// Where DNS answered at `addr` sends names outside `.mesh`.
fn dns_upstream(opts: &RunOptions, addr: std::net::SocketAddr) -> Option<std::net::SocketAddr> {
    opts.dns_upstream
        .or_else(|| crate::dns::previous_resolver(addr))
}

impl Running {
    /// Waits until `signal` completes (a stop was asked for) or the next
    /// agent of the node took over.
    pub async fn stopped(&self, signal: impl Future<Output = ()>) -> Stop {
        let reason = tokio::select! {
            () = signal => Stop::Requested,
            () = self.handed.notified() => Stop::HandedOver,
        };
        if reason == Stop::Requested && !self.kernel.owns_pins() {
            // Another agent of this node started meanwhile and adopted the
            // programs: leave it what it uses.
            info!(
                "another agent of this node runs the kernel programs now: leaving them, the cgroups and the registration to it"
            );
            return Stop::HandedOver;
        }
        reason
    }

    /// Stops accepting, drains open connections for `--drain-seconds`, and
    /// (unless handed over) leaves etcd, unpins the programs and the
    /// cgroups.
    pub async fn stop(mut self, reason: Stop) {
        self.readiness.draining();
        // Stop accepting. Requested: the listeners close, so new
        // connections are refused at once (the programs still redirect to
        // the closed port), never hang. Handed over: the next agent holds
        // them and accepts.
        self.tasks.shutdown().await;
        if reason == Stop::HandedOver {
            // Its admin endpoint answers on the same socket.
            self.admin.abort();
        }
        if let (Some(r), Stop::Requested) = (&self.registration, reason) {
            r.leave().await;
        }
        self.drain.stop();
        self.board.stop();
        self.links.stop();
        self.drain.wait(self.opts.drain).await;
        self.admin.abort();
        let _ = (&mut self.admin).await;
        if reason == Stop::HandedOver {
            // The next agent uses the pins and the cgroups.
            return;
        }
        let Self {
            kernel,
            cgroups,
            cg,
            opts,
            ..
        } = self;
        unpin(kernel, &opts.node);
        cgroups.lock().leave(&cg);
    }
}

/// A deliberate stop opens the node: unpinned, the programs are
/// detached when the last reference to the kernel goes (connection
/// tasks may still hold it), at the latest when the process exits.
fn unpin(kernel: Arc<Kernel>, node: &str) {
    match kernel.unpin() {
        Ok(true) => {}
        Ok(false) => {
            info!("another agent of this node runs the kernel programs now: leaving them")
        }
        Err(e) => {
            warn!(error = %e, "could not remove the pinned programs; `mesh-agent down --node {node}` does")
        }
    }
    if let Ok(kernel) = Arc::try_unwrap(kernel) {
        kernel.stop();
    }
}
