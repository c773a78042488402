//! Records the agent reads from kernel maps, decoded from bytes field by
//! field in the layout of their `#[repr(C)]` types (no `unsafe`), then run
//! through the agent's code that reads them.
//!
//! The first input byte picks the record type from [`RECORDS`]; the rest
//! is the record. A new record type (e.g. a ring buffer event) is one more
//! entry there: a decoder and the agent's function that reads it.
//!
//! Invariants:
//! - addresses convert to socket addresses and back to the same record
//!   (`ebpf::socket_addr` / `ebpf::sock_addr`);
//! - a record is read against the config only when both ids name one of
//!   its services (`proxy::Redirect::from_record`), and then says what the
//!   record says;
//! - a record is fresh when just filed (`ebpf::fresh`).

use mesh_agent::{ebpf, proxy::Redirect};
use mesh_common::{ConnKey, DenialEvent, OrigDst, SockAddr};

use crate::mesh;

/// Decodes one record and checks what the agent does with it; `None` when
/// the input is too short.
type Check = fn(&mut Bytes<'_>) -> Option<()>;

/// Record types by name, with what checks one.
const RECORDS: &[(&str, Check)] = &[
    ("OrigDst", orig_dst),
    ("ConnKey", conn_key),
    ("SockAddr", sock_addr),
    ("DenialEvent", denial_event),
];

pub fn check(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let (_, check) = RECORDS[usize::from(kind) % RECORDS.len()];
    let _ = check(&mut Bytes(rest));
}

/// `CONNS` values: what connect4/6 learned about a redirected connection.
fn orig_dst(bytes: &mut Bytes<'_>) -> Option<()> {
    let orig = read_orig_dst(bytes)?;
    check_addr(&orig.dst);
    let (config, ids) = (mesh::config(), mesh::ids());
    let known = |id| {
        ids.name(id)
            .is_some_and(|name| config.service(&name).is_some())
    };
    match Redirect::from_record(&orig, ids, config) {
        Ok(r) => {
            assert!(known(orig.src_service) && known(orig.dst_service));
            assert_eq!(
                Some(r.src.name.as_str()),
                ids.name(orig.src_service).as_deref()
            );
            assert_eq!(
                Some(r.dst.name.as_str()),
                ids.name(orig.dst_service).as_deref()
            );
            assert_eq!(r.dialed, ebpf::socket_addr(&orig.dst));
        }
        Err(_) => assert!(!known(orig.src_service) || !known(orig.dst_service)),
    }
    assert!(ebpf::fresh(&orig, orig.created_ns));
    let _ = ebpf::fresh(&orig, bytes.u64().unwrap_or(0));
    Some(())
}

/// `CONNS` keys, as the sweep reads them back.
/// `DENIAL_EVENTS` records, as the agent decodes them from the ring buffer.
fn denial_event(bytes: &mut Bytes<'_>) -> Option<()> {
    let event = DenialEvent::from_bytes(bytes.0)?;
    check_addr(&event.dst);
    Some(())
}

fn conn_key(bytes: &mut Bytes<'_>) -> Option<()> {
    let key = read_conn_key(bytes)?;
    check_addr(&key.peer);
    check_addr(&key.local);
    Some(())
}

fn sock_addr(bytes: &mut Bytes<'_>) -> Option<()> {
    check_addr(&read_sock_addr(bytes)?);
    Some(())
}

/// A kernel address converts to a socket address and back unchanged
/// (`_pad` aside, which the agent writes as zero).
fn check_addr(addr: &SockAddr) {
    let socket = ebpf::socket_addr(addr);
    assert_eq!(
        ebpf::sock_addr(socket),
        SockAddr { _pad: 0, ..*addr },
        "{socket}"
    );
}

fn read_sock_addr(b: &mut Bytes<'_>) -> Option<SockAddr> {
    Some(SockAddr {
        addr: [b.u32()?, b.u32()?, b.u32()?, b.u32()?],
        port: b.u16()?,
        _pad: b.u16()?,
    })
}

fn read_conn_key(b: &mut Bytes<'_>) -> Option<ConnKey> {
    Some(ConnKey {
        peer: read_sock_addr(b)?,
        local: read_sock_addr(b)?,
        netns: b.u64()?,
    })
}

fn read_orig_dst(b: &mut Bytes<'_>) -> Option<OrigDst> {
    Some(OrigDst {
        dst: read_sock_addr(b)?,
        src_service: b.u32()?,
        dst_service: b.u32()?,
        uid: b.u32()?,
        created_ns: b.u64()?,
    })
}

/// The decoders read every byte of their type: no implicit padding, and a
/// field added to `mesh-common` fails here until its decoder reads it.
const _: () = {
    assert!(size_of::<SockAddr>() == 4 * 4 + 2 + 2);
    assert!(size_of::<ConnKey>() == 2 * size_of::<SockAddr>() + 8);
    assert!(size_of::<OrigDst>() == size_of::<SockAddr>() + 3 * 4 + 8);
};

/// Bytes read front to back in native byte order, as the kernel wrote them.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_ne_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_ne_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_ne_bytes)
    }
}
