//! The agent's data path in userspace: the outbound listener (apps' redirected
//! connections), the inbound listener (connections steered by sk_lookup), and
//! the byte copy between two sockets. The hop between agents is mTLS (`tls`).

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
    sync::watch,
};
use tracing::warn;

use mesh_common::OrigDst;

use crate::{
    config::{Config, Service},
    ebpf::Kernel,
    identity::Identities,
    policy::Policy,
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

/// What every connection handler needs: the config this agent runs with,
/// the kernel maps, and the identities and TLS configs of local services.
pub struct Context {
    /// The config in force; replaced when the file changes.
    pub config: std::sync::RwLock<Arc<Config>>,
    /// Kernel ids of services.
    pub ids: Mutex<ServiceIds>,
    pub node: String,
    pub kernel: Kernel,
    pub identities: Arc<Identities>,
    pub tls: Tls,
    /// The intentions in force; replaced when the config file changes.
    pub policy: watch::Sender<Arc<Policy>>,
    /// The `.mesh` DNS names.
    pub zone: watch::Sender<Arc<crate::dns::Zone>>,
    /// Verdicts per (source, destination), for `status`.
    pub stats: Mutex<BTreeMap<(String, String), PairStats>>,
    pub metrics: crate::metrics::Metrics,
    /// Connections flowing now (what a drain waits for).
    pub live: std::sync::atomic::AtomicUsize,
    /// One permit per inbound TLS handshake in progress (`--max-handshakes`).
    pub handshakes: Arc<tokio::sync::Semaphore>,
}

/// What happened to connections of one (source, destination) pair.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PairStats {
    pub allowed: u64,
    pub denied: u64,
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

    /// The service of `config` an id was given to. Fails with
    /// [`ProxyError::UnknownService`] if the id was never given or its
    /// service is no longer in `config`.
    pub fn service(&self, id: u32, config: &Config) -> Result<Service, ProxyError> {
        self.name(id)
            .and_then(|name| config.service(name))
            .cloned()
            .ok_or(ProxyError::UnknownService(id))
    }
}

/// A redirected app connection as its kernel record (`CONNS`) tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The calling service.
    pub src: Service,
    /// The service behind `dialed`.
    pub dst: Service,
    /// The address the app dialed.
    pub dialed: SocketAddr,
}

impl Redirect {
    /// Reads `orig` with the kernel ids `ids` against `config`. Fails with
    /// [`ProxyError::UnknownService`] for an id that names no service of
    /// `config`.
    pub fn from_record(
        orig: &OrigDst,
        ids: &ServiceIds,
        config: &Config,
    ) -> Result<Self, ProxyError> {
        Ok(Self {
            src: ids.service(orig.src_service, config)?,
            dst: ids.service(orig.dst_service, config)?,
            dialed: crate::ebpf::socket_addr(&orig.dst),
        })
    }
}

impl Context {
    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What a kernel record says, read against the config in force.
    pub fn redirect(&self, orig: &OrigDst) -> Result<Redirect, ProxyError> {
        let config = self.config();
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        Redirect::from_record(orig, &ids, &config)
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
    ) -> Result<(), ProxyError> {
        let decision = self.policy.borrow().decide(src, dst);
        self.count(src, dst, |s| {
            if decision.allowed() {
                s.allowed += 1;
            } else {
                s.denied += 1;
            }
        });
        if decision.allowed() {
            return Ok(());
        }
        warn!(%src, %dst, %peer, %dialed, rule = %decision.rule, "denied by intentions");
        let rule = decision.rule.to_string();
        self.metrics.denied(src, dst, &rule);
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
        let mut policy = self.policy.subscribe();
        let copy = relay::relay(a, b);
        tokio::pin!(copy);
        loop {
            tokio::select! {
                done = &mut copy => return Ok(done?),
                changed = policy.changed() => {
                    if changed.is_err() {
                        // The agent is stopping; finish the copy as it is.
                        return Ok(copy.await?);
                    }
                    let decision = policy.borrow_and_update().decide(src, dst);
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

    fn count(&self, src: &str, dst: &str, f: impl FnOnce(&mut PairStats)) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        f(stats.entry((src.to_owned(), dst.to_owned())).or_default());
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

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = r#"
[[node]]
name = "a"
address = "10.0.0.1"

[[service]]
name = "web"
node = "a"
port = 80

[[service]]
name = "api"
node = "a"
port = 81
"#;

    fn record(src_service: u32, dst_service: u32) -> OrigDst {
        OrigDst {
            dst: crate::ebpf::sock_addr("240.0.0.2:81".parse().unwrap()),
            src_service,
            dst_service,
            _pad: 0,
            created_ns: 0,
        }
    }

    #[test]
    fn a_record_names_services_by_their_kernel_ids() {
        let path = std::path::Path::new("/nonexistent/mesh.toml");
        let config = Config::parse(MESH, path).unwrap();
        let mut ids = ServiceIds::default();
        let (web, api) = (ids.id("web"), ids.id("api"));
        let r = Redirect::from_record(&record(web, api), &ids, &config).unwrap();
        assert_eq!(
            (r.src.name.as_str(), r.dst.name.as_str(), r.dialed),
            ("web", "api", "240.0.0.2:81".parse().unwrap())
        );
        // Never given, or given to a service that has left the config.
        let r = Redirect::from_record(&record(web, 0), &ids, &config);
        assert!(matches!(r, Err(ProxyError::UnknownService(0))), "{r:?}");
        let gone = ids.id("gone");
        let r = Redirect::from_record(&record(gone, api), &ids, &config);
        assert!(
            matches!(r, Err(ProxyError::UnknownService(id)) if id == gone),
            "{r:?}"
        );
    }
}
