//! The library's modules stand in layers: no top-level module reaches a
//! module that reaches it back (directly or through others), and within a
//! module no two files do. Read from the sources' `crate::` and `super::`
//! paths (test code left out), so a new import that runs back up fails
//! here, naming the circle.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

#[test]
fn no_module_reaches_back_to_one_that_reaches_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources(&src) {
        let rel = file.strip_prefix(&src).unwrap_or(&file);
        let Some(module) = top_module(rel) else {
            continue;
        };
        let text = production(&fs::read_to_string(&file).unwrap_or_default());
        let deps = modules.entry(module.clone()).or_default();
        for used in crate_paths(&text) {
            if used != module {
                deps.insert(used);
            }
        }
    }
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    for deps in modules.values_mut() {
        deps.retain(|d| known.contains(d));
    }
    if let Some(circle) = circle(&modules) {
        panic!("modules import each other: {}", circle.join(" -> "));
    }
}

#[test]
fn no_file_reaches_back_to_one_that_reaches_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    // Per module directory: each file's siblings named by `super::` or by
    // the module's full path.
    let mut dirs: BTreeMap<PathBuf, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in sources(&src) {
        let Some(dir) = file.parent() else { continue };
        if dir == src {
            continue;
        }
        let stem = file_stem(&file);
        let module = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        let text = production(&fs::read_to_string(&file).unwrap_or_default());
        // Names `mod.rs` re-exports stand for the file that defines them.
        let reexports = reexports(&dir.join("mod.rs"));
        let mut named = paths(&text, "super::");
        if let Some(module) = &module {
            named.extend(paths(&text, &format!("crate::{module}::")));
        }
        let deps: BTreeSet<String> = named
            .into_iter()
            .map(|n| reexports.get(&n).cloned().unwrap_or(n))
            .collect();
        let mut deps = deps;
        deps.remove(&stem);
        dirs.entry(dir.to_owned()).or_default().insert(stem, deps);
    }
    for (dir, files) in &mut dirs {
        let known: BTreeSet<String> = files.keys().cloned().collect();
        for deps in files.values_mut() {
            // `mod.rs` is the module itself: its items are the module's.
            deps.retain(|d| known.contains(d) && d != "mod");
        }
        files.remove("mod");
        if let Some(circle) = circle(files) {
            panic!(
                "files of {} import each other: {}",
                dir.display(),
                circle.join(" -> ")
            );
        }
    }
}

/// What the `mod.rs` at `path` re-exports from its files: item -> file
/// (`pub use board::Board;`, `pub use link::{Links, follow};`).
fn reexports(path: &Path) -> BTreeMap<String, String> {
    let text = production(&fs::read_to_string(path).unwrap_or_default());
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((file, items)) = rest.split_once("::") else {
            continue;
        };
        if file == "crate" || file == "super" || file == "self" {
            continue;
        }
        let items = items.trim_end_matches(';');
        let items = items
            .strip_prefix('{')
            .map_or(vec![items.to_owned()], group_items);
        for item in items {
            out.insert(item, file.to_owned());
        }
    }
    out
}

/// Every `.rs` file under `dir`, but test files.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if path.is_dir() {
            if name.as_deref() != Some("tests") {
                out.extend(sources(&path));
            }
        } else if path.extension().is_some_and(|e| e == "rs")
            && !matches!(name.as_deref(), Some("tests.rs" | "fixture.rs"))
        {
            out.push(path);
        }
    }
    out
}

/// The top-level module a file belongs to; `None` for the crate roots and
/// the command line (they stand above every module).
fn top_module(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs").to_owned();
    match name.as_str() {
        "lib" | "main" | "cli" | "testing" => None,
        _ => Some(name),
    }
}

fn file_stem(file: &Path) -> String {
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `text` without its `#[cfg(test)]` items (the test module at the end of
/// a file, by house style).
fn production(text: &str) -> String {
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_owned(),
        None => text.to_owned(),
    }
}

/// The top-level modules named by `crate::` paths in `text`, braces
/// included (`use crate::{a::b, c}` names `a` and `c`).
fn crate_paths(text: &str) -> BTreeSet<String> {
    paths(text, "crate::")
}

/// The first segment after each `prefix` in `text`; after `prefix{`, the
/// first segment of each item of the group.
fn paths(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        // Not the tail of a longer path (`super::super::`, `x::crate::`).
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            out.extend(group_items(group));
        } else {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                out.insert(ident);
            }
        }
    }
    out
}

/// The first segment of each item of a `{...}` group whose text starts
/// just after the `{`.
fn group_items(group: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut start = true;
    let mut ident = String::new();
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => start = true,
            c if depth == 0 && start && (c.is_alphanumeric() || c == '_') => ident.push(c),
            _ if depth == 0 && start && !ident.is_empty() => {
                items.push(std::mem::take(&mut ident));
                start = false;
            }
            _ => {}
        }
    }
    if !ident.is_empty() {
        items.push(ident);
    }
    items
}

/// A circle of the graph, if any, as the names along it.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_reader_finds_imports_and_circles() {
    let text = "use crate::{\n    admin::{self, Admin},\n    catalog::Reach,\n    tls,\n};\nlet x = crate::dns::serve();\nsuper::super::x();";
    let found: Vec<String> = crate_paths(text).into_iter().collect();
    assert_eq!(found, ["admin", "catalog", "dns", "tls"]);
    let graph = BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]);
    assert_eq!(circle(&graph).unwrap(), ["a", "b", "c", "a"]);
    let line = BTreeMap::from([("a".to_owned(), BTreeSet::from(["b".to_owned()]))]);
    assert_eq!(circle(&line), None);
    assert_eq!(production("x\n#[cfg(test)]\nmod tests {}"), "x\n");
}
