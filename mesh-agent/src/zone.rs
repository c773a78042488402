//! The `.mesh` zone of a config and the replies it gives (see `dns` for
//! what it answers and how it truncates).

use std::{collections::HashMap, net::IpAddr};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, SRV},
    },
};

use crate::{
    config::{Config, Service},
    health_view::View,
    names::{NodeName, ServiceName},
};

/// TTL of `.mesh` addresses (VIPs, nodes): short, as services, VIPs and
/// nodes can change.
const TTL: u32 = 5;
/// TTL of SRV records: 0, do not cache. Which instances take traffic
/// follows their health checks and changes within seconds; a cached SRV
/// set would keep sending clients to an instance gone critical. Consul's
/// DNS answers with TTL 0 by default for the same reason.
const SRV_TTL: u32 = 0;
/// The largest UDP reply, whatever payload size the query advertises:
/// DNS Flag Day 2020's 1232 bytes, which crosses any path unfragmented
/// (`--dns` may listen beyond loopback). Also what replies advertise.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// How a query came, which bounds the reply's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What the responder does with a datagram (see [`Zone::handle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handling {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Relay it to the upstream resolver, and its answer back.
    Forward,
    /// Send nothing.
    Drop,
}

/// The `.mesh` names of a config. Which instances a service's SRV records
/// name depends on their health, given with each query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Every meshed (non-public) service, by name.
    services: HashMap<ServiceName, Service>,
    /// Every node's address, by name.
    nodes: HashMap<NodeName, IpAddr>,
}

impl Zone {
    /// Every meshed (non-public) service of `config`, and every node.
    pub fn new(config: &Config) -> Self {
        Self {
            services: config
                .services
                .iter()
                .filter(|s| !s.public)
                .map(|s| (s.name.clone(), s.clone()))
                .collect(),
            nodes: config
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.address))
                .collect(),
        }
    }

    /// The answer to a DNS query for this zone, with instances' states
    /// from `health`, or `None` when the name is not in `.mesh` (or the
    /// bytes are not a query).
    pub fn answer(&self, query: &[u8], health: &View) -> Option<Vec<u8>> {
        self.answer_over(query, health, Transport::Udp)
    }

    /// [`Zone::answer`] to a query that came over `transport`.
    pub fn answer_over(
        &self,
        query: &[u8],
        health: &View,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let request = Message::from_vec(query).ok()?;
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let question = request.queries.first()?;
        let name = question.name();
        let labels: Vec<String> = name
            .to_lowercase()
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let kind = question.query_type();
        let found = match owner(&labels)? {
            Owner::Service(service) => self.services.get(service).map(|service| match kind {
                RecordType::SRV => self.instances(service, name, health, request.metadata.id),
                _ => address(name, service.vip, kind).into_iter().collect(),
            }),
            Owner::Node(node) => self
                .nodes
                .get(node)
                .map(|&ip| address(name, ip, kind).into_iter().collect()),
            Owner::Unknown => None,
        };
        Some(match found {
            Some(entries) => reply(&request, ResponseCode::NoError, &entries, transport),
            None => reply(&request, ResponseCode::NXDomain, &[], transport),
        })
    }

    /// What the responder does with a datagram: answers `.mesh` names
    /// (instances' states from `health`); other queries go upstream when
    /// there is an `upstream` resolver, else get REFUSED. Anything but a
    /// query gets nothing, here or upstream: a responder that answers
    /// responses can be made to loop with another one (or with itself,
    /// given a spoofed source), and garbage is not worth a forward.
    pub fn handle(&self, datagram: &[u8], health: &View, upstream: bool) -> Handling {
        self.handle_over(datagram, health, upstream, Transport::Udp)
    }

    /// [`Zone::handle`] for a query that came over `transport`.
    pub fn handle_over(
        &self,
        datagram: &[u8],
        health: &View,
        upstream: bool,
        transport: Transport,
    ) -> Handling {
        let query = Message::from_vec(datagram)
            .is_ok_and(|m| m.metadata.message_type == MessageType::Query);
        if !query {
            return Handling::Drop;
        }
        if let Some(answer) = self.answer_over(datagram, health, transport) {
            return Handling::Reply(answer);
        }
        if upstream {
            return Handling::Forward;
        }
        refused(datagram).map_or(Handling::Drop, Handling::Reply)
    }

    /// The SRV records of `service` under `name`: one per instance that
    /// takes traffic, each with its target's address, starting at an
    /// instance picked by the query's `id`.
    fn instances(&self, service: &Service, name: &Name, health: &View, id: u16) -> Vec<Entry> {
        let mut entries: Vec<Entry> = service
            .nodes
            .iter()
            .filter(|node| health.state(service, node).takes_traffic())
            .filter_map(|node| {
                let ip = *self.nodes.get(node)?;
                // Node names are DNS labels (config validation), so this
                // parses; a node that did not would be left out.
                let target = Name::from_ascii(format!("{node}.node.mesh.")).ok()?;
                let srv = SRV::new(1, 1, service.port, target.clone());
                let record = Record::from_rdata(name.clone(), SRV_TTL, RData::SRV(srv));
                Some((record, Some(address_of(target, ip))))
            })
            .collect();
        if !entries.is_empty() {
            let start = usize::from(id) % entries.len();
            entries.rotate_left(start);
        }
        entries
    }
}

