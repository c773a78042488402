//! The inbound listener: connections for `<node address>:<service port>`
//! steered here by sk_lookup. `local_addr()` of an accepted socket is the
//! address the peer dialed.
//!
//! After the mTLS handshake, a `mesh/1` connection is one app connection;
//! a `mesh/2` connection carries one CONNECT stream per app connection
//! (`tunnel`), each decided on its own: its authority must name the SNI's
//! service and port, the intentions must allow the verified pair, and the
//! local service must take the dial, before the 200. A `mesh/move`
//! connection takes over the stream whose token it sends first ([`Moves`]).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use http::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use tracing::{debug, info, warn};

use super::{
    Inputs, ProxyError,
    admission::{Admission, Slot},
    lock,
    relay::{Mover, Progress},
    tunnel::{self, Connect, MOVE_ACK},
};
use crate::{
    config::{Config, Service},
    names::ServiceName,
    telemetry::{Reporter, Side},
    tls::{PeerNode, Protocol, Transport},
};

/// How often a `mesh/2` connection checks that the leaf it was made with
/// is still this node's current one, and whether it has been idle too long.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// A `mesh/2` connection with no stream this long is closed (its client
/// closes it after `tunnel::IDLE`; this catches clients that vanished).
const IDLE: Duration = Duration::from_secs(2 * super::tunnel::IDLE.as_secs());

/// The inbound listener and what its connections use.
pub struct Inbound {
    listener: TcpListener,
    /// Slots for handshakes in progress (`--max-handshakes`,
    /// `--max-handshakes-per-source`).
    admission: Arc<Admission>,
    /// Shared with each connection's task (the listener is not, so it
    /// closes as soon as `run` is dropped).
    pi: Arc<Inputs>,
    moves: Arc<Moves>,
}

impl Inbound {
    /// The inbound listener on `listener`; `moves` is shared by the
    /// agent's inbound listeners.
    pub fn new(
        listener: TcpListener,
        pi: Arc<Inputs>,
        admission: Arc<Admission>,
        moves: Arc<Moves>,
    ) -> Self {
        Self {
            listener,
            admission,
            pi,
            moves,
        }
    }

    /// Accepts steered connections until the task is dropped.
    pub async fn run(self) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning.
                    warn!(error = %e, "inbound accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Unauthenticated peers must not hold unbounded sockets and tasks.
            let slot = match self.admission.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(refusal) => {
                    self.pi
                        .telemetry
                        .handshake_failed(Side::Inbound, refusal.reason());
                    debug!(%peer, "inbound connection closed: {refusal}");
                    continue;
                }
            };
            let (pi, moves) = (self.pi.clone(), self.moves.clone());
            // Counted from its accept to its end (a `mesh/2` connection:
            // until its streams are done after the GOAWAY of a stopping
            // agent), so no stream accepted meanwhile is cut by the exit.
            let live = pi.drain.enter();
            tokio::spawn(async move {
                let _live = live;
                log_outcome(peer, handle(stream, pi, moves, slot).await);
            });
        }
    }
}

/// Logs how an app connection from `peer` ended, unless it ended well or
/// was denied (`authorize` logged that, once, with the deciding rule).
fn log_outcome(peer: SocketAddr, outcome: Result<(), ProxyError>) {
    match outcome {
        Err(ProxyError::Denied { .. }) | Ok(()) => {}
        // Its stream ended while the move was on its way: nothing lost.
        Err(e @ ProxyError::UnknownMove { .. }) => debug!(%peer, error = %e, "mesh/move refused"),
        Err(e) if e.is_refusal() => warn!(%peer, error = %e, "inbound connection refused"),
        Err(e) => warn!(%peer, error = %e, "inbound connection failed"),
    }
}

/// The meshed service of `node` behind `port` in `config`.
fn local_service<'c>(
    config: &'c Config,
    node: &'c str,
    port: u16,
) -> Result<&'c Service, ProxyError> {
    config
        .services_on(node)
        .find(|s| s.port == port && !s.public)
        .ok_or(ProxyError::NoLocalService(port))
}

