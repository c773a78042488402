//! Editing the intentions of a config file in place (`mesh-agent intention
//! create|delete`).
//!
//! Comments and layout are kept (`toml_edit`), the file is read as
//! [`Config::from_bytes`] reads it (strict UTF-8, a leading byte order mark
//! kept), the edited text is validated as a whole with [`Config::from_bytes`]
//! before anything is written, and the file is replaced atomically (temp
//! file, fsync, rename) because running agents watch it and must never see
//! half a file. So the editor writes only files the agents accept.
//! [`with_intention`] and [`without_intention`] are the same edits on text,
//! without the file.

use std::fs;
use std::io::Write as _;
use std::ops::Range;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use toml_edit::{ArrayOfTables, DocumentMut, ImDocument, Item, Table, Value, value};

use super::error::{BOM, Source};
use super::{Action, Config, ConfigError, values};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("failed to read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The edited text would not be a valid config (every problem), or the
    /// file cannot be edited as it is: not UTF-8, not TOML (one problem,
    /// exactly as [`Config::from_bytes`] reports it), or `intention` not
    /// written as `[[intention]]` tables. The file is unchanged.
    #[error("refused to edit, the file is unchanged:\n{0}")]
    Invalid(ConfigError),
    // Not `source`/`destination`: thiserror takes a field named `source` for
    // the error's cause, which a `String` cannot be.
    #[error("no intention from {src:?} to {dst:?} in {}", path.display())]
    NotFound {
        src: String,
        dst: String,
        path: PathBuf,
    },
    #[error("node {node:?} is not revoked in {}", path.display())]
    NotRevoked { node: String, path: PathBuf },
    #[error("failed to write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What [`create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// A new `[[intention]]` was appended.
    Added,
    /// The intention for the pair existed with the other action.
    Updated { from: Action },
    /// The intention already existed with this action; nothing was written.
    Unchanged,
}

/// Sets the intention `source -> destination` to `action` in the config file
/// at `path`: changes the action of an existing intention for the pair in
/// place, or appends a new `[[intention]]` table at the end of the file.
///
/// Every comment and the layout of the rest of the file are kept. Fails
/// with [`EditError::Invalid`] (file untouched) if the result would not be
/// a valid config, e.g. for an unknown service name.
pub fn create(
    path: &Path,
    source: &str,
    destination: &str,
    action: Action,
) -> Result<Created, EditError> {
    let bytes = read(path)?;
    let text = decode(&bytes, path)?;
    let (created, new) = with_intention(text, path, source, destination, action)?;
    if created != Created::Unchanged {
        write(path, &new)?;
    }
    Ok(created)
}

/// [`create`] on text: returns what it did and the config `text` with the
/// intention `source -> destination` set to `action`, validated as a whole
/// config (`text` itself when unchanged). `path` names the file in
/// problems. Nothing is read or written.
pub fn with_intention(
    text: &str,
    path: &Path,
    source: &str,
    destination: &str,
    action: Action,
) -> Result<(Created, String), EditError> {
    let mut doc = parse(text, path)?;
    let intentions = intention_tables(&mut doc, text, path)?;
    let created = match position(intentions, source, destination) {
        Some(i) => {
            let (from, value) = intentions
                .get_mut(i)
                .and_then(|table| table.get_mut("action"))
                .and_then(Item::as_value_mut)
                .and_then(|v| Some((values::action("action", v.as_str()?).ok()?, v)))
                .ok_or_else(|| bad_action(text, path, i))?;
            if from == action {
                return Ok((Created::Unchanged, text.to_owned()));
            }
            // Replace the value only, keeping the spacing and comment around it.
            let decor = value.decor().clone();
            *value = Value::from(action_str(action));
            *value.decor_mut() = decor;
            Created::Updated { from }
        }
        None => {
            let mut table = Table::new();
            table.insert("source", value(source));
            table.insert("destination", value(destination));
            table.insert("action", value(action_str(action)));
            append(&mut doc, &mut table);
            intention_tables(&mut doc, text, path)?.push(table);
            Created::Added
        }
    };
    Ok((created, validated(render(text, &doc), path)?))
}

