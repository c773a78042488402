//! Agent links (`tls::link`): the agent leaf rules, and real handshakes
//! between nodes' agents over loopback. Refusals are made by presenting a
//! wrong leaf with a plain rustls client or server.

use std::{future::Future, sync::Arc, time::Duration};

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{Mesh, dns, instances, now, signed_by_node_a_with_key, uri};
use crate::{
    identity::{Identities, ca},
    snapshot::Watch,
    tls::{
        ALPN as SERVICE_ALPN, Tls, TlsError,
        link::{ALPN, Link},
        verify::{Peer, PeerRules, ServerVerifier, VerifyError},
    },
};

const TTL: Duration = Duration::from_secs(60);

/// Node `node`'s identities (its agent leaf, its services' leaves) and its
/// TLS side, reading the catalog from `snapshots`.
fn agent(mesh: &Mesh, snapshots: &Watch, node: &str) -> (Arc<Identities>, Tls) {
    let local = mesh.config.services_on(node).map(|s| s.name.clone());
    let ids = Arc::new(Identities::new("mesh.local", mesh.node(node), TTL, local).unwrap());
    let tls = Tls::new(ids.clone(), Arc::new(snapshots.clone())).unwrap();
    (ids, tls)
}

/// Node `node`'s agent links.
fn link(mesh: &Mesh, snapshots: &Watch, node: &str) -> Arc<Link> {
    agent(mesh, snapshots, node).1.link()
}

/// The rules of `snapshots`, as every agent of `mesh` runs them.
fn rules(mesh: &Mesh, snapshots: &Watch) -> Arc<PeerRules> {
    Arc::new(PeerRules::new(
        "mesh.local",
        Arc::new(mesh.node("a")),
        Arc::new(snapshots.clone()),
    ))
}

/// One loopback TCP connection: `server` runs on the accepted socket (in a
/// task), `client` on the dialing one; returns both verdicts.
async fn over_loopback<S, SF, C, CF>(server: S, client: C) -> (SF::Output, CF::Output)
where
    S: FnOnce(TcpStream) -> SF + Send + 'static,
    SF: Future + Send + 'static,
    SF::Output: Send + 'static,
    C: FnOnce(TcpStream) -> CF,
    CF: Future,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        server(tcp).await
    });
    let client = client(TcpStream::connect(addr).await.unwrap()).await;
    (server.await.unwrap(), client)
}

/// `link.accept`'s verdict: the peer node, or why it was refused.
async fn accepts(link: Arc<Link>, tcp: TcpStream) -> Result<String, TlsError> {
    link.accept(tcp).await.map(|(_, peer)| peer.to_string())
}

/// A plain client that presents `leaf`, whatever it names, with `alpn`, and
/// takes a server that passes `rules` as `peer`.
fn presenting(rules: Arc<PeerRules>, peer: Peer, leaf: ca::Leaf, alpn: &[u8]) -> TlsConnector {
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier::new(rules, peer)))
            .with_client_auth_cert(leaf.chain, leaf.key)
            .unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A plain server that presents `leaf` whatever the SNI, with `alpn`, and
