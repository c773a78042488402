//! From [`RawConfig`] to [`Config`]: every semantic check, collecting all
//! problems instead of stopping at the first.
//!
//! Cross-references (a service's node, an intention's services) are checked
//! against every declared name, valid or not, so one bad name does not also
//! produce "unknown node" problems elsewhere.

mod checks;

use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::error::{BOM, Source};
use super::raw::{RawConfig, RawIntention, RawMesh, RawNode, RawRevoked, RawService};
use super::{
    Action, Balance, Config, ConfigError, Intention, Match, Mesh, Node, Problem, Revoked, Service,
    default_vip, values,
};

/// Maps and sets of names: foldhash, several times cheaper than SipHash
/// on short keys (a judgment of a large catalog hashes every name it
/// holds a few times).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// A map with room for `n` entries (a large catalog's would otherwise
/// grow through a dozen rehashes on every judgment).
fn sized<K, V>(n: usize) -> HashMap<K, V> {
    HashMap::with_capacity_and_hasher(n, Default::default())
}

const DEFAULT_TRUST_DOMAIN: &str = "mesh.local";
const DEFAULT_CA_DIR: &str = "ca";
const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(24 * 3600);

/// The one acceptance rule (see [`Config::from_bytes`]): UTF-8, then TOML
/// of the expected shape, then every semantic check.
pub(super) fn parse(bytes: &[u8], path: &Path) -> Result<Config, ConfigError> {
    let source = Source::decode(bytes, path).map_err(|p| ConfigError::Invalid(vec![p]))?;
    let raw: RawConfig = toml::from_str(source.text)
        .map_err(|e| ConfigError::Invalid(vec![source.toml_problem(e.span(), e.message())]))?;
    check(source, Objects::of(&raw, 0))
}

/// An object to check, with the byte offset in the whole text of the
/// text it was parsed from: 0 for a file parsed whole; where its piece
/// starts for a catalog judged from pieces (`config::pieces`). Its spans
/// are relative to that offset.
pub(super) type At<'r, T> = (usize, &'r T);

/// Every object of a config, borrowed from where it was parsed (one
/// [`RawConfig`], or one per piece).
#[derive(Default)]
pub(super) struct Objects<'r> {
    pub mesh: Option<At<'r, RawMesh>>,
    pub nodes: Vec<At<'r, Spanned<RawNode>>>,
    pub services: Vec<At<'r, Spanned<RawService>>>,
    pub intentions: Vec<At<'r, Spanned<RawIntention>>>,
    pub revoked: Vec<At<'r, Spanned<RawRevoked>>>,
}

impl<'r> Objects<'r> {
    /// The objects of `raw`, parsed from text at byte `at` of the whole.
    pub fn of(raw: &'r RawConfig, at: usize) -> Self {
        Self {
            mesh: raw.mesh.as_ref().map(|m| (at, m)),
            nodes: raw.node.iter().map(|n| (at, n)).collect(),
            services: raw.service.iter().map(|s| (at, s)).collect(),
            intentions: raw.intention.iter().map(|i| (at, i)).collect(),
            revoked: raw.revoked.iter().map(|r| (at, r)).collect(),
        }
    }

    /// Adds the objects of `raw`, after those held. `Err(())` if both
    /// hold a `[mesh]` table.
    pub fn add(&mut self, raw: &'r RawConfig, at: usize) -> Result<(), ()> {
        if let Some(mesh) = &raw.mesh {
            if self.mesh.is_some() {
                return Err(());
            }
            self.mesh = Some((at, mesh));
        }
        self.nodes.extend(raw.node.iter().map(|n| (at, n)));
        self.services.extend(raw.service.iter().map(|s| (at, s)));
        self.intentions
            .extend(raw.intention.iter().map(|i| (at, i)));
        self.revoked.extend(raw.revoked.iter().map(|r| (at, r)));
        Ok(())
    }
}

