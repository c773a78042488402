//! A datagram to the agent's DNS responder, as `dns::serve` handles it:
//! the `.mesh` zone's answer, or else the REFUSED reply given when there is
//! no upstream resolver.
//!
//! Invariants: never panics; a reply, when there is one, is a DNS response
//! to the query's id that parses.

use std::sync::OnceLock;

use hickory_proto::op::{Message, MessageType};
use mesh_agent::dns::{self, Zone};

use crate::mesh;

pub fn check(data: &[u8]) {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    let zone = ZONE.get_or_init(|| Zone::new(mesh::config()));
    let reply = zone.answer(data).or_else(|| dns::refused(data));
    let Some(reply) = reply else {
        return;
    };
    let reply =
        Message::from_vec(&reply).unwrap_or_else(|e| panic!("reply {reply:?} does not parse: {e}"));
    let query = Message::from_vec(data).expect("a query that got a reply parses");
    assert_eq!(reply.metadata.id, query.metadata.id);
    assert_eq!(reply.metadata.message_type, MessageType::Response);
}
