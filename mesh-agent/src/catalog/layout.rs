//! The catalog in a key-value store (etcd): one key per object under a
//! prefix, each value the object as `mesh.toml` writes it.
//!
//! | key | value |
//! |---|---|
//! | `<prefix>/v1/mesh` | a `[mesh]` table |
//! | `<prefix>/v1/nodes/<node>` | one `[[node]]` table |
//! | `<prefix>/v1/services/<service>` | one `[[service]]` table, with its `[[service.check]]` tables |
//! | `<prefix>/v1/intentions/<source>/<destination>` | one `[[intention]]` table |
//! | `<prefix>/v1/revoked/<node>/<node_ca>` | one `[[revoked]]` table |
//! | `<prefix>/v1/import` | not an object: marks a `catalog import` under way (`catalog::import`) |
//!
//! `v1` is the version of this layout and format. A value is a TOML
//! document that holds exactly the object its key names, so the catalog is
//! the values concatenated ([`assemble`]) and judged as one file by
//! `Config::from_bytes`: a store accepts exactly what `validate` accepts.
//! [`split`] cuts a `mesh.toml` into keys and values (`catalog import`).

use std::collections::BTreeMap;

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

/// The version of the layout, the first segment after the prefix.
pub const VERSION: &str = "v1";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("not TOML: {0}")]
    Toml(#[from] toml_edit::TomlError),
    #[error("key {key:?} is not one of the catalog's (see ARCHITECTURE.md, \"Catalog in etcd\")")]
    UnknownKey { key: String },
    #[error("key {key:?}: the value must hold exactly {wanted}: {problem}")]
    Value {
        key: String,
        wanted: String,
        problem: String,
    },
    #[error("{what} has no {field:?} string, so it has no key")]
    Unnamed {
        what: &'static str,
        field: &'static str,
    },
}

/// The key that marks a `catalog import` under way (not an object: see
/// `catalog::import`).
pub fn import_key(prefix: &str) -> String {
    format!("{prefix}/{VERSION}/import")
}

/// What a key holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Object {
    Mesh,
    Node(String),
    Service(String),
    Intention { source: String, destination: String },
    Revoked { node: String, node_ca: String },
}

impl Object {
    /// Its key under `prefix` (no trailing `/`).
    pub fn key(&self, prefix: &str) -> String {
        let base = format!("{prefix}/{VERSION}");
        match self {
            Self::Mesh => format!("{base}/mesh"),
            Self::Node(n) => format!("{base}/nodes/{n}"),
            Self::Service(s) => format!("{base}/services/{s}"),
            Self::Intention {
                source,
                destination,
            } => format!("{base}/intentions/{source}/{destination}"),
            Self::Revoked { node, node_ca } => format!("{base}/revoked/{node}/{node_ca}"),
        }
    }

    /// The object `key` names under `prefix`.
    pub fn of_key(prefix: &str, key: &str) -> Result<Self, LayoutError> {
        let unknown = || LayoutError::UnknownKey {
            key: key.to_owned(),
        };
        let rest = key
            .strip_prefix(prefix)
            .and_then(|k| k.strip_prefix('/'))
            .and_then(|k| k.strip_prefix(VERSION))
            .and_then(|k| k.strip_prefix('/'))
            .ok_or_else(unknown)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let named = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        match parts.as_slice() {
            ["mesh"] => Some(Self::Mesh),
            ["nodes", n] => named(n).map(Self::Node),
            ["services", s] => named(s).map(Self::Service),
            ["intentions", s, d] => {
                named(s)
                    .zip(named(d))
                    .map(|(source, destination)| Self::Intention {
                        source,
                        destination,
                    })
            }
            ["revoked", n, c] => named(n)
                .zip(named(c))
                .map(|(node, node_ca)| Self::Revoked { node, node_ca }),
            _ => None,
        }
        .ok_or_else(unknown)
    }

