//! The catalog in etcd (`--catalog etcd://h1:2379,h2:2379[/prefix]`): the
//! keys and values of `layout`, listed once at a revision, then watched
//! from the next one.
//!
//! Every change (a put or delete under the prefix) is applied to the
//! values last seen and the whole catalog judged again, as a changed file
//! is (only the changed values are checked and parsed again: [`Parsed`]): a valid one is the next config, an invalid one is logged ("catalog
//! change rejected", naming the key) and the last good config stays. A
//! watch that ends (member down, leader lost: the client requires a
//! leader) is resumed from the revision after the last one seen, after a
//! backoff; a compacted revision means listing again. While etcd cannot be
//! reached the agent keeps its last good config and says so once.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, TlsOptions, WatchOptions,
    WatchStream,
};
use tracing::{info, warn};

use super::{
    Catalog, CatalogError, Change,
    layout::{self, Assembled},
};
use crate::config::{Config, Intention};

/// The key prefix when the URL names none.
pub const DEFAULT_PREFIX: &str = "/mesh";
/// Bound on connecting to a member, and on each request.
const TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on an idle connection to etcd, to find a dead one.
const KEEPALIVE: Duration = Duration::from_secs(6);
/// Longest wait between reconnection attempts.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a one-shot read or edit ([`EtcdOptions::on_any_member`]: the
/// CLI, an agent's first listing) keeps trying the members: past an
/// election, and past one round of members that do not answer at all
/// (`TIMEOUT` each).
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(15);

/// Where the catalog is: members, key prefix, TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub tls: Option<EtcdTls>,
    /// The client [`EtcdOptions::connect`] made, shared by every clone of
    /// these options: an agent's catalog watch, registration and
    /// registrations' watch talk to etcd through one client.
    shared: Shared,
}

/// A client shared by clones of [`EtcdOptions`] (equal whatever it holds).
#[derive(Clone, Default)]
struct Shared(std::sync::Arc<std::sync::Mutex<Option<Client>>>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Client>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PartialEq for Shared {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Shared {}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.lock().is_some() {
            "connected"
        } else {
            "not connected"
        })
    }
}

