//! SPIFFE IDs and TLS server names of the mesh.
//!
//! - service: `spiffe://<trust domain>/svc/<service>`, SNI `<service>.svc.<trust domain>`
//! - a node's agent (agent-to-agent links): `spiffe://<trust domain>/agent/<node>`,
//!   SNI `<node>.agent.<trust domain>`
//! - node intermediate CA: `spiffe://<trust domain>/node/<node>`
//! - root CA: `spiffe://<trust domain>`
//!
//! Only these exact forms are accepted. The SPIFFE ID spec makes the trust
//! domain lowercase and path segments case-sensitive, and allows no query,
//! fragment, port, userinfo or percent-encoding; our CA issues IDs with a
//! lowercase trust domain and names that are valid config names
//! (`config::is_name`). So a scheme or trust domain in another case, a
//! name in another case, an extra segment, a query or a fragment is not
//! "the same ID written differently": it is not one of ours, and refused.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::config::{is_name, is_trust_domain};
use crate::names::{NodeName, ServiceName};

/// What a mesh SPIFFE ID names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Service,
    /// The agent of a node, as a peer on an agent-to-agent link.
    Agent,
    Node,
}

impl Kind {
    /// Its path segment: `svc`, `agent` or `node`.
    fn segment(self) -> &'static str {
        match self {
            Kind::Service => "svc",
            Kind::Agent => "agent",
            Kind::Node => "node",
        }
    }
}

/// Why a text is not a mesh SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    #[error(
        "{0:?} is not a mesh SPIFFE ID: expected spiffe://<trust domain>/<svc|agent|node>/<name>"
    )]
    Form(String),
}

/// A mesh SPIFFE ID of a service, a node's agent or a node's CA (the forms
/// in the module docs). Built from a typed name, or parsed ([`FromStr`],
/// serde) in exactly the form [`fmt::Display`] writes; cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: Arc<str>,
    kind: Kind,
    name: Arc<str>,
}

impl SpiffeId {
    /// The ID of `service` in `trust_domain`.
    pub fn service(trust_domain: &str, service: &ServiceName) -> Self {
        Self::new(trust_domain, Kind::Service, service)
    }

    /// The ID of the agent of `node` in `trust_domain`.
    pub fn agent(trust_domain: &str, node: &NodeName) -> Self {
        Self::new(trust_domain, Kind::Agent, node)
    }

    /// The ID of the intermediate CA of `node` in `trust_domain`.
    pub fn node(trust_domain: &str, node: &NodeName) -> Self {
        Self::new(trust_domain, Kind::Node, node)
    }

    fn new(trust_domain: &str, kind: Kind, name: &str) -> Self {
        Self {
            trust_domain: Arc::from(trust_domain),
            kind,
            name: Arc::from(name),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The service's or node's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (td, kind, name) = (&self.trust_domain, self.kind.segment(), &self.name);
        write!(f, "spiffe://{td}/{kind}/{name}")
    }
}

/// As the URI's `Debug` (quoted).
impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

/// Accepts exactly what [`fmt::Display`] writes for a valid trust domain
/// and name; the trust domain is any valid one (compare it to yours).
impl FromStr for SpiffeId {
    type Err = SpiffeError;

    fn from_str(uri: &str) -> Result<Self, SpiffeError> {
        let refused = || SpiffeError::Form(uri.to_owned());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(refused)?;
        let (trust_domain, path) = rest.split_once('/').ok_or_else(refused)?;
        let (segment, name) = path.split_once('/').ok_or_else(refused)?;
        let kind = [Kind::Service, Kind::Agent, Kind::Node]
            .into_iter()
            .find(|k| k.segment() == segment)
            .ok_or_else(refused)?;
        if !is_trust_domain(trust_domain) || !is_name(name) {
            return Err(refused());
        }
        Ok(Self::new(trust_domain, kind, name))
    }
}

impl PartialEq<&str> for SpiffeId {
    fn eq(&self, other: &&str) -> bool {
        other
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.strip_prefix(&*self.trust_domain))
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.strip_prefix(self.kind.segment()))
            .and_then(|rest| rest.strip_prefix('/'))
            == Some(&*self.name)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The SPIFFE ID of a service.
pub fn service_id(trust_domain: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/svc/{service}")
}

/// The SPIFFE ID of the agent of `node`.
pub fn agent_id(trust_domain: &str, node: &str) -> String {
    format!("spiffe://{trust_domain}/agent/{node}")
}

/// The SPIFFE ID of a node's intermediate CA.
pub fn node_id(trust_domain: &str, node: &str) -> String {
    format!("spiffe://{trust_domain}/node/{node}")
}

/// The SPIFFE ID of the trust domain (the root CA's URI SAN).
pub fn trust_domain_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}")
}