/// Removes the intention `source -> destination` from the config file at
/// `path`, with the comment lines directly above it.
///
/// Every other comment and the layout are kept. Fails with
/// [`EditError::NotFound`] if there is no such intention and with
/// [`EditError::Invalid`] (file untouched) if the result would not be a
/// valid config.
pub fn delete(path: &Path, source: &str, destination: &str) -> Result<(), EditError> {
    let bytes = read(path)?;
    let text = decode(&bytes, path)?;
    write(path, &without_intention(text, path, source, destination)?)
}

/// [`delete`] on text: returns the config `text` without the intention
/// `source -> destination`, validated as a whole config. `path` names the
/// file in problems. Nothing is read or written.
pub fn without_intention(
    text: &str,
    path: &Path,
    source: &str,
    destination: &str,
) -> Result<String, EditError> {
    let mut doc = parse(text, path)?;
    let intentions = intention_tables(&mut doc, text, path)?;
    let (i, table) = position(intentions, source, destination)
        .and_then(|i| Some((i, intentions.get(i)?)))
        .ok_or_else(|| EditError::NotFound {
            src: source.to_owned(),
            dst: destination.to_owned(),
            path: path.to_owned(),
        })?;
    let kept = kept_comments(table);
    let at = table.position();
    intentions.remove(i);
    if intentions.is_empty() {
        doc.remove("intention");
    }
    if let Some(kept) = kept {
        prepend_to_next(&mut doc, at, &kept);
    }
    validated(render(text, &doc), path)
}

/// What [`revoke`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoking {
    /// A new `[[revoked]]` was appended.
    Added,
    /// It was there, readmitted: the node is shut out again.
    Again,
    /// It was there and in force; nothing was written.
    Unchanged,
}

/// Revokes node `node`'s CA with SHA-256 `node_ca` in the config file at
/// `path` (a `[[revoked]]` table appended, or one readmitted made in force
/// again), keeping comments and layout; validated before it is written.
pub fn revoke(path: &Path, node: &str, node_ca: &str) -> Result<Revoking, EditError> {
    let bytes = read(path)?;
    let text = decode(&bytes, path)?;
    let (done, new) = with_revocation(text, path, node, node_ca)?;
    if done != Revoking::Unchanged {
        write(path, &new)?;
    }
    Ok(done)
}

/// [`revoke`] on text.
pub fn with_revocation(
    text: &str,
    path: &Path,
    node: &str,
    node_ca: &str,
) -> Result<(Revoking, String), EditError> {
    let mut doc = parse(text, path)?;
    let tables = revoked_tables(&mut doc, text, path)?;
    let found = tables.iter_mut().find(|t| {
        t.get("node").and_then(Item::as_str) == Some(node)
            && t.get("node_ca").and_then(Item::as_str) == Some(node_ca)
    });
    let done = match found {
        Some(table) if table.get("readmitted").and_then(Item::as_bool) == Some(true) => {
            table.insert("readmitted", value(false));
            Revoking::Again
        }
        Some(_) => return Ok((Revoking::Unchanged, text.to_owned())),
        None => {
            let mut table = Table::new();
            table.insert("node", value(node));
            table.insert("node_ca", value(node_ca));
            append(&mut doc, &mut table);
            revoked_tables(&mut doc, text, path)?.push(table);
            Revoking::Added
        }
    };
    Ok((done, validated(render(text, &doc), path)?))
}

/// Readmits node `node` in the config file at `path`: every `[[revoked]]`
/// of it gets `readmitted = true` (its revoked CAs stay refused). Returns
/// how many were in force; fails with [`EditError::NotRevoked`] if none.
pub fn readmit(path: &Path, node: &str) -> Result<usize, EditError> {
    let bytes = read(path)?;
    let text = decode(&bytes, path)?;
    let (n, new) = with_readmission(text, path, node)?;
    write(path, &new)?;
    Ok(n)
}

