//! The admin endpoint (loopback only, default 127.0.0.1:15000); its
//! clients are in `client`. The server holds the routes the components
//! registered (`endpoint::Routes`): it finds one, reads a POST body
//! (bounded), and writes the reply.
//!
//! `GET /ready`: 200 once the agent carries traffic (programs attached,
//! listeners accepting), 503 while it starts and while it drains; the JSON
//! body says which ([`Phase`]) and which process answered.
//! `GET /metrics`: Prometheus text (`telemetry::Registry`: each component
//! registers its families). `GET /config`: the
//! config in force, as JSON ([`ConfigDoc`]; `mesh-agent exec` reads it back
//! when the file on disk is broken).
//! `GET /status`: JSON with the node; per local service its SPIFFE ID,
//! certificate serial and expiry; per (source, destination) pair seen, how
//! many connections the intentions allowed, denied here as the destination,
//! denied on the caller's node (EPERM from connect(), or the outbound
//! check), and cut on a change; per instance of every service, its health
//! as this agent knows it.
//! `GET /catalog`: every service and the health of each of its instances
//! as this agent knows it (`health::doc::CatalogDoc`). `POST /check`: a
//! ttl check update (`health::doc::TtlUpdate`) for a local instance.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::{Duration, SystemTime},
};

use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;

mod client;
pub mod status;
pub mod trust;

pub use client::{fetch_catalog, fetch_config, fetch_status, fetch_trust, send_ttl};
pub use status::{Status, StatusDoc};

pub use crate::endpoint::{Call, Caller, Reply, Routes};
use crate::{
    config::Config,
    endpoint::{MAX_BODY, Methods},
    names::{NodeName, ServiceName},
    policy,
    snapshot::Watch,
};

/// The default admin address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:15000";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin address {0} is not loopback: the admin endpoint only listens on loopback")]
    NotLoopback(SocketAddr),
    #[error(
        "cannot reach the agent's admin endpoint at {addr}: {source} (is the agent running in this network namespace?)"
    )]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin request to {addr} failed: {source}")]
    Http {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("bad admin request: {0}")]
    Request(String),
    #[error("admin request to {0} timed out")]
    Timeout(SocketAddr),
    #[error("admin endpoint at {addr} answered {status}")]
    Status {
        addr: SocketAddr,
        status: StatusCode,
    },
    #[error("the agent at {addr} refused: {message}")]
    Refused { addr: SocketAddr, message: String },
    #[error("admin endpoint at {addr} sent bad JSON: {source}")]
    Json {
        addr: SocketAddr,
        source: serde_json::Error,
    },
    #[error("failed to start a runtime for the admin request: {0}")]
    Runtime(std::io::Error),
}

/// The `/config` document: the config an agent runs with (its last good
/// one), with what `mesh-agent exec` needs to place a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDoc {
    /// The file the agent loads, as given to it.
    pub path: String,
    /// The node this agent runs.
    pub node: NodeName,
    pub trust_domain: String,
    pub leaf_ttl_secs: u64,
    pub nodes: Vec<NodeDoc>,
    pub services: Vec<ServiceDoc>,
    /// The intentions in force.
    pub intentions: policy::Description,
}

/// A node of a [`ConfigDoc`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDoc {
    pub name: NodeName,
    pub address: IpAddr,
}

/// A service of a [`ConfigDoc`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDoc {
    pub name: ServiceName,
    /// The nodes hosting an instance, in file order.
    pub nodes: Vec<NodeName>,
    pub port: u16,
    pub vip: IpAddr,
    pub public: bool,
    /// The cgroup path of its instance on this agent's node, the configured
    /// one or the default (`cgroup::service_path`); `None` if it has no
    /// instance here.
    pub cgroup: Option<PathBuf>,
}