/// Parses a mesh SPIFFE ID of `trust_domain`, exactly as `service_id`,
/// `agent_id` or `node_id` write it for a valid name; `None` for anything
/// else, including IDs of other trust domains.
pub fn parse<'a>(trust_domain: &str, uri: &'a str) -> Option<(Kind, &'a str)> {
    let rest = uri.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?;
    let (kind, name) = if let Some(name) = rest.strip_prefix("/svc/") {
        (Kind::Service, name)
    } else if let Some(name) = rest.strip_prefix("/agent/") {
        (Kind::Agent, name)
    } else {
        (Kind::Node, rest.strip_prefix("/node/")?)
    };
    is_name(name).then_some((kind, name))
}

/// The TLS server name (SNI) a source agent uses to reach `service`.
pub fn sni(trust_domain: &str, service: &str) -> String {
    format!("{service}.svc.{trust_domain}")
}

/// The service named by a mesh SNI of `trust_domain`, exactly as `sni`
/// writes it for a valid name.
pub fn service_from_sni<'a>(trust_domain: &str, sni: &'a str) -> Option<&'a str> {
    let service = sni.strip_suffix(trust_domain)?.strip_suffix(".svc.")?;
    is_name(service).then_some(service)
}

/// The TLS server name (SNI) an agent uses to reach the agent of `node`.
pub fn agent_sni(trust_domain: &str, node: &str) -> String {
    format!("{node}.agent.{trust_domain}")
}

