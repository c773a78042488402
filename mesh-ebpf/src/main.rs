//! The mesh's kernel programs. One agent loads one copy of this object per
//! node; the copy acts only for sockets in that node's network namespace,
//! and for callers with a mesh identity of that node in any other network
//! namespace (containers: see `decide`).
//!
//! | program          | hook                          | decides                                         |
//! |------------------|-------------------------------|-------------------------------------------------|
//! | `mesh_connect4`  | cgroup/connect4               | redirect to the agent, loopback guard           |
//! | `mesh_connect6`  | cgroup/connect6               | the same for AF_INET6 sockets                   |
//! | `mesh_sock_ops`  | sock_ops (active established) | hand the original destination to the agent      |
//! | `mesh_sk_lookup` | sk_lookup (node's netns)      | steer node-address:port to the inbound listener; refuse non-mesh sources |
//! | `mesh_bind4`     | cgroup/bind4                  | only root may bind the agent's outbound and admin ports |
//! | `mesh_bind6`     | cgroup/bind6                  | the same for AF_INET6 sockets                   |
//!
//! Program names carry the `mesh_` prefix so `bpftool prog` shows whose they are.
//! A program's name is its function's (aya's macros take no other): the
//! agent knows them as `mesh_common::names::PROG_*`; rename both together
//! (a unit test of `mesh-agent` checks the built object against those).
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, sk_action},
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_get_netns_cookie,
        bpf_get_socket_cookie, bpf_ktime_get_ns,
    },
    macros::{cgroup_sock_addr, map, sk_lookup, sock_ops},
    maps::{HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf, SockMap},
    programs::{SkLookupContext, SockAddrContext, SockOpsContext},
};
use aya_log_ebpf::warn;
use mesh_common::{
    ADMIN_CALLER, ConnKey, DENIAL_EVENTS_BYTES, DENIAL_REPORT_INTERVAL_NS, DENIED_BY_INTENTIONS,
    DENIED_BY_LOOPBACK_GUARD, DenialCount, DenialEvent, DenialKey, LISTENER_V4, LISTENER_V6,
    MAX_CGROUP_LEVEL, MAX_DENIALS, MAX_DESTINATIONS, MAX_PENDING_CONNS, MAX_RULES, MAX_SERVICE_IDS,
    MAX_SERVICES, NO_PREALLOC, OrigDst, PairKey, ServiceId, ServiceName, SockAddr, rules_deny,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;
/// cgroup/connect*: let the connect go on (possibly rewritten).
const CONNECT_ALLOW: i32 = 1;
/// cgroup/connect*: refuse; the caller sees EPERM.
const CONNECT_DENY: i32 = 0;

// Globals set by the agent at load time (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
static NETNS_COOKIE: u64 = 0;
#[unsafe(no_mangle)]
static AGENT_CGROUP: u64 = 0;
#[unsafe(no_mangle)]
static OUTBOUND_PORT: u16 = 15001;
#[unsafe(no_mangle)]
static CHECK_PEERS: u8 = 1;
#[unsafe(no_mangle)]
static ADMIN_PORT: u16 = 15000;

// Every map is pinned by name (the agent pins them under
// `<bpffs>/mesh/<node>/`): they outlive the agent with the programs, and a
// restarted agent adopts them.
#[map]
static SERVICES: HashMap<SockAddr, ServiceId> = HashMap::pinned(MAX_DESTINATIONS, NO_PREALLOC);
#[map]
static CGROUPS: HashMap<u64, ServiceId> = HashMap::pinned(MAX_SERVICES, 0);
/// The agent's id table (no program reads it): pinned with the rest, so
/// the next agent of the node keeps every service's id.
#[map]
static SERVICE_NAMES: HashMap<ServiceId, ServiceName> =
    HashMap::pinned(MAX_SERVICE_IDS, NO_PREALLOC);
#[map]
static LOCAL_PORTS: HashMap<u32, ServiceId> = HashMap::pinned(MAX_SERVICES, 0);
#[map]
static RULES: HashMap<PairKey, u32> = HashMap::pinned(MAX_RULES, NO_PREALLOC);
#[map]
static SOCKETS: LruHashMap<u64, OrigDst> = LruHashMap::pinned(MAX_PENDING_CONNS, 0);
#[map]
static CONNS: LruHashMap<ConnKey, OrigDst> = LruHashMap::pinned(MAX_PENDING_CONNS, 0);
#[map]
static LISTENERS: SockMap = SockMap::pinned(2, 0);
#[map]
static PEERS: HashMap<SockAddr, u32> = HashMap::pinned(MAX_SERVICES, 0);
#[map]
static REFUSED: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);
#[map]
static DENIALS: LruPerCpuHashMap<DenialKey, DenialCount> = LruPerCpuHashMap::pinned(MAX_DENIALS, 0);
#[map]
static DENIAL_EVENTS: RingBuf = RingBuf::pinned(DENIAL_EVENTS_BYTES, 0);

