//! mTLS between agents: TLS 1.3 only, SNI `<destination>.svc.<trust
//! domain>`, ALPN `mesh/2` (HTTP/2, one stream per app connection:
//! `proxy::tunnel`) or `mesh/1` (the TLS connection is the app
//! connection). A client offers `[mesh/2, mesh/1]` and the server picks the
//! first of its own list the client offered, so agents that predate
//! `mesh/2` (or run `--no-multiplex`) still meet on `mesh/1`. A client
//! moving a busy `mesh/2` stream to a connection of its own offers
//! `mesh/move` alone (`proxy::tunnel`). The destination agent presents the
//! destination service's leaf (picked by SNI); the source agent presents the
//! source service's leaf. Both check the other with `verify::PeerRules`.
//! Resumption: the destination agent issues one single-use, stateful ticket
//! per connection (`session`); a resumed connection skips the certificate
//! signatures (checked in the full handshake that made the session) but
//! re-checks the peer's chain against the rules in force (`recheck`).
//!
//! Agent-to-agent links (`link`, reached through `Tls::link`) share the
//! provider and the rules, with agent leaves on both sides.

pub mod link;
pub mod session;
pub mod transport;
pub mod verify;

use std::{collections::HashMap, sync::Arc, time::Duration};

use rustls::{
    ClientConfig, HandshakeKind, ServerConfig,
    client::{ResolvesClientCert, Resumption},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::{LazyConfigAcceptor, TlsConnector, client, server};

use crate::names::{NodeName, ServiceName};
use crate::{
    identity::{Current, Identities, spiffe},
    telemetry::Refusal,
};
pub use transport::Transport;
use verify::{ClientVerifier, Hosting, Peer, PeerRules, ServerVerifier, VerifyError};

/// ALPN of the single form: one app connection per TLS connection.
pub const ALPN: &[u8] = b"mesh/1";
/// ALPN of the multiplexed form: HTTP/2 CONNECT streams (`proxy::tunnel`).
pub const ALPN_MUX: &[u8] = b"mesh/2";
/// ALPN of a connection that takes over one `mesh/2` stream.
pub const ALPN_MOVE: &[u8] = b"mesh/move";

/// The application protocol a handshake settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `mesh/1`: the TLS connection carries one app connection.
    Single,
    /// `mesh/2`: HTTP/2, one CONNECT stream per app connection.
    Multiplexed,
    /// `mesh/move`: carries on a `mesh/2` stream named by the token the
    /// client sends first.
    Move,
}

