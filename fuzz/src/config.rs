//! Config bytes through `Config::from_bytes` (what every command and the
//! agent use) and, for valid configs, through the
//! intention editor (`config::edit`).
//!
//! Invariants:
//! - a refused config has problems, each inside the text, on one line;
//! - editing an intention of a valid config whose intentions are
//!   `[[intention]]` tables succeeds, and the result parses, holds the
//!   edited intention (or no longer holds it, after a delete) and is
//!   otherwise the same config;
//! - `Created` tells what the edit found.

use std::path::Path;

use mesh_agent::config::{
    Action, Config, ConfigError, Match,
    edit::{self, Created, EditError},
};

use crate::mesh::PATH;

pub fn check(data: &[u8]) {
    let path = Path::new(PATH);
    let result = Config::from_bytes(data, path);
    let Ok(text) = std::str::from_utf8(data) else {
        // Invalid UTF-8: refused, with the problem at the bad byte.
        let e = result.expect_err("a config that is not UTF-8 was accepted");
        assert_eq!(e.problems().len(), 1, "{e}");
        return;
    };
    let config = match result {
        Ok(config) => config,
        Err(e) => return check_problems(text, &e),
    };
    // An intention of the file, with the other action.
    if let Some(i) = config.intentions.first() {
        let action = match i.action {
            Action::Allow => Action::Deny,
            Action::Deny => Action::Allow,
        };
        let (src, dst) = (name(&i.source).to_owned(), name(&i.destination).to_owned());
        check_edit(text, &config, &src, &dst, action);
    }
    // A pair of declared names (or `*`), picked by the input's length.
    let names: Vec<&str> = std::iter::once("*")
        .chain(config.services.iter().map(|s| s.name.as_str()))
        .collect();
    let src = names[text.len() % names.len()];
    let dst = names[text.len() / names.len() % names.len()];
    check_edit(text, &config, src, dst, Action::Deny);
}

fn check_problems(text: &str, e: &ConfigError) {
    let problems = e.problems();
    assert!(!problems.is_empty(), "no problems in {e:?}");
    let lines = text.split('\n').count();
    for p in problems {
        assert!((1..=lines).contains(&p.line), "{p:?} outside {lines} lines");
        assert!(p.column >= 1, "{p:?}");
        assert!(!p.message.is_empty() && !p.message.contains('\n'), "{p:?}");
    }
    let _ = e.to_string();
}

/// Sets `src -> dst` to `action` in `text`, then deletes it, checking both.
fn check_edit(text: &str, before: &Config, src: &str, dst: &str, action: Action) {
    let path = Path::new(PATH);
    let (created, edited) = match edit::with_intention(text, path, src, dst, action) {
        Ok(done) => done,
        Err(e) => return assert_not_editable(&e),
    };
    let after = Config::parse(&edited, path)
        .unwrap_or_else(|e| panic!("the edit of a valid config is invalid:\n{e}\n{edited}"));
    let found = |c: &Config| {
        c.intentions
            .iter()
            .find(|i| name(&i.source) == src && name(&i.destination) == dst)
            .map(|i| i.action)
    };
    match created {
        Created::Added => assert_eq!(found(before), None),
        Created::Updated { from } => assert_eq!(found(before), Some(from)),
        Created::Unchanged => {
            assert_eq!(found(before), Some(action));
            assert_eq!(edited, text);
        }
    }
    assert_eq!(found(&after), Some(action), "{edited}");
    assert_same_but(before, &after, src, dst);

    let deleted = edit::without_intention(&edited, path, src, dst)
        .unwrap_or_else(|e| panic!("deleting an intention just set failed: {e}\n{edited}"));
    let gone = Config::parse(&deleted, path)
        .unwrap_or_else(|e| panic!("the delete of a valid config is invalid:\n{e}\n{deleted}"));
    assert_eq!(found(&gone), None, "{deleted}");
    assert_same_but(before, &gone, src, dst);
}

/// The one refusal a valid config may get: intentions not written as
/// `[[intention]]` tables (e.g. `intention = [{ ... }]`).
fn assert_not_editable(e: &EditError) {
    let EditError::Invalid(ConfigError::Invalid(problems)) = e else {
        panic!("editing a valid config failed: {e}");
    };
    assert!(
        matches!(problems.as_slice(), [p] if p.message.contains("[[intention]] tables")),
        "editing a valid config failed: {e}"
    );
}

/// `a` and `b` are the same config, apart from the intention `src -> dst`
/// and the lines intentions are on.
fn assert_same_but(a: &Config, b: &Config, src: &str, dst: &str) {
    assert_eq!(
        (&a.mesh, &a.nodes, &a.services),
        (&b.mesh, &b.nodes, &b.services)
    );
    let others = |c: &Config| {
        c.intentions
            .iter()
            .filter(|i| !(name(&i.source) == src && name(&i.destination) == dst))
            .map(|i| (i.source.clone(), i.destination.clone(), i.action))
            .collect::<Vec<_>>()
    };
    assert_eq!(others(a), others(b));
}

fn name(m: &Match) -> &str {
    match m {
        Match::Any => "*",
        Match::Name(name) => name,
    }
}