    /// The array of tables this object is an entry of (`None`: `[mesh]`).
    fn array(&self) -> Option<&'static str> {
        match self {
            Self::Mesh => None,
            Self::Node(_) => Some("node"),
            Self::Service(_) => Some("service"),
            Self::Intention { .. } => Some("intention"),
            Self::Revoked { .. } => Some("revoked"),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Mesh => "one [mesh] table".to_owned(),
            Self::Node(n) => format!("one [[node]] table with name = {n:?}"),
            Self::Service(s) => format!("one [[service]] table with name = {s:?}"),
            Self::Intention {
                source,
                destination,
            } => format!(
                "one [[intention]] table with source = {source:?} and destination = {destination:?}"
            ),
            Self::Revoked { node, node_ca } => {
                format!("one [[revoked]] table with node = {node:?} and node_ca = {node_ca:?}")
            }
        }
    }
}

impl std::fmt::Display for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Mesh => write!(f, "[mesh]"),
            Self::Node(n) => write!(f, "node {n:?}"),
            Self::Service(s) => write!(f, "service {s:?}"),
            Self::Intention {
                source,
                destination,
            } => write!(f, "intention {source:?} -> {destination:?}"),
            Self::Revoked { node, node_ca } => {
                write!(f, "revocation of node {node:?}'s CA {node_ca}")
            }
        }
    }
}

/// Cuts a `mesh.toml` text into the values of its objects, by key under
/// `prefix`. Comments and layout inside each table are kept. The text
/// should be a valid config (check it with `Config::from_bytes` first):
/// this only needs each object to be named.
pub fn split(text: &str, prefix: &str) -> Result<BTreeMap<String, String>, LayoutError> {
    let mut doc: DocumentMut = text.parse()?;
    let mut out = BTreeMap::new();
    // Inline forms (`mesh = { ... }`, `intention = [{ ... }]`) are the same
    // objects: taken as tables.
    if let Some(mesh) = doc.remove("mesh") {
        let mesh = mesh.into_table().map_err(|_| LayoutError::Unnamed {
            what: "[mesh]",
            field: "table",
        })?;
        let mut one = DocumentMut::new();
        one.insert("mesh", Item::Table(mesh));
        out.insert(Object::Mesh.key(prefix), one.to_string());
    }
    for (array, what) in [
        ("node", "a [[node]] table"),
        ("service", "a [[service]] table"),
        ("intention", "an [[intention]] table"),
        ("revoked", "a [[revoked]] table"),
    ] {
        let Some(item) = doc.remove(array) else {
            continue;
        };
        let Ok(tables) = item.into_array_of_tables() else {
            return Err(LayoutError::Unnamed {
                what,
                field: "table",
            });
        };
        for table in tables.iter() {
            let object = object_of(array, table, what)?;
            let mut one = DocumentMut::new();
            let mut entries = ArrayOfTables::new();
            entries.push(table.clone());
            one.insert(array, Item::ArrayOfTables(entries));
            out.insert(object.key(prefix), one.to_string());
        }
    }
    Ok(out)
}

/// The object an entry of `array` is, by its name fields.
fn object_of(array: &str, table: &Table, what: &'static str) -> Result<Object, LayoutError> {
    let field = |name: &'static str| {
        table
            .get(name)
            .and_then(Item::as_str)
            .map(str::to_owned)
            .ok_or(LayoutError::Unnamed { what, field: name })
    };
    Ok(match array {
        "node" => Object::Node(field("name")?),
        "service" => Object::Service(field("name")?),
        "revoked" => Object::Revoked {
            node: field("node")?,
            node_ca: field("node_ca")?,
        },
        _ => Object::Intention {
            source: field("source")?,
            destination: field("destination")?,
        },
    })
}

/// Checks that `value` holds exactly the object `key` names.
pub fn check(prefix: &str, key: &str, value: &str) -> Result<Object, LayoutError> {
    let object = Object::of_key(prefix, key)?;
    let wrong = |problem: String| LayoutError::Value {
        key: key.to_owned(),
        wanted: object.describe(),
        problem,
    };
    let doc: DocumentMut = value.parse().map_err(|e| wrong(format!("not TOML: {e}")))?;
    let top: Vec<&str> = doc.iter().map(|(k, _)| k).collect();
    let Some(array) = object.array() else {
        return match top.as_slice() {
            ["mesh"] if doc["mesh"].is_table() => Ok(object),
            _ => Err(wrong(format!("it holds {top:?}"))),
        };
    };
    let tables = match (top.as_slice(), doc.get(array)) {
        ([only], Some(Item::ArrayOfTables(t))) if *only == array => t,
        _ => return Err(wrong(format!("it holds {top:?}"))),
    };
    let [table] = tables.iter().collect::<Vec<_>>()[..] else {
        return Err(wrong(format!("it holds {} tables", tables.len())));
    };
    let named = object_of(array, table, "the table").map_err(|e| wrong(e.to_string()))?;
    if named != object {
        return Err(wrong(format!("it holds {named}")));
    }
    Ok(object)
}