/// cgroup/connect4, attached to the cgroup2 root; kernel 5.7+ (netns cookie).
///
/// For TCP sockets of this node's netns: refuses (EPERM) a connect to a local
/// service's loopback port unless the caller is that service or the agent;
/// refuses (EPERM) a caller with a mesh identity (`CGROUPS`, see `identity`) dialing a mesh
/// destination (`SERVICES`) when the intentions deny the pair (`RULES`);
/// otherwise redirects such a caller to the agent's outbound listener on
/// 127.0.0.1 and records the original destination in `SOCKETS` by socket
/// cookie. Every EPERM is counted in `DENIALS` and reported to the agent
/// through `DENIAL_EVENTS` (rate-limited per key, see `report_denial`).
#[cgroup_sock_addr(connect4)]
pub fn mesh_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid `bpf_sock_addr`; fields are read as
    // the verifier allows (4-byte loads).
    let (protocol, ip4, port) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.protocol, sa.user_ip4, sa.user_port)
    };
    if protocol != IPPROTO_TCP {
        return CONNECT_ALLOW;
    }
    let dst = SockAddr::from_v4(ip4, u16::from_be(port as u16));
    match decide(&ctx, &dst) {
        Verdict::Untouched => CONNECT_ALLOW,
        Verdict::Deny => CONNECT_DENY,
        Verdict::Redirect => {
            // SAFETY: writable context fields of cgroup/connect4.
            unsafe {
                let sa = &mut *ctx.sock_addr;
                sa.user_ip4 = u32::from_ne_bytes([127, 0, 0, 1]);
                sa.user_port = u32::from(outbound_port().to_be());
            }
            CONNECT_ALLOW
        }
    }
}

/// cgroup/connect6, attached to the cgroup2 root; kernel 5.7+.
///
/// The same decisions as `connect4` for AF_INET6 sockets. A redirected
/// IPv4-mapped destination goes to `::ffff:127.0.0.1`, any other to `::1`.
#[cgroup_sock_addr(connect6)]
pub fn mesh_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in `connect4`; `user_ip6` is read one word at a time.
    let (protocol, ip6, port) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.protocol, ctx_ip6(&raw const sa.user_ip6), sa.user_port)
    };
    if protocol != IPPROTO_TCP {
        return CONNECT_ALLOW;
    }
    let dst = SockAddr {
        addr: ip6,
        port: u16::from_be(port as u16),
        _pad: 0,
    };
    match decide(&ctx, &dst) {
        Verdict::Untouched => CONNECT_ALLOW,
        Verdict::Deny => CONNECT_DENY,
        Verdict::Redirect => {
            let to = if dst.is_v4() {
                SockAddr::from_v4(u32::from_ne_bytes([127, 0, 0, 1]), 0).addr
            } else {
                [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]
            };
            // SAFETY: writable context fields of cgroup/connect6, one word at a time.
            unsafe {
                let sa = &mut *ctx.sock_addr;
                sa.user_ip6[0] = to[0];
                sa.user_ip6[1] = to[1];
                sa.user_ip6[2] = to[2];
                sa.user_ip6[3] = to[3];
                sa.user_port = u32::from(outbound_port().to_be());
            }
            CONNECT_ALLOW
        }
    }
}

/// cgroup/bind4, attached to the cgroup2 root.
///
/// Refuses (EPERM) a non-root process of this node's netns binding the
/// agent's outbound or admin port: while no agent runs (its programs stay
/// pinned), apps are still redirected to the outbound port, and `exec`
/// asks the admin port for the config; neither may be taken by a user.
/// In another netns (a container), refuses any process with a mesh
/// identity of this node, root or not, the outbound port: its connects are
/// redirected there, to the agent's listener in that netns.
#[cgroup_sock_addr(bind4)]
pub fn mesh_bind4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid `bpf_sock_addr`.
    let port = unsafe { (*ctx.sock_addr).user_port };
    bind_guard(&ctx, port)
}

/// cgroup/bind6: as `mesh_bind4` for AF_INET6 sockets.
#[cgroup_sock_addr(bind6)]
pub fn mesh_bind6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid `bpf_sock_addr`.
    let port = unsafe { (*ctx.sock_addr).user_port };
    bind_guard(&ctx, port)
}

