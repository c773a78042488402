//! `mesh-agent catalog import F --catalog etcd://...`: make the catalog in
//! etcd hold what a config file holds, writing only what differs.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use super::{
    CatalogError, EtcdOptions,
    etcd::{Importing, Listing, TXN_OPS},
    layout,
};
use crate::config::Config;

/// What [`from_file`] changed, one line per key, then the counts.
#[derive(Debug, Default)]
pub struct Report {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Keys the file says otherwise, left as other clients wrote them
    /// during the import.
    pub kept: Vec<String>,
    /// Revocations in etcd that the file lacks, kept: a revocation is for
    /// ever, and an import does not lift one.
    pub revocations: Vec<String>,
    pub unchanged: usize,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (what, keys) in [
            ("added", &self.added),
            ("changed", &self.changed),
            ("removed", &self.removed),
        ] {
            for key in keys {
                writeln!(f, "{what} {key}")?;
            }
        }
        for key in &self.kept {
            writeln!(
                f,
                "kept {key} (written by another client during the import)"
            )?;
        }
        for key in &self.revocations {
            writeln!(
                f,
                "kept {key} (a revocation the file lacks: an import never lifts one)"
            )?;
        }
        write!(
            f,
            "{} added, {} changed, {} removed, {} unchanged",
            self.added.len(),
            self.changed.len(),
            self.removed.len(),
            self.unchanged
        )?;
        if !self.kept.is_empty() {
            write!(f, ", {} kept", self.kept.len())?;
        }
        if !self.revocations.is_empty() {
            write!(f, ", {} revocations kept", self.revocations.len())?;
        }
        writeln!(f)
    }
}

/// Makes the catalog in etcd hold what the config file at `file` holds:
/// the file is judged first (nothing is written if it is invalid), then
/// only the keys that differ are written and the keys the file no longer
/// has are deleted, except revocations (a node CA revoked stays revoked:
/// `[[revoked]]` in the file adds or changes one, its absence lifts none).
/// Running it again changes nothing.
pub async fn from_file(options: &EtcdOptions, file: &Path) -> Result<Report, CatalogError> {
    let bytes = Config::read(file)?;
    let from_file = Config::from_bytes(&bytes, file)?;
    let text = String::from_utf8_lossy(&bytes);
    let wanted = layout::split(text.trim_start_matches('\u{feff}'), &options.prefix)?;
    // What would be in etcd must be what the file says, object for object.
    let mut to_store = options.judge(&wanted)?;
    // A relative ca_dir is relative to the file there, to the agent's
    // working directory here: the same setting.
    to_store.mesh.ca_dir.clone_from(&from_file.mesh.ca_dir);
    // Object for object, in any order (etcd's is by key).
    let same = |a: &Config, b: &Config| {
        let nodes = |c: &Config| {
            let mut n = c.nodes.clone();
            n.sort_by(|x, y| x.name.cmp(&y.name));
            n
        };
        let services = |c: &Config| {
            let mut s = c.services.clone();
            s.sort_by(|x, y| x.name.cmp(&y.name));
            s
        };
        let rules = |c: &Config| {
            let mut r: Vec<String> = c
                .intentions
                .iter()
                .map(|i| format!("{} {} {}", i.source, i.destination, i.action))
                .collect();
            r.sort();
            r
        };
        a.mesh == b.mesh
            && nodes(a) == nodes(b)
            && services(a) == services(b)
            && rules(a) == rules(b)
    };
    if !same(&to_store, &from_file) {
        return Err(CatalogError::Rejected(format!(
            "{} does not split into the same catalog; nothing written",
            file.display()
        )));
    }
    let wanted = &wanted;
    // Names this import in its marker, across the members it may move to.
    let token = format!("{:016x}", random());
    let token = &token;
    options
        .on_any_member_within(IMPORT_DEADLINE, |one| async move {
            sync(&one, wanted, token).await
        })
        .await
}

/// A random number (from the standard library's per-process hash keys):
/// for pauses and names that only need to differ.
pub(super) fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// How long an import may take, moving past members that stop answering
/// (each request is bounded on its own).
const IMPORT_DEADLINE: Duration = Duration::from_secs(600);

/// The claim on an import's marker ends this long after its importer
/// stops keeping it (dies).
const CLAIM_TTL: i64 = 10;
/// How often the claim is kept.
const CLAIM_KEEPALIVE: Duration = Duration::from_secs(3);
/// Transactions refused (a key written by another client in between)
/// before an import gives up.
const CONFLICTS: u32 = 50;

