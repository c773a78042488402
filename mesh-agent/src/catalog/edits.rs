//! Edits of the catalog in etcd by the CLI and the UI (`intention
//! create|delete`, `node revoke|readmit`): each judged as a whole catalog
//! and written in one guarded transaction.

use std::collections::BTreeMap;

use super::{CatalogError, EtcdOptions, layout};

/// Sets (`Some`) or removes (`None`) the intention `source -> destination`
/// in etcd, as `intention create|delete` does in a file: the catalog with
/// the change must be valid, and the write happens only if its key and
/// the services it names are as they were read (writes elsewhere in the
/// catalog do not hold it up); else it is read again (`edit_guarded`).
/// Returns the action the key held before.
pub async fn set_intention(
    options: &EtcdOptions,
    source: &str,
    destination: &str,
    action: Option<crate::config::Action>,
) -> Result<Option<crate::config::Action>, CatalogError> {
    let key = layout::Object::Intention {
        source: source.to_owned(),
        destination: destination.to_owned(),
    }
    .key(&options.prefix);
    let busy = key.clone();
    let edit = move |values: &mut BTreeMap<String, String>| {
        let before = values.get(&key).and_then(|v| intention_action(v));
        // Already so: the value (and any comment in it) stays as it is,
        // written again (`Guard::Keys`).
        if action.is_some() && before == action {
            return Ok(before);
        }
        match action {
            Some(action) => {
                values.insert(key.clone(), intention_value(source, destination, action));
            }
            None => {
                values.remove(&key);
            }
        }
        Ok(before)
    };
    // Its validity rests on the services it names (a wildcard names none).
    let guarded = std::iter::once(busy.clone())
        .chain(
            [source, destination]
                .into_iter()
                .filter(|s| *s != "*")
                .map(|s| layout::Object::Service(s.to_owned()).key(&options.prefix)),
        )
        .collect();
    edit_on_any_member(options, &busy, Guard::Keys(guarded), edit).await
}

/// Revokes node `node`'s CA `node_ca` in etcd (see `config::edit::revoke`).
pub async fn revoke(
    options: &EtcdOptions,
    node: &str,
    node_ca: &str,
) -> Result<crate::config::edit::Revoking, CatalogError> {
    use crate::config::edit::Revoking;
    let key = layout::Object::Revoked {
        node: node.to_owned(),
        node_ca: node_ca.to_owned(),
    }
    .key(&options.prefix);
    let edit = move |values: &mut BTreeMap<String, String>| {
        let done = match values.get(&key) {
            None => Revoking::Added,
            Some(v) if revoked_readmitted(v) => Revoking::Again,
            Some(_) => return Ok(Revoking::Unchanged),
        };
        values.insert(key.clone(), revoked_value(node, node_ca, false));
        Ok(done)
    };
    let busy = options.keys();
    edit_on_any_member(options, &busy, Guard::Prefix, edit).await
}

/// Readmits node `node` in etcd (see `config::edit::readmit`): how many
/// revocations were in force.
pub async fn readmit(options: &EtcdOptions, node: &str) -> Result<usize, CatalogError> {
    let prefix = layout::Object::Revoked {
        node: node.to_owned(),
        node_ca: String::new(),
    }
    .key(&options.prefix);
    let edit = move |values: &mut BTreeMap<String, String>| {
        let mut n = 0;
        for (key, value) in values.iter_mut() {
            let Some(node_ca) = key.strip_prefix(&prefix) else {
                continue;
            };
            if !revoked_readmitted(value) {
                *value = revoked_value(node, node_ca, true);
                n += 1;
            }
        }
        if n == 0 {
            return Err(CatalogError::NotRevoked {
                node: node.to_owned(),
            });
        }
        Ok(n)
    };
    let busy = options.keys();
    edit_on_any_member(options, &busy, Guard::Prefix, edit).await
}

/// What an edit's transaction compares besides the keys it writes (each
/// of those must be as the edit read it).
#[derive(Debug, Clone)]
pub(super) enum Guard {
    /// Nothing under the prefix written since the listing.
    Prefix,
    /// These keys as the listing read them (still absent if absent): the
    /// objects the change's validity rests on. The first is written even
    /// if the edit leaves it as it was, so that a write the user was told
    /// about is one (a `catalog import` that read the catalog before it
    /// keeps it: `catalog::import`).
    Keys(Vec<String>),
}

/// [`edit_guarded`] through the first member that answers
/// (`EtcdOptions::on_any_member`); `busy` names what kept changing.
async fn edit_on_any_member<T>(
    options: &EtcdOptions,
    busy: &str,
    guard: Guard,
    edit: impl Fn(&mut BTreeMap<String, String>) -> Result<T, CatalogError> + Clone,
) -> Result<T, CatalogError> {
    options
        .on_any_member(|one| {
            let edit = edit.clone();
            let guard = guard.clone();
            async move { edit_guarded(&one, busy, &guard, edit).await }
        })
        .await
}

/// Tries of [`edit_guarded`] before it gives up.
const EDIT_TRIES: u32 = 8;

