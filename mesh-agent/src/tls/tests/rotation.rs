//! A root rotation step by step (`identity::rotation`): at every step an
//! agent that has the files and one that has not yet verify each other;
//! after retire-old, the old root's chains are refused.

use std::time::Duration;

use super::{Mesh, client};
use crate::{identity::rotation, testing::mesh_text, tls::verify::VerifyError};

#[test]
fn every_step_of_a_rotation_verifies_both_ways() {
    let mesh = Mesh::new(&mesh_text(81));
    let web = "web".parse().unwrap();
    let ttl = Duration::from_secs(60);
    let (before_a, before_b) = (mesh.node("a"), mesh.node("b"));
    let before_leaf = before_a.issue_leaf(&web, ttl).unwrap();
    let before_issuer = before_a.report().issuer_key;
    let not_updated = mesh.rules_trusting(before_b);

    let rotated = rotation::rotate(&mesh.config).unwrap();
    assert_eq!(rotated.nodes, ["a", "b"]);
    assert!(rotation::in_progress(&mesh.config));
    let (new_root, new_key) = rotation::root_key_fingerprint(&mesh.config).unwrap();
    let mid_a = mesh.node("a");
    assert_eq!(mid_a.roots().len(), 2);
    assert!(mid_a.report().roots.contains(&new_root));
    assert_eq!(mid_a.report().issuer_key, new_key);
    assert_ne!(before_issuer, new_key);
    let mid_leaf = mid_a.issue_leaf(&web, ttl).unwrap();
    // [leaf, node CA under the new root, the new root cross-signed by the old]
    assert_eq!(mid_leaf.chain.len(), 3);
    // An agent that has not reloaded yet takes the new chain (through the
    // cross-signed root); one that has takes both.
    assert_eq!(client(&not_updated, &mid_leaf.chain).unwrap(), "web");
    let updated = mesh.rules_trusting(mesh.node("b"));
    assert_eq!(client(&updated, &before_leaf.chain).unwrap(), "web");
    assert_eq!(client(&updated, &mid_leaf.chain).unwrap(), "web");
    // One rotation at a time.
    let again = rotation::rotate(&mesh.config).unwrap_err().to_string();
    assert!(again.contains("a rotation is in progress"), "{again}");

    rotation::retire_old(&mesh.config).unwrap();
    assert!(!rotation::in_progress(&mesh.config));
    let after_a = mesh.node("a");
    assert_eq!(after_a.report().roots, [new_root]);
    let after_leaf = after_a.issue_leaf(&web, ttl).unwrap();
    assert_eq!(after_leaf.chain.len(), 2);
    let retired = mesh.rules_trusting(mesh.node("b"));
    // Agents still in the middle and those done take each other's chains.
    assert_eq!(client(&retired, &mid_leaf.chain).unwrap(), "web");
    assert_eq!(client(&updated, &after_leaf.chain).unwrap(), "web");
    assert_eq!(client(&retired, &after_leaf.chain).unwrap(), "web");
    // A chain to the old root only is refused.
    assert!(matches!(
        client(&retired, &before_leaf.chain),
        Err(VerifyError::Chain(webpki::Error::UnknownIssuer))
    ));
    let twice = rotation::retire_old(&mesh.config).unwrap_err().to_string();
    assert!(twice.contains("no rotation in progress"), "{twice}");
}

#[test]
fn a_chain_out_of_order_or_too_long_is_refused() {
    let mesh = Mesh::new(&mesh_text(81));
    let web = "web".parse().unwrap();
    let rules = mesh.rules_trusting(mesh.node("b"));
    // Node a's CA exists before the rotation, so it is re-issued.
    mesh.node("a");
    rotation::rotate(&mesh.config).unwrap();
    let leaf = mesh
        .node("a")
        .issue_leaf(&web, Duration::from_secs(60))
        .unwrap();
    let (node_ca, cross) = (leaf.chain[1].clone(), leaf.chain[2].clone());
    let swapped = vec![leaf.chain[0].clone(), cross.clone(), node_ca.clone()];
    assert!(matches!(
        client(&rules, &swapped),
        Err(VerifyError::NodeCaNotFirst)
    ));
    let long = vec![
        leaf.chain[0].clone(),
        node_ca,
        cross.clone(),
        cross.clone(),
        cross.clone(),
        cross,
    ];
    assert!(matches!(
        client(&rules, &long),
        Err(VerifyError::Intermediates(5))
    ));
}
