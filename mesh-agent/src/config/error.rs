//! [`ConfigError`], [`Problem`] and the byte offset to line/column mapping.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Every problem found, sorted by position; never empty.
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The problems of an [`ConfigError::Invalid`]; empty for I/O errors.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Io { .. } => &[],
            ConfigError::Invalid(problems) => problems,
        }
    }
}

/// One thing wrong with a config file, at a 1-based line and column
/// (columns count characters, not bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

fn join_lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The UTF-8 byte order mark, as a char.
pub(super) const BOM: char = '\u{feff}';

/// The text being parsed and its path: turns byte spans into [`Problem`]s.
#[derive(Clone, Copy)]
pub(super) struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl<'a> Source<'a> {
    /// `bytes` as UTF-8 text, or the problem at the first byte that is not.
    pub fn decode(bytes: &'a [u8], path: &'a Path) -> Result<Self, Problem> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Ok(Source { path, text }),
            Err(e) => {
                let valid = bytes.get(..e.valid_up_to()).unwrap_or_default();
                // The prefix before the bad byte is UTF-8 by definition.
                let text = std::str::from_utf8(valid).unwrap_or_default();
                let bad = bytes.get(e.valid_up_to()).copied().unwrap_or_default();
                let message = format!("invalid UTF-8 (byte 0x{bad:02x}): expected a UTF-8 file");
                Err(Source { path, text }.problem(text.len()..text.len(), message))
            }
        }
    }
}

impl Source<'_> {
    /// 1-based (line, column) of the byte `offset`. A byte order mark at the
    /// start of the file (which the TOML parser skips) is not a column.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = self.text.floor_char_boundary(offset);
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let line_text = &before[line_start..];
        let line_text = if line_start == 0 {
            line_text.strip_prefix(BOM).unwrap_or(line_text)
        } else {
            line_text
        };
        let column = line_text.chars().count() + 1;
        (line, column)
    }

    pub fn problem(&self, span: Range<usize>, message: impl Into<String>) -> Problem {
        let (line, column) = self.position(span.start);
        Problem {
            path: self.path.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }

    /// A TOML syntax or shape error at `span` (see [`Source::toml_message`]).
    pub fn toml_problem(&self, span: Option<Range<usize>>, message: &str) -> Problem {
        let span = span.unwrap_or(0..0);
        let message = self.toml_message(span.start, message);
        self.problem(span, message)
    }

    /// A TOML parser message for an error at byte `offset`, on one line:
    /// its lines ("invalid string\nexpected ...") trimmed and joined with
    /// ": ". The parser gives no message for some errors (a control
    /// character in a comment); those name the character found instead.
    pub fn toml_message(&self, offset: usize, message: &str) -> String {
        let message = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(": ");
        if !message.is_empty() {
            return message;
        }
        let at = self.text.floor_char_boundary(offset);
        match self.text[at..].chars().next() {
            Some(c) => format!("unexpected character {c:?}"),
            None => "unexpected end of file".to_owned(),
        }
    }
}
