//! The health exchange between agents (ARCHITECTURE.md, "Health").
//!
//! Every agent listens on `<its node address>:<link port>` and every agent
//! follows every other one: it connects there over mTLS with agent
//! identities (`tls::link`), and the followed agent sends its reports on
//! its own instances as one JSON line ([`Reports`]) at once and after each
//! change, and an empty line every [`HEARTBEAT`] in between. A follower
//! that hears nothing for [`SILENCE`], or loses the connection, or cannot
//! connect, marks the node unreachable on its [`Board`] (its instances are
//! critical) and connects again every [`RETRY`]. A node never reached is
//! marked unreachable [`FIRST_CONTACT`] after the follower started, so
//! agents of a mesh starting one after another do not see each other as
//! down (until then its instances count as what the config says, and a
//! call to one that is down fails over).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::AbortHandle,
    time::Instant,
};
use tracing::{debug, info, warn};

use super::{
    Board,
    reports::{LocalReports, Reports},
};
use crate::{config::Config, names::NodeName, peers::Peers, snapshot::Watch, tls::link::Link};

/// Between two lines from a followed agent, at most.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// Silence after which a followed agent counts as unreachable.
pub const SILENCE: Duration = Duration::from_secs(2);
/// Between two attempts to reach an agent.
pub const RETRY: Duration = Duration::from_millis(250);
/// How long a follower may take to reach an agent the first time.
pub const FIRST_CONTACT: Duration = Duration::from_secs(10);
/// Bound on one dial.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest report line accepted (a node with thousands of instances
/// and long check outputs stays far below).
const MAX_LINE: usize = 4 << 20;

/// The followed side: sends `node`'s reports on `out` as they change, with
/// heartbeats, until writing fails or the reports are gone. A heartbeat
/// is a full line instead when this agent's news (`peers`) changed.
pub async fn send_reports<W: AsyncWrite + Unpin>(
    mut out: W,
    node: &NodeName,
    mut reports: watch::Receiver<LocalReports>,
    peers: &Peers,
) -> std::io::Result<()> {
    loop {
        let current = reports.borrow_and_update().clone();
        let news = peers.news();
        let line = Reports {
            node: node.to_string(),
            instances: current.as_ref().clone(),
            news: Some(news.clone()),
        };
        let mut bytes = serde_json::to_vec(&line)?;
        bytes.push(b'\n');
        out.write_all(&bytes).await?;
        out.flush().await?;
        loop {
            tokio::select! {
                changed = reports.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    break;
                }
                () = tokio::time::sleep(HEARTBEAT) => {
                    if peers.news() != news {
                        break;
                    }
                    out.write_all(b"\n").await?;
                    out.flush().await?;
                }
            }
        }
    }
}

/// Why a link ended.
#[derive(Debug)]
pub struct Ended {
    pub why: String,
    /// It ended because the followed agent said nothing for [`SILENCE`].
    pub silent: bool,
}

/// The following side: hands each report line of `node` read from `input`
/// to `board`, until the stream ends, fails, is silent for [`SILENCE`] or
/// sends something that is not a report of `node`. Every line counts as
/// `node` heard in `peers`, with the news it carries. Returns why it ended.
pub async fn follow_reports<R: AsyncRead + Unpin>(
    input: R,
    node: &NodeName,
    board: &Board,
    peers: &Peers,
) -> Ended {
    let mut input = BufReader::new(input);
    let ended = |why: String| Ended { why, silent: false };
    loop {
        match tokio::time::timeout(SILENCE, read_line(&mut input)).await {
            Err(_) => {
                return Ended {
                    why: format!("no word for {SILENCE:?}"),
                    silent: true,
                };
            }
            Ok(Ok(None)) => return ended("connection closed".to_owned()),
            Ok(Err(e)) => return ended(e.to_string()),
            Ok(Ok(Some(line))) if line.iter().all(u8::is_ascii_whitespace) => {
                peers.heard(node, None);
            }
            Ok(Ok(Some(line))) => match serde_json::from_slice::<Reports>(&line) {
                Ok(reports) if *node == reports.node => {
                    peers.heard(node, reports.news);
                    board.remote(node, reports.instances);
                }
                Ok(reports) => {
                    return ended(format!("sent reports of node {:?}", reports.node));
                }
                Err(e) => return ended(format!("sent a bad report: {e}")),
            },
        }
    }
}

