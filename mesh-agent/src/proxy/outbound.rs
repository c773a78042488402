//! The outbound listener: apps' connections redirected by connect4/6.
//!
//! The original destination and both services come from the record sock_ops
//! left in `CONNS`. A connection without a record (someone dialing the
//! listener directly) is closed.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::{Inputs, ProxyError, Redirect, ServiceIds, dial, local_addr};
use crate::{ebpf::Kernel, telemetry::Side};

/// The outbound listener and what its connections use.
pub struct Outbound {
    listener: TcpListener,
    handler: Arc<Handler>,
}

/// What each connection uses; shared with its task (the listener is not,
/// so it closes as soon as `run` is dropped).
struct Handler {
    pi: Arc<Inputs>,
    /// `CONNS`, where each connection's record waits.
    kernel: Arc<Kernel>,
    /// The names behind the records' service ids.
    ids: Arc<ServiceIds>,
}

impl Outbound {
    /// The outbound listener on `listener`.
    pub fn new(
        listener: TcpListener,
        pi: Arc<Inputs>,
        kernel: Arc<Kernel>,
        ids: Arc<ServiceIds>,
    ) -> Self {
        Self {
            listener,
            handler: Arc::new(Handler { pi, kernel, ids }),
        }
    }

    /// Accepts redirected app connections until the task is dropped.
    pub async fn run(self) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning.
                    warn!(error = %e, "outbound accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handler = self.handler.clone();
            tokio::spawn(async move {
                match handler.handle(stream).await {
                    // Logged by `authorize`, once, with the deciding rule.
                    Err(ProxyError::Denied { .. }) | Ok(()) => {}
                    Err(e) => warn!(%peer, error = %e, "outbound connection closed"),
                }
            });
        }
    }
}

impl Handler {
    async fn handle(&self, mut app: TcpStream) -> Result<(), ProxyError> {
        let pi = &self.pi;
        let peer = app.peer_addr()?;
        let local = app.local_addr()?;
        let orig = self
            .kernel
            .take_orig(peer, local)
            .ok_or(ProxyError::NoRecord { peer })?;
        app.set_nodelay(true)?;
        let snapshot = pi.snapshot();
        let Redirect { src, dst, dialed } =
            Redirect::from_record(&orig, &self.ids, &snapshot.config)?;
        // Fail fast at the source too (the kernel normally refused already).
        pi.authorize(&src.name, &dst.name, peer, dialed, Side::Source)?;
        let host = super::route::instance(&snapshot.config, &dst, dialed, &pi.node)?;
        let (sent, received) = if host.name == pi.node {
            // Same node: this agent is also the destination's; bytes stay here.
            debug!(src = %src.name, dst = %dst.name, "outbound, same node");
            let mut svc = dial(local_addr(dst.port)).await?;
            pi.splice_while_allowed(&mut app, &mut svc, &src.name, &dst.name, "outbound")
                .await?
        } else {
            let addr = SocketAddr::new(host.address, dst.port);
            debug!(src = %src.name, dst = %dst.name, %addr, "outbound, to remote agent");
            let tcp = dial(addr).await?;
            let mut remote = pi
                .tls
                .connect(tcp, &src.name, &dst.name)
                .await
                .inspect_err(|e| {
                    pi.telemetry.handshake_failed("outbound", e.reason());
                })?;
            let resumed = crate::tls::resumed(remote.get_ref().1);
            pi.telemetry.handshake("outbound", resumed);
            debug!(src = %src.name, dst = %dst.name, %addr, alpn = "mesh/1", resumed, "mTLS established");
            pi.splice_while_allowed(&mut app, &mut remote, &src.name, &dst.name, "outbound")
                .await?
        };
        info!(src = %src.name, dst = %dst.name, sent, received, "outbound connection done");
        Ok(())
    }
}
