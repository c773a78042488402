//! Agents' registrations in etcd (`--catalog etcd://`): this agent keeps
//! its node's ([`Registration::keep`]) and follows everyone's
//! ([`Registration::follow`]).
//!
//! | key | value (TOML) |
//! |---|---|
//! | `<prefix>/agents/v1/nodes/<node>` | `address`, `version` of the node's agent |
//! | `<prefix>/agents/v1/health/<node>/<service>` | the agent's report on its instance: `service`, `state`, `[[checks]]` |
//!
//! Beside the catalog's `<prefix>/v1/`, not in it: registrations change
//! often and are written by each node's agent, catalog objects rarely and
//! by an admin, so they have their own watch, guards and etcd roles. Node
//! keys and health keys have prefixes of their own so that agents watch
//! only the node keys (health travels agent to agent over the links).
//!
//! A node's keys live under its agent's lease ([`TTL`], kept alive every
//! [`KEEPALIVE`]): an agent that dies or is cut off from etcd loses them
//! when the lease expires, and every agent then counts that node's
//! instances critical (`health::View::registered`). A stopping agent
//! revokes its lease, so its instances go at once.
//!
//! Guards, so a stale agent never overwrites a newer one: a starting agent
//! takes its node's key whoever held it (the newest agent of a node wins);
//! a running one writes only while that key is still under its own lease
//! (`Compare::lease`), and after its lease expired registers again only if
//! the key is free or held by no lease (written by hand).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{
    CatalogError, EtcdOptions,
    etcd::{MAX_BACKOFF, TXN_OPS},
    layout::VERSION,
};
use crate::{
    health::{Board, InstanceReport, doc::CatalogDoc},
    names::NodeName,
    snapshot::Watch,
};

/// Seconds a registration outlives its agent's last keepalive.
pub const TTL: i64 = 10;
/// Between two keepalives of the lease.
pub const KEEPALIVE: Duration = Duration::from_millis(TTL as u64 * 1000 / 3);
/// Bound on a keepalive's answer.
const ANSWER: Duration = Duration::from_secs(3);

/// The value of a node's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's address, as the catalog has it when the agent wrote it.
    pub address: IpAddr,
    /// The agent's version.
    pub version: String,
}

/// What a key under [`root`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Node(String),
    Health { node: String, service: String },
}

impl Key {
    /// Its key under `prefix`.
    pub fn key(&self, prefix: &str) -> String {
        match self {
            Self::Node(node) => format!("{}nodes/{node}", root(prefix)),
            Self::Health { node, service } => format!("{}health/{node}/{service}", root(prefix)),
        }
    }

    /// What `key` names, if it is a registration key under `prefix`.
    pub fn of(prefix: &str, key: &str) -> Option<Self> {
        let rest = key.strip_prefix(&root(prefix))?;
        match rest.split('/').collect::<Vec<_>>().as_slice() {
            ["nodes", node] if !node.is_empty() => Some(Self::Node((*node).to_owned())),
            ["health", node, service] if !node.is_empty() && !service.is_empty() => {
                Some(Self::Health {
                    node: (*node).to_owned(),
                    service: (*service).to_owned(),
                })
            }
            _ => None,
        }
    }
}

impl Key {
    /// Why `value` is not what an agent writes under this key, if it is
    /// not (a value written by hand).
    pub fn unreadable(&self, value: &str) -> Option<String> {
        let read = match self {
            Self::Node(_) => toml::from_str::<NodeRecord>(value).map(drop),
            Self::Health { .. } => toml::from_str::<InstanceReport>(value).map(drop),
        };
        read.err().map(|e| e.message().to_owned())
    }
}

/// The prefix of every registration key (ends in `/`).
pub fn root(prefix: &str) -> String {
    format!("{prefix}/agents/{VERSION}/")
}

