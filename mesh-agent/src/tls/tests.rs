//! The verifier rules, case by case, with a real CA made in a temp dir, and
//! a real handshake between two nodes' configs over loopback.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use rcgen::{CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::{
    Offer, Tls, TlsError,
    verify::{PeerRules, VerifyError},
};
use crate::{
    config::Config,
    identity::{Identities, NodeCa, ca},
    snapshot::{Snapshot, Watch},
    testing::{NODES, Scratch, mesh_text, node, service},
};

/// A mesh config with its root CA, in a fresh temp dir (removed on drop).
pub(crate) struct Mesh {
    scratch: Scratch,
    pub(crate) config: Config,
}

impl Mesh {
    pub(crate) fn new(text: &str) -> Self {
        let scratch = Scratch::new();
        let config = Config::parse(text, &scratch.file()).unwrap();
        ca::init(&config, ca::ROOT_VALIDITY).unwrap();
        Self { scratch, config }
    }

    fn node(&self, node: &str) -> NodeCa {
        NodeCa::load_or_issue(&self.config, &node.parse().unwrap()).unwrap()
    }

    /// The leaves of the services on `node` (60 s), issued by its CA.
    pub(crate) fn identities(&self, node: &str) -> Arc<Identities> {
        let local = self.config.services_on(node).map(|s| s.name.clone());
        Arc::new(
            Identities::new(
                "mesh.local",
                self.node(node),
                Duration::from_secs(60),
                local,
            )
            .unwrap(),
        )
    }

    fn rules(&self) -> PeerRules {
        self.rules_trusting(self.node("a"))
    }

    /// The rules of an agent whose CA (and so roots) is `ca`.
    pub(crate) fn rules_trusting(&self, ca: NodeCa) -> PeerRules {
        let hosts: std::collections::HashMap<String, std::collections::BTreeSet<String>> = self
            .config
            .services
            .iter()
            .map(|s| {
                let nodes = s.nodes.iter().map(ToString::to_string).collect();
                (s.name.to_string(), nodes)
            })
            .collect();
        PeerRules::new("mesh.local", Arc::new(ca), Arc::new(hosts))
    }

    /// The snapshot channel of this mesh's config.
    pub(crate) fn snapshots(&self) -> (crate::snapshot::Publisher, Watch) {
        crate::testing::snapshots(self.config.clone())
    }

    fn root_issuer(&self) -> Issuer<'static, KeyPair> {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let key = KeyPair::from_pem(&read(&self.scratch.dir().join("ca/root.key"))).unwrap();
        Issuer::from_ca_cert_pem(&read(&self.scratch.dir().join("ca/root.crt")), key).unwrap()
    }
}

fn now() -> UnixTime {
    UnixTime::now()
}

/// A mesh, its rules, and a leaf for `web` issued by node a.
fn web_leaf(ttl: Duration) -> (Mesh, PeerRules, crate::identity::ca::Leaf) {
    let mesh = Mesh::new(&mesh_text(81));
    let rules = mesh.rules();
    let leaf = mesh
        .node("a")
        .issue_leaf(&"web".parse().unwrap(), ttl)
        .unwrap();
    (mesh, rules, leaf)
}

fn in_a_minute() -> UnixTime {
    UnixTime::since_unix_epoch(
        (SystemTime::now() + Duration::from_secs(60))
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap(),
    )
}

