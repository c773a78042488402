//! Every `mesh-agent ...` line of a code block in README.md and docs/
//! parses with this command line: a renamed or missing flag in the docs
//! fails the suite.

use std::path::{Path, PathBuf};

use clap::Parser as _;

use super::Cli;

/// The workspace's README and every markdown file under docs/.
fn documents() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the workspace");
    let mut files = vec![root.join("README.md")];
    let docs = std::fs::read_dir(root.join("docs")).expect("docs/");
    for entry in docs {
        let path = entry.expect("docs entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// (line number, command line) of each `mesh-agent` command in a code
/// block of `text`: a prompt (`$ `, `# `) and `sudo [-E]` before it and
/// a `# comment` after it are not part of it.
fn commands(text: &str) -> Vec<(usize, String)> {
    let mut in_block = false;
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        let mut rest = trimmed;
        for prefix in ["$ ", "# ", "sudo -E ", "sudo "] {
            rest = rest.strip_prefix(prefix).unwrap_or(rest).trim_start();
        }
        if !rest.starts_with("mesh-agent ") {
            continue;
        }
        let command = match rest.find(" #") {
            Some(at) => &rest[..at],
            None => rest,
        };
        found.push((i + 1, command.trim().to_owned()));
    }
    found
}

/// Why `line` does not parse as a `mesh-agent` command, if it does not.
fn check(line: &str) -> Result<(), String> {
    let words = shell_words::split(line).map_err(|e| format!("cannot split: {e}"))?;
    Cli::try_parse_from(&words).map(drop).map_err(|e| {
        // The error without clap's usage and tips: its first
        // paragraph, on one line.
        let text = e.to_string();
        let first: Vec<&str> = text.lines().take_while(|l| !l.is_empty()).collect();
        first.join(" ")
    })
}

#[test]
fn every_command_in_the_docs_parses() {
    let mut seen = 0;
    let mut wrong = Vec::new();
    for file in documents() {
        let text = std::fs::read_to_string(&file).expect("read a doc");
        for (line, command) in commands(&text) {
            seen += 1;
            if let Err(why) = check(&command) {
                wrong.push(format!("{}:{line}: {command}\n    {why}", file.display()));
            }
        }
    }
    assert!(seen >= 10, "only {seen} commands found in the docs");
    assert!(
        wrong.is_empty(),
        "commands in the docs that do not parse:\n{}",
        wrong.join("\n")
    );
}

/// The check itself: a wrong or missing flag in a doc's code block is
/// caught, a right one passes.
#[test]
fn a_wrong_flag_in_a_doc_is_caught() {
    let doc = "Try:\n\n```sh\n$ sudo mesh-agent run --config mesh.toml --node a   # as root\n\
               mesh-agent run --config mesh.toml --nod a\n\
               mesh-agent exec --node a --service web -- curl http://api.mesh/\n```\n\
               mesh-agent outside a block --is-not-read\n";
    let found = commands(doc);
    assert_eq!(
        found.iter().map(|(line, _)| *line).collect::<Vec<_>>(),
        [4, 5, 6]
    );
    assert_eq!(found[0].1, "mesh-agent run --config mesh.toml --node a");
    assert_eq!(check(&found[0].1), Ok(()));
    let renamed = check(&found[1].1).unwrap_err();
    assert!(renamed.contains("--nod"), "{renamed}");
    let missing = check(&found[2].1).unwrap_err();
    assert!(missing.contains("--config"), "{missing}");
}
