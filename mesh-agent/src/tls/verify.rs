//! Our certificate verifiers. rustls does not check URI SANs, so both sides
//! run the same rules: `PeerRules::verify` for a service's leaf (the data
//! path), `PeerRules::verify_agent` for a node agent's leaf (agent links).
//!
//! 1. the chain leads from the leaf through its node CA (the first
//!    certificate after the leaf) and any presented CA above it (a
//!    cross-signed root during a rotation, an organization's intermediate) to
//!    a root this node trusts, every certificate is within its validity
//!    period, and the leaf may be used for this side of the handshake
//!    (webpki); the node CA has exactly one URI SAN,
//!    `spiffe://<trust domain>/node/<N>`, and no other SAN;
//! 2. a service leaf has exactly one URI SAN, `spiffe://<trust domain>/svc/<S>`
//!    (exactly: see `spiffe`), no other SAN but the DNS name
//!    `<S>.svc.<trust domain>`, and S is a meshed service of the config;
//!    an agent leaf has exactly one URI SAN,
//!    `spiffe://<trust domain>/agent/<A>`, no other SAN but the DNS name
//!    `<A>.agent.<trust domain>`, and A is a node of the config. Neither
//!    kind passes for the other;
//! 3. a node can only vouch for its own: N hosts an instance of S, or N is A;
//! 4. where the caller expects a peer (the client knows whom it dialed),
//!    S (or A) is that peer.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
    server::danger::{ClientCertVerified, ClientCertVerifier},
};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use x509_parser::extensions::GeneralName;

use crate::names::{NodeName, ServiceName};
use crate::{
    identity::{other_sans, spiffe, uri_sans},
    telemetry::Refusal,
};

/// Why a peer certificate was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("certificate chain does not verify against the mesh root: {0}")]
    Chain(webpki::Error),
    #[error(
        "chain has {0} certificates after the leaf; expected its node CA and at most {max} more",
        max = MAX_ABOVE_NODE_CA
    )]
    Intermediates(usize),
    #[error("the certificate after the leaf is not the CA that signed it")]
    NodeCaNotFirst,
    #[error("certificate is not X.509: {0}")]
    Parse(String),
    #[error("leaf URI SANs {0:?}: expected exactly one spiffe://<trust domain>/svc/<service>")]
    NotService(Vec<String>),
    #[error("leaf URI SANs {0:?}: expected exactly one spiffe://<trust domain>/agent/<node>")]
    NotAgent(Vec<String>),
    #[error(
        "intermediate URI SANs {0:?}: expected exactly one spiffe://<trust domain>/node/<node>"
    )]
    NotNode(Vec<String>),
    #[error("certificate of {id} also names {names:?}; expected no other name than its own")]
    ExtraNames { id: String, names: Vec<String> },
    #[error("{0:?} is not a meshed service of this mesh")]
    UnknownService(String),
    #[error(
        "leaf for {service:?} is signed by node {signer:?}, which hosts no instance of {service:?} (its nodes: {hosts:?})"
    )]
    WrongNode {
        service: String,
        signer: String,
        hosts: Vec<String>,
    },
    #[error("{0:?} is not a node of this mesh")]
    UnknownNode(String),
    #[error(
        "agent leaf of node {agent:?} is signed by node {signer:?}; a node CA vouches only for its own agent"
    )]
    ForeignAgent { agent: String, signer: String },
    #[error("peer is {got:?}; expected {expected:?}")]
    Unexpected { got: String, expected: String },
    #[error(
        "server name {0:?} is not <service>.svc.<trust domain> (on an agent link: <node>.agent.<trust domain>)"
    )]
    ServerName(String),
    #[error("a certificate of the resumed session has expired")]
    NoLongerValid,
    #[error("node {node:?} is revoked (its CA {node_ca}): `mesh-agent node revoke`")]
    Revoked { node: String, node_ca: String },
}

impl From<VerifyError> for rustls::Error {
    fn from(e: VerifyError) -> Self {
        let cert_error = match e {
            VerifyError::Chain(webpki::Error::CertExpired { .. }) | VerifyError::NoLongerValid => {
                CertificateError::Expired
            }
            VerifyError::Chain(webpki::Error::UnknownIssuer) => CertificateError::UnknownIssuer,
            other => CertificateError::Other(OtherError(Arc::new(other))),
        };
        rustls::Error::InvalidCertificate(cert_error)
    }
}