/// One write of an import: `key` to `value` (`None`: deleted), if it is
/// still as last read (`modified`, 0: absent).
#[derive(Debug)]
struct Write {
    key: String,
    value: Option<String>,
    modified: i64,
}

impl Write {
    fn op(&self) -> TxnOp {
        match &self.value {
            Some(v) => TxnOp::put(self.key.as_str(), v.as_str(), None),
            None => TxnOp::delete(self.key.as_str(), None),
        }
    }

    fn unchanged(&self) -> Compare {
        Compare::mod_revision(self.key.as_str(), CompareOp::Equal, self.modified)
    }
}

/// The writes that make `listing` what `wanted` says, in the order objects
/// depend on each other (deletes of intentions and revocations; puts of
/// mesh, nodes, services, then the rest; deletes of services, nodes), so
/// the catalog stays valid between transactions for edits made meanwhile.
/// A key written by another client since the import read the catalog
/// (`read`) is left as they wrote it, and added to `kept`: so is one that
/// was there then (`first`) or written by the import since (`ours`), and
/// is gone now.
fn plan(
    prefix: &str,
    wanted: &BTreeMap<String, String>,
    listing: &Listing,
    read: i64,
    first: &BTreeMap<String, String>,
    ours: &BTreeSet<String>,
    kept: &mut BTreeSet<String>,
) -> Vec<Write> {
    let theirs = |key: &str| listing.modified.get(key).is_some_and(|m| *m > read);
    let mut writes = Vec::new();
    for (key, value) in wanted {
        let now = listing.values.get(key);
        if now == Some(value) {
            continue;
        }
        if theirs(key) || (now.is_none() && (first.contains_key(key) || ours.contains(key))) {
            kept.insert(key.clone());
            continue;
        }
        writes.push(Write {
            key: key.clone(),
            value: Some(value.clone()),
            modified: listing.modified.get(key).copied().unwrap_or(0),
        });
    }
    for (key, modified) in &listing.modified {
        if wanted.contains_key(key) {
            continue;
        }
        if theirs(key) {
            kept.insert(key.clone());
            continue;
        }
        writes.push(Write {
            key: key.clone(),
            value: None,
            modified: *modified,
        });
    }
    let rank = |w: &Write| {
        let object = match layout::Object::of_key(prefix, &w.key) {
            Ok(layout::Object::Mesh) => 0,
            Ok(layout::Object::Node(_)) => 1,
            Ok(layout::Object::Service(_)) => 2,
            _ => 3,
        };
        match &w.value {
            None if object == 3 => 0,
            Some(_) => 1 + object,
            None => 8 - object,
        }
    };
    writes.sort_by_key(rank);
    writes
}