/// Client TLS to etcd: the CA that signed the members' certificates, and
/// this client's certificate and key (its CN is its etcd user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl EtcdOptions {
    /// Parses `etcd://host:port[,host:port...][/prefix]`.
    pub fn parse(url: &str, tls: Option<EtcdTls>) -> Result<Self, CatalogError> {
        let bad = |why: &str| CatalogError::Url {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| bad("it must start with etcd://"))?;
        let (hosts, prefix) = match rest.find('/') {
            Some(at) => (&rest[..at], rest[at..].trim_end_matches('/')),
            None => (rest, DEFAULT_PREFIX),
        };
        if prefix.is_empty() {
            return Err(bad("the key prefix must not be empty"));
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoints = hosts
            .split(',')
            .map(|h| match h.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(format!("{scheme}://{h}"))
                }
                _ => Err(bad(&format!("{h:?} is not host:port"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            endpoints,
            prefix: prefix.to_owned(),
            tls,
            shared: Shared::default(),
        })
    }

    /// How problems name this catalog (`Config::path`, `etcd:<line>:<col>`;
    /// each is followed by its key). A bare name: a relative `ca_dir` is
    /// relative to the agent's working directory.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("etcd")
    }

    /// The prefix of every key of the layout's version.
    pub(super) fn keys(&self) -> String {
        format!("{}/{}/", self.prefix, layout::VERSION)
    }

    /// The client of these options (and their clones), connected first if
    /// there is none; fails if no member answers within `TIMEOUT`.
    pub async fn connect(&self) -> Result<Client, CatalogError> {
        if let Some(client) = self.shared.lock().clone() {
            return Ok(client);
        }
        let client = self.connect_new().await?;
        Ok(self.shared.lock().get_or_insert(client).clone())
    }

    /// Drops the shared client after an outage, so the next
    /// [`EtcdOptions::connect`] connects anew (to the members that answer
    /// now) rather than go on through connections that may be dead.
    pub fn reconnect(&self) {
        self.shared.lock().take();
    }

    /// A new client.
    async fn connect_new(&self) -> Result<Client, CatalogError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(TIMEOUT)
            .with_timeout(TIMEOUT)
            .with_require_leader(true)
            // etcd closes connections that ping more often than every 5 s
            // (--grpc-keepalive-min-time).
            .with_keep_alive(KEEPALIVE, TIMEOUT);
        if let Some(tls) = &self.tls {
            let read = |path: &Path| {
                std::fs::read(path).map_err(|source| CatalogError::File {
                    path: path.to_owned(),
                    source,
                })
            };
            let identity = Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
                    .identity(identity),
            );
        }
        Client::connect(&self.endpoints, Some(options))
            .await
            .map_err(|e| self.unreachable(e))
    }

    /// Runs `op` with these options narrowed to one member, a member at a
    /// time: while etcd cannot be reached through one (down, partitioned,
    /// without a leader), the next is tried, round after round, until
    /// [`COMMAND_DEADLINE`]; any other error ends it at once. For one-shot
    /// commands: `op` must be safe to run again (each re-reads what it
    /// needs). A client of all the members does not do: its balancer may
    /// send each request to the dead member it was given first.
    pub async fn on_any_member<T, F, Fut>(&self, op: F) -> Result<T, CatalogError>
    where
        F: Fn(EtcdOptions) -> Fut,
        Fut: std::future::Future<Output = Result<T, CatalogError>>,
    {
        self.on_any_member_within(COMMAND_DEADLINE, op).await
    }

    /// [`EtcdOptions::on_any_member`] until `within` (a long import).
    pub async fn on_any_member_within<T, F, Fut>(
        &self,
        within: Duration,
        op: F,
    ) -> Result<T, CatalogError>
    where
        F: Fn(EtcdOptions) -> Fut,
        Fut: std::future::Future<Output = Result<T, CatalogError>>,
    {
        let deadline = tokio::time::Instant::now() + within;
        let mut backoff = Duration::from_millis(100);
        let mut last = None;
        loop {
            for endpoint in &self.endpoints {
                let one = Self {
                    endpoints: vec![endpoint.clone()],
                    shared: Shared::default(),
                    ..self.clone()
                };
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let err = match tokio::time::timeout(left, op(one)).await {
                    Ok(Ok(done)) => return Ok(done),
                    Ok(Err(e)) if e.is_unreachable() => e,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        return Err(CatalogError::NoMember {
                            endpoints: self.endpoints.join(","),
                            within,
                            last,
                        });
                    }
                };
                if tokio::time::Instant::now() >= deadline {
                    return Err(err);
                }
                tracing::debug!(%endpoint, error = %err, "etcd member unreachable; trying the next");
                last = Some(err.to_string());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    pub(super) fn unreachable(&self, e: etcd_client::Error) -> CatalogError {
        CatalogError::Etcd {
            endpoints: self.endpoints.join(","),
            source: e,
        }
    }

    /// Every key under `prefix` with its value, and the revision they were
    /// read at: in pages of [`PAGE`] keys, every page at the revision of
    /// the first, so a listing of any size is one consistent view (a single
    /// response may not pass the gRPC client's 4 MiB decode limit, about
    /// 30,000 catalog keys).
    pub(super) async fn range(
        &self,
        client: &mut Client,
        prefix: &str,
    ) -> Result<(Vec<etcd_client::KeyValue>, i64), CatalogError> {
        let mut kvs = Vec::new();
        let revision = self
            .range_pages(client, prefix, 0, |page| kvs.extend(page))
            .await?;
        Ok((kvs, revision))
    }

    /// [`EtcdOptions::range`] at `revision` (0: the newest), each page
    /// handed to `each` as it comes (so a large listing is not held twice,
    /// as pages and as what is made of them); the revision read at.
    async fn range_pages(
        &self,
        client: &mut Client,
        prefix: &str,
        mut revision: i64,
        mut each: impl FnMut(Vec<etcd_client::KeyValue>),
    ) -> Result<i64, CatalogError> {
        let end = prefix_end(prefix.as_bytes());
        let mut from = prefix.as_bytes().to_vec();
        loop {
            // Revision 0 is the newest: the first page's.
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(PAGE)
                .with_revision(revision);
            let mut got = client
                .get(from.clone(), Some(options))
                .await
                .map_err(|e| self.unreachable(e))?;
            if revision == 0 {
                revision = got.header().map_or(0, |h| h.revision());
            }
            let more = got.more();
            let page = got.take_kvs();
            let Some(last) = page.last() else { break };
            // The next page starts just after the last key read.
            from = [last.key(), &[0]].concat();
            each(page);
            if !more {
                break;
            }
        }
        Ok(revision)
    }

    /// The catalog's keys as they are now (see [`Listing`]).
    pub(super) async fn list(&self, client: &mut Client) -> Result<Listing, CatalogError> {
        self.list_at(client, 0).await
    }

    /// The catalog's keys at `revision` (0: the newest).
    async fn list_at(&self, client: &mut Client, revision: i64) -> Result<Listing, CatalogError> {
        let marker = layout::import_key(&self.prefix);
        let mut listing = Listing {
            values: BTreeMap::new(),
            modified: BTreeMap::new(),
            revision,
            import: None,
        };
        listing.revision = self
            .range_pages(client, &self.keys(), revision, |page| {
                for kv in page {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let value = String::from_utf8_lossy(kv.value()).into_owned();
                    if key == marker {
                        listing.import = Some(Importing {
                            since: kv.create_revision(),
                            modified: kv.mod_revision(),
                            value,
                        });
                        continue;
                    }
                    listing.modified.insert(key.clone(), kv.mod_revision());
                    listing.values.insert(key, value);
                }
            })
            .await?;
        Ok(listing)
    }

    /// The values agents act on (see `import`) while an import is under
    /// way: those of the revision before it began (`None`: no import, the
    /// values listed).
    async fn acting(
        &self,
        client: &mut Client,
        listing: &Listing,
    ) -> Result<Option<BTreeMap<String, String>>, CatalogError> {
        let Some(import) = &listing.import else {
            return Ok(None);
        };
        match self.list_at(client, import.since - 1).await {
            Ok(before) => Ok(Some(before.values)),
            Err(e) if e.is_unreachable() => Err(e),
            Err(e) => Err(CatalogError::ImportUnreadable {
                since: import.since,
                why: e.to_string(),
            }),
        }
    }

    /// Judges `values` as one catalog (see `layout`). Its intentions carry
    /// line 0: a line of the joined text would mean nothing to a user, and
    /// would shift (in logs and metric labels) as keys come and go.
    pub fn judge(&self, values: &BTreeMap<String, String>) -> Result<Config, CatalogError> {
        self.judge_assembled(values, &layout::assemble(&self.prefix, values))
    }

    /// [`EtcdOptions::judge`] of `values` already joined into `assembled`.
    fn judge_assembled(
        &self,
        values: &BTreeMap<String, String>,
        assembled: &Assembled,
    ) -> Result<Config, CatalogError> {
        for (key, value) in values {
            layout::check(&self.prefix, key, value)?;
        }
        let judged = Config::parse(&assembled.text, &self.path());
        self.judged(assembled, judged)
    }

    /// A judgment of `assembled` as the catalog's: problems name their
    /// keys, intentions carry line 0.
    fn judged(
        &self,
        assembled: &Assembled,
        judged: Result<Config, crate::config::ConfigError>,
    ) -> Result<Config, CatalogError> {
        let mut config = judged.map_err(|e| {
            CatalogError::Rejected(name_keys(assembled, &self.path(), &e.to_string()))
        })?;
        for intention in &mut config.intentions {
            intention.line = 0;
        }
        Ok(config)
    }

    /// The catalog as it is now: its values (parsed), the revision they
    /// were read at and the judged config. An empty prefix is an error: an
    /// agent does not run on no catalog.
    pub(super) async fn snapshot(&self) -> Result<Snapshot, CatalogError> {
        let mut client = self.connect().await?;
        let listing = self.list(&mut client).await?;
        let acting = self.acting(&mut client, &listing).await?;
        let Listing {
            values,
            revision,
            import,
            ..
        } = listing;
        let import = import.map(|i| i.since);
        let mut parsed = Parsed::default();
        // While an import is under way: judged on the values from before
        // it, then holding those listed.
        let (acting, listed) = match acting {
            Some(acting) => (acting, Some(values)),
            None => (values, None),
        };
        if acting.is_empty() {
            return Err(CatalogError::Empty {
                prefix: self.keys(),
            });
        }
        parsed.sync(&self.prefix, acting);
        let config = parsed.judge_held(self)?;
        if let Some(listed) = listed {
            parsed.sync(&self.prefix, listed);
        }
        Ok(Snapshot {
            revision,
            import,
            parsed,
            config,
        })
    }
}

/// The catalog's keys read at one revision.
pub(super) struct Listing {
    /// Every object's key and value (not the import marker's).
    pub(super) values: BTreeMap<String, String>,
    /// Each object key's last modification.
    pub(super) modified: BTreeMap<String, i64>,
    pub(super) revision: i64,
    /// The marker of an import under way, if there is one.
    pub(super) import: Option<Importing>,
}

/// The marker key of an import under way (`layout::import_key`).
#[derive(Debug, Clone)]
pub(super) struct Importing {
    /// The revision that wrote it first: agents act on the one before.
    pub(super) since: i64,
    pub(super) modified: i64,
    pub(super) value: String,
}

/// The catalog's values, each checked and parsed alone (`config::Piece`),
/// kept from one judgment to the next and told of each change
/// ([`Parsed::put`]), so that a change checks and parses only the values
/// that changed: the judgment is [`EtcdOptions::judge`]'s, the same config
/// or the same errors. It is the only copy of the values an agent keeps.
///
/// A change of intentions alone, or of one service, to a valid catalog is
/// judged alone (`Parsed::alone`): each new intention checked against
/// the services of the last valid config, a service against its nodes and
/// the other services (ports, VIPs, cgroups); the config is then patched.
/// Any other change (a node, `[mesh]`, several services at once), or any
/// problem, is judged whole, for the problems at their lines.
#[derive(Debug, Default, Clone)]
pub struct Parsed {
    by_key: BTreeMap<String, Judged>,
    /// The keys whose values `layout::check` refuses.
    misfits: std::collections::BTreeSet<String>,
    /// The keys changed since the last [`Parsed::judge_held`], each with
    /// whether it was held then.
    pending: BTreeMap<String, bool>,
    /// The config the last judgment found, if valid.
    valid: Option<Config>,
}

/// One value as [`Parsed`] keeps it.
#[derive(Debug, Clone)]
struct Judged {
    value: String,
    piece: Option<crate::config::Piece>,
}

impl AsRef<str> for Judged {
    fn as_ref(&self) -> &str {
        &self.value
    }
}

impl Parsed {
    /// Takes `key`'s new value (`None`: deleted), checked and parsed now
    /// unless it is the value already held.
    pub fn put(&mut self, prefix: &str, key: &str, value: Option<&str>) {
        let Some(value) = value else {
            if self.by_key.remove(key).is_some() {
                self.pending.entry(key.to_owned()).or_insert(true);
            }
            self.misfits.remove(key);
            return;
        };
        if self.by_key.get(key).is_some_and(|j| j.value == value) {
            return;
        }
        self.insert(prefix, key.to_owned(), value.to_owned());
    }

    /// [`Parsed::put`] of a value not held.
    fn insert(&mut self, prefix: &str, key: String, value: String) {
        if layout::check(prefix, &key, &value).is_ok() {
            self.misfits.remove(&key);
        } else {
            self.misfits.insert(key.clone());
        }
        let piece = crate::config::Piece::parse(&value);
        let held = self.by_key.contains_key(&key);
        self.pending.entry(key.clone()).or_insert(held);
        self.by_key.insert(key, Judged { value, piece });
    }

    /// Holds exactly `values` (after a listing): keys not in it are
    /// forgotten, values not held are checked and parsed.
    fn sync(&mut self, prefix: &str, values: BTreeMap<String, String>) {
        let pending = &mut self.pending;
        self.by_key.retain(|key, _| {
            let keep = values.contains_key(key);
            if !keep {
                pending.entry(key.clone()).or_insert(true);
            }
            keep
        });
        self.misfits.retain(|key| values.contains_key(key));
        for (key, value) in values {
            if self.by_key.get(&key).is_none_or(|j| j.value != value) {
                self.insert(prefix, key, value);
            }
        }
    }

    /// Whether a value changed since the last [`Parsed::judge_held`].
    pub fn changed(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The number of values held.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether it holds no value.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// [`EtcdOptions::judge`] of `values`, after a [`Parsed::sync`] to
    /// them.
    #[cfg(test)]
    fn judge(
        &mut self,
        options: &EtcdOptions,
        values: &BTreeMap<String, String>,
    ) -> Result<Config, CatalogError> {
        self.sync(&options.prefix, values.clone());
        self.judge_held(options)
    }

    /// [`EtcdOptions::judge`] of the values held.
    pub fn judge_held(&mut self, options: &EtcdOptions) -> Result<Config, CatalogError> {
        let pending = std::mem::take(&mut self.pending);
        if let Some(changes) = self.alone(&options.prefix, &pending)
            && let Some(config) = self.patch(&options.prefix, changes)
        {
            return Ok(config.clone());
        }
        let judged = self.judge_whole(options);
        self.valid = judged.as_ref().ok().cloned();
        judged
    }

    /// The changes `pending` names, if they can be judged alone: a valid
    /// config before them, and either intentions alone, each valid against
    /// its services, or one service, valid beside the others (and named by
    /// no intention if deleted). Each key, whether it was held, and its
    /// object now.
    fn alone<'k>(
        &self,
        prefix: &str,
        pending: &'k BTreeMap<String, bool>,
    ) -> Option<Vec<(&'k str, bool, Option<Patch>)>> {
        let base = self.valid.as_ref()?;
        // Many changes at once (an import's, or a listing's after a watch
        // fell behind): each alone would cost what a whole judgment does.
        if !self.misfits.is_empty() || pending.len() > ALONE_AT_MOST {
            return None;
        }
        // With no misfit, each key holds the one object it names.
        let intentions = under(prefix, "intentions");
        let services = under(prefix, "services");
        let piece = |key: &str| self.by_key.get(key).map(|j| j.piece.as_ref());
        if let [(key, &held)] = pending.iter().collect::<Vec<_>>()[..]
            && key.starts_with(&services)
        {
            let now = match piece(key) {
                Some(piece) => Some(Patch::Service(piece?.lone_service(base)?)),
                None => {
                    let name = &key[services.len()..];
                    let names = |m: &crate::config::Match| m.to_string() == name;
                    if base
                        .intentions
                        .iter()
                        .any(|i| names(&i.source) || names(&i.destination))
                    {
                        return None;
                    }
                    None
                }
            };
            return Some(vec![(key.as_str(), held, now)]);
        }
        let mut changes = Vec::with_capacity(pending.len());
        for (key, &held) in pending {
            if !key.starts_with(&intentions) {
                return None;
            }
            // The key names the pair: no other intention has it.
            let now = match piece(key) {
                Some(piece) => Some(Patch::Intention(piece?.lone_intention(base)?)),
                None => None,
            };
            changes.push((key.as_str(), held, now));
        }
        Some(changes)
    }

    /// The last valid config, patched with `changes` (from
    /// [`Parsed::alone`]); `None` (and no valid config kept) if they do not
    /// fit it.
    fn patch(
        &mut self,
        prefix: &str,
        changes: Vec<(&str, bool, Option<Patch>)>,
    ) -> Option<&Config> {
        let mut config = self.valid.take()?;
        // In key order: the objects before each key's are final.
        for (key, held, now) in changes {
            let kind = if key.starts_with(&under(prefix, "services")) {
                "services"
            } else {
                "intentions"
            };
            let first = under(prefix, kind);
            // The config's objects of a kind are its keys', in key order.
            let at = self
                .by_key
                .range::<str, _>((
                    std::ops::Bound::Included(first.as_str()),
                    std::ops::Bound::Excluded(key),
                ))
                .count();
            match (kind, now) {
                ("services", Some(Patch::Service(s))) => {
                    splice(&mut config.services, at, held, Some(s))?
                }
                ("services", None) => splice(&mut config.services, at, held, None)?,
                ("intentions", Some(Patch::Intention(i))) => {
                    splice(&mut config.intentions, at, held, Some(i))?
                }
                ("intentions", None) => splice(&mut config.intentions, at, held, None)?,
                _ => return None,
            }
        }
        Some(self.valid.insert(config))
    }

    /// [`Parsed::judge_held`] of the whole catalog.
    fn judge_whole(&self, options: &EtcdOptions) -> Result<Config, CatalogError> {
        // The first misfit in key order, with its own error.
        if let Some(key) = self.misfits.first()
            && let Some(judged) = self.by_key.get(key)
        {
            layout::check(&options.prefix, key, &judged.value)?;
        }
        let assembled = layout::assemble(&options.prefix, &self.by_key);
        let pieces = layout::ordered(&options.prefix, &self.by_key)
            .zip(assembled.pieces())
            .map(|((_, judged), (_, at))| (at, judged.piece.as_ref()));
        let judged = crate::config::judge_pieces(&assembled.text, pieces, &options.path());
        options.judged(&assembled, judged)
    }
}

/// Most changes judged alone at once ([`Parsed::judge_held`]): each costs
/// a scan of the config's services and a walk of its keys of one kind.
const ALONE_AT_MOST: usize = 64;

/// An object a change judged alone puts in the config.
#[derive(Debug)]
enum Patch {
    Intention(Intention),
    Service(crate::config::Service),
}

/// The keys of the objects of `kind` (`services`, `intentions`) under
/// `prefix` start with this.
fn under(prefix: &str, kind: &str) -> String {
    format!("{prefix}/{}/{kind}/", layout::VERSION)
}

/// `list` with its `at`-th object replaced by `now` (`held`: it was
/// there), removed (`now` is `None`), or `now` inserted there (not
/// `held`); `None` if `at` is past what `list` holds.
fn splice<T>(list: &mut Vec<T>, at: usize, held: bool, now: Option<T>) -> Option<()> {
    match (held, now) {
        (true, Some(object)) => *list.get_mut(at)? = object,
        (true, None) if at < list.len() => {
            list.remove(at);
        }
        (false, Some(object)) if at <= list.len() => list.insert(at, object),
        (false, None) => {}
        _ => return None,
    }
    Some(())
}

/// See [`EtcdOptions::snapshot`].
pub(super) struct Snapshot {
    revision: i64,
    /// Where an import under way began.
    import: Option<i64>,
    /// The values as listed (with an import's writes so far), parsed.
    parsed: Parsed,
    /// The acting catalog's config.
    pub(super) config: Config,
}

impl std::fmt::Display for EtcdOptions {
    /// `etcd <members><prefix>`, as logs and `/status` name the store.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "etcd {}{}", self.endpoints.join(","), self.prefix)
    }
}

