//! The outbound listener: apps' connections redirected by connect4/6.
//!
//! The original destination and both services come from the record sock_ops
//! left in `CONNS`. A connection without a record (someone dialing the
//! listener directly) is closed.

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::{ProxyError, Shared, dial, local_addr, splice};

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
            if let Err(e) = handle(stream, &ctx).await {
                warn!(%peer, error = %e, "outbound connection closed");
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
    let src = ctx.service(orig.src_service)?;
    let dst = ctx.service(orig.dst_service)?;
    let (sent, received) = if dst.node == ctx.node {
        debug!(src = %src.name, dst = %dst.name, "outbound, same node");
        let mut svc = dial(local_addr(dst.port)).await?;
        splice(&mut app, &mut svc).await?
    } else {
        let node = ctx
            .config
            .node(&dst.node)
            .ok_or_else(|| ProxyError::UnknownNode(dst.node.clone()))?;
        let addr = std::net::SocketAddr::new(node.address, dst.port);
        debug!(src = %src.name, dst = %dst.name, %addr, "outbound, to remote agent");
        let tcp = dial(addr).await?;
        let mut remote = ctx.tls.connect(tcp, &src.name, &dst.name).await?;
        debug!(src = %src.name, dst = %dst.name, %addr, alpn = "mesh/1", "mTLS established");
        splice(&mut app, &mut remote).await?
    };
    info!(src = %src.name, dst = %dst.name, sent, received, "outbound connection done");
    Ok(())
}