/// The decision of bind4/6 for a bind to `port` (network order).
#[inline(always)]
fn bind_guard(ctx: &SockAddrContext, port: u32) -> i32 {
    let port = u16::from_be(port as u16);
    if !this_node(ctx) {
        if port != outbound_port() {
            return CONNECT_ALLOW;
        }
        // SAFETY: helper without arguments.
        let cgroup = unsafe { bpf_get_current_cgroup_id() };
        // SAFETY: reading a load-time constant.
        if cgroup == unsafe { core::ptr::read_volatile(&AGENT_CGROUP) }
            || identity(cgroup).is_none()
        {
            return CONNECT_ALLOW;
        }
        return CONNECT_DENY;
    }
    // SAFETY: reading a load-time constant.
    let admin = unsafe { core::ptr::read_volatile(&ADMIN_PORT) };
    if port != outbound_port() && port != admin {
        return CONNECT_ALLOW;
    }
    let uid = bpf_get_current_uid_gid() as u32;
    if uid == 0 {
        CONNECT_ALLOW
    } else {
        CONNECT_DENY
    }
}

/// sock_ops, attached to the cgroup2 root; kernel 5.15+ (netns cookie in sock_ops).
///
/// On an active connection becoming established, moves the `SOCKETS` record
/// of a redirected socket (this node's connect4/6 made it, in whatever
/// netns) to `CONNS`, keyed by the 4-tuple the agent sees after `accept()`
/// and the netns. The callback runs before the final ACK is sent, so the
/// record is there before the agent can accept the connection.
#[sock_ops]
pub fn mesh_sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 0;
    }
    // remote_port holds the network-order port in its upper 16 bits on
    // little-endian machines. A recorded socket connects to the outbound
    // port (redirected, in whatever netns) or to the admin port (its
    // caller recorded): others need no lookup.
    let remote_port = u32::from_be(ctx.remote_port()) as u16;
    // SAFETY: reading a load-time constant.
    let admin = unsafe { core::ptr::read_volatile(&ADMIN_PORT) };
    if remote_port != outbound_port() && remote_port != admin {
        return 0;
    }
    // SAFETY: bpf_get_socket_cookie accepts a sock_ops context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once; nothing else writes this key.
    let Some(orig) = (unsafe { SOCKETS.get(cookie) }).copied() else {
        return 0;
    };
    let _ = SOCKETS.remove(cookie);
    let orig = OrigDst {
        // SAFETY: helper without arguments.
        created_ns: unsafe { bpf_ktime_get_ns() },
        ..orig
    };
    // local_port is in host byte order.
    let local_port = ctx.local_port() as u16;
    // SAFETY: bpf_get_netns_cookie accepts a sock_ops context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let key = match ctx.family() {
        AF_INET => ConnKey {
            peer: SockAddr::from_v4(ctx.local_ip4(), local_port),
            local: SockAddr::from_v4(ctx.remote_ip4(), remote_port),
            netns,
        },
        AF_INET6 => ConnKey {
            peer: SockAddr {
                // SAFETY: `ctx.ops` is the valid context the kernel passed.
                addr: unsafe { ctx_ip6(&raw const (*ctx.ops).local_ip6) },
                port: local_port,
                _pad: 0,
            },
            local: SockAddr {
                // SAFETY: as above.
                addr: unsafe { ctx_ip6(&raw const (*ctx.ops).remote_ip6) },
                port: remote_port,
                _pad: 0,
            },
            netns,
        },
        _ => return 0,
    };
    if CONNS.insert(key, orig, 0).is_err() {
        warn!(
            &ctx,
            "mesh: CONNS full, redirected connection loses its origin"
        );
    }
    0
}

