//! Intentions: may service S call service D?
//!
//! Consul's semantics as this mesh fixes them: an intention matches when its
//! source and destination each equal the service or are `*`. Among the
//! matches the most specific wins: exact/exact (3) beats exact/`*` and
//! `*`/exact (2), which beat `*`/`*` (1). At equal precedence, deny wins. With
//! no match, `default_policy` decides. (Consul itself ranks `*`/exact above
//! exact/`*`; here they tie and deny breaks the tie.)

use std::fmt;

use crate::config::{Action, Config, Intention, Match};
use crate::names::ServiceName;

/// A verdict and what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub rule: Rule,
}

/// What decided a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// An `[[intention]]` of the config.
    Intention {
        source: Match,
        destination: Match,
        line: usize,
    },
    /// No intention matched.
    DefaultPolicy,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.action == Action::Allow
    }
}

/// The intentions and default policy of a config, ready to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    intentions: Vec<Intention>,
    default: Action,
    /// Where `decide` looks, so that a verdict costs a few lookups however
    /// many intentions there are (the data path asks once per connection;
    /// the kernel maps ask for every local caller and destination).
    index: Index,
}

/// The intentions by what they match; each slot holds the one that wins
/// among those it would hold (deny, then the last in file order).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Index {
    /// `source -> destination`, by source then destination.
    exact: HashMap<ServiceName, HashMap<ServiceName, usize>>,
    /// `source -> *`, by source.
    from: HashMap<ServiceName, usize>,
    /// `* -> destination`, by destination.
    to: HashMap<ServiceName, usize>,
    /// `* -> *`.
    any: Option<usize>,
}

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0:?} is not a service")]
    UnknownService(String),
}

/// `mesh-agent explain` and the web UI's explain box: the verdict for
/// `source -> destination` under `config` and the rule that decides it, as
/// one line ("deny: web -> api by web -> api (line 12)").
pub fn explain(config: &Config, source: &str, destination: &str) -> Result<String, PolicyError> {
    for service in [source, destination] {
        if config.service(service).is_none() {
            return Err(PolicyError::UnknownService(service.to_owned()));
        }
    }
    let policy = Policy::new(config);
    let decision = policy.decide(source, destination);
    Ok(format!(
        "{}: {source} -> {destination} by {}",
        decision.action,
        policy.rule_text(&decision.rule)
    ))
}

impl Policy {
    pub fn new(config: &Config) -> Self {
        Self::of(config.intentions.clone(), config.mesh.default_policy)
    }

    /// `intentions` (in file order) over `default`.
    fn of(intentions: Vec<Intention>, default: Action) -> Self {
        let mut index = Index::default();
        for (at, i) in intentions.iter().enumerate() {
            let slot = match (&i.source, &i.destination) {
                (Match::Name(s), Match::Name(d)) => index
                    .exact
                    .entry(s.clone())
                    .or_default()
                    .entry(d.clone())
                    .or_insert(at),
                (Match::Name(s), Match::Any) => index.from.entry(s.clone()).or_insert(at),
                (Match::Any, Match::Name(d)) => index.to.entry(d.clone()).or_insert(at),
                (Match::Any, Match::Any) => index.any.get_or_insert(at),
            };
            *slot = winner(&intentions, *slot, at);
        }
        Self {
            intentions,
            default,
            index,
        }
    }

    /// `rule` as `explain` names it: an intention with its line, or the
    /// default policy with its action.
    pub fn rule_text(&self, rule: &Rule) -> String {
        match rule {
            Rule::DefaultPolicy => format!("default policy ({})", self.default),
            rule => rule.to_string(),
        }
    }

    /// The intentions from the one that wins over every other (the most
    /// specific; deny before allow when equal) to the least, each with its
    /// precedence: 4 for two names, 3 for a name and `*`, 2 for `*` to `*`.
    pub fn in_precedence(&self) -> Vec<(IntentionDescription, u8)> {
        let mut all: Vec<(IntentionDescription, u8)> = self
            .describe()
            .intentions
            .into_iter()
            .zip(&self.intentions)
            .map(|(d, i)| (d, rank(&i.source) + rank(&i.destination)))
            .collect();
        all.sort_by_key(|(d, precedence)| {
            (
                std::cmp::Reverse(*precedence),
                d.action != Action::Deny,
                d.line,
            )
        });
        all
    }

    /// What the kernel needs to decide as [`Policy::decide`] does for the
    /// callers `local` accepts (`mesh_common::rules_deny`): the winner of
    /// each `source -> destination` and `source -> *` of those callers and
    /// of every `* -> destination`; and for (`*`, `*`) the `* -> *`
    /// intention's action, or else the default. `None` stands for `*`.
    pub fn kernel_rules(
        &self,
        local: impl Fn(&ServiceName) -> bool,
    ) -> Vec<(Option<&ServiceName>, Option<&ServiceName>, Action)> {
        let action = |at: &usize| self.intentions[*at].action;
        let index = &self.index;
        let mut rules = Vec::new();
        for (src, to) in index.exact.iter().filter(|(src, _)| local(src)) {
            rules.extend(
                to.iter()
                    .map(|(dst, at)| (Some(src), Some(dst), action(at))),
            );
        }
        for (src, at) in index.from.iter().filter(|(src, _)| local(src)) {
            rules.push((Some(src), None, action(at)));
        }
        rules.extend(
            index
                .to
                .iter()
                .map(|(dst, at)| (None, Some(dst), action(at))),
        );
        rules.push((None, None, index.any.as_ref().map_or(self.default, action)));
        rules
    }