fn client(rules: &PeerRules, chain: &[CertificateDer<'static>]) -> Result<String, VerifyError> {
    rules
        .verify(
            &chain[0],
            &chain[1..],
            now(),
            webpki::KeyUsage::client_auth(),
            None,
        )
        .map(|service| service.to_string())
}

#[test]
fn a_good_leaf_is_accepted_for_its_own_name_only() {
    let (_mesh, rules, leaf) = web_leaf(Duration::from_secs(60));
    assert_eq!(client(&rules, &leaf.chain).unwrap(), "web");
    let server = |expected| {
        rules.verify(
            &leaf.chain[0],
            &leaf.chain[1..],
            now(),
            webpki::KeyUsage::server_auth(),
            Some(expected),
        )
    };
    assert_eq!(server("web").unwrap(), "web");
    assert!(matches!(server("api"), Err(VerifyError::Unexpected { .. })));
}

#[test]
fn an_expired_leaf_is_refused() {
    let (_mesh, rules, leaf) = web_leaf(Duration::from_secs(5));
    let later = in_a_minute();
    let r = rules.verify(
        &leaf.chain[0],
        &leaf.chain[1..],
        later,
        webpki::KeyUsage::client_auth(),
        None,
    );
    assert!(
        matches!(
            r,
            Err(VerifyError::Chain(webpki::Error::CertExpired { .. }))
        ),
        "{r:?}"
    );
}

#[test]
fn a_leaf_from_another_trust_domain_is_refused() {
    let mesh = Mesh::new(&mesh_text(81));
    let other = Mesh::new(&mesh_text(81).replace("mesh.local", "other.td"));
    let leaf = other
        .node("a")
        .issue_leaf(&"web".parse().unwrap(), Duration::from_secs(60))
        .unwrap();
    let r = client(&mesh.rules(), &leaf.chain);
    assert!(matches!(r, Err(VerifyError::Chain(_))), "{r:?}");
}

#[test]
fn a_leaf_signed_by_a_node_that_does_not_host_the_service_is_refused() {
    let mesh = Mesh::new(&mesh_text(81));
    // Node b's CA signs a leaf for web, which runs on node a.
    let leaf = mesh
        .node("b")
        .issue_leaf(&"web".parse().unwrap(), Duration::from_secs(60))
        .unwrap();
    let r = client(&mesh.rules(), &leaf.chain);
    assert!(
        matches!(&r, Err(VerifyError::WrongNode { service, signer, hosts })
            if service == "web" && signer == "b" && hosts == &["a"]),
        "{r:?}"
    );
    assert_eq!(r.err().map(|e| e.reason().as_str()), Some("wrong_node"));
}

/// Three nodes; api has an instance on b and on c, none on a.
pub(crate) fn instances() -> String {
    format!(
        "[mesh]\ntrust_domain = \"mesh.local\"\n\n{NODES}{}{}{}",
        node("c", "10.0.0.3"),
        service("web", &["a"], 80),
        service("api", &["b", "c"], 81)
    )
}

#[test]
fn a_leaf_is_accepted_from_every_node_hosting_an_instance_and_no_other() {
    let mesh = Mesh::new(&instances());
    let rules = mesh.rules();
    let ttl = Duration::from_secs(60);
    for node in ["b", "c"] {
        let leaf = mesh
            .node(node)
            .issue_leaf(&"api".parse().unwrap(), ttl)
            .unwrap();
        assert_eq!(
            client(&rules, &leaf.chain).unwrap(),
            "api",
            "signed by {node}"
        );
        let server = rules.verify(
            &leaf.chain[0],
            &leaf.chain[1..],
            now(),
            webpki::KeyUsage::server_auth(),
            Some("api"),
        );
        assert_eq!(server.unwrap(), "api", "signed by {node}");
    }
    // Node a hosts no api: it cannot vouch for it.
    let leaf = mesh
        .node("a")
        .issue_leaf(&"api".parse().unwrap(), ttl)
        .unwrap();
    let r = client(&rules, &leaf.chain);
    assert!(
        matches!(&r, Err(VerifyError::WrongNode { service, signer, hosts })
            if service == "api" && signer == "a" && hosts == &["b", "c"]),
        "{r:?}"
    );
}

#[test]
fn a_leaf_for_an_unknown_service_is_refused() {
    let mesh = Mesh::new(&mesh_text(81));
    let leaf = mesh
        .node("a")
        .issue_leaf(&"ghost".parse().unwrap(), Duration::from_secs(60))
        .unwrap();
    let r = client(&mesh.rules(), &leaf.chain);
    assert!(
        matches!(&r, Err(VerifyError::UnknownService(s)) if s == "ghost"),
        "{r:?}"
    );
}

/// A leaf with the right URI SAN, made outside the node CA.
fn leaf_params(id: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![uri(id)];
    p.is_ca = IsCa::ExplicitNoCa;
    p
}

#[test]
fn a_self_signed_leaf_with_the_right_uri_is_refused() {
    let mesh = Mesh::new(&mesh_text(81));
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = leaf_params("spiffe://mesh.local/svc/web")
        .self_signed(&key)
        .unwrap();
    let r = client(&mesh.rules(), &[cert.der().clone()]);
    assert!(matches!(r, Err(VerifyError::Intermediates(0))), "{r:?}");
}

#[test]
fn a_leaf_signed_directly_by_the_root_is_refused() {
    let mesh = Mesh::new(&mesh_text(81));
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = leaf_params("spiffe://mesh.local/svc/web")
        .signed_by(&key, &mesh.root_issuer())
        .unwrap();
    let r = client(&mesh.rules(), &[cert.der().clone()]);
    assert!(matches!(r, Err(VerifyError::Intermediates(0))), "{r:?}");
}

/// A leaf with `sans` for a fresh key, properly signed by node a's CA (a
/// hosts `web`), as an agent presents it: `[leaf, node a's CA]`. Only what
/// `sans` says can be wrong with it.
fn signed_by_node_a(mesh: &Mesh, sans: Vec<SanType>) -> Vec<CertificateDer<'static>> {
    signed_by_node_a_with_key(mesh, sans).chain
}