/// Fails with [`ProxyError::InstanceDown`] if nothing listens behind
/// `dst`, so the caller's agent can still try another instance. Only where
/// there is another instance: the probe binds the port for an instant (see
/// `listening`), which a single instance need not risk.
async fn check_listening(pi: &Inputs, dst: &Service) -> Result<(), ProxyError> {
    if dst.nodes.len() > 1 && !pi.local_listening(dst).await {
        return Err(ProxyError::InstanceDown {
            service: dst.name.clone(),
            port: dst.port,
        });
    }
    Ok(())
}

async fn handle(
    stream: TcpStream,
    pi: Arc<Inputs>,
    moves: Arc<Moves>,
    handshake: Slot,
) -> Result<(), ProxyError> {
    let dialed = stream.local_addr()?;
    stream.set_nodelay(true)?;
    let dst = local_service(&pi.snapshot().config, &pi.node, dialed.port())?.clone();
    let from = stream.peer_addr()?;
    // Refused before the handshake, the caller's agent can still try
    // another instance; after it, the caller's app would see the failure.
    check_listening(&pi, &dst).await?;
    let leaf = pi.tls.leaf(&dst.name);
    let (mut remote, peer) = pi.tls.accept(stream, &dst.name).await.inspect_err(|e| {
        pi.telemetry.handshake_failed(Side::Inbound, e.reason());
    })?;
    drop(handshake);
    let resumed = crate::tls::resumed(remote.get_ref().1);
    pi.telemetry.handshake(Side::Inbound, resumed);
    let protocol = crate::tls::protocol(remote.get_ref().1);
    let by = PeerNode::of(remote.get_ref().1, pi.tls.trust_domain());
    debug!(src = %peer, dst = %dst.name, alpn = protocol.alpn(), resumed, "mTLS accepted");
    match protocol {
        Protocol::Multiplexed => {
            let streams = Arc::new(Streams {
                pi,
                moves,
                peer,
                by,
                dst,
                from,
                dialed,
            });
            return streams.serve(remote, leaf).await;
        }
        Protocol::Move => {
            if moves.arrive(remote, &peer, &dst.name).await? {
                pi.telemetry.moved(Side::Inbound);
            }
            return Ok(());
        }
        Protocol::Single => {}
    }
    // The destination agent is authoritative, on the verified identity.
    pi.authorize(&peer, &dst.name, from, dialed, Reporter::Destination)?;
    let (mut svc, container) = pi.dial_local(&dst).await?;
    let (received, sent) = pi
        .splice_while_allowed(
            super::relay::relay(&mut remote, &mut svc),
            (&peer, &dst.name),
            by.as_ref(),
            Side::Inbound,
            container.as_ref(),
        )
        .await?;
    info!(
        src = %peer, dst = %dst.name, sent, received,
        container = container.as_ref().map(|c| c.labels.cgroup.as_str()),
        "inbound connection done"
    );
    Ok(())
}

/// The app connections of one `mesh/2` connection: every stream has the
/// same verified pair (`peer` -> `dst`).
struct Streams {
    pi: Arc<Inputs>,
    moves: Arc<Moves>,
    peer: ServiceName,
    /// The caller's node, cut off if it is revoked.
    by: Option<PeerNode>,
    dst: Service,
    /// The caller's agent, and the address it dialed.
    from: SocketAddr,
    dialed: SocketAddr,
}

