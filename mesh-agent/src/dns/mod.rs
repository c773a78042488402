//! DNS for the `.mesh` zone, so apps find services by name, with Consul's
//! habits:
//!
//! - `<service>.mesh` A or AAAA (by the VIP's family): the service's VIP.
//! - `<service>.mesh` SRV (also `_<service>._tcp.mesh`): one record per
//!   instance that takes traffic (passing or warning; critical never),
//!   priority 1, weight 1, the service's port, target `<node>.node.mesh.`,
//!   and each target's address (A or AAAA) in the additional section. A
//!   service whose every instance is critical still exists: no records.
//! - `<node>.node.mesh` A or AAAA (by the address's family): the address
//!   of a node of the config.
//!
//! The agent is authoritative for `.mesh`: an unknown name (a public
//! service among them) is NXDOMAIN, a known name asked for a type it does
//! not have is an empty answer. Any other name goes to the node's previous
//! resolver (`--dns-upstream`, by default the first nameserver of
//! /etc/resolv.conf unless that is this agent) or, without one, is
//! REFUSED. Anything but a query is dropped.
//!
//! UDP and TCP (RFC 7766), on the same address. A UDP reply larger than
//! 512 bytes, or than the payload size the query advertises with EDNS (at
//! most [`MAX_UDP_PAYLOAD`]), keeps as many whole SRV records, each with
//! its address, as fit, and has the TC bit set: the client asks again over
//! TCP, where the whole answer fits. SRV records come in an order rotated
//! by the query's id, so truncated replies do not all name the same
//! instances.
//!
//! The zone itself (names and replies) is `crate::zone`, below the snapshot
//! that holds it.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
};
use tracing::{debug, warn};

use crate::zone::refused;
pub use crate::zone::{Handling, MAX_UDP_PAYLOAD, Transport, Zone};

/// How long a forwarded query may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("failed to listen for DNS on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The node's previous resolver: the first nameserver in /etc/resolv.conf,
/// unless it is `own` (then names outside `.mesh` are refused).
pub fn previous_resolver(own: SocketAddr) -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    let ip: IpAddr = text.lines().find_map(|l| {
        l.strip_prefix("nameserver")
            .and_then(|rest| rest.trim().parse().ok())
    })?;
    let upstream = SocketAddr::new(ip, 53);
    (upstream != own && !(ip.is_unspecified() && own.ip().is_loopback())).then_some(upstream)
}

/// Binds the DNS socket.
pub fn bind(addr: SocketAddr) -> Result<std::net::UdpSocket, DnsError> {
    let err = |source| DnsError::Listen { addr, source };
    let socket = std::net::UdpSocket::bind(addr).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(socket)
}

/// Answers queries on `socket` from the zone and the health of the
/// snapshot in force, until the task is dropped (`socket` may be shared:
/// it closes with its last holder).
pub async fn serve(
    socket: impl Into<Arc<UdpSocket>>,
    snapshot: crate::snapshot::Watch,
    upstream: Option<SocketAddr>,
) {
    let socket: Arc<UdpSocket> = socket.into();
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, client)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let query = buf[..len].to_vec();
        let handling = {
            let current = snapshot.borrow().clone();
            current
                .zone
                .handle(&query, &current.health, upstream.is_some())
        };
        match (handling, upstream) {
            (Handling::Reply(answer), _) => {
                let _ = socket.send_to(&answer, client).await;
            }
            (Handling::Forward, Some(up)) => {
                let socket = socket.clone();
                tokio::spawn(async move {
                    if let Some(answer) = forward(&query, up).await {
                        let _ = socket.send_to(&answer, client).await;
                    }
                });
            }
            (Handling::Forward, None) | (Handling::Drop, _) => {}
        }
    }
}

/// Binds the DNS TCP listener, on the UDP socket's address.
pub fn bind_tcp(addr: SocketAddr) -> Result<std::net::TcpListener, DnsError> {
    let err = |source| DnsError::Listen { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// Bounds on TCP clients (RFC 7766 6.2.3: a server bounds what idle or
/// slow clients hold).
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// Most clients served at once; a connection past them is closed at
    /// once (the client falls back or retries), not left in the backlog.
    pub clients: usize,
    /// How long a client may take to send its next query, and to take in
    /// a reply (one that never reads is closed).
    pub idle: Duration,
    /// Most queries on one connection; then it is closed.
    pub queries: usize,
}

impl Default for TcpLimits {
    fn default() -> Self {
        Self {
            clients: 64,
            idle: Duration::from_secs(10),
            queries: 100,
        }
    }
}

/// Answers queries over TCP on `listener` (two-byte length before each
/// message, several queries per connection), as [`serve`] does over UDP,
/// within `limits`, until the task is dropped (its clients with it).
pub async fn serve_tcp(
    listener: impl Into<Arc<TcpListener>>,
    snapshot: crate::snapshot::Watch,
    upstream: Option<SocketAddr>,
    limits: TcpLimits,
) {
    let listener: Arc<TcpListener> = listener.into();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.clients));
    let mut clients = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = clients.join_next() => continue,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Full: this one is closed at once.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let snapshot = snapshot.clone();
        clients.spawn(async move {
            let _slot = slot;
            let _ = serve_client(stream, snapshot, upstream, limits).await;
        });
    }
}

