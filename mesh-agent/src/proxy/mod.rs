//! The agent's data path in userspace: the outbound listener (apps' redirected
//! connections), the inbound listener (connections steered by sk_lookup), and
//! the byte copy between two sockets. The hop between agents is mTLS (`tls`).

pub mod admission;
pub mod inbound;
pub mod outbound;
pub mod relay;

use std::{
    collections::BTreeMap,
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
    /// Verdicts per (source, destination), for `status`.
    pub stats: Mutex<BTreeMap<(String, String), PairStats>>,
    pub metrics: crate::metrics::Metrics,
    /// Connections flowing now (what a drain waits for).
    pub live: std::sync::atomic::AtomicUsize,
    /// Slots for inbound TLS handshakes in progress (`--max-handshakes`,
    /// `--max-handshakes-per-source`).
    pub handshakes: Arc<admission::Admission>,
    /// Per `DENIALS` key, the count already folded into metrics and stats.
    pub kernel_denials: Mutex<std::collections::HashMap<mesh_common::DenialKey, u64>>,
}

/// What happened to connections of one (source, destination) pair.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PairStats {
    pub allowed: u64,
    /// Refused by this agent as the destination's (authoritative).
    pub denied: u64,
    /// Refused on the caller's node: EPERM from connect() in the kernel,
    /// or by this agent's outbound check.
    pub denied_at_source: u64,
    /// Allowed when opened, closed later because the intentions changed.
    pub cut: u64,
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
        self.count(src, dst, |s| match (decision.allowed(), side) {
            (true, _) => s.allowed += 1,
            (false, Side::Source) => s.denied_at_source += 1,
            (false, Side::Destination) => s.denied += 1,
        });
        if decision.allowed() {
            return Ok(());
        }
        warn!(%src, %dst, %peer, %dialed, rule = %decision.rule, "denied by intentions");
        let rule = decision.rule.to_string();
        self.metrics.denied(src, dst, &rule, side.label(), 1);
        tracing::info!(
            target: "access", %src, %dst, %peer, %dialed, to_destination = 0u64,
            to_source = 0u64, duration_ms = 0u64, verdict = "denied", %rule, "connection"
        );
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
        let conn = crate::metrics::Conn {
            source: src.to_owned(),
            destination: dst.to_owned(),
            side,
        };
        let started = std::time::Instant::now();
        self.metrics.opened(&conn);
        let _live = Live::enter(&self.live);
        let result = self.splice_until_denied(a, b, src, dst).await;
        let ((to_destination, to_source), verdict) = match &result {
            Ok(bytes) => (*bytes, "allowed"),
            Err(ProxyError::Cut { .. }) => ((0, 0), "cut"),
            Err(_) => ((0, 0), "error"),
        };
        self.metrics.closed(&conn, to_destination, to_source);
        tracing::info!(
            target: "access", %src, %dst, side, to_destination, to_source,
            duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            verdict, "connection"
        );
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
                        self.count(src, dst, |s| s.cut += 1);
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
        let counts = self.kernel.denials();
        let mut seen = self
            .kernel_denials
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (key, count) in counts {
            let last = seen.insert(key, count).unwrap_or(0);
            let new = crate::denials::since(last, count);
            if new == 0 {
                continue;
            }
            let (src, dst, rule) = self.describe_denial(&key);
            self.metrics
                .denied(&src, &dst, &rule, Side::Source.label(), new);
            self.count(&src, &dst, |s| s.denied_at_source += new);
        }
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

    fn count(&self, src: &str, dst: &str, f: impl FnOnce(&mut PairStats)) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        f(stats.entry((src.to_owned(), dst.to_owned())).or_default());
    }
}

/// Which end of a call an agent decides for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The caller's node (connect4/6 and the outbound listener).
    Source,
    /// The destination's node (the inbound listener): authoritative.
    Destination,
}

impl Side {
    /// The `side` label of `mesh_denials_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// Counts a flowing connection in `Context::live` while it exists.
struct Live<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Live<'a> {
    fn enter(counter: &'a std::sync::atomic::AtomicUsize) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
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
