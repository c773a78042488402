//! The file as serde sees it: strings and spans, checked in `validate`.
//!
//! Values that need a semantic check are `Spanned` so problems can point at
//! them. Ports and check counts are a `toml::Value` so that a string or
//! negative number is a positioned problem reported with the others, not a
//! lone serde error.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub mesh: Option<RawMesh>,
    #[serde(default)]
    pub node: Vec<Spanned<RawNode>>,
    #[serde(default)]
    pub service: Vec<Spanned<RawService>>,
    #[serde(default)]
    pub intention: Vec<Spanned<RawIntention>>,
    #[serde(default)]
    pub revoked: Vec<Spanned<RawRevoked>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMesh {
    pub trust_domain: Option<Spanned<String>>,
    pub default_policy: Option<Spanned<String>>,
    pub ca_dir: Option<Spanned<String>>,
    pub leaf_ttl: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub name: Spanned<String>,
    /// The one-instance form; exactly one of `node` and `nodes` is given.
    pub node: Option<Spanned<String>>,
    /// One instance on each node listed.
    pub nodes: Option<Spanned<Vec<Spanned<String>>>>,
    pub port: Spanned<toml::Value>,
    pub vip: Option<Spanned<String>>,
    #[serde(default)]
    pub public: bool,
    pub cgroup: Option<Spanned<String>>,
    /// How a VIP connection picks an instance.
    pub lb: Option<Spanned<String>>,
    /// Its `[[service.check]]` tables, in file order.
    #[serde(default)]
    pub check: Vec<Spanned<RawCheck>>,
}

/// A `[[service.check]]`: exactly one of `http`, `tcp` and `ttl` is its kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    pub name: Option<Spanned<String>>,
    /// The path the agent GETs on `127.0.0.1:<port>`.
    pub http: Option<Spanned<String>>,
    pub tcp: Option<Spanned<bool>>,
    pub ttl: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub success_before_passing: Option<Spanned<toml::Value>>,
    pub failures_before_critical: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIntention {
    pub source: Spanned<String>,
    pub destination: Spanned<String>,
    pub action: Spanned<String>,
}

/// A `[[revoked]]`: a node CA shut out for ever, and its node until
/// readmitted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRevoked {
    pub node: Spanned<String>,
    pub node_ca: Spanned<String>,
    pub readmitted: Option<Spanned<bool>>,
}
