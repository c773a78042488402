//! The web UI, at `http://<admin address>/ui/` (ARCHITECTURE.md, "Web
//! UI"): a page, a script and a style sheet built into the binary
//! (`assets/`, no build step, nothing fetched from elsewhere), reading one
//! document, `GET /ui/api/mesh` ([`doc::MeshDoc`]: services and their
//! instances' health, nodes and their agents, intentions in precedence
//! order, and every caller -> callee pair of the whole mesh with its
//! verdict and traffic), every second.
//!
//! It writes what the CLI writes, through the same code:
//! `POST /ui/api/intention` sets or deletes an intention with
//! `catalog::intentions::write` (the file or etcd, the same validation and
//! messages as `mesh-agent intention create|delete`), and
//! `POST /ui/api/explain` answers with `policy::explain`'s line.
//!
//! The admin server refuses any request whose Host is not the admin
//! address or localhost (DNS rebinding). A write must also carry this
//! agent's token (`X-Mesh-Token`, put in the page it served: a page of
//! another origin cannot read it), come from no other origin, and come
//! from root or a uid of `--ui-writers` (the kernel's record of who
//! connected, as for `POST /check`).

pub mod doc;

use std::sync::Arc;

use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::{
    catalog::{self, Reach, Source},
    config::Action,
    endpoint::{Call, Caller, Reply, Routes},
    names::NodeName,
    peers::Peers,
    policy,
    snapshot::Watch,
    telemetry::Telemetry,
};

/// The header a write carries its token in.
pub const TOKEN_HEADER: &str = "x-mesh-token";

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("no random bytes for the UI's token: {0}")]
    Random(String),
}

/// `mesh-agent run --ui on --ui-writers ... --ui-etcd-cert ... --ui-etcd-key ...`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UiOptions {
    /// Uids besides root that may write.
    pub writers: Vec<u32>,
    /// With the catalog in etcd: the certificate and key of the etcd user
    /// the UI writes as (one allowed to write intentions, as the CLI's
    /// `--etcd-cert` would be); else it writes as the agent's own user,
    /// which RBAC usually lets only read.
    pub etcd_writer: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl UiOptions {
    /// Where the UI writes: the agent's `store`, as the etcd writer if one
    /// is given.
    pub fn store(&self, store: &Source) -> Source {
        match (store, &self.etcd_writer) {
            (Source::Etcd(options), Some((cert, key))) => {
                let mut options = options.clone();
                if let Some(tls) = &mut options.tls {
                    tls.cert.clone_from(cert);
                    tls.key.clone_from(key);
                }
                Source::Etcd(options)
            }
            (store, _) => store.clone(),
        }
    }
}

/// Who may write, and the token that proves a write comes from the page.
#[derive(Debug)]
pub struct Guard {
    token: String,
    writers: Vec<u32>,
}

