//! Editing the intentions of a config file in place (`mesh-agent intention
//! create|delete`): comments and layout are kept, the result is validated as
//! a whole before it is written, and the write is atomic (temp file + rename)
//! because running agents watch the file.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

use super::{Action, Config, ConfigError};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("{path}: `intention` must be an array of tables ([[intention]])")]
    Shape { path: PathBuf },
    #[error("the edit was refused, the file is unchanged:\n{0}")]
    Invalid(ConfigError),
    #[error("no intention {src} -> {dst} in {path}")]
    NotFound {
        src: String,
        dst: String,
        path: PathBuf,
    },
    #[error("failed to write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What `create` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Added,
    Updated { from: Action },
    Unchanged,
}

/// Adds `source -> destination: action` at the end of the file, or changes
/// the action of the existing intention for that pair in place.
pub fn create(
    path: &Path,
    source: &str,
    destination: &str,
    action: Action,
) -> Result<Created, EditError> {
    let (text, mut doc) = read(path)?;
    let intentions = intentions(&mut doc, path)?;
    let created = match find(intentions, source, destination) {
        Some(i) => {
            let table = intentions.get_mut(i).ok_or_else(|| EditError::Shape {
                path: path.to_owned(),
            })?;
            let from = match table.get("action").and_then(Item::as_str) {
                Some("allow") => Action::Allow,
                _ => Action::Deny,
            };
            if from == action {
                return Ok(Created::Unchanged);
            }
            // Replace the value only, keeping its comments and spacing.
            if let Some(v) = table.get_mut("action").and_then(Item::as_value_mut) {
                let decor = v.decor().clone();
                *v = action_str(action).into();
                *v.decor_mut() = decor;
            }
            Created::Updated { from }
        }
        None => {
            let mut table = Table::new();
            table.decor_mut().set_prefix("\n");
            table.insert("source", value(source));
            table.insert("destination", value(destination));
            table.insert("action", value(action_str(action)));
            intentions.push(table);
            Created::Added
        }
    };
    write(path, &text, &doc.to_string())?;
    Ok(created)
}

/// Removes the intention for `source -> destination`.
pub fn delete(path: &Path, source: &str, destination: &str) -> Result<(), EditError> {
    let (text, mut doc) = read(path)?;
    let intentions = intentions(&mut doc, path)?;
    let i = find(intentions, source, destination).ok_or_else(|| EditError::NotFound {
        src: source.to_owned(),
        dst: destination.to_owned(),
        path: path.to_owned(),
    })?;
    intentions.remove(i);
    if intentions.is_empty() {
        doc.remove("intention");
    }
    write(path, &text, &doc.to_string())
}

fn action_str(action: Action) -> &'static str {
    match action {
        Action::Allow => "allow",
        Action::Deny => "deny",
    }
}

fn read(path: &Path) -> Result<(String, DocumentMut), EditError> {
    let text = fs::read_to_string(path).map_err(|source| EditError::Read {
        path: path.to_owned(),
        source,
    })?;
    let doc = text.parse::<DocumentMut>().map_err(|e| EditError::Toml {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })?;
    Ok((text, doc))
}

/// The `[[intention]]` array, created empty if missing.
fn intentions<'a>(
    doc: &'a mut DocumentMut,
    path: &Path,
) -> Result<&'a mut ArrayOfTables, EditError> {
    doc.entry("intention")
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or_else(|| EditError::Shape {
            path: path.to_owned(),
        })
}

fn find(intentions: &ArrayOfTables, source: &str, destination: &str) -> Option<usize> {
    intentions.iter().position(|t| {
        t.get("source").and_then(Item::as_str) == Some(source)
            && t.get("destination").and_then(Item::as_str) == Some(destination)
    })
}

