//! Upgrades without refusals: `mesh-agent run` for a node whose agent is
//! running takes over that agent's listening sockets instead of binding
//! its own (ARCHITECTURE.md, "Handover").
//!
//! Every running agent listens on the abstract unix socket
//! `@mesh-agent/<node>` of its network namespace ([`Offer`]). A starting
//! agent connects there ([`take`]; only root's connections are served),
//! asks, and receives duplicates of every listening socket (`SCM_RIGHTS`)
//! with their names. It starts on them (the kernel programs it adopts from
//! the pins steer to the same sockets) and, once serving, says `ready`.
//! Only then does the old agent stop accepting and drain: the listening
//! sockets never close, so no connection is refused; both accept during
//! the overlap. If the new agent dies before `ready`, the old one goes on
//! serving.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, IoSlice, IoSliceMut, Read as _, Write},
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream},
    },
    sync::Arc,
    time::Duration,
};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, getsockopt, recvmsg, sendmsg,
    sockopt::PeerCredentials,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::{
    health::{Board, InstanceReport, reports::Reports},
    names::NodeName,
};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("handover with the running agent of node {node}: {source}")]
    Io {
        node: NodeName,
        source: std::io::Error,
    },
    #[error("handover with the running agent of node {node}: {why}")]
    Protocol { node: NodeName, why: String },
}

/// What a starting agent sends first.
const ASK: &str = "mesh-handover v1";
/// What it sends once it serves on the sockets. The running agent waits
/// for it with no bound (the new agent may load its catalog from etcd):
/// only the new agent's end (its socket closes) aborts the handover.
const READY: &str = "ready";
/// Most sockets of the agent's own one handover carries (its first message).
const MAX_SOCKETS: usize = 16;
/// Most containers' sockets one further message carries (the kernel takes
/// at most 253 fds per message).
const MAX_BATCH: usize = 64;

/// A listening socket of an agent, as named in the handover manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SocketName {
    /// The outbound listener on 127.0.0.1 and on ::1.
    Out4,
    Out6,
    /// The inbound listener on 127.0.0.1 and on ::1 (sk_lookup steers to
    /// them).
    In4,
    In6,
    Admin,
    /// `<node address>:<link port>`.
    Link,
    /// `.mesh` DNS over UDP, and over TCP.
    Dns,
    DnsTcp,
}

impl SocketName {
    /// Every socket name.
    pub const ALL: [Self; 8] = [
        Self::Out4,
        Self::Out6,
        Self::In4,
        Self::In6,
        Self::Admin,
        Self::Link,
        Self::Dns,
        Self::DnsTcp,
    ];

    /// Its name in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Out4 => "out4",
            Self::Out6 => "out6",
            Self::In4 => "in4",
            Self::In6 => "in6",
            Self::Admin => "admin",
            Self::Link => "link",
            Self::Dns => "dns",
            Self::DnsTcp => "dns_tcp",
        }
    }

    /// The socket called `name` in a manifest, if this agent knows it.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for SocketName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Duplicates of `sockets`, by name, to hand over; one that cannot be
/// duplicated (out of fds) is left out, with a warning.
pub fn duplicates<'a>(
    sockets: impl IntoIterator<Item = (SocketName, BorrowedFd<'a>)>,
) -> Vec<(SocketName, OwnedFd)> {
    sockets
        .into_iter()
        .filter_map(|(name, fd)| {
            fd.try_clone_to_owned()
                .inspect_err(
                    |e| warn!(socket = %name, error = %e, "cannot keep this socket for a handover"),
                )
                .ok()
                .map(|fd| (name, fd))
        })
        .collect()
}

/// The names of the sockets that follow, in the order of their fds (as
/// words: an agent skips those it does not know), and
/// the old agent's reports on its instances (so the next one does not
/// start its checks over: critical until they run, and pass, again).
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    pid: u32,
    names: Vec<String>,
    #[serde(default)]
    reports: Vec<InstanceReport>,
    /// Its latest reports from every other node's agent.
    #[serde(default)]
    remote: Vec<Reports>,
    /// How many containers' sockets follow, in further messages of at
    /// most [`MAX_BATCH`] (each a JSON list of their names, and the fds).
    #[serde(default)]
    containers: usize,
}

/// The largest manifest sent (it goes in one message with the fds, read
/// into a 64 KiB buffer): past it the checks' outputs are left out, then
/// the other nodes' reports, then this node's.
const MAX_MANIFEST: usize = 48 * 1024;