impl Streams {
    /// Serves CONNECTs until the connection closes. Sends GOAWAY (open
    /// streams finish, new ones go to a fresh connection) when this node's
    /// leaf for `dst` is no longer `leaf` (seen at the next CONNECT or
    /// within [`CHECK_EVERY`]), when the agent stops, or after [`IDLE`]
    /// with no stream.
    async fn serve<T>(
        self: Arc<Self>,
        io: T,
        leaf: Option<Arc<crate::identity::Current>>,
    ) -> Result<(), ProxyError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        // A peer that finished TLS but never speaks HTTP/2 goes away.
        let handshake = tunnel::Server::handshake(io);
        let mut server = tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| ProxyError::NoPreface(crate::tls::HANDSHAKE_TIMEOUT))??;
        let open = Arc::new(());
        let mut idle_since = tokio::time::Instant::now();
        let mut check = tokio::time::interval(CHECK_EVERY);
        let mut going_away = false;
        let stopping = self.pi.drain.stopping();
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                connect = server.accept() => {
                    let Some(connect) = connect else { return Ok(()) };
                    let connect = connect?;
                    // Renewed since: this stream still goes (the old leaf
                    // is valid), the next ones to a fresh connection.
                    if !going_away && self.renewed(&leaf) {
                        going_away = true;
                        server.graceful_shutdown();
                    }
                    let (streams, stream) = (self.clone(), open.clone());
                    tokio::spawn(async move {
                        let _stream = stream;
                        log_outcome(streams.from, streams.handle(connect).await);
                    });
                }
                _ = &mut stopping, if !going_away => {
                    going_away = true;
                    server.graceful_shutdown();
                }
                now = check.tick(), if !going_away => {
                    if Arc::strong_count(&open) > 1 {
                        idle_since = now;
                    }
                    let renewed = self.renewed(&leaf);
                    if renewed || now.duration_since(idle_since) >= IDLE {
                        debug!(src = %self.peer, dst = %self.dst.name, renewed, "mesh/2 connection going away");
                        going_away = true;
                        server.graceful_shutdown();
                    }
                }
            }
        }
    }

    /// Whether this node's leaf for `dst` is no longer `leaf`.
    fn renewed(&self, leaf: &Option<Arc<crate::identity::Current>>) -> bool {
        match (leaf, self.pi.tls.leaf(&self.dst.name)) {
            (Some(then), Some(now)) => !Arc::ptr_eq(then, &now),
            _ => true,
        }
    }

    /// Decides one CONNECT and relays its stream.
    async fn handle(&self, connect: Connect) -> Result<(), ProxyError> {
        let Self {
            pi,
            moves,
            peer,
            by,
            dst,
            from,
            dialed,
        } = self;
        let (from, dialed) = (*from, *dialed);
        // The service as the snapshot in force has it (a reload may have
        // moved or removed it since the connection was made).
        let snapshot = pi.snapshot();
        if let Some(by) = by.as_ref().filter(|b| b.revoked(&snapshot.config)) {
            connect.refuse(StatusCode::FORBIDDEN);
            pi.telemetry
                .handshake_failed(Side::Inbound, crate::telemetry::Refusal::Revoked);
            return Err(ProxyError::Revoked {
                node: by.node.clone(),
            });
        }
        let dst = match local_service(&snapshot.config, &pi.node, dst.port) {
            Ok(now) if now.name == dst.name => now,
            _ => {
                connect.refuse(StatusCode::SERVICE_UNAVAILABLE);
                return Err(ProxyError::NoLocalService(dst.port));
            }
        };
        let named = tunnel::parse_authority(connect.authority(), pi.tls.trust_domain());
        if named != Some((dst.name.as_str(), dst.port)) {
            let authority = connect.authority().to_owned();
            connect.refuse(StatusCode::BAD_REQUEST);
            return Err(ProxyError::WrongAuthority {
                authority,
                service: dst.name.clone(),
            });
        }
        // The destination agent is authoritative, on the verified identity.
        if let Err(e) = pi.authorize(peer, &dst.name, from, dialed, Reporter::Destination) {
            connect.refuse(StatusCode::FORBIDDEN);
            return Err(e);
        }
        // Refused before the 200, the caller's agent can try another instance.
        let svc = match check_listening(pi, dst).await {
            Ok(()) => pi.dial_local(dst).await,
            Err(e) => Err(e),
        };
        let (mut svc, container) = match svc {
            Ok(svc) => svc,
            Err(e) => {
                connect.refuse(StatusCode::SERVICE_UNAVAILABLE);
                return Err(e);
            }
        };
        let mut arrival = moves.expect(pi.tls.random_token()?, peer, &dst.name);
        let mut stream = connect.accept(Some(arrival.token))?;
        // (service -> stream, stream -> service)
        let copy = async {
            let (sent, received) =
                super::relay::relay_tunnel(&mut svc, &mut stream, &mut arrival).await?;
            Ok((received, sent))
        };
        let (received, sent) = pi
            .splice_while_allowed(
                copy,
                (peer, &dst.name),
                by.as_ref(),
                Side::Inbound,
                container.as_ref(),
            )
            .await?;
        info!(
            src = %peer, dst = %dst.name, sent, received, alpn = "mesh/2",
            container = container.as_ref().map(|c| c.labels.cgroup.as_str()),
            "inbound connection done"
        );
        Ok(())
    }
}

