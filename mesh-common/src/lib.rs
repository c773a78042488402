//! `#[repr(C)]` types shared by the eBPF programs (`mesh-ebpf`) and the agent
//! (`mesh-agent`): map keys, map values and the names of maps and globals.
//!
//! Every type has explicit padding so both sides agree on every byte.
#![no_std]

/// Maps and globals, by the names the agent looks them up with.
pub mod names {
    /// `SockAddr` (VIP:port or node address:port) -> `ServiceId` of every mesh destination.
    pub const SERVICES: &str = "SERVICES";
    /// `ServiceId` -> service name (`ServiceName`): the agent's id table,
    /// pinned, so the next agent of the node gives every name the same id.
    pub const SERVICE_NAMES: &str = "SERVICE_NAMES";
    /// cgroup id (u64) -> `ServiceId` of the local service running in that cgroup.
    pub const CGROUPS: &str = "CGROUPS";
    /// port (u32) -> `ServiceId` of the local (non-public) service on that port:
    /// the loopback guard's list, and what sk_lookup steers to the inbound listener.
    pub const LOCAL_PORTS: &str = "LOCAL_PORTS";
    /// socket cookie (u64) -> `OrigDst`, written by connect4/6, consumed by sock_ops.
    pub const SOCKETS: &str = "SOCKETS";
    /// `ConnKey` -> `OrigDst`, written by sock_ops, consumed by the agent after accept().
    pub const CONNS: &str = "CONNS";
    /// `PairKey` -> `RULE_ALLOW` or `RULE_DENY`: the intentions that can
    /// decide a local caller's connect, by what they match (see
    /// `rules_deny`); connect4/6 refuse a denied pair with EPERM before any
    /// packet leaves.
    pub const RULES: &str = "RULES";
    /// Maps an earlier agent pinned that this one no longer uses: removed
    /// from the node's pins when it starts. `DENIED` held every denied
    /// (local caller, destination) pair, replaced by `RULES`.
    pub const RETIRED: [&str; 1] = ["DENIED"];
    /// SockMap holding the inbound listeners: index `LISTENER_V4` and `LISTENER_V6`.
    pub const LISTENERS: &str = "LISTENERS";
    /// `SockAddr` (port 0) -> 1 for every node address of the mesh: the only
    /// sources sk_lookup lets reach a service port (when `CHECK_PEERS` is set).
    pub const PEERS: &str = "PEERS";
    /// Per-CPU array of one u64: connections to service ports sk_lookup
    /// refused because their source is not a mesh node.
    pub const REFUSED: &str = "REFUSED";
    /// Per-CPU LRU hash, `DenialKey` -> `DenialCount`: every EPERM
    /// connect4/6 returned, counted per (source, destination, reason).
    pub const DENIALS: &str = "DENIALS";
    /// Ring buffer of `DenialEvent`s: the first EPERM of a `DENIALS` key on a
    /// CPU, then at most one per key and CPU every `DENIAL_REPORT_INTERVAL_NS`.
    pub const DENIAL_EVENTS: &str = "DENIAL_EVENTS";
    /// Global (u64): netns cookie of the node this program set acts for.
    pub const NETNS_COOKIE: &str = "NETNS_COOKIE";
    /// Global (u64): cgroup id of the agent; its sockets are never touched.
    pub const AGENT_CGROUP: &str = "AGENT_CGROUP";
    /// Global (u16): port of the agent's outbound listener on 127.0.0.1 and ::1.
    pub const OUTBOUND_PORT: &str = "OUTBOUND_PORT";
    /// Global (u8): 1 if sk_lookup refuses sources that are not in `PEERS`.
    pub const CHECK_PEERS: &str = "CHECK_PEERS";
    /// Global (u16): port of the agent's admin endpoint (loopback).
    pub const ADMIN_PORT: &str = "ADMIN_PORT";