/// Links open at once on the listener, at most: a node's agents need one
/// each; the rest is closed at once.
const MAX_FOLLOWERS: usize = 1024;
/// Links from one address at once, at most: one agent follows once (a
/// second while its old link is not yet seen closed). Together with
/// refusing addresses that are not nodes, no one can take the slots that
/// the mesh's agents need, which would make this node look down.
const MAX_PER_SOURCE: usize = 4;

/// This agent's side of the exchange: who follows it (`serve`), and whom
/// it follows (one task per other node of the catalog, `sync`).
pub struct Links {
    node: NodeName,
    link: Arc<Link>,
    board: Arc<Board>,
    /// What this agent tells and hears besides health.
    peers: Arc<Peers>,
    port: u16,
    /// Who may open a link to this agent.
    followers: Followers,
    /// Per followed node: the address followed and its task.
    following: Mutex<HashMap<NodeName, (SocketAddr, AbortHandle)>>,
    /// The revoked nodes (`Config::is_banned`): not followed, and the links
    /// they follow are cut.
    banned: tokio::sync::watch::Sender<Arc<std::collections::HashSet<NodeName>>>,
}

impl Links {
    /// The exchange of the agent of `node`, following other agents on
    /// `port` through `link`, with what it learns going to `board`; with
    /// `nodes_only`, only the node addresses of its config may follow it.
    pub fn new(
        node: &NodeName,
        link: Arc<Link>,
        board: Arc<Board>,
        peers: Arc<Peers>,
        port: u16,
        nodes_only: Option<Watch>,
    ) -> Arc<Self> {
        Arc::new(Self {
            node: node.clone(),
            link,
            board,
            peers,
            port,
            followers: Followers {
                nodes_only,
                per_source: Arc::default(),
            },
            following: Mutex::default(),
            banned: tokio::sync::watch::Sender::new(Arc::default()),
        })
    }

    /// Follows the agent of every other node of `config`: starts following
    /// the new ones, stops following those that left or moved.
    /// A revoked node is not followed (its instances are unreachable), and
    /// the link it follows is cut.
    pub fn sync(self: &Arc<Self>, config: &Config) {
        let banned: std::collections::HashSet<NodeName> = config
            .nodes
            .iter()
            .filter(|n| config.is_banned(&n.name))
            .map(|n| n.name.clone())
            .collect();
        for node in &banned {
            self.board
                .unreachable(node, format!("node {node} is revoked"));
        }
        self.banned.send_if_modified(|now| {
            let changed = **now != banned;
            if changed {
                *now = Arc::new(banned.clone());
            }
            changed
        });
        let mut following = self.following.lock().unwrap_or_else(|e| e.into_inner());
        let want: HashMap<NodeName, SocketAddr> = config
            .nodes
            .iter()
            .filter(|n| n.name != self.node && !banned.contains(&n.name))
            .map(|n| (n.name.clone(), SocketAddr::new(n.address, self.port)))
            .collect();
        following.retain(|node, (addr, task)| {
            let keep = want.get(node) == Some(addr);
            if !keep {
                task.abort();
            }
            keep
        });
        for (node, addr) in want {
            if following.contains_key(&node) {
                continue;
            }
            let task = tokio::spawn(self.clone().follow(node.clone(), addr));
            following.insert(node, (addr, task.abort_handle()));
        }
    }

    /// Stops following.
    pub fn stop(&self) {
        let mut following = self.following.lock().unwrap_or_else(|e| e.into_inner());
        for (_, (_, task)) in following.drain() {
            task.abort();
        }
    }

