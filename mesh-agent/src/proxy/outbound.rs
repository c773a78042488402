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
    pool::{Hop, Pool},
    relay,
};
use crate::{
    config::{Node, Service},
    containers::Container,
    names::NodeName,
    snapshot::Snapshot,
    telemetry::{Reporter, Side},
    tls::PeerNode,
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
    /// Shared with a container's record of its sockets (for a handover):
    /// it closes with its last holder.
    listener: Arc<TcpListener>,
    handler: Arc<Handler>,
}

/// Where an outbound listener listens: the node's network namespace or a
/// container's.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The namespace's cookie: the kernel's records are keyed by it.
    pub netns: u64,
    /// The container, if not the node.
    pub container: Option<Arc<Container>>,
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
    origin: Origin,
}

/// A connection to one instance.
enum Upstream {
    /// The service itself, on this node.
    Local(TcpStream),
    /// The agent of the instance's node, over mTLS.
    Remote(Hop),
}

impl Outbound {
    /// The outbound listener on `listener`, in `origin`.
    pub fn new(
        listener: impl Into<Arc<TcpListener>>,
        pi: Arc<Inputs>,
        orig: Arc<dyn OrigDstAddr>,
        ids: Arc<ServiceIds>,
        balancer: Arc<Balancer>,
        pool: Arc<Pool>,
        origin: Origin,
    ) -> Self {
        Self {
            listener: listener.into(),
            handler: Arc::new(Handler {
                pi,
                orig,
                ids,
                balancer,
                pool,
                origin,
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
            .take(peer, local, self.origin.netns)
            .ok_or(ProxyError::NoRecord { peer })?;
        let container = self.origin.container.as_ref();
        if let Some(c) = container {
            c.accepted();
        }
        app.set_nodelay(true)?;
        let snapshot = pi.snapshot();
        let Redirect { src, dst, dialed } =
            Redirect::from_record(&orig, &self.ids, &snapshot.config)?;
        // Fail fast at the source too (the kernel normally refused already).
        pi.authorize(&src.name, &dst.name, peer, dialed, Reporter::Source)?;
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
        let pair = (&src.name, &dst.name);
        // Cut if the destination's node is revoked (not our own node).
        let remote = PeerNode {
            node: node.clone(),
            node_ca: None,
        };
        let peer = (node != pi.node).then_some(&remote);
        let (sent, received) = match upstream {
            Upstream::Local(mut svc) => {
                let copy = relay::relay(&mut app, &mut svc);
                pi.splice_while_allowed(copy, pair, peer, Side::Outbound, container)
                    .await?
            }
            Upstream::Remote(Hop::Single(mut remote)) => {
                let copy = relay::relay(&mut app, &mut *remote);
                pi.splice_while_allowed(copy, pair, peer, Side::Outbound, container)
                    .await?
            }
            Upstream::Remote(Hop::Stream(mut stream, mut dialer)) => {
                let copy = relay::relay_tunnel(&mut app, &mut stream, &mut dialer);
                pi.splice_while_allowed(copy, pair, peer, Side::Outbound, container)
                    .await?
            }
        };
        info!(
            src = %src.name, dst = %dst.name, %node, sent, received,
            container = container.map(|c| c.labels.cgroup.as_str()),
            "outbound connection done"
        );
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
    ) -> Result<(NodeName, Upstream, Active), ProxyError> {
        let deadline = Instant::now() + FAILOVER_BUDGET;
        let mut tried: Vec<NodeName> = Vec::new();
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
            return Ok(Upstream::Local(pi.dial_local(dst).await?.0));
        }
        if pi.snapshot().config.is_banned(&host.name) {
            return Err(ProxyError::Revoked {
                node: host.name.clone(),
            });
        }
        debug!(src = %src.name, dst = %dst.name, node = %host.name, "outbound, to remote agent");
        let hop = self.pool.connect(pi, src, dst, host).await?;
        Ok(Upstream::Remote(hop))
    }
}

#[cfg(test)]
mod tests {
    use mesh_common::OrigDst;

    use super::*;
    use crate::{
        proxy::fixture::{B, Fixture, OneRecord, eventually, exchange, web_to_api},
        telemetry::Telemetry,
    };

    /// Node a's outbound listener, running; its first connection's record
    /// (if `dialed`) says `web` dialed `dialed` for `api`. Its address and
    /// telemetry.
    async fn outbound(f: &Fixture, dialed: Option<SocketAddr>) -> (SocketAddr, Arc<Telemetry>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (pi, telemetry) = f.inputs("a");
        let ids = Arc::new(ServiceIds::default());
        let record = dialed.map(|dialed| OrigDst {
            dst: crate::ebpf::sock_addr(dialed),
            src_service: ids.id(&"web".parse().unwrap()),
            dst_service: ids.id(&"api".parse().unwrap()),
            uid: 1000,
            created_ns: 0,
        });
        let outbound = Outbound::new(
            listener,
            pi,
            Arc::new(OneRecord(record.into())),
            ids,
            Arc::default(),
            Arc::default(),
            Origin {
                netns: 0,
                container: None,
            },
        );
        tokio::spawn(outbound.run());
        (addr, telemetry)
    }

    /// What the app reads back after sending `hello` and half-closing
    /// (nothing if the agent closed it).
    async fn call(outbound: SocketAddr) -> Vec<u8> {
        exchange(TcpStream::connect(outbound).await.unwrap()).await
    }

    fn vip(f: &Fixture) -> SocketAddr {
        let api = f.snapshots.borrow().config.service("api").unwrap().vip;
        SocketAddr::new(api, f.port)
    }

    #[tokio::test]
    async fn a_connection_without_a_record_is_closed() {
        let f = Fixture::new(true).await;
        let b = f.inbound().await;
        let (addr, a) = outbound(&f, None).await;
        assert_eq!(call(addr).await, b"");
        assert_eq!(f.api_accepted(), 0);
        assert!(a.pairs().is_empty() && b.pairs().is_empty());
    }

    #[tokio::test]
    async fn a_call_to_the_vip_goes_over_mtls_to_the_destination_agent() {
        let f = Fixture::new(true).await;
        let b = f.inbound().await;
        let (addr, a) = outbound(&f, Some(vip(&f))).await;
        assert_eq!(call(addr).await, b"hello");
        assert_eq!(f.api_accepted(), 1);
        // Decided on both sides, each counting its own.
        assert_eq!((web_to_api(&a).allowed, web_to_api(&b).allowed), (1, 1));
        let metrics = a.render();
        for line in [
            "mesh_handshakes_total{side=\"outbound\",kind=\"full\"} 1",
            "mesh_instance_connections_total{service=\"api\",node=\"b\"} 1",
        ] {
            assert!(metrics.contains(line), "{line} not in\n{metrics}");
        }
        let closed =
            "mesh_connections_closed_total{source=\"web\",destination=\"api\",side=\"outbound\"} 1";
        assert!(eventually(|| a.render().contains(closed)).await);
    }

    #[tokio::test]
    async fn a_call_to_a_catalog_address_goes_to_that_nodes_instance_only() {
        let f = Fixture::new(true).await;
        let b = f.inbound().await;
        let (addr, _) = outbound(&f, Some(SocketAddr::new(B, f.port))).await;
        assert_eq!(call(addr).await, b"hello");
        assert_eq!(web_to_api(&b).allowed, 1);
        // Node a's address: it hosts no instance of api.
        let a_address = SocketAddr::new("10.0.0.1".parse().unwrap(), f.port);
        let (addr, a) = outbound(&f, Some(a_address)).await;
        assert_eq!(call(addr).await, b"");
        assert_eq!(f.api_accepted(), 1);
        assert_eq!(web_to_api(&b).allowed, 1);
        assert!(!a.render().contains("mesh_instance_connections_total"));
    }

    #[tokio::test]
    async fn a_denied_pair_is_closed_at_the_source() {
        let f = Fixture::new(false).await;
        let b = f.inbound().await;
        let (addr, a) = outbound(&f, Some(vip(&f))).await;
        assert_eq!(call(addr).await, b"");
        assert_eq!(f.api_accepted(), 0);
        assert_eq!(web_to_api(&a).denied_at_source, 1);
        // Nothing reached the destination's agent.
        assert!(b.pairs().is_empty());
        let metrics = a.render();
        assert!(!metrics.contains("mesh_handshakes_total{"), "{metrics}");
    }

    #[tokio::test]
    async fn an_instance_whose_agent_is_down_fails_the_call_and_is_counted() {
        let f = Fixture::new(true).await;
        // No inbound listener on node b: the dial is refused.
        let (addr, a) = outbound(&f, Some(vip(&f))).await;
        assert_eq!(call(addr).await, b"");
        assert_eq!(f.api_accepted(), 0);
        let failed = "mesh_instance_connect_failures_total{service=\"api\",node=\"b\"} 1";
        let metrics = a.render();
        assert!(metrics.contains(failed), "{metrics}");
    }
}
