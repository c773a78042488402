//! A datagram to the agent's DNS responder, through `Zone::handle` as
//! `dns::serve` calls it, with and without an upstream resolver.
//!
//! Invariants: never panics; only a query is replied to or forwarded (a
//! responder that answers responses can be made to loop with another one,
//! or with itself); a reply is a DNS response to the query's id that
//! parses; only a responder with an upstream forwards.

use std::sync::OnceLock;

use hickory_proto::op::{Message, MessageType};
use mesh_agent::dns::{Handling, Zone};

use crate::mesh;

pub fn check(data: &[u8]) {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    let zone = ZONE.get_or_init(|| Zone::new(mesh::config()));
    let query =
        Message::from_vec(data).is_ok_and(|m| m.metadata.message_type == MessageType::Query);
    for upstream in [false, true] {
        match zone.handle(data, upstream) {
            Handling::Reply(reply) => {
                assert!(query, "replied to a datagram that is not a query");
                check_reply(data, &reply);
            }
            Handling::Forward => assert!(upstream && query, "forwarded a non-query"),
            Handling::Drop => {}
        }
    }
}

fn check_reply(data: &[u8], reply: &[u8]) {
    let reply =
        Message::from_vec(reply).unwrap_or_else(|e| panic!("reply {reply:?} does not parse: {e}"));
    let query = Message::from_vec(data).expect("a datagram that got a reply parses");
    assert_eq!(reply.metadata.id, query.metadata.id);
    assert_eq!(reply.metadata.message_type, MessageType::Response);
}
