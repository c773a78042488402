//! Runs external commands: echoes each as `$ <command line>` to stderr first,
//! and turns a failure into an error that names the command line and status.

use std::{
    env,
    ffi::{OsStr, OsString},
    iter,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};

/// A command for `program` whose PATH includes cargo's bin directory
/// (`$CARGO_HOME/bin` or `~/.cargo/bin`), where rustup and bpf-linker live.
pub fn new(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    if let Some(path) = path_with_cargo_bin() {
        cmd.env("PATH", path);
    }
    cmd
}

/// A `cargo` command run from the workspace root.
pub fn cargo() -> Command {
    let mut cmd = new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

/// The workspace root: the parent of the xtask crate.
pub fn workspace_root() -> &'static Path {
    // The xtask crate lives at `<workspace>/xtask`, so its manifest dir always
    // has a parent.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
}

/// Echoes `cmd`, runs it with inherited stdio and waits for it. Fails if it
/// cannot start or exits unsuccessfully.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let line = line(cmd);
    eprintln!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly, for presence checks: no echo, stderr discarded.
/// Returns its stdout if it exits successfully, `None` if it cannot start or
/// fails.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let output = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Echoes `cmd` and replaces this process with it. Returns only on failure.
pub fn exec(cmd: &mut Command) -> anyhow::Error {
    let line = line(cmd);
    eprintln!("$ {line}");
    anyhow!(cmd.exec()).context(format!("failed to exec `{line}`"))
}

/// `cmd` as a line a shell would run the same way: env changes, program, args.
fn line(cmd: &Command) -> String {
    let mut words = Vec::new();
    // Only removals of variables we actually have change anything.
    let unset: Vec<&OsStr> = cmd
        .get_envs()
        .filter(|(key, value)| value.is_none() && env::var_os(key).is_some())
        .map(|(key, _)| key)
        .collect();
    if !unset.is_empty() {
        words.push("env".to_owned());
        for key in unset {
            words.extend(["-u".to_owned(), quote(key)]);
        }
    }
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            words.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    words.push(quote(cmd.get_program()));
    words.extend(cmd.get_args().map(quote));
    let line = words.join(" ");
    match cmd.get_current_dir() {
        Some(dir) if env::current_dir().ok().as_deref() != Some(dir) => {
            format!("cd {} && {line}", quote(dir.as_os_str()))
        }
        _ => line,
    }
}

/// `word` quoted for a POSIX shell if it needs to be.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// PATH with cargo's bin directory prepended, or `None` if it is already there
/// (or there is no home directory to find it in).
fn path_with_cargo_bin() -> Option<OsString> {
    let cargo_home = match env::var_os("CARGO_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home),
        _ => PathBuf::from(env::var_os("HOME")?).join(".cargo"),
    };
    let bin = cargo_home.join("bin");
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|dir| dir == bin) {
        return None;
    }
    env::join_paths(iter::once(bin).chain(env::split_paths(&path))).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_words_that_need_it() {
        assert_eq!(
            quote(OsStr::new("--features=llvm-22")),
            "--features=llvm-22"
        );
        assert_eq!(quote(OsStr::new("^0.13")), "'^0.13'");
        assert_eq!(quote(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(quote(OsStr::new("")), "''");
    }

    #[test]
    fn line_shows_env_program_and_args() {
        let mut cmd = Command::new("cargo");
        cmd.args(["install", "a b"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22");
        assert_eq!(
            line(&cmd),
            "LLVM_PREFIX=/usr/lib/llvm-22 cargo install 'a b'"
        );
    }
}