/// sk_lookup, attached to the node's network namespace; kernel 5.9+.
///
/// Steers a new TCP connection for the port of a local non-public service
/// (`LOCAL_PORTS`) on any non-loopback local address (the node address of
/// either family, or any other) to the agent's inbound listener
/// (`LISTENERS`). Loopback (the agent's own delivery to the service) and
/// everything else go on to the regular socket lookup. With `CHECK_PEERS`,
/// a connection to such a port from an address that is not a mesh node
/// (`PEERS`) is refused here (the kernel answers the SYN with a reset) and
/// counted in `REFUSED`: strangers never reach the agent's handshakes.
#[sk_lookup]
pub fn mesh_sk_lookup(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel passes a valid `bpf_sk_lookup`.
    let (family, protocol, ip4, ip6, port, remote4, remote6) = unsafe {
        let l = &*ctx.lookup;
        (
            l.family,
            l.protocol,
            l.local_ip4,
            ctx_ip6(&raw const l.local_ip6),
            l.local_port,
            l.remote_ip4,
            ctx_ip6(&raw const l.remote_ip6),
        )
    };
    if protocol != IPPROTO_TCP {
        return sk_action::SK_PASS;
    }
    let (dst, src, index) = match family {
        AF_INET => (
            SockAddr::from_v4(ip4, port as u16),
            SockAddr::from_v4(remote4, 0),
            LISTENER_V4,
        ),
        AF_INET6 => (
            SockAddr {
                addr: ip6,
                port: port as u16,
                _pad: 0,
            },
            SockAddr {
                addr: remote6,
                port: 0,
                _pad: 0,
            },
            LISTENER_V6,
        ),
        _ => return sk_action::SK_PASS,
    };
    // SAFETY: read-only presence check.
    if dst.reaches_loopback() || unsafe { LOCAL_PORTS.get(u32::from(dst.port)) }.is_none() {
        return sk_action::SK_PASS;
    }
    // SAFETY: reading a load-time constant; then a read-only presence check.
    if unsafe { core::ptr::read_volatile(&CHECK_PEERS) } != 0 && unsafe { PEERS.get(src) }.is_none()
    {
        if let Some(n) = REFUSED.get_ptr_mut(0) {
            // SAFETY: this CPU's slot of the map: no one else writes it.
            unsafe { *n += 1 };
        }
        return sk_action::SK_DROP;
    }
    if let Err(e) = LISTENERS.redirect_sk_lookup(&ctx, index, 0) {
        warn!(
            &ctx,
            "mesh: inbound listener missing for port {} ({})", port, e
        );
        // Fail closed: never fall through to a service that binds 0.0.0.0.
        return sk_action::SK_DROP;
    }
    sk_action::SK_PASS
}

enum Verdict {
    Untouched,
    Deny,
    Redirect,
}

/// The shared decision of connect4/6 for a TCP connect to `dst`. The
/// caller's identity is looked up only for a guarded loopback port or a mesh
/// destination: other connects cost a map lookup or two.
///
/// In this node's netns: the loopback guard, then the mesh destinations.
/// In any other netns (a container below a service's cgroup): only mesh
/// destinations of callers with an identity of this node (no other node's
/// copy finds them in its `CGROUPS`); their redirect goes to
/// 127.0.0.1:`outbound_port` of *their* netns, where the agent listens
/// once it has enrolled the container (until then: ECONNREFUSED, fail
/// closed). A container's loopback is its own: no guard there.
#[inline(always)]
fn decide(ctx: &SockAddrContext, dst: &SockAddr) -> Verdict {
    // SAFETY: helper without arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: reading a load-time constant.
    if cgroup == unsafe { core::ptr::read_volatile(&AGENT_CGROUP) } {
        return Verdict::Untouched;
    }
    let own = this_node(ctx);
    if dst.reaches_loopback() {
        if !own {
            return Verdict::Untouched;
        }
        // SAFETY: reading a load-time constant.
        if dst.port == unsafe { core::ptr::read_volatile(&ADMIN_PORT) } {
            // Who calls the admin endpoint: its `POST /check` takes ttl
            // updates only from the service itself or root.
            // SAFETY: bpf_get_socket_cookie accepts a sock_addr context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let caller = OrigDst {
                dst: *dst,
                src_service: identity(cgroup).unwrap_or(0),
                dst_service: ADMIN_CALLER,
                uid: bpf_get_current_uid_gid() as u32,
                created_ns: 0,
            };
            let _ = SOCKETS.insert(cookie, caller, 0);
            return Verdict::Untouched;
        }
        // SAFETY: values are copied out at once.
        let Some(owner) = unsafe { LOCAL_PORTS.get(u32::from(dst.port)) }.copied() else {
            return Verdict::Untouched;
        };
        let src = identity(cgroup);
        if src != Some(owner) {
            report_denial(
                DenialKey {
                    src: src.unwrap_or(0),
                    dst: owner,
                    reason: DENIED_BY_LOOPBACK_GUARD,
                    _pad: 0,
                },
                cgroup,
                dst,
            );
            return Verdict::Deny;
        }
        return Verdict::Untouched;
    }
    // SAFETY: as above.
    let Some(dst_service) = (unsafe { SERVICES.get(dst) }).copied() else {
        return Verdict::Untouched;
    };
    let Some(src_service) = identity(cgroup) else {
        return Verdict::Untouched;
    };
    // SAFETY: values are copied out at once.
    let rule = |key: PairKey| unsafe { RULES.get(key) }.copied();
    if rules_deny(rule, src_service, dst_service) {
        report_denial(
            DenialKey {
                src: src_service,
                dst: dst_service,
                reason: DENIED_BY_INTENTIONS,
                _pad: 0,
            },
            cgroup,
            dst,
        );
        return Verdict::Deny;
    }
    // SAFETY: bpf_get_socket_cookie accepts a sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let orig = OrigDst {
        dst: *dst,
        src_service,
        dst_service,
        uid: bpf_get_current_uid_gid() as u32,
        created_ns: 0,
    };
    if SOCKETS.insert(cookie, orig, 0).is_err() {
        // Without a record the agent could not route it: refuse rather than leak.
        return Verdict::Deny;
    }
    Verdict::Redirect
}