    /// Follows the agent of `node` at `addr` until aborted (module docs).
    ///
    /// A link that closed after serving (however briefly: this agent may
    /// have started just before) is dialed again at once, before the node
    /// counts as unreachable: an agent handing over to a newer one closes
    /// its links as it exits, and the newer one answers on the same
    /// listening socket. Only if that dial fails (a dead agent's port
    /// refuses at once) or that link closes too is the node unreachable
    /// (so a peer that closes every link is redialed at once only every
    /// other time). A silent link is not redialed first: the node was
    /// silent for [`SILENCE`] already.
    async fn follow(self: Arc<Self>, node: NodeName, addr: SocketAddr) {
        let started = Instant::now();
        let mut reached = false;
        let mut redialing = false;
        loop {
            let mut served = None;
            let why = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
                Err(_) => format!("no answer from {addr} within {DIAL_TIMEOUT:?}"),
                Ok(Err(e)) => format!("{addr}: {e}"),
                Ok(Ok(tcp)) => match self.link.connect(tcp, &node).await {
                    Err(e) => format!("{addr}: {e}"),
                    Ok(tls) => {
                        if !reached {
                            info!(%node, %addr, "following the agent of node");
                        }
                        reached = true;
                        let linked = Instant::now();
                        let ended = follow_reports(tls, &node, &self.board, &self.peers).await;
                        served = Some((linked.elapsed(), ended.silent));
                        ended.why
                    }
                },
            };
            let closed_after_serving = matches!(served, Some((_, false)));
            if closed_after_serving && !redialing {
                debug!(%node, %addr, %why, "link closed; dialing again before counting the node unreachable");
                redialing = true;
                continue;
            }
            redialing = false;
            if reached || started.elapsed() >= FIRST_CONTACT {
                self.board.unreachable(&node, why);
            } else {
                debug!(%node, %addr, %why, "agent not reached yet");
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Sends this node's reports to each agent that follows it, until the
    /// task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_FOLLOWERS));
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "link accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(source) = self.followers.admit(peer.ip()) else {
                debug!(%peer, "link refused: not a node, or too many from it");
                continue; // closed at once, before any TLS
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue; // full: closed at once
            };
            let this = self.clone();
            tokio::spawn(async move {
                let _slots = (slot, source);
                let (tls, follower) = match this.link.accept(tcp).await {
                    Ok(x) => x,
                    Err(e) => {
                        debug!(%peer, error = %e, "link refused");
                        return;
                    }
                };
                debug!(%peer, %follower, "followed by the agent of node");
                let mut banned = this.banned.subscribe();
                tokio::select! {
                    ended = send_reports(tls, &this.node, this.board.local_reports(), &this.peers) => {
                        debug!(%peer, %follower, ?ended, "no longer followed");
                    }
                    _ = banned.wait_for(|b| b.contains(&follower)) => {
                        info!(%peer, %follower, "link cut: node is revoked");
                    }
                }
            });
        }
    }
}

/// Who may open a link to this agent.
struct Followers {
    /// The config's node addresses, when only they may follow this agent
    /// (`--inbound-sources nodes`); `None`: anyone may try (TLS still
    /// admits only the agents of catalog nodes).
    nodes_only: Option<Watch>,
    /// Open links per source address.
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Followers {
    /// A slot for a link from `peer`, if it may have one: from a node
    /// address (when `nodes_only`), and fewer than [`MAX_PER_SOURCE`] from
    /// it already.
    fn admit(&self, peer: IpAddr) -> Option<SourceSlot> {
        let peer = peer.to_canonical();
        if let Some(snapshot) = &self.nodes_only {
            let config = snapshot.borrow().config.clone();
            if !config
                .nodes
                .iter()
                .any(|n| n.address.to_canonical() == peer)
            {
                return None;
            }
        }
        let mut counts = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(peer).or_default();
        if *n >= MAX_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            peer,
            counts: self.per_source.clone(),
        })
    }
}

/// One open link from `peer`, counted until dropped.
struct SourceSlot {
    peer: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

/// The link listener of a node whose address is `address`: on that
/// address, or, where it is not local (a node behind NAT), on the
/// unspecified address of its family.
pub fn listen(address: IpAddr, port: u16) -> std::io::Result<std::net::TcpListener> {
    let bind = |ip: IpAddr| {
        let l = std::net::TcpListener::bind(SocketAddr::new(ip, port))?;
        l.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(l)
    };
    match bind(address) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
            let any = match address {
                IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            };
            warn!(%address, port, "the node address is not local: links listen on all addresses");
            bind(any)
        }
        other => other,
    }
}