impl VerifyError {
    /// A short label for the `mesh_handshake_failures_total` metric.
    pub fn reason(&self) -> Refusal {
        match self {
            Self::Chain(webpki::Error::CertExpired { .. }) | Self::NoLongerValid => {
                Refusal::Expired
            }
            Self::Chain(webpki::Error::UnknownIssuer) => Refusal::UnknownIssuer,
            Self::Chain(_) | Self::Intermediates(_) | Self::NodeCaNotFirst => Refusal::BadChain,
            Self::Parse(_) => Refusal::BadCertificate,
            Self::NotService(_)
            | Self::NotAgent(_)
            | Self::NotNode(_)
            | Self::ExtraNames { .. } => Refusal::BadIdentity,
            Self::UnknownService(_) => Refusal::UnknownService,
            Self::UnknownNode(_) => Refusal::UnknownNode,
            // The same failure for either kind of leaf: signed by a node
            // that cannot vouch for it.
            Self::WrongNode { .. } | Self::ForeignAgent { .. } => Refusal::WrongNode,
            Self::Unexpected { .. } => Refusal::UnexpectedIdentity,
            Self::ServerName(_) => Refusal::WrongSni,
            Self::Revoked { .. } => Refusal::Revoked,
        }
    }
}

/// Presented CA certificates above the node CA, at most.
pub const MAX_ABOVE_NODE_CA: usize = 3;

