//! Traffic per (source, destination) pair, for the web UI's topology:
//! connections opened and bytes carried, counted by the caller's agent
//! (the outbound side, so a call between two nodes counts once), and
//! connections refused, counted by whichever agent refused them (the
//! caller's kernel or agent, or the destination's agent). Each over the
//! last [`WINDOW_SECS`] and since the agent started, and connections open
//! now. Other agents' edges arrive over the health links
//! (`peers::News`); [`merge`] adds them up.

use std::{collections::BTreeMap, sync::Mutex, time::Instant};

use serde::{Deserialize, Serialize};

/// The window of [`Edge::minute`].
pub const WINDOW_SECS: u64 = 60;

/// What crossed one edge in some span of time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Connections opened (allowed).
    pub connections: u64,
    /// Bytes both ways of the connections that closed.
    pub bytes: u64,
    /// Connections refused by the intentions.
    pub denied: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.connections += other.connections;
        self.bytes += other.bytes;
        self.denied += other.denied;
    }
}

/// One caller -> callee pair and its traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub source: String,
    pub destination: String,
    /// The last [`WINDOW_SECS`].
    pub minute: Counts,
    /// Since the counting agent started.
    pub total: Counts,
    /// Connections open now.
    pub active: u64,
}

/// One pair's counts: totals, and one bucket per second of the window
/// (the second it holds, and its counts), reused round-robin.
struct Pair {
    total: Counts,
    active: u64,
    buckets: [(u64, Counts); WINDOW_SECS as usize],
}

impl Default for Pair {
    fn default() -> Self {
        Self {
            total: Counts::default(),
            active: 0,
            buckets: [(u64::MAX, Counts::default()); WINDOW_SECS as usize],
        }
    }
}

impl Pair {
    fn add(&mut self, second: u64, counts: Counts) {
        self.total.add(&counts);
        let bucket = &mut self.buckets[(second % WINDOW_SECS) as usize];
        if bucket.0 != second {
            *bucket = (second, Counts::default());
        }
        bucket.1.add(&counts);
    }

    fn minute(&self, second: u64) -> Counts {
        let mut sum = Counts::default();
        for (at, counts) in &self.buckets {
            if *at <= second && second - at < WINDOW_SECS {
                sum.add(counts);
            }
        }
        sum
    }
}

/// This agent's traffic per pair.
pub struct Traffic {
    started: Instant,
    pairs: Mutex<BTreeMap<(String, String), Pair>>,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            pairs: Mutex::default(),
        }
    }
}

impl Traffic {
    /// A connection `src -> dst` opened (on the caller's side).
    pub fn opened(&self, src: &str, dst: &str) {
        self.add(src, dst, |p, s| {
            p.active += 1;
            p.add(
                s,
                Counts {
                    connections: 1,
                    ..Counts::default()
                },
            );
        });
    }

    /// A connection `src -> dst` that [`Traffic::opened`] counted closed,
    /// having carried `bytes` both ways.
    pub fn closed(&self, src: &str, dst: &str, bytes: u64) {
        self.add(src, dst, |p, s| {
            p.active = p.active.saturating_sub(1);
            p.add(
                s,
                Counts {
                    bytes,
                    ..Counts::default()
                },
            );
        });
    }

    /// `n` connections `src -> dst` refused here.
    pub fn denied(&self, src: &str, dst: &str, n: u64) {
        self.add(src, dst, |p, s| {
            p.add(
                s,
                Counts {
                    denied: n,
                    ..Counts::default()
                },
            );
        });
    }

    /// Every pair seen, in order.
    pub fn edges(&self) -> Vec<Edge> {
        self.edges_at(self.second())
    }

    fn edges_at(&self, second: u64) -> Vec<Edge> {
        let pairs = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
        pairs
            .iter()
            .map(|((source, destination), p)| Edge {
                source: source.clone(),
                destination: destination.clone(),
                minute: p.minute(second),
                total: p.total,
                active: p.active,
            })
            .collect()
    }

    fn second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn add(&self, src: &str, dst: &str, f: impl FnOnce(&mut Pair, u64)) {
        self.add_at(self.second(), src, dst, f);
    }

    fn add_at(&self, second: u64, src: &str, dst: &str, f: impl FnOnce(&mut Pair, u64)) {
        let mut pairs = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
        f(
            pairs.entry((src.to_owned(), dst.to_owned())).or_default(),
            second,
        );
    }
}

/// Adds `edges` (one agent's) into `into`, per pair.
pub fn merge(into: &mut BTreeMap<(String, String), Edge>, edges: &[Edge]) {
    for e in edges {
        let sum = into
            .entry((e.source.clone(), e.destination.clone()))
            .or_insert_with(|| Edge {
                source: e.source.clone(),
                destination: e.destination.clone(),
                minute: Counts::default(),
                total: Counts::default(),
                active: 0,
            });
        sum.minute.add(&e.minute);
        sum.total.add(&e.total);
        sum.active += e.active;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minute_forgets_what_is_older_than_the_window() {
        let t = Traffic::default();
        let opened = |s| {
            t.add_at(s, "web", "api", |p, s| {
                p.active += 1;
                p.add(
                    s,
                    Counts {
                        connections: 1,
                        ..Counts::default()
                    },
                )
            })
        };
        opened(0);
        opened(0);
        opened(30);
        t.add_at(59, "web", "api", |p, s| {
            p.add(
                s,
                Counts {
                    denied: 4,
                    ..Counts::default()
                },
            )
        });
        let at = |s| t.edges_at(s)[0].clone();
        assert_eq!(at(59).minute.connections, 3);
        assert_eq!(at(59).minute.denied, 4);
        assert_eq!(at(60).minute.connections, 1, "second 0 has left the window");
        assert_eq!(at(90).minute.connections, 0);
        assert_eq!(at(90).minute.denied, 4);
        assert_eq!(at(119).minute.denied, 0);
        // A bucket reused a minute later starts from zero.
        opened(120);
        assert_eq!(at(120).minute.connections, 1);
        assert_eq!(at(120).total.connections, 4);
        assert_eq!(at(120).active, 4);
    }

    #[test]
    fn opened_closed_and_merged() {
        let t = Traffic::default();
        t.opened("web", "api");
        t.opened("web", "api");
        t.closed("web", "api", 100);
        t.denied("web", "db", 2);
        let edges = t.edges();
        assert_eq!(edges.len(), 2);
        assert_eq!(
            (
                edges[0].minute.connections,
                edges[0].minute.bytes,
                edges[0].active
            ),
            (2, 100, 1)
        );
        assert_eq!(edges[1].total.denied, 2);

        let mut all = BTreeMap::new();
        merge(&mut all, &edges);
        merge(&mut all, &edges);
        let api = &all[&("web".to_owned(), "api".to_owned())];
        assert_eq!((api.total.connections, api.active), (4, 2));
    }
}