/// One TCP client's queries, until it closes, stays idle or does not take
/// a reply within `limits.idle`, has asked `limits.queries` questions, or
/// sends something that is not a query.
async fn serve_client(
    mut stream: TcpStream,
    snapshot: crate::snapshot::Watch,
    upstream: Option<SocketAddr>,
    limits: TcpLimits,
) -> std::io::Result<()> {
    for _ in 0..limits.queries {
        let Ok(query) = tokio::time::timeout(limits.idle, read_message(&mut stream)).await else {
            return Ok(());
        };
        let query = query?;
        let handling = {
            let current = snapshot.borrow().clone();
            current
                .zone
                .handle_over(&query, &current.health, upstream.is_some(), Transport::Tcp)
        };
        let answer = match (handling, upstream) {
            (Handling::Reply(answer), _) => answer,
            (Handling::Forward, Some(up)) => match forward_tcp(&query, up).await {
                Some(answer) => answer,
                None => return Ok(()),
            },
            (Handling::Forward, None) | (Handling::Drop, _) => return Ok(()),
        };
        if tokio::time::timeout(limits.idle, write_message(&mut stream, &answer))
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

/// One length-prefixed DNS message.
async fn read_message(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut message = vec![0u8; usize::from(len)];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

async fn write_message(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len()).map_err(std::io::Error::other)?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// Relays one query to `upstream` over TCP and returns its answer: the
/// first message that [`answers`] the query.
async fn forward_tcp(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await?;
        write_message(&mut stream, query).await?;
        loop {
            let reply = read_message(&mut stream).await?;
            if answers(query, &reply) {
                return Ok(reply);
            }
            debug!(%upstream, "dropped a DNS reply over TCP that does not answer the query");
        }
    };
    ask_upstream(query, upstream, Transport::Tcp, exchange).await
}

/// Whether `reply` answers `query`: a response with the query's id and the
/// same questions (name, type, class). Anything else that reaches the
/// upstream socket (a forgery, a stale reply) is not the answer.
fn answers(query: &[u8], reply: &[u8]) -> bool {
    use hickory_proto::op::{Message, MessageType};
    let (Ok(q), Ok(r)) = (Message::from_vec(query), Message::from_vec(reply)) else {
        return false;
    };
    r.metadata.message_type == MessageType::Response
        && r.metadata.id == q.metadata.id
        && r.queries == q.queries
}

/// The answer `exchange` gets from `upstream` for `query` within
/// [`UPSTREAM_TIMEOUT`]: REFUSED if it fails, nothing if it times out.
async fn ask_upstream(
    query: &[u8],
    upstream: SocketAddr,
    transport: Transport,
    exchange: impl std::future::Future<Output = std::io::Result<Vec<u8>>>,
) -> Option<Vec<u8>> {
    match tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => Some(answer),
        Ok(Err(e)) => {
            warn!(%upstream, ?transport, error = %e, "DNS upstream failed");
            refused(query)
        }
        Err(_) => {
            debug!(%upstream, ?transport, "DNS upstream timed out");
            None
        }
    }
}

/// Relays one query to `upstream` and returns its answer, from a socket of
/// its own on a port the kernel picks at random, connected to `upstream`
/// (datagrams from any other address or port never reach it), taking the
/// first datagram that [`answers`] the query: a forged reply must guess
/// the port and the id, and name the question.
async fn forward(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let exchange = async {
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(upstream).await?;
        socket.send(query).await?;
        let mut buf = vec![0u8; 4096];
        loop {
            let len = socket.recv(&mut buf).await?;
            if answers(query, &buf[..len]) {
                buf.truncate(len);
                return Ok(buf);
            }
            debug!(%upstream, "dropped a DNS reply that does not answer the query");
        }
    };
    ask_upstream(query, upstream, Transport::Udp, exchange).await
}

#[cfg(test)]
mod tests {
    use hickory_proto::{op::ResponseCode, rr::RecordType};

    use super::*;
    use crate::zone::tests::{ask_with, config, ip, reply};

    /// An upstream's reply to `query` (as bytes): the same id and question
    /// unless told otherwise, one A record `answer`.
    fn upstream_reply(query: &[u8], id: Option<u16>, name: Option<&str>, answer: &str) -> Vec<u8> {
        use hickory_proto::{
            op::{Message, OpCode, Query},
            rr::{Name, RData, Record, rdata::A},
        };
        let q = Message::from_vec(query).unwrap();
        let mut r = Message::response(id.unwrap_or(q.metadata.id), OpCode::Query);
        let question = match name {
            Some(name) => Query::query(Name::from_ascii(name).unwrap(), RecordType::A),
            None => q.queries[0].clone(),
        };
        let owner = question.name().clone();
        r.add_query(question);
        r.add_answer(Record::from_rdata(
            owner,
            60,
            RData::A(A(answer.parse().unwrap())),
        ));
        r.to_vec().unwrap()
    }

    /// The A records of a reply.
    fn addresses(bytes: Option<Vec<u8>>) -> Vec<String> {
        reply(bytes)
            .answers
            .iter()
            .map(|r| r.data.to_string())
            .collect()
    }

    /// Forged replies reach the forwarder's socket before the real one: a
    /// wrong id, a wrong question, the right ones from another port. Only
    /// the real one is taken.
    #[tokio::test]
    async fn forged_udp_replies_are_not_the_answer() {
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = upstream.local_addr().unwrap();
        let query = ask_with("example.org.", RecordType::A, 4242, None);
        let asked = tokio::spawn(async move { forward(&query, addr).await });
        let mut buf = [0u8; 512];
        let (len, from) = upstream.recv_from(&mut buf).await.unwrap();
        let got = buf[..len].to_vec();
        let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for forged in [
            upstream_reply(&got, Some(4243), None, "6.6.6.1"),
            upstream_reply(&got, None, Some("example.net."), "6.6.6.2"),
            b"not dns at all".to_vec(),
        ] {
            upstream.send_to(&forged, from).await.unwrap();
        }
        // Right id and question, wrong source port: the kernel drops it.
        other
            .send_to(&upstream_reply(&got, None, None, "6.6.6.3"), from)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        upstream
            .send_to(&upstream_reply(&got, None, None, "192.0.2.7"), from)
            .await
            .unwrap();
        assert_eq!(addresses(asked.await.unwrap()), ["192.0.2.7"]);
    }

    #[tokio::test]
    async fn a_tcp_reply_with_another_id_is_not_the_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let query = ask_with("example.org.", RecordType::A, 77, None);
        let asked = tokio::spawn(async move { forward_tcp(&query, addr).await });
        let (mut stream, _) = listener.accept().await.unwrap();
        let got = read_message(&mut stream).await.unwrap();
        let forged = upstream_reply(&got, Some(78), None, "6.6.6.1");
        write_message(&mut stream, &forged).await.unwrap();
        let real = upstream_reply(&got, None, None, "192.0.2.8");
        write_message(&mut stream, &real).await.unwrap();
        assert_eq!(addresses(asked.await.unwrap()), ["192.0.2.8"]);
    }

    #[tokio::test]
    async fn tcp_clients_ask_several_questions_on_one_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = config();
        let (_publisher, snapshots) = crate::testing::snapshots(config);
        tokio::spawn(serve_tcp(listener, snapshots, None, Default::default()));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        for (id, name) in [(1, "data-api.mesh."), (2, "example.com.")] {
            write_message(&mut stream, &ask_with(name, RecordType::A, id, None))
                .await
                .unwrap();
            let r = reply(Some(read_message(&mut stream).await.unwrap()));
            assert_eq!(r.metadata.id, id);
            let code = if id == 1 {
                ResponseCode::NoError
            } else {
                ResponseCode::Refused
            };
            assert_eq!(r.metadata.response_code, code, "{name}");
        }
    }

    /// A client that never reads its replies, one that says nothing, and
    /// one past the slots are all let go: with one slot, a later client is
    /// still answered.
    #[tokio::test]
    async fn tcp_clients_cannot_hold_their_slot() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = config();
        config.services[0].nodes = (0..40)
            .map(|i| format!("node-{i:02}").parse().unwrap())
            .collect();
        config.nodes = (0..40)
            .map(|i| crate::config::Node {
                name: format!("node-{i:02}").parse().unwrap(),
                address: ip(&format!("10.0.0.{i}")),
            })
            .collect();
        let (_publisher, snapshots) = crate::testing::snapshots(config);
        let limits = TcpLimits {
            clients: 1,
            idle: Duration::from_millis(300),
            queries: 1_000_000,
        };
        tokio::spawn(serve_tcp(listener, snapshots, None, limits));
        let answered = |mut stream: TcpStream| async move {
            let query = ask_with("data-api.mesh.", RecordType::A, 9, None);
            write_message(&mut stream, &query).await.ok()?;
            read_message(&mut stream).await.ok()
        };
        // A silent client holds the one slot: a client past it is closed
        // at once; the silent one is let go after the idle bound.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let extra = TcpStream::connect(addr).await.unwrap();
        assert!(answered(extra).await.is_none());
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), silent.read(&mut byte)).await;
        assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
        // A client that never reads: once the buffers are full the server
        // cannot write, lets it go, and the client's writes fail.
        let mut deaf = TcpStream::connect(addr).await.unwrap();
        let query = ask_with("data-api.mesh.", RecordType::SRV, 1, None);
        let let_go = tokio::time::timeout(Duration::from_secs(10), async {
            for _ in 0..200_000 {
                if write_message(&mut deaf, &query).await.is_err() {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(let_go, Ok(true)), "{let_go:?}");
        let later = TcpStream::connect(addr).await.unwrap();
        assert!(answered(later).await.is_some());
    }
}