/// The roots a node trusts now, read at every verification: they change
/// during a rotation (`identity::Identities::set_ca`).
pub trait Roots: Send + Sync + std::fmt::Debug {
    fn anchors(&self) -> Arc<[TrustAnchor<'static>]>;
}

impl Roots for crate::identity::NodeCa {
    fn anchors(&self) -> Arc<[TrustAnchor<'static>]> {
        self.anchors()
    }
}

impl Roots for crate::identity::Identities {
    fn anchors(&self) -> Arc<[TrustAnchor<'static>]> {
        self.ca().anchors()
    }
}

/// Roots that never change (tests, fuzzing).
#[derive(Debug)]
pub struct FixedRoots(Arc<[TrustAnchor<'static>]>);

impl FixedRoots {
    pub fn new(roots: &[CertificateDer<'_>]) -> Result<Self, VerifyError> {
        let anchors = roots
            .iter()
            .map(|root| {
                webpki::anchor_from_trusted_cert(root)
                    .map(|a| a.to_owned())
                    .map_err(VerifyError::Chain)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(anchors.into()))
    }
}

impl Roots for FixedRoots {
    fn anchors(&self) -> Arc<[TrustAnchor<'static>]> {
        self.0.clone()
    }
}

/// What a peer certificate must satisfy in this mesh.
#[derive(Debug)]
pub struct PeerRules {
    trust_domain: String,
    roots: Arc<dyn Roots>,
    /// Which nodes host each service, read at every verification.
    hosts: Arc<dyn Hosting>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// Whose leaf a verifier takes from the other end of a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A service's (the data path, `tls::Tls`).
    Service,
    /// A node agent's (agent links, `tls::link::Link`).
    Agent,
}

/// Where the rules read the catalog: the snapshot in force
/// (`snapshot::Watch`), or a fixed map.
pub trait Hosting: Send + Sync + std::fmt::Debug {
    /// The nodes hosting an instance of `service`, if it is a service of
    /// the catalog.
    fn hosts(&self, service: &str) -> Option<BTreeSet<String>>;

    /// Whether `node` is a node of the catalog.
    fn is_node(&self, node: &str) -> bool;

    /// Whether certificates of `node`, or of the node CA with SHA-256
    /// `node_ca`, are refused (`[[revoked]]`).
    fn revoked(&self, node: &str, node_ca: &str) -> bool {
        let _ = (node, node_ca);
        false
    }
}

/// A fixed service -> nodes map (tests, fuzzing, the self-check). It knows
/// only the nodes that host something, so those are its nodes.
impl Hosting for HashMap<String, BTreeSet<String>> {
    fn hosts(&self, service: &str) -> Option<BTreeSet<String>> {
        self.get(service).cloned()
    }

    fn is_node(&self, node: &str) -> bool {
        self.values().any(|nodes| nodes.contains(node))
    }
}

impl PeerRules {
    /// Rules for `trust_domain`, trusting `roots`, with service -> nodes
    /// read from `hosts`.
    pub fn new(trust_domain: &str, roots: Arc<dyn Roots>, hosts: Arc<dyn Hosting>) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            roots,
            hosts,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    /// Checks a presented service leaf and its chain (see the module docs);
    /// returns the service it identifies.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
        expected: Option<&str>,
    ) -> Result<ServiceName, VerifyError> {
        let signer = self.chain(end_entity, intermediates, now, usage)?;
        self.identify_service(end_entity, signer, expected)
    }

    /// Checks a presented agent leaf and its chain (see the module docs);
    /// returns the node whose agent it is. `expected` is the node dialed.
    pub fn verify_agent(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
        expected: Option<&str>,
    ) -> Result<NodeName, VerifyError> {
        let signer = self.chain(end_entity, intermediates, now, usage)?;
        self.identify_agent(end_entity, signer, expected)
    }

    /// `verify` or `verify_agent`, as `peer` says, for its verdict only.
    fn verify_peer(
        &self,
        peer: Peer,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
        expected: Option<&str>,
    ) -> Result<(), VerifyError> {
        match peer {
            Peer::Service => self
                .verify(end_entity, intermediates, now, usage, expected)
                .map(drop),
            Peer::Agent => self
                .verify_agent(end_entity, intermediates, now, usage, expected)
                .map(drop),
        }
    }

    /// Rule 1, for either kind of leaf: returns the node whose CA signed it.
    fn chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<NodeName, VerifyError> {
        if intermediates.is_empty() || intermediates.len() > 1 + MAX_ABOVE_NODE_CA {
            return Err(VerifyError::Intermediates(intermediates.len()));
        }
        let leaf = webpki::EndEntityCert::try_from(end_entity).map_err(VerifyError::Chain)?;
        let roots = self.roots.anchors();
        let path = leaf
            .verify_for_usage(
                self.algorithms.all,
                &roots,
                intermediates,
                now,
                usage,
                None,
                None,
            )
            .map_err(VerifyError::Chain)?;
        // The leaf's issuer on the verified path is its node CA; agents
        // send it first, and only that order is taken, so the certificate a
        // resumed session is re-checked against (`recheck`) is the one
        // verified here.
        let node_ca = path
            .intermediate_certificates()
            .next()
            .ok_or(VerifyError::Intermediates(0))?;
        if node_ca.der().as_ref() != intermediates[0].as_ref() {
            return Err(VerifyError::NodeCaNotFirst);
        }
        self.admitted_signer(&node_ca.der())
    }

    /// The node a node CA names, unless it or the CA is revoked.
    fn admitted_signer(&self, node_ca: &CertificateDer<'_>) -> Result<NodeName, VerifyError> {
        let signer = self.signer(node_ca)?;
        let fingerprint = crate::identity::ca::fingerprint(node_ca);
        if self.hosts.revoked(&signer, &fingerprint) {
            return Err(VerifyError::Revoked {
                node: signer.to_string(),
                node_ca: fingerprint,
            });
        }
        Ok(signer)
    }

    /// Re-checks the chain of a resumed session, verified in full when the
    /// session began: the leaf and its node CA must still be valid at `now`,
    /// and rules 2-4 must hold under the config in force. Only the
    /// signatures are not checked again; they cannot have changed. (Only
    /// service sessions resume: agent links make no tickets.)
    pub fn recheck(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
        expected: Option<&str>,
    ) -> Result<ServiceName, VerifyError> {
        // `verify` accepted [leaf, node CA, ...] when the session began.
        let [end_entity, node_ca_der, ..] = chain else {
            return Err(VerifyError::Intermediates(chain.len().saturating_sub(1)));
        };
        let leaf = parse_x509(end_entity)?;
        let node_ca = parse_x509(node_ca_der)?;
        if node_ca.subject().as_raw() != leaf.issuer().as_raw() {
            return Err(VerifyError::Intermediates(0));
        }
        let at = i64::try_from(now.as_secs())
            .ok()
            .and_then(|t| x509_parser::time::ASN1Time::from_timestamp(t).ok())
            .ok_or(VerifyError::NoLongerValid)?;
        if !leaf.validity().is_valid_at(at) || !node_ca.validity().is_valid_at(at) {
            return Err(VerifyError::NoLongerValid);
        }
        let signer = self.admitted_signer(node_ca_der)?;
        self.identify_service(end_entity, signer, expected)
    }

    /// The node named by a (verified) node CA: the rest of rule 1.
    fn signer(&self, node_ca: &CertificateDer<'_>) -> Result<NodeName, VerifyError> {
        self.named(node_ca, spiffe::Kind::Node, VerifyError::NotNode)
    }

    /// Rules 2-4 for a service leaf signed by node `signer`'s CA.
    fn identify_service(
        &self,
        end_entity: &CertificateDer<'_>,
        signer: NodeName,
        expected: Option<&str>,
    ) -> Result<ServiceName, VerifyError> {
        let service = self.service_of(end_entity)?;
        let hosts = self
            .hosts
            .hosts(&service)
            .ok_or_else(|| VerifyError::UnknownService(service.to_string()))?;
        if !hosts.contains(signer.as_str()) {
            return Err(VerifyError::WrongNode {
                service: service.to_string(),
                signer: signer.to_string(),
                hosts: hosts.into_iter().collect(),
            });
        }
        if let Some(expected) = expected
            && service != expected
        {
            return Err(VerifyError::Unexpected {
                got: spiffe::service_id(&self.trust_domain, &service),
                expected: spiffe::service_id(&self.trust_domain, expected),
            });
        }
        Ok(service)
    }

    /// Rules 2-4 for an agent leaf signed by node `signer`'s CA.
    fn identify_agent(
        &self,
        end_entity: &CertificateDer<'_>,
        signer: NodeName,
        expected: Option<&str>,
    ) -> Result<NodeName, VerifyError> {
        let agent = self.agent_of(end_entity)?;
        if agent != signer {
            return Err(VerifyError::ForeignAgent {
                agent: agent.to_string(),
                signer: signer.to_string(),
            });
        }
        if !self.hosts.is_node(&agent) {
            return Err(VerifyError::UnknownNode(agent.to_string()));
        }
        if let Some(expected) = expected
            && agent != expected
        {
            return Err(VerifyError::Unexpected {
                got: spiffe::agent_id(&self.trust_domain, &agent),
                expected: spiffe::agent_id(&self.trust_domain, expected),
            });
        }
        Ok(agent)
    }

    /// The service a (verified) leaf names.
    pub fn service_of(&self, cert: &CertificateDer<'_>) -> Result<ServiceName, VerifyError> {
        self.named(cert, spiffe::Kind::Service, VerifyError::NotService)
    }

    /// The node whose agent a (verified) leaf names.
    pub fn agent_of(&self, cert: &CertificateDer<'_>) -> Result<NodeName, VerifyError> {
        self.named(cert, spiffe::Kind::Agent, VerifyError::NotAgent)
    }

    /// The name in the single URI SAN of `cert`, which must be a mesh ID of
    /// `kind` in our trust domain. The only other SAN allowed is a leaf's
    /// own DNS name, `<service>.svc.<trust domain>` or
    /// `<node>.agent.<trust domain>`: a certificate that also names anything
    /// else (a wildcard, another service, an IP) could pass for it with
    /// clients that read those names.
    fn named<N: std::str::FromStr>(
        &self,
        cert: &CertificateDer<'_>,
        kind: spiffe::Kind,
        wrong: fn(Vec<String>) -> VerifyError,
    ) -> Result<N, VerifyError> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert)
            .map_err(|e| VerifyError::Parse(e.to_string()))?;
        let uris = uri_sans(&parsed);
        let [uri] = uris.as_slice() else {
            return Err(wrong(uris.iter().map(|u| (*u).to_owned()).collect()));
        };
        let (name, typed) = match spiffe::parse(&self.trust_domain, uri) {
            Some((k, name)) if k == kind => match name.parse::<N>() {
                Ok(typed) => (name, typed),
                Err(_) => return Err(wrong(vec![(*uri).to_owned()])),
            },
            _ => return Err(wrong(vec![(*uri).to_owned()])),
        };
        let own_dns = match kind {
            spiffe::Kind::Service => Some(spiffe::sni(&self.trust_domain, name)),
            spiffe::Kind::Agent => Some(spiffe::agent_sni(&self.trust_domain, name)),
            spiffe::Kind::Node => None,
        };
        let extra: Vec<String> = other_sans(&parsed)
            .into_iter()
            .filter(|n| !matches!(n, GeneralName::DNSName(dns) if Some(*dns) == own_dns.as_deref()))
            .map(ToString::to_string)
            .collect();
        if !extra.is_empty() {
            return Err(VerifyError::ExtraNames {
                id: (*uri).to_owned(),
                names: extra,
            });
        }
        Ok(typed)
    }

    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

fn parse_x509(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>, VerifyError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| VerifyError::Parse(e.to_string()))?;
    Ok(cert)
}

/// Issues a throwaway service leaf and agent leaf with `ca` and verifies
/// them as a peer would. Run at start: it catches a node key that does not
/// match its certificate and a node CA that does not chain to this mesh's
/// root, which peers would otherwise reject with errors that seem to blame
/// them.
pub fn self_check(
    ca: &crate::identity::NodeCa,
    trust_domain: &str,
    node: &NodeName,
) -> Result<(), String> {
    const PROBE: &str = "self-check";
    let probe = PROBE
        .parse()
        .map_err(|e: crate::names::NameError| e.to_string())?;
    let leaf = ca
        .issue_leaf(&probe, std::time::Duration::from_secs(60))
        .map_err(|e| e.to_string())?;
    let hosts: HashMap<String, BTreeSet<String>> =
        [(PROBE.to_owned(), [node.to_string()].into())].into();
    let roots = FixedRoots(ca.anchors());
    let rules = PeerRules::new(trust_domain, Arc::new(roots), Arc::new(hosts));
    rules
        .verify(
            &leaf.chain[0],
            &leaf.chain[1..],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            Some(PROBE),
        )
        .map_err(|e| e.to_string())?;
    let agent = ca
        .issue_agent_leaf(std::time::Duration::from_secs(60))
        .map_err(|e| e.to_string())?;
    rules
        .verify_agent(
            &agent.chain[0],
            &agent.chain[1..],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            Some(node),
        )
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The client's check of the server: the source agent's of the
/// destination service, or an agent's of the agent it links to.
#[derive(Debug)]
pub struct ServerVerifier {
    rules: Arc<PeerRules>,
    peer: Peer,
}

impl ServerVerifier {
    /// Takes from the server the leaf of the `peer` named by the SNI.
    pub fn new(rules: Arc<PeerRules>, peer: Peer) -> Self {
        Self { rules, peer }
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = server_name.to_str();
        let td = &self.rules.trust_domain;
        let expected = match self.peer {
            Peer::Service => spiffe::service_from_sni(td, &name),
            Peer::Agent => spiffe::node_from_agent_sni(td, &name),
        }
        .ok_or_else(|| VerifyError::ServerName(name.to_string()))?;
        self.rules.verify_peer(
            self.peer,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            Some(expected),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Never called: only TLS 1.3 is enabled.
        Err(rustls::Error::General("TLS 1.2 is not supported".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.rules.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.rules.algorithms.supported_schemes()
    }
}

/// The server's check of the client: the destination agent's of the source
/// service, or an agent's of the agent linking to it. Client certificates
/// are mandatory.
#[derive(Debug)]
pub struct ClientVerifier {
    rules: Arc<PeerRules>,
    peer: Peer,
}

impl ClientVerifier {
    /// Takes from clients the leaf of any `peer` of the catalog.
    pub fn new(rules: Arc<PeerRules>, peer: Peer) -> Self {
        Self { rules, peer }
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.rules.verify_peer(
            self.peer,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            None,
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Never called: only TLS 1.3 is enabled.
        Err(rustls::Error::General("TLS 1.2 is not supported".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.rules.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.rules.algorithms.supported_schemes()
    }
}
