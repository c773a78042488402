//! The agent's data path in userspace: the outbound listener (apps' redirected
//! connections), the inbound listener (connections steered by sk_lookup), and
//! the byte copy between two sockets. The hop between agents is mTLS (`tls`).

pub mod admission;
pub mod inbound;
pub mod outbound;
pub mod relay;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tracing::warn;

use crate::{
    ebpf::Kernel,
    identity::Identities,
    snapshot::{Snapshot, Watch},
    telemetry::{Side, Telemetry},
    tls::Tls,
};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no mesh record for connection from {peer}; not a redirected app connection")]
    NoRecord { peer: SocketAddr },
    #[error("unknown service id {0} in a kernel record")]
    UnknownService(u32),
    #[error("node {0:?} of a destination service is not in the config")]
    UnknownNode(String),
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
        src: String,
        dst: String,
        rule: crate::policy::Rule,
    },
    #[error("connection cut: intentions now deny {src} -> {dst} ({rule})")]
    Cut {
        src: String,
        dst: String,
        rule: crate::policy::Rule,
    },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// What every connection handler needs: the snapshot of the catalog in
/// force, the kernel maps, and the identities and TLS configs of local
/// services.
pub struct Context {
    /// The catalog as applied (config, intentions, names, hosts); replaced
    /// as a whole on every reload.
    pub snapshot: Watch,
    /// Kernel ids of services.
    pub ids: Mutex<ServiceIds>,
    pub node: String,
    pub kernel: Kernel,
    pub identities: Arc<Identities>,
    pub tls: Tls,
    /// Metrics, pair stats and the access log.
    pub telemetry: Telemetry,
    /// Connections flowing now (what a drain waits for).
    pub drain: crate::drain::Drain,
    /// Slots for inbound TLS handshakes in progress (`--max-handshakes`,
    /// `--max-handshakes-per-source`).
    pub handshakes: Arc<admission::Admission>,
}

/// The kernel's ids of services. A name keeps its id for the agent's
/// lifetime, so the maps can change while connections are in flight and a
/// record never names another service.
#[derive(Debug, Default)]
pub struct ServiceIds {
    by_name: std::collections::HashMap<String, u32>,
    names: Vec<String>,
}

impl ServiceIds {
    /// The id of `name`, assigned on first use (ids start at 1).
    pub fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.by_name.get(name) {
            return *id;
        }
        self.names.push(name.to_owned());
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.by_name.insert(name.to_owned(), id);
        id
    }

    /// The service an id was given to.
    pub fn name(&self, id: u32) -> Option<&str> {
        let i = usize::try_from(id).ok()?.checked_sub(1)?;
        self.names.get(i).map(String::as_str)
    }
}

impl Context {
    /// The snapshot in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// The service behind a kernel id, in the config in force.
    pub fn service(&self, id: u32) -> Result<crate::config::Service, ProxyError> {
        let name = self
            .ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .name(id)
            .map(str::to_owned)
            .ok_or(ProxyError::UnknownService(id))?;
        self.snapshot()
            .config
            .service(&name)
            .cloned()
            .ok_or(ProxyError::UnknownService(id))
    }
}

impl Context {
    /// Checks `src -> dst` against the intentions in force and counts the
    /// verdict. A refusal is logged here, once, with both addresses and the
    /// deciding rule.
    pub fn authorize(
        &self,
        src: &str,
        dst: &str,
        peer: SocketAddr,
        dialed: SocketAddr,
        side: Side,
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
            src: src.to_owned(),
            dst: dst.to_owned(),
            rule: decision.rule,
        })
    }

    /// Copies both ways (see `relay`) until done, or until the intentions
    /// change to deny `src -> dst`: then both sockets are closed at once.
    /// `a` is the caller's side, `b` the destination's. Counts the
    /// connection in the metrics and writes its access-log line.
    pub async fn splice_while_allowed<A, B>(
        &self,
        a: &mut A,
        b: &mut B,
        src: &str,
        dst: &str,
        side: &'static str,
    ) -> Result<(u64, u64), ProxyError>
    where
        A: AsyncRead + AsyncWrite + Unpin + ?Sized,
        B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let open = self.telemetry.opened(src, dst, side);
        let _live = self.drain.enter();
        let result = self.splice_until_denied(a, b, src, dst).await;
        let ((to_destination, to_source), verdict) = match &result {
            Ok(bytes) => (*bytes, "allowed"),
            Err(ProxyError::Cut { .. }) => ((0, 0), "cut"),
            Err(_) => ((0, 0), "error"),
        };
        self.telemetry
            .closed(open, to_destination, to_source, verdict);
        result
    }

    async fn splice_until_denied<A, B>(
        &self,
        a: &mut A,
        b: &mut B,
        src: &str,
        dst: &str,
    ) -> Result<(u64, u64), ProxyError>
    where
        A: AsyncRead + AsyncWrite + Unpin + ?Sized,
        B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        // Like a new subscription: only reloads from now on count.
        let mut snapshot = self.snapshot.clone();
        snapshot.mark_unchanged();
        let copy = relay::relay(a, b);
        tokio::pin!(copy);
        loop {
            tokio::select! {
                done = &mut copy => return Ok(done?),
                changed = snapshot.changed() => {
                    if changed.is_err() {
                        // The agent is stopping; finish the copy as it is.
                        return Ok(copy.await?);
                    }
                    let decision = snapshot.borrow_and_update().policy.decide(src, dst);
                    if !decision.allowed() {
                        self.telemetry.cut(src, dst);
                        return Err(ProxyError::Cut {
                            src: src.to_owned(),
                            dst: dst.to_owned(),
                            rule: decision.rule,
                        });
                    }
                }
            }
        }
    }

    /// Folds what connect4/6 refused since the last call (`DENIALS`) into
    /// the metrics and the pair stats.
    pub fn harvest_kernel_denials(&self) {
        self.telemetry
            .harvest_kernel_denials(self.kernel.denials(), |key| self.describe_denial(key));
    }

    /// Names a `DENIALS` key: source, destination and the deciding rule.
    /// A caller without a mesh identity is `-`.
    pub fn describe_denial(&self, key: &mesh_common::DenialKey) -> (String, String, String) {
        let name = |id: u32| {
            let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
            match (id, ids.name(id)) {
                (0, _) => "-".to_owned(),
                (_, Some(name)) => name.to_owned(),
                (_, None) => format!("#{id}"),
            }
        };
        let (src, dst) = (name(key.src), name(key.dst));
        let rule = if key.reason == mesh_common::DENIED_BY_LOOPBACK_GUARD {
            "loopback guard".to_owned()
        } else {
            self.snapshot().policy.decide(&src, &dst).rule.to_string()
        };
        (src, dst, rule)
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
                | Self::UnknownNode(_)
                | Self::NoLocalService(_)
                | Self::Tls(_)
                | Self::Denied { .. }
        )
    }
}

pub type Shared = Arc<Context>;

/// Where a local service listens: loopback only, by design.
pub fn local_addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// Connects with TCP_NODELAY set.
pub async fn dial(addr: SocketAddr) -> Result<TcpStream, ProxyError> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|source| ProxyError::Connect { addr, source })?;
    s.set_nodelay(true)?;
    Ok(s)
}
