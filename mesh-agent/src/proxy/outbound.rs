//! The outbound listener: apps' connections redirected by connect4/6.
//!
//! The original destination and both services come from the record sock_ops
//! left in `CONNS`. A connection without a record (someone dialing the
//! listener directly) is closed.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::{
    Inputs, OrigDstAddr, ProxyError, Redirect, ServiceIds,
    balance::{Active, Balancer},
    dial, local_addr,
    pool::{Hop, Pool},
    relay,
};
use crate::{
    config::{Node, Service},
    snapshot::Snapshot,
    telemetry::Side,
};

/// Instances a VIP connection tries before the app sees it fail.
pub const TRIES: usize = 3;
/// The longest one try (dial and handshake) may take while another
/// instance is left to try; the last one gets what is left of the budget.
pub const TRY_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest all tries together may take.
pub const FAILOVER_BUDGET: Duration = Duration::from_secs(2);

/// The outbound listener and what its connections use.
pub struct Outbound {
    listener: TcpListener,
    handler: Arc<Handler>,
}

/// What each connection uses; shared with its task (the listener is not,
/// so it closes as soon as `run` is dropped).
struct Handler {
    pi: Arc<Inputs>,
    /// Where each connection's record waits (the kernel's `CONNS`).
    orig: Arc<dyn OrigDstAddr>,
    /// The names behind the records' service ids.
    ids: Arc<ServiceIds>,
    /// The pick of an instance, and what it knows of each.
    balancer: Arc<Balancer>,
    /// Connections to other agents, shared by app connections.
    pool: Arc<Pool>,
}

/// A connection to one instance.
enum Upstream {
    /// The service itself, on this node.
    Local(TcpStream),
    /// The agent of the instance's node, over mTLS.
    Remote(Hop),
}

impl Outbound {
    /// The outbound listener on `listener`.
    pub fn new(
        listener: TcpListener,
        pi: Arc<Inputs>,
        orig: Arc<dyn OrigDstAddr>,
        ids: Arc<ServiceIds>,
        balancer: Arc<Balancer>,
        pool: Arc<Pool>,
    ) -> Self {
        Self {
            listener,
            handler: Arc::new(Handler {
                pi,
                orig,
                ids,
                balancer,
                pool,
            }),
        }
    }

    /// Accepts redirected app connections until the task is dropped.
    pub async fn run(self) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning.
                    warn!(error = %e, "outbound accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handler = self.handler.clone();
            // Counted from its accept: an agent that stops (or hands over)
            // waits for it, even before it flows.
            let live = handler.pi.drain.enter();
            tokio::spawn(async move {
                let _live = live;
                match handler.handle(stream).await {
                    // Logged by `authorize`, once, with the deciding rule.
                    Err(ProxyError::Denied { .. }) | Ok(()) => {}
                    Err(e) => warn!(%peer, error = %e, "outbound connection closed"),
                }
            });
        }
    }
}

impl Handler {
    async fn handle(&self, mut app: TcpStream) -> Result<(), ProxyError> {
        let pi = &self.pi;
        let peer = app.peer_addr()?;
        let local = app.local_addr()?;
        let orig = self
            .orig
            .take(peer, local)
            .ok_or(ProxyError::NoRecord { peer })?;
        app.set_nodelay(true)?;
        let snapshot = pi.snapshot();
        let Redirect { src, dst, dialed } =
            Redirect::from_record(&orig, &self.ids, &snapshot.config)?;
        // Fail fast at the source too (the kernel normally refused already).
        pi.authorize(&src.name, &dst.name, peer, dialed, Side::Source)?;
        let (node, upstream, _active) = if dialed.ip().to_canonical() == dst.vip.to_canonical() {
            self.fail_over(&snapshot, src, dst, dialed).await?
        } else {
            // A catalog address names one instance: no other will do.
            let host = super::route::instance(&snapshot.config, dst, dialed)?;
            let active = self.balancer.started(&dst.name, &host.name);
            let upstream = self
                .connect(host, src, dst)
                .await
                .inspect_err(|_| pi.telemetry.instance_failed(&dst.name, &host.name))?;
            (host.name.clone(), upstream, active)
        };
        pi.telemetry.instance_connected(&dst.name, &node);
        let (src_name, dst_name) = (&src.name, &dst.name);
        let (sent, received) = match upstream {
            Upstream::Local(mut svc) => {
                let copy = relay::relay(&mut app, &mut svc);
                pi.splice_while_allowed(copy, src_name, dst_name, "outbound")
                    .await?
            }
            Upstream::Remote(Hop::Single(mut remote)) => {
                let copy = relay::relay(&mut app, &mut *remote);
                pi.splice_while_allowed(copy, src_name, dst_name, "outbound")
                    .await?
            }
            Upstream::Remote(Hop::Stream(mut stream, mut dialer)) => {
                let copy = relay::relay_tunnel(&mut app, &mut stream, &mut dialer);
                pi.splice_while_allowed(copy, src_name, dst_name, "outbound")
                    .await?
            }
        };
        info!(src = %src.name, dst = %dst.name, %node, sent, received, "outbound connection done");
        Ok(())
    }