/// The service of the calling process: that of its cgroup (`cgroup`), else
/// that of its nearest ancestor cgroup that is a service's (containers,
/// systemd sub-scopes below a service's cgroup), looking at most
/// `MAX_CGROUP_LEVEL` levels below the cgroup2 root.
#[inline(always)]
fn identity(cgroup: u64) -> Option<ServiceId> {
    // SAFETY: values are copied out at once.
    if let Some(id) = unsafe { CGROUPS.get(cgroup) }.copied() {
        return Some(id);
    }
    let mut found = None;
    // From the root down to the caller's own cgroup: the deepest service
    // cgroup wins.
    for level in 1..=MAX_CGROUP_LEVEL {
        // SAFETY: helper with a plain integer argument.
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if ancestor == 0 || ancestor == cgroup {
            break;
        }
        // SAFETY: as above.
        if let Some(id) = unsafe { CGROUPS.get(ancestor) }.copied() {
            found = Some(id);
        }
    }
    found
}

/// Counts an EPERM in `DENIALS` (this CPU's value) and tells the agent
/// (`DENIAL_EVENTS`) about the first one of `key` and then at most one every
/// `DENIAL_REPORT_INTERVAL_NS` per CPU, so a caller refused in a tight loop
/// costs a map update per connect, not a ring buffer record.
#[inline(always)]
fn report_denial(key: DenialKey, cgroup: u64, dst: &SockAddr) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let report = match DENIALS.get_ptr_mut(key) {
        Some(v) => {
            // SAFETY: this CPU's value in the map: no one else writes it.
            let v = unsafe { &mut *v };
            v.count += 1;
            let due = now.wrapping_sub(v.reported_ns) >= DENIAL_REPORT_INTERVAL_NS;
            if due {
                v.reported_ns = now;
            }
            due
        }
        None => {
            let first = DenialCount {
                count: 1,
                reported_ns: now,
            };
            DENIALS.insert(key, first, 0).is_ok()
        }
    };
    if !report {
        return;
    }
    let Some(mut entry) = DENIAL_EVENTS.reserve::<DenialEvent>(0) else {
        return;
    };
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    entry.write(DenialEvent {
        key,
        cgroup,
        dst: *dst,
        pid,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    entry.submit(0);
}

/// Whether the socket behind `ctx` lives in this node's network namespace.
#[inline(always)]
fn this_node<C: aya_ebpf::EbpfContext>(ctx: &C) -> bool {
    // SAFETY: bpf_get_netns_cookie accepts sock_addr and sock_ops contexts;
    // the global is a load-time constant.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) == core::ptr::read_volatile(&NETNS_COOKIE) }
}

/// Reads an IPv6 address from a context one 4-byte word at a time: the
/// verifier rejects the memcpy the compiler would otherwise emit.
///
/// # Safety
/// `p` must point into the program's context.
#[inline(always)]
unsafe fn ctx_ip6(p: *const [u32; 4]) -> [u32; 4] {
    let p = p.cast::<u32>();
    // SAFETY: the caller guarantees `p` points at four readable words.
    unsafe {
        [
            core::ptr::read_volatile(p),
            core::ptr::read_volatile(p.add(1)),
            core::ptr::read_volatile(p.add(2)),
            core::ptr::read_volatile(p.add(3)),
        ]
    }
}

#[inline(always)]
fn outbound_port() -> u16 {
    // SAFETY: reading a load-time constant.
    unsafe { core::ptr::read_volatile(&OUTBOUND_PORT) }
}

// Only for the BPF target: host builds (clippy --workspace) get std's, which a
// dependency links there.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