/// Applies `edit` to the catalog's values and writes what it changed in one
/// transaction, judged as a whole first and guarded: every key it writes
/// as it was listed, and `guard` (a delete in between is not seen by
/// [`Guard::Prefix`]: etcd compares revisions of keys that exist); else
/// listed again and retried after a short random pause, up to
/// [`EDIT_TRIES`] times, then [`CatalogError::Busy`] naming `busy`.
/// Nothing is written if `edit` changed nothing. During a `catalog import`
/// the edit is judged with what the import wrote so far, and agents act
/// on it when the import ends (logged).
async fn edit_guarded<T>(
    options: &EtcdOptions,
    busy: &str,
    guard: &Guard,
    edit: impl Fn(&mut BTreeMap<String, String>) -> Result<T, CatalogError>,
) -> Result<T, CatalogError> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let mut client = options.connect().await?;
    for attempt in 0..EDIT_TRIES {
        if attempt > 0 {
            let pause = 10 + super::import::random() % (20 * u64::from(attempt));
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        }
        let listing = options.list(&mut client).await?;
        let before = &listing.values;
        let mut values = before.clone();
        let out = edit(&mut values)?;
        let mut changed: Vec<&String> = values
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .chain(before.keys().filter(|k| !values.contains_key(*k)))
            .collect();
        if let Guard::Keys(keys) = guard
            && let Some((key, _)) = keys.first().and_then(|k| values.get_key_value(k))
            && !changed.contains(&key)
        {
            changed.push(key);
        }
        if changed.is_empty() {
            return Ok(out);
        }
        options.judge(&values)?;
        let as_listed = |key: &str| {
            let revision = listing.modified.get(key).copied().unwrap_or(0);
            Compare::mod_revision(key, CompareOp::Equal, revision)
        };
        let mut compares: Vec<Compare> = changed.iter().map(|k| as_listed(k)).collect();
        match guard {
            Guard::Prefix => compares.push(
                Compare::mod_revision(options.keys(), CompareOp::Less, listing.revision + 1)
                    .with_prefix(),
            ),
            Guard::Keys(keys) => compares.extend(keys.iter().map(|k| as_listed(k))),
        }
        let ops: Vec<TxnOp> = changed
            .iter()
            .map(|k| match values.get(*k) {
                Some(v) => TxnOp::put(k.as_str(), v.as_str(), None),
                None => TxnOp::delete(k.as_str(), None),
            })
            .collect();
        let done = client
            .txn(Txn::new().when(compares).and_then(ops))
            .await
            .map_err(|e| options.unreachable(e))?;
        if done.succeeded() {
            if let Some(import) = &listing.import {
                tracing::info!(
                    since = import.since,
                    "a catalog import is under way: agents act on this change when it ends"
                );
            }
            return Ok(out);
        }
    }
    Err(CatalogError::Busy {
        key: busy.to_owned(),
    })
}

/// The `[[revoked]]` value of a key.
fn revoked_value(node: &str, node_ca: &str, readmitted: bool) -> String {
    let mut table = toml_edit::Table::new();
    table.insert("node", toml_edit::value(node));
    table.insert("node_ca", toml_edit::value(node_ca));
    if readmitted {
        table.insert("readmitted", toml_edit::value(true));
    }
    let mut tables = toml_edit::ArrayOfTables::new();
    tables.push(table);
    let mut doc = toml_edit::DocumentMut::new();
    doc.insert("revoked", toml_edit::Item::ArrayOfTables(tables));
    doc.to_string()
}

/// Whether a `[[revoked]]` value says readmitted.
fn revoked_readmitted(value: &str) -> bool {
    first_field(value, "revoked", "readmitted")
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

/// `field` of the first `[[array]]` table of a TOML value, if there is one
/// (`toml_edit`'s indexing panics on a missing key; values in etcd may be
/// anything).
fn first_field(value: &str, array: &str, field: &str) -> Option<toml_edit::Value> {
    let doc: toml_edit::DocumentMut = value.parse().ok()?;
    doc.get(array)?
        .as_array_of_tables()?
        .get(0)?
        .get(field)?
        .as_value()
        .cloned()
}

/// The `[[intention]]` value of a key.
pub fn intention_value(source: &str, destination: &str, action: crate::config::Action) -> String {
    let mut table = toml_edit::Table::new();
    table.insert("source", toml_edit::value(source));
    table.insert("destination", toml_edit::value(destination));
    table.insert("action", toml_edit::value(action.to_string()));
    let mut tables = toml_edit::ArrayOfTables::new();
    tables.push(table);
    let mut doc = toml_edit::DocumentMut::new();
    doc.insert("intention", toml_edit::Item::ArrayOfTables(tables));
    doc.to_string()
}

/// The action an `[[intention]]` value holds, if it reads as one.
fn intention_action(value: &str) -> Option<crate::config::Action> {
    match first_field(value, "intention", "action")?.as_str()? {
        "allow" => Some(crate::config::Action::Allow),
        "deny" => Some(crate::config::Action::Deny),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values read back from etcd may hold anything: reading them never
    /// panics.
    #[test]
    fn odd_values_read_as_nothing() {
        for odd in [
            "",
            "x = 1",
            "revoked = 3",
            "[[revoked]]\nnode = \"b\"",
            "[[intention]]\nsource = \"a\"",
            "intention = []",
        ] {
            assert!(!revoked_readmitted(odd), "{odd}");
            assert_eq!(intention_action(odd), None, "{odd}");
        }
        assert!(revoked_readmitted(&revoked_value("b", "ab", true)));
        assert!(!revoked_readmitted(&revoked_value("b", "ab", false)));
    }
}
