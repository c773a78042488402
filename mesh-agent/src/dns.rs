//! DNS for the `.mesh` zone, so apps dial services by name:
//! `<service>.mesh` answers the service's VIP (A or AAAA, by the VIP's
//! family). The agent is authoritative for `.mesh`: an unknown name is
//! NXDOMAIN, a known name asked for the other family is an empty answer.
//! Any other name goes to the node's previous resolver (`--dns-upstream`,
//! by default the first nameserver of /etc/resolv.conf unless that is this
//! agent) or, without one, is REFUSED. Anything but a query is dropped.
//!
//! UDP only: answers are a single record, far below 512 bytes.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{
        RData, Record, RecordType,
        rdata::{A, AAAA},
    },
};
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use crate::config::Config;

/// How long a forwarded query may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// TTL of `.mesh` answers: short, as services and VIPs can change.
const TTL: u32 = 5;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("failed to listen for DNS on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
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

/// The `.mesh` names of a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    vips: HashMap<String, IpAddr>,
}

impl Zone {
    /// Every meshed (non-public) service of `config`, by name.
    pub fn new(config: &Config) -> Self {
        Self {
            vips: config
                .services
                .iter()
                .filter(|s| !s.public)
                .map(|s| (s.name.clone(), s.vip))
                .collect(),
        }
    }

    /// The answer to a DNS query for this zone, or `None` when the name is
    /// not in `.mesh` (or the bytes are not a query).
    pub fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let request = Message::from_vec(query).ok()?;
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let question = request.queries.first()?;
        let name = question.name().to_lowercase();
        let labels: Vec<String> = name
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let [service, zone] = labels.as_slice() else {
            return (labels.last().map(String::as_str) == Some("mesh"))
                .then(|| self.reply(&request, ResponseCode::NXDomain, None));
        };
        if zone != "mesh" {
            return None;
        }
        let Some(vip) = self.vips.get(service) else {
            return Some(self.reply(&request, ResponseCode::NXDomain, None));
        };
        let rdata = match (question.query_type(), vip) {
            (RecordType::A, IpAddr::V4(v4)) => Some(RData::A(A(*v4))),
            (RecordType::AAAA, IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(*v6))),
            _ => None,
        };
        let record = rdata.map(|r| Record::from_rdata(question.name().clone(), TTL, r));
        Some(self.reply(&request, ResponseCode::NoError, record))
    }

    /// What the responder does with a datagram: answers `.mesh` names;
    /// other queries go upstream when there is an `upstream` resolver, else
    /// get REFUSED. Anything but a query gets nothing, here or upstream: a
    /// responder that answers responses can be made to loop with another
    /// one (or with itself, given a spoofed source), and garbage is not
    /// worth a forward.
    pub fn handle(&self, datagram: &[u8], upstream: bool) -> Handling {
        let query = Message::from_vec(datagram)
            .is_ok_and(|m| m.metadata.message_type == MessageType::Query);
        if !query {
            return Handling::Drop;
        }
        if let Some(answer) = self.answer(datagram) {
            return Handling::Reply(answer);
        }
        if upstream {
            return Handling::Forward;
        }
        refused(datagram).map_or(Handling::Drop, Handling::Reply)
    }

    fn reply(&self, request: &Message, code: ResponseCode, answer: Option<Record>) -> Vec<u8> {
        let mut reply = Message::response(request.metadata.id, OpCode::Query);
        reply.metadata.authoritative = true;
        reply.metadata.recursion_desired = request.metadata.recursion_desired;
        reply.metadata.response_code = code;
        for q in &request.queries {
            reply.add_query(q.clone());
        }
        if let Some(record) = answer {
            reply.add_answer(record);
        }
        reply.to_vec().unwrap_or_default()
    }
}