/// Every node's registration and reports, as etcd holds them now
/// (`catalog instances --catalog`).
#[derive(Debug, Default)]
pub struct Registrations {
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Node -> service -> report.
    pub reports: BTreeMap<String, BTreeMap<String, InstanceReport>>,
    /// `<key>: <why>` of each value that is not what an agent writes.
    pub unreadable: Vec<String>,
}

/// Reads every registration under `options`' prefix; values that do not
/// read are left out and listed in `unreadable`.
pub async fn list(options: &EtcdOptions) -> Result<Registrations, CatalogError> {
    let mut client = options.connect().await?;
    let (listed, _) = list_keys(options, &mut client, &root(&options.prefix)).await?;
    let mut all = Registrations::default();
    for Listed { key, value, .. } in listed {
        let read = match &key {
            Key::Node(node) => toml::from_str(&value).map(|record| {
                all.nodes.insert(node.clone(), record);
            }),
            Key::Health { node, service } => toml::from_str(&value).map(|report| {
                all.reports
                    .entry(node.clone())
                    .or_default()
                    .insert(service.clone(), report);
            }),
        };
        if let Err(e) = read {
            all.unreadable.push(format!(
                "{}: {}",
                key.key(&options.prefix),
                e.message().trim()
            ));
        }
    }
    Ok(all)
}

impl Registrations {
    /// The health view they make: the agents' reports, and only
    /// registered nodes' instances counting.
    pub fn view(&self) -> crate::health::View {
        crate::health::View {
            // Keys that are not valid names name no instance of any config.
            reports: self
                .reports
                .iter()
                .filter_map(|(node, r)| {
                    let by_service = r
                        .iter()
                        .filter_map(|(service, report)| {
                            Some((service.parse().ok()?, report.clone()))
                        })
                        .collect();
                    Some((node.parse().ok()?, by_service))
                })
                .collect(),
            unreachable: Default::default(),
            registered: Some(self.nodes.keys().cloned().collect()),
        }
    }
}

/// `catalog services|instances --catalog`: the catalog in etcd with every
/// instance's health as the agents registered it.
pub async fn catalog_doc(options: &EtcdOptions) -> Result<CatalogDoc, CatalogError> {
    options
        .on_any_member(|one| async move {
            let config = one.snapshot().await?.config;
            let registrations = list(&one).await?;
            let snapshot =
                crate::snapshot::Snapshot::new(config).with_health(Arc::new(registrations.view()));
            let mut doc = CatalogDoc::new(&snapshot, &options.to_string());
            doc.problems = registrations
                .unreadable
                .into_iter()
                .map(|bad| format!("ignored a registration that does not read: {bad}"))
                .collect();
            Ok(doc)
        })
        .await
}

/// A registration key as listed.
struct Listed {
    key: Key,
    value: String,
    lease: i64,
    revision: i64,
}

/// Every registration key under `under` (`root` or one of its parts) and
/// its value, and the revision they were read at.
async fn list_keys(
    options: &EtcdOptions,
    client: &mut Client,
    under: &str,
) -> Result<(Vec<Listed>, i64), CatalogError> {
    let (got, revision) = options.range(client, under).await?;
    let keys = got
        .iter()
        .filter_map(|kv| {
            Some(Listed {
                key: Key::of(&options.prefix, &String::from_utf8_lossy(kv.key()))?,
                value: String::from_utf8_lossy(kv.value()).into_owned(),
                lease: kv.lease(),
                revision: kv.mod_revision(),
            })
        })
        .collect();
    Ok((keys, revision))
}

/// This agent's registration, and its view of everyone's. See the module
/// docs.
pub struct Registration {
    options: EtcdOptions,
    node: NodeName,
    board: Arc<Board>,
    snapshots: Watch,
    /// The lease this agent's keys are under, while it holds one.
    lease: Mutex<Option<i64>>,
    /// Told once the node is first registered.
    registered: Notify,
    /// Told once the nodes' registrations are first listed.
    listed: Notify,
    /// Who holds this node's key, as the watch last saw it: the revision
    /// of that sight and the holder's lease (`None`: no one).
    holder: tokio::sync::watch::Sender<(i64, Option<i64>)>,
}

