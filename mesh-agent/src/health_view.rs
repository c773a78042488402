//! Instance health as data: states, reports and the [`View`] the snapshot
//! holds (`health` computes and exchanges it).

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::config::Service;
use crate::names::{NodeName, ServiceName};

/// A check's or an instance's state. Ordered from best to worst.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Passing,
    Warning,
    #[default]
    Critical,
}

impl State {
    /// Whether an instance in this state takes new connections.
    pub fn takes_traffic(self) -> bool {
        self != State::Critical
    }

    /// As in metrics: passing 0, warning 1, critical 2.
    pub fn code(self) -> i64 {
        self as i64
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Passing => "passing",
            State::Warning => "warning",
            State::Critical => "critical",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One check's latest result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub name: String,
    pub state: State,
    /// What the last run saw (status line, error, ttl note).
    pub output: String,
    /// Unix time (seconds) at which the check entered `state`, as its
    /// node's agent saw it (older agents do not send it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub since: Option<u64>,
}

/// What a node's agent says about one of its instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub service: String,
    /// The worst of `checks` (passing if none).
    pub state: State,
    pub checks: Vec<CheckReport>,
}

impl InstanceReport {
    /// The report of an instance whose checks are `checks`.
    pub fn of(service: &str, checks: Vec<CheckReport>) -> Self {
        Self {
            service: service.to_owned(),
            state: checks
                .iter()
                .map(|c| c.state)
                .max()
                .unwrap_or(State::Passing),
            checks,
        }
    }
}

/// What this agent knows of every instance's health, as published in the
/// snapshot. Read with [`View::state`] against the config in force: the
/// view keeps reports as received, the config says which instances exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Node -> service -> the node's latest report on that instance (this
    /// node's own checks included).
    pub reports: HashMap<NodeName, HashMap<ServiceName, InstanceReport>>,
    /// Nodes whose agent this agent cannot reach, and why.
    pub unreachable: HashMap<NodeName, String>,
    /// With the catalog in etcd: the nodes whose agent holds a live
    /// registration there (this node always counts). An instance on any
    /// other node is critical. `None` with a catalog file.
    pub registered: Option<BTreeSet<String>>,
}

/// The health of one instance, as `/status` and `catalog instances` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub service: ServiceName,
    pub node: NodeName,
    pub state: State,
    /// Why, in a few words, when no check says it (unreachable agent, no
    /// report yet).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    pub checks: Vec<CheckReport>,
}

impl View {
    /// The state of the instance of `service` on `node`: critical if its
    /// agent cannot be reached; else its latest report; else passing if
    /// the service has no checks, critical if it has (none ran yet).
    /// Read at every pick: two map lookups, no allocation.
    pub fn state(&self, service: &Service, node: &NodeName) -> State {
        if self.unreachable.contains_key(node) || !self.registered(node) {
            return State::Critical;
        }
        match self.report(service, node) {
            Some(report) => report.state,
            None if service.checks.is_empty() => State::Passing,
            None => State::Critical,
        }
    }

    /// [`View::state`] with its checks and reason.
    pub fn instance(&self, service: &Service, node: &NodeName) -> Instance {
        let report = self.report(service, node);
        let reason = match (self.unreachable.get(node), report) {
            (Some(why), _) => Some(format!("agent of node {node:?} unreachable: {why}")),
            _ if !self.registered(node) => Some(format!(
                "node {node:?} has no live registration in etcd (its agent is down or cut off from etcd)"
            )),
            (None, None) if !service.checks.is_empty() => Some("no check result yet".to_owned()),
            (None, _) => None,
        };
        Instance {
            service: service.name.clone(),
            node: node.clone(),
            state: self.state(service, node),
            reason,
            checks: report.map(|r| r.checks.clone()).unwrap_or_default(),
        }
    }

    /// Whether `node`'s agent counts as registered (always, without etcd).
    fn registered(&self, node: &NodeName) -> bool {
        self.registered
            .as_ref()
            .is_none_or(|r| r.contains(node.as_str()))
    }

    /// The latest report of `node` on its instance of `service`.
    fn report(&self, service: &Service, node: &NodeName) -> Option<&InstanceReport> {
        self.reports.get(node)?.get(&service.name)
    }
}