/// The next line of `input` (without its newline), `None` at the end.
/// Not cancel safe: a caller that gives up on it drops the stream.
async fn read_line<R: AsyncRead + Unpin>(
    input: &mut BufReader<R>,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let limit = u64::try_from(MAX_LINE)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let n = (&mut *input)
        .take(limit)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(Some(line));
    }
    if line.len() > MAX_LINE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a line longer than {MAX_LINE} bytes"),
        ));
    }
    // The last line, without a newline: the stream ended.
    Ok(Some(line))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{CheckReport, InstanceReport, State};

    use crate::health::board::tests::{board, state};

    fn report(state: State) -> LocalReports {
        let check = CheckReport {
            name: "c".into(),
            state,
            output: String::new(),
            since: None,
        };
        Arc::new(vec![InstanceReport::of("api", vec![check])])
    }

    #[tokio::test(start_paused = true)]
    async fn reports_flow_and_silence_ends_the_follow() {
        let (board, watch, _) = board(Vec::new());
        let (tx, rx) = watch::channel(report(State::Warning));
        let (theirs, ours) = tokio::io::duplex(1 << 16);
        // b's traffic, and what this agent hears of b.
        let traffic = Arc::new(crate::telemetry::Telemetry::default());
        let news = Peers::new(traffic.clone(), None);
        let heard = Peers::new(Arc::default(), None);
        let sender =
            tokio::spawn(
                async move { send_reports(theirs, &"b".parse().unwrap(), rx, &news).await },
            );
        let follower = {
            let (board, heard) = (board.clone(), heard.clone());
            tokio::spawn(async move {
                follow_reports(ours, &"b".parse().unwrap(), &board, &heard).await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(state(&watch, "api", "b"), State::Warning);
        let b: NodeName = "b".parse().unwrap();
        let news_of_b = || heard.all()[&b].news.clone().unwrap();
        assert_eq!(news_of_b().version, env!("CARGO_PKG_VERSION"));
        assert!(news_of_b().traffic.is_empty());
        // New traffic on b goes out with the next heartbeat.
        let _open = traffic.opened(
            &"web".parse().unwrap(),
            &"api".parse().unwrap(),
            crate::telemetry::Side::Outbound,
            None,
        );
        tokio::time::sleep(HEARTBEAT + Duration::from_millis(10)).await;
        assert_eq!(news_of_b().traffic[0].active, 1);
        tx.send_replace(report(State::Critical));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(state(&watch, "api", "b"), State::Critical);
        // Heartbeats keep the follow alive far beyond SILENCE.
        tokio::time::sleep(SILENCE * 5).await;
        assert!(!follower.is_finished());
        // A sender that stops talking (but keeps the stream) is dropped.
        sender.abort();
        let ended = follower.await.unwrap();
        assert!(
            ended.why.contains("closed") || ended.why.contains("no word"),
            "{ended:?}"
        );
        board.stop();
    }

    #[test]
    fn only_nodes_may_follow_and_each_only_a_few_times() {
        // Nodes a (10.0.0.1) and b (10.0.0.2).
        let (board, watch, _) = board(Vec::new());
        board.stop();
        let nodes_only = Followers {
            nodes_only: Some(watch),
            per_source: Arc::default(),
        };
        let node: IpAddr = "10.0.0.2".parse().unwrap();
        let stranger: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(nodes_only.admit(stranger).is_none());
        // IPv4-mapped, as a dual-stack listener sees it.
        assert!(
            nodes_only
                .admit("::ffff:10.0.0.2".parse().unwrap())
                .is_some()
        );
        let held: Vec<SourceSlot> = (0..MAX_PER_SOURCE)
            .map(|_| nodes_only.admit(node).unwrap())
            .collect();
        assert!(nodes_only.admit(node).is_none(), "over the per-source cap");
        drop(held);
        assert!(nodes_only.admit(node).is_some(), "slots come back");
        // `--inbound-sources any`: strangers may try (TLS decides).
        let anyone = Followers {
            nodes_only: None,
            per_source: Arc::default(),
        };
        assert!(anyone.admit(stranger).is_some());
    }

    #[tokio::test]
    async fn reports_of_another_node_or_garbage_end_the_follow() {
        let (board, _watch, _) = board(Vec::new());
        let peers = Peers::new(Arc::default(), None);
        for (input, expected) in [
            (
                &b"{\"node\":\"c\",\"instances\":[]}\n"[..],
                "reports of node \"c\"",
            ),
            (&b"not json\n"[..], "bad report"),
            (&b""[..], "connection closed"),
        ] {
            let ended = follow_reports(input, &"b".parse().unwrap(), &board, &peers).await;
            assert!(ended.why.contains(expected) && !ended.silent, "{ended:?}");
        }
        let long = vec![b'x'; MAX_LINE + 10];
        let ended = follow_reports(&long[..], &"b".parse().unwrap(), &board, &peers).await;
        assert!(ended.why.contains("longer than"), "{ended:?}");
        board.stop();
    }
}