/// The node named by an agent SNI of `trust_domain`, exactly as
/// `agent_sni` writes it for a valid name.
pub fn node_from_agent_sni<'a>(trust_domain: &str, sni: &'a str) -> Option<&'a str> {
    let node = sni.strip_suffix(trust_domain)?.strip_suffix(".agent.")?;
    is_name(node).then_some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_foreign_ids_are_rejected() {
        let id = service_id("mesh.local", "api");
        assert_eq!(id, "spiffe://mesh.local/svc/api");
        assert_eq!(parse("mesh.local", &id), Some((Kind::Service, "api")));
        let node = node_id("mesh.local", "b");
        assert_eq!(parse("mesh.local", &node), Some((Kind::Node, "b")));
        let agent = agent_id("mesh.local", "b");
        assert_eq!(agent, "spiffe://mesh.local/agent/b");
        assert_eq!(parse("mesh.local", &agent), Some((Kind::Agent, "b")));
        assert_eq!(parse("other.td", &agent), None);
        assert_eq!(parse("other.td", &id), None);
        assert_eq!(parse("mesh.loc", &id), None, "prefix of the trust domain");
        assert_eq!(parse("mesh.local", "spiffe://mesh.local/svc/a/b"), None);
        assert_eq!(parse("mesh.local", "spiffe://mesh.local/svc/"), None);
        assert_eq!(parse("mesh.local", "https://mesh.local/svc/api"), None);
    }

    #[test]
    fn only_the_exact_form_of_a_valid_name_parses() {
        for uri in [
            "spiffe://mesh.local/svc/api\0.evil",
            "spiffe://mesh.local/svc/api?x",
            "spiffe://mesh.local/svc/api#x",
            "spiffe://mesh.local/svc/API",
            "spiffe://mesh.local/svc/a%70i",
            "spiffe://mesh.local/svc/-api",
            "spiffe://mesh.local/svc/a.pi",
            "spiffe://mesh.local/node/b c",
            "spiffe://mesh.local/agent/b/x",
            "spiffe://mesh.local/agent/b/",
            "spiffe://mesh.local/agent/",
            "spiffe://mesh.local/agent/B",
            "spiffe://mesh.local/agent/b?x",
            "spiffe://mesh.local/agent/b#x",
            "spiffe://mesh.local/AGENT/b",
            "spiffe://mesh.local/agents/b",
            "spiffe://mesh.local/agent//b",
            "spiffe://mesh.local:443/agent/b",
            "spiffe://mesh.local:443/svc/api",
            "spiffe://MESH.LOCAL/svc/api",
            "SPIFFE://mesh.local/svc/api",
        ] {
            assert_eq!(parse("mesh.local", uri), None, "{uri:?}");
        }
        assert_eq!(service_from_sni("mesh.local", "a_b.svc.mesh.local"), None);
        assert_eq!(service_from_sni("mesh.local", "API.svc.mesh.local"), None);
        assert_eq!(
            node_from_agent_sni("mesh.local", "B.agent.mesh.local"),
            None
        );
        assert_eq!(
            node_from_agent_sni("mesh.local", "b_c.agent.mesh.local"),
            None
        );
    }

    #[test]
    fn spiffe_ids_show_parse_and_serialize_in_one_form() {
        let api: ServiceName = "api".parse().unwrap();
        let b: NodeName = "b".parse().unwrap();
        let id = SpiffeId::service("mesh.local", &api);
        assert_eq!(id.to_string(), service_id("mesh.local", "api"));
        assert_eq!(
            SpiffeId::agent("mesh.local", &b).to_string(),
            agent_id("mesh.local", "b")
        );
        assert_eq!(
            SpiffeId::node("mesh.local", &b).to_string(),
            node_id("mesh.local", "b")
        );
        for id in [
            id.clone(),
            SpiffeId::agent("mesh.local", &b),
            SpiffeId::node("x.y", &b),
        ] {
            assert_eq!(id.to_string().parse::<SpiffeId>().unwrap(), id);
        }
        assert!(id == "spiffe://mesh.local/svc/api");
        assert!(id != "spiffe://mesh.local/svc/ap" && id != "spiffe://mesh.local/agent/api");
        let parsed: SpiffeId = "spiffe://mesh.local/svc/api".parse().unwrap();
        assert_eq!(
            (parsed.trust_domain(), parsed.kind(), parsed.name()),
            ("mesh.local", Kind::Service, "api")
        );
        assert_eq!(format!("{id:?}"), "\"spiffe://mesh.local/svc/api\"");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://mesh.local/svc/api\"");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://mesh.local/svc/API\"").is_err());
    }

    #[test]
    fn only_the_exact_form_parses_as_a_spiffe_id() {
        for uri in [
            "spiffe://mesh.local/svc/api\0.evil",
            "spiffe://mesh.local/svc/api?x",
            "spiffe://mesh.local/svc/api#x",
            "spiffe://mesh.local/svc/API",
            "spiffe://mesh.local/svc/a%70i",
            "spiffe://mesh.local/svc/a/b",
            "spiffe://mesh.local/svc/",
            "spiffe://mesh.local/agent//b",
            "spiffe://mesh.local/AGENT/b",
            "spiffe://mesh.local/agents/b",
            "spiffe://mesh.local:443/svc/api",
            "spiffe://MESH.LOCAL/svc/api",
            "spiffe:///svc/api",
            "spiffe://mesh.local",
            "spiffe://mesh.local/svc",
            "SPIFFE://mesh.local/svc/api",
            "https://mesh.local/svc/api",
        ] {
            assert!(uri.parse::<SpiffeId>().is_err(), "{uri:?}");
        }
    }

    #[test]
    fn sni_round_trip() {
        let name = sni("mesh.local", "data-api");
        assert_eq!(name, "data-api.svc.mesh.local");
        assert_eq!(service_from_sni("mesh.local", &name), Some("data-api"));
        assert_eq!(service_from_sni("mesh.local", "x.y.svc.mesh.local"), None);
        assert_eq!(service_from_sni("mesh.local", "api.svc.other"), None);
        assert_eq!(service_from_sni("mesh.local", ".svc.mesh.local"), None);
    }

    #[test]
    fn agent_sni_round_trip() {
        let name = agent_sni("mesh.local", "node-b");
        assert_eq!(name, "node-b.agent.mesh.local");
        assert_eq!(node_from_agent_sni("mesh.local", &name), Some("node-b"));
        assert_eq!(
            node_from_agent_sni("mesh.local", "x.y.agent.mesh.local"),
            None
        );
        assert_eq!(node_from_agent_sni("mesh.local", "b.agent.other"), None);
        assert_eq!(node_from_agent_sni("mesh.local", ".agent.mesh.local"), None);
        // The two kinds of server name never pass for each other.
        assert_eq!(node_from_agent_sni("mesh.local", "b.svc.mesh.local"), None);
        assert_eq!(service_from_sni("mesh.local", "b.agent.mesh.local"), None);
    }
}
