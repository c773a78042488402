//! The agent's listening sockets: bound at start, or taken over from the
//! running agent of the node (an upgrade); duplicated for the next one.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use tokio::net::{TcpListener, UdpSocket};
use tracing::warn;

use super::{AppError, RunOptions};
use crate::{
    config::Config,
    handover::{SocketName, Taken},
};

/// The agent's listening sockets (non-blocking, not yet registered with
/// tokio: bound before the runtime starts).
pub(super) struct Listeners {
    out4: std::net::TcpListener,
    out6: Option<std::net::TcpListener>,
    in4: std::net::TcpListener,
    in6: Option<std::net::TcpListener>,
    admin: std::net::TcpListener,
    /// `<node address>:<link port>`: other agents follow this one's health.
    link: std::net::TcpListener,
    dns: Option<std::net::UdpSocket>,
    /// DNS over TCP, on the UDP socket's address.
    dns_tcp: Option<std::net::TcpListener>,
}

/// The same sockets, registered with tokio.
pub(super) struct Sockets {
    pub out4: TcpListener,
    pub out6: Option<TcpListener>,
    pub in4: TcpListener,
    pub in6: Option<TcpListener>,
    pub admin: TcpListener,
    pub link: TcpListener,
    pub dns: Option<UdpSocket>,
    pub dns_tcp: Option<TcpListener>,
}

impl Listeners {
    /// Binds every listener for `opts`.
    pub(super) fn bind(config: &Config, opts: &RunOptions) -> Result<Self, AppError> {
        let loopback4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let loopback6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        Ok(Self {
            out4: listen(SocketAddr::new(loopback4, opts.outbound_port))?,
            out6: listen_optional(SocketAddr::new(loopback6, opts.outbound_port))?,
            in4: listen(SocketAddr::new(loopback4, 0))?,
            in6: listen_optional(SocketAddr::new(loopback6, 0))?,
            admin: listen(crate::admin::check_addr(opts.admin)?)?,
            link: link_listener(config, opts)?,
            dns: dns_socket(opts),
            dns_tcp: dns_listener(opts),
        })
    }