fn address(node: &NodeName) -> std::io::Result<UnixAddr> {
    UnixAddr::from_abstract_name(format!("mesh-agent/{node}"))
}

/// Whether an agent of `node` runs in this network namespace (answers on
/// its handover socket).
pub fn running(node: &NodeName) -> bool {
    address(node).is_ok_and(|a| UnixStream::connect_addr(&a).is_ok())
}

/// Sockets received from the running agent, by name; answer with
/// [`Taken::ready`] once serving on them.
pub struct Taken {
    node: NodeName,
    stream: UnixStream,
    /// The old agent's pid.
    pub pid: u32,
    pub sockets: BTreeMap<SocketName, OwnedFd>,
    /// The old agent's reports on this node's instances, and its latest
    /// reports from the other nodes' agents.
    pub reports: Vec<InstanceReport>,
    pub remote: Vec<Reports>,
    /// The listening sockets the old agent held in containers' network
    /// namespaces (which one: ask the socket), by name.
    pub containers: Vec<(SocketName, OwnedFd)>,
}

/// Asks the running agent of `node`, if there is one in this network
/// namespace, for its listening sockets. `Ok(None)`: no agent answers.
/// Blocking: runs before the async runtime starts.
pub fn take(node: &NodeName) -> Result<Option<Taken>, HandoverError> {
    let io = |source| HandoverError::Io {
        node: node.to_owned(),
        source,
    };
    let stream = match UnixStream::connect_addr(&address(node).map_err(io)?) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let protocol = |why: String| HandoverError::Protocol {
        node: node.to_owned(),
        why,
    };
    // Abstract names have no permissions: only root's sockets are trusted.
    let owner = getsockopt(&stream, PeerCredentials).map_err(|e| io(e.into()))?;
    if owner.uid() != 0 {
        return Err(protocol(format!(
            "its handover socket is held by uid {} (pid {}), not root: refusing it",
            owner.uid(),
            owner.pid()
        )));
    }
    receive(node, stream).map(Some)
}

/// Asks the running agent of `node` on `stream` for its sockets and takes
/// them with its manifest.
fn receive(node: &NodeName, stream: UnixStream) -> Result<Taken, HandoverError> {
    let io = |source| HandoverError::Io {
        node: node.to_owned(),
        source,
    };
    let protocol = |why: String| HandoverError::Protocol {
        node: node.to_owned(),
        why,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    (&stream)
        .write_all(format!("{ASK}\n").as_bytes())
        .map_err(io)?;
    let mut buf = vec![0u8; 64 * 1024];
    let (len, fds) = receive_one::<MAX_SOCKETS>(&stream, &mut buf).map_err(|e| match e {
        Received::Io(e) => io(e),
        Received::Truncated => protocol("more sockets than expected".to_owned()),
    })?;
    let manifest: Manifest =
        serde_json::from_slice(&buf[..len]).map_err(|e| protocol(format!("bad manifest: {e}")))?;
    if manifest.names.len() != fds.len() {
        return Err(protocol(format!(
            "{} names for {} sockets",
            manifest.names.len(),
            fds.len()
        )));
    }
    let mut containers = Vec::new();
    let mut left = manifest.containers;
    while left > 0 {
        let (len, fds) = receive_one::<MAX_BATCH>(&stream, &mut buf).map_err(|e| match e {
            Received::Io(e) => io(e),
            Received::Truncated => protocol("more container sockets than expected".to_owned()),
        })?;
        let names: Vec<String> = serde_json::from_slice(&buf[..len])
            .map_err(|e| protocol(format!("bad list of container sockets: {e}")))?;
        if names.len() != fds.len() || names.is_empty() || names.len() > left {
            return Err(protocol(format!(
                "{} names for {} container sockets ({left} announced)",
                names.len(),
                fds.len()
            )));
        }
        left -= names.len();
        containers.extend(known(names, fds));
    }
    Ok(Taken {
        node: node.to_owned(),
        stream,
        pid: manifest.pid,
        sockets: known(manifest.names, fds).into_iter().collect(),
        reports: manifest.reports,
        remote: manifest.remote,
        containers,
    })
}

/// Why a message of the handover was not received.
enum Received {
    Io(std::io::Error),
    /// It carried more than `N` fds.
    Truncated,
}

/// One message on `stream` into `buf`, with at most `N` fds: its length
/// and the fds.
fn receive_one<const N: usize>(
    stream: &UnixStream,
    buf: &mut [u8],
) -> Result<(usize, Vec<OwnedFd>), Received> {
    let mut space = nix::cmsg_space!([RawFd; N]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| Received::Io(e.into()))?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(|e| Received::Io(e.into()))? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just installed these fds in this process
            // for us; nothing else owns them.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(Received::Truncated);
    }
    Ok((msg.bytes, fds))
}