/// [`signed_by_node_a`], with the leaf's key, to present it in a handshake.
fn signed_by_node_a_with_key(mesh: &Mesh, sans: Vec<SanType>) -> ca::Leaf {
    let node_ca = mesh
        .node("a")
        .issue_leaf(&"web".parse().unwrap(), Duration::from_secs(60))
        .unwrap()
        .chain[1]
        .clone();
    // Node a's key as an rcgen issuer, read from its files.
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
    let key = KeyPair::from_pem(&read(mesh.scratch.dir().join("ca/nodes/a.key"))).unwrap();
    let issuer =
        Issuer::from_ca_cert_pem(&read(mesh.scratch.dir().join("ca/nodes/a.crt")), key).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.signed_by(&leaf_key, &issuer).unwrap();
    ca::Leaf {
        chain: vec![cert.der().clone(), node_ca],
        key: rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        serial: String::new(),
        not_after: SystemTime::now() + Duration::from_secs(60),
    }
}

fn uri(text: &str) -> SanType {
    SanType::URI(text.try_into().unwrap())
}

fn dns(text: &str) -> SanType {
    SanType::DnsName(text.try_into().unwrap())
}

/// Checks that a leaf signed by node a with `sans` is refused as a bad
/// identity (not merely as an unknown service).
#[track_caller]
fn refused_as_bad_identity(sans: Vec<SanType>) -> VerifyError {
    let mesh = Mesh::new(&mesh_text(81));
    let what = format!("{sans:?}");
    let r = client(&mesh.rules(), &signed_by_node_a(&mesh, sans));
    let e = r.expect_err(&what);
    assert_eq!(e.reason().as_str(), "bad_identity", "{what}: {e:?}");
    e
}

/// A node-signed leaf whose only SAN is the URI `id` is refused as naming
/// no service, with `id` in the error.
fn assert_uri_refused(id: &str) {
    let e = refused_as_bad_identity(vec![uri(id)]);
    assert!(
        matches!(&e, VerifyError::NotService(uris) if uris == &[id]),
        "{e:?}"
    );
}

#[test]
fn a_node_signed_leaf_with_only_its_uri_san_is_accepted() {
    // What the tests below change one SAN of.
    let mesh = Mesh::new(&mesh_text(81));
    let chain = signed_by_node_a(&mesh, vec![uri("spiffe://mesh.local/svc/web")]);
    assert_eq!(client(&mesh.rules(), &chain).unwrap(), "web");
    let chain = signed_by_node_a(
        &mesh,
        vec![
            uri("spiffe://mesh.local/svc/web"),
            dns("web.svc.mesh.local"),
        ],
    );
    assert_eq!(client(&mesh.rules(), &chain).unwrap(), "web");
}

#[test]
fn a_leaf_with_two_uri_sans_is_refused() {
    let e = refused_as_bad_identity(vec![
        uri("spiffe://mesh.local/svc/web"),
        uri("spiffe://mesh.local/svc/api"),
    ]);
    assert!(
        matches!(&e, VerifyError::NotService(uris) if uris.len() == 2),
        "{e:?}"
    );
}

