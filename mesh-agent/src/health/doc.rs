//! The documents of the admin endpoint's `GET /catalog` (what `mesh-agent
//! catalog services|instances` print) and `POST /check` (what `mesh-agent
//! check pass|warn|fail` sends).

use std::{net::IpAddr, sync::Arc};

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Board, CheckReport, State};
use crate::{
    endpoint::{Call, Reply, Routes},
    names::{NodeName, ServiceName},
    snapshot::Snapshot,
    table::table,
};

/// Registers `GET /catalog` and `POST /check` (a [`TtlUpdate`] for a local
/// ttl check) of `board`.
pub fn routes(routes: &mut Routes, board: &Arc<Board>) {
    let b = board.clone();
    routes.any("/catalog", move |_| {
        Reply::document(&CatalogDoc::new(&b.snapshot(), b.node()))
    });
    let b = board.clone();
    routes.post("/check", move |call| ttl_update(&b, call));
}

/// `POST /check`: applies a [`TtlUpdate`] from root or the service's own
/// processes.
fn ttl_update(board: &Board, call: &Call) -> Reply {
    let update: TtlUpdate = match serde_json::from_slice(&call.body) {
        Ok(update) => update,
        Err(e) => {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                format!("not a ttl update ({{\"service\", \"state\", \"check\", \"note\"}}): {e}"),
            );
        }
    };
    let caller = call.caller.as_ref();
    if !caller.is_some_and(|c| c.may_report(&update.service)) {
        let who = caller.map_or("an unknown caller".to_owned(), |c| match &c.service {
            Some(s) => format!("uid {} in service {s:?}'s cgroup", c.uid),
            None => format!("uid {} outside any service's cgroup", c.uid),
        });
        return Reply::error(
            StatusCode::FORBIDDEN,
            format!(
                "only root or service {:?}'s own processes may report its checks, not {who}",
                update.service
            ),
        );
    }
    match board.ttl(
        &update.service,
        update.check.as_deref(),
        update.state,
        update.note,
    ) {
        Ok(()) => Reply::json(StatusCode::OK, &json!({"ok": true})),
        Err(e) => Reply::error(StatusCode::NOT_FOUND, e),
    }
}

/// `GET /catalog`: every service and the health of each instance, as the
/// agent that answers knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogDoc {
    /// The node of the agent that answered.
    pub node: String,
    pub services: Vec<ServiceHealth>,
    /// What the source had that could not be read and was left out.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub problems: Vec<String>,
}

/// A service of a [`CatalogDoc`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceHealth {
    pub name: ServiceName,
    pub vip: IpAddr,
    pub port: u16,
    pub public: bool,
    /// Its checks' names, in config order.
    pub checks: Vec<String>,
    pub instances: Vec<InstanceHealth>,
}

/// An instance of a [`ServiceHealth`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceHealth {
    pub node: NodeName,
    pub address: IpAddr,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    pub checks: Vec<CheckReport>,
}

/// `POST /check`: a ttl check update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtlUpdate {
    pub service: String,
    /// Which ttl check, when the service has several.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub check: Option<String>,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub note: Option<String>,
}

impl CatalogDoc {
    /// The catalog of `snapshot`, for the agent of `node`.
    pub fn new(snapshot: &Snapshot, node: &str) -> Self {
        let config = &snapshot.config;
        let services = config
            .services
            .iter()
            .map(|s| ServiceHealth {
                name: s.name.clone(),
                vip: s.vip,
                port: s.port,
                public: s.public,
                checks: s.checks.iter().map(|c| c.name.clone()).collect(),
                instances: config
                    .instances(s)
                    .map(|n| {
                        let i = snapshot.health.instance(s, &n.name);
                        InstanceHealth {
                            node: n.name.clone(),
                            address: n.address,
                            state: i.state,
                            reason: i.reason,
                            checks: i.checks,
                        }
                    })
                    .collect(),
            })
            .collect();
        Self {
            node: node.to_owned(),
            services,
            problems: Vec::new(),
        }
    }

    /// `mesh-agent catalog services`: one line per service.
    pub fn render_services(&self) -> String {
        let rows = self.services.iter().map(|s| {
            let count = |state| s.instances.iter().filter(|i| i.state == state).count();
            vec![
                s.name.to_string(),
                s.vip.to_string(),
                s.port.to_string(),
                s.instances.len().to_string(),
                count(State::Passing).to_string(),
                count(State::Warning).to_string(),
                count(State::Critical).to_string(),
                if s.checks.is_empty() {
                    "-".to_owned()
                } else {
                    s.checks.join(", ")
                },
            ]
        });
        let header = [
            "SERVICE",
            "VIP",
            "PORT",
            "INSTANCES",
            "PASSING",
            "WARNING",
            "CRITICAL",
            "CHECKS",
        ];
        table(&header, rows)
    }

    /// `mesh-agent catalog instances`: one line per instance (of `service`
    /// only, if given), with the last output of each check. `None` if
    /// `service` is not in the catalog.
    pub fn render_instances(&self, service: Option<&str>) -> Option<String> {
        if let Some(name) = service
            && !self.services.iter().any(|s| s.name == name)
        {
            return None;
        }
        let rows = self
            .services
            .iter()
            .filter(|s| service.is_none_or(|name| s.name == name))
            .flat_map(|s| {
                s.instances.iter().map(|i| {
                    let output = match (&i.reason, i.checks.as_slice()) {
                        (Some(reason), _) => reason.clone(),
                        (None, []) => "no checks".to_owned(),
                        (None, checks) => checks
                            .iter()
                            .map(|c| format!("{} {}: {}", c.name, c.state, c.output))
                            .collect::<Vec<_>>()
                            .join("; "),
                    };
                    vec![
                        s.name.to_string(),
                        i.node.to_string(),
                        format!("{}", std::net::SocketAddr::new(i.address, s.port)),
                        i.state.to_string(),
                        output,
                    ]
                })
            });
        Some(table(
            &["SERVICE", "NODE", "ADDRESS", "STATE", "OUTPUT"],
            rows,
        ))
    }
}
