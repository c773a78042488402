//! The source side's `mesh/2` connections (see `tunnel`), pooled per
//! (source service, destination service, destination node): the client
//! presents the source's leaf and the server the destination's, so every
//! stream on a connection carries the same verified pair, and the
//! destination agent still decides each one.
//!
//! An app connection takes a stream on the least loaded connection of its
//! key; a second connection opens when every one has [`SPREAD_AT`] streams,
//! up to [`PER_KEY`] per key and [`TOTAL`] in all. Past those (every
//! connection of the key at the peer's stream limit), an app connection
//! gets a `mesh/1` connection of its own, which costs less memory than an
//! HTTP/2 connection carrying one stream. Only one dial per key at a time:
//! app connections that find none wait for it and share it.
//!
//! A pooled connection is abandoned when its driver ends (peer closed or
//! died), when the peer sent GOAWAY, when the source's leaf was renewed
//! since it was made (open streams finish on it), or after [`IDLE`] without
//! a stream. A stream the connection could not carry (closed, GOAWAY,
//! REFUSED_STREAM before the answer) is retried once on a fresh connection;
//! failing that, the caller's failover tries another instance.
//!
//! A node whose agent answers `mesh/1` (one that predates `mesh/2`, or runs
//! `--no-multiplex`) gets that TLS connection as the app connection, and is
//! remembered for [`SINGLE_FOR`] so its connections skip the per-key wait.
//!
//! A busy stream leaves its pooled connection ([`Dialer`]): once it has
//! relayed [`MOVE_AFTER_BYTES`] or read [`MOVE_AFTER_READS`] times from the
//! app, it moves to a `mesh/move` connection of its own (`tunnel` has the
//! wire form), where its bytes cost what they cost on `mesh/1` (HTTP/2
//! framing and the hop to the connection's task cost ~10% CPU per GB
//! and a few us per message). Short connections, the pool's point, never
//! get there.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use super::{
    Inputs, ProxyError, dial, lock,
    relay::{Mover, Progress},
    tunnel::{self, Client, IDLE, TunnelError},
};
use crate::{
    config::{Node, Service},
    identity::Current,
    names::{NodeName, ServiceName},
    telemetry::{Side, Telemetry},
    tls::{Offer, Protocol, Tls, TlsError, Transport},
};

/// Streams on every connection of a key before another one opens.
pub const SPREAD_AT: usize = 100;
/// Most pooled connections per key.
pub const PER_KEY: usize = 16;
/// Most pooled connections in all.
pub const TOTAL: usize = 1024;
/// How long a node that answered `mesh/1` is taken to speak only that.
pub const SINGLE_FOR: Duration = Duration::from_secs(300);
/// How long a stream on a pooled connection may wait for its answer before
/// the connection is taken for dead and the stream retried on a fresh one
/// (the destination answers after a loopback dial: well under this).
pub const POOLED_ANSWER: Duration = Duration::from_millis(500);
/// How often [`Pool::sweep_forever`] closes idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Bytes (both ways) after which a stream moves to a connection of its own.
pub const MOVE_AFTER_BYTES: u64 = 1024 * 1024;
/// Reads from the app after which a stream moves to a connection of its
/// own (a chatty connection: each message pays the hop to the pooled
/// connection's task).
pub const MOVE_AFTER_READS: u64 = 1000;

/// The pooled connections of this agent (see the module docs).
#[derive(Default)]
pub struct Pool {
    keys: Mutex<HashMap<Key, Arc<Entry>>>,
    /// Nodes that answered `mesh/1`, and when.
    single: Mutex<HashMap<NodeName, Instant>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    src: ServiceName,
    dst: ServiceName,
    node: NodeName,
    /// Where its connections were dialed: the destination agent serves the
    /// service behind the port a connection came in on, so a service or
    /// node that moved needs new ones.
    addr: SocketAddr,
}

/// One key's connections.
#[derive(Default)]
struct Entry {
    conns: Mutex<Vec<Conn>>,
    /// Held while a fresh connection is made for this key.
    dialing: tokio::sync::Mutex<()>,
}

/// One pooled connection.
#[derive(Clone)]
struct Conn {
    client: Client,
    /// The source's leaf when it was made.
    leaf: Arc<Current>,
    usage: Arc<Usage>,
}

#[derive(Debug)]
struct Usage {
    streams: AtomicUsize,
    idle_since: Mutex<Instant>,
    /// Set when the connection's driver ended.
    closed: AtomicBool,
}

/// The hop to the destination agent for one app connection.
pub enum Hop {
    /// A stream of a `mesh/2` connection, and what moves it off (it counts
    /// on that connection until it left).
    Stream(tunnel::Stream, Dialer),
    /// A `mesh/1` connection: the app connection's own.
    Single(Box<tokio_rustls::client::TlsStream<Transport>>),
}