    // Programs. aya's program macros name a program after its function, so
    // these must equal the function names in `mesh-ebpf` (checked against
    // the built object by a unit test of `mesh-agent`'s `ebpf::loader`).
    /// cgroup/connect4: redirect to the agent, loopback guard.
    pub const PROG_CONNECT4: &str = "mesh_connect4";
    /// cgroup/connect6: the same for AF_INET6 sockets.
    pub const PROG_CONNECT6: &str = "mesh_connect6";
    /// sock_ops: hands the original destination to the agent (`CONNS`).
    pub const PROG_SOCK_OPS: &str = "mesh_sock_ops";
    /// sk_lookup: steers service ports to the inbound listener.
    pub const PROG_SK_LOOKUP: &str = "mesh_sk_lookup";
    /// cgroup/bind4: only root binds the agent's outbound and admin ports.
    pub const PROG_BIND4: &str = "mesh_bind4";
    /// cgroup/bind6: the same for AF_INET6 sockets.
    pub const PROG_BIND6: &str = "mesh_bind6";
    /// Every program of the object.
    pub const PROGRAMS: [&str; 6] = [
        PROG_CONNECT4,
        PROG_CONNECT6,
        PROG_SOCK_OPS,
        PROG_SK_LOOKUP,
        PROG_BIND4,
        PROG_BIND6,
    ];
}

/// Index of the IPv4 inbound listener in `LISTENERS`.
pub const LISTENER_V4: u32 = 0;
/// Index of the IPv6 inbound listener in `LISTENERS`.
pub const LISTENER_V6: u32 = 1;

/// Maximum entries of the maps sized by one node's services or the mesh's
/// nodes (`CGROUPS`, `LOCAL_PORTS`, `PEERS`).
pub const MAX_SERVICES: u32 = 4096;
/// Maximum entries of `SERVICES`: every meshed service's VIP:port and each
/// of its instances' address:port (110,000 for 10,000 services of 10
/// instances each).
pub const MAX_DESTINATIONS: u32 = 1 << 18;
/// Maximum ids in `SERVICE_NAMES` (ids are never reused while a node's
/// agents hand the table on).
pub const MAX_SERVICE_IDS: u32 = 1 << 17;
/// `BPF_F_NO_PREALLOC`: the maps sized for large catalogs take kernel
/// memory per entry held, not for all their entries at load.
pub const NO_PREALLOC: u32 = 1;
/// A service name, zero-padded (names are DNS labels: at most 63 bytes).
pub type ServiceName = [u8; 64];
/// How deep below the cgroup2 root connect4/6 look for a service's cgroup
/// among a caller's ancestors (a process in a container below a service's
/// cgroup has that service's identity).
pub const MAX_CGROUP_LEVEL: u32 = 32;
/// Maximum entries of the per-connection maps (LRU: the oldest entries go first).
pub const MAX_PENDING_CONNS: u32 = 65536;

/// A service's index in the agent's current config, plus one (0 is never used).
pub type ServiceId = u32;

/// An IPv4 or IPv6 socket address. IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`)
/// so one map serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockAddr {
    /// The address as four words in network byte order, laid out like
    /// `bpf_sock_addr.user_ip6` (byte `i` of the address is byte `i` in memory).
    pub addr: [u32; 4],
    /// The port in host byte order.
    pub port: u16,
    pub _pad: u16,
}

impl SockAddr {
    /// The second word of an IPv4-mapped address in memory order (`00 00 ff ff`).
    pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

    /// `ip4` in network byte order as read from a kernel context.
    #[inline(always)]
    pub const fn from_v4(ip4_be: u32, port: u16) -> Self {
        Self {
            addr: [0, 0, Self::V4_MAPPED_WORD, ip4_be],
            port,
            _pad: 0,
        }
    }

    /// Whether the address is IPv4-mapped.
    #[inline(always)]
    pub const fn is_v4(&self) -> bool {
        self.addr[0] == 0 && self.addr[1] == 0 && self.addr[2] == Self::V4_MAPPED_WORD
    }

    /// Whether a connect to this address lands on loopback: `127.0.0.0/8`,
    /// `::1`, and the unspecified addresses `0.0.0.0` and `::`, which the
    /// kernel turns into loopback after the connect hooks have run.
    #[inline(always)]
    pub const fn reaches_loopback(&self) -> bool {
        if self.is_v4() {
            let first = self.addr[3].to_ne_bytes()[0];
            first == 127 || self.addr[3] == 0
        } else {
            self.addr[0] == 0
                && self.addr[1] == 0
                && self.addr[2] == 0
                && (self.addr[3] == 0 || self.addr[3] == u32::from_ne_bytes([0, 0, 0, 1]))
        }
    }
}

/// Key of `RULES`: a calling service and the service it dials, 0 for `*`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PairKey {
    pub src: ServiceId,
    pub dst: ServiceId,
}

/// Maximum entries of `RULES` (about one per intention).
pub const MAX_RULES: u32 = 1 << 17;
/// A `RULES` value: the pair may connect.
pub const RULE_ALLOW: u32 = 1;
/// A `RULES` value: the pair is refused.
pub const RULE_DENY: u32 = 2;

