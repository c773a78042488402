//! The agent's data path in userspace: the outbound listener ([`Outbound`]:
//! apps' redirected connections), the inbound listener ([`Inbound`]:
//! connections steered by sk_lookup), what both use ([`Inputs`]), and the
//! byte copy between two sockets (`relay`), and which instance a
//! connection goes to (`route` for a catalog address, `balance` for the
//! VIP). The hop between agents is mTLS (`tls`): a stream of a pooled
//! `mesh/2` connection (`pool`, `tunnel`), or with agents that speak only
//! `mesh/1`, a TLS connection per app connection.

pub mod admission;
pub mod balance;
#[cfg(test)]
pub(crate) mod fixture;
pub mod inbound;
pub mod outbound;
pub mod pool;
pub mod relay;
pub mod route;
pub mod tunnel;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::net::TcpStream;
use tracing::warn;

use mesh_common::OrigDst;

pub use inbound::Inbound;
pub use outbound::Outbound;

use crate::{
    config::{Config, Service, local_addr},
    containers::{Container, Containers},
    drain::Drain,
    names::{NodeName, ServiceName},
    snapshot::{Snapshot, Watch},
    telemetry::{Reporter, Side, Telemetry, Verdict},
    tls::{PeerNode, Tls},
};

pub use crate::ebpf::OrigDstAddr;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no mesh record for connection from {peer}; not a redirected app connection")]
    NoRecord { peer: SocketAddr },
    #[error("unknown service id {0} in a kernel record")]
    UnknownService(u32),
    #[error("no instance of {service:?} for {dialed}")]
    NoInstance {
        service: ServiceName,
        dialed: SocketAddr,
    },
    #[error("connecting to the instance on node {node:?} took over {after:?}")]
    SlowConnect {
        node: NodeName,
        after: std::time::Duration,
    },
    #[error("instance of {service:?} down: nothing listens on 127.0.0.1:{port}")]
    InstanceDown { service: ServiceName, port: u16 },
    #[error("no local service behind port {0}")]
    NoLocalService(u16),
    #[error("failed to connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("intentions deny {src} -> {dst} ({rule})")]
    Denied {
        src: ServiceName,
        dst: ServiceName,
        rule: crate::policy::Rule,
    },
    #[error("connection cut: intentions now deny {src} -> {dst} ({rule})")]
    Cut {
        src: ServiceName,
        dst: ServiceName,
        rule: crate::policy::Rule,
    },
    #[error("node {node} is revoked: its connection is cut, new ones refused")]
    Revoked { node: NodeName },
    #[error("a mesh/2 stream asked for {authority:?} on a connection for {service:?}")]
    WrongAuthority {
        authority: String,
        service: ServiceName,
    },
    #[error("the peer's agent negotiated mesh/2 but sent no HTTP/2 preface within {0:?}")]
    NoPreface(std::time::Duration),
    #[error("the destination agent refused the stream with status {status}")]
    StreamRefused { status: http::StatusCode },
    #[error(transparent)]
    Tunnel(#[from] tunnel::TunnelError),
    #[error("a mesh/move connection sent no token within {0:?}")]
    NoMoveToken(std::time::Duration),
    #[error("a mesh/move connection from {src} to {dst} named no stream of that pair")]
    UnknownMove { src: ServiceName, dst: ServiceName },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// What both listeners use (ztunnel's `ProxyInputs`): this node's name,
/// the snapshot in force, TLS, the telemetry and the drain; and, per
/// connection, the verdict on its pair and the relay that holds to it.
pub struct Inputs {
    node: NodeName,
    snapshot: Watch,
    tls: Arc<Tls>,
    telemetry: Arc<Telemetry>,
    drain: Drain,
    /// Local services' containers: where a local service is dialed.
    containers: Arc<Containers>,
}

impl Inputs {
    /// The inputs of the agent of `node`.
    pub fn new(
        node: NodeName,
        snapshot: Watch,
        tls: Tls,
        telemetry: Arc<Telemetry>,
        drain: Drain,
        containers: Arc<Containers>,
    ) -> Arc<Self> {
        Arc::new(Self {
            node,
            snapshot,
            tls: Arc::new(tls),
            telemetry,
            drain,
            containers,
        })
    }

    /// Connects to the local service `dst` on `127.0.0.1:<port>`: in one
    /// of its containers (in turn, skipping one that refuses), or on the
    /// node's own loopback if it has none. Returns the container too.
    async fn dial_local(
        &self,
        dst: &Service,
    ) -> Result<(TcpStream, Option<Arc<Container>>), ProxyError> {
        let Some(replica) = self.containers.connect(&dst.name, dst.port).await else {
            return Ok((dial(local_addr(dst.port)).await?, None));
        };
        let (stream, container) = replica.map_err(|source| ProxyError::Connect {
            addr: local_addr(dst.port),
            source,
        })?;
        stream.set_nodelay(true)?;
        Ok((stream, Some(container)))
    }

    /// Whether something listens behind the local service `dst` (in any of
    /// its containers, else on the node's loopback); see [`listening`].
    async fn local_listening(&self, dst: &Service) -> bool {
        match self.containers.listening(&dst.name, dst.port).await {
            Some(listening) => listening,
            None => listening(dst.port),
        }
    }

    /// The snapshot in force.
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Checks `src -> dst` against the intentions in force and counts the
    /// verdict. A refusal is logged here, once, with both addresses and the
    /// deciding rule.
    fn authorize(
        &self,
        src: &ServiceName,
        dst: &ServiceName,
        peer: SocketAddr,
        dialed: SocketAddr,
        side: Reporter,
    ) -> Result<(), ProxyError> {
        let decision = self.snapshot().policy.decide(src, dst);
        if decision.allowed() {
            self.telemetry.allowed(src, dst);
            return Ok(());
        }
        warn!(%src, %dst, %peer, %dialed, rule = %decision.rule, "denied by intentions");
        let rule = decision.rule.to_string();
        self.telemetry.denied(src, dst, &rule, peer, dialed, side);
        Err(ProxyError::Denied {
            src: src.clone(),
            dst: dst.clone(),
            rule: decision.rule,
        })
    }

    /// Runs `copy` (a `relay` between the caller's side and the
    /// destination's, returning bytes (to destination, to source)) until
    /// done, or until the intentions change to deny `src -> dst` or `peer`
    /// (the other end's node) is revoked: then `copy` is dropped, which
    /// closes both sides at once. Counts the connection in the telemetry
    /// (the drain counts it from its accept).
    async fn splice_while_allowed(
        &self,
        copy: impl std::future::Future<Output = std::io::Result<(u64, u64)>>,
        (src, dst): (&ServiceName, &ServiceName),
        peer: Option<&PeerNode>,
        side: Side,
        container: Option<&Arc<Container>>,
    ) -> Result<(u64, u64), ProxyError> {
        let labels = container.map(|c| c.labels.clone());
        let open = self.telemetry.opened(src, dst, side, labels);
        let result = self.splice_until_denied(copy, src, dst, peer).await;
        let ((to_destination, to_source), verdict) = match &result {
            Ok(bytes) => (*bytes, Verdict::Allowed),
            Err(ProxyError::Cut { .. } | ProxyError::Revoked { .. }) => ((0, 0), Verdict::Cut),
            Err(_) => ((0, 0), Verdict::Error),
        };
        self.telemetry
            .closed(open, to_destination, to_source, verdict);
        result
    }

    async fn splice_until_denied(
        &self,
        copy: impl std::future::Future<Output = std::io::Result<(u64, u64)>>,
        src: &ServiceName,
        dst: &ServiceName,
        peer: Option<&PeerNode>,
    ) -> Result<(u64, u64), ProxyError> {
        // Like a new subscription: only reloads from now on count.
        let mut snapshot = self.snapshot.clone();
        snapshot.mark_unchanged();
        tokio::pin!(copy);
        loop {
            tokio::select! {
                done = &mut copy => return Ok(done?),
                changed = snapshot.changed() => {
                    if changed.is_err() {
                        // The agent is stopping; finish the copy as it is.
                        return Ok(copy.await?);
                    }
                    let now = snapshot.borrow_and_update().clone();
                    if let Some(peer) = peer.filter(|p| p.revoked(&now.config)) {
                        return Err(ProxyError::Revoked { node: peer.node.clone() });
                    }
                    let decision = now.policy.decide(src, dst);
                    if !decision.allowed() {
                        self.telemetry.cut(src, dst);
                        return Err(ProxyError::Cut {
                            src: src.clone(),
                            dst: dst.clone(),
                            rule: decision.rule,
                        });
                    }
                }
            }
        }
    }
}

/// The kernel's ids of services. A name keeps its id for the agent's
/// lifetime, so the maps can change while connections are in flight and a
/// record never names another service.
#[derive(Debug, Default)]
pub struct ServiceIds {
    assigned: Mutex<Assigned>,
}

#[derive(Debug, Default)]
struct Assigned {
    by_name: HashMap<String, u32>,
    names: Vec<String>,
}

impl ServiceIds {
    /// A table holding `pairs` (id, name), as the previous agent of the
    /// node left it; new names get ids after the highest.
    pub fn seeded(mut pairs: Vec<(u32, String)>) -> Self {
        pairs.sort();
        let mut assigned = Assigned::default();
        for (id, name) in pairs {
            let Ok(i) = usize::try_from(id) else { continue };
            if i == 0 || assigned.by_name.contains_key(&name) {
                continue;
            }
            if assigned.names.len() < i {
                assigned.names.resize(i, String::new());
            }
            assigned.names[i - 1].clone_from(&name);
            assigned.by_name.insert(name, id);
        }
        Self {
            assigned: Mutex::new(assigned),
        }
    }

    /// Every (id, name) given so far.
    pub fn all(&self) -> Vec<(u32, String)> {
        let assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
        assigned
            .by_name
            .iter()
            .map(|(name, id)| (*id, name.clone()))
            .collect()
    }

    /// The id of `name`, assigned on first use (ids start at 1).
    pub fn id(&self, name: &ServiceName) -> u32 {
        let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = assigned.by_name.get(name.as_str()) {
            return *id;
        }
        assigned.names.push(name.to_string());
        let id = u32::try_from(assigned.names.len()).unwrap_or(u32::MAX);
        assigned.by_name.insert(name.to_string(), id);
        id
    }

    /// The service an id was given to.
    pub fn name(&self, id: u32) -> Option<String> {
        let i = usize::try_from(id).ok()?.checked_sub(1)?;
        let assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
        assigned.names.get(i).filter(|n| !n.is_empty()).cloned()
    }

    /// The service of `config` an id was given to. Fails with
    /// [`ProxyError::UnknownService`] if the id was never given or its
    /// service is no longer in `config`.
    pub fn service<'c>(&self, id: u32, config: &'c Config) -> Result<&'c Service, ProxyError> {
        self.name(id)
            .and_then(|name| config.service(&name))
            .ok_or(ProxyError::UnknownService(id))
    }
}

