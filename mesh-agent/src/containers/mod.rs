//! Containers: processes of a local service in a network namespace of
//! their own (ARCHITECTURE.md, "Containers"). [`scan`] finds them; the
//! agent (`app::enroll`) opens its listeners in each; [`Containers`] holds
//! what is enrolled: a local service's replicas for the data path, and
//! what `status` and `/metrics` show.

pub mod scan;

use std::{
    collections::BTreeMap,
    io,
    net::{Ipv4Addr, SocketAddr},
    os::fd::OwnedFd,
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::SystemTime,
};

use nix::sys::socket::AddressFamily;
use tokio::net::{TcpSocket, TcpStream};

use crate::{
    names::ServiceName,
    netns::Netns,
    telemetry::{self, ContainerLabels, Side},
};

/// A container the agent serves: one network namespace of a local service.
#[derive(Debug)]
pub struct Container {
    /// The service, its cgroup and namespace, as metrics and logs show them.
    pub labels: Arc<ContainerLabels>,
    pub service: ServiceName,
    pub netns: Netns,
    /// The cgroup it was found in (below the cgroup2 root).
    pub cgroup: PathBuf,
    /// That cgroup's id (what the kernel reports of a caller).
    pub cgroup_id: Option<u64>,
    /// A process of it, when found.
    pub pid: u32,
    pub since: SystemTime,
    /// Whether the agent answers DNS in it (127.0.0.1:53 was free).
    pub dns: bool,
    /// Connections from it (accepted on its outbound listener).
    outbound: AtomicU64,
    /// Connections into it (to its service's port).
    inbound: AtomicU64,
}

impl Container {
    /// A container of `service` found in `cgroup` (id `cgroup_id`) through
    /// process `pid`, in `netns`.
    pub fn new(
        service: ServiceName,
        netns: Netns,
        (cgroup, cgroup_id): (PathBuf, Option<u64>),
        pid: u32,
        dns: bool,
    ) -> Self {
        let labels = Arc::new(ContainerLabels {
            service: service.to_string(),
            cgroup: cgroup.display().to_string(),
            netns: netns.inode.to_string(),
        });
        Self {
            labels,
            service,
            netns,
            cgroup,
            cgroup_id,
            pid,
            since: SystemTime::now(),
            dns,
            outbound: AtomicU64::new(0),
            inbound: AtomicU64::new(0),
        }
    }

    /// Counts a connection from this container.
    pub fn accepted(&self) {
        self.outbound.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections from this container so far.
    pub fn connections_from(&self) -> u64 {
        self.outbound.load(Ordering::Relaxed)
    }

    /// Connections into this container so far.
    pub fn connections_into(&self) -> u64 {
        self.inbound.load(Ordering::Relaxed)
    }

    /// Connects to `127.0.0.1:port` in this container (its service),
    /// counting the connection.
    pub async fn connect(&self, port: u16) -> io::Result<TcpStream> {
        let stream = self.dial(port).await?;
        self.inbound.fetch_add(1, Ordering::Relaxed);
        Ok(stream)
    }

    /// Connects to `127.0.0.1:port` in this container, uncounted (a health
    /// check's probe).
    pub async fn dial(&self, port: u16) -> io::Result<TcpStream> {
        let socket = self.tcp_socket().await?;
        socket
            .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
    }

    /// Whether something listens on `127.0.0.1:port` in this container,
    /// without connecting (see [`listening_on`]).
    pub async fn listening(&self, port: u16) -> bool {
        listening_on(self.tcp_socket().await, port)
    }

    async fn tcp_socket(&self) -> io::Result<TcpSocket> {
        let fd: OwnedFd = self
            .netns
            .socket(AddressFamily::Inet, true)
            .await
            .map_err(io::Error::other)?;
        Ok(TcpSocket::from_std_stream(std::net::TcpStream::from(fd)))
    }
}

/// Whether something listens on `127.0.0.1:port` in the network namespace
/// of `socket` (a fresh IPv4 TCP socket), without connecting to it (the
/// service would see a connection): a bind with `SO_REUSEADDR` fails with
/// `EADDRINUSE` only if a socket listens there (or one is bound there
/// without `SO_REUSEADDR`). The probe socket is closed at once; a service
/// starting that very instant without `SO_REUSEADDR` could see
/// `EADDRINUSE` on its own bind. Any other failure (no socket made
/// included) counts as listening, so the probe never refuses what the dial
/// would have taken.
pub fn listening_on(socket: io::Result<TcpSocket>, port: u16) -> bool {
    let probe = socket.and_then(|socket| {
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    });
    probe.is_err()
}

/// The enrolled containers, by namespace inode.
#[derive(Debug, Default)]
pub struct Containers {
    enrolled: RwLock<BTreeMap<u64, Arc<Container>>>,
    /// Where the next connection to a replicated service starts.
    turn: AtomicUsize,
}

impl Containers {
    /// Serves `container` from now on.
    pub fn insert(&self, container: Arc<Container>) {
        self.write().insert(container.netns.inode, container);
    }

