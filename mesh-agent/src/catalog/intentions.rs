//! Writing one intention to the catalog's store, the file (comments kept,
//! `config::edit`) or etcd (`edits::set_intention`): what `mesh-agent
//! intention create|delete` and the web UI both do, through this one
//! function, with the same checks and the same messages.

use super::{CatalogError, Source, edits};
use crate::config::{Action, edit};

/// Sets (`Some`) or removes (`None`) the intention `source -> destination`
/// in `store`. Returns what was done, as one line for the user
/// ("created allow web -> api in mesh.toml").
pub async fn write(
    store: &Source,
    source: &str,
    destination: &str,
    action: Option<Action>,
) -> Result<String, CatalogError> {
    let options = match store {
        Source::File(path) => return in_file(path, source, destination, action),
        Source::Etcd(options) => options,
    };
    let before = edits::set_intention(options, source, destination, action).await?;
    let what = match (action, before) {
        (Some(a), Some(b)) if a == b => format!("unchanged: {a}"),
        (Some(a), Some(b)) => format!("changed from {b} to {a}"),
        (Some(a), None) => format!("created {a}"),
        (None, Some(_)) => "deleted".to_owned(),
        (None, None) => {
            return Err(CatalogError::NoIntention {
                src: source.to_owned(),
                dst: destination.to_owned(),
                store: store.to_string(),
            });
        }
    };
    Ok(format!(
        "{what} {source} -> {destination} in etcd {}",
        options.prefix
    ))
}

fn in_file(
    path: &std::path::Path,
    source: &str,
    destination: &str,
    action: Option<Action>,
) -> Result<String, CatalogError> {
    let Some(action) = action else {
        edit::delete(path, source, destination)?;
        return Ok(format!(
            "deleted {source} -> {destination} from {}",
            path.display()
        ));
    };
    let what = match edit::create(path, source, destination, action)? {
        edit::Created::Added => "created".to_owned(),
        edit::Created::Updated { from } => format!("changed from {from} to"),
        edit::Created::Unchanged => "unchanged:".to_owned(),
    };
    Ok(format!(
        "{what} {action} {source} -> {destination} in {}",
        path.display()
    ))
}
