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
//! | `mesh_ebpf_map_entries` | map |
//! | `mesh_instance_health` | service, node: 0 passing, 1 warning, 2 critical (as this agent knows it) |
//! | `mesh_instance_connections_total`, `mesh_instance_connections_active` | service, node: connections this agent sent to the instance |
//! | `mesh_instance_connect_failures_total` | service, node: failed dials or handshakes (each retried on another instance) |
//!
//! `side` is `outbound` (this agent speaks for the caller) or `inbound`
//! (for the destination); a call between two nodes counts on both agents.

use std::sync::atomic::AtomicU64;

use super::labels::{Direction, HandshakeKind, Reporter, Side};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

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
    reason: &'static str,
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
struct Service {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Instance {
    pub service: String,
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Map {
    map: &'static str,
}

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    opened: Family<Conn, Counter>,
    closed: Family<Conn, Counter>,
    active: Family<Conn, Gauge>,
    bytes: Family<Bytes, Counter>,
    handshakes: Family<Handshake, Counter>,
    failures: Family<Failure, Counter>,
    denials: Family<Denial, Counter>,
    expiry: Family<Service, Gauge<f64, AtomicU64>>,
    maps: Family<Map, Gauge>,
    in_progress: Gauge,
    pooled_connections: Gauge,
    pooled_streams: Gauge,
    moved: Family<Moved, Counter>,
    catalog_connected: Gauge,
    health: Family<Instance, Gauge>,
    instance_opened: Family<Instance, Counter>,
    instance_active: Family<Instance, Gauge>,
    instance_failures: Family<Instance, Counter>,
    /// The kernel's `REFUSED` count at the last scrape.
    refused_seen: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let this = Self {
            opened: Family::default(),
            closed: Family::default(),
            active: Family::default(),
            bytes: Family::default(),
            handshakes: Family::default(),
            failures: Family::default(),
            denials: Family::default(),
            expiry: Family::default(),
            maps: Family::default(),
            in_progress: Gauge::default(),
            pooled_connections: Gauge::default(),
            pooled_streams: Gauge::default(),
            moved: Family::default(),
            catalog_connected: Gauge::default(),
            health: Family::default(),
            instance_opened: Family::default(),
            instance_active: Family::default(),
            instance_failures: Family::default(),
            refused_seen: AtomicU64::new(0),
            registry: Registry::default(),
        };
        let reg = &mut registry;
        reg.register(
            "mesh_connections_opened",
            "Connections opened",
            this.opened.clone(),
        );
        reg.register(
            "mesh_connections_closed",
            "Connections closed",
            this.closed.clone(),
        );
        reg.register(
            "mesh_connections_active",
            "Connections open now",
            this.active.clone(),
        );
        reg.register("mesh_connection_bytes", "Bytes proxied", this.bytes.clone());
        reg.register(
            "mesh_handshakes",
            "TLS handshakes completed, full or resumed",
            this.handshakes.clone(),
        );
        reg.register(
            "mesh_handshake_failures",
            "TLS handshakes that failed, by reason",
            this.failures.clone(),
        );
        reg.register(
            "mesh_handshakes_in_progress",
            "Inbound TLS handshakes in progress (each holds a slot)",
            this.in_progress.clone(),
        );
        reg.register(
            "mesh_pooled_connections",
            "Pooled mesh/2 connections to other agents",
            this.pooled_connections.clone(),
        );
        reg.register(
            "mesh_pooled_streams",
            "App connections on pooled mesh/2 connections now",
            this.pooled_streams.clone(),
        );
        reg.register(
            "mesh_catalog_connected",
            "1 while the catalog's store is reachable, 0 while running on the last good catalog",
            this.catalog_connected.clone(),
        );
        reg.register(
            "mesh_moved_streams",
            "Busy mesh/2 streams that moved to a connection of their own",
            this.moved.clone(),
        );
        reg.register(
            "mesh_denials",
            "Connections refused by the intentions, by deciding rule",
            this.denials.clone(),
        );
        reg.register(
            "mesh_certificate_expiry_seconds",
            "Seconds until each local service's certificate expires",
            this.expiry.clone(),
        );
        reg.register(
            "mesh_ebpf_map_entries",
            "Entries in the agent's eBPF maps",
            this.maps.clone(),
        );
        reg.register(
            "mesh_instance_health",
            "Health of each instance as this agent knows it: 0 passing, 1 warning, 2 critical",
            this.health.clone(),
        );
        reg.register(
            "mesh_instance_connections",
            "Connections this agent sent to each instance",
            this.instance_opened.clone(),
        );
        reg.register(
            "mesh_instance_connections_active",
            "Connections this agent has open to each instance now",
            this.instance_active.clone(),
        );
        reg.register(
            "mesh_instance_connect_failures",
            "Failed dials or handshakes to each instance",
            this.instance_failures.clone(),
        );
        Self { registry, ..this }
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
    pub fn handshake_failed(&self, side: Side, reason: &'static str) {
        self.failures.get_or_create(&Failure { side, reason }).inc();
    }

