//! Containers joining and leaving (ARCHITECTURE.md, "Containers"). Every
//! [`EVERY`] the local services' cgroup subtrees are scanned
//! (`containers::scan`); a new network namespace gets the agent's
//! listeners inside it (outbound, and DNS where asked for) and is served;
//! one in which no process of the service was seen twice in a row is
//! forgotten: its listeners close, its tasks end (connections in flight
//! finish), the agent lets go of the namespace.
//!
//! An upgrade hands the containers' listening sockets to the next agent
//! ([`Handed`], `handover::Offer::with_containers`); the next agent serves
//! a container on the sockets it took over for its namespace.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd as _, OwnedFd},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use nix::sys::socket::{AddressFamily, SockaddrIn};
use tokio::{
    net::{TcpListener, TcpSocket, UdpSocket},
    task::JoinSet,
};
use tracing::{debug, info, warn};

use super::cgroups;
use crate::{
    containers::{
        Container, Containers,
        scan::{self, Sighting},
    },
    ebpf::Kernel,
    handover::SocketName,
    names::ServiceName,
    netns::{self, Netns, NetnsError},
    proxy::{Inputs, Outbound, ServiceIds, balance::Balancer, outbound::Origin, pool::Pool},
    snapshot::Watch,
};

/// How often the cgroups are scanned: a container is served within this
/// (and the time to open its listeners) of its first process.
pub(super) const EVERY: Duration = Duration::from_millis(200);

/// Scans missed before a container is forgotten (a process moving between
/// cgroups may be missing from one read).
const MISSES: u8 = 2;

/// What the outbound listener and DNS of a container use: the host's.
pub(super) struct Serve {
    pub inputs: Arc<Inputs>,
    pub kernel: Arc<Kernel>,
    pub ids: Arc<ServiceIds>,
    pub balancer: Arc<Balancer>,
    pub pool: Arc<Pool>,
    pub snapshots: Watch,
    pub outbound_port: u16,
    /// DNS in each container on `127.0.0.1:<port>`, forwarding other names
    /// to the upstream; `None`: no DNS.
    pub dns: Option<(u16, Option<SocketAddr>)>,
}

/// Every served container's listening sockets (shared with their accept
/// loops), by namespace: what a handover gives the next agent.
#[derive(Clone, Default)]
pub(super) struct Handed(Arc<Mutex<BTreeMap<u64, Sockets>>>);

/// Listening sockets by their handover names.
type Named = Vec<(SocketName, OwnedFd)>;

impl Handed {
    /// Duplicates of them all, now.
    pub fn duplicates(&self) -> Named {
        let all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.values().flat_map(Sockets::duplicates).collect()
    }

    fn set(&self, inode: u64, sockets: Option<Sockets>) {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match sockets {
            Some(s) => all.insert(inode, s),
            None => all.remove(&inode),
        };
    }
}

/// The agent's sockets in one container.
#[derive(Clone)]
struct Sockets {
    out4: Arc<TcpListener>,
    out6: Option<Arc<TcpListener>>,
    dns: Option<(Arc<UdpSocket>, Arc<TcpListener>)>,
}

impl Sockets {
    /// Duplicates, for a handover.
    fn duplicates(&self) -> Named {
        let mut all = vec![(SocketName::Out4, self.out4.as_fd())];
        if let Some(l) = &self.out6 {
            all.push((SocketName::Out6, l.as_fd()));
        }
        if let Some((udp, tcp)) = &self.dns {
            all.push((SocketName::Dns, udp.as_fd()));
            all.push((SocketName::DnsTcp, tcp.as_fd()));
        }
        crate::handover::duplicates(all)
    }
}

