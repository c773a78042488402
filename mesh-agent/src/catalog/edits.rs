//! Edits of the catalog in etcd by the CLI and the UI (`intention
//! create|delete`, `node revoke|readmit`): each judged as a whole catalog
//! and written in one guarded transaction.

use std::collections::BTreeMap;

use super::{CatalogError, EtcdOptions, layout};

/// Sets (`Some`) or removes (`None`) the intention `source -> destination`
/// in etcd, as `intention create|delete` does in a file: the catalog with
/// the change must be valid, and the write happens only if no key of the
/// catalog was written since it was read (a delete in between is not
/// seen: etcd compares revisions of keys that exist); else it is read
/// again, up to 3 times. Returns the action the key held before.
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
        // Already so: the value (and any comment in it) stays as it is.
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
    edit_on_any_member(options, &busy, edit).await
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
    edit_on_any_member(options, &busy, edit).await
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
    edit_on_any_member(options, &busy, edit).await
}

/// [`edit_guarded`] through the first member that answers
/// (`EtcdOptions::on_any_member`); `busy` names what kept changing.
async fn edit_on_any_member<T>(
    options: &EtcdOptions,
    busy: &str,
    edit: impl Fn(&mut BTreeMap<String, String>) -> Result<T, CatalogError> + Clone,
) -> Result<T, CatalogError> {
    options
        .on_any_member(|one| {
            let edit = edit.clone();
            async move { edit_guarded(&one, busy, edit).await }
        })
        .await
}

/// Applies `edit` to the catalog's values and writes what it changed in one
/// transaction, judged as a whole first and guarded on the listing's
/// revision: nothing under the prefix written since (a delete in between
/// is not seen: etcd compares revisions of keys that exist); else listed
/// again and retried, up to 3 times, then [`CatalogError::Busy`] naming
/// `busy`. Nothing is written if `edit` changed nothing.
async fn edit_guarded<T>(
    options: &EtcdOptions,
    busy: &str,
    edit: impl Fn(&mut BTreeMap<String, String>) -> Result<T, CatalogError>,
) -> Result<T, CatalogError> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let mut client = options.connect().await?;
    for _ in 0..3 {
        let (before, listed) = options.list(&mut client).await?;
        let mut values = before.clone();
        let out = edit(&mut values)?;
        let ops: Vec<TxnOp> = values
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
            .chain(
                before
                    .keys()
                    .filter(|k| !values.contains_key(*k))
                    .map(|k| TxnOp::delete(k.as_str(), None)),
            )
            .collect();
        if ops.is_empty() {
            return Ok(out);
        }
        options.judge(&values)?;
        let guard =
            Compare::mod_revision(options.keys(), CompareOp::Less, listed + 1).with_prefix();
        let done = client
            .txn(Txn::new().when([guard]).and_then(ops))
            .await
            .map_err(|e| options.unreachable(e))?;
        if done.succeeded() {
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
