//! A config judged from pieces parsed one at a time: the catalog in etcd
//! is one TOML document per key (`catalog::layout`), judged as their
//! concatenation. Parsing that whole text again on every change costs
//! time in proportion to the catalog's text (most of a judgment); a
//! [`Piece`] is parsed once, when its key changes, and [`judge`] runs the
//! semantic checks of [`Config::from_bytes`] on the pieces, each with the
//! offset where it sits in the concatenation, so that it
//! accepts and rejects exactly what `from_bytes` of that text does, with
//! the same problems at the same lines.

use std::path::Path;

use toml::Spanned;

use super::{
    Config, ConfigError, Intention, Service,
    error::Source,
    raw::{RawConfig, RawIntention, RawMesh, RawNode, RawRevoked, RawService},
    validate::{self, Objects},
};

/// One piece's TOML, parsed alone. A piece of the catalog holds one object
/// (`catalog::layout`): kept as that object alone, without the empty
/// tables of a whole `RawConfig` (a large catalog holds tens of
/// thousands of pieces).
#[derive(Debug, Clone)]
pub struct Piece(Shape);

#[derive(Debug, Clone)]
enum Shape {
    Mesh(Box<RawMesh>),
    Node(Box<Spanned<RawNode>>),
    Service(Box<Spanned<RawService>>),
    Intention(Box<Spanned<RawIntention>>),
    Revoked(Box<Spanned<RawRevoked>>),
    /// No object or several: as parsed.
    Other(Box<RawConfig>),
}

impl Piece {
    /// `text` parsed alone; `None` if it does not parse as a config's
    /// shape (then [`judge`] parses the whole text, for its exact error).
    pub fn parse(text: &str) -> Option<Self> {
        let raw: RawConfig = toml::from_str(text).ok()?;
        let objects = usize::from(raw.mesh.is_some())
            + raw.node.len()
            + raw.service.len()
            + raw.intention.len()
            + raw.revoked.len();
        if objects != 1 {
            return Some(Self(Shape::Other(Box::new(raw))));
        }
        let RawConfig {
            mesh,
            node,
            service,
            intention,
            revoked,
        } = raw;
        let shape = if let Some(mesh) = mesh {
            Shape::Mesh(Box::new(mesh))
        } else if let Some(n) = node.into_iter().next() {
            Shape::Node(Box::new(n))
        } else if let Some(s) = service.into_iter().next() {
            Shape::Service(Box::new(s))
        } else if let Some(i) = intention.into_iter().next() {
            Shape::Intention(Box::new(i))
        } else {
            Shape::Revoked(Box::new(revoked.into_iter().next()?))
        };
        Some(Self(shape))
    }

    /// The one intention this piece holds, checked as a whole judge of a
    /// config with `config`'s services would check it (`config`: a valid
    /// one); `None` if the piece is not one intention, or that intention
    /// would be a problem there. Its line is 0.
    pub fn lone_intention(&self, config: &Config) -> Option<Intention> {
        let Shape::Intention(raw) = &self.0 else {
            return None;
        };
        let is_service = |name: &str| config.services.iter().any(|s| s.name.as_str() == name);
        validate::lone_intention(raw.get_ref(), &is_service)
    }

    /// The one service this piece holds, checked as a whole judge of
    /// `config` (a valid one) with it in place of its namesake would check
    /// it; `None` if the piece is not one service, or that service would
    /// be a problem there.
    pub fn lone_service(&self, config: &Config) -> Option<Service> {
        let Shape::Service(raw) = &self.0 else {
            return None;
        };
        validate::lone_service(raw, config)
    }

    /// Adds its objects to `objects`, as parsed from text at byte `at`.
    /// `Err(())` if both hold a `[mesh]` table.
    fn add_to<'r>(&'r self, objects: &mut Objects<'r>, at: usize) -> Result<(), ()> {
        match &self.0 {
            Shape::Mesh(mesh) => {
                if objects.mesh.is_some() {
                    return Err(());
                }
                objects.mesh = Some((at, mesh));
            }
            Shape::Node(n) => objects.nodes.push((at, n)),
            Shape::Service(s) => objects.services.push((at, s)),
            Shape::Intention(i) => objects.intentions.push((at, i)),
            Shape::Revoked(r) => objects.revoked.push((at, r)),
            Shape::Other(raw) => objects.add(raw, at)?,
        }
        Ok(())
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
    let mut objects = Objects::default();
    for (at, piece) in pieces {
        let Some(piece) = piece else {
            return Config::parse(text, path);
        };
        if piece.add_to(&mut objects, at).is_err() {
            // Two [mesh] tables: TOML's own error.
            return Config::parse(text, path);
        }
    }
    validate::check(Source { path, text }, objects)
}
