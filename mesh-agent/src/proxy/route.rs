//! Which instance a connection to a catalog address goes to: the catalog
//! address `<node address>:<port>` means exactly the instance on that node.
//! A connection to the VIP is balanced instead (`balance`).

use std::net::SocketAddr;

use super::ProxyError;
use crate::config::{Config, Node, Service};

/// The node whose instance of `dst` serves a connection that dialed the
/// catalog address `dialed`. Fails with [`ProxyError::NoInstance`] if
/// `dialed` is no node's address, or that node hosts no instance of `dst`
/// (a record older than a reload).
pub fn instance<'c>(
    config: &'c Config,
    dst: &Service,
    dialed: SocketAddr,
) -> Result<&'c Node, ProxyError> {
    let no_instance = || ProxyError::NoInstance {
        service: dst.name.clone(),
        dialed,
    };
    let ip = dialed.ip().to_canonical();
    config
        .nodes
        .iter()
        .find(|n| n.address.to_canonical() == ip && dst.hosted_on(&n.name))
        .ok_or_else(no_instance)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, NODES, node, service};

    /// `api` on b and c (10.0.0.2, 10.0.0.3), none on a (10.0.0.1).
    fn mesh() -> String {
        format!(
            "{NODES}{}{}vip = \"240.0.0.2\"\n{}",
            node("c", "10.0.0.3"),
            service("api", &["b", "c"], 5001),
            service("web", &["a"], 80)
        )
    }

    fn route(dialed: &str) -> Result<String, ProxyError> {
        let config = testing::config(&mesh());
        let api = config.service("api").unwrap();
        instance(&config, api, dialed.parse().unwrap()).map(|n| n.name.to_string())
    }

    #[test]
    fn a_catalog_address_names_exactly_that_instance() {
        assert_eq!(route("10.0.0.2:5001").unwrap(), "b");
        assert_eq!(route("10.0.0.3:5001").unwrap(), "c");
        // IPv4-mapped, as the kernel may hand it over.
        assert_eq!(route("[::ffff:10.0.0.3]:5001").unwrap(), "c");
    }

    #[test]
    fn a_node_without_an_instance_is_refused() {
        let err = route("10.0.0.1:5001").unwrap_err();
        assert!(matches!(err, ProxyError::NoInstance { .. }), "{err}");
        assert!(err.is_refusal());
    }
}
