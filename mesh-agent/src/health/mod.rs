//! Instance health, with Consul's semantics (docs/configuration.md, "Health checks").
//!
//! - `probe`: one run of an `http` or `tcp` check.
//! - `runner`: runs the checks of this node's instances, from the agent's
//!   cgroup, and expires `ttl` checks.
//! - `board`: what this agent knows of every instance (its own checks, the
//!   reports of other nodes' agents, which agents it cannot reach); every
//!   change is published as a new [`View`] in the snapshot.
//! - `link`: the exchange of reports between agents (ARCHITECTURE.md,
//!   "Health").
//! - `reports`: the report types `board` keeps and `link` sends.
//!
//! The data (states, reports, the [`View`]) is `health_view`'s, below the
//! snapshot.
//!
//! An instance's state is the worst of its checks' states; an instance
//! without checks is passing; a new check starts critical. Warning
//! instances take traffic, critical ones none.

pub mod board;
pub mod doc;
pub mod link;
pub mod probe;
pub mod reports;
pub mod runner;

pub use crate::health_view::{CheckReport, Instance, InstanceReport, State, View};
pub use board::Board;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("service {service:?} has no instance on node {node:?}")]
    NotHere { service: String, node: String },
    #[error("service {service:?} has no ttl check{}", named(.check))]
    NoTtlCheck {
        service: String,
        check: Option<String>,
    },
    #[error(
        "service {service:?} has several ttl checks ({}): say which with --check",
        .checks.join(", ")
    )]
    WhichTtlCheck {
        service: String,
        checks: Vec<String>,
    },
}

fn named(check: &Option<String>) -> String {
    check
        .as_ref()
        .map(|c| format!(" named {c:?}"))
        .unwrap_or_default()
}