#[test]
fn a_leaf_with_a_nul_byte_in_its_uri_san_is_refused() {
    assert_uri_refused("spiffe://mesh.local/svc/web\0.evil");
}

#[test]
fn a_uri_san_with_a_path_suffix_query_or_fragment_is_refused() {
    for id in [
        "spiffe://mesh.local/svc/web/x",
        "spiffe://mesh.local/svc/web/",
        "spiffe://mesh.local/svc/web?x",
        "spiffe://mesh.local/svc/web#x",
        "spiffe://mesh.local/svc/web/../api",
    ] {
        assert_uri_refused(id);
    }
}

#[test]
fn a_uri_san_in_another_case_is_refused() {
    // SPIFFE IDs: the trust domain is lowercase and path segments are
    // case-sensitive; the mesh accepts only the exact ID it issues.
    for id in [
        "SPIFFE://mesh.local/svc/web",
        "spiffe://MESH.LOCAL/svc/web",
        "spiffe://mesh.local/SVC/web",
        "spiffe://mesh.local/svc/WEB",
        "spiffe://mesh.local/svc/w%65b",
    ] {
        assert_uri_refused(id);
    }
}

#[test]
fn a_leaf_with_only_dns_sans_is_refused() {
    let e = refused_as_bad_identity(vec![dns("web.svc.mesh.local")]);
    assert!(
        matches!(&e, VerifyError::NotService(uris) if uris.is_empty()),
        "{e:?}"
    );
}

#[test]
fn a_leaf_with_a_wildcard_dns_san_and_no_uri_san_is_refused() {
    let e = refused_as_bad_identity(vec![dns("*.svc.mesh.local")]);
    assert!(
        matches!(&e, VerifyError::NotService(uris) if uris.is_empty()),
        "{e:?}"
    );
}

#[test]
fn a_leaf_with_any_other_name_beside_its_uri_san_is_refused() {
    // The mesh ignores DNS SANs, but anything else that trusts the mesh
    // root may not: a leaf names its own service and nothing more.
    for other in [
        dns("*.svc.mesh.local"),
        dns("api.svc.mesh.local"),
        dns("example.com"),
        SanType::IpAddress("10.0.0.1".parse().unwrap()),
        SanType::Rfc822Name("web@mesh.local".try_into().unwrap()),
    ] {
        let e = refused_as_bad_identity(vec![uri("spiffe://mesh.local/svc/web"), other]);
        assert!(matches!(&e, VerifyError::ExtraNames { .. }), "{e:?}");
    }
}

/// Both nodes' TLS sides, sharing one CA, reading who hosts what from
/// `snapshots`.
fn tls_pair(mesh: &Mesh, snapshots: &Watch) -> (Tls, Tls) {
    let tls = |node: &str| Tls::new(mesh.identities(node), Arc::new(snapshots.clone())).unwrap();
    (tls("a"), tls("b"))
}

#[tokio::test]
async fn agents_handshake_with_each_others_identity() {
    let mesh = Mesh::new(&mesh_text(81));
    let (_publisher, snapshots) = mesh.snapshots();
    let (a, b) = tls_pair(&mesh, &snapshots);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut s, peer) = b.accept(tcp, &"api".parse().unwrap()).await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"world").await.unwrap();
        s.shutdown().await.unwrap();
        (peer, buf)
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut s = a
        .connect(
            tcp,
            &"web".parse().unwrap(),
            &"api".parse().unwrap(),
            &"b".parse().unwrap(),
            Offer::Default,
        )
        .await
        .unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let (peer, got) = server.await.unwrap();
    assert_eq!(
        (peer.as_str(), &got, answer.as_slice()),
        ("web", b"hello", &b"world"[..])
    );
}

