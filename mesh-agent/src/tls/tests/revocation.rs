//! `[[revoked]]` in the rules: a revoked node's certificates are refused
//! until it is readmitted, and a revoked node CA for ever.

use std::{sync::Arc, time::Duration};

use super::{Mesh, client, now};
use crate::{
    config::Config,
    testing::{self, mesh_text},
    tls::verify::{PeerRules, VerifyError},
};

/// The rules of node b's agent under the fixture mesh plus `extra`.
fn rules(mesh: &Mesh, extra: &str) -> PeerRules {
    let text = format!("{}{extra}", mesh_text(81));
    let config = Config::parse(&text, &mesh.scratch.file()).unwrap();
    let (_, watch) = testing::snapshots(config);
    PeerRules::new("mesh.local", Arc::new(mesh.node("b")), Arc::new(watch))
}

fn revoked(node_ca: &str, readmitted: bool) -> String {
    format!("\n[[revoked]]\nnode = \"a\"\nnode_ca = \"{node_ca}\"\nreadmitted = {readmitted}\n")
}

#[test]
fn a_revoked_node_is_refused_until_readmitted_and_its_old_ca_for_ever() {
    let mesh = Mesh::new(&mesh_text(81));
    let web = "web".parse().unwrap();
    let ttl = Duration::from_secs(60);
    let old = mesh.node("a");
    let old_ca = old.report().node_ca;
    let old_leaf = old.issue_leaf(&web, ttl).unwrap();
    assert_eq!(client(&rules(&mesh, ""), &old_leaf.chain).unwrap(), "web");

    let banned = rules(&mesh, &revoked(&old_ca, false));
    let refused = client(&banned, &old_leaf.chain).unwrap_err();
    assert!(
        matches!(&refused, VerifyError::Revoked { node, node_ca } if node == "a" && *node_ca == old_ca),
        "{refused:?}"
    );
    assert_eq!(refused.reason().as_str(), "revoked");
    // A resumed session of it is refused too.
    assert!(matches!(
        banned.recheck(&old_leaf.chain, now(), None),
        Err(VerifyError::Revoked { .. })
    ));

    // Node a gets a new CA: refused while banned, taken once readmitted;
    // the old CA stays refused.
    let dir = mesh.scratch.dir().join("ca/nodes");
    std::fs::rename(dir.join("a.crt"), dir.join("a.crt.old")).unwrap();
    std::fs::rename(dir.join("a.key"), dir.join("a.key.old")).unwrap();
    let new = mesh.node("a");
    assert_ne!(new.report().node_ca, old_ca);
    let new_leaf = new.issue_leaf(&web, ttl).unwrap();
    assert!(matches!(
        client(&banned, &new_leaf.chain),
        Err(VerifyError::Revoked { .. })
    ));
    let readmitted = rules(&mesh, &revoked(&old_ca, true));
    assert_eq!(client(&readmitted, &new_leaf.chain).unwrap(), "web");
    assert!(matches!(
        client(&readmitted, &old_leaf.chain),
        Err(VerifyError::Revoked { .. })
    ));
}