/// What a name of the zone is, from its labels.
enum Owner<'a> {
    /// `<service>.mesh` or `_<service>._tcp.mesh`.
    Service(&'a str),
    /// `<node>.node.mesh`.
    Node(&'a str),
    /// Any other name under `.mesh`: never exists.
    Unknown,
}

/// One record of an answer, with the additional record that goes with it
/// (an SRV target's address): truncation keeps or drops both.
type Entry = (Record, Option<Record>);

/// Where `labels` (lowercase, without the root) point in the zone; `None`
/// when the name is not under `.mesh`.
fn owner(labels: &[String]) -> Option<Owner<'_>> {
    let (zone, rest) = labels.split_last()?;
    if zone != "mesh" {
        return None;
    }
    Some(match rest {
        [service] => Owner::Service(service),
        [service, tcp] if tcp == "_tcp" => service
            .strip_prefix('_')
            .map_or(Owner::Unknown, Owner::Service),
        [node, kind] if kind == "node" => Owner::Node(node),
        _ => Owner::Unknown,
    })
}

/// The answer to a `kind` query for `name` at `ip`: its A or AAAA record,
/// none if `kind` is not `ip`'s family.
fn address(name: &Name, ip: IpAddr, kind: RecordType) -> Option<Entry> {
    let family = match ip {
        IpAddr::V4(_) => RecordType::A,
        IpAddr::V6(_) => RecordType::AAAA,
    };
    (kind == family).then(|| (address_of(name.clone(), ip), None))
}

/// The A or AAAA record of `name` at `ip`.
fn address_of(name: Name, ip: IpAddr) -> Record {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name, TTL, rdata)
}

/// The authoritative reply to `request` with `code` and `entries`,
/// within the size `transport` allows (over UDP, the payload size the
/// request allows; over TCP, a message's 64 KiB): when they do not all
/// fit, the most leading entries that do, and the TC bit.
fn reply(
    request: &Message,
    code: ResponseCode,
    entries: &[Entry],
    transport: Transport,
) -> Vec<u8> {
    let limit = match transport {
        Transport::Udp => usize::from(request.max_payload().min(MAX_UDP_PAYLOAD)),
        Transport::Tcp => usize::from(u16::MAX),
    };
    let encode = |kept: usize| {
        let mut reply = Message::response(request.metadata.id, OpCode::Query);
        reply.metadata.authoritative = true;
        reply.metadata.recursion_desired = request.metadata.recursion_desired;
        reply.metadata.response_code = code;
        reply.metadata.truncation = kept < entries.len();
        reply.add_queries(request.queries.iter().cloned());
        for (answer, additional) in &entries[..kept] {
            reply.add_answer(answer.clone());
            if let Some(additional) = additional {
                reply.add_additional(additional.clone());
            }
        }
        // RFC 6891: a query with an OPT record gets one back.
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP_PAYLOAD);
            reply.set_edns(edns);
        }
        reply.to_vec().unwrap_or_default()
    };
    let all = encode(entries.len());
    if all.len() <= limit {
        return all;
    }
    // A reply grows with each entry kept: find the most that fit by
    // bisection (a service may have hundreds of instances). With one
    // question, none kept always fits (a name is at most 255 bytes); a
    // query of many questions may get them all back and no entry, over
    // the limit.
    let (mut fits, mut too_many) = (0, entries.len());
    while too_many - fits > 1 {
        let middle = fits + (too_many - fits) / 2;
        if encode(middle).len() <= limit {
            fits = middle;
        } else {
            too_many = middle;
        }
    }
    encode(fits)
}