/// [`readmit`] on text.
pub fn with_readmission(text: &str, path: &Path, node: &str) -> Result<(usize, String), EditError> {
    let mut doc = parse(text, path)?;
    let mut n = 0;
    for table in revoked_tables(&mut doc, text, path)?.iter_mut() {
        if table.get("node").and_then(Item::as_str) == Some(node)
            && table.get("readmitted").and_then(Item::as_bool) != Some(true)
        {
            table.insert("readmitted", value(true));
            n += 1;
        }
    }
    if n == 0 {
        return Err(EditError::NotRevoked {
            node: node.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok((n, validated(render(text, &doc), path)?))
}

/// Places `table` after everything else in `doc`, following the file's
/// trailing comments (if any), separated by exactly one blank line.
fn append(doc: &mut DocumentMut, table: &mut Table) {
    table.set_position(last_position(doc.as_table()) + 1);
    let trailing = doc.trailing().as_str().unwrap_or_default().trim_end();
    let prefix = if trailing.is_empty() {
        "\n".to_owned()
    } else {
        format!("{trailing}\n\n")
    };
    table.decor_mut().set_prefix(prefix);
    doc.set_trailing("");
}

/// The `[[revoked]]` tables, an empty array if there are none yet.
fn revoked_tables<'d>(
    doc: &'d mut DocumentMut,
    text: &str,
    path: &Path,
) -> Result<&'d mut ArrayOfTables, EditError> {
    tables(doc, text, path, "revoked")
}

/// The edited document as file text, with the original's byte order mark
/// if it had one (`toml_edit` drops it).
fn render(original: &str, doc: &DocumentMut) -> String {
    if original.starts_with(BOM) {
        format!("{BOM}{doc}")
    } else {
        doc.to_string()
    }
}

fn action_str(action: Action) -> &'static str {
    match action {
        Action::Allow => "allow",
        Action::Deny => "deny",
    }
}

/// The file's bytes, read as [`Config::load`] reads them.
fn read(path: &Path) -> Result<Vec<u8>, EditError> {
    Config::read(path).map_err(|e| match e {
        ConfigError::Io { path, source } => EditError::Read { path, source },
        invalid => EditError::Invalid(invalid),
    })
}

/// The file's text: strict UTF-8, as in [`Config::from_bytes`].
fn decode<'b>(bytes: &'b [u8], path: &'b Path) -> Result<&'b str, EditError> {
    Source::decode(bytes, path)
        .map(|source| source.text)
        .map_err(|problem| EditError::Invalid(ConfigError::Invalid(vec![problem])))
}

/// `text` as an editable document, a syntax error reported as
/// [`Config::from_bytes`] reports it.
fn parse(text: &str, path: &Path) -> Result<DocumentMut, EditError> {
    text.parse::<DocumentMut>().map_err(|e| {
        let problem = Source { path, text }.toml_problem(e.span(), e.message());
        EditError::Invalid(ConfigError::Invalid(vec![problem]))
    })
}

/// `text` if it is a config the agents accept.
fn validated(text: String, path: &Path) -> Result<String, EditError> {
    Config::from_bytes(text.as_bytes(), path).map_err(EditError::Invalid)?;
    Ok(text)
}

/// The `[[intention]]` tables, an empty array if there are none yet.
fn intention_tables<'d>(
    doc: &'d mut DocumentMut,
    text: &str,
    path: &Path,
) -> Result<&'d mut ArrayOfTables, EditError> {
    tables(doc, text, path, "intention")
}

/// The `[[name]]` tables, an empty array if there are none yet; an error
/// if `name` is written another way (inline).
fn tables<'d>(
    doc: &'d mut DocumentMut,
    text: &str,
    path: &Path,
    name: &str,
) -> Result<&'d mut ArrayOfTables, EditError> {
    doc.entry(name)
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or_else(|| {
            invalid(
                text,
                path,
                |root| root.get(name)?.span(),
                &format!("`{name}` must be written as [[{name}]] tables to be edited"),
            )
        })
}