impl Protocol {
    /// Its ALPN id.
    pub fn alpn(self) -> &'static str {
        match self {
            Self::Single => "mesh/1",
            Self::Multiplexed => "mesh/2",
            Self::Move => "mesh/move",
        }
    }
}
/// The content type of a TLS handshake record, the first byte a TLS client sends.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// Bound on a whole handshake, either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the ClientHello, from accept() to its last byte: an agent sends
/// it at once, so a peer that stalls or drips is gone after this.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("bad TLS setup: {0}")]
    Setup(#[from] rustls::Error),
    #[error(transparent)]
    Rules(#[from] VerifyError),
    #[error("no local service {0:?} to speak for")]
    NoLocalService(String),
    #[error("TLS handshake failed: {message}")]
    Handshake {
        /// Why, for metrics (see `TlsError::reason`).
        reason: Refusal,
        message: String,
    },
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(Duration),
    #[error("no complete ClientHello within {0:?}")]
    HelloTimeout(Duration),
    #[error("client asked for server name {got:?}; this port serves {expected:?}")]
    WrongSni {
        got: Option<String>,
        expected: String,
    },
    #[error("peer did not negotiate ALPN {expected} (got {got:?})")]
    Alpn {
        expected: String,
        got: Option<String>,
    },
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    #[error("peer did not start a TLS handshake (a plaintext client?)")]
    NotTls,
    #[error("the secure random source failed")]
    Random,
}

/// The TLS side of an agent.
pub struct Tls {
    trust_domain: String,
    rules: Arc<PeerRules>,
    identities: Arc<Identities>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    server: Arc<ServerConfig>,
    /// The server's resumable sessions, and `identities.renewals()` when
    /// they were last cleared: a renewed local leaf ends them all.
    sessions: Arc<session::Sessions>,
    sessions_from: std::sync::atomic::AtomicU64,
    /// Per (local service, destination node): the client config that
    /// presents the service's leaf (and holds its tickets for that node),
    /// made on first use and again after each renewal of that leaf, so no
    /// ticket outlives the leaf it was made with.
    clients: std::sync::RwLock<HashMap<(ServiceName, NodeName), ClientFor>>,
    /// This node's agent links.
    link: Arc<link::Link>,
    /// What this agent offers as a client, first preferred.
    protocols: Vec<Vec<u8>>,
    /// What it accepts as a server, first preferred.
    accepted: Vec<Vec<u8>>,
}

/// A client config and the leaf that was current when it was made, for
/// each [`Offer`]; the forms share one ticket store.
type ClientFor = ([Arc<ClientConfig>; 3], Arc<Current>);

/// What a client connection ([`Tls::connect`]) offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// `[mesh/2, mesh/1]` (`mesh/1` alone with `--no-multiplex`).
    Default = 0,
    /// `mesh/1` alone: a connection for one app connection even to an
    /// agent that multiplexes (the pool's overflow).
    Single = 1,
    /// `mesh/move` alone: takes over a `mesh/2` stream (the caller sends
    /// its token first).
    Move = 2,
}

impl Tls {
    /// TLS configs for the local services in `identities`; peers are
    /// checked against who hosts what in `hosts`, read at each handshake.
    /// Speaks `mesh/2` and `mesh/1`.
    pub fn new(identities: Arc<Identities>, hosts: Arc<dyn Hosting>) -> Result<Self, TlsError> {
        Self::with_multiplex(identities, hosts, true)
    }

    /// As [`Tls::new`]; with `multiplex` false, offers and accepts only
    /// `mesh/1`, as agents before `mesh/2` did (`--no-multiplex`).
    pub fn with_multiplex(
        identities: Arc<Identities>,
        hosts: Arc<dyn Hosting>,
        multiplex: bool,
    ) -> Result<Self, TlsError> {
        let (protocols, accepted) = if multiplex {
            let offered = vec![ALPN_MUX.to_vec(), ALPN.to_vec()];
            let accepted = [offered.clone(), vec![ALPN_MOVE.to_vec()]].concat();
            (offered, accepted)
        } else {
            (vec![ALPN.to_vec()], vec![ALPN.to_vec()])
        };
        let td = identities.trust_domain().to_owned();
        let rules = Arc::new(PeerRules::new(&td, identities.clone(), hosts));
        let provider = Arc::new(provider());

        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(ClientVerifier::new(rules.clone(), Peer::Service)))
            .with_cert_resolver(Arc::new(BySni {
                identities: identities.clone(),
            }));
        server.alpn_protocols = accepted.clone();
        let sessions = Arc::new(session::Sessions::new(session::TTL, session::CAPACITY));
        server.session_storage = sessions.clone();
        // One per connection: each resumption takes one and gets a new one.
        server.send_tls13_tickets = 1;
        let link = link::Link::new(identities.clone(), rules.clone(), provider.clone())?;

