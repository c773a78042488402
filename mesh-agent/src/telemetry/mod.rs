//! What the agent tells about its connections, kept by one object,
//! [`Telemetry`]: the Prometheus metrics (`metrics`, `GET /metrics`), the
//! verdicts per (source, destination) pair (`GET /status`), and the access
//! log, one line per connection under the tracing target `access`.

pub mod labels;
pub mod metrics;
pub mod registry;
pub mod traffic;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Mutex,
    time::Instant,
};

use mesh_common::DenialKey;

use crate::names::{NodeName, ServiceName};

pub use labels::{
    ContainerLabels, Direction, HandshakeKind, MapLabels, Refusal, Reporter, ServiceLabels, Side,
    Verdict,
};
pub use metrics::Instance;
use metrics::{Conn, Metrics};
pub use registry::Registry;

/// Which end of a call an agent decides for.
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

/// The agent's metrics, pair stats and access log.
#[derive(Default)]
pub struct Telemetry {
    metrics: Metrics,
    /// Verdicts per (source, destination), for `status`.
    pairs: Mutex<BTreeMap<(String, String), PairStats>>,
    /// Per `DENIALS` key, the kernel's count already folded in.
    kernel_seen: Mutex<HashMap<DenialKey, u64>>,
    /// Per pair, over the last minute, for the web UI's topology.
    traffic: traffic::Traffic,
}

/// The labels of an instance's metrics.
pub fn instance(service: &ServiceName, node: &NodeName) -> Instance {
    Instance {
        service: service.to_string(),
        node: node.to_string(),
    }
}

/// A connection counted open; [`Telemetry::closed`] ends it.
#[derive(Debug)]
pub struct Open {
    conn: Conn,
    started: Instant,
    /// The container at this node's end, if not the node itself.
    container: Option<std::sync::Arc<ContainerLabels>>,
}

impl Telemetry {
    /// The intentions allowed `src -> dst`.
    pub fn allowed(&self, src: &ServiceName, dst: &ServiceName) {
        self.count(src, dst, |s| s.allowed += 1);
    }

    /// The intentions refused `src -> dst` here, by `rule`: counted per
    /// side, and one access-log line (`verdict="denied"`).
    pub fn denied(
        &self,
        src: &str,
        dst: &str,
        rule: &str,
        peer: SocketAddr,
        dialed: SocketAddr,
        side: Reporter,
    ) {
        self.count(src, dst, |s| match side {
            Reporter::Source => s.denied_at_source += 1,
            Reporter::Destination => s.denied += 1,
        });
        self.traffic.denied(src, dst, 1);
        self.metrics.denied(src, dst, rule, side, 1);
        tracing::info!(
            target: "access", %src, %dst, %peer, %dialed, to_destination = 0u64,
            to_source = 0u64, duration_ms = 0u64, verdict = Verdict::Denied.as_str(), %rule, "connection"
        );
    }

    /// An allowed connection `src -> dst` starts flowing; `container`:
    /// the container at this node's end (the caller's on the outbound
    /// side, the destination's on the inbound side), if not the node.
    pub fn opened(
        &self,
        src: &ServiceName,
        dst: &ServiceName,
        side: Side,
        container: Option<std::sync::Arc<ContainerLabels>>,
    ) -> Open {
        let conn = Conn {
            source: src.to_string(),
            destination: dst.to_string(),
            side,
        };
        self.metrics.opened(&conn);
        if side == Side::Outbound {
            self.traffic.opened(&conn.source, &conn.destination);
        }
        Open {
            conn,
            started: Instant::now(),
            container,
        }
    }

    /// A connection that `opened` is done, with the bytes each way and how
    /// it ended: metrics and its access-log line.
    pub fn closed(&self, open: Open, to_destination: u64, to_source: u64, verdict: Verdict) {
        let Open {
            conn,
            started,
            container,
        } = open;
        self.metrics.closed(&conn, to_destination, to_source);
        if conn.side == Side::Outbound {
            self.traffic
                .closed(&conn.source, &conn.destination, to_destination + to_source);
        }
        let (src, dst, side) = (&conn.source, &conn.destination, conn.side);
        tracing::info!(
            target: "access", %src, %dst, side = side.as_str(), to_destination, to_source,
            duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            verdict = verdict.as_str(),
            container = container.as_ref().map(|c| c.cgroup.as_str()),
            netns = container.as_ref().map(|c| c.netns.as_str()),
            "connection"
        );
    }

    /// A live connection `src -> dst` was closed because the intentions
    /// now deny it.
    pub fn cut(&self, src: &ServiceName, dst: &ServiceName) {
        self.count(src, dst, |s| s.cut += 1);
    }

    /// A connection went to the instance of `service` on `node`.
    pub fn instance_connected(&self, service: &ServiceName, node: &NodeName) {
        self.metrics.instance_connected(&instance(service, node));
    }

    /// A dial or handshake to the instance of `service` on `node` failed.
    pub fn instance_failed(&self, service: &ServiceName, node: &NodeName) {
        self.metrics.instance_failed(&instance(service, node));
    }