/// The `mesh/2` streams a `mesh/move` connection may take over, by token.
#[derive(Default)]
pub struct Moves {
    expected: Mutex<HashMap<u128, Expected>>,
}

type Moved = tokio_rustls::server::TlsStream<Transport>;

/// Who may take a stream over, and where its connection goes.
struct Expected {
    src: ServiceName,
    dst: ServiceName,
    to: oneshot::Sender<Moved>,
}

impl Moves {
    /// Expects a move of a stream from `src` to `dst` presenting `token`,
    /// until the returned [`Arrival`] is dropped.
    fn expect(self: &Arc<Self>, token: u128, src: &ServiceName, dst: &ServiceName) -> Arrival {
        let (to, from) = oneshot::channel();
        let expected = Expected {
            src: src.clone(),
            dst: dst.clone(),
            to,
        };
        lock(&self.expected).insert(token, expected);
        Arrival {
            moves: self.clone(),
            token,
            from: Some(from),
        }
    }

    /// A `mesh/move` connection from `src` to `dst`: reads its token,
    /// and if it names a stream of that pair, answers [`MOVE_ACK`] and
    /// hands the connection to the stream. Returns whether the stream took
    /// it (it may have ended meanwhile).
    async fn arrive(
        &self,
        mut conn: Moved,
        src: &ServiceName,
        dst: &ServiceName,
    ) -> Result<bool, ProxyError> {
        let bound = crate::tls::HANDSHAKE_TIMEOUT;
        let mut token = [0u8; 16];
        tokio::time::timeout(bound, conn.read_exact(&mut token))
            .await
            .map_err(|_| ProxyError::NoMoveToken(bound))??;
        let token = u128::from_be_bytes(token);
        let expected = {
            let mut expected = lock(&self.expected);
            match expected.get(&token) {
                Some(e) if e.src == *src && e.dst == *dst => expected.remove(&token),
                _ => None,
            }
        };
        let Some(expected) = expected else {
            return Err(ProxyError::UnknownMove {
                src: src.clone(),
                dst: dst.clone(),
            });
        };
        // The source commits to the move only once it has this.
        let ack = async {
            conn.write_all(&[MOVE_ACK]).await?;
            conn.flush().await
        };
        tokio::time::timeout(bound, ack)
            .await
            .map_err(|_| ProxyError::NoMoveToken(bound))??;
        Ok(expected.to.send(conn).is_ok())
    }
}

/// The destination side of a stream's move (a [`Mover`]): the `mesh/move`
/// connection that presented this stream's token, when it comes.
struct Arrival {
    moves: Arc<Moves>,
    token: u128,
    from: Option<oneshot::Receiver<Moved>>,
}

impl Mover for Arrival {
    type Conn = Moved;

    fn poll_conn(&mut self, cx: &mut Context<'_>, _: Progress) -> Poll<Moved> {
        let Some(from) = self.from.as_mut() else {
            return Poll::Pending;
        };
        let arrived = std::task::ready!(std::pin::Pin::new(from).poll(cx));
        self.from = None;
        match arrived {
            Ok(conn) => Poll::Ready(conn),
            Err(_) => Poll::Pending,
        }
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        lock(&self.moves.expected).remove(&self.token);
    }
}