/// A stream counted on its connection until dropped.
#[derive(Debug)]
pub struct InUse(Option<Arc<Usage>>);

impl Drop for InUse {
    fn drop(&mut self) {
        let Some(usage) = self.0.take() else { return };
        if usage.streams.fetch_sub(1, Ordering::SeqCst) == 1 {
            *lock(&usage.idle_since) = Instant::now();
        }
    }
}

impl Pool {
    /// Registers `mesh_pooled_connections` and `mesh_pooled_streams`.
    pub fn register_metrics(self: &Arc<Self>, reg: &mut crate::telemetry::Registry) {
        use crate::telemetry::registry::{count, gauge};
        let this = self.clone();
        reg.collect(move |e| {
            let (connections, streams) = this.usage();
            gauge(
                e,
                "mesh_pooled_connections",
                "Pooled mesh/2 connections to other agents",
                count(connections),
            )?;
            gauge(
                e,
                "mesh_pooled_streams",
                "App connections on pooled mesh/2 connections now",
                count(streams),
            )
        });
    }

    /// A hop from local service `src` to the instance of `dst` on `host`.
    pub async fn connect(
        &self,
        pi: &Inputs,
        src: &Service,
        dst: &Service,
        host: &Node,
    ) -> Result<Hop, ProxyError> {
        let hop = self.hop(pi, src, dst, host).await?;
        let Hop::Stream(stream, mut dialer) = hop else {
            return Ok(hop);
        };
        dialer.plan = stream.move_token().map(|token| {
            Box::new(Plan {
                token,
                tls: pi.tls.clone(),
                telemetry: pi.telemetry.clone(),
                addr: SocketAddr::new(host.address, dst.port),
                src: src.name.clone(),
                dst: dst.name.clone(),
                node: host.name.clone(),
            })
        });
        Ok(Hop::Stream(stream, dialer))
    }

    async fn hop(
        &self,
        pi: &Inputs,
        src: &Service,
        dst: &Service,
        host: &Node,
    ) -> Result<Hop, ProxyError> {
        let leaf = pi
            .tls
            .leaf(&src.name)
            .ok_or_else(|| TlsError::NoLocalService(src.name.to_string()))?;
        let authority = tunnel::authority(&dst.name, pi.tls.trust_domain(), dst.port);
        let key = Key {
            src: src.name.clone(),
            dst: dst.name.clone(),
            node: host.name.clone(),
            addr: SocketAddr::new(host.address, dst.port),
        };
        let entry = self.entry(&key);
        let full = || lock(&entry.conns).len() >= PER_KEY || self.total() >= TOTAL;
        // Held while dialing for the pool: one dial per key at a time, and
        // who waited for it shares its result.
        let mut _dialing = None;
        let single = if self.speaks_single(&host.name) {
            // Offer both: an agent upgraded since answers mesh/2.
            false
        } else if let Some(hop) = reuse(&entry, &leaf, &authority).await? {
            return Ok(hop);
        } else if full() {
            true
        } else {
            let dialing = entry.dialing.lock().await;
            if let Some(hop) = reuse(&entry, &leaf, &authority).await? {
                return Ok(hop);
            }
            // If the dial this one waited for found a mesh/1 agent, there
            // is no point in waiting for each other: offer both, unlocked.
            let (mesh1, full) = (self.speaks_single(&host.name), full());
            if !mesh1 && !full {
                _dialing = Some(dialing);
            }
            !mesh1 && full
        };
        self.fresh(pi, &entry, &key, leaf, &authority, src, dst, host, single)
            .await
    }

    /// Dials `host`, makes a connection (pooled if it is `mesh/2`) and
    /// opens the hop on it; with `single`, offers only `mesh/1`.
    #[allow(clippy::too_many_arguments)]
    async fn fresh(
        &self,
        pi: &Inputs,
        entry: &Entry,
        key: &Key,
        leaf: Arc<Current>,
        authority: &str,
        src: &Service,
        dst: &Service,
        host: &Node,
        single: bool,
    ) -> Result<Hop, ProxyError> {
        let addr = SocketAddr::new(host.address, dst.port);
        let tcp = dial(addr).await?;
        let offer = if single {
            Offer::Single
        } else {
            Offer::Default
        };
        let tls = pi
            .tls
            .connect(tcp, &src.name, &dst.name, &host.name, offer)
            .await
            .inspect_err(|e| pi.telemetry.handshake_failed(Side::Outbound, e.reason()))?;
        let resumed = crate::tls::resumed(tls.get_ref().1);
        pi.telemetry.handshake(Side::Outbound, resumed);
        let protocol = crate::tls::protocol(tls.get_ref().1);
        debug!(src = %src.name, dst = %dst.name, %addr, alpn = protocol.alpn(), resumed, "mTLS established");
        if protocol == Protocol::Single {
            if !single {
                lock(&self.single).insert(host.name.clone(), Instant::now());
            }
            return Ok(Hop::Single(Box::new(tls)));
        }
        lock(&self.single).remove(&host.name);
        let conn = Conn::start(tls, leaf).await?;
        {
            let mut conns = lock(&entry.conns);
            conns.push(conn.clone());
            debug!(src = %key.src, dst = %key.dst, node = %key.node, conns = conns.len(), "pooled a mesh/2 connection");
        }
        conn.open(authority).await
    }