        Ok(Self {
            trust_domain: td,
            rules,
            provider,
            server: Arc::new(server),
            sessions,
            sessions_from: identities.renewals().into(),
            identities,
            clients: Default::default(),
            link: Arc::new(link),
            protocols,
            accepted,
        })
    }

    /// 128 random bits from the TLS provider's secure random source (a
    /// `mesh/move` token).
    pub fn random_token(&self) -> Result<u128, TlsError> {
        let mut bytes = [0u8; 16];
        self.provider
            .secure_random
            .fill(&mut bytes)
            .map_err(|_| TlsError::Random)?;
        Ok(u128::from_be_bytes(bytes))
    }

    /// The trust domain of this mesh.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The current leaf of local service `service`: a connection made
    /// with another retires (see `proxy::pool`).
    pub fn leaf(&self, service: &ServiceName) -> Option<Arc<Current>> {
        self.identities.current(service)
    }

    /// Both ends of this node's agent-to-agent links.
    pub fn link(&self) -> Arc<link::Link> {
        self.link.clone()
    }

    /// The client config presenting `service`'s current leaf to the agent
    /// of `node`. One per (service, node): a ticket is good only at the
    /// agent that issued it, and rustls keys tickets by server name, which
    /// is the same for every instance of a destination service; one store
    /// per node keeps each instance's tickets apart.
    fn client(
        &self,
        service: &ServiceName,
        node: &NodeName,
        offer: Offer,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let form = offer as usize;
        let leaf = self
            .identities
            .current(service)
            .ok_or_else(|| TlsError::NoLocalService(service.to_string()))?;
        if let Some((c, made_with)) = self
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(service.clone(), node.clone()))
            && Arc::ptr_eq(made_with, &leaf)
        {
            return Ok(c[form].clone());
        }
        let mut client = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier::new(
                self.rules.clone(),
                Peer::Service,
            )))
            .with_client_cert_resolver(Arc::new(AsService {
                identities: self.identities.clone(),
                service: service.clone(),
            }));
        client.alpn_protocols = self.protocols.clone();
        // Tickets per destination service on this node (rustls keeps up to
        // 8 per name).
        client.resumption = Resumption::in_memory_sessions(256);
        let mut single_only = client.clone();
        single_only.alpn_protocols = vec![ALPN.to_vec()];
        let mut move_only = client.clone();
        move_only.alpn_protocols = vec![ALPN_MOVE.to_vec()];
        let forms = [client, single_only, move_only].map(Arc::new);
        let chosen = forms[form].clone();
        self.clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((service.clone(), node.clone()), (forms, leaf));
        Ok(chosen)
    }

    /// Source side: TLS as local service `src` to the agent of `node`,
    /// serving `dst`, offering `offer`. [`protocol`] tells what the agents
    /// settled on.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        src: &ServiceName,
        dst: &ServiceName,
        node: &NodeName,
        offer: Offer,
    ) -> Result<client::TlsStream<Transport>, TlsError> {
        let config = self.client(src, node, offer)?;
        let name = ServerName::try_from(spiffe::sni(&self.trust_domain, dst))
            .map_err(|_| VerifyError::ServerName(dst.to_string()))?;
        let connect = TlsConnector::from(config.clone()).connect(name, Transport::new(tcp));
        let stream = bounded(async { connect.await.map_err(handshake_error) }).await?;
        let conn = stream.get_ref().1;
        check_alpn(conn.alpn_protocol(), &config.alpn_protocols)?;
        if resumed(conn) {
            let chain = conn
                .peer_certificates()
                .ok_or(TlsError::NoPeerCertificate)?;
            self.rules.recheck(chain, UnixTime::now(), Some(dst))?;
        }
        Ok(stream)
    }

    /// Destination side: accepts TLS for local service `dst` and returns the
    /// verified calling service. [`protocol`] tells what the agents settled
    /// on.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        dst: &ServiceName,
    ) -> Result<(server::TlsStream<Transport>, ServiceName), TlsError> {
        // A local leaf was renewed since: end the sessions made with the old.
        let renewals = self.identities.renewals();
        if self
            .sessions_from
            .swap(renewals, std::sync::atomic::Ordering::SeqCst)
            != renewals
        {
            self.sessions.clear();
        }
        let handshake = async {
            let hello = async {
                // A plaintext client gets closed without a word: a TLS alert
                // would only confuse it ("HTTP/0.9" in curl).
                let mut first = [0u8; 1];
                let n = tcp.peek(&mut first).await.map_err(handshake_error)?;
                if !starts_tls(&first[..n]) {
                    return Err(TlsError::NotTls);
                }
                LazyConfigAcceptor::new(rustls::server::Acceptor::default(), Transport::new(tcp))
                    .await
                    .map_err(handshake_error)
            };
            let start = tokio::time::timeout(HELLO_TIMEOUT, hello)
                .await
                .map_err(|_| TlsError::HelloTimeout(HELLO_TIMEOUT))??;
            check_hello(&self.trust_domain, dst, &start.client_hello())?;
            start
                .into_stream(self.server.clone())
                .await
                .map_err(handshake_error)
        };
        let stream = bounded(handshake).await?;
        let conn = stream.get_ref().1;
        check_alpn(conn.alpn_protocol(), &self.accepted)?;
        let leaf = peer_leaf(conn)?;
        let peer = if resumed(conn) {
            let chain = conn
                .peer_certificates()
                .ok_or(TlsError::NoPeerCertificate)?;
            self.rules.recheck(chain, UnixTime::now(), None)?
        } else {
            self.rules.service_of(leaf)?
        };
        Ok((stream, peer))
    }
}