/// Keeps `lease` every [`KEEPALIVE`], telling each answer's TTL (0 or
/// less: the lease is gone); ends after telling an error (no answer within
/// [`ANSWER`], or etcd unreachable) or when no one listens.
async fn keep_lease(
    options: EtcdOptions,
    mut keeper: etcd_client::LeaseKeeper,
    mut answers: etcd_client::LeaseKeepAliveStream,
    tell: tokio::sync::mpsc::Sender<Result<i64, CatalogError>>,
) {
    let mut tick = tokio::time::interval(KEEPALIVE);
    loop {
        tick.tick().await;
        let answer = async {
            keeper
                .keep_alive()
                .await
                .map_err(|e| options.unreachable(e))?;
            let answer = tokio::time::timeout(ANSWER, answers.message())
                .await
                .map_err(|_| CatalogError::LeaseUnanswered)?
                .map_err(|e| options.unreachable(e))?
                .ok_or(CatalogError::LeaseUnanswered)?;
            Ok(answer.ttl())
        }
        .await;
        let end = answer.is_err();
        if tell.send(answer).await.is_err() || end {
            return;
        }
    }
}

/// Why a guarded write did not happen.
enum Refused {
    /// The node's key is gone (the lease expired).
    Lost,
    /// Another agent of this node holds it, under this lease.
    Taken(i64),
}

impl Registration {
    pub fn new(
        options: EtcdOptions,
        node: &NodeName,
        board: Arc<Board>,
        snapshots: Watch,
    ) -> Arc<Self> {
        Arc::new(Self {
            options,
            node: node.clone(),
            board,
            snapshots,
            lease: Mutex::new(None),
            registered: Notify::new(),
            listed: Notify::new(),
            holder: tokio::sync::watch::channel((0, None)).0,
        })
    }

    /// The prefix of every node key.
    fn nodes_root(&self) -> String {
        format!("{}nodes/", root(&self.options.prefix))
    }

    /// Waits until this node is first registered (by [`Registration::keep`])
    /// and every node's registration first listed (by
    /// [`Registration::follow`]): from then on this agent's view counts
    /// only registered nodes' instances, and others see this node's.
    pub async fn first(&self) {
        self.registered.notified().await;
        self.listed.notified().await;
    }

