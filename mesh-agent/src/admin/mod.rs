//! The admin endpoint (loopback only, default 127.0.0.1:15000); its
//! clients are in `client`.
//!
//! `GET /ready`: 200 once the agent carries traffic (programs attached,
//! listeners accepting), 503 while it starts and while it drains; the JSON
//! body says which ([`Phase`]) and which process answered.
//! `GET /metrics`: Prometheus text (see `metrics`). `GET /config`: the
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

pub use client::{fetch_catalog, fetch_config, fetch_status, send_ttl};
pub use status::StatusDoc;
use status::{Expiry, InstanceDoc, LeafDoc, PairDoc};

use crate::{
    config::Config,
    denials::Denials,
    ebpf::Kernel,
    health::{
        Board,
        doc::{CatalogDoc, TtlUpdate},
    },
    identity::Identities,
    policy,
    proxy::{admission::Admission, balance::Balancer},
    snapshot::Watch,
    telemetry::{Scrape, Telemetry},
};

/// The content type of every admin document but `/metrics`.
const JSON: &str = "application/json";

/// The default admin address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:15000";
/// The largest request body accepted (a ttl update with its note).
const MAX_REQUEST_BODY: usize = 16 * 1024;

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
    pub node: String,
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
    pub name: String,
    pub address: IpAddr,
}