/// The enrollment task's state.
pub(super) struct Enroll {
    containers: Arc<Containers>,
    cgroups: cgroups::Shared,
    /// Where cgroup2 is mounted.
    root: PathBuf,
    /// The node's own network namespace (inode): not a container.
    host: u64,
    serve: Serve,
    /// Per served namespace: its tasks (aborted when dropped) and scans missed.
    served: BTreeMap<u64, Served>,
    /// Namespaces whose enrollment failed, already logged.
    failed: BTreeSet<u64>,
    /// Namespaces found under two services, already logged.
    shared: BTreeSet<(u64, ServiceName)>,
    /// Cgroups with processes in several namespaces, already logged.
    mixed: BTreeSet<PathBuf>,
    /// Sockets the previous agent handed over, by namespace; those not
    /// claimed by the first scan are closed.
    adopted: BTreeMap<u64, Named>,
    handed: Handed,
    /// Whether a scan ran (and what it left of `adopted` and the guards
    /// was let go).
    scanned: bool,
}

struct Served {
    _tasks: JoinSet<()>,
    missed: u8,
}

/// Errors enrolling one container (logged, retried at the next scan).
#[derive(Debug, thiserror::Error)]
enum EnrollError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("process {pid} left network namespace {inode} before it was opened")]
    Moved { pid: u32, inode: u64 },
    #[error(
        "cannot listen on {addr} in its network namespace ({source}); is something of the container's there? Its connections to the mesh fail until it is free"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Enroll {
    /// The enrollment of `cgroups`' containers into `containers`, serving
    /// them with `serve`, on `adopted` sockets (from the previous agent)
    /// where they are a container's; what it serves goes in `handed`.
    pub fn new(
        containers: Arc<Containers>,
        cgroups: cgroups::Shared,
        root: PathBuf,
        serve: Serve,
        adopted: Named,
        handed: Handed,
    ) -> Result<Self, NetnsError> {
        let host = netns::inode_of_pid(std::process::id()).map_err(|source| NetnsError::Open {
            pid: std::process::id(),
            source,
        })?;
        let mut by_netns: BTreeMap<u64, Named> = BTreeMap::new();
        for (name, fd) in adopted {
            match Netns::of_socket(&fd) {
                Ok(ns) => by_netns.entry(ns.inode).or_default().push((name, fd)),
                Err(e) => {
                    warn!(socket = %name, error = %e, "a container's socket from the previous agent: closed")
                }
            }
        }
        Ok(Self {
            containers,
            cgroups,
            root,
            host,
            serve,
            served: BTreeMap::new(),
            failed: BTreeSet::new(),
            shared: BTreeSet::new(),
            mixed: BTreeSet::new(),
            adopted: by_netns,
            handed,
            scanned: false,
        })
    }

    /// Scans every [`EVERY`] until dropped.
    pub async fn run(mut self) {
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.scan().await;
        }
    }

    /// One scan: enrolls what is new, forgets what is gone.
    async fn scan(&mut self) {
        let services: Vec<(ServiceName, PathBuf)> = self
            .cgroups
            .lock()
            .services
            .iter()
            .map(|(name, c)| (name.clone(), c.path.clone()))
            .collect();
        let (root, host) = (self.root.clone(), self.host);
        let found = tokio::task::spawn_blocking(move || {
            scan::scan(&root, &services, host, |pid| netns::inode_of_pid(pid).ok())
        })
        .await
        .unwrap_or_default();
        for (inode, first, second) in found.shared {
            if self.shared.insert((inode, second.clone())) {
                warn!(netns = inode, service = %first, other = %second,
                    "processes of two services share one network namespace: it is served as {first}'s only");
            }
        }
        for (cgroup, n) in found.mixed {
            if self.mixed.insert(cgroup.clone()) {
                warn!(cgroup = %cgroup.display(), namespaces = n,
                    "a cgroup holds processes in several network namespaces: each is served as a container of its own");
            }
        }
        for served in self.served.values_mut() {
            served.missed += 1;
        }
        let seen: BTreeSet<u64> = found.netns.keys().copied().collect();
        for (inode, sighting) in found.netns {
            if let Some(served) = self.served.get_mut(&inode) {
                served.missed = 0;
                continue;
            }
            match self.enroll(&sighting).await {
                Ok(tasks) => {
                    self.failed.remove(&inode);
                    self.served.insert(
                        inode,
                        Served {
                            _tasks: tasks,
                            missed: 0,
                        },
                    );
                }
                Err(e) => {
                    if self.failed.insert(inode) {
                        warn!(service = %sighting.service, cgroup = %sighting.cgroup.display(),
                            netns = inode, pid = sighting.pid, error = %e, "container not served");
                    } else {
                        debug!(netns = inode, error = %e, "container still not served");
                    }
                }
            }
        }
        let gone: Vec<u64> = self
            .served
            .iter()
            .filter(|(_, s)| s.missed >= MISSES)
            .map(|(inode, _)| *inode)
            .collect();
        for inode in gone {
            self.served.remove(&inode);
            self.handed.set(inode, None);
            self.serve.kernel.unguard_netns(inode);
            if let Some(c) = self.containers.remove(inode) {
                info!(service = %c.service, cgroup = %c.cgroup.display(), netns = inode,
                    "container gone: its listeners are closed");
            }
        }
        // Logged again if it comes back (a new namespace may reuse the inode).
        self.failed.retain(|inode| seen.contains(inode));
        // After the first scan: containers that went away during the
        // handover (their sockets), or while no agent ran (their guards'
        // links outlived them).
        if !self.scanned {
            self.scanned = true;
            self.adopted.clear();
            for inode in self.serve.kernel.guarded_netns() {
                if !self.served.contains_key(&inode) {
                    self.serve.kernel.unguard_netns(inode);
                }
            }
        }
    }

    /// Opens the agent's listeners in the namespace of `sighting` and
    /// serves them; guards its addresses with sk_lookup (if that fails, the
    /// container is served unguarded, said in the log).
    async fn enroll(&mut self, sighting: &Sighting) -> Result<JoinSet<()>, EnrollError> {
        let netns = Netns::of_pid(sighting.pid)?;
        if netns.inode != sighting.inode {
            return Err(EnrollError::Moved {
                pid: sighting.pid,
                inode: sighting.inode,
            });
        }
        let sockets = match self.adopt(netns.inode) {
            Some(sockets) => sockets,
            None => self.open(&netns).await?,
        };
        let cookie = netns::cookie(&*sockets.out4)?;
        if let Err(e) = self.serve.kernel.guard_netns(netns.as_fd(), netns.inode) {
            warn!(netns = netns.inode, error = %e,
                "the container's own addresses are not guarded: a service binding 0.0.0.0 in it is reachable on them");
        }
        self.handed.set(netns.inode, Some(sockets.clone()));
        let Sockets { out4, out6, dns } = sockets;
        let container = Arc::new(Container::new(
            sighting.service.clone(),
            netns,
            (sighting.cgroup.clone(), self.cgroup_id(&sighting.cgroup)),
            sighting.pid,
            dns.is_some(),
        ));
        let mut tasks = JoinSet::new();
        let s = &self.serve;
        for listener in [Some(out4), out6].into_iter().flatten() {
            let origin = Origin {
                netns: cookie,
                container: Some(container.clone()),
            };
            let outbound = Outbound::new(
                listener,
                s.inputs.clone(),
                s.kernel.clone(),
                s.ids.clone(),
                s.balancer.clone(),
                s.pool.clone(),
                origin,
            );
            tasks.spawn(outbound.run());
        }
        if let (Some((udp, tcp)), Some((_, upstream))) = (dns, s.dns) {
            let limits = crate::dns::TcpLimits::default();
            tasks.spawn(crate::dns::serve_tcp(
                tcp,
                s.snapshots.clone(),
                upstream,
                limits,
            ));
            tasks.spawn(crate::dns::serve(udp, s.snapshots.clone(), upstream));
        }
        info!(service = %container.service, cgroup = %container.cgroup.display(),
            netns = container.netns.inode, pid = container.pid, dns = container.dns,
            "container served");
        self.containers.insert(container);
        Ok(tasks)
    }

    /// The id of `cgroup` (below the cgroup2 root), if it is there.
    fn cgroup_id(&self, cgroup: &std::path::Path) -> Option<u64> {
        let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
        crate::cgroup::id_of(&self.root.join(rel)).ok()
    }

    /// The sockets the previous agent held in namespace `inode`, if it
    /// handed over those this agent would open (same ports).
    fn adopt(&mut self, inode: u64) -> Option<Sockets> {
        let list = self.adopted.remove(&inode)?;
        let port = self.serve.outbound_port;
        let dns_port = self.serve.dns.map(|(port, _)| port);
        let (mut out4, mut out6, mut udp, mut tcp) = (None, None, None, None);
        for (name, fd) in list {
            match name {
                SocketName::Out4 => out4 = tcp_listener(fd, port),
                SocketName::Out6 => out6 = tcp_listener(fd, port),
                SocketName::Dns => udp = dns_port.and_then(|p| udp_socket(fd, p)),
                SocketName::DnsTcp => tcp = dns_port.and_then(|p| tcp_listener(fd, p)),
                _ => {}
            }
        }
        let sockets = Sockets {
            out4: Arc::new(out4?),
            out6: out6.map(Arc::new),
            dns: udp.zip(tcp).map(|(u, t)| (Arc::new(u), Arc::new(t))),
        };
        info!(
            netns = inode,
            "serving the container on the sockets the previous agent held"
        );
        Some(sockets)
    }

    /// Opens the agent's sockets in `netns`: the outbound listener on
    /// 127.0.0.1 (and ::1 if the container has IPv6), DNS where asked for
    /// and free.
    async fn open(&self, netns: &Netns) -> Result<Sockets, EnrollError> {
        if netns.loopback_up().await? {
            info!(
                netns = netns.inode,
                "the container's loopback was down: set it up"
            );
        }
        let port = self.serve.outbound_port;
        let out4 = listen(netns, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
        let out6 = listen(netns, SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
            .await
            .inspect_err(|e| debug!(netns = netns.inode, error = %e, "no IPv6 outbound listener"))
            .ok();
        let dns = match self.serve.dns {
            Some((port, _)) => match dns_sockets(netns, port).await {
                Ok(sockets) => Some(sockets),
                Err(e) => {
                    warn!(netns = netns.inode, error = %e, "no DNS for .mesh in the container");
                    None
                }
            },
            None => None,
        };
        Ok(Sockets {
            out4: Arc::new(out4),
            out6: out6.map(Arc::new),
            dns: dns.map(|(u, t)| (Arc::new(u), Arc::new(t))),
        })
    }
}

/// A listening TCP socket taken over, if it listens on `port`.
fn tcp_listener(fd: OwnedFd, port: u16) -> Option<TcpListener> {
    let std = std::net::TcpListener::from(fd);
    if std.local_addr().ok()?.port() != port {
        return None;
    }
    std.set_nonblocking(true).ok()?;
    TcpListener::from_std(std).ok()
}

/// A UDP socket taken over, if it is bound to `port`.
fn udp_socket(fd: OwnedFd, port: u16) -> Option<UdpSocket> {
    let std = std::net::UdpSocket::from(fd);
    if std.local_addr().ok()?.port() != port {
        return None;
    }
    std.set_nonblocking(true).ok()?;
    UdpSocket::from_std(std).ok()
}

/// A TCP listener on `addr` in `netns`.
async fn listen(netns: &Netns, addr: SocketAddr) -> Result<TcpListener, EnrollError> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd: OwnedFd = netns.socket(family, true).await?;
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    let listen = || {
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(1024)
    };
    listen().map_err(|source| EnrollError::Listen { addr, source })
}

/// The DNS socket and listener on `127.0.0.1:port` in `netns`.
async fn dns_sockets(netns: &Netns, port: u16) -> Result<(UdpSocket, TcpListener), EnrollError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let fd: OwnedFd = netns.socket(AddressFamily::Inet, false).await?;
    nix::sys::socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
    )
    .map_err(|e| EnrollError::Listen {
        addr,
        source: e.into(),
    })?;
    let udp = UdpSocket::from_std(std::net::UdpSocket::from(fd))
        .map_err(|source| EnrollError::Listen { addr, source })?;
    let tcp = listen(netns, addr).await?;
    Ok((udp, tcp))
}
