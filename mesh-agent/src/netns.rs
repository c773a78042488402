//! Network namespaces other than the agent's: those of containers (see
//! `containers`). A socket stays in the namespace it was made in, so the
//! agent only ever enters one to make a socket, on a thread of its own
//! ([`Netns::socket`]); binding, listening and connecting then happen from
//! anywhere.

use std::{
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    sync::{OnceLock, mpsc},
};

use nix::{
    sched::{CloneFlags, setns},
    sys::socket::{AddressFamily, SockFlag, SockType, socket},
};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace of process {pid}: {source}")]
    Open { pid: u32, source: io::Error },
    #[error("network namespace {inode}: failed to make a socket in it: {source}")]
    Socket { inode: u64, source: io::Error },
    #[error("failed to read a socket's network namespace cookie: {0}")]
    Cookie(io::Error),
    #[error("network namespace {inode}: failed to bring its loopback up: {source}")]
    Loopback { inode: u64, source: io::Error },
}

/// A network namespace, held open (it lives while this does).
#[derive(Debug)]
pub struct Netns {
    file: File,
    /// Its inode in nsfs: what `/proc/<pid>/ns/net` of its processes stat to.
    pub inode: u64,
}

impl Netns {
    /// The network namespace of process `pid`.
    pub fn of_pid(pid: u32) -> Result<Self, NetnsError> {
        let path = format!("/proc/{pid}/ns/net");
        let open = || -> io::Result<Self> {
            let file = File::open(&path)?;
            let inode = file.metadata()?.ino();
            Ok(Self { file, inode })
        };
        open().map_err(|source| NetnsError::Open { pid, source })
    }

    /// The network namespace `socket` lives in (`SIOCGSKNS`).
    pub fn of_socket(socket: &impl AsRawFd) -> io::Result<Self> {
        // SAFETY: SIOCGSKNS takes no argument and returns a new fd (or -1).
        let fd = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCGSKNS) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        let file = File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        let inode = file.metadata()?.ino();
        Ok(Self { file, inode })
    }

    /// A TCP (`stream`) or UDP socket of `family` in this namespace,
    /// non-blocking and close-on-exec.
    pub async fn socket(&self, family: AddressFamily, stream: bool) -> Result<OwnedFd, NetnsError> {
        let ns = self
            .file
            .try_clone()
            .map_err(|source| self.socket_error(source))?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            ns,
            family,
            kind: if stream {
                SockType::Stream
            } else {
                SockType::Datagram
            },
            reply,
        };
        let sent = worker().send(job).is_ok();
        let made = match answer.await {
            Ok(made) if sent => made,
            _ => Err(io::Error::other("the namespace thread is gone")),
        };
        made.map_err(|source| self.socket_error(source))
    }

    /// Sets the namespace's `lo` up if it is down (a bare `unshare --net`
    /// leaves it down; container runtimes set it up). Returns whether it
    /// was down.
    pub async fn loopback_up(&self) -> Result<bool, NetnsError> {
        let socket = self.socket(AddressFamily::Inet, false).await?;
        set_up(&socket, c"lo").map_err(|source| NetnsError::Loopback {
            inode: self.inode,
            source,
        })
    }

    fn socket_error(&self, source: io::Error) -> NetnsError {
        NetnsError::Socket {
            inode: self.inode,
            source,
        }
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The inode of the network namespace of process `pid`, without opening it.
pub fn inode_of_pid(pid: u32) -> io::Result<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino())
}

/// The cookie of the network namespace `socket` lives in: what
/// `bpf_get_netns_cookie` gives the programs for its sockets.
pub fn cookie(socket: &impl AsRawFd) -> Result<u64, NetnsError> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes given, and
    // the fd is an open socket for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(NetnsError::Cookie(io::Error::last_os_error()));
    }
    Ok(cookie)
}

/// `SIOCGSKNS` (linux/sockios.h): the network namespace of a socket, as an fd.
const SIOCGSKNS: libc::c_ulong = 0x894C;

/// Sets interface `name` of `socket`'s namespace up, if it is not.
fn set_up(socket: &impl AsRawFd, name: &std::ffi::CStr) -> io::Result<bool> {
    // SAFETY: `ifreq` is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.to_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of `req`,
    // which lives for the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let up = libc::IFF_UP as libc::c_short;
    if flags & up != 0 {
        return Ok(false);
    }
    req.ifr_ifru.ifru_flags = flags | up;
    // SAFETY: as above; SIOCSIFFLAGS reads `req`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &raw const req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

/// One socket to make in namespace `ns`.
struct Job {
    ns: File,
    family: AddressFamily,
    kind: SockType,
    reply: tokio::sync::oneshot::Sender<io::Result<OwnedFd>>,
}

/// The thread that makes sockets in other namespaces: it enters each job's
/// namespace (`setns` moves only the calling thread), so no thread of the
/// runtime ever leaves the agent's.
fn worker() -> &'static mpsc::Sender<Job> {
    static WORKER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    WORKER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        // Should the thread not start, `rx` is dropped with the closure and
        // every job fails: "the namespace thread is gone".
        let spawned = std::thread::Builder::new()
            .name("mesh-netns".into())
            .spawn(move || {
                for job in rx {
                    let made = setns(job.ns.as_fd(), CloneFlags::CLONE_NEWNET)
                        .and_then(|()| {
                            socket(
                                job.family,
                                job.kind,
                                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                                None,
                            )
                        })
                        .map_err(io::Error::from);
                    let _ = job.reply.send(made);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "failed to start the thread that makes sockets in containers");
        }
        tx
    })
}
