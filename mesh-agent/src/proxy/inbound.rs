//! The inbound listener: connections for `<node address>:<service port>`
//! steered here by sk_lookup. `local_addr()` of an accepted socket is the
//! address the peer dialed.

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::{ProxyError, Shared, dial, local_addr};

/// Accepts steered connections until the task is dropped.
pub async fn serve(listener: TcpListener, ctx: Shared) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                warn!(error = %e, "inbound accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // Unauthenticated peers must not hold unbounded sockets and tasks.
        let slot = match ctx.handshakes.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                ctx.telemetry.handshake_failed("inbound", refusal.reason());
                debug!(%peer, "inbound connection closed: {refusal}");
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match handle(stream, &ctx, slot).await {
                // Logged by `authorize`, once, with the deciding rule.
                Err(ProxyError::Denied { .. }) => {}
                Err(e) if e.is_refusal() => warn!(%peer, error = %e, "inbound connection refused"),
                Err(e) => warn!(%peer, error = %e, "inbound connection failed"),
                Ok(()) => {}
            }
        });
    }
}

async fn handle(
    stream: TcpStream,
    ctx: &Shared,
    handshake: super::admission::Slot,
) -> Result<(), ProxyError> {
    let dialed = stream.local_addr()?;
    stream.set_nodelay(true)?;
    let dst = ctx
        .snapshot()
        .config
        .services_on(&ctx.node)
        .find(|s| s.port == dialed.port() && !s.public)
        .cloned()
        .ok_or(ProxyError::NoLocalService(dialed.port()))?;
    let from = stream.peer_addr()?;
    let (mut remote, peer) = ctx.tls.accept(stream, &dst.name).await.inspect_err(|e| {
        ctx.telemetry.handshake_failed("inbound", e.reason());
    })?;
    drop(handshake);
    let resumed = crate::tls::resumed(remote.get_ref().1);
    ctx.telemetry.handshake("inbound", resumed);
    debug!(src = %peer, dst = %dst.name, alpn = "mesh/1", resumed, "mTLS accepted");
    // The destination agent is authoritative, on the verified identity.
    ctx.authorize(
        &peer,
        &dst.name,
        from,
        dialed,
        crate::telemetry::Side::Destination,
    )?;
    let mut svc = dial(local_addr(dst.port)).await?;
    let (received, sent) = ctx
        .splice_while_allowed(&mut remote, &mut svc, &peer, &dst.name, "inbound")
        .await?;
    info!(src = %peer, dst = %dst.name, sent, received, "inbound connection done");
    Ok(())
}