/// The sockets whose names this agent knows; the others are closed.
fn known(names: Vec<String>, fds: Vec<OwnedFd>) -> Vec<(SocketName, OwnedFd)> {
    names
        .into_iter()
        .zip(fds)
        .filter_map(|(name, fd)| match SocketName::parse(&name) {
            Some(socket) => Some((socket, fd)),
            None => {
                warn!(socket = %name, "the running agent handed a socket this one does not know: closed");
                None
            }
        })
        .collect()
}

impl Taken {
    /// Tells the old agent this one serves: it stops accepting and drains.
    pub fn ready(self) -> Result<(), HandoverError> {
        (&self.stream)
            .write_all(format!("{READY}\n").as_bytes())
            .map_err(|source| HandoverError::Io {
                node: self.node.clone(),
                source,
            })
    }
}

/// The running agent's side: hands its sockets to the next agent of its
/// node. See the module docs.
pub struct Offer {
    node: NodeName,
    /// Duplicates of the listening sockets, by name.
    sockets: Arc<Vec<(SocketName, OwnedFd)>>,
    /// Duplicates of the containers' listening sockets at the moment of a
    /// handover (they come and go).
    containers: Arc<dyn Fn() -> Vec<(SocketName, OwnedFd)> + Send + Sync>,
    /// What is known of every instance's health, handed over with the
    /// sockets.
    board: Arc<Board>,
    /// Told once a new agent is ready on the sockets.
    pub handed: Arc<Notify>,
}

impl Offer {
    pub fn new(node: &NodeName, sockets: Vec<(SocketName, OwnedFd)>, board: Arc<Board>) -> Self {
        Self {
            node: node.to_owned(),
            sockets: Arc::new(sockets),
            containers: Arc::new(Vec::new),
            board,
            handed: Arc::new(Notify::new()),
        }
    }

    /// Hands over, besides the agent's own sockets, what `containers`
    /// gives at that moment: the containers' listening sockets.
    pub fn with_containers(
        mut self,
        containers: impl Fn() -> Vec<(SocketName, OwnedFd)> + Send + Sync + 'static,
    ) -> Self {
        self.containers = Arc::new(containers);
        self
    }