/// Index of the intention `source -> destination`.
fn position(intentions: &ArrayOfTables, source: &str, destination: &str) -> Option<usize> {
    intentions.iter().position(|t| {
        t.get("source").and_then(Item::as_str) == Some(source)
            && t.get("destination").and_then(Item::as_str) == Some(destination)
    })
}

/// The problem with the action of intention `i`, which is not "allow" or "deny".
fn bad_action(text: &str, path: &Path, i: usize) -> EditError {
    let table = |root: &Table| root.get("intention")?.as_array_of_tables()?.get(i).cloned();
    let message = match ImDocument::parse(text)
        .ok()
        .and_then(|d| table(d.as_table()))
    {
        Some(t) => match t.get("action") {
            Some(item) => match item.as_str() {
                Some(a) => values::action("action", a).err(),
                None => Some("invalid action: expected the string \"allow\" or \"deny\"".into()),
            },
            None => Some("missing field `action`".into()),
        },
        None => None,
    };
    invalid(
        text,
        path,
        |root| {
            let t = table(root)?;
            t.get("action").and_then(Item::span).or_else(|| t.span())
        },
        message.as_deref().unwrap_or("invalid intention"),
    )
}

/// [`EditError::Invalid`] with one problem, at the span `locate` finds in
/// the original text (the start of the file if none).
fn invalid(
    text: &str,
    path: &Path,
    locate: impl FnOnce(&Table) -> Option<Range<usize>>,
    message: &str,
) -> EditError {
    // `DocumentMut` drops spans; parse again to get them, on this error path only.
    let span = ImDocument::parse(text)
        .ok()
        .and_then(|doc| locate(doc.as_table()))
        .unwrap_or(0..0);
    let problem = Source { path, text }.problem(span, message);
    EditError::Invalid(ConfigError::Invalid(vec![problem]))
}

/// The highest document position of `table` and the tables in it.
fn last_position(table: &Table) -> usize {
    let mut last = table.position().unwrap_or(0);
    for (_, item) in table.iter() {
        match item {
            Item::Table(t) => last = last.max(last_position(t)),
            Item::ArrayOfTables(a) => {
                for t in a.iter() {
                    last = last.max(last_position(t));
                }
            }
            _ => {}
        }
    }
    last
}

/// The part of the comments above `table`'s header that does not belong to
/// it: everything up to the last blank line, if it holds a comment. Comment
/// lines directly above the header describe the table and go with it.
fn kept_comments(table: &Table) -> Option<String> {
    let prefix = table.decor().prefix()?.as_str()?;
    let lines: Vec<&str> = prefix.split_inclusive('\n').collect();
    let last_blank = lines.iter().rposition(|l| l.trim().is_empty())?;
    let kept = lines.get(..last_blank)?.concat();
    kept.contains('#').then_some(kept)
}

/// Puts `text` in front of the first table after document position `after`,
/// or at the start of the file's trailing comments if there is none.
fn prepend_to_next(doc: &mut DocumentMut, after: Option<usize>, text: &str) {
    let next = after.and_then(|after| next_position(doc.as_table(), after));
    match next.and_then(|at| table_at(doc.as_table_mut(), at)) {
        Some(table) => {
            let old = table.decor().prefix().and_then(|p| p.as_str());
            let prefix = format!("{text}{}", old.unwrap_or("\n"));
            table.decor_mut().set_prefix(prefix);
        }
        None => {
            let trailing = format!("{text}{}", doc.trailing().as_str().unwrap_or_default());
            doc.set_trailing(trailing);
        }
    }
}

/// The lowest document position after `after` in `table` and the tables in it.
fn next_position(table: &Table, after: usize) -> Option<usize> {
    // Implicit tables (`a` of `[a.b]`) have no header to carry comments.
    let own = (!table.is_implicit())
        .then(|| table.position())
        .flatten()
        .filter(|&p| p > after);
    let nested = table.iter().filter_map(|(_, item)| match item {
        Item::Table(t) => next_position(t, after),
        Item::ArrayOfTables(a) => a.iter().filter_map(|t| next_position(t, after)).min(),
        _ => None,
    });
    own.into_iter().chain(nested).min()
}