/// asks for no client certificate.
fn answering_as(leaf: ca::Leaf, alpn: &[u8]) -> TlsAcceptor {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(leaf.chain, leaf.key)
            .unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// Serves one handshake with `acceptor`; the verdict is the client's.
async fn serve_once(acceptor: TlsAcceptor, tcp: TcpStream) {
    let _ = acceptor.accept(tcp).await;
}

/// `client` presenting its leaf as a handshake to `sni`.
async fn present(client: TlsConnector, sni: &str, tcp: TcpStream) {
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    // The server's verdict is the one looked at.
    let _ = client.connect(name, tcp).await;
}

#[track_caller]
fn assert_refused<T: std::fmt::Debug>(r: Result<T, TlsError>, reason: &str) {
    let e = r.expect_err(reason);
    assert_eq!(e.reason().as_str(), reason, "{e:?}");
}

#[test]
fn an_agent_leaf_is_accepted_as_its_own_node_only_and_never_as_a_service() {
    let mesh = Mesh::new(&instances());
    let (_publisher, snapshots) = mesh.snapshots();
    let rules = rules(&mesh, &snapshots);
    let leaf = mesh.node("b").issue_agent_leaf(TTL).unwrap();
    let as_agent = |usage, expected| {
        rules.verify_agent(&leaf.chain[0], &leaf.chain[1..], now(), usage, expected)
    };
    assert_eq!(
        as_agent(webpki::KeyUsage::client_auth(), None).unwrap(),
        "b"
    );
    assert_eq!(
        as_agent(webpki::KeyUsage::server_auth(), Some("b")).unwrap(),
        "b"
    );
    let r = as_agent(webpki::KeyUsage::server_auth(), Some("c"));
    assert!(
        matches!(&r, Err(VerifyError::Unexpected { got, expected })
            if got == "spiffe://mesh.local/agent/b" && expected == "spiffe://mesh.local/agent/c"),
        "{r:?}"
    );
    // The service rules refuse it, whichever way they read it.
    let r = rules.verify(
        &leaf.chain[0],
        &leaf.chain[1..],
        now(),
        webpki::KeyUsage::client_auth(),
        None,
    );
    assert!(
        matches!(&r, Err(VerifyError::NotService(uris)) if uris == &["spiffe://mesh.local/agent/b"]),
        "{r:?}"
    );
    assert_eq!(r.err().map(|e| e.reason().as_str()), Some("bad_identity"));
    assert!(rules.service_of(&leaf.chain[0]).is_err());
    assert!(rules.recheck(&leaf.chain, now(), None).is_err());
    // And a service leaf is no agent leaf.
    let api = mesh
        .node("b")
        .issue_leaf(&"api".parse().unwrap(), TTL)
        .unwrap();
    let r = rules.verify_agent(
        &api.chain[0],
        &api.chain[1..],
        now(),
        webpki::KeyUsage::client_auth(),
        None,
    );
    assert!(matches!(r, Err(VerifyError::NotAgent(_))), "{r:?}");
}

#[test]
fn an_agent_leaf_names_itself_and_nothing_else() {
    let mesh = Mesh::new(&instances());
    let (_publisher, snapshots) = mesh.snapshots();
    let rules = rules(&mesh, &snapshots);
    let verify = |chain: &[rustls_pki_types::CertificateDer<'static>]| {
        rules.verify_agent(
            &chain[0],
            &chain[1..],
            now(),
            webpki::KeyUsage::client_auth(),
            None,
        )
    };
    let own = [
        uri("spiffe://mesh.local/agent/a"),
        dns("a.agent.mesh.local"),
    ];
    let chain = signed_by_node_a_with_key(&mesh, own.to_vec()).chain;
    assert_eq!(verify(&chain).unwrap(), "a");
    for other in [
        dns("b.agent.mesh.local"),
        dns("a.svc.mesh.local"),
        dns("*.agent.mesh.local"),
    ] {
        let chain = signed_by_node_a_with_key(&mesh, vec![own[0].clone(), other]).chain;
        let r = verify(&chain);
        assert!(matches!(r, Err(VerifyError::ExtraNames { .. })), "{r:?}");
    }
}

#[tokio::test]
async fn agents_link_and_learn_each_others_node() {
    let mesh = Mesh::new(&instances());
    let (_publisher, snapshots) = mesh.snapshots();
    let (b, c) = (link(&mesh, &snapshots, "b"), link(&mesh, &snapshots, "c"));
    let rules = rules(&mesh, &snapshots);
    let (server, client) = over_loopback(
        move |tcp| async move {
            let (mut s, peer) = c.accept(tcp).await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(b"pong").await.unwrap();
            s.shutdown().await.unwrap();
            (peer, buf)
        },
        |tcp| async move {
            let mut s = b.connect(tcp, &"c".parse().unwrap()).await.unwrap();
            let conn = s.get_ref().1;
            assert_eq!(conn.alpn_protocol(), Some(ALPN));
            assert_eq!(
                conn.protocol_version(),
                Some(rustls::ProtocolVersion::TLSv1_3)
            );
            let server_leaf = conn.peer_certificates().unwrap()[0].clone();
            s.write_all(b"ping").await.unwrap();
            let mut answer = Vec::new();
            s.read_to_end(&mut answer).await.unwrap();
            (rules.agent_of(&server_leaf).unwrap(), answer)
        },
    )
    .await;
    assert_eq!(server, ("b".parse().unwrap(), *b"ping"));
    assert_eq!(client, ("c".parse().unwrap(), b"pong".to_vec()));
}

#[tokio::test]
async fn a_link_presents_the_renewed_agent_leaf() {
    let mesh = Mesh::new(&instances());
    let (_publisher, snapshots) = mesh.snapshots();
    let (ib, b) = agent(&mesh, &snapshots, "b");
    let c = link(&mesh, &snapshots, "c");
    let before = ib.agent();
    let after = ib.renew_agent().unwrap();
    assert_ne!(before.serial, after.serial);
    assert_eq!(after.spiffe_id, "spiffe://mesh.local/agent/b");
    let b = b.link();
    let (presented, client) = over_loopback(
        move |tcp| async move {
            let (s, peer) = c.accept(tcp).await.unwrap();
            (peer, s.get_ref().1.peer_certificates().unwrap()[0].clone())
        },
        |tcp| async move { b.connect(tcp, &"c".parse().unwrap()).await.map(drop) },
    )
    .await;
    client.unwrap();
    assert_eq!(presented, ("b".parse().unwrap(), after.key.cert[0].clone()));
}

#[tokio::test]
async fn an_agent_leaf_signed_by_another_nodes_ca_is_refused() {
    let mesh = Mesh::new(&instances());
    let (_publisher, snapshots) = mesh.snapshots();
    // Node b's agent ID, signed by node a's CA.
    let forged = || {
        signed_by_node_a_with_key(
            &mesh,
            vec![
                uri("spiffe://mesh.local/agent/b"),
                dns("b.agent.mesh.local"),
            ],
        )
    };
    let rules = rules(&mesh, &snapshots);
    let chain = forged().chain;
    let r = rules.verify_agent(
        &chain[0],
        &chain[1..],
        now(),
        webpki::KeyUsage::client_auth(),
        None,
    );
    assert!(
        matches!(&r, Err(VerifyError::ForeignAgent { agent, signer }) if agent == "b" && signer == "a"),
        "{r:?}"
    );
    assert_eq!(r.err().map(|e| e.reason().as_str()), Some("wrong_node"));

    // On a link, as the client...
    let c = link(&mesh, &snapshots, "c");
    let client = presenting(rules.clone(), Peer::Agent, forged(), ALPN);
    let (server, ()) = over_loopback(
        move |tcp| accepts(c, tcp),
        |tcp| present(client, "c.agent.mesh.local", tcp),
    )
    .await;
    assert_refused(server, "wrong_node");
    // ...and as the server.
    let a = link(&mesh, &snapshots, "a");
    let server = answering_as(forged(), ALPN);
    let ((), client) = over_loopback(
        move |tcp| serve_once(server, tcp),
        |tcp| async move { a.connect(tcp, &"b".parse().unwrap()).await },
    )
    .await;
    assert_refused(client, "wrong_node");
}

/// A peer that connects to the link port and says nothing is let go at
/// the hello bound, not the whole handshake's.
#[tokio::test]
async fn a_silent_peer_is_let_go_at_the_hello_bound() {
    let mesh = Mesh::new(&instances());
    let (_publisher, snapshots) = mesh.snapshots();
    let c = link(&mesh, &snapshots, "c");
    let started = std::time::Instant::now();
    let (server, ()) = over_loopback(
        move |tcp| accepts(c, tcp),
        |tcp| async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            drop(tcp);
        },
    )
    .await;
    assert!(
        matches!(server, Err(TlsError::HelloTimeout(_))),
        "{server:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_service_leaf_is_refused_on_a_link() {
    let mesh = Mesh::new(&instances());
    let (_publisher, snapshots) = mesh.snapshots();
    let rules = rules(&mesh, &snapshots);
    let api = || {
        mesh.node("b")
            .issue_leaf(&"api".parse().unwrap(), TTL)
            .unwrap()
    };

    let c = link(&mesh, &snapshots, "c");
    let client = presenting(rules.clone(), Peer::Agent, api(), ALPN);
    let (server, ()) = over_loopback(
        move |tcp| accepts(c, tcp),
        |tcp| present(client, "c.agent.mesh.local", tcp),
    )
    .await;
    assert!(
        matches!(&server, Err(TlsError::Handshake { message, .. }) if message.contains("spiffe://mesh.local/svc/api")),
        "{server:?}"
    );
    assert_refused(server, "bad_identity");

    let a = link(&mesh, &snapshots, "a");
    let server = answering_as(api(), ALPN);
    let ((), client) = over_loopback(
        move |tcp| serve_once(server, tcp),
        |tcp| async move { a.connect(tcp, &"b".parse().unwrap()).await },
    )
    .await;
    assert_refused(client, "bad_identity");
}

#[tokio::test]
async fn an_agent_leaf_is_refused_as_a_service() {
    let mesh = Mesh::new(&instances());
    let (_publisher, snapshots) = mesh.snapshots();
    let rules = rules(&mesh, &snapshots);
    let agent_b = || mesh.node("b").issue_agent_leaf(TTL).unwrap();

    // Node c serves api; node b's agent calls it with its agent leaf.
    let c = Arc::new(agent(&mesh, &snapshots, "c").1);
    let client = presenting(rules.clone(), Peer::Service, agent_b(), SERVICE_ALPN);
    let (server, ()) = over_loopback(
        move |tcp| async move {
            c.accept(tcp, &"api".parse().unwrap())
                .await
                .map(|(_, peer)| peer)
        },
        |tcp| present(client, "api.svc.mesh.local", tcp),
    )
    .await;
    assert!(
        matches!(&server, Err(TlsError::Handshake { message, .. }) if message.contains("spiffe://mesh.local/agent/b")),
        "{server:?}"
    );
    assert_refused(server, "bad_identity");

    // Node b's agent answers for api with its agent leaf.
    let (_, a) = agent(&mesh, &snapshots, "a");
    let server = answering_as(agent_b(), SERVICE_ALPN);
    let ((), client) = over_loopback(
        move |tcp| serve_once(server, tcp),
        |tcp| async move {
            a.connect(
                tcp,
                &"web".parse().unwrap(),
                &"api".parse().unwrap(),
                &"b".parse().unwrap(),
                crate::tls::Offer::Default,
            )
            .await
            .map(drop)
        },
    )
    .await;
    assert_refused(client, "bad_identity");
}

#[tokio::test]
async fn a_link_to_node_c_answered_by_node_b_is_refused() {
    let mesh = Mesh::new(&instances());
    let (_publisher, snapshots) = mesh.snapshots();
    // Whatever answers at c's address presents node b's agent leaf.
    let a = link(&mesh, &snapshots, "a");
    let server = answering_as(mesh.node("b").issue_agent_leaf(TTL).unwrap(), ALPN);
    let ((), client) = over_loopback(
        move |tcp| serve_once(server, tcp),
        |tcp| async move { a.connect(tcp, &"c".parse().unwrap()).await },
    )
    .await;
    assert!(
        matches!(&client, Err(TlsError::Handshake { message, .. })
            if message.contains("spiffe://mesh.local/agent/b") && message.contains("spiffe://mesh.local/agent/c")),
        "{client:?}"
    );
    assert_refused(client, "unexpected_identity");
    // Node b's own agent does not answer for c at all.
    let (a, b) = (link(&mesh, &snapshots, "a"), link(&mesh, &snapshots, "b"));
    let (server, client) = over_loopback(
        move |tcp| accepts(b, tcp),
        |tcp| async move { a.connect(tcp, &"c".parse().unwrap()).await },
    )
    .await;
    assert!(
        matches!(&server, Err(TlsError::WrongSni { got: Some(got), expected })
            if got == "c.agent.mesh.local" && expected == "b.agent.mesh.local"),
        "{server:?}"
    );
    assert_refused(server, "wrong_sni");
    assert!(client.is_err());
}

#[tokio::test]
async fn an_agent_of_a_node_outside_the_catalog_is_refused() {
    let mesh = Mesh::new(&instances());
    let (_publisher, snapshots) = mesh.snapshots();
    // Node d has a CA of this mesh's root, but no place in the catalog.
    let (c, d) = (link(&mesh, &snapshots, "c"), link(&mesh, &snapshots, "d"));
    let (server, _) = over_loopback(
        move |tcp| accepts(c, tcp),
        |tcp| {
            let d = d.clone();
            async move { d.connect(tcp, &"c".parse().unwrap()).await.map(drop) }
        },
    )
    .await;
    assert!(
        matches!(&server, Err(TlsError::Handshake { message, .. }) if message.contains("\"d\" is not a node")),
        "{server:?}"
    );
    assert_refused(server, "unknown_node");

    let c = link(&mesh, &snapshots, "c");
    let (_, client) = over_loopback(
        move |tcp| accepts(d, tcp),
        |tcp| async move { c.connect(tcp, &"d".parse().unwrap()).await },
    )
    .await;
    assert_refused(client, "unknown_node");
}

/// `Link::connect` takes a `NodeName`: a name that is not a valid node
/// name never reaches it (no SNI is made of it, no byte sent).
#[test]
fn an_invalid_node_name_cannot_name_a_link() {
    for node in ["C", "c.agent", "", "c d"] {
        assert!(node.parse::<crate::names::NodeName>().is_err(), "{node:?}");
    }
}

#[tokio::test]
async fn a_link_speaks_only_its_own_alpn() {
    let mesh = Mesh::new(&instances());
    let (_publisher, snapshots) = mesh.snapshots();
    let rules = rules(&mesh, &snapshots);
    let c = link(&mesh, &snapshots, "c");
    // Node b's agent leaf, but the data path's protocol.
    let client = presenting(
        rules,
        Peer::Agent,
        mesh.node("b").issue_agent_leaf(TTL).unwrap(),
        SERVICE_ALPN,
    );
    let (server, ()) = over_loopback(
        move |tcp| accepts(c, tcp),
        |tcp| present(client, "c.agent.mesh.local", tcp),
    )
    .await;
    // rustls ends it (no_application_protocol) before any certificate.
    assert!(
        matches!(&server, Err(TlsError::Handshake { message, .. }) if message.contains("protocol")),
        "{server:?}"
    );
}
