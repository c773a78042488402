//! Which instance of a destination service a connection goes to.
//!
//! Interim rule, until load balancing (issue 11, item 3): the catalog
//! address `<node address>:<port>` means exactly the instance on that node;
//! the VIP means the caller's own node's instance if there is one (bytes
//! never leave the node), else the first instance in `nodes` order.

use std::net::SocketAddr;

use super::ProxyError;
use crate::config::{Config, Node, Service};

/// The node whose instance of `dst` serves a connection that dialed
/// `dialed` from the node called `here`. Fails with
/// [`ProxyError::NoInstance`] if `dialed` is a node address but that node
/// hosts no instance of `dst` (a record older than a reload), or if no
/// hosting node is declared.
pub fn instance<'c>(
    config: &'c Config,
    dst: &Service,
    dialed: SocketAddr,
    here: &str,
) -> Result<&'c Node, ProxyError> {
    let no_instance = || ProxyError::NoInstance {
        service: dst.name.clone(),
        dialed,
    };
    let ip = dialed.ip().to_canonical();
    if ip != dst.vip.to_canonical()
        && let Some(node) = config.nodes.iter().find(|n| n.address.to_canonical() == ip)
    {
        return if dst.hosted_on(&node.name) {
            Ok(node)
        } else {
            Err(no_instance())
        };
    }
    let name = if dst.hosted_on(here) {
        Some(here)
    } else {
        dst.nodes.first().map(String::as_str)
    };
    name.and_then(|n| config.node(n)).ok_or_else(no_instance)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const MESH: &str = r#"
[[node]]
name = "a"
address = "10.0.0.1"

[[node]]
name = "b"
address = "10.0.0.2"

[[node]]
name = "c"
address = "10.0.0.3"

[[service]]
name = "api"
nodes = ["b", "c"]
port = 5001
vip = "240.0.0.2"

[[service]]
name = "web"
node = "a"
port = 80
"#;

    fn route(dialed: &str, here: &str) -> Result<String, ProxyError> {
        let config = Config::parse(MESH, Path::new("/m.toml")).unwrap();
        let api = config.service("api").unwrap();
        instance(&config, api, dialed.parse().unwrap(), here).map(|n| n.name.clone())
    }

    #[test]
    fn a_catalog_address_names_exactly_that_instance() {
        for here in ["a", "b", "c"] {
            assert_eq!(route("10.0.0.2:5001", here).unwrap(), "b");
            assert_eq!(route("10.0.0.3:5001", here).unwrap(), "c");
            // IPv4-mapped, as the kernel may hand it over.
            assert_eq!(route("[::ffff:10.0.0.3]:5001", here).unwrap(), "c");
        }
    }

    #[test]
    fn the_vip_prefers_the_callers_node_else_the_first_instance() {
        assert_eq!(route("240.0.0.2:5001", "a").unwrap(), "b");
        assert_eq!(route("240.0.0.2:5001", "b").unwrap(), "b");
        assert_eq!(route("240.0.0.2:5001", "c").unwrap(), "c");
    }

    #[test]
    fn a_node_without_an_instance_is_refused() {
        let err = route("10.0.0.1:5001", "b").unwrap_err();
        assert!(matches!(err, ProxyError::NoInstance { .. }), "{err}");
        assert!(err.is_refusal());
    }
}