/// The revocations in `first` (the catalog as read) that `wanted` (the
/// file's keys) lacks and that stay: a revoked CA is refused for ever, so an
/// import lifts none. One the catalog would reject (written past the CLI,
/// e.g. a `node_ca` that is not a SHA-256) does not stay: it is deleted as
/// any key the file lacks, or the import could never succeed.
fn standing(
    options: &EtcdOptions,
    wanted: &BTreeMap<String, String>,
    first: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let standing: BTreeMap<String, String> = first
        .iter()
        .filter(|(key, _)| {
            !wanted.contains_key(*key)
                && matches!(
                    layout::Object::of_key(&options.prefix, key),
                    Ok(layout::Object::Revoked { .. })
                )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let judges = |extra: &BTreeMap<String, String>| {
        let mut all = wanted.clone();
        all.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        options.judge(&all).is_ok()
    };
    if standing.is_empty() || judges(&standing) {
        return standing;
    }
    standing
        .into_iter()
        .filter(|(k, v)| judges(&BTreeMap::from([(k.clone(), v.clone())])))
        .collect()
}

/// The import's claim on the marker: the revision that last wrote it, and
/// the lease that says its importer lives (kept by a task).
struct Claim {
    modified: i64,
    /// Held for its drop: the keepalive task ends with the claim.
    _keeper: super::AbortOnDrop,
}

/// The marker's value: who imports, and the lease that says they live.
fn marker_value(token: &str, lease: i64) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut doc = toml_edit::DocumentMut::new();
    doc.insert("token", toml_edit::value(token));
    doc.insert("lease", toml_edit::value(lease));
    doc.insert(
        "by",
        toml_edit::value(format!("{} pid {}", host.trim(), std::process::id())),
    );
    doc.to_string()
}

/// A field of a marker's value (values in etcd may hold anything).
fn marker_field(value: &str, field: &str) -> Option<toml_edit::Value> {
    let doc: toml_edit::DocumentMut = value.parse().ok()?;
    doc.get(field)?.as_value().cloned()
}

/// The refusal of an import while `marker`'s importer runs.
fn running(marker: &Importing) -> CatalogError {
    CatalogError::ImportRunning {
        since: marker.since,
        by: marker_field(&marker.value, "by").and_then(|v| v.as_str().map(str::to_owned)),
    }
}

/// Whether the import that wrote `marker` is still alive (its lease is).
async fn claimed(client: &mut Client, marker: &Importing) -> bool {
    let Some(lease) = marker_field(&marker.value, "lease").and_then(|v| v.as_integer()) else {
        return false;
    };
    match client.lease_time_to_live(lease, None).await {
        Ok(answer) => answer.ttl() > 0,
        Err(_) => false,
    }
}

/// Makes the catalog in etcd what `wanted` says (see [`from_file`]); safe
/// to run again.
///
/// Up to [`TXN_OPS`] writes go in one transaction, guarded on nothing
/// under the prefix having changed since the listing. A larger import
/// first puts a marker key (`layout::import_key`), in the transaction of
/// its first batch, then writes batch after batch, each guarded on its
/// keys and on the marker being its own; its last transaction (the final
/// batch, judged with everything else under the prefix) deletes the
/// marker. Agents do not judge the catalog while the marker is there
/// (`etcd::EtcdCatalog`), and one that starts then reads the revision
/// before it: no agent acts on a catalog that is neither the old nor the
/// new one. A marker whose importer died (its lease gone) is taken over by
/// the next import; one whose importer lives refuses the next import.
async fn sync(
    options: &EtcdOptions,
    wanted: &BTreeMap<String, String>,
    token: &str,
) -> Result<Report, CatalogError> {
    let mut client = options.connect().await?;
    let marker = layout::import_key(&options.prefix);
    let mut listing = options.list(&mut client).await?;
    let read = listing.revision;
    let first = listing.values.clone();
    let mut report = Report::default();
    let standing = standing(options, wanted, &first);
    report.revocations = standing.keys().cloned().collect();
    let in_file = wanted;
    let with_standing;
    let wanted = if standing.is_empty() {
        wanted
    } else {
        with_standing = wanted.clone().into_iter().chain(standing).collect();
        &with_standing
    };
    for (key, value) in wanted {
        if !in_file.contains_key(key) {
            // A standing revocation: reported as such.
            continue;
        }
        match first.get(key) {
            Some(now) if now == value => report.unchanged += 1,
            Some(_) => report.changed.push(key.clone()),
            None => report.added.push(key.clone()),
        }
    }
    report.removed = first
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .cloned()
        .collect();
    tracing::info!(
        revision = read,
        keys = first.len(),
        "catalog read: writes by other clients from now on are kept"
    );
    let mut ours = BTreeSet::new();
    let mut kept = BTreeSet::new();
    let mut claim: Option<Claim> = None;
    let mut conflicts = 0;
    loop {
        match (&listing.import, &claim) {
            (Some(m), Some(c)) if m.modified != c.modified => return Err(running(m)),
            (None, Some(_)) => return Err(CatalogError::Busy { key: marker }),
            (Some(m), None) => {
                let mine =
                    marker_field(&m.value, "token").is_some_and(|t| t.as_str() == Some(token));
                if !mine && claimed(&mut client, m).await {
                    return Err(running(m));
                }
            }
            _ => {}
        }
        let writes = plan(
            &options.prefix,
            wanted,
            &listing,
            read,
            &first,
            &ours,
            &mut kept,
        );
        // Batches under the marker while more than one transaction is left.
        let mut at = 0;
        let mut refused = false;
        while writes.len() - at > TXN_OPS {
            let batch = &writes[at..at + TXN_OPS];
            match write_batch(
                options,
                &mut client,
                &marker,
                token,
                batch,
                &listing,
                &mut claim,
            )
            .await?
            {
                true => {
                    ours.extend(batch.iter().map(|w| w.key.clone()));
                    at += TXN_OPS;
                }
                false => {
                    refused = true;
                    break;
                }
            }
        }
        if !refused {
            if at > 0 {
                // The last transaction is planned on a fresh listing.
                listing = options.list(&mut client).await?;
                continue;
            }
            if writes.is_empty() && listing.import.is_none() {
                break;
            }
            if write_last(options, &mut client, &marker, &writes, &listing, &kept).await? {
                break;
            }
        }
        // Refused: a key was written by another client in between.
        conflicts += 1;
        if conflicts > CONFLICTS {
            return Err(CatalogError::Busy {
                key: options.keys(),
            });
        }
        listing = options.list(&mut client).await?;
    }
    drop(claim);
    // Keys the import would have written, kept as others wrote them.
    for list in [
        &mut report.added,
        &mut report.changed,
        &mut report.removed,
        &mut report.revocations,
    ] {
        list.retain(|k| !kept.contains(k));
    }
    report.kept = kept.into_iter().collect();
    Ok(report)
}

/// Keeps the claim's lease while the import runs (the task is aborted
/// when it ends).
async fn keep_claim(mut client: Client, lease: i64) {
    let Ok((mut keeper, mut answers)) = client.lease_keep_alive(lease).await else {
        return;
    };
    loop {
        tokio::time::sleep(CLAIM_KEEPALIVE).await;
        if keeper.keep_alive().await.is_err() || answers.message().await.is_err() {
            return;
        }
    }
}

/// Writes `batch` if each of its keys is as `listing` read it, with the
/// marker: its first batch puts it (taking over one whose importer died,
/// or its own), the others need it unchanged. Whether it was written.
async fn write_batch(
    options: &EtcdOptions,
    client: &mut Client,
    marker: &str,
    token: &str,
    batch: &[Write],
    listing: &Listing,
    claim: &mut Option<Claim>,
) -> Result<bool, CatalogError> {
    let mut compares: Vec<Compare> = batch.iter().map(Write::unchanged).collect();
    let mut ops: Vec<TxnOp> = batch.iter().map(Write::op).collect();
    let mut lease = None;
    match (&*claim, &listing.import) {
        (Some(c), _) => compares.push(Compare::mod_revision(marker, CompareOp::Equal, c.modified)),
        (None, taken) => {
            let granted = client
                .lease_grant(CLAIM_TTL, None)
                .await
                .map_err(|e| options.unreachable(e))?
                .id();
            lease = Some(granted);
            compares.push(match taken {
                Some(m) => Compare::mod_revision(marker, CompareOp::Equal, m.modified),
                None => Compare::create_revision(marker, CompareOp::Equal, 0),
            });
            ops.push(TxnOp::put(marker, marker_value(token, granted), None));
        }
    }
    let answer = client
        .txn(Txn::new().when(compares).and_then(ops))
        .await
        .map_err(|e| options.unreachable(e))?;
    match (answer.succeeded(), lease) {
        (true, Some(lease)) => {
            *claim = Some(Claim {
                modified: answer.header().map_or(0, |h| h.revision()),
                _keeper: super::AbortOnDrop(tokio::spawn(keep_claim(client.clone(), lease))),
            });
        }
        (false, Some(lease)) => {
            let _ = client.lease_revoke(lease).await;
        }
        _ => {}
    }
    Ok(answer.succeeded())
}

/// The import's last transaction: `writes` (at most [`TXN_OPS`]) if
/// nothing under the prefix changed since `listing`, removing the marker
/// if there is one. The catalog it makes must be valid, with what other
/// clients wrote meanwhile (`kept`). Whether it was written.
async fn write_last(
    options: &EtcdOptions,
    client: &mut Client,
    marker: &str,
    writes: &[Write],
    listing: &Listing,
    kept: &BTreeSet<String>,
) -> Result<bool, CatalogError> {
    let mut values = listing.values.clone();
    for w in writes {
        match &w.value {
            Some(v) => values.insert(w.key.clone(), v.clone()),
            None => values.remove(&w.key),
        };
    }
    if let Err(e) = options.judge(&values) {
        let kept: Vec<&str> = kept.iter().map(String::as_str).collect();
        return Err(CatalogError::Rejected(format!(
            "{e}with what other clients wrote during the import ({}); {}",
            kept.join(", "),
            if listing.import.is_some() {
                "the import is not finished: agents keep the catalog from before it; run it again once that is mended"
            } else {
                "nothing written"
            }
        )));
    }
    let mut ops: Vec<TxnOp> = writes.iter().map(Write::op).collect();
    if listing.import.is_some() {
        ops.push(TxnOp::delete(marker, None));
    }
    let guard =
        Compare::mod_revision(options.keys(), CompareOp::Less, listing.revision + 1).with_prefix();
    let answer = client
        .txn(Txn::new().when([guard]).and_then(ops))
        .await
        .map_err(|e| options.unreachable(e))?;
    Ok(answer.succeeded())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(keys: &[(&str, &str, i64)], revision: i64) -> Listing {
        Listing {
            values: keys
                .iter()
                .map(|(k, v, _)| (k.to_string(), v.to_string()))
                .collect(),
            modified: keys.iter().map(|(k, _, m)| (k.to_string(), *m)).collect(),
            revision,
            import: None,
        }
    }

    fn map(keys: &[(&str, &str)]) -> BTreeMap<String, String> {
        keys.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const S: &str = "/m/v1/services/s";
    const N: &str = "/m/v1/nodes/n";
    const I: &str = "/m/v1/intentions/a/b";
    const J: &str = "/m/v1/intentions/b/a";

    /// Writes come in the order objects depend on each other, each
    /// guarded on the revision it was read at (0: absent).
    #[test]
    fn writes_follow_dependencies() {
        let now = listing(
            &[(S, "old", 3), (I, "allow", 4), ("/m/v1/nodes/x", "x", 2)],
            5,
        );
        let wanted = map(&[(N, "n"), (S, "new"), (J, "deny")]);
        let mut kept = BTreeSet::new();
        let writes = plan(
            "/m",
            &wanted,
            &now,
            5,
            &now.values,
            &BTreeSet::new(),
            &mut kept,
        );
        let seen: Vec<(&str, bool, i64)> = writes
            .iter()
            .map(|w| (w.key.as_str(), w.value.is_some(), w.modified))
            .collect();
        assert_eq!(
            seen,
            [
                (I, false, 4),
                (N, true, 0),
                (S, true, 3),
                (J, true, 0),
                ("/m/v1/nodes/x", false, 2)
            ]
        );
        assert!(kept.is_empty());
    }

    /// What another client wrote after the import read the catalog (at 5)
    /// stays: a new key, a changed one, a deleted one; so does a key the
    /// import wrote and another client deleted after.
    #[test]
    fn writes_by_others_since_the_read_are_kept() {
        let first = map(&[(S, "s"), (I, "allow"), (N, "n")]);
        // Since 5: J created and I changed by others, N deleted by others,
        // "/m/v1/nodes/m" written by the import then deleted by others.
        let now = listing(&[(S, "s", 2), (I, "deny", 7), (J, "deny", 8)], 9);
        let wanted = map(&[(S, "s"), (I, "allow"), (N, "n"), ("/m/v1/nodes/m", "m")]);
        let ours = BTreeSet::from(["/m/v1/nodes/m".to_owned()]);
        let mut kept = BTreeSet::new();
        let writes = plan("/m", &wanted, &now, 5, &first, &ours, &mut kept);
        assert!(writes.is_empty(), "{writes:?}");
        assert_eq!(
            kept.iter().map(String::as_str).collect::<Vec<_>>(),
            [
                "/m/v1/intentions/a/b",
                "/m/v1/intentions/b/a",
                "/m/v1/nodes/m",
                "/m/v1/nodes/n"
            ]
        );
    }

    #[test]
    fn a_report_names_what_was_kept() {
        let report = Report {
            added: vec![S.into()],
            kept: vec![I.into()],
            ..Report::default()
        };
        let text = report.to_string();
        assert!(
            text.contains(&format!("kept {I} (written by another client")),
            "{text}"
        );
        assert!(
            text.ends_with("1 added, 0 changed, 0 removed, 0 unchanged, 1 kept\n"),
            "{text}"
        );
    }

    /// A marker's value names its importer and lease; one that reads as
    /// nothing names no lease (so its claim counts as gone).
    #[test]
    fn markers_name_their_importer() {
        let value = marker_value("ab12", 77);
        assert_eq!(
            marker_field(&value, "token").and_then(|v| v.as_str().map(str::to_owned)),
            Some("ab12".to_owned())
        );
        assert_eq!(
            marker_field(&value, "lease").and_then(|v| v.as_integer()),
            Some(77)
        );
        for odd in ["", "lease = \"x\"", "[lease]"] {
            assert_eq!(
                marker_field(odd, "lease").and_then(|v| v.as_integer()),
                None
            );
        }
    }
}
