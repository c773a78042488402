//! A config judged from pieces parsed one at a time: the catalog in etcd
//! is one TOML document per key (`catalog::layout`), judged as their
//! concatenation. Parsing that whole text again on every change costs
//! time in proportion to the catalog's text (most of a judgment); a
//! [`Piece`] is parsed once, when its key changes, and [`judge`] runs the
//! semantic checks of [`Config::from_bytes`] on the pieces, their spans
//! moved to where each piece sits in the concatenation, so that it
//! accepts and rejects exactly what `from_bytes` of that text does, with
//! the same problems at the same lines.

use std::{ops::Range, path::Path};

use toml::Spanned;

use super::{
    Config, ConfigError,
    error::Source,
    raw::{RawCheck, RawConfig, RawIntention, RawMesh, RawNode, RawRevoked, RawService},
    validate,
};

/// One piece's TOML, parsed alone.
#[derive(Debug, Clone)]
pub struct Piece(RawConfig);

impl Piece {
    /// `text` parsed alone; `None` if it does not parse as a config's
    /// shape (then [`judge`] parses the whole text, for its exact error).
    pub fn parse(text: &str) -> Option<Self> {
        toml::from_str(text).ok().map(Self)
    }
}

/// Judges `text`, which is `pieces` concatenated (each with the byte offset
/// where its text starts in `text`, in order, and nothing but comments and
/// blank lines between them), as `Config::from_bytes(text)` would. A
/// missing piece (`None`: it did not parse alone) means parsing `text`.
pub fn judge<'a>(
    text: &str,
    pieces: impl IntoIterator<Item = (usize, Option<&'a Piece>)>,
    path: &Path,
) -> Result<Config, ConfigError> {
    let mut raw = RawConfig {
        mesh: None,
        node: Vec::new(),
        service: Vec::new(),
        intention: Vec::new(),
        revoked: Vec::new(),
    };
    for (at, piece) in pieces {
        let Some(Piece(piece)) = piece else {
            return Config::parse(text, path);
        };
        if let Some(mesh) = &piece.mesh {
            if raw.mesh.is_some() {
                // Two [mesh] tables: TOML's own error.
                return Config::parse(text, path);
            }
            raw.mesh = Some(mesh.moved(at));
        }
        raw.node.extend(piece.node.iter().map(|n| n.moved(at)));
        raw.service
            .extend(piece.service.iter().map(|s| s.moved(at)));
        raw.intention
            .extend(piece.intention.iter().map(|i| i.moved(at)));
        raw.revoked
            .extend(piece.revoked.iter().map(|r| r.moved(at)));
    }
    validate::check(Source { path, text }, raw)
}

/// A copy with every span `by` bytes further on.
trait Moved {
    fn moved(&self, by: usize) -> Self;
}

fn shift(span: Range<usize>, by: usize) -> Range<usize> {
    span.start + by..span.end + by
}

impl<T: Moved> Moved for Spanned<T> {
    fn moved(&self, by: usize) -> Self {
        Spanned::new(shift(self.span(), by), self.get_ref().moved(by))
    }
}

impl<T: Moved> Moved for Option<T> {
    fn moved(&self, by: usize) -> Self {
        self.as_ref().map(|v| v.moved(by))
    }
}

impl<T: Moved> Moved for Vec<T> {
    fn moved(&self, by: usize) -> Self {
        self.iter().map(|v| v.moved(by)).collect()
    }
}

/// Leaves: no spans inside.
macro_rules! unmoved {
    ($($t:ty),*) => {$(
        impl Moved for $t {
            fn moved(&self, _: usize) -> Self {
                self.clone()
            }
        }
    )*};
}
unmoved!(String, bool, toml::Value);

impl Moved for RawMesh {
    fn moved(&self, by: usize) -> Self {
        Self {
            trust_domain: self.trust_domain.moved(by),
            default_policy: self.default_policy.moved(by),
            ca_dir: self.ca_dir.moved(by),
            leaf_ttl: self.leaf_ttl.moved(by),
        }
    }
}

impl Moved for RawNode {
    fn moved(&self, by: usize) -> Self {
        Self {
            name: self.name.moved(by),
            address: self.address.moved(by),
        }
    }
}

impl Moved for RawService {
    fn moved(&self, by: usize) -> Self {
        Self {
            name: self.name.moved(by),
            node: self.node.moved(by),
            nodes: self.nodes.moved(by),
            port: self.port.moved(by),
            vip: self.vip.moved(by),
            public: self.public,
            cgroup: self.cgroup.moved(by),
            lb: self.lb.moved(by),
            check: self.check.moved(by),
        }
    }
}

impl Moved for RawCheck {
    fn moved(&self, by: usize) -> Self {
        Self {
            name: self.name.moved(by),
            http: self.http.moved(by),
            tcp: self.tcp.moved(by),
            ttl: self.ttl.moved(by),
            interval: self.interval.moved(by),
            timeout: self.timeout.moved(by),
            success_before_passing: self.success_before_passing.moved(by),
            failures_before_critical: self.failures_before_critical.moved(by),
        }
    }
}

impl Moved for RawIntention {
    fn moved(&self, by: usize) -> Self {
        Self {
            source: self.source.moved(by),
            destination: self.destination.moved(by),
            action: self.action.moved(by),
        }
    }
}

impl Moved for RawRevoked {
    fn moved(&self, by: usize) -> Self {
        Self {
            node: self.node.moved(by),
            node_ca: self.node_ca.moved(by),
            readmitted: self.readmitted.moved(by),
        }
    }
}
