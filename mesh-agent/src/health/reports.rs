//! The reports `board` keeps and `link` sends: this node's own, and one
//! report line of a node.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::health_view::InstanceReport;

/// This node's reports on its instances, sorted by service.
pub type LocalReports = Arc<Vec<InstanceReport>>;

/// One report line: what a node's agent says about its instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reports {
    pub node: String,
    pub instances: Vec<InstanceReport>,
    /// The sending agent's version and traffic (`peers`); older agents
    /// send none, and ignore it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub news: Option<crate::peers::News>,
}