#[tokio::test]
async fn a_hello_for_another_service_is_refused_before_any_certificate() {
    let mesh = Mesh::new(&mesh_text(81));
    let (_publisher, snapshots) = mesh.snapshots();
    let (a, b) = tls_pair(&mesh, &snapshots);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // This port serves `web`, but the client asks for `api`.
        b.accept(tcp, &"web".parse().unwrap())
            .await
            .map(|(_, peer)| peer)
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert!(
        a.connect(
            tcp,
            &"web".parse().unwrap(),
            &"api".parse().unwrap(),
            &"b".parse().unwrap(),
            Offer::Default
        )
        .await
        .is_err()
    );
    let r = server.await.unwrap();
    assert!(matches!(r, Err(TlsError::WrongSni { .. })), "{r:?}");
    assert_eq!(r.err().map(|e| e.reason().as_str()), Some("wrong_sni"));
}

#[test]
fn the_self_check_catches_a_key_that_does_not_match_its_node_certificate() {
    let mesh = Mesh::new(&mesh_text(81));
    let a = mesh.node("a");
    assert_eq!(
        super::verify::self_check(&a, "mesh.local", &"a".parse().unwrap()),
        Ok(())
    );
    let _ = mesh.node("b");
    // Node a's certificate with node b's key.
    std::fs::copy(
        mesh.scratch.dir().join("ca/nodes/b.key"),
        mesh.scratch.dir().join("ca/nodes/a.key"),
    )
    .unwrap();
    let wrong = mesh.node("a");
    let r = super::verify::self_check(&wrong, "mesh.local", &"a".parse().unwrap());
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn a_node_key_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let mesh = Mesh::new(&mesh_text(81));
    let _ = mesh.node("a");
    let key = mesh.scratch.dir().join("ca/nodes/a.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = NodeCa::load_or_issue(&mesh.config, &"a".parse().unwrap());
    assert!(
        matches!(
            &r,
            Err(crate::identity::IdentityError::KeyMode { mode: 0o644, .. })
        ),
        "{:?}",
        r.err()
    );
}

/// One connection a -> b as `web` to `api`; returns the server side's
/// verdict (peer service, or error) and how its handshake went.
async fn connect_once(
    a: &Tls,
    b: Arc<Tls>,
) -> (Result<String, TlsError>, Option<rustls::HandshakeKind>) {
    let (server, kind, _) = connect_once_both(a, b).await;
    (server, kind)
}

/// [`connect_once`], with the client side's verdict too.
async fn connect_once_both(
    a: &Tls,
    b: Arc<Tls>,
) -> (
    Result<String, TlsError>,
    Option<rustls::HandshakeKind>,
    Result<(), TlsError>,
) {
    connect_once_to(a, b, "b").await
}

/// [`connect_once_both`] to the agent of `node`, served by `b`.
async fn connect_once_to(
    a: &Tls,
    b: Arc<Tls>,
    node: &str,
) -> (
    Result<String, TlsError>,
    Option<rustls::HandshakeKind>,
    Result<(), TlsError>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match b.accept(tcp, &"api".parse().unwrap()).await {
            Ok((mut s, peer)) => {
                let kind = s.get_ref().1.handshake_kind();
                // The client may have refused the server after its handshake.
                let mut buf = [0u8; 5];
                if s.read_exact(&mut buf).await.is_ok() {
                    s.write_all(b"world").await.unwrap();
                    s.shutdown().await.unwrap();
                }
                (Ok(peer.to_string()), kind)
            }
            Err(e) => (Err(e), None),
        }
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = match a
        .connect(
            tcp,
            &"web".parse().unwrap(),
            &"api".parse().unwrap(),
            &node.parse().unwrap(),
            Offer::Default,
        )
        .await
    {
        Ok(mut s) => {
            // Reading to the end also takes in the ticket for the next time.
            let _ = s.write_all(b"hello").await;
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer).await;
            Ok(())
        }
        Err(e) => Err(e),
    };
    let (server, kind) = server.await.unwrap();
    (server, kind, client)
}

#[tokio::test]
async fn a_second_connection_resumes_with_the_same_identity() {
    let mesh = Mesh::new(&mesh_text(81));
    let (_publisher, snapshots) = mesh.snapshots();
    let (a, b) = tls_pair(&mesh, &snapshots);
    let b = Arc::new(b);
    let (peer, kind) = connect_once(&a, b.clone()).await;
    assert_eq!(
        (peer.unwrap(), kind),
        ("web".into(), Some(rustls::HandshakeKind::Full))
    );
    let (peer, kind) = connect_once(&a, b.clone()).await;
    assert_eq!(
        (peer.unwrap(), kind),
        ("web".into(), Some(rustls::HandshakeKind::Resumed))
    );
}