/// `problems` with each `<path>:<line>:` followed by the key of that line.
fn name_keys(assembled: &Assembled, path: &Path, problems: &str) -> String {
    let marker = format!("{}:", path.display());
    let mut out = String::new();
    for line in problems.lines() {
        out.push_str(line);
        if let Some(at) = line.find(&marker) {
            let digits: String = line[at + marker.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Some(key) = digits.parse().ok().and_then(|n| assembled.key_at(n)) {
                out.push_str(&format!(" (key {key})"));
            }
        }
        out.push('\n');
    }
    out
}

/// Most operations in one etcd transaction (etcd's default limit is 128).
pub(super) const TXN_OPS: usize = 100;
/// The catalog in etcd as it is now, judged (`validate`, `explain`,
/// `intention list`).
pub async fn load(options: &EtcdOptions) -> Result<Config, CatalogError> {
    options
        .on_any_member(|one| async move { Ok(one.snapshot().await?.config) })
        .await
}

/// Keys per page of a listing (`EtcdOptions::range`): a page of catalog
/// values stays far below 4 MiB.
const PAGE: i64 = 1000;

/// The end of the range of keys that start with `prefix` (the prefix with
/// its last byte that is not 0xff incremented, as etcd's own clients do);
/// empty (to the end of the keyspace) if there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The catalog in etcd.
pub struct EtcdCatalog {
    options: EtcdOptions,
    revision: i64,
    /// Where an import under way began (its marker's first revision):
    /// while there is one, changes are not judged (see `import`).
    import: Option<i64>,
    /// The values as of `revision`, parsed for the next judgment.
    parsed: Parsed,
    /// Bytes of keys and values received in watch events.
    received: u64,
    /// Made on the first `changed`, inside the runtime.
    watch: Option<(Client, WatchStream)>,
    /// The outage last logged.
    down: Option<String>,
    reach: std::sync::Arc<super::Reach>,
}

impl EtcdCatalog {
    pub fn new(options: EtcdOptions) -> Self {
        Self {
            revision: 0,
            import: None,
            parsed: Parsed::default(),
            received: 0,
            watch: None,
            down: None,
            reach: std::sync::Arc::new(super::Reach::new(options.to_string())),
            options,
        }
    }

    /// Objects in the catalog as last seen.
    pub fn len(&self) -> usize {
        self.parsed.len()
    }

    /// Bytes of keys and values its watch has received (the payload of
    /// the changes; `cargo xtask bench --catalog` reports it per change).
    pub fn received_bytes(&self) -> u64 {
        self.received
    }

    /// Whether it holds no object (before `load`).
    pub fn is_empty(&self) -> bool {
        self.parsed.is_empty()
    }

    /// Waits for the next valid change.
    async fn next_change(&mut self) -> Config {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.step().await {
                Ok(Some(config)) => return config,
                Ok(None) => backoff = Duration::from_millis(100),
                Err(e) => {
                    self.watch = None;
                    self.options.reconnect();
                    let message = e.to_string();
                    self.reach.set(Some(message.clone()));
                    // Once per outage (its later errors only update /status).
                    if self.down.is_none() {
                        warn!(error = %message, "catalog in etcd unreachable, keeping the last good config");
                    }
                    self.down = Some(message);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One watch response applied (connecting and watching first if need
    /// be): the new config if the catalog changed and is valid.
    async fn step(&mut self) -> Result<Option<Config>, CatalogError> {
        if self.watch.is_none() {
            let mut client = self.options.connect().await?;
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(self.revision + 1);
            let stream = client
                .watch(self.options.keys(), Some(options))
                .await
                .map_err(|e| self.options.unreachable(e))?;
            // Reachable once etcd confirms the watch (below).
            self.watch = Some((client, stream));
        }
        let (client, stream) = self.watch.as_mut().expect("set above");
        let response = stream
            .message()
            .await
            .map_err(|e| self.options.unreachable(e))?
            .ok_or(CatalogError::WatchEnded)?;
        if response.created() && !response.canceled() {
            if self.down.take().is_some() {
                info!("catalog in etcd reachable again");
            }
            self.reach.set(None);
        }
        if response.canceled() {
            if response.compact_revision() > 0 {
                // History before it is gone: start over from a listing.
                info!(
                    revision = self.revision,
                    compacted = response.compact_revision(),
                    "catalog watch fell behind a compaction, listing again"
                );
                let listing = self.options.list(client).await?;
                self.parsed.sync(&self.options.prefix, listing.values);
                self.revision = listing.revision;
                self.watch = None;
                return Ok(self.hold_or_judge(listing.import.map(|i| i.since)));
            }
            return Err(CatalogError::WatchCanceled {
                reason: response.cancel_reason().to_owned(),
            });
        }
        let marker = layout::import_key(&self.options.prefix);
        let mut import = self.import;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            self.received += (kv.key().len() + kv.value().len()) as u64;
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if key == marker {
                import = (event.event_type() == EventType::Put).then(|| kv.create_revision());
                self.revision = self.revision.max(kv.mod_revision());
                continue;
            }
            match event.event_type() {
                EventType::Put => {
                    let value = String::from_utf8_lossy(kv.value());
                    self.parsed.put(&self.options.prefix, &key, Some(&value));
                }
                EventType::Delete => self.parsed.put(&self.options.prefix, &key, None),
            }
            self.revision = self.revision.max(kv.mod_revision());
        }
        Ok(if response.events().is_empty() {
            None
        } else {
            self.hold_or_judge(import)
        })
    }

    /// While an import is under way (`import`: where it began) nothing is
    /// judged: agents keep the catalog from before it until its last
    /// transaction, which removes the marker (see `catalog::import`).
    fn hold_or_judge(&mut self, import: Option<i64>) -> Option<Config> {
        let began = import.is_some() && self.import.is_none();
        let ended = import.is_none() && self.import.is_some();
        self.import = import;
        if let Some(since) = import {
            if began {
                info!(
                    since,
                    "catalog import under way: keeping the catalog from before it until it ends"
                );
            }
            return None;
        }
        if ended {
            info!("catalog import ended");
        }
        self.judge()
    }

    /// The values judged, if they changed since the last judgment.
    fn judge(&mut self) -> Option<Config> {
        super::off_workers(|| self.judge_here())
    }

    /// [`EtcdCatalog::judge`] on this thread.
    fn judge_here(&mut self) -> Option<Config> {
        if !self.parsed.changed() {
            return None;
        }
        // `parsed` was told of every change as it came.
        match self.parsed.judge_held(&self.options) {
            Ok(config) => Some(config),
            Err(e) => {
                warn!("catalog change rejected, keeping the last good config:\n{e}");
                None
            }
        }
    }
}

impl Catalog for EtcdCatalog {
    fn reach(&self) -> std::sync::Arc<super::Reach> {
        self.reach.clone()
    }

    /// Lists the catalog (in a runtime of its own: the agent loads its
    /// config before its runtime starts). An agent does not start without
    /// its catalog.
    fn load(&mut self) -> Result<Config, CatalogError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CatalogError::Runtime)?;
        let now = runtime.block_on(
            self.options
                .on_any_member(|one| async move { one.snapshot().await }),
        )?;
        if let Some(since) = now.import {
            info!(
                since,
                "catalog import under way: running on the catalog from before it until it ends"
            );
        }
        self.parsed = now.parsed;
        self.revision = now.revision;
        self.import = now.import;
        Ok(now.config)
    }

    fn changed(&mut self) -> Change<'_> {
        Box::pin(self.next_change())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{intention, node, service};

    #[test]
    fn a_prefix_ends_where_etcd_clients_end_it() {
        assert_eq!(prefix_end(b"/mesh/v1/"), b"/mesh/v10".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    /// A member that cannot answer sends the command to the next one; a
    /// refusal ends it at once, without trying the others.
    #[tokio::test]
    async fn one_shot_commands_move_past_a_member_that_cannot_answer() {
        let o =
            EtcdOptions::parse("etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379", None).unwrap();
        let status = |s: tonic::Status| CatalogError::Etcd {
            endpoints: String::new(),
            source: etcd_client::Error::GRpcStatus(s),
        };
        let tried = std::sync::Mutex::new(Vec::new());
        let answer = o
            .on_any_member(|one| {
                let endpoint = one.endpoints.concat();
                tried.lock().unwrap().push(endpoint.clone());
                async move {
                    match endpoint.as_str() {
                        "http://10.0.0.3:2379" => Ok("third"),
                        "http://10.0.0.1:2379" => Err(status(tonic::Status::unavailable("down"))),
                        _ => Err(status(tonic::Status::deadline_exceeded("slow"))),
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(answer, "third");
        assert_eq!(tried.lock().unwrap().len(), 3);

        tried.lock().unwrap().clear();
        let refused = o
            .on_any_member(|one| {
                tried.lock().unwrap().push(one.endpoints.concat());
                async { Err::<(), _>(status(tonic::Status::permission_denied("no"))) }
            })
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("no"), "{refused}");
        assert_eq!(tried.lock().unwrap().len(), 1, "a refusal is not retried");
    }

    #[test]
    fn urls_name_members_and_a_prefix() {
        let o = EtcdOptions::parse("etcd://10.0.0.1:2379,10.0.0.2:2379", None).unwrap();
        assert_eq!(
            o.endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(o.prefix, "/mesh");
        let tls = EtcdTls {
            ca: "ca.pem".into(),
            cert: "c.pem".into(),
            key: "k.pem".into(),
        };
        let o = EtcdOptions::parse("etcd://h:1/team/a/", Some(tls)).unwrap();
        assert_eq!(
            (o.endpoints[0].as_str(), o.prefix.as_str()),
            ("https://h:1", "/team/a")
        );
        for bad in [
            "http://h:1",
            "etcd://h",
            "etcd://h:x",
            "etcd://h:1,",
            "etcd://h:1/",
        ] {
            assert!(EtcdOptions::parse(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_from_etcd_name_no_line() {
        let o = EtcdOptions::parse("etcd://h:1", None).unwrap();
        let values = layout::split(
            &format!(
                "{}{}{}",
                node("a", "10.0.0.1"),
                service("web", &["a"], 80),
                intention("*", "web", "deny")
            ),
            &o.prefix,
        )
        .unwrap();
        let config = o.judge(&values).unwrap();
        let decision = crate::policy::Policy::new(&config).decide("web", "web");
        assert_eq!(decision.rule.to_string(), "intention * -> web");
    }

    /// One edit of a random sequence, read from four small numbers: puts
    /// of valid and invalid objects of every kind (references to what is
    /// not there, clashing ports and addresses, bad values, a value that
    /// is not its key's object, unknown fields, garbage) and deletes.
    fn edit(values: &mut BTreeMap<String, String>, (kind, a, b, c): (u8, u8, u8, u8)) {
        let key = |rest: String| format!("/mesh/v1/{rest}");
        let nodes: Vec<String> = (0..=b % 3)
            .map(|k| format!("\"n{}\"", (a + k) % 4))
            .collect();
        let (put, value) = match kind {
            0 => (
                key(format!("nodes/n{a}")),
                format!(
                    "[[node]]\nname = \"n{a}\"\naddress = \"10.0.0.{}\"\n",
                    b % 3 + 1
                ),
            ),
            1 => (
                key(format!("nodes/n{a}")),
                format!(
                    "[[node]]\nname = \"n{a}\"\naddress = \"{}\"\n",
                    ["x", "::1", "10.0.0.9"][usize::from(c % 3)]
                ),
            ),
            2 | 3 => (
                key(format!("services/s{a}")),
                format!(
                    "[[service]]\nname = \"s{a}\"\nnodes = [{}]\nport = {}\n{}",
                    nodes.join(", "),
                    [80, 81, 0, 70000][usize::from(c)],
                    [
                        "",
                        "vip = \"240.0.0.9\"\n",
                        "[[service.check]]\ntcp = true\ninterval = \"1s\"\n",
                        "[[service.check]]\nhttp = \"/\"\ninterval = \"soon\"\n"
                    ][usize::from(b % 4)]
                ),
            ),
            4 | 5 => (
                key(format!(
                    "intentions/{}/s{b}",
                    if a == 4 {
                        "*".to_owned()
                    } else {
                        format!("s{a}")
                    }
                )),
                format!(
                    "[[intention]]\nsource = \"{}\"\ndestination = \"s{b}\"\naction = \"{}\"\n",
                    if a == 4 {
                        "*".to_owned()
                    } else {
                        format!("s{a}")
                    },
                    ["allow", "deny", "deny", "maybe"][usize::from(c)]
                ),
            ),
            6 => (
                key("mesh".into()),
                format!(
                    "[mesh]\ndefault_policy = \"{}\"\n",
                    ["allow", "deny", "deny", "both"][usize::from(c)]
                ),
            ),
            7 => (
                key(format!("revoked/n{a}/ab{b}")),
                format!("[[revoked]]\nnode = \"n{a}\"\nnode_ca = \"ab{b}\"\n"),
            ),
            // Not the object its key names, unknown field, not TOML.
            8 => (
                key(format!("services/s{a}")),
                format!("[[service]]\nname = \"s{b}\"\nnode = \"n0\"\nport = 80\n"),
            ),
            9 => (
                key(format!("services/s{a}")),
                format!(
                    "[[service]]\nname = \"s{a}\"\nnode = \"n0\"\nport = 80\ncolour = \"red\"\n"
                ),
            ),
            10 => (key(format!("nodes/n{a}")), "[[[".to_owned()),
            _ => {
                // Deletes: the a-th key, if any.
                let gone = values
                    .keys()
                    .nth(usize::from(a) * 3 + usize::from(b))
                    .cloned();
                if let Some(gone) = gone {
                    values.remove(&gone);
                }
                return;
            }
        };
        values.insert(put, value);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// The judgment kept from one change to the next (`Parsed`) is
        /// the full one's after every edit of a random sequence: the same
        /// config, or the same errors word for word.
        #[test]
        fn the_incremental_judge_is_the_full_one(
            edits in proptest::collection::vec((0u8..14, 0u8..5, 0u8..5, 0u8..4), 1..60)
        ) {
            let o = EtcdOptions::parse("etcd://h:1", None).unwrap();
            let mut values = layout::split(
                &format!("{}{}{}", node("n0", "10.0.0.1"), service("s0", &["n0"], 80), intention("s0", "s0", "deny")),
                &o.prefix,
            )
            .unwrap();
            let mut synced = Parsed::default();
            // Told only of each changed key, as the watch does.
            let mut told = Parsed::default();
            told.sync(&o.prefix, values.clone());
            proptest::prop_assert!(told.judge_held(&o).is_ok());
            for e in edits {
                let before = values.clone();
                edit(&mut values, e);
                for key in before.keys().chain(values.keys()) {
                    if before.get(key) != values.get(key) {
                        told.put(&o.prefix, key, values.get(key).map(String::as_str));
                    }
                }
                let full = o.judge(&values).map_err(|e| e.to_string());
                let kept = synced.judge(&o, &values).map_err(|e| e.to_string());
                proptest::prop_assert_eq!(&full, &kept, "after {:?}", e);
                // Judged again only if a value changed.
                proptest::prop_assert_eq!(told.changed(), before != values, "after {:?}", e);
                let held = told.judge_held(&o).map_err(|e| e.to_string());
                proptest::prop_assert_eq!(&full, &held, "after {:?}", e);
            }
        }
    }

    /// A valid catalog of four services on two nodes, one intention.
    fn four_services(o: &EtcdOptions) -> BTreeMap<String, String> {
        let text = format!(
            "{}{}{}{}{}{}{}",
            node("n0", "10.0.0.1"),
            node("n1", "10.0.0.2"),
            service("s0", &["n0"], 80),
            service("s1", &["n0"], 81),
            service("s2", &["n1"], 80),
            service("s3", &["n1"], 81),
            intention("s0", "s1", "allow")
        );
        layout::split(&text, &o.prefix).unwrap()
    }

    /// The config the last judgment found, if `parsed` judges its pending
    /// changes alone, else `None`.
    fn alone(parsed: &Parsed, o: &EtcdOptions) -> Option<Config> {
        let mut copy = parsed.clone();
        let pending = std::mem::take(&mut copy.pending);
        let changes = copy.alone(&o.prefix, &pending)?;
        copy.patch(&o.prefix, changes).cloned()
    }

    #[test]
    fn a_change_of_intentions_or_one_service_is_judged_alone() {
        let o = EtcdOptions::parse("etcd://h:1", None).unwrap();
        let mut values = four_services(&o);
        let mut parsed = Parsed::default();
        parsed.judge(&o, &values).unwrap();
        let v = |s: &str, d: &str, a: &str| Some(intention(s, d, a));
        let sv = |name: &str, nodes: &[&str], port| Some(service(name, nodes, port));
        let with_vip = |name: &str, port| {
            Some(format!(
                "{}vip = \"240.0.0.9\"\n",
                service(name, &["n0"], port)
            ))
        };
        // Each step: a key, its new value, whether it is judged alone, and
        // whether the catalog is then valid.
        let steps = [
            // Created, changed, a wildcard, deleted: alone, valid.
            ("intentions/s2/s3", v("s2", "s3", "deny"), true, true),
            ("intentions/s0/s1", v("s0", "s1", "deny"), true, true),
            ("intentions/*/s0", v("*", "s0", "allow"), true, true),
            ("intentions/s2/s3", None, true, true),
            // A problem is judged whole, for its line; so is what follows.
            ("intentions/s2/s9", v("s2", "s9", "deny"), false, false),
            ("intentions/s1/s2", v("s1", "s2", "deny"), false, false),
            ("intentions/s2/s9", None, false, true),
            ("intentions/s1/s0", v("s1", "s0", "maybe"), false, false),
            ("intentions/s1/s0", None, false, true),
            // One service: moved, added, deleted when nothing names it.
            ("services/s3", sv("s3", &["n1", "n0"], 82), true, true),
            ("services/s4", sv("s4", &["n1"], 90), true, true),
            ("services/s4", None, true, true),
            // A port, or a VIP, another service has; a node not declared.
            ("services/s3", sv("s3", &["n1"], 80), false, false),
            ("services/s3", sv("s3", &["n1"], 83), false, true),
            ("services/s5", with_vip("s5", 95), true, true),
            ("services/s6", with_vip("s6", 96), false, false),
            ("services/s6", None, false, true),
            ("services/s3", sv("s3", &["n7"], 83), false, false),
            ("services/s3", sv("s3", &["n1"], 83), false, true),
            // Deleted while an intention names it: judged whole, rejected.
            ("services/s1", None, false, false),
            ("services/s1", sv("s1", &["n0"], 81), false, true),
            // Any other kind of object is judged whole.
            ("nodes/n2", Some(node("n2", "10.0.0.3")), false, true),
            ("intentions/s3/s2", v("s3", "s2", "allow"), true, true),
        ];
        for (key, value, judged_alone, valid) in steps {
            let key = format!("/mesh/v1/{key}");
            match &value {
                Some(v) => values.insert(key.clone(), v.clone()),
                None => values.remove(&key),
            };
            parsed.put(&o.prefix, &key, value.as_deref());
            let fast = alone(&parsed, &o);
            let full = o.judge(&values).map_err(|e| e.to_string());
            assert_eq!(parsed.judge_held(&o).map_err(|e| e.to_string()), full);
            assert_eq!(
                (fast.is_some(), full.is_ok()),
                (judged_alone, valid),
                "{key}"
            );
        }
        // Many intentions at once (an import's): judged whole, in one pass.
        let add = |parsed: &mut Parsed, values: &mut BTreeMap<_, _>, key: String, value: String| {
            let key = format!("/mesh/v1/{key}");
            parsed.put(&o.prefix, &key, Some(&value));
            values.insert(key, value);
        };
        for i in 0..=ALONE_AT_MOST {
            let value = service(&format!("x{i}"), &["n2"], 1000 + i as u16);
            add(&mut parsed, &mut values, format!("services/x{i}"), value);
        }
        parsed.judge_held(&o).unwrap();
        for i in 0..=ALONE_AT_MOST {
            let (source, destination) = (format!("s{}", i % 4), format!("x{i}"));
            let value = intention(&source, &destination, "deny");
            add(
                &mut parsed,
                &mut values,
                format!("intentions/{source}/{destination}"),
                value,
            );
        }
        assert!(alone(&parsed, &o).is_none());
        let full = o.judge(&values).map_err(|e| e.to_string());
        assert!(full.is_ok(), "{full:?}");
        assert_eq!(parsed.judge_held(&o).map_err(|e| e.to_string()), full);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// From a valid catalog, random edits mostly of intentions and
        /// services (valid, naming unknown services or nodes, clashing
        /// ports and VIPs, bad values, not their key's, deletes) and some
        /// nodes: the judgment of each, alone or whole, is the full one's.
        #[test]
        fn changes_judged_alone_are_judged_as_in_full(
            edits in proptest::collection::vec(
                (proptest::sample::select(vec![4u8, 5, 4, 5, 8, 11, 12, 2, 3, 2, 3, 0]), 0u8..5, 0u8..5, 0u8..4),
                1..40,
            )
        ) {
            let o = EtcdOptions::parse("etcd://h:1", None).unwrap();
            let mut values = four_services(&o);
            let mut told = Parsed::default();
            proptest::prop_assert!(told.judge(&o, &values).is_ok());
            for e in edits {
                let before = values.clone();
                edit(&mut values, e);
                for key in before.keys().chain(values.keys()) {
                    if before.get(key) != values.get(key) {
                        told.put(&o.prefix, key, values.get(key).map(String::as_str));
                    }
                }
                let full = o.judge(&values).map_err(|e| e.to_string());
                if let Some(fast) = alone(&told, &o) {
                    proptest::prop_assert_eq!(&Ok(fast), &full, "alone, after {:?}", e);
                }
                let held = told.judge_held(&o).map_err(|e| e.to_string());
                proptest::prop_assert_eq!(&full, &held, "after {:?}", e);
            }
        }
    }

    #[test]
    fn a_rejected_catalog_names_the_key_of_each_problem() {
        let o = EtcdOptions::parse("etcd://h:1", None).unwrap();
        let mut values = layout::split(
            // web on node b, which is not declared.
            &format!("{}{}", node("a", "10.0.0.1"), service("web", &["b"], 80)),
            &o.prefix,
        )
        .unwrap();
        let e = o.judge(&values).unwrap_err().to_string();
        assert!(e.contains("(key /mesh/v1/services/web)"), "{e}");
        values.insert("/mesh/v1/nodes/b".into(), "[[node]]\nname = \"c\"\n".into());
        let e = o.judge(&values).unwrap_err().to_string();
        assert!(e.contains("/mesh/v1/nodes/b"), "{e}");
    }
}