/// Every semantic check of `objects`, parsed from `source`.
pub(super) fn check(source: Source<'_>, objects: Objects<'_>) -> Result<Config, ConfigError> {
    let path = source.path;
    let line_starts = std::iter::once(0)
        .chain(source.text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let mut checker = Checker {
        source,
        problems: Vec::new(),
        line_starts,
        at: 0,
    };
    if objects.nodes.is_empty() {
        // Every agent runs as one of the nodes: no agent could run this.
        let message = if source.text.trim_start_matches(BOM).trim().is_empty() {
            "empty file: expected at least one [[node]]"
        } else {
            "no [[node]]: expected at least one, every agent runs as one of the nodes"
        };
        checker.report(0..0, message);
    }
    let no_mesh = RawMesh::default();
    let (at, raw_mesh) = objects.mesh.unwrap_or((0, &no_mesh));
    checker.at = at;
    let mesh = checker.mesh(raw_mesh);
    let nodes = checker.nodes(&objects.nodes);
    let services = checker.services(&objects.services, &objects.nodes);
    let intentions = checker.intentions(&objects.intentions, &objects.services);
    let revoked = checker.revoked(&objects.revoked);

    let mut problems = checker.problems;
    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.line, p.column));
        return Err(ConfigError::Invalid(problems));
    }
    Ok(Config {
        path: path.to_owned(),
        mesh,
        nodes,
        services,
        intentions,
        revoked,
    })
}

/// One `[[intention]]` alone, checked as [`check`] checks it in a whole
/// config whose declared services are those `is_service` names: `None` if
/// it has a problem there (then judge the whole config, for the problems
/// at their lines). Its line is 0.
pub(super) fn lone_intention(
    raw: &RawIntention,
    is_service: &impl Fn(&str) -> bool,
) -> Option<Intention> {
    let mut checker = Checker::alone();
    let (source, destination, action) = checker.intention(raw, is_service)?;
    checker.problems.is_empty().then_some(Intention {
        source,
        destination,
        action,
        line: 0,
    })
}

/// One `[[service]]` alone, checked as [`check`] checks it in a whole
/// config whose other objects are those of `config` (a valid one) but its
/// service of the same name: `None` if it has a problem there (then judge
/// the whole config, for the problems at their lines). The services of a
/// valid config collide with nothing, so this one's collisions with them
/// are the only ones a whole judgment could find.
pub(super) fn lone_service(raw: &Spanned<RawService>, config: &Config) -> Option<Service> {
    let name = raw.get_ref().name.get_ref().as_str();
    let nodes = Nodes {
        names: config.nodes.iter().map(|n| n.name.as_str()).collect(),
        addresses: config
            .nodes
            .iter()
            .map(|n| (n.address.to_canonical(), (n.name.as_str(), 0)))
            .collect(),
    };
    let others: Vec<&Service> = config
        .services
        .iter()
        .filter(|s| s.name.as_str() != name)
        .collect();
    let instances = others.iter().map(|s| s.nodes.len()).sum();
    let mut taken = Taken {
        names: sized(others.len()),
        ports: sized(instances),
        cgroups: HashMap::default(),
        vips: sized(others.len()),
    };
    for other in others {
        let service = other.name.as_str();
        taken.names.insert(service, 0);
        for node in &other.nodes {
            taken
                .ports
                .insert((node.as_str(), other.port), (service, 0));
        }
        if let Some(cgroup) = &other.cgroup {
            taken.cgroups.insert(cgroup.clone(), (service, 0));
        }
        let vip = Vip {
            service,
            address: other.vip,
            explicit: true,
            span: 0..0,
            line: 0,
        };
        taken.vips.insert(other.vip.to_canonical(), vip);
    }
    let mut checker = Checker::alone();
    let service = checker.service(raw, &nodes, &mut taken)?;
    checker.problems.is_empty().then_some(service)
}