/// The catalog's values joined into one `mesh.toml` text, in key order
/// (`[mesh]` first), each after a comment naming its key; and the first
/// line of each key's value, to name the key of a problem at a line.
pub struct Assembled<'a> {
    pub text: String,
    /// Each key's value: its first line and its first byte in `text`.
    starts: Vec<(usize, &'a str, usize)>,
}

impl Assembled<'_> {
    /// The key whose value holds line `line` (1-based) of [`Assembled::text`].
    pub fn key_at(&self, line: usize) -> Option<&str> {
        self.starts
            .iter()
            .take_while(|(start, _, _)| *start <= line)
            .last()
            .map(|(_, key, _)| *key)
    }

    /// Each key, with the byte where its value starts in `text`, in
    /// [`ordered`] order.
    pub fn pieces(&self) -> impl Iterator<Item = (&str, usize)> {
        self.starts.iter().map(|(_, key, at)| (*key, *at))
    }
}

/// `values` in the order [`assemble`] joins them: `[mesh]` first, then by
/// key.
pub fn ordered<'a, V>(
    prefix: &str,
    values: &'a BTreeMap<String, V>,
) -> impl Iterator<Item = (&'a String, &'a V)> {
    let mesh = Object::Mesh.key(prefix);
    let first = values.get_key_value(&mesh);
    first
        .into_iter()
        .chain(values.iter().filter(move |(k, _)| **k != mesh))
}

