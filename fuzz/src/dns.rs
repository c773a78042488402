//! A datagram to the agent's DNS responder, through `Zone::handle` as
//! `dns::serve` calls it, with and without an upstream resolver, with
//! instances of every health (`web`'s warning on node a, node b's agent
//! unreachable so `api`'s critical).
//!
//! Invariants: never panics; only a query is replied to or forwarded (a
//! responder that answers responses can be made to loop with another one,
//! or with itself); a reply is a DNS response to the query's id that
//! parses; a `.mesh` answer to a one-question query fits the query's UDP
//! payload size (at most `MAX_UDP_PAYLOAD`); only a responder with an
//! upstream forwards.

use std::sync::OnceLock;

use hickory_proto::op::{Message, MessageType};
use mesh_agent::{
    dns::{Handling, MAX_UDP_PAYLOAD, Zone},
    health::{CheckReport, InstanceReport, State, View},
};

use crate::mesh;

pub fn check(data: &[u8]) {
    static ZONE: OnceLock<(Zone, View)> = OnceLock::new();
    let (zone, health) = ZONE.get_or_init(|| (Zone::new(mesh::config()), health()));
    let query =
        Message::from_vec(data).is_ok_and(|m| m.metadata.message_type == MessageType::Query);
    for upstream in [false, true] {
        match zone.handle(data, health, upstream) {
            Handling::Reply(reply) => {
                assert!(query, "replied to a datagram that is not a query");
                check_reply(data, &reply);
            }
            Handling::Forward => assert!(upstream && query, "forwarded a non-query"),
            Handling::Drop => {}
        }
    }
}

/// `web` on a reports warning; b's agent cannot be reached.
fn health() -> View {
    let mut view = View::default();
    let check = CheckReport {
        name: "ttl".into(),
        state: State::Warning,
        output: "busy".into(),
        since: None,
    };
    let name = "a valid name";
    view.reports
        .entry("a".parse().expect(name))
        .or_default()
        .insert(
            "web".parse().expect(name),
            InstanceReport::of("web", vec![check]),
        );
    view.unreachable
        .insert("b".parse().expect(name), "timed out".into());
    view
}

fn check_reply(data: &[u8], bytes: &[u8]) {
    let reply =
        Message::from_vec(bytes).unwrap_or_else(|e| panic!("reply {bytes:?} does not parse: {e}"));
    let query = Message::from_vec(data).expect("a datagram that got a reply parses");
    assert_eq!(reply.metadata.id, query.metadata.id);
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    // Only `.mesh` answers are authoritative (REFUSED is not).
    if reply.metadata.authoritative && query.queries.len() == 1 {
        let limit = query.max_payload().min(MAX_UDP_PAYLOAD);
        assert!(
            bytes.len() <= usize::from(limit),
            "a {}-byte answer to a query allowing {limit}",
            bytes.len()
        );
    }
}