    /// The verdict for `source` calling `destination`.
    pub fn decide(&self, source: &str, destination: &str) -> Decision {
        let index = &self.index;
        let exact = index
            .exact
            .get(source)
            .and_then(|to| to.get(destination))
            .copied();
        let half = match (index.from.get(source), index.to.get(destination)) {
            (Some(&a), Some(&b)) => Some(winner(&self.intentions, a, b)),
            (a, b) => a.or(b).copied(),
        };
        self.decision(exact.or(half).or(index.any).map(|at| &self.intentions[at]))
    }

    /// The verdict of the intention that decides (`None`: the default).
    fn decision(&self, best: Option<&Intention>) -> Decision {
        match best {
            Some(i) => Decision {
                action: i.action,
                rule: Rule::Intention {
                    source: i.source.clone(),
                    destination: i.destination.clone(),
                    line: i.line,
                },
            },
            None => Decision {
                action: self.default,
                rule: Rule::DefaultPolicy,
            },
        }
    }
}

impl Policy {
    /// The intentions and the default, for the admin endpoint.
    pub fn describe(&self) -> Description {
        Description {
            default_policy: self.default,
            intentions: self
                .intentions
                .iter()
                .map(|i| IntentionDescription {
                    source: i.source.to_string(),
                    destination: i.destination.to_string(),
                    action: i.action,
                    line: i.line,
                })
                .collect(),
        }
    }
}

/// The intentions in force and the default policy, as `/config` shows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Description {
    pub default_policy: Action,
    /// In file order.
    pub intentions: Vec<IntentionDescription>,
}

/// One intention of a [`Description`]; `*` stands for any service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IntentionDescription {
    pub source: String,
    pub destination: String,
    pub action: Action,
    /// 1-based line of its `[[intention]]` in the file.
    pub line: usize,
}

/// How specific `m` is when it matches: a name over `*`.
fn rank(m: &Match) -> u8 {
    match m {
        Match::Name(_) => 2,
        Match::Any => 1,
    }
}