    /// A connection to an instance of `dst` picked by its `lb`: on a failed
    /// or slow dial or handshake, another instance not tried yet, up to
    /// [`TRIES`] in all and within [`FAILOVER_BUDGET`]. Returns the node,
    /// the connection and its count among the node's active ones; the last
    /// error if no instance took it.
    async fn fail_over(
        &self,
        snapshot: &Snapshot,
        src: &Service,
        dst: &Service,
        dialed: SocketAddr,
    ) -> Result<(String, Upstream, Active), ProxyError> {
        let deadline = Instant::now() + FAILOVER_BUDGET;
        let mut tried: Vec<String> = Vec::new();
        let mut last = None;
        while tried.len() < TRIES {
            let Some(name) =
                self.balancer
                    .pick(dst, &self.pi.node, &tried, Instant::now(), &snapshot.health)
            else {
                break;
            };
            tried.push(name.clone());
            let host = snapshot
                .config
                .node(&name)
                .ok_or_else(|| ProxyError::NoInstance {
                    service: dst.name.clone(),
                    dialed,
                })?;
            let active = self.balancer.started(&dst.name, &name);
            // The last instance left to try gets the rest of the budget: a
            // dial that is only slow (a SYN retransmitted after 1 s, behind
            // a full backlog) is better than no connection at all.
            let left = deadline.saturating_duration_since(Instant::now());
            let others = tried.len() < TRIES
                && dst
                    .nodes
                    .iter()
                    .any(|n| !tried.contains(n) && snapshot.health.state(dst, n).takes_traffic());
            let bound = if others { TRY_TIMEOUT.min(left) } else { left };
            let attempt = match tokio::time::timeout(bound, self.connect(host, src, dst)).await {
                Ok(attempt) => attempt,
                Err(_) => Err(ProxyError::SlowConnect {
                    node: name.clone(),
                    after: bound,
                }),
            };
            match attempt {
                Ok(upstream) => {
                    self.balancer.succeeded(&dst.name, &name);
                    return Ok((name, upstream, active));
                }
                Err(e) => {
                    warn!(src = %src.name, dst = %dst.name, node = %name, error = %e, "instance failed, trying another");
                    self.balancer.failed(&dst.name, &name, Instant::now());
                    self.pi.telemetry.instance_failed(&dst.name, &name);
                    last = Some(e);
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(last.unwrap_or(ProxyError::NoInstance {
            service: dst.name.clone(),
            dialed,
        }))
    }

    /// Dials the instance of `dst` on `host`: the local service itself if
    /// `host` is this node (bytes stay here), else its agent, over mTLS as
    /// `src` (a stream on a pooled connection, see `pool`).
    async fn connect(
        &self,
        host: &Node,
        src: &Service,
        dst: &Service,
    ) -> Result<Upstream, ProxyError> {
        let pi = &self.pi;
        if host.name == pi.node {
            debug!(src = %src.name, dst = %dst.name, "outbound, same node");
            return Ok(Upstream::Local(dial(local_addr(dst.port)).await?));
        }
        debug!(src = %src.name, dst = %dst.name, node = %host.name, "outbound, to remote agent");
        let hop = self.pool.connect(pi, src, dst, host).await?;
        Ok(Upstream::Remote(hop))
    }
}
