//! A service's `[[service.check]]` tables: each check's kind, values and
//! defaults, and names unique within the service.

use std::time::Duration;

use toml::Spanned;

use super::{Checker, HashMap};
use crate::config::raw::{RawCheck, RawService};
use crate::config::{Check, CheckKind, values};

/// Default `interval` of an http or tcp check (Consul's).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Consul's default `timeout`; a shorter `interval` is the default instead.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The keys that give a check its kind, in the order messages name them.
const KINDS: [&str; 3] = ["http", "tcp", "ttl"];

impl Checker<'_> {
    /// The checks of `service`, in file order, if every one is valid and
    /// their names are unique; `None` once problems were reported. `port`
    /// is the service's port if valid (for messages).
    pub(super) fn checks(&mut self, service: &RawService, port: Option<u16>) -> Option<Vec<Check>> {
        let service_name = service.name.get_ref().as_str();
        let mut checks = Vec::new();
        let mut ok = true;
        // Each name seen, with the line it was declared or defaulted on.
        let mut names: HashMap<String, usize> = HashMap::default();
        for entry in &service.check {
            let check = self.one_check(entry, service_name, port);
            let unique = self.check_name_unique(entry, service_name, &mut names);
            match check {
                Some(check) if unique => checks.push(check),
                _ => ok = false,
            }
        }
        ok.then_some(checks)
    }

    /// One check with its defaults, or `None` once its problems were
    /// reported (names are [`Checker::check_name_unique`]'s business).
    fn one_check(
        &mut self,
        entry: &Spanned<RawCheck>,
        service: &str,
        port: Option<u16>,
    ) -> Option<Check> {
        let raw = entry.get_ref();
        let name_ok = match &raw.name {
            Some(name) => self.check(name, |n| values::check_name(n)).is_some(),
            None => true,
        };

        let kind = self.kind(entry, service, port);
        let is_ttl = matches!(given_kinds(raw).as_slice(), [(k, _)] if *k == "ttl");
        // A ttl check has no runs of its own to space or bound.
        let mut ttl_ok = true;
        for (key, value) in [("interval", &raw.interval), ("timeout", &raw.timeout)] {
            if let (true, Some(value)) = (is_ttl, value) {
                self.report(
                    value.span(),
                    format!(
                        "{key} does not apply to a ttl check: it is driven by \
                         `mesh-agent check pass|warn|fail --service {service}` within its ttl; \
                         remove {key}"
                    ),
                );
                ttl_ok = false;
            }
        }
        let interval = match &raw.interval {
            Some(interval) if !is_ttl => self.check(interval, |i| values::check_interval(i)),
            _ => Some(DEFAULT_INTERVAL),
        };
        let timeout = match (&raw.timeout, interval) {
            (Some(timeout), _) if !is_ttl => self.check(timeout, |t| values::check_timeout(t)),
            (_, Some(interval)) => Some(DEFAULT_TIMEOUT.min(interval)),
            (_, None) => None,
        };
        let count = |checker: &mut Self, key: &str, value: &Option<Spanned<toml::Value>>| {
            value.as_ref().map_or(Some(0), |v| {
                checker.check(v, |v| values::check_count(key, v))
            })
        };
        let success_before_passing =
            count(self, "success_before_passing", &raw.success_before_passing);
        let failures_before_critical = count(
            self,
            "failures_before_critical",
            &raw.failures_before_critical,
        );

        let (true, true, Some(kind), Some(interval), Some(timeout), Some(s), Some(f)) = (
            name_ok,
            ttl_ok,
            kind,
            interval,
            timeout,
            success_before_passing,
            failures_before_critical,
        ) else {
            return None;
        };
        let name = match &raw.name {
            Some(name) => name.get_ref().clone(),
            None => default_name(&kind),
        };
        Some(Check {
            name,
            kind,
            interval,
            timeout,
            success_before_passing: s,
            failures_before_critical: f,
        })
    }

    /// The kind given by exactly one of `http`, `tcp = true` and `ttl`, or
    /// `None` once the problem was reported.
    fn kind(
        &mut self,
        entry: &Spanned<RawCheck>,
        service: &str,
        port: Option<u16>,
    ) -> Option<CheckKind> {
        let raw = entry.get_ref();
        match given_kinds(raw).as_slice() {
            [] => {
                self.report(
                    entry.span(),
                    format!(
                        "a check of service {service:?} has no kind: expected exactly one of \
                         http, tcp or ttl (e.g. http = \"/health\")"
                    ),
                );
                None
            }
            [_] => match (&raw.http, &raw.tcp, &raw.ttl) {
                (Some(path), _, _) => self
                    .check(path, |p| values::http_path(p, port))
                    .map(|path| CheckKind::Http { path }),
                (_, Some(tcp), _) if !tcp.get_ref() => {
                    self.report(
                        tcp.span(),
                        "tcp = false checks nothing: set tcp = true for a tcp check, \
                         or remove the check",
                    );
                    None
                }
                (_, Some(_), _) => Some(CheckKind::Tcp),
                (_, _, Some(ttl)) => self
                    .check(ttl, |t| values::check_ttl(t))
                    .map(CheckKind::Ttl),
                (None, None, None) => None,
            },
            several => {
                let mut keys: Vec<&str> = several.iter().map(|(k, _)| *k).collect();
                let listed = match keys.as_mut_slice() {
                    [a, b] => format!("both {a} and {b}"),
                    _ => {
                        let last = keys.pop().unwrap_or_default();
                        format!("{} and {last}", keys.join(", "))
                    }
                };
                // At the second kind in the file: the first one is fine alone.
                let mut starts: Vec<_> = several.iter().map(|(_, span)| span.clone()).collect();
                starts.sort_by_key(|span| span.start);
                let at = starts.get(1).cloned().unwrap_or_else(|| entry.span());
                self.report(
                    at,
                    format!(
                        "a check of service {service:?} has {listed}: expected exactly one of \
                         http, tcp or ttl (one [[service.check]] each)"
                    ),
                );
                None
            }
        }
    }

    /// Records the check's name (as written, or its kind's default), or
    /// reports a duplicate within the service. Returns whether it was the
    /// first; a check whose kind is unclear has no default name and passes.
    fn check_name_unique(
        &mut self,
        entry: &Spanned<RawCheck>,
        service: &str,
        names: &mut HashMap<String, usize>,
    ) -> bool {
        let raw = entry.get_ref();
        let (name, span, explicit) = match &raw.name {
            Some(name) => (name.get_ref().clone(), name.span(), true),
            None => match raw_default_name(raw) {
                Some(name) => (name, entry.span(), false),
                None => return true,
            },
        };
        if let Some(first_line) = names.get(&name) {
            let message = if explicit {
                format!(
                    "duplicate check name {name:?} in service {service:?}: already declared \
                     on line {first_line}; expected unique names"
                )
            } else {
                format!(
                    "duplicate check name {name:?} in service {service:?}: it is the default \
                     name of this check and is already used on line {first_line}; \
                     set `name` to tell them apart"
                )
            };
            self.report(span, message);
            return false;
        }
        let line = self.line_of(span.start);
        names.insert(name, line);
        true
    }
}