    /// Forgets the container in namespace `inode`.
    pub fn remove(&self, inode: u64) -> Option<Arc<Container>> {
        self.write().remove(&inode)
    }

    /// The container in network namespace `inode`, if enrolled.
    pub fn get(&self, inode: u64) -> Option<Arc<Container>> {
        self.read().get(&inode).cloned()
    }

    /// The container whose cgroup has id `cgroup`, if enrolled.
    pub fn by_cgroup(&self, cgroup: u64) -> Option<Arc<Container>> {
        self.read()
            .values()
            .find(|c| c.cgroup_id == Some(cgroup))
            .cloned()
    }

    /// Every enrolled container.
    pub fn all(&self) -> Vec<Arc<Container>> {
        self.read().values().cloned().collect()
    }

    /// The containers of `service`: its replicas on this node. None: the
    /// service runs in the node's own namespace.
    pub fn replicas(&self, service: &ServiceName) -> Vec<Arc<Container>> {
        self.read()
            .values()
            .filter(|c| c.service == *service)
            .cloned()
            .collect()
    }

    /// Connects to `service` on `127.0.0.1:port` of one of its containers,
    /// taking them in turn and skipping one that refuses. `None`: the
    /// service has no container (dial the node's own loopback); the last
    /// error if none took it.
    pub async fn connect(
        &self,
        service: &ServiceName,
        port: u16,
    ) -> Option<io::Result<(TcpStream, Arc<Container>)>> {
        let replicas = self.replicas(service);
        if replicas.is_empty() {
            return None;
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut last = io::Error::other("no replica");
        for i in 0..replicas.len() {
            let c = &replicas[(start + i) % replicas.len()];
            match c.connect(port).await {
                Ok(stream) => return Some(Ok((stream, c.clone()))),
                Err(e) => last = e,
            }
        }
        Some(Err(last))
    }

    /// Whether something listens on `127.0.0.1:port` in any container of
    /// `service`; `None` if it has none.
    pub async fn listening(&self, service: &ServiceName, port: u16) -> Option<bool> {
        let replicas = self.replicas(service);
        if replicas.is_empty() {
            return None;
        }
        for c in &replicas {
            if c.listening(port).await {
                return Some(true);
            }
        }
        Some(false)
    }

    /// Registers `mesh_containers` and `mesh_container_connections_total`.
    pub fn register_metrics(self: &Arc<Self>, reg: &mut telemetry::Registry) {
        let this = self.clone();
        reg.collect(move |e| {
            let all = this.all();
            let mut per_service: BTreeMap<&ServiceName, i64> = BTreeMap::new();
            for c in &all {
                *per_service.entry(&c.service).or_default() += 1;
            }
            telemetry::registry::gauges(
                e,
                "mesh_containers",
                "Containers (network namespaces of their own) the agent serves, per service",
                per_service.into_iter().map(|(s, n)| {
                    (
                        telemetry::ServiceLabels {
                            service: s.to_string(),
                        },
                        n,
                    )
                }),
            )?;
            telemetry::registry::counters(
                e,
                "mesh_container_connections",
                "Connections from (side=outbound) and into (side=inbound) each container",
                all.iter().flat_map(|c| {
                    [
                        (Side::Outbound, c.connections_from()),
                        (Side::Inbound, c.connections_into()),
                    ]
                    .map(|(side, n)| ((*c.labels).clone().with_side(side), n))
                }),
            )
        });
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<Container>>> {
        self.enrolled
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Arc<Container>>> {
        self.enrolled
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