    /// A TLS handshake completed; `resumed`: from a session ticket.
    pub fn handshake(&self, side: Side, resumed: bool) {
        self.metrics.handshake(side, resumed);
    }

    /// A `mesh/2` stream moved to a connection of its own.
    pub fn moved(&self, side: Side) {
        self.metrics.moved(side);
    }

    /// A TLS handshake failed (or was refused a slot), for `reason`.
    pub fn handshake_failed(&self, side: Side, reason: Refusal) {
        self.metrics.handshake_failed(side, reason);
    }

    /// Folds what connect4/6 refused since the last call into the metrics
    /// and the pair stats (`side="source"`). `counts` is the kernel's count
    /// per `DENIALS` key (all CPUs); `describe` names a key's source,
    /// destination and rule.
    pub fn harvest_kernel_denials(
        &self,
        counts: Vec<(DenialKey, u64)>,
        describe: impl Fn(&DenialKey) -> (String, String, String),
    ) {
        let mut seen = self.kernel_seen.lock().unwrap_or_else(|e| e.into_inner());
        for (key, count) in counts {
            let last = seen.insert(key, count).unwrap_or(0);
            let new = since(last, count);
            if new == 0 {
                continue;
            }
            let (src, dst, rule) = describe(&key);
            self.metrics
                .denied(&src, &dst, &rule, Reporter::Source, new);
            self.count(&src, &dst, |s| s.denied_at_source += new);
            self.traffic.denied(&src, &dst, new);
        }
    }

    /// The verdicts so far, per (source, destination), in order.
    pub fn pairs(&self) -> Vec<((String, String), PairStats)> {
        self.pairs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(pair, stats)| (pair.clone(), *stats))
            .collect()
    }

    /// This agent's traffic per pair (`traffic`).
    pub fn traffic(&self) -> Vec<traffic::Edge> {
        self.traffic.edges()
    }

    /// Registers the families this object counts into.
    pub fn register(&self, reg: &mut Registry) {
        self.metrics.register(reg);
    }

    /// The text of this object's families alone (tests).
    #[cfg(test)]
    pub fn render(&self) -> String {
        let mut reg = Registry::default();
        self.register(&mut reg);
        reg.render()
    }

    /// sk_lookup has refused `total` connections from non-mesh sources so
    /// far (the kernel's count): counted as inbound handshake failures.
    pub fn kernel_refused(&self, total: u64) {
        self.metrics.kernel_refused(total);
    }

    fn count(&self, src: &str, dst: &str, f: impl FnOnce(&mut PairStats)) {
        let mut pairs = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
        f(pairs.entry((src.to_owned(), dst.to_owned())).or_default());
    }
}

/// How many were refused between two readings of one key's count (a key
/// evicted from the LRU map and filed again starts from zero).
pub fn since(last: u64, now: u64) -> u64 {
    if now >= last { now - last } else { now }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_since_the_last_report() {
        assert_eq!(since(0, 1), 1);
        assert_eq!(since(1, 1000), 999);
        // Evicted and filed again.
        assert_eq!(since(1000, 3), 3);
    }

    #[test]
    fn one_object_counts_verdicts_and_metrics() {
        let t = Telemetry::default();
        let addr: SocketAddr = "10.0.0.1:5001".parse().unwrap();
        t.allowed(&"web".parse().unwrap(), &"api".parse().unwrap());
        let open = t.opened(
            &"web".parse().unwrap(),
            &"api".parse().unwrap(),
            Side::Outbound,
            None,
        );
        t.closed(open, 10, 20, Verdict::Allowed);
        t.denied(
            "web",
            "db",
            "default policy",
            addr,
            addr,
            Reporter::Destination,
        );
        t.denied("web", "db", "default policy", addr, addr, Reporter::Source);
        t.cut(&"web".parse().unwrap(), &"api".parse().unwrap());
        let key = DenialKey {
            src: 1,
            dst: 2,
            reason: mesh_common::DENIED_BY_INTENTIONS,
            _pad: 0,
        };
        let describe = |_: &DenialKey| ("web".into(), "db".into(), "default policy".into());
        t.harvest_kernel_denials(vec![(key, 5)], describe);
        // Only what is new since the last harvest counts.
        t.harvest_kernel_denials(vec![(key, 7)], describe);
        let pairs: BTreeMap<_, _> = t.pairs().into_iter().collect();
        let stats = |s: &str, d: &str| pairs[&(s.to_owned(), d.to_owned())];
        assert_eq!(
            stats("web", "api"),
            PairStats {
                allowed: 1,
                cut: 1,
                ..PairStats::default()
            }
        );
        assert_eq!(
            stats("web", "db"),
            PairStats {
                denied: 1,
                denied_at_source: 1 + 7,
                ..PairStats::default()
            }
        );
        let mut reg = Registry::default();
        t.register(&mut reg);
        let text = reg.render();
        for line in [
            "mesh_connections_closed_total{source=\"web\",destination=\"api\",side=\"outbound\"} 1",
            "mesh_denials_total{source=\"web\",destination=\"db\",rule=\"default policy\",side=\"source\"} 8",
            "mesh_denials_total{source=\"web\",destination=\"db\",rule=\"default policy\",side=\"destination\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
    }
}