/// A REFUSED reply to `query`, when there is no upstream to ask; `None`
/// if `query` is not a DNS message.
fn refused(query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let mut reply = Message::error_msg(request.metadata.id, OpCode::Query, ResponseCode::Refused);
    for q in &request.queries {
        reply.add_query(q.clone());
    }
    reply.to_vec().ok()
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

/// Answers queries on `socket` from the zone of the snapshot in force,
/// until the task is dropped.
pub async fn serve(
    socket: UdpSocket,
    snapshot: crate::snapshot::Watch,
    upstream: Option<SocketAddr>,
) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, client)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let query = buf[..len].to_vec();
        let handling = snapshot.borrow().zone.handle(&query, upstream.is_some());
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

/// Relays one query to `upstream` and returns its answer.
async fn forward(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let result = async {
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(upstream).await?;
        socket.send(query).await?;
        let mut buf = vec![0u8; 4096];
        let len = socket.recv(&mut buf).await?;
        buf.truncate(len);
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(UPSTREAM_TIMEOUT, result).await {
        Ok(Ok(answer)) => Some(answer),
        Ok(Err(e)) => {
            warn!(%upstream, error = %e, "DNS upstream failed");
            refused(query)
        }
        Err(_) => {
            debug!(%upstream, "DNS upstream timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;

    fn zone() -> Zone {
        Zone {
            vips: [
                ("data-api".to_owned(), "240.0.0.2".parse().unwrap()),
                ("v6".to_owned(), "fd77::2".parse().unwrap()),
            ]
            .into(),
        }
    }

    fn ask(name: &str, kind: RecordType) -> Vec<u8> {
        let mut q = Message::query();
        q.metadata.id = 7;
        q.metadata.recursion_desired = true;
        q.add_query(hickory_proto::op::Query::query(
            Name::from_ascii(name).unwrap(),
            kind,
        ));
        q.to_vec().unwrap()
    }

    fn reply(bytes: Option<Vec<u8>>) -> Message {
        Message::from_vec(&bytes.expect("an answer")).unwrap()
    }

    #[test]
    fn services_resolve_to_their_vip() {
        let r = reply(zone().answer(&ask("data-api.mesh.", RecordType::A)));
        assert_eq!(r.metadata.id, 7);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].data, RData::A(A("240.0.0.2".parse().unwrap())));
        // Case-insensitive, and without the trailing dot.
        let r = reply(zone().answer(&ask("Data-API.MESH", RecordType::A)));
        assert_eq!(r.answers.len(), 1);
        let r = reply(zone().answer(&ask("v6.mesh.", RecordType::AAAA)));
        assert_eq!(
            r.answers[0].data,
            RData::AAAA(AAAA("fd77::2".parse().unwrap()))
        );
    }

    #[test]
    fn the_zone_is_authoritative() {
        let r = reply(zone().answer(&ask("nope.mesh.", RecordType::A)));
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        let r = reply(zone().answer(&ask("a.b.mesh.", RecordType::A)));
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        // A v4-only service has no AAAA: an empty NOERROR answer.
        let r = reply(zone().answer(&ask("data-api.mesh.", RecordType::AAAA)));
        assert_eq!(
            (r.metadata.response_code, r.answers.len()),
            (ResponseCode::NoError, 0)
        );
    }

    #[test]
    fn other_names_are_not_ours() {
        assert!(zone().answer(&ask("example.com.", RecordType::A)).is_none());
        assert!(zone().answer(b"garbage").is_none());
        let r = reply(refused(&ask("example.com.", RecordType::A)));
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn other_names_go_upstream_or_are_refused() {
        let other = ask("example.com.", RecordType::A);
        assert_eq!(zone().handle(&other, true), Handling::Forward);
        let Handling::Reply(r) = zone().handle(&other, false) else {
            panic!("no reply");
        };
        assert_eq!(reply(Some(r)).metadata.response_code, ResponseCode::Refused);
        let ours = ask("data-api.mesh.", RecordType::A);
        assert!(matches!(zone().handle(&ours, true), Handling::Reply(_)));
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
                    zone().handle(datagram, upstream),
                    Handling::Drop,
                    "{datagram:?}, upstream {upstream}"
                );
            }
        }
    }
}