#[tokio::test]
async fn connections_alternating_between_instances_each_resume() {
    // api on b and c: one server name, two agents, each of which only
    // takes its own tickets.
    let mesh = Mesh::new(&instances());
    let (_publisher, snapshots) = mesh.snapshots();
    let tls = |node: &str| {
        Arc::new(Tls::new(mesh.identities(node), Arc::new(snapshots.clone())).unwrap())
    };
    let (a, b, c) = (tls("a"), tls("b"), tls("c"));
    let mut kinds = Vec::new();
    for (server, node) in [(&b, "b"), (&c, "c"), (&b, "b"), (&c, "c"), (&b, "b")] {
        let (peer, kind, client) = connect_once_to(&a, server.clone(), node).await;
        assert_eq!((peer.unwrap(), client.is_ok()), ("web".to_owned(), true));
        kinds.push(kind.unwrap());
    }
    use rustls::HandshakeKind::{Full, Resumed};
    assert_eq!(kinds, [Full, Full, Resumed, Resumed, Resumed]);
}

#[tokio::test]
async fn a_resumed_session_is_held_to_the_rules_in_force() {
    let mesh = Mesh::new(&mesh_text(81));
    let (publisher, snapshots) = mesh.snapshots();
    let (a, b) = tls_pair(&mesh, &snapshots);
    let b = Arc::new(b);
    let (peer, _) = connect_once(&a, b.clone()).await;
    assert_eq!(peer.unwrap(), "web");
    // The catalog now says `web` runs on node b: node a can no longer
    // vouch for it, not even through a session made before the change.
    let moved = Config::parse(
        &mesh_text(81).replace(
            "name = \"web\"\nnode = \"a\"",
            "name = \"web\"\nnode = \"b\"",
        ),
        &mesh.scratch.file(),
    )
    .unwrap();
    publisher.send_replace(Arc::new(Snapshot::new(moved)));
    let (peer, _) = connect_once(&a, b.clone()).await;
    assert!(
        matches!(peer, Err(TlsError::Rules(VerifyError::WrongNode { .. }))),
        "{peer:?}"
    );
}

/// `mesh_text(81)` as `mesh.toml` of `mesh`, changed by `edit`.
fn changed(mesh: &Mesh, edit: impl FnOnce(&str) -> String) -> Config {
    Config::parse(&edit(&mesh_text(81)), &mesh.scratch.file()).unwrap()
}

#[tokio::test]
async fn a_resumed_session_ends_when_the_service_leaves_the_catalog() {
    // Envoy CVE-2022-21654: a session outliving the rules it was made under.
    let mesh = Mesh::new(&mesh_text(81));
    let (publisher, snapshots) = mesh.snapshots();
    let (a, b) = tls_pair(&mesh, &snapshots);
    let b = Arc::new(b);
    let (peer, _) = connect_once(&a, b.clone()).await;
    assert_eq!(peer.unwrap(), "web");
    // `web` is gone from the catalog: a full handshake would refuse it
    // (UnknownService), and so must the resumed one. The error is the
    // re-check's, after rustls resumed, not the full handshake's.
    publisher.send_replace(Arc::new(Snapshot::new(changed(&mesh, |text| {
        text.replace("[[service]]\nname = \"web\"\nnode = \"a\"\nport = 80\n", "")
    }))));
    let (peer, _) = connect_once(&a, b.clone()).await;
    assert!(
        matches!(&peer, Err(TlsError::Rules(VerifyError::UnknownService(s))) if s == "web"),
        "{peer:?}"
    );
}