struct Checker<'a> {
    source: Source<'a>,
    problems: Vec<Problem>,
    /// Byte offset of each line's first byte, for [`Checker::line`]:
    /// counting newlines from the start for each item would make a catalog
    /// of thousands of items quadratic.
    line_starts: Vec<usize>,
    /// The offset of the object being checked ([`At`]): spans are
    /// relative to it.
    at: usize,
}

impl Checker<'_> {
    /// A checker of one object alone, with no text: only whether it finds
    /// problems counts.
    fn alone() -> Self {
        Checker {
            source: Source {
                path: Path::new(""),
                text: "",
            },
            problems: Vec::new(),
            line_starts: vec![0],
            at: 0,
        }
    }

    /// A problem at `span` of the object being checked.
    fn report(&mut self, span: Range<usize>, message: impl Into<String>) {
        let span = span.start + self.at..span.end + self.at;
        self.problems.push(self.source.problem(span, message));
    }

    /// 1-based line of `item` of the object being checked (as
    /// `Source::line`).
    fn line<T>(&self, item: &Spanned<T>) -> usize {
        self.line_of(item.span().start)
    }

    /// 1-based line of byte `offset` of the object being checked.
    fn line_of(&self, offset: usize) -> usize {
        let offset = offset + self.at;
        self.line_starts.partition_point(|&start| start <= offset)
    }

    /// Runs `check` on a spanned value; reports its error at the value.
    fn check<T, U>(
        &mut self,
        value: &Spanned<T>,
        check: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        match check(value.get_ref()) {
            Ok(checked) => Some(checked),
            Err(message) => {
                self.report(value.span(), message);
                None
            }
        }
    }

    /// The `[mesh]` table, with defaults for what is missing. Fields that
    /// have problems get their default (the config is rejected anyway).
    fn mesh(&mut self, raw: &RawMesh) -> Mesh {
        let trust_domain = match &raw.trust_domain {
            Some(domain) => {
                self.check(domain, |d| values::trust_domain(d));
                domain.get_ref().clone()
            }
            None => DEFAULT_TRUST_DOMAIN.to_owned(),
        };
        let default_policy = raw
            .default_policy
            .as_ref()
            .and_then(|p| self.check(p, |p| values::action("default_policy", p)))
            .unwrap_or(Action::Deny);
        let ca_dir = match &raw.ca_dir {
            Some(dir) if dir.get_ref().is_empty() => {
                self.report(
                    dir.span(),
                    "ca_dir must not be empty: expected a directory path",
                );
                DEFAULT_CA_DIR
            }
            Some(dir) => dir.get_ref().as_str(),
            None => DEFAULT_CA_DIR,
        };
        // `join` keeps an absolute `ca_dir` as is.
        let ca_dir = self
            .source
            .path
            .parent()
            .unwrap_or(Path::new(""))
            .join(ca_dir);
        let leaf_ttl = raw
            .leaf_ttl
            .as_ref()
            .and_then(|t| self.check(t, |t| values::leaf_ttl(t)))
            .unwrap_or(DEFAULT_LEAF_TTL);
        Mesh {
            trust_domain,
            default_policy,
            ca_dir,
            leaf_ttl,
        }
    }

    /// The `[[node]]` entries that are valid; problems for the others.
    fn nodes(&mut self, raw: &[At<'_, Spanned<RawNode>>]) -> Vec<Node> {
        let mut nodes = Vec::new();
        let mut names: HashMap<&str, usize> = sized(raw.len());
        let mut addresses: HashMap<IpAddr, (&str, usize)> = sized(raw.len());
        for &(at, entry) in raw {
            self.at = at;
            let node = entry.get_ref();
            let name = node.name.get_ref().as_str();
            let typed = self.check(&node.name, |n| values::node_name(n));
            let name_unique = self.unique(&mut names, name, &node.name, || {
                format!("duplicate node name {name:?}")
            });
            let address = self.check(&node.address, |a| values::address("node address", a));
            if let Some(address) = address {
                let line = self.line(&node.address);
                if let Some(&(first, first_line)) = addresses.get(&address.to_canonical()) {
                    self.report(
                        node.address.span(),
                        format!(
                            "node {name:?} has the same address {address} as node {first:?} \
                             (line {first_line}): expected a distinct address per node"
                        ),
                    );
                } else {
                    addresses.insert(address.to_canonical(), (name, line));
                }
            }
            if let (Some(name), true, Some(address)) = (typed, name_unique, address) {
                nodes.push(Node { name, address });
            }
        }
        nodes
    }

    /// The `[[service]]` entries that are valid; problems for the others.
    fn services<'r>(
        &mut self,
        raw: &[At<'r, Spanned<RawService>>],
        raw_nodes: &[At<'r, Spanned<RawNode>>],
    ) -> Vec<Service> {
        let node_names: HashSet<&str> = raw_nodes
            .iter()
            .map(|(_, n)| n.get_ref().name.get_ref().as_str())
            .collect();
        // Node addresses that are valid, to keep VIPs off them.
        let mut node_addresses: HashMap<IpAddr, (&str, usize)> = sized(raw_nodes.len());
        for &(at, n) in raw_nodes {
            let n = n.get_ref();
            if let Ok(address) = n.address.get_ref().parse::<IpAddr>() {
                self.at = at;
                let line = self.line(&n.address);
                node_addresses.insert(address.to_canonical(), (n.name.get_ref().as_str(), line));
            }
        }
        let nodes = Nodes {
            names: node_names,
            addresses: node_addresses,
        };
        let mut taken = Taken {
            names: sized(raw.len()),
            ports: sized(raw.len()),
            cgroups: HashMap::default(),
            vips: sized(raw.len()),
        };
        let mut services = Vec::new();
        for &(at, entry) in raw {
            self.at = at;
            services.extend(self.service(entry, &nodes, &mut taken));
        }
        services
    }

    /// One `[[service]]` entry, if valid (and unique among those before
    /// it, recorded in `taken`); else problems.
    fn service<'r>(
        &mut self,
        entry: &'r Spanned<RawService>,
        nodes: &Nodes<'r>,
        taken: &mut Taken<'r>,
    ) -> Option<Service> {
        let service = entry.get_ref();
        let name = service.name.get_ref().as_str();
        let typed = self.check(&service.name, |n| values::service_name(n));
        let name_unique = self.unique(&mut taken.names, name, &service.name, || {
            format!("duplicate service name {name:?}")
        });
        let (hosting, hosting_ok) = self.hosting(entry, &nodes.names);
        let port = self.check(&service.port, values::port);
        if let Some(port) = port {
            self.port_unique(service, name, port, &hosting, &mut taken.ports);
        }
        let vip = self.vip(entry, name, name_unique);
        let vip_ok = vip
            .as_ref()
            .is_some_and(|vip| self.vip_unique(vip.clone(), &nodes.addresses, &mut taken.vips));
        let cgroup = self.service_cgroup(service, name, &mut taken.cgroups);
        let lb = match &service.lb {
            None => Some(Balance::default()),
            Some(lb) => self.check(lb, |l| values::balance(l)),
        };
        let checks = self.checks(service, port);
        if !(name_unique && vip_ok && hosting_ok) {
            return None;
        }
        // A node name that is not valid was reported at its [[node]].
        let nodes = hosting
            .into_iter()
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        Some(Service {
            name: typed?,
            nodes,
            port: port?,
            vip: vip?.address,
            public: service.public,
            cgroup: cgroup?,
            lb: lb?,
            checks: checks?,
        })
    }

    /// Reports `port` if another service took it on one of the `hosting`
    /// nodes; else records it.
    fn port_unique<'r>(
        &mut self,
        service: &'r RawService,
        name: &'r str,
        port: u16,
        hosting: &[&'r str],
        ports: &mut HashMap<(&'r str, u16), (&'r str, usize)>,
    ) {
        let line = self.line(&service.port);
        for &node in hosting {
            if let Some(&(first, first_line)) = ports.get(&(node, port)) {
                self.report(
                    service.port.span(),
                    format!(
                        "port {port} on node {node:?} is already used by service \
                         {first:?} (line {first_line}): expected a distinct port per node"
                    ),
                );
            } else {
                ports.insert((node, port), (name, line));
            }
        }
    }

    /// The service's VIP: as written, or the default of its name (none for
    /// a duplicate name: it has the same default, no second problem).
    fn vip<'r>(
        &mut self,
        entry: &'r Spanned<RawService>,
        name: &'r str,
        name_unique: bool,
    ) -> Option<Vip<'r>> {
        match &entry.get_ref().vip {
            Some(vip) => self
                .check(vip, |v| values::address("vip", v))
                .map(|address| Vip {
                    service: name,
                    address,
                    explicit: true,
                    span: vip.span(),
                    line: self.line(vip),
                }),
            None if !name_unique => None,
            None => Some(Vip {
                service: name,
                address: IpAddr::V4(default_vip(name)),
                explicit: false,
                span: entry.span(),
                line: self.line(entry),
            }),
        }
    }

    /// The service's cgroup: `Some(None)` for the default, `None` when
    /// invalid or another service's (one cgroup is one identity).
    fn service_cgroup<'r>(
        &mut self,
        service: &'r RawService,
        name: &'r str,
        cgroups: &mut HashMap<PathBuf, (&'r str, usize)>,
    ) -> Option<Option<PathBuf>> {
        let Some(cgroup) = &service.cgroup else {
            return Some(None);
        };
        let path = self.check(cgroup, |c| values::cgroup(c))?;
        if let Some(&(first, first_line)) = cgroups.get(&path) {
            self.report(
                cgroup.span(),
                format!(
                    "cgroup {:?} is already the cgroup of service {first:?} \
                     (line {first_line}): expected one cgroup per service",
                    path.display()
                ),
            );
            return None;
        }
        cgroups.insert(path.clone(), (name, self.line(cgroup)));
        Some(Some(path))
    }

    /// The nodes hosting an instance of a service, from exactly one of
    /// `node` and `nodes`: the declared ones, each once, in file order; and
    /// whether the list is valid (exactly one of the two keys, at least one
    /// node, each declared, none twice), else problems were reported.
    fn hosting<'r>(
        &mut self,
        entry: &'r Spanned<RawService>,
        node_names: &HashSet<&str>,
    ) -> (Vec<&'r str>, bool) {
        let service = entry.get_ref();
        let name = service.name.get_ref();
        let listed: Vec<&Spanned<String>> = match (&service.node, &service.nodes) {
            (Some(node), None) => vec![node],
            (None, Some(nodes)) if nodes.get_ref().is_empty() => {
                self.report(
                    nodes.span(),
                    format!(
                        "service {name:?} has an empty `nodes`: expected at least one node name"
                    ),
                );
                return (Vec::new(), false);
            }
            (None, Some(nodes)) => nodes.get_ref().iter().collect(),
            (Some(_), Some(nodes)) => {
                self.report(
                    nodes.span(),
                    format!(
                        "service {name:?} has both `node` and `nodes`: expected one of them \
                         (`node = \"b\"` is `nodes = [\"b\"]`)"
                    ),
                );
                return (Vec::new(), false);
            }
            (None, None) => {
                self.report(
                    entry.span(),
                    format!(
                        "service {name:?} has neither `node` nor `nodes`: expected the node \
                         it runs on (`node = \"b\"`) or its instances' (`nodes = [\"b\", \"c\"]`)"
                    ),
                );
                return (Vec::new(), false);
            }
        };
        let mut ok = true;
        let mut hosting = Vec::new();
        let mut seen: HashSet<&str> = HashSet::default();
        for &node in &listed {
            let node_name = node.get_ref().as_str();
            if !node_names.contains(node_name) {
                self.report(
                    node.span(),
                    format!(
                        "service {name:?} is on unknown node {node_name:?}: \
                         expected the name of a [[node]]"
                    ),
                );
                ok = false;
            } else if !seen.insert(node_name) {
                self.report(
                    node.span(),
                    format!(
                        "node {node_name:?} is listed twice in the `nodes` of service {name:?}: \
                         expected one instance per node"
                    ),
                );
                ok = false;
            } else {
                hosting.push(node_name);
            }
        }
        (hosting, ok)
    }

    /// Records `vip` unless it is a node's address or another service's VIP;
    /// reports the collision otherwise. A default VIP collision asks for an
    /// explicit `vip`.
    fn vip_unique<'a>(
        &mut self,
        vip: Vip<'a>,
        node_addresses: &HashMap<IpAddr, (&str, usize)>,
        vips: &mut HashMap<IpAddr, Vip<'a>>,
    ) -> bool {
        let key = vip.address.to_canonical();
        let (service, address) = (vip.service, vip.address);
        let message = if let Some(&(node, line)) = node_addresses.get(&key) {
            if vip.explicit {
                format!(
                    "vip {address} of service {service:?} is the address of node {node:?} \
                     (line {line}): expected an address no node uses"
                )
            } else {
                format!(
                    "default vip {address} of service {service:?} is the address of node \
                     {node:?} (line {line}): set `vip` explicitly"
                )
            }
        } else if let Some(first) = vips.get(&key) {
            let (other, line) = (first.service, first.line);
            match (vip.explicit, first.explicit) {
                (true, true) => format!(
                    "vip {address} of service {service:?} is already used by service {other:?} \
                     (line {line}): expected a distinct vip per service"
                ),
                (true, false) => format!(
                    "vip {address} of service {service:?} is the default vip of service \
                     {other:?} (line {line}): set `vip` explicitly on one of them"
                ),
                (false, _) => format!(
                    "default vip {address} of service {service:?} is already used by service \
                     {other:?} (line {line}): set `vip` explicitly"
                ),
            }
        } else {
            vips.insert(key, vip);
            return true;
        };
        self.report(vip.span, message);
        false
    }

    /// The `[[intention]]` entries that are valid; problems for the others.
    fn intentions(
        &mut self,
        raw: &[At<'_, Spanned<RawIntention>>],
        raw_services: &[At<'_, Spanned<RawService>>],
    ) -> Vec<Intention> {
        let service_names: HashSet<&str> = raw_services
            .iter()
            .map(|(_, s)| s.get_ref().name.get_ref().as_str())
            .collect();
        let mut intentions = Vec::new();
        let mut pairs: HashMap<(&str, &str), usize> = sized(raw.len());
        for &(at, entry) in raw {
            self.at = at;
            let intention = entry.get_ref();
            let line = self.line(entry);
            let checked = self.intention(intention, &|s| service_names.contains(s));

            let pair = (
                intention.source.get_ref().as_str(),
                intention.destination.get_ref().as_str(),
            );
            if let Some(first_line) = pairs.get(&pair) {
                self.report(
                    entry.span(),
                    format!(
                        "duplicate intention from {:?} to {:?}: already declared on line \
                         {first_line}; expected one intention per source and destination",
                        pair.0, pair.1
                    ),
                );
                continue;
            }
            pairs.insert(pair, line);

            if let Some((source, destination, action)) = checked {
                intentions.push(Intention {
                    source,
                    destination,
                    action,
                    line,
                });
            }
        }
        intentions
    }

    /// One `[[intention]]`'s source, destination and action if they are
    /// valid (`is_service`: whether a name is a declared service's); else
    /// problems. Pairs are [`Checker::intentions`]' business.
    fn intention(
        &mut self,
        intention: &RawIntention,
        is_service: &impl Fn(&str) -> bool,
    ) -> Option<(Match, Match, Action)> {
        let source = self
            .check(&intention.source, |s| {
                service_match("source", s, is_service)
            })
            .flatten();
        let destination = self
            .check(&intention.destination, |d| {
                service_match("destination", d, is_service)
            })
            .flatten();
        let action = self.check(&intention.action, |a| values::action("action", a));
        Some((source?, destination?, action?))
    }

    /// The `[[revoked]]` entries that are valid; problems for the others.
    /// Their node need not be declared: a node removed from the catalog
    /// stays revoked.
    fn revoked(&mut self, raw: &[At<'_, Spanned<RawRevoked>>]) -> Vec<Revoked> {
        let mut revoked = Vec::new();
        let mut seen: HashMap<(&str, &str), usize> = HashMap::default();
        for &(at, entry) in raw {
            self.at = at;
            let r = entry.get_ref();
            let line = self.line(entry);
            let node = self.check(&r.node, |n| values::node_name(n));
            let node_ca = self.check(&r.node_ca, |c| values::node_ca(c));
            let key = (r.node.get_ref().as_str(), r.node_ca.get_ref().as_str());
            if let Some(first_line) = seen.get(&key) {
                self.report(
                    entry.span(),
                    format!(
                        "duplicate revocation of node {:?}'s CA {}: already on line {first_line}",
                        key.0, key.1
                    ),
                );
                continue;
            }
            seen.insert(key, line);
            if let (Some(node), Some(node_ca)) = (node, node_ca) {
                revoked.push(Revoked {
                    node,
                    node_ca,
                    readmitted: r.readmitted.as_ref().is_some_and(|b| *b.get_ref()),
                    line,
                });
            }
        }
        revoked
    }

    /// Records `name` as seen at `at`, or reports a duplicate there,
    /// mentioning the first's line. Returns whether it was the first.
    fn unique<'n>(
        &mut self,
        seen: &mut HashMap<&'n str, usize>,
        name: &'n str,
        at: &Spanned<String>,
        what: impl FnOnce() -> String,
    ) -> bool {
        if let Some(first_line) = seen.get(name) {
            let message = format!(
                "{}: already declared on line {first_line}; expected unique names",
                what()
            );
            self.report(at.span(), message);
            return false;
        }
        seen.insert(name, self.line(at));
        true
    }
}

/// The declared nodes, as the services' checks see them.
struct Nodes<'r> {
    names: HashSet<&'r str>,
    /// Valid node addresses (canonical), to keep VIPs off them.
    addresses: HashMap<IpAddr, (&'r str, usize)>,
}

/// What the services checked so far took, by the first to take it (its
/// name and line): names, (node, port) pairs, cgroups and VIPs.
struct Taken<'r> {
    names: HashMap<&'r str, usize>,
    ports: HashMap<(&'r str, u16), (&'r str, usize)>,
    cgroups: HashMap<PathBuf, (&'r str, usize)>,
    vips: HashMap<IpAddr, Vip<'r>>,
}

/// A service's VIP and where it comes from, for collision messages.
#[derive(Clone)]
struct Vip<'a> {
    service: &'a str,
    address: IpAddr,
    /// Written as `vip = ...`; otherwise [`default_vip`].
    explicit: bool,
    /// The `vip` value if explicit, else the `[[service]]` entry.
    span: Range<usize>,
    line: usize,
}

/// An intention's source or destination: "*" or a declared service's name;
/// `None` for a declared name that is not valid (reported at its service).
fn service_match(
    what: &str,
    text: &str,
    is_service: &impl Fn(&str) -> bool,
) -> Result<Option<Match>, String> {
    if text == "*" {
        Ok(Some(Match::Any))
    } else if is_service(text) {
        Ok(text.parse().ok().map(Match::Name))
    } else {
        Err(format!(
            "unknown service {text:?} in intention {what}: \
             expected \"*\" or the name of a [[service]]"
        ))
    }
}