/// A redirected app connection as its kernel record (`CONNS`) tells it,
/// borrowing the services from the config in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect<'c> {
    /// The calling service.
    pub src: &'c Service,
    /// The service behind `dialed`.
    pub dst: &'c Service,
    /// The address the app dialed.
    pub dialed: SocketAddr,
}

impl<'c> Redirect<'c> {
    /// Reads `orig` with the kernel ids `ids` against `config`. Fails with
    /// [`ProxyError::UnknownService`] for an id that names no service of
    /// `config`.
    pub fn from_record(
        orig: &OrigDst,
        ids: &ServiceIds,
        config: &'c Config,
    ) -> Result<Self, ProxyError> {
        Ok(Self {
            src: ids.service(orig.src_service, config)?,
            dst: ids.service(orig.dst_service, config)?,
            dialed: crate::ebpf::socket_addr(&orig.dst),
        })
    }
}

impl ProxyError {
    /// Whether the connection was refused (identity, intentions, routing)
    /// rather than failing after it was accepted.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::NoRecord { .. }
                | Self::UnknownService(_)
                | Self::NoInstance { .. }
                | Self::NoLocalService(_)
                | Self::InstanceDown { .. }
                | Self::Tls(_)
                | Self::Denied { .. }
                | Self::WrongAuthority { .. }
                | Self::StreamRefused { .. }
        )
    }
}

