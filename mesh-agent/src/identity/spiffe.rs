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

use crate::config::is_name;

/// What a mesh SPIFFE ID names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Service,
    /// The agent of a node, as a peer on an agent-to-agent link.
    Agent,
    Node,
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