    /// Whether the catalog's store is reachable.
    pub fn catalog_connected(&self, connected: bool) {
        self.catalog_connected.set(i64::from(connected));
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

    /// Every instance of the catalog now: its health code and this agent's
    /// open connections to it. Instances that left lose their gauges.
    pub fn instances(&self, now: impl IntoIterator<Item = (Instance, i64, u64)>) {
        self.health.clear();
        self.instance_active.clear();
        for (instance, health, active) in now {
            self.health.get_or_create(&instance).set(health);
            self.instance_active
                .get_or_create(&instance)
                .set(i64::try_from(active).unwrap_or(i64::MAX));
        }
    }

    /// Inbound handshakes holding a slot now.
    pub fn handshakes_in_progress(&self, n: usize) {
        self.in_progress.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Pooled `mesh/2` connections now, and streams on them.
    pub fn pooled(&self, connections: usize, streams: usize) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.pooled_connections.set(gauge(connections));
        self.pooled_streams.set(gauge(streams));
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
                    reason: "not_a_mesh_node",
                })
                .inc_by(total - last);
        }
    }

    /// The text exposition, after setting the gauges that are read at
    /// scrape time.
    pub fn render(
        &self,
        expiries: impl IntoIterator<Item = (String, f64)>,
        maps: impl IntoIterator<Item = (&'static str, i64)>,
    ) -> String {
        for (service, secs) in expiries {
            self.expiry.get_or_create(&Service { service }).set(secs);
        }
        for (map, n) in maps {
            self.maps.get_or_create(&Map { map }).set(n);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        m.handshake_failed(Side::Inbound, "no_client_certificate");
        m.handshake(Side::Outbound, true);
        m.denied("web", "db", "default policy", Reporter::Destination, 1);
        m.denied("web", "db", "default policy", Reporter::Source, 1000);
        m.kernel_refused(5);
        m.kernel_refused(7);
        m.handshakes_in_progress(3);
        m.pooled(2, 5);
        let b = Instance {
            service: "api".into(),
            node: "b".into(),
        };
        m.instance_connected(&b);
        m.instance_failed(&b);
        let gone = Instance {
            service: "old".into(),
            node: "b".into(),
        };
        m.instances([(gone.clone(), 0, 0)]);
        m.instances([(b.clone(), 2, 4)]);
        let text = m.render([("api".to_owned(), 42.5)], [("CONNS", 3)]);
        for line in [
            "mesh_connections_opened_total{source=\"web\",destination=\"api\",side=\"inbound\"} 1",
            "mesh_connections_active{source=\"web\",destination=\"api\",side=\"inbound\"} 0",
            "mesh_connection_bytes_total{source=\"web\",destination=\"api\",side=\"inbound\",direction=\"to_source\"} 20",
            "mesh_handshake_failures_total{side=\"inbound\",reason=\"no_client_certificate\"} 1",
            "mesh_handshakes_total{side=\"outbound\",kind=\"resumed\"} 1",
            "mesh_denials_total{source=\"web\",destination=\"db\",rule=\"default policy\",side=\"destination\"} 1",
            "mesh_denials_total{source=\"web\",destination=\"db\",rule=\"default policy\",side=\"source\"} 1000",
            "mesh_handshake_failures_total{side=\"inbound\",reason=\"not_a_mesh_node\"} 7",
            "mesh_handshakes_in_progress 3",
            "mesh_pooled_connections 2",
            "mesh_pooled_streams 5",
            "mesh_certificate_expiry_seconds{service=\"api\"} 42.5",
            "mesh_ebpf_map_entries{map=\"CONNS\"} 3",
            "mesh_instance_health{service=\"api\",node=\"b\"} 2",
            "mesh_instance_connections_total{service=\"api\",node=\"b\"} 1",
            "mesh_instance_connections_active{service=\"api\",node=\"b\"} 4",
            "mesh_instance_connect_failures_total{service=\"api\",node=\"b\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
        assert!(!text.contains("service=\"old\""), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// The names and label keys of every sample, with every family set:
    /// `/metrics` keeps its shape whatever moves behind it.
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
        m.handshake_failed(Side::Inbound, "no_client_certificate");
        m.moved(Side::Inbound);
        m.denied("web", "db", "default policy", Reporter::Source, 1);
        m.catalog_connected(true);
        let b = Instance {
            service: "api".into(),
            node: "b".into(),
        };
        m.instance_connected(&b);
        m.instance_failed(&b);
        m.instances([(b, 0, 1)]);
        m.handshakes_in_progress(1);
        m.pooled(1, 1);
        let text = m.render([("api".to_owned(), 1.0)], [("CONNS", 1)]);
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
            "mesh_catalog_connected{}",
            "mesh_certificate_expiry_seconds{service}",
            "mesh_connection_bytes_total{source,destination,side,direction}",
            "mesh_connections_active{source,destination,side}",
            "mesh_connections_closed_total{source,destination,side}",
            "mesh_connections_opened_total{source,destination,side}",
            "mesh_denials_total{source,destination,rule,side}",
            "mesh_ebpf_map_entries{map}",
            "mesh_handshake_failures_total{side,reason}",
            "mesh_handshakes_in_progress{}",
            "mesh_handshakes_total{side,kind}",
            "mesh_instance_connect_failures_total{service,node}",
            "mesh_instance_connections_active{service,node}",
            "mesh_instance_connections_total{service,node}",
            "mesh_instance_health{service,node}",
            "mesh_moved_streams_total{side}",
            "mesh_pooled_connections{}",
            "mesh_pooled_streams{}",
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