/// Whether the intentions deny `src` calling `dst`, as `RULES` (read
/// through `get`) holds them: the entry (src, dst) of a `src -> dst`
/// intention decides; else those of `src -> *` (src, 0) and `* -> dst`
/// (0, dst), deny winning a tie; else (0, 0): the `* -> *` intention or
/// the default policy. Without even that entry (the agent writes it before
/// it attaches the programs), deny. The agent's `Policy::decide` with its
/// most specific match first, in kernel form.
#[inline(always)]
pub fn rules_deny(get: impl Fn(PairKey) -> Option<u32>, src: ServiceId, dst: ServiceId) -> bool {
    if let Some(rule) = get(PairKey { src, dst }) {
        return rule != RULE_ALLOW;
    }
    let from = get(PairKey { src, dst: 0 });
    let to = get(PairKey { src: 0, dst });
    if from.is_some() || to.is_some() {
        return from.is_some_and(|r| r != RULE_ALLOW) || to.is_some_and(|r| r != RULE_ALLOW);
    }
    get(PairKey { src: 0, dst: 0 }) != Some(RULE_ALLOW)
}

/// Key of `CONNS`: a connection to an outbound listener as the agent sees it
/// after `accept()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The app's end (the agent's `peer_addr()`).
    pub peer: SockAddr,
    /// The listener's end (the agent's `local_addr()`).
    pub local: SockAddr,
    /// The network namespace of both ends (its cookie): every container
    /// has its own `127.0.0.1:15001`, so the addresses alone may repeat.
    pub netns: u64,
}

/// What connect4/6 learned about a redirected connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrigDst {
    /// The address the app dialed.
    pub dst: SockAddr,
    /// The calling service.
    pub src_service: ServiceId,
    /// The service behind `dst`, or [`ADMIN_CALLER`].
    pub dst_service: ServiceId,
    /// The caller's uid.
    pub uid: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when sock_ops filed the record
    /// in `CONNS`; the agent refuses records older than `MAX_RECORD_AGE_NS`.
    pub created_ns: u64,
}

/// `OrigDst::dst_service` of a connection to the agent's admin endpoint
/// (not redirected: the record only tells the agent who calls).
pub const ADMIN_CALLER: ServiceId = u32::MAX;

/// How old a `CONNS` record may be when the agent claims it. A record is
/// normally claimed within microseconds; an old one belongs to a connection
/// that died before accept(), and its 4-tuple may have been reused since.
pub const MAX_RECORD_AGE_NS: u64 = 2_000_000_000;

/// Key of `DENIALS`: who was refused what, and why.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DenialKey {
    /// The calling service; 0 for a caller with no mesh identity.
    pub src: ServiceId,
    /// The service dialed.
    pub dst: ServiceId,
    /// `DENIED_BY_INTENTIONS` or `DENIED_BY_LOOPBACK_GUARD`.
    pub reason: u32,
    pub _pad: u32,
}

/// `DenialKey::reason`: the intentions deny the pair (`RULES`).
pub const DENIED_BY_INTENTIONS: u32 = 1;
/// `DenialKey::reason`: a loopback connect to a local service's port by
/// someone other than that service.
pub const DENIED_BY_LOOPBACK_GUARD: u32 = 2;

/// Value of `DENIALS`, one per CPU (the BPF target has no atomic adds).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DenialCount {
    /// EPERMs returned for the key on this CPU.
    pub count: u64,
    /// `bpf_ktime_get_ns()` of the last `DenialEvent` this CPU sent for the key.
    pub reported_ns: u64,
}

/// Record of `DENIAL_EVENTS`. The counts are in `DENIALS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DenialEvent {
    pub key: DenialKey,
    /// The caller's cgroup id.
    pub cgroup: u64,
    /// The address the caller dialed.
    pub dst: SockAddr,
    /// The caller's thread group id (the pid `ps` shows).
    pub pid: u32,
    /// The caller's command name (`comm`), NUL-padded.
    pub comm: [u8; 16],
}

/// Maximum entries of `DENIALS` (LRU: the least recently refused go first).
pub const MAX_DENIALS: u32 = 4096;
/// Size of `DENIAL_EVENTS` in bytes (a power of two, at least a page).
pub const DENIAL_EVENTS_BYTES: u32 = 64 * 1024;
/// At most one `DenialEvent` per `DenialKey` this often.
pub const DENIAL_REPORT_INTERVAL_NS: u64 = 10_000_000_000;