    /// Registers this node and keeps its registration and its instances'
    /// health current, until aborted; etcd outages are retried.
    pub async fn keep(self: Arc<Self>) {
        let mut state = Keeping {
            first: true,
            ..Keeping::default()
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = tokio::time::Instant::now();
            if let Err(e) = self.session(&mut state).await {
                self.options.reconnect();
                let message = e.to_string();
                if state.down.is_none() {
                    if message.contains("permission denied") {
                        tracing::error!(error = %message, node = %self.node, "etcd refuses this node's registration: its etcd user needs readwrite on {} and the prefix {}; retrying", self.node_key(), Key::Health { node: self.node.to_string(), service: String::new() }.key(&self.options.prefix));
                    } else {
                        warn!(error = %message, "cannot keep this node's registration in etcd; retrying");
                    }
                }
                state.down = Some(message);
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's worth of [`Registration::keep`].
    async fn session(&self, state: &mut Keeping) -> Result<(), CatalogError> {
        let mut client = self.options.connect().await?;
        let mut reports = self.board.local_reports();
        let mut snapshots = self.snapshots.clone();
        let mut holder = self.holder.subscribe();
        loop {
            let lease = match state.lease {
                Some(lease) => lease,
                None => match self.claim(&mut client, state).await? {
                    Some(lease) => lease,
                    None => {
                        // Another agent holds the node: try again once
                        // the watch sees its key go (or written by hand),
                        // at most every 30 s and at least 1 s apart.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let free = holder.wait_for(|(_, h)| h.is_none_or(|lease| lease == 0));
                        let _ = tokio::time::timeout(Duration::from_secs(30), free).await;
                        continue;
                    }
                },
            };
            let kept = tokio::time::timeout(ANSWER, client.lease_keep_alive(lease))
                .await
                .map_err(|_| CatalogError::LeaseUnanswered)?;
            let (keeper, answers) = match kept {
                Ok(kept) => kept,
                // Expired while etcd could not be reached.
                Err(etcd_client::Error::LeaseKeepAliveError(e)) if e.contains("not found") => {
                    self.lost(state, Refused::Lost);
                    continue;
                }
                Err(e) => return Err(self.options.unreachable(e)),
            };
            // Keepalives on a task of their own: a slow write below does
            // not delay them (the lease outlives a publish that takes long).
            let (tell, mut kept) = tokio::sync::mpsc::channel(4);
            let keeping = super::AbortOnDrop(tokio::spawn(keep_lease(
                self.options.clone(),
                keeper,
                answers,
                tell,
            )));
            let mut dirty = true;
            loop {
                let displaced = self.displaced(state, lease);
                let refused = match displaced {
                    Some(refused) => Some(refused),
                    None if dirty => self.publish(&mut client, lease, state).await?.err(),
                    None => None,
                };
                dirty = false;
                if let Some(refused) = refused {
                    if matches!(refused, Refused::Taken(_)) {
                        // Its keys are the other agent's now, or go.
                        let _ = client.lease_revoke(lease).await;
                    }
                    self.lost(state, refused);
                    break;
                }
                tokio::select! {
                    answer = kept.recv() => match answer {
                        Some(Ok(ttl)) if ttl > 0 => {
                            if state.down.take().is_some() {
                                info!("this node's registration in etcd kept again");
                            }
                        }
                        Some(Ok(_)) => {
                            self.lost(state, Refused::Lost);
                            break;
                        }
                        Some(Err(e)) => return Err(e),
                        None => return Err(CatalogError::LeaseUnanswered),
                    },
                    Ok(()) = reports.changed() => dirty = true,
                    Ok(()) = snapshots.changed() => dirty = true,
                    Ok(()) = holder.changed() => {}
                }
            }
            drop(keeping);
        }
    }

    /// Whether the watch saw this node's key deleted or put under another
    /// lease since this agent claimed it (a deletion by hand, or a newer
    /// agent of this node).
    fn displaced(&self, state: &Keeping, lease: i64) -> Option<Refused> {
        let (seen_at, holder) = *self.holder.borrow();
        if seen_at <= state.claimed_at || holder == Some(lease) {
            return None;
        }
        Some(refused(holder))
    }

    /// Takes this node's key under a new lease: whoever held it on the
    /// agent's first registration, only if it is free (absent, or written
    /// by hand under no lease) after that. `None`: another agent holds it.
    async fn claim(
        &self,
        client: &mut Client,
        state: &mut Keeping,
    ) -> Result<Option<i64>, CatalogError> {
        let etcd = |e| self.options.unreachable(e);
        let key = self.node_key();
        if let Some(pending) = state.pending.take() {
            // The last claim's answer was lost: it may have landed.
            let now = client.get(key.as_str(), None).await.map_err(etcd)?;
            match now.kvs().first() {
                Some(kv) if kv.lease() == pending => {
                    let value = String::from_utf8_lossy(kv.value()).into_owned();
                    return Ok(Some(self.claimed(state, pending, kv.mod_revision(), value)));
                }
                _ => {
                    let _ = client.lease_revoke(pending).await;
                }
            }
        }
        let lease = client.lease_grant(TTL, None).await.map_err(etcd)?.id();
        let value = self.node_value();
        // A missing key compares as lease 0 too.
        let guard: Vec<Compare> = if state.first {
            Vec::new()
        } else {
            vec![Compare::lease(key.as_str(), CompareOp::Equal, 0)]
        };
        let put = TxnOp::put(
            key.as_str(),
            value.as_str(),
            Some(PutOptions::new().with_lease(lease)),
        );
        state.pending = Some(lease);
        let done = client
            .txn(Txn::new().when(guard).and_then([put]))
            .await
            .map_err(etcd)?;
        state.pending = None;
        if !done.succeeded() {
            let _ = client.lease_revoke(lease).await;
            if !state.stale {
                warn!(node = %self.node, "another agent registered this node in etcd since this one lost its lease: this agent no longer writes the node's registration or health");
            }
            state.stale = true;
            return Ok(None);
        }
        let revision = done.header().map_or(0, |h| h.revision());
        Ok(Some(self.claimed(state, lease, revision, value)))
    }

    /// This agent holds the node's key under `lease` since `revision`.
    fn claimed(&self, state: &mut Keeping, lease: i64, revision: i64, value: String) -> i64 {
        if state.stale {
            info!(node = %self.node, "the other agent's registration of this node is gone: registered again");
        } else {
            info!(node = %self.node, lease, ttl = TTL, "registered in etcd");
        }
        state.first = false;
        state.stale = false;
        state.claimed_at = revision;
        state.lease = Some(lease);
        state.written = BTreeMap::from([(self.node_key(), value)]);
        self.set_lease(Some(lease));
        self.registered.notify_one();
        lease
    }

    fn set_lease(&self, lease: Option<i64>) {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = lease;
    }

    fn node_key(&self) -> String {
        Key::Node(self.node.to_string()).key(&self.options.prefix)
    }

    /// The registration lost: its key gone, or taken by another agent.
    fn lost(&self, state: &mut Keeping, why: Refused) {
        match why {
            Refused::Lost => {
                warn!(node = %self.node, "this node's registration in etcd expired or was deleted: registering again");
            }
            Refused::Taken(lease) => {
                warn!(node = %self.node, other_lease = lease, "another agent registered this node in etcd: this agent no longer writes the node's registration or health");
                state.stale = true;
            }
        }
        state.lease = None;
        state.written.clear();
        self.set_lease(None);
    }

    /// Writes what changed in this node's registration and reports since
    /// the last write, while the node's key is under `lease`.
    async fn publish(
        &self,
        client: &mut Client,
        lease: i64,
        state: &mut Keeping,
    ) -> Result<Result<(), Refused>, CatalogError> {
        let etcd = |e| self.options.unreachable(e);
        let node_key = self.node_key();
        let mut wanted = BTreeMap::from([(node_key.clone(), self.node_value())]);
        for report in self.board.local_reports().borrow().iter() {
            let key = Key::Health {
                node: self.node.to_string(),
                service: report.service.clone(),
            }
            .key(&self.options.prefix);
            wanted.insert(key, toml::to_string(report).unwrap_or_default());
        }
        let with_lease = || Some(PutOptions::new().with_lease(lease));
        let mut ops: Vec<TxnOp> = wanted
            .iter()
            .filter(|(k, v)| state.written.get(*k) != Some(v))
            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), with_lease()))
            .collect();
        ops.extend(
            state
                .written
                .keys()
                .filter(|k| !wanted.contains_key(*k))
                .map(|k| TxnOp::delete(k.as_str(), None)),
        );
        for batch in ops.chunks(TXN_OPS) {
            let guard = Compare::lease(node_key.as_str(), CompareOp::Equal, lease);
            let done = client
                .txn(Txn::new().when([guard]).and_then(batch.to_vec()))
                .await
                .map_err(etcd)?;
            if !done.succeeded() {
                let now = client.get(node_key.as_str(), None).await.map_err(etcd)?;
                return Ok(Err(refused(now.kvs().first().map(|kv| kv.lease()))));
            }
        }
        state.written = wanted;
        Ok(Ok(()))
    }