/// Whether something listens on `127.0.0.1:port` of the node, without
/// connecting to it (see [`crate::containers::listening_on`]).
pub fn listening(port: u16) -> bool {
    crate::containers::listening_on(tokio::net::TcpSocket::new_v4(), port)
}

/// `m`'s guard, even if a holder panicked (the data stays usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Connects with TCP_NODELAY set.
pub async fn dial(addr: SocketAddr) -> Result<TcpStream, ProxyError> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|source| ProxyError::Connect { addr, source })?;
    s.set_nodelay(true)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, node, service};

    /// Node a hosting `web` (port 80) and `api` (port 81).
    fn mesh() -> String {
        format!(
            "{}{}{}",
            node("a", "10.0.0.1"),
            service("web", &["a"], 80),
            service("api", &["a"], 81)
        )
    }

    fn record(src_service: u32, dst_service: u32) -> OrigDst {
        OrigDst {
            dst: crate::ebpf::sock_addr("240.0.0.2:81".parse().unwrap()),
            src_service,
            dst_service,
            uid: 0,
            created_ns: 0,
        }
    }

    #[test]
    fn a_seeded_table_keeps_every_id_and_numbers_on_after_the_highest() {
        let ids = ServiceIds::seeded(vec![(3, "db".into()), (1, "web".into())]);
        assert_eq!(
            (
                ids.id(&"web".parse().unwrap()),
                ids.id(&"db".parse().unwrap())
            ),
            (1, 3)
        );
        assert_eq!((ids.name(2), ids.name(3).as_deref()), (None, Some("db")));
        assert_eq!(ids.id(&"new".parse().unwrap()), 4);
        let mut all = ids.all();
        all.sort();
        assert_eq!(
            all,
            [(1, "web".into()), (3, "db".into()), (4, "new".into())]
        );
    }

    #[test]
    fn a_record_names_services_by_their_kernel_ids() {
        let config = testing::config(&mesh());
        let ids = ServiceIds::default();
        let (web, api) = (
            ids.id(&"web".parse().unwrap()),
            ids.id(&"api".parse().unwrap()),
        );
        let r = Redirect::from_record(&record(web, api), &ids, &config).unwrap();
        assert_eq!(
            (r.src.name.as_str(), r.dst.name.as_str(), r.dialed),
            ("web", "api", "240.0.0.2:81".parse().unwrap())
        );
        // Never given, or given to a service that has left the config.
        let r = Redirect::from_record(&record(web, 0), &ids, &config);
        assert!(matches!(r, Err(ProxyError::UnknownService(0))), "{r:?}");
        let gone = ids.id(&"gone".parse().unwrap());
        let r = Redirect::from_record(&record(gone, api), &ids, &config);
        assert!(
            matches!(r, Err(ProxyError::UnknownService(id)) if id == gone),
            "{r:?}"
        );
    }

    #[test]
    fn listening_sees_a_listener_without_connecting() {
        let listener = std::net::TcpListener::bind(local_addr(0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        assert!(listening(port));
        // The probe made no connection.
        assert!(listener.accept().is_err());
        drop(listener);
        assert!(!listening(port));
    }
}
