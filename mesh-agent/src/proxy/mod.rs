//! The agent's data path in userspace: the outbound listener (apps' redirected
//! connections), the inbound listener (connections steered by sk_lookup), and
//! the byte copy between two sockets. The hop between agents is mTLS (`tls`).

pub mod inbound;
pub mod outbound;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use crate::{config::Config, ebpf::Kernel, identity::Identities, tls::Tls};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no mesh record for connection from {peer}; not a redirected app connection")]
    NoRecord { peer: SocketAddr },
    #[error("unknown service id {0} in a kernel record")]
    UnknownService(u32),
    #[error("node {0:?} of a destination service is not in the config")]
    UnknownNode(String),
    #[error("no local service behind port {0}")]
    NoLocalService(u16),
    #[error("failed to connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// What every connection handler needs: the config this agent runs with,
/// the kernel maps, and the identities and TLS configs of local services.
pub struct Context {
    pub config: Config,
    pub node: String,
    pub kernel: Kernel,
    pub identities: std::sync::Arc<Identities>,
    pub tls: Tls,
}

impl Context {
    /// The service behind a kernel `ServiceId` (index in `config.services` + 1).
    pub fn service(&self, id: u32) -> Result<&crate::config::Service, ProxyError> {
        usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.config.services.get(i))
            .ok_or(ProxyError::UnknownService(id))
    }
}

pub type Shared = Arc<Context>;

/// Where a local service listens: loopback only, by design.
pub fn local_addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// Connects with TCP_NODELAY set.
pub async fn dial(addr: SocketAddr) -> Result<TcpStream, ProxyError> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|source| ProxyError::Connect { addr, source })?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Copies both ways until both directions are done. When one side finishes
/// writing, the other side's write half is shut down (half-close), and the
/// opposite direction keeps flowing. Returns bytes (a -> b, b -> a).
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional(a, b).await
}