    /// The entry of `key`, made on first use.
    fn entry(&self, key: &Key) -> Arc<Entry> {
        lock(&self.keys).entry(key.clone()).or_default().clone()
    }

    fn speaks_single(&self, node: &NodeName) -> bool {
        let mut single = lock(&self.single);
        match single.get(node) {
            Some(since) if since.elapsed() < SINGLE_FOR => true,
            Some(_) => {
                single.remove(node);
                false
            }
            None => false,
        }
    }

    /// Pooled connections in all.
    pub fn total(&self) -> usize {
        self.usage().0
    }

    /// Pooled connections in all, and the streams open on them.
    pub fn usage(&self) -> (usize, usize) {
        let entries: Vec<Arc<Entry>> = lock(&self.keys).values().cloned().collect();
        entries.iter().fold((0, 0), |(conns, streams), e| {
            let c = lock(&e.conns);
            let open: usize = c
                .iter()
                .map(|c| c.usage.streams.load(Ordering::SeqCst))
                .sum();
            (conns + c.len(), streams + open)
        })
    }

    /// Abandons connections that are closed, or idle since `IDLE` before
    /// `now`, and forgets keys left without any.
    pub fn sweep(&self, now: Instant) {
        let mut keys = lock(&self.keys);
        keys.retain(|_, entry| {
            let mut conns = lock(&entry.conns);
            conns.retain(|c| !c.usage.closed.load(Ordering::SeqCst) && !c.idle(now));
            // A key someone is dialing for stays.
            !conns.is_empty() || entry.dialing.try_lock().is_err()
        });
    }

    /// Sweeps every few seconds, until dropped.
    pub async fn sweep_forever(self: Arc<Self>) {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            every.tick().await;
            self.sweep(Instant::now());
        }
    }
}

/// A stream on the least loaded usable connection of `entry`, if one has
/// room; `None` if none does, or if the one tried could not carry the
/// stream (it is abandoned: the caller makes a fresh one).
async fn reuse(
    entry: &Entry,
    leaf: &Arc<Current>,
    authority: &str,
) -> Result<Option<Hop>, ProxyError> {
    let Some(conn) = pick(entry, leaf) else {
        return Ok(None);
    };
    let failure = match tokio::time::timeout(POOLED_ANSWER, conn.open(authority)).await {
        Ok(Ok(hop)) => return Ok(Some(hop)),
        Ok(Err(ProxyError::Tunnel(e))) if e.is_retryable() => e.to_string(),
        Ok(Err(e)) => return Err(e),
        Err(_) => format!("no answer within {POOLED_ANSWER:?}"),
    };
    debug!(error = %failure, "pooled connection could not carry a stream; abandoning it");
    lock(&entry.conns).retain(|c| !Arc::ptr_eq(&c.usage, &conn.usage));
    Ok(None)
}

/// The least loaded connection of `entry` that can take a stream now.
/// Drops the ones that never will again (closed, GOAWAY, made with an
/// older leaf than `leaf`).
fn pick(entry: &Entry, leaf: &Arc<Current>) -> Option<Conn> {
    let mut conns = lock(&entry.conns);
    conns.retain(|c| {
        !c.usage.closed.load(Ordering::SeqCst) && Arc::ptr_eq(&c.leaf, leaf) && c.client.is_ready()
    });
    let full = conns.len() >= PER_KEY;
    conns
        .iter()
        .min_by_key(|c| c.usage.streams.load(Ordering::SeqCst))
        .filter(|c| {
            let streams = c.usage.streams.load(Ordering::SeqCst);
            streams < SPREAD_AT || (full && streams < c.client.max_streams())
        })
        .cloned()
}

