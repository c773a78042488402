//! The inbound listener: connections for `<node address>:<service port>`
//! steered here by sk_lookup. `local_addr()` of an accepted socket is the
//! address the peer dialed.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::{
    Inputs, ProxyError,
    admission::{Admission, Slot},
    dial, local_addr,
};
use crate::telemetry::Side;

/// The inbound listener and what its connections use.
pub struct Inbound {
    listener: TcpListener,
    /// Slots for handshakes in progress (`--max-handshakes`,
    /// `--max-handshakes-per-source`).
    admission: Arc<Admission>,
    /// Shared with each connection's task (the listener is not, so it
    /// closes as soon as `run` is dropped).
    pi: Arc<Inputs>,
}

impl Inbound {
    /// The inbound listener on `listener`.
    pub fn new(listener: TcpListener, pi: Arc<Inputs>, admission: Arc<Admission>) -> Self {
        Self {
            listener,
            admission,
            pi,
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
                        .handshake_failed("inbound", refusal.reason());
                    debug!(%peer, "inbound connection closed: {refusal}");
                    continue;
                }
            };
            let pi = self.pi.clone();
            tokio::spawn(async move {
                match handle(stream, &pi, slot).await {
                    // Logged by `authorize`, once, with the deciding rule.
                    Err(ProxyError::Denied { .. }) => {}
                    Err(e) if e.is_refusal() => {
                        warn!(%peer, error = %e, "inbound connection refused")
                    }
                    Err(e) => warn!(%peer, error = %e, "inbound connection failed"),
                    Ok(()) => {}
                }
            });
        }
    }
}

async fn handle(stream: TcpStream, pi: &Inputs, handshake: Slot) -> Result<(), ProxyError> {
    let dialed = stream.local_addr()?;
    stream.set_nodelay(true)?;
    let dst = pi
        .snapshot()
        .config
        .services_on(&pi.node)
        .find(|s| s.port == dialed.port() && !s.public)
        .cloned()
        .ok_or(ProxyError::NoLocalService(dialed.port()))?;
    let from = stream.peer_addr()?;
    // Refused before the handshake, the caller's agent can still try
    // another instance; after it, the caller's app would see the failure.
    // Only where there is another instance: the probe binds the port for
    // an instant (see `listening`), which a single instance need not risk.
    if dst.nodes.len() > 1 && !super::listening(dst.port) {
        return Err(ProxyError::InstanceDown {
            service: dst.name.clone(),
            port: dst.port,
        });
    }
    let (mut remote, peer) = pi.tls.accept(stream, &dst.name).await.inspect_err(|e| {
        pi.telemetry.handshake_failed("inbound", e.reason());
    })?;
    drop(handshake);
    let resumed = crate::tls::resumed(remote.get_ref().1);
    pi.telemetry.handshake("inbound", resumed);
    debug!(src = %peer, dst = %dst.name, alpn = "mesh/1", resumed, "mTLS accepted");
    // The destination agent is authoritative, on the verified identity.
    pi.authorize(&peer, &dst.name, from, dialed, Side::Destination)?;
    let mut svc = dial(local_addr(dst.port)).await?;
    let (received, sent) = pi
        .splice_while_allowed(&mut remote, &mut svc, &peer, &dst.name, "inbound")
        .await?;
    info!(src = %peer, dst = %dst.name, sent, received, "inbound connection done");
    Ok(())
}
