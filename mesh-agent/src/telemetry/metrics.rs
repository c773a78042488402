//! Prometheus metrics (`GET /metrics` on the admin endpoint), in the text
//! format, by `prometheus-client`.
//!
//! | metric | labels |
//! |---|---|
//! | `mesh_connections_opened_total`, `_closed_total`, `mesh_connections_active` | source, destination, side |
//! | `mesh_connection_bytes_total` | source, destination, side, direction (`to_destination`, `to_source`) |
//! | `mesh_handshakes_total` | side, kind (`full`, `resumed`) |
//! | `mesh_handshake_failures_total` | side, reason (`not_a_mesh_node`: refused in the kernel, before any handshake) |
//! | `mesh_handshakes_in_progress` | (none): inbound handshakes holding a slot now |
//! | `mesh_pooled_connections`, `mesh_pooled_streams` | (none): this agent's pooled `mesh/2` connections to other agents, and the app connections on them now |
//! | `mesh_catalog_connected` | (none): 1 while the catalog's store is reachable (always for a file), 0 while the agent runs on its last good catalog |
//! | `mesh_moved_streams_total` | side: busy `mesh/2` streams that moved to a `mesh/move` connection of their own |
//! | `mesh_denials_total` | source, destination, rule, side (`source`: connect() refused on the caller's node; `destination`) |
//! | `mesh_certificate_expiry_seconds` | service |
//! | `mesh_agent_certificate_expiry_seconds` | (none) |
//! | `mesh_ca_expiry_seconds` | kind (`root`, `node`, `intermediate`), subject, fingerprint |
//! | `mesh_ebpf_map_entries` | map |
//! | `mesh_instance_health` | service, node: 0 passing, 1 warning, 2 critical (as this agent knows it) |
//! | `mesh_instance_connections_total`, `mesh_instance_connections_active` | service, node: connections this agent sent to the instance |
//! | `mesh_instance_connect_failures_total` | service, node: failed dials or handshakes (each retried on another instance) |
//!
//! `side` is `outbound` (this agent speaks for the caller) or `inbound`
//! (for the destination); a call between two nodes counts on both agents.

use std::sync::atomic::AtomicU64;

use super::labels::{Direction, HandshakeKind, Refusal, Reporter, Side};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