/// The table at document position `at` (`table` or one in it).
fn table_at(table: &mut Table, at: usize) -> Option<&mut Table> {
    if table.position() == Some(at) {
        return Some(table);
    }
    for (_, item) in table.iter_mut() {
        let found = match item {
            Item::Table(t) => table_at(t, at),
            Item::ArrayOfTables(a) => a.iter_mut().find_map(|t| table_at(t, at)),
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Atomically replaces the file at `path` with `new` (the target, if `path`
/// is a symlink), keeping its permission mode and, when allowed, its owner.
fn write(path: &Path, new: &str) -> Result<(), EditError> {
    let err = |source| EditError::Write {
        path: path.to_owned(),
        source,
    };
    let target = fs::canonicalize(path).map_err(err)?;
    let meta = fs::metadata(&target).map_err(err)?;
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        // canonicalize gives an absolute path; only "/" has no parent.
        return Err(err(std::io::ErrorKind::InvalidInput.into()));
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mode = meta.permissions().mode() & 0o7777;
    // create_new: never follow or clobber a file we did not create.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    let written = (|| {
        // The mode given to open is filtered by the umask; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        let own = file.metadata()?;
        if (meta.uid(), meta.gid()) != (own.uid(), own.gid()) {
            // Keeping the owner needs privilege; without it the file is
            // the editor's, with the same mode. Not worth failing the edit.
            let _ = std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()));
        }
        file.write_all(new.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &target)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    // Make the rename itself durable.
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Match;
    use crate::testing::{Scratch, intention, node, service};

    /// Comments before and after the `[mesh]` table; node a hosting
    /// `web` (80) and `api` (81); no intentions.
    fn base() -> String {
        format!(
            "# the mesh\n[mesh]\ndefault_policy = \"deny\"   # deny unless allowed\n{}{}{}",
            node("a", "10.0.0.1"),
            service("web", &["a"], 80),
            service("api", &["a"], 81)
        )
    }

    /// A temp dir holding `text` as mesh.toml, removed on drop.
    struct File {
        scratch: Scratch,
        path: PathBuf,
    }

    impl File {
        fn new(text: &str) -> Self {
            let scratch = Scratch::with_config(text);
            let path = scratch.file();
            Self { scratch, path }
        }

        fn text(&self) -> String {
            fs::read_to_string(&self.path).unwrap()
        }

        fn config(&self) -> Config {
            Config::load(&self.path).unwrap()
        }

        fn pairs(&self) -> Vec<(Match, Match, Action)> {
            let c = self.config();
            c.intentions
                .into_iter()
                .map(|i| (i.source, i.destination, i.action))
                .collect()
        }

        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(self.scratch.dir())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    fn name(s: &str) -> Match {
        Match::Name(s.parse().unwrap())
    }

    #[test]
    fn create_appends_and_keeps_every_other_byte() {
        let base = base();
        let f = File::new(&base);
        let created = create(&f.path, "web", "api", Action::Deny).unwrap();
        assert_eq!(created, Created::Added);
        let text = f.text();
        assert_eq!(text, format!("{base}{}", intention("web", "api", "deny")));
        assert_eq!(f.pairs(), [(name("web"), name("api"), Action::Deny)]);

        // A second one goes after the first, in the same shape.
        create(&f.path, "api", "web", Action::Allow).unwrap();
        assert_eq!(
            f.text(),
            format!("{text}{}", intention("api", "web", "allow"))
        );
    }

    #[test]
    fn create_goes_to_the_end_of_the_file_whatever_the_layout() {
        let base = base();
        // Intentions first, a trailing comment, no final newline.
        let text = format!(
            "{}{base}\n# the end\n\n",
            intention("web", "api", "allow").trim_start()
        );
        let f = File::new(&text);
        create(&f.path, "*", "*", Action::Deny).unwrap();
        assert_eq!(
            f.text(),
            format!("{}\n{}", text.trim_end(), intention("*", "*", "deny"))
        );

        let f = File::new(base.trim_end());
        create(&f.path, "web", "api", Action::Allow).unwrap();
        assert_eq!(
            f.text(),
            format!("{base}{}", intention("web", "api", "allow"))
        );
    }

    #[test]
    fn create_for_an_existing_pair_changes_it_in_place() {
        let base = base();
        let text = format!(
            "{base}\n# web may call api\n[[intention]]\nsource = \"web\"\ndestination = \"api\"\n\
             action = \"allow\"  # for now\n{}",
            intention("api", "web", "deny")
        );
        let f = File::new(&text);
        let created = create(&f.path, "web", "api", Action::Deny).unwrap();
        assert_eq!(
            created,
            Created::Updated {
                from: Action::Allow
            }
        );
        let after = f.text();
        assert_eq!(
            after,
            text.replace("\"allow\"  # for now", "\"deny\"  # for now")
        );
        assert_eq!(after.lines().count(), text.lines().count());
        assert!(after.contains("# web may call api\n[[intention]]\nsource = \"web\""));
        assert_eq!(
            f.pairs(),
            [
                (name("web"), name("api"), Action::Deny),
                (name("api"), name("web"), Action::Deny)
            ]
        );

        let created = create(&f.path, "web", "api", Action::Deny).unwrap();
        assert_eq!(created, Created::Unchanged);
        assert_eq!(f.text(), after);
    }

    #[test]
    fn delete_removes_exactly_that_intention() {
        let base = base();
        let text = format!(
            "{base}\n# intentions\n\n# web may call api\n[[intention]]\nsource = \"web\"\n\
             destination = \"api\"\naction = \"allow\"  # for now\n\n# keep this\n[[intention]]\n\
             source = \"*\"\ndestination = \"api\"\naction = \"deny\"\n# the end\n"
        );
        let f = File::new(&text);
        delete(&f.path, "web", "api").unwrap();
        assert_eq!(
            f.text(),
            format!(
                "{base}\n# intentions\n\n# keep this\n[[intention]]\nsource = \"*\"\n\
                 destination = \"api\"\naction = \"deny\"\n# the end\n"
            )
        );
        assert_eq!(f.pairs(), [(Match::Any, name("api"), Action::Deny)]);

        let missing = delete(&f.path, "web", "api");
        assert!(
            matches!(&missing, Err(EditError::NotFound { src, dst, .. }) if src == "web" && dst == "api"),
            "{missing:?}"
        );

        // The last one: the section comment stays, the file is still valid.
        delete(&f.path, "*", "api").unwrap();
        assert_eq!(f.text(), format!("{base}\n# intentions\n# the end\n"));
        assert!(f.config().intentions.is_empty());
    }

    #[test]
    fn create_then_delete_gives_back_the_original() {
        let base = base();
        let f = File::new(&base);
        create(&f.path, "web", "*", Action::Allow).unwrap();
        create(&f.path, "*", "api", Action::Deny).unwrap();
        assert_eq!(
            f.pairs(),
            [
                (name("web"), Match::Any, Action::Allow),
                (Match::Any, name("api"), Action::Deny)
            ]
        );
        delete(&f.path, "web", "*").unwrap();
        assert_eq!(f.text(), format!("{base}{}", intention("*", "api", "deny")));
        delete(&f.path, "*", "api").unwrap();
        assert_eq!(f.text(), base);
    }

    #[test]
    fn checks_stay_with_their_service_through_edits() {
        let base = base();
        let checks = |f: &File| f.config().service("api").unwrap().checks.clone();
        // The file ends with a check of the last service: the intention goes
        // after it, at the top level, and comes back out cleanly.
        let text = format!("{base}\n[[service.check]]\nhttp = \"/health\"  # the app's own\n");
        let f = File::new(&text);
        let before = checks(&f);
        assert_eq!(before.len(), 1);
        create(&f.path, "web", "api", Action::Allow).unwrap();
        assert_eq!(
            f.text(),
            format!("{text}{}", intention("web", "api", "allow"))
        );
        assert_eq!(checks(&f), before);
        delete(&f.path, "web", "api").unwrap();
        assert_eq!(f.text(), text);

        // An intention between a service and a later check of it (valid
        // TOML: the check belongs to the last [[service]]).
        let text = format!(
            "{base}{}\n# api's check\n\n[[service.check]]\ntcp = true\n",
            intention("web", "api", "allow")
        );
        let f = File::new(&text);
        assert_eq!(checks(&f)[0].kind, crate::config::CheckKind::Tcp);
        delete(&f.path, "web", "api").unwrap();
        assert_eq!(
            f.text(),
            format!("{base}\n# api's check\n\n[[service.check]]\ntcp = true\n")
        );
        assert_eq!(checks(&f)[0].name, "tcp");
    }

    #[test]
    fn an_edit_that_would_not_validate_leaves_the_file_alone() {
        let base = base();
        let f = File::new(&base);
        let result = create(&f.path, "web", "ghost", Action::Allow);
        let Err(EditError::Invalid(e)) = &result else {
            panic!("{result:?}");
        };
        assert_eq!(e.problems().len(), 1, "{e}");
        let message = result.unwrap_err().to_string();
        assert!(message.contains("\"ghost\""), "{message}");
        assert!(message.contains("mesh.toml:21:"), "{message}");
        assert_eq!(f.text(), base);
        assert_eq!(f.names(), ["mesh.toml"]);
    }

    #[test]
    fn files_that_cannot_be_edited_are_left_alone() {
        let base = base();
        let f = File::new("[mesh\n");
        let result = create(&f.path, "web", "api", Action::Allow);
        let Err(EditError::Invalid(e)) = &result else {
            panic!("{result:?}");
        };
        let expected = Config::load(&f.path).unwrap_err();
        assert_eq!(e.problems(), expected.problems(), "{e}");
        assert_eq!((e.problems()[0].line, e.problems()[0].column), (1, 6));

        let text = format!("{base}[intention]\nsource = \"web\"\n");
        let f = File::new(&text);
        let result = delete(&f.path, "web", "api");
        let Err(EditError::Invalid(e)) = &result else {
            panic!("{result:?}");
        };
        assert_eq!(e.problems()[0].line, 18, "{e}");
        assert_eq!(f.text(), text);

        let text = format!("{base}{}", intention("web", "api", "alow"));
        let f = File::new(&text);
        let result = create(&f.path, "web", "api", Action::Allow);
        let Err(EditError::Invalid(e)) = &result else {
            panic!("{result:?}");
        };
        assert_eq!(e.problems()[0].line, 22, "{e}");
        assert!(e.to_string().contains("\"alow\""), "{e}");
        assert_eq!(f.text(), text);

        let missing = Path::new("/nonexistent/mesh.toml");
        let result = create(missing, "web", "api", Action::Allow);
        assert!(matches!(result, Err(EditError::Read { .. })), "{result:?}");
    }

    #[test]
    fn the_mode_is_kept_and_no_temp_file_is_left() {
        let base = base();
        let f = File::new(&base);
        fs::set_permissions(&f.path, fs::Permissions::from_mode(0o640)).unwrap();
        create(&f.path, "web", "*", Action::Allow).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&f.path), 0o640);
        assert_eq!(f.names(), ["mesh.toml"]);

        fs::set_permissions(&f.path, fs::Permissions::from_mode(0o604)).unwrap();
        delete(&f.path, "web", "*").unwrap();
        assert_eq!(mode(&f.path), 0o604);
        assert_eq!(f.names(), ["mesh.toml"]);
    }

    #[test]
    fn a_symlinked_config_stays_a_symlink() {
        let base = base();
        let f = File::new(&base);
        let link = f.scratch.dir().join("link.toml");
        std::os::unix::fs::symlink("mesh.toml", &link).unwrap();
        create(&link, "web", "api", Action::Allow).unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            f.text(),
            format!("{base}{}", intention("web", "api", "allow"))
        );
        assert_eq!(f.names(), ["link.toml", "mesh.toml"]);
    }
}
