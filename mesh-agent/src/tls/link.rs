//! Agent links: one long-lived mTLS connection between the agents of two
//! nodes, node identity on both sides. TLS 1.3 only, ALPN `mesh-link/1`,
//! SNI `<node>.agent.<trust domain>`. Each side presents its agent's current
//! leaf (`spiffe://<trust domain>/agent/<node>`) and checks the other's with
//! `PeerRules::verify_agent`: signed by that same node's CA, for a node of
//! the catalog, and on the client side, the node it dialed.
//!
//! No session resumption, for simplicity: a link is made once and kept, so
//! a full handshake is rare, and without tickets there is no session that
//! would have to be re-checked against the rules in force (as `Tls` does).
//! Nothing is framed here: after the handshake the stream is the caller's.

use std::sync::Arc;

use rustls::{
    ClientConfig, ServerConfig,
    client::{ResolvesClientCert, Resumption},
    crypto::CryptoProvider,
    server::{ClientHello, NoServerSessionStorage, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{LazyConfigAcceptor, TlsConnector, client, server};

use super::{
    TlsError, bounded, check_alpn, handshake_error, peer_leaf,
    verify::{ClientVerifier, Peer, PeerRules, ServerVerifier, VerifyError},
};
use crate::identity::{Identities, spiffe};
use crate::names::NodeName;

/// The application protocol of agent links.
pub const ALPN: &[u8] = b"mesh-link/1";

/// Both ends of agent links for this node's agent (see the module docs).
pub struct Link {
    trust_domain: String,
    /// Our own agent's SNI, the only one `accept` answers.
    own_sni: String,
    rules: Arc<PeerRules>,
    connector: TlsConnector,
    server: Arc<ServerConfig>,
}

impl Link {
    /// Link configs presenting the agent leaf of `identities`, checking
    /// peers with `rules`.
    pub(super) fn new(
        identities: Arc<Identities>,
        rules: Arc<PeerRules>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let td = identities.trust_domain().to_owned();
        let own_sni = spiffe::agent_sni(&td, &identities.node());
        let leaf = Arc::new(AsAgent { identities });

        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier::new(
                rules.clone(),
                Peer::Agent,
            )))
            .with_client_cert_resolver(leaf.clone());
        client.alpn_protocols = vec![ALPN.to_vec()];
        client.resumption = Resumption::disabled();

        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(ClientVerifier::new(rules.clone(), Peer::Agent)))
            .with_cert_resolver(leaf);
        server.alpn_protocols = vec![ALPN.to_vec()];
        // No resumption (module docs): no tickets, no session cache.
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(NoServerSessionStorage {});

        Ok(Self {
            trust_domain: td,
            own_sni,
            rules,
            connector: TlsConnector::from(Arc::new(client)),
            server: Arc::new(server),
        })
    }

    /// Client side: TLS over `tcp` to the agent of `node`. Fails unless the
    /// server proves to be exactly that agent, within `HANDSHAKE_TIMEOUT`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        node: &NodeName,
    ) -> Result<client::TlsStream<TcpStream>, TlsError> {
        let sni = spiffe::agent_sni(&self.trust_domain, node);
        // Only a valid node name round-trips: the verifier reads the node it
        // expects back from the SNI.
        if spiffe::node_from_agent_sni(&self.trust_domain, &sni) != Some(node.as_str()) {
            return Err(VerifyError::ServerName(sni).into());
        }
        let name = ServerName::try_from(sni.clone()).map_err(|_| VerifyError::ServerName(sni))?;
        let connect = self.connector.connect(name, tcp);
        let stream = bounded(async { connect.await.map_err(handshake_error) }).await?;
        check_alpn(stream.get_ref().1.alpn_protocol(), &[ALPN])?;
        Ok(stream)
    }

    /// Server side: accepts TLS over `tcp` from the agent of any node of
    /// the catalog, asking for our own agent's SNI, within
    /// `HANDSHAKE_TIMEOUT`; returns the stream and the peer's node.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<(server::TlsStream<TcpStream>, NodeName), TlsError> {
        let handshake = async {
            // A peer that says nothing lets go of its connection within
            // the hello bound, as on the service ports.
            let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
            let start = tokio::time::timeout(super::HELLO_TIMEOUT, hello)
                .await
                .map_err(|_| TlsError::HelloTimeout(super::HELLO_TIMEOUT))?
                .map_err(handshake_error)?;
            let hello = start.client_hello();
            if hello.server_name() != Some(self.own_sni.as_str()) {
                return Err(TlsError::WrongSni {
                    got: hello.server_name().map(str::to_owned),
                    expected: self.own_sni.clone(),
                });
            }
            start
                .into_stream(self.server.clone())
                .await
                .map_err(handshake_error)
        };
        let stream = bounded(handshake).await?;
        let conn = stream.get_ref().1;
        check_alpn(conn.alpn_protocol(), &[ALPN])?;
        let peer = self.rules.agent_of(peer_leaf(conn)?)?;
        Ok((stream, peer))
    }
}

/// Both sides: the agent's current leaf, read at each handshake so that a
/// renewal applies to the next link made.
#[derive(Debug)]
struct AsAgent {
    identities: Arc<Identities>,
}

impl ResolvesClientCert for AsAgent {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.identities.agent().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for AsAgent {
    /// The SNI was checked before (`Link::accept`).
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.identities.agent().key.clone())
    }
}