/// A REFUSED reply to `query`, when there is no upstream to ask; `None`
/// if `query` is not a DNS message.
pub(super) fn refused(query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let mut reply = Message::error_msg(request.metadata.id, OpCode::Query, ResponseCode::Refused);
    for q in &request.queries {
        reply.add_query(q.clone());
    }
    reply.to_vec().ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        config::{Check, CheckKind},
        health_view::{CheckReport, InstanceReport, State},
        testing::{self, NODES, node, service},
    };
    use std::time::Duration;

    /// `data-api` on four nodes, one of them IPv6-only; `v6` with an IPv6
    /// VIP; `site` public.
    pub(crate) fn mesh() -> String {
        format!(
            "{NODES}{}{}{}vip = \"240.0.0.2\"\n{}vip = \"fd77::2\"\n{}public = true\n",
            node("c", "fd77::3"),
            node("d", "10.0.0.4"),
            service("data-api", &["a", "b", "c", "d"], 5001),
            service("v6", &["c"], 5002),
            service("site", &["a"], 443)
        )
    }

    pub(crate) fn config() -> Config {
        testing::config(&mesh())
    }

    fn zone() -> Zone {
        Zone::new(&config())
    }

    /// The zone with a ttl check on `data-api` (`[[service.check]]` is
    /// not parsed yet), so its instances need reports to take traffic.
    fn checked_zone() -> Zone {
        let mut config = config();
        config.services[0].checks = vec![Check {
            name: "ttl".into(),
            kind: CheckKind::Ttl(Duration::from_secs(30)),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            success_before_passing: 0,
            failures_before_critical: 0,
        }];
        Zone::new(&config)
    }

    /// `view` with `node` reporting `state` for its instance of `service`.
    fn report(view: &mut View, node: &str, service: &str, state: State) {
        let check = CheckReport {
            name: "ttl".into(),
            state,
            output: String::new(),
            since: None,
        };
        view.reports
            .entry(node.parse().unwrap())
            .or_default()
            .insert(
                service.parse().unwrap(),
                InstanceReport::of(service, vec![check]),
            );
    }

    fn ask(name: &str, kind: RecordType) -> Vec<u8> {
        ask_with(name, kind, 7, None)
    }

    /// A query with `id`, and an OPT record advertising `payload` if some.
    pub(crate) fn ask_with(name: &str, kind: RecordType, id: u16, payload: Option<u16>) -> Vec<u8> {
        let mut q = Message::query();
        q.metadata.id = id;
        q.metadata.recursion_desired = true;
        q.add_query(hickory_proto::op::Query::query(
            Name::from_ascii(name).unwrap(),
            kind,
        ));
        if let Some(payload) = payload {
            let mut edns = Edns::new();
            edns.set_max_payload(payload);
            q.set_edns(edns);
        }
        q.to_vec().unwrap()
    }

    pub(crate) fn reply(bytes: Option<Vec<u8>>) -> Message {
        Message::from_vec(&bytes.expect("an answer")).unwrap()
    }

    /// The SRV answers of `r` as (target, port), sorted, after checking
    /// each is priority 1, weight 1, TTL 0.
    fn srv_targets(r: &Message) -> Vec<(String, u16)> {
        let mut targets: Vec<_> = r
            .answers
            .iter()
            .map(|record| {
                let RData::SRV(srv) = &record.data else {
                    panic!("not an SRV record: {record:?}");
                };
                assert_eq!((srv.priority, srv.weight, record.ttl), (1, 1, 0));
                (srv.target.to_ascii(), srv.port)
            })
            .collect();
        targets.sort();
        targets
    }

    /// The additional records of `r` as (name, address), sorted.
    fn additionals(r: &Message) -> Vec<(String, IpAddr)> {
        let mut found: Vec<_> = r
            .additionals
            .iter()
            .map(|record| {
                let ip = match &record.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                    other => panic!("not an address: {other:?}"),
                };
                (record.name.to_ascii(), ip)
            })
            .collect();
        found.sort();
        found
    }

    pub(crate) fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn services_resolve_to_their_vip() {
        let none = View::default();
        let r = reply(zone().answer(&ask("data-api.mesh.", RecordType::A), &none));
        assert_eq!(r.metadata.id, 7);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert!(!r.metadata.truncation);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].data, RData::A(A("240.0.0.2".parse().unwrap())));
        assert_eq!(r.answers[0].ttl, TTL);
        // Case-insensitive, and without the trailing dot.
        let r = reply(zone().answer(&ask("Data-API.MESH", RecordType::A), &none));
        assert_eq!(r.answers.len(), 1);
        let r = reply(zone().answer(&ask("v6.mesh.", RecordType::AAAA), &none));
        assert_eq!(
            r.answers[0].data,
            RData::AAAA(AAAA("fd77::2".parse().unwrap()))
        );
        // Whatever the instances' health.
        let r = reply(checked_zone().answer(&ask("data-api.mesh.", RecordType::A), &none));
        assert_eq!(r.answers.len(), 1);
    }

    #[test]
    fn the_zone_is_authoritative() {
        let none = View::default();
        let r = reply(zone().answer(&ask("nope.mesh.", RecordType::A), &none));
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        let r = reply(zone().answer(&ask("a.b.mesh.", RecordType::A), &none));
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        // A v4-only service has no AAAA: an empty NOERROR answer.
        let r = reply(zone().answer(&ask("data-api.mesh.", RecordType::AAAA), &none));
        assert_eq!(
            (r.metadata.response_code, r.answers.len()),
            (ResponseCode::NoError, 0)
        );
    }

    #[test]
    fn public_services_are_not_in_the_zone() {
        for kind in [RecordType::A, RecordType::SRV] {
            let r = reply(zone().answer(&ask("site.mesh.", kind), &View::default()));
            assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{kind}");
        }
    }

    #[test]
    fn srv_lists_exactly_the_instances_that_take_traffic() {
        let mut view = View::default();
        report(&mut view, "a", "data-api", State::Passing);
        report(&mut view, "b", "data-api", State::Warning);
        report(&mut view, "c", "data-api", State::Critical);
        // Passing, by its agent's last word, but that agent is unreachable.
        report(&mut view, "d", "data-api", State::Passing);
        view.unreachable
            .insert("d".parse().unwrap(), "timed out".into());
        for name in ["data-api.mesh.", "_data-api._tcp.mesh."] {
            let r = reply(checked_zone().answer(&ask(name, RecordType::SRV), &view));
            assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{name}");
            assert!(r.metadata.authoritative && !r.metadata.truncation);
            assert!(r.answers.iter().all(|a| a.name.to_ascii() == name));
            assert_eq!(
                srv_targets(&r),
                [("a.node.mesh.".into(), 5001), ("b.node.mesh.".into(), 5001)],
                "{name}"
            );
            assert_eq!(
                additionals(&r),
                [
                    ("a.node.mesh.".into(), ip("10.0.0.1")),
                    ("b.node.mesh.".into(), ip("10.0.0.2"))
                ],
                "{name}"
            );
        }
    }

    #[test]
    fn instances_with_checks_and_no_report_are_left_out() {
        let mut view = View::default();
        report(&mut view, "b", "data-api", State::Passing);
        let r = reply(checked_zone().answer(&ask("data-api.mesh.", RecordType::SRV), &view));
        assert_eq!(srv_targets(&r), [("b.node.mesh.".into(), 5001)]);
        // Without checks, every instance is passing.
        let r = reply(zone().answer(&ask("data-api.mesh.", RecordType::SRV), &view));
        assert_eq!(srv_targets(&r).len(), 4);
    }

    #[test]
    fn a_service_with_every_instance_critical_has_no_srv_records() {
        let mut view = View::default();
        report(&mut view, "a", "data-api", State::Critical);
        let r = reply(checked_zone().answer(&ask("data-api.mesh.", RecordType::SRV), &view));
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty() && r.additionals.is_empty());
        assert!(!r.metadata.truncation);
    }

    #[test]
    fn ipv6_nodes_give_aaaa_additionals() {
        let r = reply(zone().answer(&ask("data-api.mesh.", RecordType::SRV), &View::default()));
        assert_eq!(
            additionals(&r),
            [
                ("a.node.mesh.".into(), ip("10.0.0.1")),
                ("b.node.mesh.".into(), ip("10.0.0.2")),
                ("c.node.mesh.".into(), ip("fd77::3")),
                ("d.node.mesh.".into(), ip("10.0.0.4")),
            ]
        );
        let c = r
            .additionals
            .iter()
            .find(|a| a.name.to_ascii() == "c.node.mesh.");
        assert_eq!(c.unwrap().record_type(), RecordType::AAAA);
        // A service on an IPv6 node only.
        let r = reply(zone().answer(&ask("v6.mesh.", RecordType::SRV), &View::default()));
        assert_eq!(srv_targets(&r), [("c.node.mesh.".into(), 5002)]);
        assert_eq!(additionals(&r), [("c.node.mesh.".into(), ip("fd77::3"))]);
    }

    #[test]
    fn nodes_resolve_to_their_address() {
        let none = View::default();
        let r = reply(zone().answer(&ask("a.node.mesh.", RecordType::A), &none));
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].data, RData::A(A("10.0.0.1".parse().unwrap())));
        assert_eq!(r.answers[0].ttl, TTL);
        let r = reply(zone().answer(&ask("C.Node.Mesh", RecordType::AAAA), &none));
        assert_eq!(
            r.answers[0].data,
            RData::AAAA(AAAA("fd77::3".parse().unwrap()))
        );
        // The other family, or another type: the name exists, no records.
        for (name, kind) in [
            ("a.node.mesh.", RecordType::AAAA),
            ("c.node.mesh.", RecordType::A),
            ("a.node.mesh.", RecordType::SRV),
        ] {
            let r = reply(zone().answer(&ask(name, kind), &none));
            assert_eq!(
                (r.metadata.response_code, r.answers.len()),
                (ResponseCode::NoError, 0),
                "{name} {kind}"
            );
        }
        // Unknown nodes do not exist, even when a service has that name.
        for name in ["nope.node.mesh.", "data-api.node.mesh.", "x.a.node.mesh."] {
            let r = reply(zone().answer(&ask(name, RecordType::A), &none));
            assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{name}");
        }
    }

    /// A zone with `big` on 40 nodes, each passing (no checks).
    fn forty() -> Zone {
        let names: Vec<String> = (0..40).map(|i| format!("node-{i:02}")).collect();
        let mut text: String = names
            .iter()
            .enumerate()
            .map(|(i, name)| node(name, &format!("10.0.1.{i}")))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        text += &service("big", &names, 7000);
        Zone::new(&testing::config(&text))
    }

    #[test]
    fn a_large_srv_answer_keeps_whole_records_and_sets_tc() {
        let zone = forty();
        let none = View::default();
        let mut kept = Vec::new();
        // Without EDNS: 512 bytes. Advertised sizes: up to MAX_UDP_PAYLOAD.
        for (payload, limit) in [(None, 512), (Some(1232), 1232), (Some(4096), 1232)] {
            let bytes = zone
                .answer(&ask_with("big.mesh.", RecordType::SRV, 3, payload), &none)
                .unwrap();
            assert!(bytes.len() <= limit, "{payload:?}: {} bytes", bytes.len());
            let r = reply(Some(bytes));
            assert!(r.metadata.truncation, "{payload:?}");
            assert_eq!(r.metadata.response_code, ResponseCode::NoError);
            assert_eq!(r.edns.is_some(), payload.is_some(), "OPT echoed");
            // Whole records: each kept SRV record has its address.
            let targets: Vec<String> = srv_targets(&r).into_iter().map(|(t, _)| t).collect();
            let addressed: Vec<String> = additionals(&r).into_iter().map(|(n, _)| n).collect();
            assert_eq!(targets, addressed, "{payload:?}");
            assert!(!targets.is_empty() && targets.len() < 40, "{payload:?}");
            kept.push(targets.len());
        }
        assert!(kept[0] < kept[1], "EDNS fits more: {kept:?}");
        assert_eq!(kept[1], kept[2], "capped at {MAX_UDP_PAYLOAD}: {kept:?}");
        // Another query id starts elsewhere in the list, so truncated
        // replies spread over the instances.
        let first = |id| {
            let r = reply(zone.answer(&ask_with("big.mesh.", RecordType::SRV, id, None), &none));
            let RData::SRV(srv) = &r.answers[0].data else {
                panic!("not SRV");
            };
            srv.target.to_ascii()
        };
        assert_eq!(first(3), "node-03.node.mesh.");
        assert_eq!(first(41), "node-01.node.mesh.");
    }

    #[test]
    fn over_tcp_the_whole_srv_answer_fits() {
        let zone = forty();
        let none = View::default();
        let query = ask_with("big.mesh.", RecordType::SRV, 3, None);
        let r = reply(zone.answer_over(&query, &none, Transport::Tcp));
        assert!(!r.metadata.truncation);
        assert_eq!(srv_targets(&r).len(), 40);
        assert_eq!(additionals(&r).len(), 40);
    }

    #[test]
    fn other_names_are_not_ours() {
        let none = View::default();
        assert!(
            zone()
                .answer(&ask("example.com.", RecordType::A), &none)
                .is_none()
        );
        assert!(zone().answer(b"garbage", &none).is_none());
        let r = reply(refused(&ask("example.com.", RecordType::A)));
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn other_names_go_upstream_or_are_refused() {
        let none = View::default();
        let other = ask("example.com.", RecordType::A);
        assert_eq!(zone().handle(&other, &none, true), Handling::Forward);
        let Handling::Reply(r) = zone().handle(&other, &none, false) else {
            panic!("no reply");
        };
        assert_eq!(reply(Some(r)).metadata.response_code, ResponseCode::Refused);
        let ours = ask("data-api.mesh.", RecordType::A);
        assert!(matches!(
            zone().handle(&ours, &none, true),
            Handling::Reply(_)
        ));
    }

    #[test]
    fn responses_and_garbage_get_nothing_here_or_upstream() {
        let mut response = Message::from_vec(&ask("example.com.", RecordType::A)).unwrap();
        response.metadata.message_type = MessageType::Response;
        let response = response.to_vec().unwrap();
        let ours = Message::from_vec(&ask("data-api.mesh.", RecordType::A)).unwrap();
        let ours = Message::response(ours.metadata.id, OpCode::Query)
            .add_queries(ours.queries)
            .to_vec()
            .unwrap();
        for datagram in [&response[..], &ours, b"", b"garbage"] {
            for upstream in [false, true] {
                assert_eq!(
                    zone().handle(datagram, &View::default(), upstream),
                    Handling::Drop,
                    "{datagram:?}, upstream {upstream}"
                );
            }
        }
    }
}