    /// This node's key's value, from the catalog in force.
    fn node_value(&self) -> String {
        let snapshot = self.snapshots.borrow().clone();
        let address = snapshot
            .config
            .nodes
            .iter()
            .find(|n| n.name == self.node)
            .map_or(IpAddr::from([0, 0, 0, 0]), |n| n.address);
        let record = NodeRecord {
            address,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        toml::to_string(&record).unwrap_or_default()
    }

    /// Revokes this agent's lease, so its node's keys go at once (a
    /// deliberate stop). Bounded; an unreachable etcd lets them expire.
    pub async fn leave(&self) {
        let Some(lease) = *self.lease.lock().unwrap_or_else(|e| e.into_inner()) else {
            return;
        };
        let revoke = async {
            let mut client = self.options.connect().await?;
            client
                .lease_revoke(lease)
                .await
                .map_err(|e| self.options.unreachable(e))
        };
        match tokio::time::timeout(Duration::from_secs(2), revoke).await {
            Ok(Ok(_)) => info!(node = %self.node, "registration in etcd removed"),
            Ok(Err(e)) => {
                warn!(error = %e, "could not remove this node's registration from etcd; it expires in {TTL} s")
            }
            Err(_) => warn!(
                "could not remove this node's registration from etcd in time; it expires in {TTL} s"
            ),
        }
    }

    /// Follows which nodes are registered into the board, until aborted:
    /// lists, then watches from the next revision; lists again after a
    /// compaction. While etcd cannot be read the board keeps the last
    /// nodes seen.
    pub async fn follow(self: Arc<Self>) {
        let mut nodes = BTreeSet::new();
        let mut revision = 0;
        let mut backoff = Duration::from_millis(100);
        let mut down = false;
        loop {
            match self.follow_once(&mut nodes, &mut revision, &mut down).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    self.options.reconnect();
                    // Once per outage (permission denied, canceled watch,
                    // unreachable etcd).
                    if !down {
                        warn!(error = %e, "cannot follow the nodes' registrations in etcd; keeping the last seen");
                    }
                    down = true;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One watch's worth of [`Registration::follow`]; `revision` 0 lists
    /// first.
    /// Logs a registration value no agent wrote (by hand, or garbage): it
    /// still counts as the node's key being held (so nothing changes for
    /// its instances), and its agent takes the key back as one written
    /// under no lease.
    fn warn_unreadable(&self, key: &Key, value: &str) {
        if let Some(why) = key.unreadable(value) {
            warn!(key = %key.key(&self.options.prefix), error = %why.trim(), "a registration in etcd that no agent wrote: ignored (a node key counts as held until its agent registers again)");
        }
    }

    async fn follow_once(
        &self,
        nodes: &mut BTreeSet<String>,
        revision: &mut i64,
        down: &mut bool,
    ) -> Result<(), CatalogError> {
        let etcd = |e| self.options.unreachable(e);
        let mut client = self.options.connect().await?;
        if *revision == 0 {
            let (listed, at) = list_keys(&self.options, &mut client, &self.nodes_root()).await?;
            nodes.clear();
            let mut holder = (at, None);
            for listed in listed {
                self.warn_unreadable(&listed.key, &listed.value);
                if let Key::Node(node) = listed.key {
                    if node == self.node {
                        holder = (listed.revision, Some(listed.lease));
                    }
                    nodes.insert(node);
                }
            }
            self.holder.send_replace(holder);
            *revision = at;
            self.board.registered(nodes.clone());
            self.listed.notify_one();
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(*revision + 1);
        let mut stream = client
            .watch(self.nodes_root(), Some(options))
            .await
            .map_err(etcd)?;
        loop {
            let response = stream
                .message()
                .await
                .map_err(etcd)?
                .ok_or(CatalogError::WatchEnded)?;
            if response.created() && !response.canceled() && std::mem::take(down) {
                info!("following the nodes' registrations in etcd again");
            }
            if response.canceled() {
                if response.compact_revision() > 0 {
                    *revision = 0;
                    return Ok(());
                }
                return Err(CatalogError::WatchCanceled {
                    reason: response.cancel_reason().to_owned(),
                });
            }
            let before = nodes.clone();
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                *revision = (*revision).max(kv.mod_revision());
                let key = String::from_utf8_lossy(kv.key());
                if let Some(Key::Node(node)) = Key::of(&self.options.prefix, &key) {
                    if event.event_type() == EventType::Put {
                        let value = String::from_utf8_lossy(kv.value());
                        self.warn_unreadable(&Key::Node(node.clone()), &value);
                    }
                    let held = match event.event_type() {
                        EventType::Put => Some(kv.lease()),
                        EventType::Delete => None,
                    };
                    if node == self.node {
                        self.holder.send_replace((kv.mod_revision(), held));
                    }
                    match held {
                        Some(_) => nodes.insert(node),
                        None => nodes.remove(&node),
                    };
                }
            }
            if *nodes != before {
                self.board.registered(nodes.clone());
            }
        }
    }
}

/// Why this agent no longer holds its node's key, from who holds it now
/// (`None`: no one; lease 0: a value written by hand).
fn refused(holder: Option<i64>) -> Refused {
    match holder {
        Some(other) if other != 0 => Refused::Taken(other),
        _ => Refused::Lost,
    }
}

/// Where [`Registration::keep`] stands, across reconnections.
#[derive(Default)]
struct Keeping {
    /// No registration yet: take the node's key whoever holds it.
    first: bool,
    /// The lease this agent's keys are under.
    lease: Option<i64>,
    /// Another agent holds the node's key.
    stale: bool,
    /// The revision of the claim of `lease`.
    claimed_at: i64,
    /// A lease whose claim was sent without an answer.
    pending: Option<i64>,
    /// What is in etcd under `lease`, by key.
    written: BTreeMap<String, String>,
    /// The outage last logged.
    down: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_a_node_or_its_instance() {
        let node = Key::Node("a".into());
        let health = Key::Health {
            node: "a".into(),
            service: "web".into(),
        };
        assert_eq!(node.key("/m"), "/m/agents/v1/nodes/a");
        assert_eq!(health.key("/m"), "/m/agents/v1/health/a/web");
        assert_eq!(Key::of("/m", "/m/agents/v1/nodes/a"), Some(node));
        assert_eq!(Key::of("/m", "/m/agents/v1/health/a/web"), Some(health));
        for other in [
            "/m/v1/nodes/a",
            "/m/agents/v1/nodes/",
            "/m/agents/v1/health/a/",
            "/m/agents/v2/nodes/a",
            "/m/agents/v1/a/node",
        ] {
            assert_eq!(Key::of("/m", other), None, "{other}");
        }
    }

    #[test]
    fn values_no_agent_wrote_say_why() {
        let node = Key::Node("a".into());
        let health = Key::Health {
            node: "a".into(),
            service: "web".into(),
        };
        assert_eq!(
            node.unreadable("address = \"10.0.0.1\"\nversion = \"1\"\n"),
            None
        );
        for garbage in ["", "garbage = [", "address = 7", "\u{0}\u{1}"] {
            assert!(node.unreadable(garbage).is_some(), "{garbage:?}");
            assert!(health.unreadable(garbage).is_some(), "{garbage:?}");
        }
    }

    #[test]
    fn values_read_back() {
        let record = NodeRecord {
            address: "10.0.0.1".parse().unwrap(),
            version: "0.1.0".into(),
        };
        let text = toml::to_string(&record).unwrap();
        assert_eq!(text, "address = \"10.0.0.1\"\nversion = \"0.1.0\"\n");
        assert_eq!(toml::from_str::<NodeRecord>(&text).unwrap(), record);
        let report = InstanceReport::of(
            "web",
            vec![crate::health::CheckReport {
                name: "http".into(),
                state: crate::health::State::Warning,
                output: "HTTP 429".into(),
                since: None,
            }],
        );
        let text = toml::to_string(&report).unwrap();
        assert_eq!(toml::from_str::<InstanceReport>(&text).unwrap(), report);
    }
}