    /// The sockets the running agent handed over; each must be where
    /// `opts` would bind it (a DNS socket is bound if it handed none).
    pub(super) fn taken(taken: &mut Taken, opts: &RunOptions) -> Result<Self, AppError> {
        let mut tcp = |name: SocketName| {
            taken.sockets.remove(&name).map(|fd| {
                let l = std::net::TcpListener::from(fd);
                let _ = l.set_nonblocking(true);
                l
            })
        };
        let missing = |what: &'static str| AppError::HandoverMismatch {
            what,
            running: "nothing".to_owned(),
            wanted: what.to_owned(),
        };
        let out4 = tcp(SocketName::Out4).ok_or_else(|| missing("outbound listener"))?;
        let out6 = tcp(SocketName::Out6);
        let in4 = tcp(SocketName::In4).ok_or_else(|| missing("inbound listener"))?;
        let in6 = tcp(SocketName::In6);
        let admin = tcp(SocketName::Admin).ok_or_else(|| missing("admin endpoint"))?;
        let link = tcp(SocketName::Link).ok_or_else(|| missing("link listener"))?;
        let dns_tcp = match (tcp(SocketName::DnsTcp), opts.dns) {
            (Some(l), Some(_)) => Some(l),
            (None, Some(_)) => dns_listener(opts),
            (_, None) => None,
        };
        let dns = match (taken.sockets.remove(&SocketName::Dns), opts.dns) {
            (Some(fd), Some(_)) => Some(std::net::UdpSocket::from(fd)),
            (None, Some(_)) => dns_socket(opts),
            (_, None) => None,
        };
        let this = Self {
            out4,
            out6,
            in4,
            in6,
            admin,
            link,
            dns,
            dns_tcp,
        };
        this.check_where(opts)?;
        Ok(this)
    }

    /// Fails unless each taken socket is where `opts` would bind it.
    fn check_where(&self, opts: &RunOptions) -> Result<(), AppError> {
        let same =
            |what: &'static str, running: std::io::Result<SocketAddr>, wanted: SocketAddr| {
                let running = running.map_err(|source| AppError::Listen {
                    addr: wanted,
                    source,
                })?;
                if running == wanted {
                    return Ok(());
                }
                Err(AppError::HandoverMismatch {
                    what,
                    running: running.to_string(),
                    wanted: wanted.to_string(),
                })
            };
        let loopback4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        same(
            "outbound listener",
            self.out4.local_addr(),
            SocketAddr::new(loopback4, opts.outbound_port),
        )?;
        same("admin endpoint", self.admin.local_addr(), opts.admin)?;
        let link_addr = self.link.local_addr();
        let link_port = link_addr.as_ref().map_or(0, SocketAddr::port);
        if link_port != opts.link_port {
            return Err(AppError::HandoverMismatch {
                what: "link listener",
                running: format!("port {link_port}"),
                wanted: format!("port {}", opts.link_port),
            });
        }
        if let (Some(socket), Some(wanted)) = (&self.dns, opts.dns) {
            same("DNS socket", socket.local_addr(), wanted)?;
        }
        if let (Some(listener), Some(wanted)) = (&self.dns_tcp, opts.dns) {
            same("DNS TCP listener", listener.local_addr(), wanted)?;
        }
        Ok(())
    }

    /// Duplicates of every socket, by name, for the next agent.
    pub(super) fn duplicates(&self) -> Vec<(SocketName, OwnedFd)> {
        let mut all: Vec<(SocketName, BorrowedFd<'_>)> = vec![
            (SocketName::Out4, self.out4.as_fd()),
            (SocketName::In4, self.in4.as_fd()),
            (SocketName::Admin, self.admin.as_fd()),
            (SocketName::Link, self.link.as_fd()),
        ];
        if let Some(l) = &self.out6 {
            all.push((SocketName::Out6, l.as_fd()));
        }
        if let Some(l) = &self.in6 {
            all.push((SocketName::In6, l.as_fd()));
        }
        if let Some(s) = &self.dns {
            all.push((SocketName::Dns, s.as_fd()));
        }
        if let Some(l) = &self.dns_tcp {
            all.push((SocketName::DnsTcp, l.as_fd()));
        }
        crate::handover::duplicates(all)
    }

    /// Registers every socket with tokio (inside the runtime).
    pub(super) fn register(self, opts: &RunOptions) -> Result<Sockets, AppError> {
        let tcp = |l: std::net::TcpListener| {
            let addr = l
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            TcpListener::from_std(l).map_err(|source| AppError::Listen { addr, source })
        };
        let dns = self
            .dns
            .map(UdpSocket::from_std)
            .transpose()
            .map_err(|source| AppError::Listen {
                addr: opts
                    .dns
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 53))),
                source,
            })?;
        Ok(Sockets {
            out4: tcp(self.out4)?,
            out6: self.out6.map(tcp).transpose()?,
            in4: tcp(self.in4)?,
            in6: self.in6.map(tcp).transpose()?,
            admin: tcp(self.admin)?,
            link: tcp(self.link)?,
            dns,
            dns_tcp: self.dns_tcp.map(tcp).transpose()?,
        })
    }
}

/// `<node address>:<link port>`: other agents follow this one's health.
fn link_listener(config: &Config, opts: &RunOptions) -> Result<std::net::TcpListener, AppError> {
    let address = config
        .node(&opts.node)
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |n| n.address);
    crate::health::link::listen(address, opts.link_port).map_err(|source| AppError::Listen {
        addr: SocketAddr::new(address, opts.link_port),
        source,
    })
}

/// The `.mesh` DNS socket, if asked for and free: a node may already run a
/// resolver there, and DNS is a convenience, not a reason to refuse to
/// protect the node.
fn dns_socket(opts: &RunOptions) -> Option<std::net::UdpSocket> {
    let addr = opts.dns?;
    crate::dns::bind(addr)
        .inspect_err(|e| warn!(error = %e, "no .mesh DNS on this node"))
        .ok()
}

/// The `.mesh` DNS listener for TCP (clients ask again over TCP after a
/// truncated UDP reply), if asked for and free.
fn dns_listener(opts: &RunOptions) -> Option<std::net::TcpListener> {
    let addr = opts.dns?;
    crate::dns::bind_tcp(addr)
        .inspect_err(|e| warn!(error = %e, "no .mesh DNS over TCP on this node"))
        .ok()
}

/// A non-blocking listening socket on `addr`.
fn listen(addr: SocketAddr) -> Result<std::net::TcpListener, AppError> {
    std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| AppError::Listen { addr, source })
}

/// Like `listen`, but a missing IPv6 loopback is not an error.
fn listen_optional(addr: SocketAddr) -> Result<Option<std::net::TcpListener>, AppError> {
    match listen(addr) {
        Ok(l) => Ok(Some(l)),
        Err(AppError::Listen { source, .. })
            if source.raw_os_error() == Some(libc::EADDRNOTAVAIL) =>
        {
            warn!(%addr, "IPv6 loopback unavailable; IPv6 is not meshed on this node");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