use super::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Conn {
    pub source: String,
    pub destination: String,
    pub side: Side,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Moved {
    side: Side,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Bytes {
    source: String,
    destination: String,
    side: Side,
    direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Failure {
    side: Side,
    reason: Refusal,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Handshake {
    side: Side,
    kind: HandshakeKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Denial {
    source: String,
    destination: String,
    rule: String,
    side: Reporter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Instance {
    pub service: String,
    pub node: String,
}

/// The families [`Telemetry`](super::Telemetry) counts into; the other
/// components register their own (see [`Registry`]).
#[derive(Default)]
pub struct Metrics {
    opened: Family<Conn, Counter>,
    closed: Family<Conn, Counter>,
    active: Family<Conn, Gauge>,
    bytes: Family<Bytes, Counter>,
    handshakes: Family<Handshake, Counter>,
    failures: Family<Failure, Counter>,
    denials: Family<Denial, Counter>,
    moved: Family<Moved, Counter>,
    instance_opened: Family<Instance, Counter>,
    instance_failures: Family<Instance, Counter>,
    /// The kernel's `REFUSED` count at the last scrape.
    refused_seen: AtomicU64,
}

impl Metrics {
    /// Registers every family.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "mesh_connections_opened",
            "Connections opened",
            self.opened.clone(),
        );
        reg.register(
            "mesh_connections_closed",
            "Connections closed",
            self.closed.clone(),
        );
        reg.register(
            "mesh_connections_active",
            "Connections open now",
            self.active.clone(),
        );
        reg.register("mesh_connection_bytes", "Bytes proxied", self.bytes.clone());
        reg.register(
            "mesh_handshakes",
            "TLS handshakes completed, full or resumed",
            self.handshakes.clone(),
        );
        reg.register(
            "mesh_handshake_failures",
            "TLS handshakes that failed, by reason",
            self.failures.clone(),
        );
        reg.register(
            "mesh_moved_streams",
            "Busy mesh/2 streams that moved to a connection of their own",
            self.moved.clone(),
        );
        reg.register(
            "mesh_denials",
            "Connections refused by the intentions, by deciding rule",
            self.denials.clone(),
        );
        reg.register(
            "mesh_instance_connections",
            "Connections this agent sent to each instance",
            self.instance_opened.clone(),
        );
        reg.register(
            "mesh_instance_connect_failures",
            "Failed dials or handshakes to each instance",
            self.instance_failures.clone(),
        );
    }
}

impl Metrics {
    /// A connection starts flowing.
    pub fn opened(&self, conn: &Conn) {
        self.opened.get_or_create(conn).inc();
        self.active.get_or_create(conn).inc();
    }

    /// A connection that `opened` is done, with bytes each way.
    pub fn closed(&self, conn: &Conn, to_destination: u64, to_source: u64) {
        self.closed.get_or_create(conn).inc();
        self.active.get_or_create(conn).dec();
        for (direction, n) in [
            (Direction::ToDestination, to_destination),
            (Direction::ToSource, to_source),
        ] {
            let labels = Bytes {
                source: conn.source.clone(),
                destination: conn.destination.clone(),
                side: conn.side,
                direction,
            };
            self.bytes.get_or_create(&labels).inc_by(n);
        }
    }

    /// A TLS handshake completed; `resumed`: from a session ticket.
    pub fn handshake(&self, side: Side, resumed: bool) {
        let kind = if resumed {
            HandshakeKind::Resumed
        } else {
            HandshakeKind::Full
        };
        self.handshakes
            .get_or_create(&Handshake { side, kind })
            .inc();
    }

    /// A TLS handshake failed.
    pub fn handshake_failed(&self, side: Side, reason: Refusal) {
        self.failures.get_or_create(&Failure { side, reason }).inc();
    }

    /// A `mesh/2` stream moved to a connection of its own.
    pub fn moved(&self, side: Side) {
        self.moved.get_or_create(&Moved { side }).inc();
    }

    /// The intentions (or the loopback guard) refused `n` connections.
    pub fn denied(&self, source: &str, destination: &str, rule: &str, side: Reporter, n: u64) {
        let labels = Denial {
            source: source.to_owned(),
            destination: destination.to_owned(),
            rule: rule.to_owned(),
            side,
        };
        self.denials.get_or_create(&labels).inc_by(n);
    }

    /// A connection went to `instance`.
    pub fn instance_connected(&self, instance: &Instance) {
        self.instance_opened.get_or_create(instance).inc();
    }

    /// A dial or handshake to `instance` failed.
    pub fn instance_failed(&self, instance: &Instance) {
        self.instance_failures.get_or_create(instance).inc();
    }

    /// sk_lookup has refused `total` connections from non-mesh sources so
    /// far (the kernel's count); counted as inbound handshake failures.
    pub fn kernel_refused(&self, total: u64) {
        let last = self
            .refused_seen
            .fetch_max(total, std::sync::atomic::Ordering::Relaxed);
        if total > last {
            self.failures
                .get_or_create(&Failure {
                    side: Side::Inbound,
                    reason: Refusal::NotAMeshNode,
                })
                .inc_by(total - last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &Metrics) -> String {
        let mut reg = Registry::default();
        m.register(&mut reg);
        reg.render()
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        let conn = Conn {
            source: "web".into(),
            destination: "api".into(),
            side: Side::Inbound,
        };
        m.opened(&conn);
        m.closed(&conn, 10, 20);
        m.handshake_failed(Side::Inbound, Refusal::NoClientCertificate);
        m.handshake(Side::Outbound, true);
        m.denied("web", "db", "default policy", Reporter::Destination, 1);
        m.denied("web", "db", "default policy", Reporter::Source, 1000);
        m.kernel_refused(5);
        m.kernel_refused(7);
        let b = Instance {
            service: "api".into(),
            node: "b".into(),
        };
        m.instance_connected(&b);
        m.instance_failed(&b);
        let text = render(&m);
        for line in [
            "mesh_connections_opened_total{source=\"web\",destination=\"api\",side=\"inbound\"} 1",
            "mesh_connections_active{source=\"web\",destination=\"api\",side=\"inbound\"} 0",
            "mesh_connection_bytes_total{source=\"web\",destination=\"api\",side=\"inbound\",direction=\"to_source\"} 20",
            "mesh_handshake_failures_total{side=\"inbound\",reason=\"no_client_certificate\"} 1",
            "mesh_handshakes_total{side=\"outbound\",kind=\"resumed\"} 1",
            "mesh_denials_total{source=\"web\",destination=\"db\",rule=\"default policy\",side=\"destination\"} 1",
            "mesh_denials_total{source=\"web\",destination=\"db\",rule=\"default policy\",side=\"source\"} 1000",
            "mesh_handshake_failures_total{side=\"inbound\",reason=\"not_a_mesh_node\"} 7",
            "mesh_instance_connections_total{service=\"api\",node=\"b\"} 1",
            "mesh_instance_connect_failures_total{service=\"api\",node=\"b\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// The names and label keys of every sample of these families (the
    /// whole `/metrics` is checked against a running agent in the
    /// observability tests).
    #[test]
    fn every_family_keeps_its_name_and_labels() {
        let m = Metrics::default();
        let conn = Conn {
            source: "web".into(),
            destination: "api".into(),
            side: Side::Outbound,
        };
        m.opened(&conn);
        m.closed(&conn, 1, 2);
        m.handshake(Side::Inbound, false);
        m.handshake_failed(Side::Inbound, Refusal::NoClientCertificate);
        m.moved(Side::Inbound);
        m.denied("web", "db", "default policy", Reporter::Source, 1);
        let b = Instance {
            service: "api".into(),
            node: "b".into(),
        };
        m.instance_connected(&b);
        m.instance_failed(&b);
        let text = render(&m);
        let shapes: std::collections::BTreeSet<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let name = l.split(['{', ' ']).next().unwrap_or_default();
                let labels: Vec<&str> = l
                    .split_once('{')
                    .map(|(_, rest)| rest.split_once('}').map_or("", |(l, _)| l))
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
                    .collect();
                format!("{name}{{{}}}", labels.join(","))
            })
            .collect();
        let expected = [
            "mesh_connection_bytes_total{source,destination,side,direction}",
            "mesh_connections_active{source,destination,side}",
            "mesh_connections_closed_total{source,destination,side}",
            "mesh_connections_opened_total{source,destination,side}",
            "mesh_denials_total{source,destination,rule,side}",
            "mesh_handshake_failures_total{side,reason}",
            "mesh_handshakes_total{side,kind}",
            "mesh_instance_connect_failures_total{service,node}",
            "mesh_instance_connections_total{service,node}",
            "mesh_moved_streams_total{side}",
        ];
        assert_eq!(
            shapes.iter().map(String::as_str).collect::<Vec<_>>(),
            expected,
            "{text}"
        );
        for value in [
            "side=\"outbound\"",
            "side=\"inbound\"",
            "side=\"source\"",
            "direction=\"to_destination\"",
            "direction=\"to_source\"",
            "kind=\"full\"",
        ] {
            assert!(text.contains(value), "{value} in:\n{text}");
        }
    }
}