impl ConfigDoc {
    /// The document of `config` as run by the agent of `node`, with the
    /// intentions of `policy` (the ones in force).
    pub fn new(config: &Config, node: &NodeName, policy: &policy::Policy) -> Self {
        Self {
            path: config.path.display().to_string(),
            node: node.clone(),
            trust_domain: config.mesh.trust_domain.clone(),
            leaf_ttl_secs: config.mesh.leaf_ttl.as_secs(),
            nodes: config
                .nodes
                .iter()
                .map(|n| NodeDoc {
                    name: n.name.clone(),
                    address: n.address,
                })
                .collect(),
            services: config
                .services
                .iter()
                .map(|s| ServiceDoc {
                    name: s.name.clone(),
                    nodes: s.nodes.clone(),
                    port: s.port,
                    vip: s.vip,
                    public: s.public,
                    cgroup: s
                        .hosted_on(node)
                        .then(|| crate::cgroup::service_path(s, node).0),
                })
                .collect(),
            intentions: policy.describe(),
        }
    }

    /// The service called `name`, if declared.
    pub fn service(&self, name: &str) -> Option<&ServiceDoc> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Where the agent is in its life, as `GET /ready` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Not yet carrying traffic.
    Starting = 0,
    /// Programs attached, listeners accepting.
    Ready = 1,
    /// SIGTERM/SIGINT received: no new connections; open ones finish.
    Draining = 2,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Draining => "draining",
        }
    }
}

/// The agent's [`Phase`], shared by the agent (which moves it forward) and
/// the admin endpoint (which reads it). Starting, then ready, then
/// draining; never back.
#[derive(Debug, Default)]
pub struct Readiness(AtomicU8);

impl Readiness {
    /// Marks the agent ready, unless it is already draining.
    pub fn ready(&self) {
        let _ = self.0.compare_exchange(
            Phase::Starting as u8,
            Phase::Ready as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// Marks the agent draining.
    pub fn draining(&self) {
        self.0.store(Phase::Draining as u8, Ordering::SeqCst);
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        match self.0.load(Ordering::SeqCst) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }
}

/// The answer to `GET /ready` in `phase`: 200 when ready, else 503; the
/// body names the phase, the node and this process.
fn ready(phase: Phase, node: &NodeName) -> (StatusCode, Value) {
    let status = if phase == Phase::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": phase == Phase::Ready,
        "phase": phase.name(),
        "node": node,
        "pid": std::process::id(),
    });
    (status, body)
}

/// Checks that `addr` is loopback.
pub fn check_addr(addr: SocketAddr) -> Result<SocketAddr, AdminError> {
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(AdminError::NotLoopback(addr))
    }
}

/// At most this many admin connections at once: any local user can connect,
/// and must not be able to eat the file descriptors the proxy needs.
const MAX_CONNECTIONS: usize = 256;
/// Bound on one admin connection, first byte to last; a client that says
/// nothing is gone after this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// Who called, from the kernel's record of the connection from `peer` to
/// `local`.
pub type Callers = Box<dyn Fn(SocketAddr, SocketAddr) -> Option<Caller> + Send + Sync>;

/// The admin endpoint: its listener and the routes the components
/// registered.
pub struct Admin {
    listener: TcpListener,
    /// Shared with each request's task (the listener is not, so it closes
    /// as soon as `run` is dropped).
    routes: Arc<Routes>,
    callers: Arc<Callers>,
}

impl Admin {
    /// The admin endpoint on `listener` (see [`check_addr`]), answering
    /// `routes`; `callers` tells who connected.
    pub fn new(listener: TcpListener, routes: Routes, callers: Callers) -> Self {
        Self {
            listener,
            routes: Arc::new(routes),
            callers: Arc::new(callers),
        }
    }