/// Validates `new` as a whole config, then replaces the file atomically,
/// keeping its permission mode.
fn write(path: &Path, old: &str, new: &str) -> Result<(), EditError> {
    if new == old {
        return Ok(());
    }
    Config::parse(new, path).map_err(EditError::Invalid)?;
    let err = |source| EditError::Write {
        path: path.to_owned(),
        source,
    };
    let mode = fs::metadata(path).map_err(err)?.permissions().mode() & 0o7777;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(new.as_bytes())?;
        f.sync_all()?;
        // create_new's mode is filtered by the umask; set it exactly.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"# the mesh
[mesh]
default_policy = "deny"   # deny unless allowed

[[node]]
name = "a"
address = "10.0.0.1"

[[service]]
name = "web"
node = "a"
port = 80

[[service]]
name = "api"
node = "a"
port = 81
"#;

    /// A temp dir holding `text` as mesh.toml (removed on drop).
    struct File {
        dir: PathBuf,
        path: PathBuf,
    }

    impl File {
        fn new(text: &str) -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let dir = std::env::temp_dir().join(format!("mesh-edit-{}-{n}", std::process::id()));
            fs::create_dir_all(&dir).unwrap();
            let path = dir.join("mesh.toml");
            fs::write(&path, text).unwrap();
            Self { dir, path }
        }
        fn text(&self) -> String {
            fs::read_to_string(&self.path).unwrap()
        }
        fn config(&self) -> Config {
            Config::load(&self.path).unwrap()
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn create_appends_and_keeps_everything_else() {
        let f = File::new(BASE);
        assert_eq!(
            create(&f.path, "web", "api", Action::Allow).unwrap(),
            Created::Added
        );
        let text = f.text();
        assert!(text.starts_with(BASE), "{text}");
        assert_eq!(
            &text[BASE.len()..],
            "\n[[intention]]\nsource = \"web\"\ndestination = \"api\"\naction = \"allow\"\n"
        );
        let config = f.config();
        assert_eq!(config.intentions.len(), 1);
        assert_eq!(config.intentions[0].action, Action::Allow);
    }

    #[test]
    fn create_updates_an_existing_pair_in_place() {
        let f = File::new(&format!(
            "{BASE}\n# web may call api\n[[intention]]\nsource = \"web\"\ndestination = \"api\"\naction = \"allow\"  # for now\n"
        ));
        let before = f.text();
        assert_eq!(
            create(&f.path, "web", "api", Action::Deny).unwrap(),
            Created::Updated {
                from: Action::Allow
            }
        );
        let after = f.text();
        assert_eq!(after.lines().count(), before.lines().count());
        assert!(
            after.contains("# web may call api\n[[intention]]"),
            "{after}"
        );
        assert!(after.contains("action = \"deny\"  # for now"), "{after}");
        assert_eq!(
            create(&f.path, "web", "api", Action::Deny).unwrap(),
            Created::Unchanged
        );
        assert_eq!(f.text(), after);
    }

    #[test]
    fn delete_removes_exactly_one_intention() {
        let f = File::new(BASE);
        create(&f.path, "web", "api", Action::Allow).unwrap();
        create(&f.path, "*", "api", Action::Deny).unwrap();
        delete(&f.path, "web", "api").unwrap();
        let config = f.config();
        assert_eq!(config.intentions.len(), 1);
        assert_eq!(config.intentions[0].source, super::super::Match::Any);
        assert!(f.text().starts_with(BASE));
        assert!(matches!(
            delete(&f.path, "web", "api"),
            Err(EditError::NotFound { .. })
        ));
        delete(&f.path, "*", "api").unwrap();
        assert!(f.config().intentions.is_empty());
    }

    #[test]
    fn an_edit_that_would_not_validate_leaves_the_file_alone() {
        let f = File::new(BASE);
        let r = create(&f.path, "web", "ghost", Action::Allow);
        let Err(EditError::Invalid(e)) = r else {
            panic!("{r:?}");
        };
        assert!(e.to_string().contains("ghost"), "{e}");
        assert_eq!(f.text(), BASE);
    }

    #[test]
    fn the_mode_is_kept_and_no_temp_file_is_left() {
        let f = File::new(BASE);
        fs::set_permissions(&f.path, fs::Permissions::from_mode(0o640)).unwrap();
        create(&f.path, "web", "*", Action::Allow).unwrap();
        let mode = fs::metadata(&f.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let names: Vec<_> = fs::read_dir(&f.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["mesh.toml"]);
    }
}