impl Conn {
    /// The HTTP/2 handshake over `tls`; the driver runs in a task of its
    /// own and marks the connection closed when it ends. (Generic so tests
    /// can run it over an in-memory pipe.)
    async fn start<T>(tls: T, leaf: Arc<Current>) -> Result<Self, ProxyError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (client, driver) = tunnel::handshake(tls).await?;
        let usage = Arc::new(Usage {
            streams: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            closed: AtomicBool::new(false),
        });
        let closed = usage.clone();
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                debug!(error = %e, "mesh/2 connection ended");
            }
            closed.closed.store(true, Ordering::SeqCst);
        });
        Ok(Self {
            client,
            leaf,
            usage,
        })
    }

    /// Opens a stream; a refusal is [`ProxyError::StreamRefused`].
    async fn open(&self, authority: &str) -> Result<Hop, ProxyError> {
        self.usage.streams.fetch_add(1, Ordering::SeqCst);
        let in_use = InUse(Some(self.usage.clone()));
        match self.client.open(authority).await {
            Ok(stream) => Ok(Hop::Stream(stream, Dialer::new(in_use))),
            Err(TunnelError::Refused { status }) => Err(ProxyError::StreamRefused { status }),
            Err(e) => Err(e.into()),
        }
    }

    fn idle(&self, now: Instant) -> bool {
        self.usage.streams.load(Ordering::SeqCst) == 0
            && now.saturating_duration_since(*lock(&self.usage.idle_since)) >= IDLE
    }
}

#[cfg(test)]
mod tests;

/// The source side of a stream's move to a `mesh/move` connection of its
/// own (a [`Mover`] for `relay::relay_tunnel`): dials once the flow is
/// busy, if the destination gave a token; stops counting the stream on
/// its pooled connection once it left. A failed dial leaves the stream
/// where it is.
pub struct Dialer {
    in_use: Option<InUse>,
    /// What the move needs; `None` without a token, or once tried.
    plan: Option<Box<Plan>>,
    dialing: Option<Dialing>,
}

type Moved = tokio_rustls::client::TlsStream<Transport>;
type Dialing = Pin<Box<dyn Future<Output = Result<Moved, ProxyError>> + Send>>;

struct Plan {
    token: u128,
    tls: Arc<Tls>,
    telemetry: Arc<Telemetry>,
    addr: SocketAddr,
    src: ServiceName,
    dst: ServiceName,
    node: NodeName,
}

impl Dialer {
    fn new(in_use: InUse) -> Self {
        Self {
            in_use: Some(in_use),
            plan: None,
            dialing: None,
        }
    }
}

impl Plan {
    /// The `mesh/move` connection, its token sent and taken (the
    /// destination answered `tunnel::MOVE_ACK`), within
    /// `tls::HANDSHAKE_TIMEOUT`. Until then the stream is untouched, so a
    /// failure leaves it where it is.
    async fn dial(self) -> Result<Moved, ProxyError> {
        let bound = crate::tls::HANDSHAKE_TIMEOUT;
        tokio::time::timeout(bound, self.dial_unbounded())
            .await
            .map_err(|_| ProxyError::SlowConnect {
                node: self.node.clone(),
                after: bound,
            })?
    }

    async fn dial_unbounded(&self) -> Result<Moved, ProxyError> {
        let tcp = dial(self.addr).await?;
        let mut tls = self
            .tls
            .connect(tcp, &self.src, &self.dst, &self.node, Offer::Move)
            .await
            .inspect_err(|e| self.telemetry.handshake_failed(Side::Outbound, e.reason()))?;
        self.telemetry
            .handshake(Side::Outbound, crate::tls::resumed(tls.get_ref().1));
        tls.write_all(&self.token.to_be_bytes()).await?;
        tls.flush().await?;
        // A refusal (of the token, or of this leaf: TLS 1.3 servers check
        // the client's certificate after the client is done) fails here.
        let mut ack = [0u8; 1];
        tls.read_exact(&mut ack).await?;
        if ack[0] != tunnel::MOVE_ACK {
            return Err(ProxyError::Io(std::io::Error::other(format!(
                "mesh/move answered {:#04x}, not the ack",
                ack[0]
            ))));
        }
        self.telemetry.moved(Side::Outbound);
        debug!(src = %self.src, dst = %self.dst, node = %self.node, "stream moved to a connection of its own");
        Ok(tls)
    }
}

impl Mover for Dialer {
    type Conn = Moved;

    fn poll_conn(&mut self, cx: &mut Context<'_>, progress: Progress) -> Poll<Moved> {
        if self.dialing.is_none() {
            let busy = progress.bytes >= MOVE_AFTER_BYTES || progress.reads >= MOVE_AFTER_READS;
            if !(busy && progress.open) {
                return Poll::Pending;
            }
            let Some(plan) = self.plan.take() else {
                return Poll::Pending;
            };
            self.dialing = Some(Box::pin(plan.dial()));
        }
        let dialing = self.dialing.as_mut().expect("set above");
        let moved = std::task::ready!(dialing.as_mut().poll(cx));
        self.dialing = None;
        match moved {
            Ok(conn) => Poll::Ready(conn),
            Err(e) => {
                debug!(error = %e, "could not move a stream; it stays on its pooled connection");
                Poll::Pending
            }
        }
    }

    fn left(&mut self) {
        self.in_use = None;
    }
}