    /// Serves the admin endpoint until the task is dropped. One request
    /// per connection, bounded in time and in number.
    pub async fn run(self) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok((stream, peer)) = self.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue; // full: close it at once
            };
            let routes = self.routes.clone();
            let caller = stream
                .local_addr()
                .ok()
                .and_then(|local| (self.callers)(peer, local));
            tokio::spawn(async move {
                let _slot = slot;
                let service = service_fn(move |req| {
                    let routes = routes.clone();
                    let caller = caller.clone();
                    async move { Ok::<_, Infallible>(respond(&routes, req, caller).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(CONNECTION_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            });
        }
    }
}

/// Answers `req` with its route; a POST's body is read first (at most
/// [`MAX_BODY`] bytes). A request whose Host is not loopback is refused
/// first: a page of another site whose name was made to resolve to
/// 127.0.0.1 (DNS rebinding) reads and writes nothing here.
async fn respond(
    routes: &Routes,
    req: Request<hyper::body::Incoming>,
    caller: Option<Caller>,
) -> Response<Full<Bytes>> {
    let post = req.method() == hyper::Method::POST;
    let reply = if let Err(host) = host_is_loopback(req.headers()) {
        Reply::error(
            StatusCode::FORBIDDEN,
            format!(
                "Host {host:?} is not this admin endpoint: ask for localhost or a loopback address"
            ),
        )
    } else {
        match routes.find(req.uri().path(), post) {
            None => Reply::error(StatusCode::NOT_FOUND, "not found"),
            Some((Methods::Any, handler)) => {
                let headers = req.headers().clone();
                handler
                    .reply(Call {
                        body: Bytes::new(),
                        caller,
                        headers,
                    })
                    .await
            }
            Some((Methods::Post, handler)) => {
                let headers = req.headers().clone();
                match body(req).await {
                    Ok(body) => {
                        handler
                            .reply(Call {
                                body,
                                caller,
                                headers,
                            })
                            .await
                    }
                    Err(reply) => reply,
                }
            }
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(reply.content_type),
    );
    // Nothing here is to be framed, sniffed or cached by a browser.
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
        (
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    ] {
        headers.insert(name, hyper::header::HeaderValue::from_static(value));
    }
    response
}

/// Whether the Host of a request names a loopback address: `localhost` or
/// a loopback IP, with any port (a forwarded port, `ssh -L`). A page that
/// an attacker's name led to this endpoint (DNS rebinding) names the
/// attacker's host. A request without Host passes (no browser sends
/// one). Else the Host given.
fn host_is_loopback(headers: &hyper::HeaderMap) -> Result<(), String> {
    let Some(host) = headers.get(hyper::header::HOST) else {
        return Ok(());
    };
    let text = host.to_str().unwrap_or("");
    let loopback = text.parse::<http::uri::Authority>().is_ok_and(|a| {
        let name = a.host().trim_start_matches('[').trim_end_matches(']');
        name.eq_ignore_ascii_case("localhost")
            || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    });
    if loopback {
        Ok(())
    } else {
        Err(text.to_owned())
    }
}

/// The body of `req`, at most [`MAX_BODY`] bytes.
async fn body(req: Request<hyper::body::Incoming>) -> Result<Bytes, Reply> {
    match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a request body is at most {MAX_BODY} bytes"),
        )),
        Err(e) => Err(Reply::error(StatusCode::BAD_REQUEST, e)),
    }
}

/// Registers `/ready` (the agent's phase) and `/config` (the config and
/// intentions in force) of the agent of `node`.
pub fn routes(routes: &mut Routes, node: &NodeName, readiness: Arc<Readiness>, snapshots: Watch) {
    let name = node.clone();
    routes.any("/ready", move |_| {
        let (status, body) = ready(readiness.phase(), &name);
        Reply::json(status, &body)
    });
    let name = node.clone();
    routes.any("/config", move |_| {
        let snapshot = snapshots.borrow().clone();
        Reply::document(&ConfigDoc::new(&snapshot.config, &name, &snapshot.policy))
    });
}