/// Joins `values` (checked with [`check`]) into one text.
pub fn assemble<'a, V: AsRef<str>>(prefix: &str, values: &'a BTreeMap<String, V>) -> Assembled<'a> {
    // Each value, its key and a comment line.
    let size = values
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().len() + 4)
        .sum();
    let mut text = String::with_capacity(size);
    let mut starts = Vec::with_capacity(values.len());
    // Lines so far (each value ends with a newline).
    let mut lines = 0;
    for (key, value) in ordered(prefix, values) {
        text.push_str("# ");
        text.push_str(key);
        text.push('\n');
        lines += 1;
        starts.push((lines + 1, key.as_str(), text.len()));
        let value = value.as_ref();
        text.push_str(value);
        lines += value.matches('\n').count();
        if !value.ends_with('\n') {
            text.push('\n');
            lines += 1;
        }
    }
    Assembled { text, starts }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        config::Config,
        testing::{NODES, intention, service},
    };

    const PREFIX: &str = "/mesh";

    /// A comment first, a check, an intention.
    fn mesh() -> String {
        format!(
            "# a comment\n[mesh]\ntrust_domain = \"mesh.local\"\ndefault_policy = \"deny\"\n\n\
             {NODES}{}\n[[service.check]]\ntcp = true\ninterval = \"1s\"\n{}{}",
            service("api", &["a", "b"], 5001),
            service("web", &["a"], 8080),
            intention("web", "api", "allow")
        )
    }

    #[test]
    fn a_file_splits_into_one_key_per_object_and_assembles_into_the_same_catalog() {
        let values = split(&mesh(), PREFIX).unwrap();
        let keys: Vec<&str> = values.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "/mesh/v1/intentions/web/api",
                "/mesh/v1/mesh",
                "/mesh/v1/nodes/a",
                "/mesh/v1/nodes/b",
                "/mesh/v1/services/api",
                "/mesh/v1/services/web",
            ]
        );
        for (key, value) in &values {
            check(PREFIX, key, value).unwrap_or_else(|e| panic!("{e}\n{value}"));
        }
        assert!(values["/mesh/v1/services/api"].contains("[[service.check]]"));
        let assembled = assemble(PREFIX, &values);
        let path = Path::new("etcd");
        let from_store = Config::parse(&assembled.text, path).unwrap();
        let from_file = Config::parse(&mesh(), path).unwrap();
        assert_eq!(from_store.mesh, from_file.mesh);
        assert_eq!(from_store.nodes, from_file.nodes);
        assert_eq!(from_store.services, from_file.services);
        // The same rules (their line is where they sit in the text).
        let rules = |c: &Config| -> Vec<String> {
            c.intentions
                .iter()
                .map(|i| format!("{:?} {:?} {:?}", i.source, i.destination, i.action))
                .collect()
        };
        assert_eq!(rules(&from_store), rules(&from_file));
        // [mesh] first (it keeps the comment before it in the file).
        assert!(
            assembled
                .text
                .starts_with("# /mesh/v1/mesh\n# a comment\n[mesh]")
        );
    }

    #[test]
    fn a_revocation_is_a_key_of_its_own() {
        let ca = "ab".repeat(32);
        let text = format!(
            "{}\n[[revoked]]\nnode = \"b\"\nnode_ca = \"{ca}\"\nreadmitted = true\n",
            mesh()
        );
        let values = split(&text, PREFIX).unwrap();
        let key = format!("/mesh/v1/revoked/b/{ca}");
        let value = &values[&key];
        assert_eq!(
            check(PREFIX, &key, value).unwrap(),
            Object::Revoked {
                node: "b".into(),
                node_ca: ca.clone()
            }
        );
        let from_store = Config::parse(&assemble(PREFIX, &values).text, Path::new("etcd")).unwrap();
        assert_eq!(from_store.revoked.len(), 1);
        assert!(from_store.is_revoked_ca(&ca) && !from_store.is_banned("b"));
        let other = format!("/mesh/v1/revoked/c/{ca}");
        let e = check(PREFIX, &other, value).unwrap_err().to_string();
        assert!(e.contains("revocation of node \"b\""), "{e}");
    }

    #[test]
    fn inline_tables_split_like_tables() {
        let inline = r#"mesh = { trust_domain = "corp.example", default_policy = "allow" }
node = [{ name = "a", address = "10.0.0.1" }]
service = [{ name = "web", node = "a", port = 80 }]
intention = [{ source = "web", destination = "web", action = "deny" }]
"#;
        let values = split(inline, PREFIX).unwrap();
        assert_eq!(values.len(), 4, "{values:?}");
        let path = Path::new("etcd");
        let from_store = Config::parse(&assemble(PREFIX, &values).text, path).unwrap();
        let from_file = Config::parse(inline, path).unwrap();
        assert_eq!(from_store.mesh, from_file.mesh);
        assert_eq!(from_store.services, from_file.services);
        assert_eq!(from_store.intentions.len(), 1);
    }

    #[test]
    fn a_problem_at_a_line_names_its_key() {
        let values = split(&mesh(), PREFIX).unwrap();
        let assembled = assemble(PREFIX, &values);
        let line = assembled
            .text
            .lines()
            .position(|l| l == "port = 8080")
            .unwrap()
            + 1;
        assert_eq!(assembled.key_at(line), Some("/mesh/v1/services/web"));
        assert_eq!(assembled.key_at(1), None);
        assert_eq!(assembled.key_at(2), Some("/mesh/v1/mesh"));
    }

    #[test]
    fn a_value_must_hold_exactly_the_object_its_key_names() {
        let key = "/mesh/v1/services/web";
        let web = "[[service]]\nname = \"web\"\nnode = \"a\"\nport = 1\n";
        assert_eq!(
            check(PREFIX, key, web).unwrap(),
            Object::Service("web".into())
        );
        for (bad, why) in [
            (
                web.replace("\"web\"", "\"api\""),
                "it holds service \"api\"",
            ),
            (format!("{web}{web}"), "2 tables"),
            (format!("{web}[mesh]\n"), "[\"service\", \"mesh\"]"),
            ("[[node]]\nname = \"web\"\n".to_owned(), "[\"node\"]"),
            ("name = ".to_owned(), "not TOML"),
        ] {
            let e = check(PREFIX, key, &bad).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(why), "{e}");
        }
        for key in [
            "/mesh/v2/mesh",
            "/mesh/v1/nodes",
            "/mesh/v1/nodes/a/b",
            "/mesh/v1/intentions/web",
            "/other/v1/mesh",
            "/mesh/v1/services/",
        ] {
            assert!(
                matches!(check(PREFIX, key, web), Err(LayoutError::UnknownKey { .. })),
                "{key}"
            );
        }
    }
}