/// The protocol a finished handshake of [`Tls::connect`] or
/// [`Tls::accept`] settled on (both checked it is one they speak).
pub fn protocol(conn: &rustls::CommonState) -> Protocol {
    match conn.alpn_protocol() {
        Some(ALPN_MUX) => Protocol::Multiplexed,
        Some(ALPN_MOVE) => Protocol::Move,
        _ => Protocol::Single,
    }
}

/// `handshake`, failed with [`TlsError::Timeout`] if it takes over
/// [`HANDSHAKE_TIMEOUT`].
async fn bounded<T>(
    handshake: impl std::future::Future<Output = Result<T, TlsError>>,
) -> Result<T, TlsError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| TlsError::Timeout(HANDSHAKE_TIMEOUT))?
}

/// The peer's leaf, verified by our verifier during the handshake; its
/// name is read back with the verifier's own parser.
fn peer_leaf(
    conn: &rustls::CommonState,
) -> Result<&rustls_pki_types::CertificateDer<'static>, TlsError> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .ok_or(TlsError::NoPeerCertificate)
}

/// Whether the first bytes a client sent can start a TLS handshake: the
/// inbound side closes anything else without a word. False for no bytes.
pub fn starts_tls(first: &[u8]) -> bool {
    first.first() == Some(&TLS_HANDSHAKE_RECORD)
}

/// Checks the ClientHello of a connection that arrived on the port of local
/// service `dst`: it must ask for `<dst>.svc.<trust_domain>` (rustls gives
/// the SNI lowercased). Runs before any certificate is sent.
pub fn check_hello(trust_domain: &str, dst: &str, hello: &ClientHello<'_>) -> Result<(), TlsError> {
    let expected = spiffe::sni(trust_domain, dst);
    if hello.server_name() == Some(expected.as_str()) {
        return Ok(());
    }
    Err(TlsError::WrongSni {
        got: hello.server_name().map(str::to_owned),
        expected,
    })
}

/// Whether a finished handshake resumed a session (for metrics and logs).
pub fn resumed(conn: &rustls::CommonState) -> bool {
    conn.handshake_kind() == Some(HandshakeKind::Resumed)
}

/// The node at the other end of a connection, for cutting it when that
/// node is revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode {
    pub node: NodeName,
    /// SHA-256 of its node CA, when the connection's chain was seen here.
    pub node_ca: Option<String>,
}