impl Guard {
    /// A guard with a fresh random token.
    pub fn new(options: &UiOptions) -> Result<Self, UiError> {
        let mut bytes = [0u8; 32];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut bytes)
            .map_err(|e| UiError::Random(format!("{e:?}")))?;
        Ok(Self {
            token: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            writers: options.writers.clone(),
        })
    }

    /// Whether `caller` may write: root, or a uid of `--ui-writers`.
    pub fn may_write(&self, caller: Option<&Caller>) -> Result<(), String> {
        match caller {
            Some(c) if c.uid == 0 || self.writers.contains(&c.uid) => Ok(()),
            Some(c) => Err(format!(
                "uid {} may not change the mesh from the UI: only root{} may (mesh-agent run --ui-writers)",
                c.uid,
                if self.writers.is_empty() {
                    String::new()
                } else {
                    format!(
                        " and uids {}",
                        self.writers
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            )),
            None => Err(
                "the agent has no record of who connected, so it cannot tell whether the caller may write"
                    .to_owned(),
            ),
        }
    }

    /// Whether `call` is a write this agent takes: from its own page (no
    /// other origin, the token it served), by a caller that may write.
    pub fn check(&self, call: &Call) -> Result<(), String> {
        let header = |name| call.headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(origin) = header(http::header::ORIGIN.as_str()) {
            let host = header(http::header::HOST.as_str()).unwrap_or("");
            if origin != format!("http://{host}") {
                return Err(format!("a write from another origin ({origin}) is refused"));
            }
        }
        match header(TOKEN_HEADER) {
            Some(token) if same(token.as_bytes(), self.token.as_bytes()) => {}
            Some(_) => {
                return Err(format!(
                    "wrong {TOKEN_HEADER} (the agent restarted since the page was loaded? reload it)"
                ));
            }
            None => return Err(format!("a write needs the page's {TOKEN_HEADER} header")),
        }
        self.may_write(call.caller.as_ref())
    }
}

/// `a == b`, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// What the UI reads and where it writes.
pub struct Ui {
    pub node: NodeName,
    pub guard: Guard,
    /// The catalog's store, as the agent was given it: writes go there.
    pub store: Source,
    pub reach: Arc<Reach>,
    pub snapshots: Watch,
    pub peers: Arc<Peers>,
    pub telemetry: Arc<Telemetry>,
}

/// `POST /ui/api/intention`.
#[derive(Debug, Deserialize)]
struct IntentionWrite {
    source: String,
    destination: String,
    /// `allow`, `deny`, or `delete`.
    action: String,
}

/// `POST /ui/api/explain`.
#[derive(Debug, Deserialize)]
struct ExplainAsk {
    source: String,
    destination: String,
}

impl Ui {
    /// Registers the UI's pages and documents.
    pub fn routes(self, routes: &mut Routes) {
        let ui = Arc::new(self);
        let page = {
            let token = ui.guard.token.clone();
            move |_: &Call| {
                Reply::asset(
                    "text/html; charset=utf-8",
                    INDEX.replace("{{TOKEN}}", &token),
                )
            }
        };
        routes.any("/ui", page.clone());
        routes.any("/ui/", page);
        routes.any("/ui/app.js", |_| {
            Reply::asset("text/javascript; charset=utf-8", SCRIPT)
        });
        routes.any("/ui/style.css", |_| {
            Reply::asset("text/css; charset=utf-8", STYLE)
        });
        let u = ui.clone();
        routes.any("/ui/api/mesh", move |call| {
            Reply::document(&doc::MeshDoc::new(&u, call.caller.as_ref()))
        });
        let u = ui.clone();
        routes.post("/ui/api/explain", move |call| u.explain(call));
        routes.post_later("/ui/api/intention", move |call| {
            let ui = ui.clone();
            async move { ui.write(call).await }
        });
    }

    fn explain(&self, call: &Call) -> Reply {
        let ask: ExplainAsk = match serde_json::from_slice(&call.body) {
            Ok(ask) => ask,
            Err(e) => return Reply::error(StatusCode::BAD_REQUEST, e),
        };
        let snapshot = self.snapshots.borrow().clone();
        match policy::explain(&snapshot.config, &ask.source, &ask.destination) {
            Ok(line) => Reply::json(StatusCode::OK, &json!({ "explain": line })),
            Err(e) => Reply::error(StatusCode::UNPROCESSABLE_ENTITY, e),
        }
    }

    async fn write(&self, call: Call) -> Reply {
        if let Err(why) = self.guard.check(&call) {
            tracing::warn!(why = %why, "web UI write refused");
            return Reply::error(StatusCode::FORBIDDEN, why);
        }
        let write: IntentionWrite = match serde_json::from_slice(&call.body) {
            Ok(write) => write,
            Err(e) => return Reply::error(StatusCode::BAD_REQUEST, e),
        };
        let action = match write.action.as_str() {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            "delete" => None,
            other => {
                return Reply::error(
                    StatusCode::BAD_REQUEST,
                    format!("action {other:?}: allow, deny or delete"),
                );
            }
        };
        let uid = call.caller.as_ref().map(|c| c.uid);
        match catalog::intentions::write(&self.store, &write.source, &write.destination, action)
            .await
        {
            Ok(message) => {
                tracing::info!(?uid, %message, "web UI wrote an intention");
                Reply::json(StatusCode::OK, &json!({ "message": message }))
            }
            Err(e) => Reply::error(StatusCode::UNPROCESSABLE_ENTITY, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(headers: &[(&'static str, &str)], uid: Option<u32>) -> Call {
        let mut call = Call {
            caller: uid.map(|uid| Caller { uid, service: None }),
            ..Call::default()
        };
        for (name, value) in headers {
            call.headers.insert(*name, value.parse().unwrap());
        }
        call
    }

    #[test]
    fn a_write_needs_the_token_no_other_origin_and_a_writer() {
        let guard = Guard::new(&UiOptions {
            writers: vec![1000],
            etcd_writer: None,
        })
        .unwrap();
        let token = guard.token.clone();
        assert_eq!(token.len(), 64);
        let host = ("host", "127.0.0.1:15000");
        let good = [
            host,
            (TOKEN_HEADER, &token),
            ("origin", "http://127.0.0.1:15000"),
        ];
        assert!(guard.check(&call(&good, Some(0))).is_ok());
        assert!(guard.check(&call(&good, Some(1000))).is_ok());
        assert!(
            guard.check(&call(&good[..2], Some(0))).is_ok(),
            "no Origin: curl"
        );
        let refused =
            |headers: &[(&'static str, &str)], uid| guard.check(&call(headers, uid)).unwrap_err();
        assert!(refused(&good, Some(1001)).contains("uid 1001 may not"));
        assert!(refused(&good, None).contains("no record"));
        assert!(refused(&[host], Some(0)).contains("needs the page's x-mesh-token"));
        assert!(refused(&[host, (TOKEN_HEADER, "00")], Some(0)).contains("wrong x-mesh-token"));
        let foreign = [
            host,
            (TOKEN_HEADER, &token),
            ("origin", "http://evil.example"),
        ];
        assert!(refused(&foreign, Some(0)).contains("another origin"));
        // Two guards, two tokens.
        assert_ne!(Guard::new(&UiOptions::default()).unwrap().token, token);
    }

    #[test]
    fn the_ui_writes_to_etcd_as_its_writer_if_given() {
        let tls = catalog::EtcdTls {
            ca: "ca.pem".into(),
            cert: "node.pem".into(),
            key: "node.key".into(),
        };
        let store =
            Source::Etcd(catalog::EtcdOptions::parse("etcd://10.0.0.1:2379", Some(tls)).unwrap());
        let options = UiOptions {
            writers: Vec::new(),
            etcd_writer: Some(("w.pem".into(), "w.key".into())),
        };
        let Source::Etcd(written) = options.store(&store) else {
            panic!("not etcd");
        };
        let tls = written.tls.unwrap();
        assert_eq!(
            (tls.ca.to_str(), tls.cert.to_str(), tls.key.to_str()),
            (Some("ca.pem"), Some("w.pem"), Some("w.key"))
        );
        assert_eq!(UiOptions::default().store(&store), store);
    }
}