#[cfg(test)]
mod tests {
    use rustls::ClientConfig;
    use rustls_pki_types::ServerName;
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::{
        identity::NodeCa,
        proxy::fixture::{B, Fixture, eventually, exchange, web_to_api},
        tls::{
            ALPN, Offer, Tls,
            verify::{Peer, PeerRules, ServerVerifier},
        },
    };

    /// Node b's inbound listener, as the kernel would steer a connection
    /// to `<node b>:<api port>` there.
    fn inbound_addr(f: &Fixture) -> SocketAddr {
        SocketAddr::new(B, f.port)
    }

    /// Node a's agent's TLS, connecting as `web` to `api` on node b
    /// (`mesh/1`: the TLS connection is the app connection).
    async fn as_web(f: &Fixture) -> Result<Vec<u8>, crate::tls::TlsError> {
        let tls = Tls::new(f.mesh.identities("a"), Arc::new(f.snapshots.clone())).unwrap();
        let tcp = TcpStream::connect(inbound_addr(f)).await.unwrap();
        let conn = tls
            .connect(
                tcp,
                &"web".parse().unwrap(),
                &"api".parse().unwrap(),
                &"b".parse().unwrap(),
                Offer::Single,
            )
            .await?;
        Ok(exchange(conn).await)
    }

    #[tokio::test]
    async fn a_mesh_client_reaches_the_local_service() {
        let f = Fixture::new(true).await;
        let b = f.inbound().await;
        assert_eq!(as_web(&f).await.unwrap(), b"hello");
        assert_eq!(f.api_accepted(), 1);
        assert_eq!(web_to_api(&b).allowed, 1);
        let opened =
            "mesh_connections_opened_total{source=\"web\",destination=\"api\",side=\"inbound\"} 1";
        let metrics = b.render();
        assert!(metrics.contains(opened), "{metrics}");
    }

    #[tokio::test]
    async fn a_client_without_a_mesh_certificate_is_refused() {
        let f = Fixture::new(true).await;
        let b = f.inbound().await;
        // Takes node b's server certificate as a mesh client would, but
        // presents none of its own.
        let ca = NodeCa::load_or_issue(&f.mesh.config, &"a".parse().unwrap()).unwrap();
        let rules = PeerRules::new("mesh.local", Arc::new(ca), Arc::new(f.snapshots.clone()));
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ServerVerifier::new(
                    Arc::new(rules),
                    Peer::Service,
                )))
                .with_no_client_auth();
        config.alpn_protocols = vec![ALPN.to_vec()];
        let tcp = TcpStream::connect(inbound_addr(&f)).await.unwrap();
        let name = ServerName::try_from("api.svc.mesh.local").unwrap();
        // TLS 1.3: the client's side of the handshake may finish before
        // the server refuses it.
        if let Ok(conn) = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
        {
            assert_eq!(exchange(conn).await, b"");
        }
        let refused =
            "mesh_handshake_failures_total{side=\"inbound\",reason=\"no_client_certificate\"} 1";
        assert!(eventually(|| b.render().contains(refused)).await);
        assert_eq!(f.api_accepted(), 0);
        assert!(b.pairs().is_empty());
    }

    #[tokio::test]
    async fn a_denied_pair_is_refused_by_the_destination() {
        let f = Fixture::new(false).await;
        let b = f.inbound().await;
        // The handshake passes (a mesh identity); the intentions refuse.
        assert_eq!(as_web(&f).await.unwrap(), b"");
        assert_eq!(f.api_accepted(), 0);
        assert_eq!(web_to_api(&b).denied, 1);
    }

    #[tokio::test]
    async fn a_plaintext_client_is_closed_before_the_service() {
        let f = Fixture::new(true).await;
        let b = f.inbound().await;
        let tcp = TcpStream::connect(inbound_addr(&f)).await.unwrap();
        assert_eq!(exchange(tcp).await, b"");
        assert_eq!(f.api_accepted(), 0);
        assert!(b.pairs().is_empty());
    }
}