    /// Listens for the next agent of the node and hands over to the first
    /// that gets ready, then returns (telling [`Offer::handed`]). While it
    /// hands over, `kernel` does not write the maps (the next agent does);
    /// a handover that fails writes them again. Binding waits while the
    /// previous agent still holds the name (it lets go once this one said
    /// ready).
    pub async fn serve(self, kernel: Arc<crate::ebpf::Kernel>) {
        let mut waited = 0u32;
        let listener = loop {
            match address(&self.node).and_then(|a| UnixListener::bind_addr(&a)) {
                Ok(l) => break l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    waited += 1;
                    if waited == 100 {
                        warn!(
                            "the handover socket is still held by another process after 10 s: an upgrade of this agent waits for it"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    warn!(error = %e, "no handover socket: an upgrade of this agent will refuse to start while it runs");
                    return;
                }
            }
        };
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixListener::from_std(listener))
        {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "no handover socket");
                return;
            }
        };
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "handover socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match self.hand(stream, &kernel).await {
                Ok(pid) => {
                    info!(
                        new_agent = pid,
                        "handed the listening sockets over: stopping"
                    );
                    self.handed.notify_one();
                    return;
                }
                Err(why) => {
                    warn!(%why, "handover aborted: serving on");
                    if let Err(e) = kernel.thaw() {
                        warn!(error = %e, "could not rewrite the kernel maps after the aborted handover");
                    }
                }
            }
        }
    }

    /// One handover: checks the peer is root, sends the sockets, waits for
    /// `ready`. Returns the new agent's pid.
    async fn hand(
        &self,
        stream: tokio::net::UnixStream,
        kernel: &Arc<crate::ebpf::Kernel>,
    ) -> Result<u32, String> {
        let creds = getsockopt(&stream, PeerCredentials).map_err(|e| e.to_string())?;
        if creds.uid() != 0 {
            return Err(format!("uid {} may not take over", creds.uid()));
        }
        let pid = u32::try_from(creds.pid()).unwrap_or(0);
        let stream = stream.into_std().map_err(|e| e.to_string())?;
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        // Owned by the blocking task too: an abort of this one (SIGTERM)
        // cannot close them under it.
        let sockets = self.sockets.clone();
        let containers = (self.containers)();
        let kernel = kernel.clone();
        let health = self.board.handover();
        tokio::task::spawn_blocking(move || {
            hand_blocking(stream, &sockets, &containers, health, || kernel.freeze()).map(|()| pid)
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// The blocking part of [`Offer::hand`]; `freeze` stops this agent's map
/// writes (`Kernel::freeze`) just before the sockets go.
fn hand_blocking(
    stream: UnixStream,
    sockets: &[(SocketName, OwnedFd)],
    containers: &[(SocketName, OwnedFd)],
    health: (Vec<InstanceReport>, Vec<Reports>),
    freeze: impl FnOnce(),
) -> Result<(), String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    read_line(&mut reader, &mut line)?;
    if line.trim_end() != ASK {
        return Err(format!("unexpected request {:?}", line.trim_end()));
    }
    let names = sockets.iter().map(|(n, _)| n.as_str().to_owned()).collect();
    let body = manifest(names, health, containers.len())?;
    // From here on the next agent writes the maps.
    freeze();
    send_one(&stream, &body, sockets)?;
    for batch in containers.chunks(MAX_BATCH) {
        let names: Vec<&str> = batch.iter().map(|(n, _)| n.as_str()).collect();
        let body = serde_json::to_vec(&names).map_err(|e| e.to_string())?;
        send_one(&stream, &body, batch)?;
    }
    stream.set_read_timeout(None).map_err(|e| e.to_string())?;
    line.clear();
    read_line(&mut reader, &mut line)?;
    if line.trim_end() != READY {
        return Err(format!(
            "the new agent stopped before it was ready (it said {:?})",
            line.trim_end()
        ));
    }
    Ok(())
}

/// One message: `body`, and `sockets` as `SCM_RIGHTS`.
fn send_one(
    stream: &UnixStream,
    body: &[u8],
    sockets: &[(SocketName, OwnedFd)],
) -> Result<(), String> {
    let fds: Vec<RawFd> = sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(body)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map(drop)
    .map_err(|e| e.to_string())
}

/// The manifest of this agent's sockets `names` and what it knows of
/// health, as sent: at most [`MAX_MANIFEST`] bytes (see there).
fn manifest(
    names: Vec<String>,
    (mut reports, mut remote): (Vec<InstanceReport>, Vec<Reports>),
    containers: usize,
) -> Result<Vec<u8>, String> {
    let encode = |reports: &[InstanceReport], remote: &[Reports]| {
        let manifest = Manifest {
            pid: std::process::id(),
            names: names.clone(),
            reports: reports.to_vec(),
            remote: remote.to_vec(),
            containers,
        };
        serde_json::to_vec(&manifest).map_err(|e| e.to_string())
    };
    let body = encode(&reports, &remote)?;
    if body.len() <= MAX_MANIFEST {
        return Ok(body);
    }
    let checks = reports
        .iter_mut()
        .chain(remote.iter_mut().flat_map(|r| r.instances.iter_mut()))
        .flat_map(|r| r.checks.iter_mut());
    for check in checks {
        check.output.clear();
    }
    for (reports, remote) in [(&reports[..], &remote[..]), (&reports[..], &[][..])] {
        let body = encode(reports, remote)?;
        if body.len() <= MAX_MANIFEST {
            return Ok(body);
        }
    }
    warn!("too many instances to hand their health over: the next agent learns it anew");
    encode(&[], &[])
}

/// The longest line either side sends.
const MAX_LINE: u64 = 64;

/// One line of at most [`MAX_LINE`] bytes (a peer that sends more without
/// a newline is cut off there, not buffered without end).
fn read_line(reader: &mut impl BufRead, line: &mut String) -> Result<(), String> {
    reader
        .take(MAX_LINE)
        .read_line(line)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::{
        net::TcpListener,
        os::fd::AsFd,
        sync::atomic::{AtomicBool, Ordering},
        thread::JoinHandle,
    };

    use super::*;
    use crate::health::{CheckReport, State};

    /// The running agent's side of one handover on `stream`, in a thread:
    /// hands over a duplicate of `listener` as `out4`, and `health`.
    /// Its verdict, and whether it froze the maps.
    fn hand_in_thread(
        stream: UnixStream,
        listener: &TcpListener,
        health: (Vec<InstanceReport>, Vec<Reports>),
    ) -> JoinHandle<(Result<(), String>, bool)> {
        let fd = listener.as_fd().try_clone_to_owned().unwrap();
        std::thread::spawn(move || {
            let frozen = AtomicBool::new(false);
            let sockets = [(SocketName::Out4, fd)];
            let verdict = hand_blocking(stream, &sockets, &[], health, || {
                frozen.store(true, Ordering::SeqCst);
            });
            (verdict, frozen.load(Ordering::SeqCst))
        })
    }

    fn report(service: &str, output: &str) -> InstanceReport {
        InstanceReport::of(
            service,
            vec![CheckReport {
                name: "tcp".to_owned(),
                state: State::Passing,
                output: output.to_owned(),
                since: None,
            }],
        )
    }

    #[test]
    fn the_sockets_and_reports_go_over_and_ready_ends_the_handover() {
        let (new, old) = UnixStream::pair().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let remote = Reports {
            node: "b".to_owned(),
            instances: vec![report("api", "ok")],
            news: None,
        };
        let health = (vec![report("web", "200 OK")], vec![remote.clone()]);
        let old = hand_in_thread(old, &listener, health);
        let taken = receive(&"a".parse().unwrap(), new).unwrap();
        assert_eq!(taken.pid, std::process::id());
        assert_eq!(taken.reports, [report("web", "200 OK")]);
        assert_eq!(
            (taken.remote.len(), taken.remote[0].instances.clone()),
            (1, remote.instances)
        );
        // The very socket, not a copy of its address.
        let names: Vec<&SocketName> = taken.sockets.keys().collect();
        assert_eq!(names, [&SocketName::Out4]);
        let received = TcpListener::from(taken.sockets[&SocketName::Out4].try_clone().unwrap());
        assert_eq!(
            received.local_addr().unwrap(),
            listener.local_addr().unwrap()
        );
        taken.ready().unwrap();
        assert_eq!(old.join().unwrap(), (Ok(()), true));
    }

    #[test]
    fn containers_sockets_follow_in_batches() {
        let (new, old) = UnixStream::pair().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = || listener.as_fd().try_clone_to_owned().unwrap();
        // More than one batch, and a name this agent does not know.
        let n = MAX_BATCH + 6;
        let names = [
            SocketName::Out4,
            SocketName::Out6,
            SocketName::Dns,
            SocketName::DnsTcp,
        ];
        let containers: Vec<(SocketName, OwnedFd)> =
            (0..n).map(|i| (names[i % names.len()], fd())).collect();
        let own = [(SocketName::In4, fd())];
        let old = std::thread::spawn(move || {
            hand_blocking(old, &own, &containers, (Vec::new(), Vec::new()), || {})
        });
        let taken = receive(&"a".parse().unwrap(), new).unwrap();
        assert_eq!(taken.sockets.len(), 1);
        assert_eq!(taken.containers.len(), n);
        let got: Vec<SocketName> = taken.containers.iter().map(|(n, _)| *n).collect();
        let want: Vec<SocketName> = (0..n).map(|i| names[i % names.len()]).collect();
        assert_eq!(got, want);
        let received = TcpListener::from(taken.containers[n - 1].1.try_clone().unwrap());
        assert_eq!(
            received.local_addr().unwrap(),
            listener.local_addr().unwrap()
        );
        taken.ready().unwrap();
        assert_eq!(old.join().unwrap(), Ok(()));
    }

    #[test]
    fn a_new_agent_that_ends_before_ready_aborts_the_handover() {
        let (new, old) = UnixStream::pair().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let old = hand_in_thread(old, &listener, Default::default());
        drop(receive(&"a".parse().unwrap(), new).unwrap());
        let (verdict, frozen) = old.join().unwrap();
        // Frozen when the sockets went: the caller thaws on the error.
        assert!(frozen);
        assert!(verdict.unwrap_err().contains("stopped before it was ready"));
    }

    /// What the running agent says to `request`, a refused one: its
    /// verdict, whether it froze, and what the asking side received.
    fn answer_to(request: &[u8]) -> (Result<(), String>, bool, Vec<u8>) {
        let (mut new, old) = UnixStream::pair().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let old = hand_in_thread(old, &listener, Default::default());
        // It may stop reading (and close) before all is written.
        let _ = new.write_all(request);
        new.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        // Its end closed with the request unread: a reset, or the end.
        if let Err(e) = new.read_to_end(&mut got) {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        }
        let (verdict, frozen) = old.join().unwrap();
        (verdict, frozen, got)
    }

    #[test]
    fn a_request_that_is_not_the_ask_line_gets_nothing() {
        let padded: Vec<u8> = [b' '; 60]
            .iter()
            .chain(b"mesh-handover v1\n")
            .copied()
            .collect();
        for request in [
            &b"GET / HTTP/1.1\n"[..],
            b"mesh-handover v2\n",
            // The right words, not at the start of the line.
            &padded,
            // 64 KiB with no newline: cut at 64 bytes, not buffered.
            &[b'x'; 64 * 1024],
        ] {
            let (verdict, frozen, got) = answer_to(request);
            let text = String::from_utf8_lossy(&request[..request.len().min(20)]);
            assert!(
                verdict
                    .as_ref()
                    .is_err_and(|e| e.contains("unexpected request")),
                "{text}: {verdict:?}"
            );
            assert!(!frozen && got.is_empty(), "{text}");
        }
    }

    /// What [`receive`] makes of a running agent's `body` with `fds`.
    fn received(body: &[u8], fds: &[RawFd]) -> Result<Taken, HandoverError> {
        let (new, old) = UnixStream::pair().unwrap();
        sendmsg::<()>(
            old.as_raw_fd(),
            &[IoSlice::new(body)],
            &[ControlMessage::ScmRights(fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        receive(&"a".parse().unwrap(), new)
    }

    #[test]
    fn a_manifest_that_does_not_decode_or_match_its_sockets_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = [listener.as_raw_fd()];
        let why = |r: Result<Taken, HandoverError>| match r {
            Err(HandoverError::Protocol { why, .. }) => why,
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("taken"),
        };
        assert!(why(received(b"not json", &fd)).starts_with("bad manifest"));
        let two = br#"{"pid":1,"names":["out4","in4"]}"#;
        assert_eq!(why(received(two, &fd)), "2 names for 1 sockets");
        let one = br#"{"pid":7,"names":["out4"]}"#;
        let taken = received(one, &fd).unwrap();
        // Reports are optional (an agent without checks).
        assert_eq!((taken.pid, taken.reports.len()), (7, 0));
        // More than it has room for: refused (nix reports the cut control
        // message as ENOBUFS before `MSG_CTRUNC` is looked at).
        let many = [listener.as_raw_fd(); MAX_SOCKETS + 1];
        assert!(received(one, &many).is_err());
    }

    #[test]
    fn a_large_manifest_sheds_outputs_then_reports_to_fit() {
        let names = vec!["out4".to_owned()];
        let decode = |body: Vec<u8>| -> Manifest {
            assert!(body.len() <= MAX_MANIFEST, "{}", body.len());
            serde_json::from_slice(&body).unwrap()
        };
        let small = || vec![report("web", "200 OK")];
        let m = decode(manifest(names.clone(), (small(), Vec::new()), 0).unwrap());
        assert_eq!(m.reports, small());
        // Long outputs: the reports go without them.
        let long = vec![report("web", &"x".repeat(MAX_MANIFEST))];
        let m = decode(manifest(names.clone(), (long, Vec::new()), 0).unwrap());
        assert_eq!(m.reports, [report("web", "")]);
        // Too many other nodes' reports: this node's still go, without
        // outputs (they were shed first).
        let remote: Vec<Reports> = (0..2000)
            .map(|i| Reports {
                node: format!("node-{i}"),
                instances: vec![report("api", "")],
                news: None,
            })
            .collect();
        let m = decode(manifest(names.clone(), (small(), remote), 0).unwrap());
        assert_eq!((m.reports, m.remote.len()), (vec![report("web", "")], 0));
        // Too many of this node's: none.
        let local: Vec<InstanceReport> = (0..2000).map(|i| report(&format!("s{i}"), "")).collect();
        let m = decode(manifest(names, (local, Vec::new()), 0).unwrap());
        assert!(m.reports.is_empty() && m.names == ["out4"]);
    }

    #[test]
    fn socket_names_read_back_and_unknown_ones_are_closed() {
        for socket in SocketName::ALL {
            assert_eq!(SocketName::parse(socket.as_str()), Some(socket));
        }
        assert_eq!(SocketName::parse("outbound-v4"), None);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = || listener.as_fd().try_clone_to_owned().unwrap();
        let got = known(
            vec!["in4".to_owned(), "future".to_owned()],
            vec![fd(), fd()],
        );
        let names: Vec<SocketName> = got.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, [SocketName::In4]);
    }
}