/// `t` as RFC 3339, for the documents.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn renders_a_table() {
        let status: StatusDoc = serde_json::from_value(json!({
            "node": "b", "trust_domain": "mesh.local",
            "node_ca": {"not_after": "2036-11-23T00:00:00Z", "expires_in_secs": 315_000_000},
            "services": [{"name": "api", "spiffe_id": "spiffe://mesh.local/svc/api",
                "serial": "1f", "not_after": "2026-11-23T00:00:00Z", "expires_in_secs": 3700}],
            "instances": [{"service": "api", "node": "c", "state": "critical",
                "reason": "agent of node \"c\" unreachable: connection closed"}],
            "connections": [{"source": "web", "destination": "api", "allowed": 3,
                "denied": 1, "denied_at_source": 2, "cut": 0}],
            "containers": [{"service": "api", "cgroup": "/mesh/b/api/libpod-1", "netns": 4026532448_u64,
                "pid": 42, "since": "2026-12-07T00:00:00Z", "dns": true,
                "connections_from": 5, "connections_into": 7}]
        }))
        .unwrap();
        // The document reads back as served.
        assert_eq!(
            serde_json::from_str::<StatusDoc>(&serde_json::to_string(&status).unwrap()).unwrap(),
            status
        );
        let text = status.render();
        assert!(
            text.starts_with("node b (trust domain mesh.local)\nSERVICE"),
            "{text}"
        );
        assert!(
            text.contains("api      spiffe://mesh.local/svc/api  1f"),
            "{text}"
        );
        assert!(text.contains("(in 1h1m)"), "{text}");
        assert!(
            text.contains("api           /mesh/b/api/libpod-1  4026532448  yes  5           7"),
            "{text}"
        );
        assert!(
            text.contains(
                "api on c: critical (agent of node \"c\" unreachable: connection closed)"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_config_document_reads_back_as_served() {
        // The intention's table is on line 20.
        let text = format!(
            "[mesh]\ndefault_policy = \"allow\"\n{}{}{}\
             public = true\ncgroup = \"/system.slice/api.service\"\n{}",
            testing::node("a", "10.0.0.1"),
            testing::service("web", &["a"], 80),
            testing::service("api", &["a"], 81),
            testing::intention("*", "api", "deny")
        );
        let config = testing::config(&text);
        let doc = ConfigDoc::new(
            &config,
            &"a".parse().unwrap(),
            &policy::Policy::new(&config),
        );
        let body = serde_json::to_string(&doc).unwrap();
        let back: ConfigDoc = serde_json::from_str(&body).unwrap();
        assert_eq!(back, doc);

        let value: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["node"], "a");
        assert_eq!(value["nodes"][0]["address"], "10.0.0.1");
        let web = &value["services"][0];
        assert_eq!(web["nodes"], json!(["a"]));
        assert_eq!(web["cgroup"], "/mesh/a/web");
        assert_eq!(web["public"], false);
        let api = &value["services"][1];
        assert_eq!(api["cgroup"], "/system.slice/api.service");
        assert_eq!(api["public"], true);
        assert_eq!(value["intentions"]["default_policy"], "allow");
        assert_eq!(
            value["intentions"]["intentions"][0],
            json!({"source": "*", "destination": "api", "action": "deny", "line": 20})
        );
    }

    #[test]
    fn ready_only_between_start_and_drain() {
        let readiness = Readiness::default();
        let answer = |r: &Readiness| {
            let (status, body) = ready(r.phase(), &"b".parse().unwrap());
            (
                status.as_u16(),
                body["phase"].clone(),
                body["ready"].clone(),
            )
        };
        assert_eq!(answer(&readiness), (503, json!("starting"), json!(false)));
        readiness.ready();
        assert_eq!(answer(&readiness), (200, json!("ready"), json!(true)));
        readiness.draining();
        assert_eq!(answer(&readiness), (503, json!("draining"), json!(false)));
        // Draining is final.
        readiness.ready();
        assert_eq!(readiness.phase(), Phase::Draining);

        let (_, body) = ready(Phase::Ready, &"b".parse().unwrap());
        assert_eq!(body["node"], "b");
        assert_eq!(body["pid"], std::process::id());
    }

    #[test]
    fn only_requests_naming_loopback() {
        let host = |h: &str| {
            let mut headers = hyper::HeaderMap::new();
            headers.insert(hyper::header::HOST, h.parse().unwrap());
            host_is_loopback(&headers)
        };
        for good in [
            "127.0.0.1:15000",
            "localhost:15000",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.2:15000",
            "[::1]:15000",
        ] {
            assert!(host(good).is_ok(), "{good}");
        }
        assert!(host_is_loopback(&hyper::HeaderMap::new()).is_ok());
        for bad in [
            "evil.example:15000",
            "localhost.evil.example:15000",
            "10.0.0.1:15000",
            "[::2]:15000",
            "127.0.0.1.nip.io:15000",
        ] {
            assert_eq!(host(bad), Err(bad.to_owned()), "{bad}");
        }
    }

    #[test]
    fn only_loopback() {
        assert!(check_addr("127.0.0.1:15000".parse().unwrap()).is_ok());
        assert!(check_addr("[::1]:15000".parse().unwrap()).is_ok());
        assert!(check_addr("0.0.0.0:15000".parse().unwrap()).is_err());
    }
}
