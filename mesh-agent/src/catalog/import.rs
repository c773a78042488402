//! `mesh-agent catalog import F --catalog etcd://...`: make the catalog in
//! etcd hold what a config file holds, writing only what differs.

use std::{collections::BTreeMap, path::Path};

use super::{CatalogError, EtcdOptions, etcd::TXN_OPS, layout};
use crate::config::Config;

/// What [`from_file`] changed, one line per key, then the counts.
#[derive(Debug, Default)]
pub struct Report {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
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
        writeln!(
            f,
            "{} added, {} changed, {} removed, {} unchanged",
            self.added.len(),
            self.changed.len(),
            self.removed.len(),
            self.unchanged
        )
    }
}

/// Makes the catalog in etcd hold what the config file at `file` holds:
/// the file is judged first (nothing is written if it is invalid), then
/// only the keys that differ are written and the keys the file no longer
/// has are deleted. Running it again changes nothing.
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
    options
        .on_any_member(|one| async move { sync(&one, wanted).await })
        .await
}

/// Writes what differs between `wanted` and the catalog in etcd (see
/// [`from_file`]); safe to run again.
async fn sync(
    options: &EtcdOptions,
    wanted: &BTreeMap<String, String>,
) -> Result<Report, CatalogError> {
    let mut client = options.connect().await?;
    let (current, _) = options.list(&mut client).await?;
    let mut report = Report::default();
    let mut puts = Vec::new();
    let mut deletes = Vec::new();
    for (key, value) in wanted {
        match current.get(key) {
            Some(now) if now == value => report.unchanged += 1,
            Some(_) => {
                report.changed.push(key.clone());
                puts.push((key, value));
            }
            None => {
                report.added.push(key.clone());
                puts.push((key, value));
            }
        }
    }
    for key in current.keys().filter(|k| !wanted.contains_key(*k)) {
        report.removed.push(key.clone());
        deletes.push(key);
    }
    // Batches: a catalog of thousands of objects does not fit one
    // transaction, and agents judge each batch they see. Puts go in the
    // order objects depend on each other (mesh, nodes, services,
    // intentions) and deletes the other way, so more of the batches are
    // valid catalogs; one that is not is rejected until the next.
    let rank = |key: &str| match layout::Object::of_key(&options.prefix, key) {
        Ok(layout::Object::Mesh) => 0,
        Ok(layout::Object::Node(_)) => 1,
        Ok(layout::Object::Service(_)) => 2,
        _ => 3,
    };
    puts.sort_by_key(|(k, _)| rank(k));
    deletes.sort_by_key(|k| std::cmp::Reverse(rank(k)));
    let ops: Vec<etcd_client::TxnOp> = deletes
        .iter()
        .filter(|k| rank(k) == 3)
        .map(|k| etcd_client::TxnOp::delete(k.as_str(), None))
        .chain(
            puts.iter()
                .map(|(k, v)| etcd_client::TxnOp::put(k.as_str(), v.as_str(), None)),
        )
        .chain(
            deletes
                .iter()
                .filter(|k| rank(k) < 3)
                .map(|k| etcd_client::TxnOp::delete(k.as_str(), None)),
        )
        .collect();
    for batch in ops.chunks(TXN_OPS) {
        client
            .txn(etcd_client::Txn::new().and_then(batch.to_vec()))
            .await
            .map_err(|e| options.unreachable(e))?;
    }
    Ok(report)
}