/// The kind keys present in `raw`, in [`KINDS`] order, with their spans.
fn given_kinds(raw: &RawCheck) -> Vec<(&'static str, std::ops::Range<usize>)> {
    let spans = [
        raw.http.as_ref().map(Spanned::span),
        raw.tcp.as_ref().map(Spanned::span),
        raw.ttl.as_ref().map(Spanned::span),
    ];
    KINDS
        .into_iter()
        .zip(spans)
        .filter_map(|(kind, span)| Some((kind, span?)))
        .collect()
}

/// The name of an unnamed check: `"http <path>"`, `"tcp"` or `"ttl"`.
fn default_name(kind: &CheckKind) -> String {
    match kind {
        CheckKind::Http { path } => format!("http {path}"),
        CheckKind::Tcp => "tcp".to_owned(),
        CheckKind::Ttl(_) => "ttl".to_owned(),
    }
}

/// [`default_name`] of a raw check whose kind is one key, valid or not.
fn raw_default_name(raw: &RawCheck) -> Option<String> {
    match given_kinds(raw).as_slice() {
        [_] => match (&raw.http, &raw.tcp) {
            (Some(path), _) => Some(format!("http {}", path.get_ref())),
            (_, Some(_)) => Some("tcp".to_owned()),
            _ => Some("ttl".to_owned()),
        },
        _ => None,
    }
}
