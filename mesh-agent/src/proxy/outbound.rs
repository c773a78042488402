//! The outbound listener: apps' connections redirected by connect4/6.
//!
//! The original destination and both services come from the record sock_ops
//! left in `CONNS`. A connection without a record (someone dialing the
//! listener directly) is closed.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::{ProxyError, Redirect, Shared, dial, local_addr};

/// Accepts redirected app connections until the task is dropped.
pub async fn serve(listener: TcpListener, ctx: Shared) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                warn!(error = %e, "outbound accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match handle(stream, &ctx).await {
                // Logged by `authorize`, once, with the deciding rule.
                Err(ProxyError::Denied { .. }) | Ok(()) => {}
                Err(e) => warn!(%peer, error = %e, "outbound connection closed"),
            }
        });
    }
}

async fn handle(mut app: TcpStream, ctx: &Shared) -> Result<(), ProxyError> {
    let peer = app.peer_addr()?;
    let local = app.local_addr()?;
    let orig = ctx
        .kernel
        .take_orig(peer, local)
        .ok_or(ProxyError::NoRecord { peer })?;
    app.set_nodelay(true)?;
    let Redirect { src, dst, dialed } = ctx.redirect(&orig)?;
    // Fail fast at the source too (the kernel normally refused already).
    ctx.authorize(&src.name, &dst.name, peer, dialed)?;
    let (sent, received) = if dst.node == ctx.node {
        // Same node: this agent is also the destination's; bytes stay here.
        debug!(src = %src.name, dst = %dst.name, "outbound, same node");
        let mut svc = dial(local_addr(dst.port)).await?;
        ctx.splice_while_allowed(&mut app, &mut svc, &src.name, &dst.name, "outbound")
            .await?
    } else {
        let config = ctx.config();
        let node = config
            .node(&dst.node)
            .ok_or_else(|| ProxyError::UnknownNode(dst.node.clone()))?;
        let addr = SocketAddr::new(node.address, dst.port);
        debug!(src = %src.name, dst = %dst.name, %addr, "outbound, to remote agent");
        let tcp = dial(addr).await?;
        let mut remote = ctx
            .tls
            .connect(tcp, &src.name, &dst.name)
            .await
            .inspect_err(|e| {
                ctx.metrics.handshake_failed("outbound", e.reason());
            })?;
        let resumed = crate::tls::resumed(remote.get_ref().1);
        ctx.metrics.handshake("outbound", resumed);
        debug!(src = %src.name, dst = %dst.name, %addr, alpn = "mesh/1", resumed, "mTLS established");
        ctx.splice_while_allowed(&mut app, &mut remote, &src.name, &dst.name, "outbound")
            .await?
    };
    info!(src = %src.name, dst = %dst.name, sent, received, "outbound connection done");
    Ok(())
}