#[tokio::test]
async fn a_resumed_session_to_a_service_that_moved_is_refused_by_the_client() {
    let mesh = Mesh::new(&mesh_text(81));
    let (publisher, snapshots) = mesh.snapshots();
    let (a, b) = tls_pair(&mesh, &snapshots);
    let b = Arc::new(b);
    let (peer, _, client) = connect_once_both(&a, b.clone()).await;
    assert_eq!((peer.unwrap(), client.is_ok()), ("web".to_owned(), true));
    // The catalog now puts `api` on node a: node b's leaf for it, in the
    // session the client resumes, no longer passes.
    publisher.send_replace(Arc::new(Snapshot::new(changed(&mesh, |text| {
        text.replace(
            "name = \"api\"\nnode = \"b\"",
            "name = \"api\"\nnode = \"a\"",
        )
    }))));
    let (_, kind, client) = connect_once_both(&a, b.clone()).await;
    assert_eq!(kind, Some(rustls::HandshakeKind::Resumed));
    assert!(
        matches!(client, Err(TlsError::Rules(VerifyError::WrongNode { .. }))),
        "{client:?}"
    );
}

#[test]
fn recheck_refuses_a_chain_that_has_expired_since() {
    let (_mesh, rules, leaf) = web_leaf(Duration::from_secs(5));
    assert_eq!(rules.recheck(&leaf.chain, now(), None).unwrap(), "web");
    let later = in_a_minute();
    let r = rules.recheck(&leaf.chain, later, None);
    assert!(matches!(r, Err(VerifyError::NoLongerValid)), "{r:?}");
    let r = rules.recheck(&leaf.chain, now(), Some("api"));
    assert!(matches!(r, Err(VerifyError::Unexpected { .. })), "{r:?}");
}

#[tokio::test]
async fn a_renewed_leaf_on_either_side_ends_resumption() {
    let mesh = Mesh::new(&mesh_text(81));
    let (ia, ib) = (mesh.identities("a"), mesh.identities("b"));
    let (_publisher, snapshots) = mesh.snapshots();
    let a = Tls::new(ia.clone(), Arc::new(snapshots.clone())).unwrap();
    let b = Arc::new(Tls::new(ib.clone(), Arc::new(snapshots)).unwrap());
    let kind = |r: (Result<String, TlsError>, Option<rustls::HandshakeKind>)| {
        assert_eq!(r.0.unwrap(), "web");
        r.1.unwrap()
    };
    use rustls::HandshakeKind::{Full, Resumed};
    assert_eq!(kind(connect_once(&a, b.clone()).await), Full);
    assert_eq!(kind(connect_once(&a, b.clone()).await), Resumed);
    // The caller's leaf renews: its tickets carried the old one.
    ia.renew(&"web".parse().unwrap()).unwrap();
    assert_eq!(kind(connect_once(&a, b.clone()).await), Full);
    assert_eq!(kind(connect_once(&a, b.clone()).await), Resumed);
    // The destination's leaf renews: sessions it holds end too.
    ib.renew(&"api".parse().unwrap()).unwrap();
    assert_eq!(kind(connect_once(&a, b.clone()).await), Full);
}

#[test]
fn only_the_node_ca_verified_in_full_is_rechecked() {
    let (_mesh, rules, leaf) = web_leaf(Duration::from_secs(600));
    // A self-signed CA with node a's subject that names node b.
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mesh node a");
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://mesh.local/node/b".try_into().unwrap(),
    )];
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let fake = params
        .self_signed(&KeyPair::generate().unwrap())
        .unwrap()
        .der()
        .clone();
    // A chain whose first certificate after the leaf is not the one the
    // path goes through is refused outright...
    let r = rules.verify(
        &leaf.chain[0],
        &[fake.clone(), leaf.chain[1].clone()],
        now(),
        webpki::KeyUsage::client_auth(),
        None,
    );
    assert!(matches!(r, Err(VerifyError::NodeCaNotFirst)), "{r:?}");
    // ...so recheck, which reads the node CA there, never reads the fake:
    // were it stored, it would name node b, which does not host web.
    let stored = [leaf.chain[0].clone(), fake, leaf.chain[1].clone()];
    let r = rules.recheck(&stored, now(), None);
    assert!(matches!(r, Err(VerifyError::WrongNode { .. })), "{r:?}");
    assert_eq!(rules.recheck(&leaf.chain, now(), None).unwrap(), "web");
}

mod link;
mod revocation;
mod rotation;