impl DenialEvent {
    /// Reads a record as the kernel wrote it; `None` if `bytes` is too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let u32_at = |i: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(bytes.get(i..i + 4)?.try_into().ok()?))
        };
        let u64_at = |i: usize| -> Option<u64> {
            Some(u64::from_ne_bytes(bytes.get(i..i + 8)?.try_into().ok()?))
        };
        let mut comm = [0u8; 16];
        comm.copy_from_slice(bytes.get(48..64)?);
        Some(Self {
            key: DenialKey {
                src: u32_at(0)?,
                dst: u32_at(4)?,
                reason: u32_at(8)?,
                _pad: u32_at(12)?,
            },
            cgroup: u64_at(16)?,
            dst: SockAddr {
                addr: [u32_at(24)?, u32_at(28)?, u32_at(32)?, u32_at(36)?],
                port: u16::from_ne_bytes(bytes.get(40..42)?.try_into().ok()?),
                _pad: u16::from_ne_bytes(bytes.get(42..44)?.try_into().ok()?),
            },
            pid: u32_at(44)?,
            comm,
        })
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data with explicit padding and no pointers;
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for super::SockAddr {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OrigDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PairKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DenialKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DenialCount {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<SockAddr>(), 20);
        assert_eq!(core::mem::size_of::<ConnKey>(), 48);
        assert_eq!(core::mem::size_of::<OrigDst>(), 40);
        assert_eq!(core::mem::size_of::<PairKey>(), 8);
        assert_eq!(core::mem::size_of::<DenialKey>(), 16);
        assert_eq!(core::mem::size_of::<DenialCount>(), 16);
        // 16 + 8 + 20 + 4 + 16: no padding anywhere.
        assert_eq!(core::mem::size_of::<DenialEvent>(), 64);
    }

    #[test]
    fn a_denial_event_reads_back_from_its_bytes() {
        let event = DenialEvent {
            key: DenialKey {
                src: 3,
                dst: 7,
                reason: DENIED_BY_INTENTIONS,
                _pad: 0,
            },
            cgroup: 0x1122_3344_5566_7788,
            dst: SockAddr::from_v4(u32::from_ne_bytes([10, 77, 0, 2]), 5001),
            pid: 4242,
            comm: *b"python3\0\0\0\0\0\0\0\0\0",
        };
        // The record as the kernel lays it out: the struct's own bytes.
        let mut bytes = [0u8; 64];
        bytes[0..4].copy_from_slice(&event.key.src.to_ne_bytes());
        bytes[4..8].copy_from_slice(&event.key.dst.to_ne_bytes());
        bytes[8..12].copy_from_slice(&event.key.reason.to_ne_bytes());
        bytes[16..24].copy_from_slice(&event.cgroup.to_ne_bytes());
        for (i, w) in event.dst.addr.iter().enumerate() {
            bytes[24 + 4 * i..28 + 4 * i].copy_from_slice(&w.to_ne_bytes());
        }
        bytes[40..42].copy_from_slice(&event.dst.port.to_ne_bytes());
        bytes[44..48].copy_from_slice(&event.pid.to_ne_bytes());
        bytes[48..64].copy_from_slice(&event.comm);
        assert_eq!(DenialEvent::from_bytes(&bytes), Some(event));
        assert_eq!(DenialEvent::from_bytes(&bytes[..63]), None);
    }

    #[test]
    fn loopback_and_mapped() {
        let lo = SockAddr::from_v4(u32::from_ne_bytes([127, 0, 0, 1]), 80);
        assert!(lo.is_v4() && lo.reaches_loopback());
        let any = SockAddr::from_v4(0, 80);
        assert!(any.is_v4() && any.reaches_loopback());
        let other = SockAddr::from_v4(u32::from_ne_bytes([10, 77, 0, 2]), 80);
        assert!(other.is_v4() && !other.reaches_loopback());
        let v6 = |last| SockAddr {
            addr: [0, 0, 0, last],
            port: 80,
            _pad: 0,
        };
        assert!(!v6(0).is_v4() && v6(0).reaches_loopback());
        assert!(v6(u32::from_ne_bytes([0, 0, 0, 1])).reaches_loopback());
        assert!(!v6(u32::from_ne_bytes([0, 0, 0, 2])).reaches_loopback());
    }
}