/// Of two intentions (indexes into `intentions`) of equal precedence, the
/// one that wins: deny over allow, then the later in file order.
fn winner(intentions: &[Intention], a: usize, b: usize) -> usize {
    let key = |at: usize| (intentions[at].action == Action::Deny, at);
    if key(a) >= key(b) { a } else { b }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Any => f.write_str("*"),
            Match::Name(n) => f.write_str(n),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Line 0: not from a file (the catalog in etcd).
            Rule::Intention {
                source,
                destination,
                line: 0,
            } => write!(f, "intention {source} -> {destination}"),
            Rule::Intention {
                source,
                destination,
                line,
            } => write!(f, "intention {source} -> {destination} (line {line})"),
            Rule::DefaultPolicy => f.write_str("default policy"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Action::{Allow, Deny};

    fn m(s: &str) -> Match {
        if s == "*" {
            Match::Any
        } else {
            Match::Name(s.parse().unwrap())
        }
    }

    fn policy(default: Action, rules: &[(&str, &str, Action)]) -> Policy {
        Policy::of(
            rules
                .iter()
                .enumerate()
                .map(|(i, (s, d, a))| Intention {
                    source: m(s),
                    destination: m(d),
                    action: *a,
                    line: i + 1,
                })
                .collect(),
            default,
        )
    }

    /// The rule as stated at the top of this module, over every intention:
    /// the most specific match, deny at equal precedence (the last in file
    /// order among equals), else the default.
    fn decide_by_reading_all(p: &Policy, source: &str, destination: &str) -> Decision {
        let specificity = |m: &Match, name: &str| match m {
            Match::Name(n) if n != name => None,
            m => Some(rank(m)),
        };
        let best = p
            .intentions
            .iter()
            .filter_map(|i| {
                let s = specificity(&i.source, source)?;
                let d = specificity(&i.destination, destination)?;
                Some(((s + d, i.action == Action::Deny), i))
            })
            .max_by_key(|(rank, _)| *rank);
        p.decision(best.map(|(_, i)| i))
    }

    proptest::proptest! {
        /// The index answers as reading every intention does, for random
        /// rule sets (duplicates of a pattern included) and every pair.
        #[test]
        fn the_index_decides_as_reading_every_intention(
            rules in proptest::collection::vec((0u8..4, 0u8..4, proptest::bool::ANY), 0..24),
            default_allow in proptest::bool::ANY,
        ) {
            let name = |k: u8| ["*", "a", "b", "c"][usize::from(k)];
            let rules: Vec<(&str, &str, Action)> = rules
                .iter()
                .map(|&(s, d, allow)| (name(s), name(d), if allow { Allow } else { Deny }))
                .collect();
            let p = policy(if default_allow { Allow } else { Deny }, &rules);
            for src in ["a", "b", "c", "x"] {
                for dst in ["a", "b", "c", "x"] {
                    proptest::prop_assert_eq!(
                        p.decide(src, dst),
                        decide_by_reading_all(&p, src, dst),
                        "{} -> {} under {:?}", src, dst, rules
                    );
                }
            }
        }
    }

    /// The precedence order is the order `decide` applies: for every pair
    /// the intentions match, the first of them in that order decides.
    #[test]
    fn in_precedence_lists_the_winner_first() {
        let p = policy(
            Allow,
            &[
                ("*", "*", Deny),
                ("web", "*", Allow),
                ("*", "api", Deny),
                ("web", "api", Allow),
                ("*", "api", Allow),
            ],
        );
        let order: Vec<(String, String, Action, u8)> = p
            .in_precedence()
            .into_iter()
            .map(|(i, n)| (i.source, i.destination, i.action, n))
            .collect();
        let o = |s: &str, d: &str, a, n| (s.to_owned(), d.to_owned(), a, n);
        assert_eq!(
            order,
            [
                o("web", "api", Allow, 4),
                o("*", "api", Deny, 3),
                o("web", "*", Allow, 3),
                o("*", "api", Allow, 3),
                o("*", "*", Deny, 2),
            ]
        );
        for (src, dst) in [("web", "api"), ("db", "api"), ("web", "db"), ("db", "db")] {
            let first = p
                .in_precedence()
                .into_iter()
                .find(|(i, _)| {
                    (i.source == "*" || i.source == src)
                        && (i.destination == "*" || i.destination == dst)
                })
                .map(|(i, _)| i.line);
            let Rule::Intention { line, .. } = p.decide(src, dst).rule else {
                panic!("no intention decides {src} -> {dst}");
            };
            assert_eq!(first, Some(line), "{src} -> {dst}");
        }
    }

    #[test]
    fn no_match_falls_to_the_default_policy() {
        for default in [Allow, Deny] {
            let p = policy(default, &[("x", "y", Allow)]);
            let d = p.decide("web", "api");
            assert_eq!((d.action, d.rule), (default, Rule::DefaultPolicy));
        }
    }

    /// Every pair of (pattern, action) at two precedence levels: the more
    /// specific one wins whatever the actions and the default.
    #[test]
    fn the_most_specific_match_wins() {
        // (source, destination) patterns that match web -> api, by rank.
        let levels: [&[(&str, &str)]; 3] = [
            &[("*", "*")],
            &[("web", "*"), ("*", "api")],
            &[("web", "api")],
        ];
        for (lo, low) in levels.iter().enumerate() {
            for high in &levels[lo + 1..] {
                for &(ls, ld) in *low {
                    for &(hs, hd) in *high {
                        for (la, ha) in [(Allow, Deny), (Deny, Allow), (Allow, Allow), (Deny, Deny)]
                        {
                            for default in [Allow, Deny] {
                                // Both orders in the file.
                                for rules in [
                                    vec![(ls, ld, la), (hs, hd, ha)],
                                    vec![(hs, hd, ha), (ls, ld, la)],
                                ] {
                                    let d = policy(default, &rules).decide("web", "api");
                                    assert_eq!(d.action, ha, "{rules:?} default {default:?}");
                                    let Rule::Intention {
                                        source,
                                        destination,
                                        ..
                                    } = d.rule
                                    else {
                                        panic!("default decided {rules:?}");
                                    };
                                    assert_eq!((source, destination), (m(hs), m(hd)));
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn deny_wins_at_equal_precedence() {
        for rules in [
            [("web", "*", Allow), ("*", "api", Deny)],
            [("web", "*", Deny), ("*", "api", Allow)],
            [("*", "api", Allow), ("web", "*", Deny)],
        ] {
            let d = policy(Allow, &rules).decide("web", "api");
            assert_eq!(d.action, Deny, "{rules:?}");
        }
    }

    #[test]
    fn non_matching_intentions_are_ignored() {
        let p = policy(
            Deny,
            &[
                ("web", "db", Allow),
                ("cron", "*", Allow),
                ("*", "api", Deny),
            ],
        );
        assert_eq!(p.decide("web", "db").action, Allow);
        assert_eq!(p.decide("web", "api").action, Deny);
        assert_eq!(
            p.decide("cron", "api").action,
            Deny,
            "*/api ties cron/* and denies"
        );
        assert_eq!(p.decide("cron", "db").action, Allow);
        assert_eq!(p.decide("web", "cache").action, Deny, "default");
    }

    #[test]
    fn rules_name_themselves() {
        let p = policy(Deny, &[("web", "*", Allow)]);
        assert_eq!(
            p.decide("web", "api").rule.to_string(),
            "intention web -> * (line 1)"
        );
        assert_eq!(p.decide("x", "api").rule.to_string(), "default policy");
    }
}