impl PeerNode {
    /// The node whose CA signed the peer's leaf on a verified connection
    /// (`[leaf, node CA, ...]`, as `verify` took it).
    pub fn of(conn: &rustls::CommonState, trust_domain: &str) -> Option<Self> {
        let node_ca = conn.peer_certificates()?.get(1)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(node_ca).ok()?;
        let uris = crate::identity::uri_sans(&parsed);
        let [uri] = uris.as_slice() else { return None };
        match spiffe::parse(trust_domain, uri)? {
            (spiffe::Kind::Node, name) => Some(Self {
                node: name.parse().ok()?,
                node_ca: Some(crate::identity::ca::fingerprint(node_ca)),
            }),
            _ => None,
        }
    }

    /// Whether `config` shuts it out.
    pub fn revoked(&self, config: &crate::config::Config) -> bool {
        config.is_banned(&self.node)
            || self
                .node_ca
                .as_deref()
                .is_some_and(|ca| config.is_revoked_ca(ca))
    }
}

/// ring's suites, AES-128-GCM first: TLS 1.3's mandatory suite, and with
/// 10 AES rounds instead of 14 the cheapest per byte on CPUs with AES
/// instructions (`cargo xtask bench`). Both agents use this order, so it is
/// what they agree on.
fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    }
}

/// A handshake error in plain words: our verifier's reason when it refused
/// the peer, else what rustls or the socket said.
fn handshake_error(e: std::io::Error) -> TlsError {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let ours = match rustls_error {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
            other.0.downcast_ref::<VerifyError>()
        }
        _ => None,
    };
    let (reason, message) = match (ours, rustls_error) {
        (Some(v), _) => (v.reason(), format!("invalid peer certificate: {v}")),
        (None, Some(rustls::Error::NoCertificatesPresented)) => {
            (Refusal::NoClientCertificate, e.to_string())
        }
        (None, Some(rustls::Error::InvalidCertificate(c))) => (
            match c {
                rustls::CertificateError::Expired => Refusal::Expired,
                rustls::CertificateError::UnknownIssuer => Refusal::UnknownIssuer,
                _ => Refusal::BadCertificate,
            },
            e.to_string(),
        ),
        _ => (Refusal::Other, e.to_string()),
    };
    TlsError::Handshake { reason, message }
}

impl TlsError {
    /// A short label for the `mesh_handshake_failures_total` metric.
    pub fn reason(&self) -> Refusal {
        match self {
            Self::Handshake { reason, .. } => *reason,
            Self::Rules(v) => v.reason(),
            Self::NotTls => Refusal::NotTls,
            Self::WrongSni { .. } => Refusal::WrongSni,
            Self::Alpn { .. } => Refusal::Alpn,
            Self::Timeout(_) => Refusal::Timeout,
            Self::HelloTimeout(_) => Refusal::HelloTimeout,
            Self::NoPeerCertificate => Refusal::NoClientCertificate,
            Self::Setup(_) | Self::NoLocalService(_) | Self::Random => Refusal::Other,
        }
    }
}

/// Checks that the handshake negotiated one of `expected`.
fn check_alpn<P: AsRef<[u8]>>(alpn: Option<&[u8]>, expected: &[P]) -> Result<(), TlsError> {
    if alpn.is_some_and(|a| expected.iter().any(|p| p.as_ref() == a)) {
        return Ok(());
    }
    Err(TlsError::Alpn {
        expected: expected
            .iter()
            .map(|p| String::from_utf8_lossy(p.as_ref()).into_owned())
            .collect::<Vec<_>>()
            .join(" or "),
        got: alpn.map(|a| String::from_utf8_lossy(a).into_owned()),
    })
}

/// Server side: the leaf of the service named by SNI.
#[derive(Debug)]
struct BySni {
    identities: Arc<Identities>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let service =
            spiffe::service_from_sni(self.identities.trust_domain(), hello.server_name()?)?;
        Some(self.identities.current(service)?.key.clone())
    }
}

/// Client side: always the leaf of one local service.
#[derive(Debug)]
struct AsService {
    identities: Arc<Identities>,
    service: ServiceName,
}

impl ResolvesClientCert for AsService {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.identities.current(&self.service)?.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
pub(crate) mod tests;