/// A service of a [`ConfigDoc`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDoc {
    pub name: String,
    /// The nodes hosting an instance, in file order.
    pub nodes: Vec<String>,
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
    pub fn new(config: &Config, node: &str, policy: &policy::Policy) -> Self {
        Self {
            path: config.path.display().to_string(),
            node: node.to_owned(),
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
fn ready(phase: Phase, node: &str) -> (StatusCode, Value) {
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

/// The admin endpoint: its listener and what its documents are made of.
pub struct Admin {
    listener: TcpListener,
    /// Shared with each request's task (the listener is not, so it closes
    /// as soon as `run` is dropped).
    sources: Arc<Sources>,
}

/// What the admin documents are made of.
pub struct Sources {
    pub node: String,
    /// `/ready`: the agent's phase.
    pub readiness: Arc<Readiness>,
    /// `/config`: the config and intentions in force.
    pub snapshot: Watch,
    /// `/status` and `/metrics`: local leaves and the node CA.
    pub identities: Arc<Identities>,
    /// `/metrics`: map entries and sk_lookup's refusals.
    pub kernel: Arc<Kernel>,
    /// `/metrics`: inbound handshakes in progress.
    pub admission: Arc<Admission>,
    /// Folded into `telemetry` before each document.
    pub denials: Denials,
    /// `/metrics` and the pairs of `/status`.
    pub telemetry: Arc<Telemetry>,
    /// `POST /check`: ttl check updates.
    pub board: Arc<Board>,
    /// `POST /check`: the names behind callers' service ids.
    pub ids: Arc<crate::proxy::ServiceIds>,
    /// `/metrics`: connections open to each instance.
    pub balancer: Arc<Balancer>,
    /// `/metrics`: pooled connections to other agents.
    pub pool: Arc<crate::proxy::pool::Pool>,
    /// `/status` and `/metrics`: whether the catalog's store is reachable.
    pub catalog: Arc<crate::catalog::Reach>,
}

impl Admin {
    /// The admin endpoint on `listener` (see [`check_addr`]).
    pub fn new(listener: TcpListener, sources: Sources) -> Self {
        Self {
            listener,
            sources: Arc::new(sources),
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
            let sources = self.sources.clone();
            let caller = stream
                .local_addr()
                .ok()
                .and_then(|local| sources.caller(peer, local));
            tokio::spawn(async move {
                let _slot = slot;
                let service = service_fn(move |req| {
                    let sources = sources.clone();
                    let caller = caller.clone();
                    async move { Ok::<_, Infallible>(sources.respond(req, caller.as_ref()).await) }
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

/// Who called the admin endpoint, as connect4/6 saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    /// The service whose cgroup (or one below it) the caller runs in.
    pub service: Option<String>,
}

impl Caller {
    /// Whether it may report `service`'s ttl checks: root, or the
    /// service's own processes.
    pub fn may_report(&self, service: &str) -> bool {
        self.uid == 0 || self.service.as_deref() == Some(service)
    }
}

impl Sources {
    /// The caller of the connection from `peer` to `local`, from the
    /// kernel's record of its connect.
    fn caller(&self, peer: SocketAddr, local: SocketAddr) -> Option<Caller> {
        let record = self.kernel.take_orig(peer, local)?;
        (record.dst_service == mesh_common::ADMIN_CALLER).then(|| Caller {
            uid: record.uid,
            service: self.ids.name(record.src_service),
        })
    }

    async fn respond(
        &self,
        req: Request<hyper::body::Incoming>,
        caller: Option<&Caller>,
    ) -> Response<Full<Bytes>> {
        let (status, kind, body) = match req.uri().path() {
            "/catalog" => {
                let snapshot = self.snapshot.borrow().clone();
                document(&CatalogDoc::new(&snapshot, &self.node))
            }
            "/check" if req.method() == hyper::Method::POST => {
                let (status, body) = self.ttl_update(req, caller).await;
                (status, JSON, body.to_string())
            }
            "/ready" => {
                let (status, body) = ready(self.readiness.phase(), &self.node);
                (status, JSON, body.to_string())
            }
            "/status" => document(&self.status()),
            "/config" => document(&self.config()),
            "/metrics" => (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                JSON,
                json!({"error": "not found"}).to_string(),
            ),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(kind),
        );
        response
    }

    /// `POST /check`: a [`TtlUpdate`] for a local ttl check.
    async fn ttl_update(
        &self,
        req: Request<hyper::body::Incoming>,
        caller: Option<&Caller>,
    ) -> (StatusCode, Value) {
        let body = match http_body_util::Limited::new(req.into_body(), MAX_REQUEST_BODY)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    json!({"error": format!("a ttl update is at most {MAX_REQUEST_BODY} bytes")}),
                );
            }
            Err(e) => return (StatusCode::BAD_REQUEST, json!({"error": e.to_string()})),
        };
        let update: TtlUpdate = match serde_json::from_slice(&body) {
            Ok(update) => update,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("not a ttl update ({{\"service\", \"state\", \"check\", \"note\"}}): {e}")}),
                );
            }
        };
        if !caller.is_some_and(|c| c.may_report(&update.service)) {
            let who = caller.map_or("an unknown caller".to_owned(), |c| match &c.service {
                Some(s) => format!("uid {} in service {s:?}'s cgroup", c.uid),
                None => format!("uid {} outside any service's cgroup", c.uid),
            });
            return (
                StatusCode::FORBIDDEN,
                json!({"error": format!(
                    "only root or service {:?}'s own processes may report its checks, not {who}",
                    update.service
                )}),
            );
        }
        match self.board.ttl(
            &update.service,
            update.check.as_deref(),
            update.state,
            update.note,
        ) {
            Ok(()) => (StatusCode::OK, json!({"ok": true})),
            Err(e) => (StatusCode::NOT_FOUND, json!({"error": e.to_string()})),
        }
    }

    /// `/metrics`: Prometheus text.
    fn metrics(&self) -> String {
        let now = SystemTime::now();
        let expiries = self
            .identities
            .all()
            .into_iter()
            .map(|(name, leaf)| {
                let secs = match leaf.not_after.duration_since(now) {
                    Ok(left) => left.as_secs_f64(),
                    Err(past) => -past.duration().as_secs_f64(),
                };
                (name, secs)
            })
            .collect();
        let snapshot = self.snapshot.borrow().clone();
        let instances = snapshot
            .config
            .meshed_instances()
            .map(|(s, node)| {
                (
                    s.name.clone(),
                    node.to_owned(),
                    snapshot.health.state(s, node).code(),
                    self.balancer.active(&s.name, node),
                )
            })
            .collect();
        self.denials.harvest();
        self.telemetry.render(Scrape {
            expiries,
            maps: self.kernel.map_entries(),
            kernel_refused: self.kernel.refused(),
            handshakes_in_progress: self.admission.in_progress(),
            pooled: self.pool.usage(),
            instances,
            catalog_connected: self.catalog.state().connected,
        })
    }

    /// `/config`: the config this agent runs with (intentions as in force).
    fn config(&self) -> ConfigDoc {
        let snapshot = self.snapshot.borrow().clone();
        ConfigDoc::new(&snapshot.config, &self.node, &snapshot.policy)
    }

    /// The `/status` document.
    fn status(&self) -> StatusDoc {
        let now = SystemTime::now();
        let expiry = |not_after: SystemTime| Expiry {
            not_after: rfc3339(not_after),
            expires_in_secs: not_after.duration_since(now).unwrap_or_default().as_secs(),
        };
        let services = self
            .identities
            .all()
            .into_iter()
            .map(|(name, leaf)| LeafDoc {
                name,
                spiffe_id: leaf.spiffe_id.clone(),
                serial: leaf.serial.clone(),
                expiry: expiry(leaf.not_after),
            })
            .collect();
        self.denials.harvest();
        let connections = self
            .telemetry
            .pairs()
            .into_iter()
            .map(|((source, destination), s)| PairDoc {
                source,
                destination,
                allowed: s.allowed,
                denied: s.denied,
                denied_at_source: s.denied_at_source,
                cut: s.cut,
            })
            .collect();
        let snapshot = self.snapshot.borrow().clone();
        let instances = snapshot
            .config
            .meshed_instances()
            .map(|(s, node)| snapshot.health.instance(s, node))
            .map(|i| InstanceDoc {
                service: i.service,
                node: i.node,
                state: i.state,
                reason: i.reason,
            })
            .collect();
        let reach = self.catalog.state();
        StatusDoc {
            node: self.node.clone(),
            trust_domain: self.identities.trust_domain().to_owned(),
            node_ca: expiry(self.identities.ca().not_after()),
            services,
            instances,
            connections,
            catalog: Some(status::StoreDoc {
                store: self.catalog.store.clone(),
                connected: reach.connected,
                since: rfc3339(reach.since),
                error: reach.error,
            }),
        }
    }
}

/// A JSON document answered with 200, or its serialization error with 500.
fn document(doc: &impl Serialize) -> (StatusCode, &'static str, String) {
    match serde_json::to_string(doc) {
        Ok(body) => (StatusCode::OK, JSON, body),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            JSON,
            json!({"error": e.to_string()}).to_string(),
        ),
    }
}

fn rfc3339(t: SystemTime) -> String {
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
                "denied": 1, "denied_at_source": 2, "cut": 0}]
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
        let doc = ConfigDoc::new(&config, "a", &policy::Policy::new(&config));
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
            let (status, body) = ready(r.phase(), "b");
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

        let (_, body) = ready(Phase::Ready, "b");
        assert_eq!(body["node"], "b");
        assert_eq!(body["pid"], std::process::id());
    }

    #[test]
    fn only_loopback() {
        assert!(check_addr("127.0.0.1:15000".parse().unwrap()).is_ok());
        assert!(check_addr("[::1]:15000".parse().unwrap()).is_ok());
        assert!(check_addr("0.0.0.0:15000".parse().unwrap()).is_err());
    }
}
