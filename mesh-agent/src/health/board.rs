//! What this agent knows of every instance's health, and the one place it
//! changes: this node's check results ([`Board::record`], [`Board::ttl`]),
//! other agents' reports ([`Board::remote`]) and which agents cannot be
//! reached ([`Board::unreachable`]). Each change that alters the [`View`]
//! publishes a new snapshot (same config, new health); each change of this
//! node's own reports also goes to the agents that follow them (`link`).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

// Tokio's clock, so that tests can pause it.
use tokio::{sync::watch, task::AbortHandle, time::Instant};
use tracing::info;

use super::{
    CheckReport, HealthError, InstanceReport, State, View,
    reports::{LocalReports, Reports},
    runner,
};
use crate::{
    config::{Check, CheckKind, Config},
    names::{NodeName, ServiceName},
    snapshot::Publisher,
};

/// How often a check whose state stays the same but whose output changes
/// (Consul's `check_update_interval`, there 5 min) is published: every
/// publication wakes every live connection and goes to every other agent.
const OUTPUT_REFRESH: Duration = Duration::from_secs(30);

/// See the module docs.
pub struct Board {
    node: NodeName,
    publisher: Arc<Publisher>,
    inner: Mutex<Inner>,
    local: watch::Sender<LocalReports>,
    /// Where local services run, when in containers (the probes go there).
    containers: Arc<crate::containers::Containers>,
}

#[derive(Default)]
struct Inner {
    /// Local service -> its checks, in config order.
    local: BTreeMap<ServiceName, Vec<LocalCheck>>,
    /// Node -> its latest reports (not this node).
    remote: HashMap<NodeName, HashMap<ServiceName, InstanceReport>>,
    unreachable: HashMap<NodeName, String>,
    /// See [`View::registered`].
    registered: Option<std::collections::BTreeSet<String>>,
    /// The task running each local check, by (service, check name).
    tasks: HashMap<(ServiceName, String), Task>,
}

/// One local check and where it stands.
struct LocalCheck {
    check: Check,
    state: State,
    output: String,
    /// Consecutive results that were (not) failures, for Consul's
    /// `success_before_passing` / `failures_before_critical`.
    successes: u32,
    failures: u32,
    /// A ttl check's deadline: critical once it passes without an update.
    expires: Option<Instant>,
    /// When a result of this check was last published.
    output_sent: Option<Instant>,
    /// The state last published and since when it holds (the "last
    /// change" the web UI shows); moved on by `publish`.
    since: (State, SystemTime),
}

/// A running check and what it was started with.
struct Task {
    port: u16,
    check: Check,
    handle: AbortHandle,
}

impl Board {
    /// A board for the agent of `node`, publishing through `publisher`;
    /// checks probe local services in their `containers`, if any.
    pub fn new(
        node: &NodeName,
        publisher: Arc<Publisher>,
        containers: Arc<crate::containers::Containers>,
    ) -> Arc<Self> {
        Arc::new(Self {
            node: node.clone(),
            publisher,
            containers,
            inner: Mutex::default(),
            local: watch::channel(Arc::default()).0,
        })
    }

    /// The node of this board's agent.
    pub fn node(&self) -> &NodeName {
        &self.node
    }

    /// The snapshot in force (config and health).
    pub fn snapshot(&self) -> Arc<crate::snapshot::Snapshot> {
        self.publisher.borrow().clone()
    }

    /// This node's reports, as they change.
    pub fn local_reports(&self) -> watch::Receiver<LocalReports> {
        self.local.subscribe()
    }

    /// Makes the local checks those of `config`: a check that is new or
    /// changed starts over (critical, as in Consul), one that is unchanged
    /// keeps its state; checks of instances that left stop. Reports of
    /// nodes that left are dropped.
    pub fn sync(self: &Arc<Self>, config: &Config) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut local = BTreeMap::new();
        let mut want = HashMap::new();
        for service in config.services_on(&self.node) {
            let old = inner
                .local
                .remove(service.name.as_str())
                .unwrap_or_default();
            let mut checks = Vec::new();
            for check in &service.checks {
                let kept = old.iter().find(|c| c.check == *check);
                checks.push(match kept {
                    Some(c) => LocalCheck {
                        check: check.clone(),
                        state: c.state,
                        output: c.output.clone(),
                        successes: c.successes,
                        failures: c.failures,
                        expires: c.expires,
                        output_sent: c.output_sent,
                        since: c.since,
                    },
                    None => LocalCheck::new(check.clone()),
                });
                want.insert(
                    (service.name.clone(), check.name.clone()),
                    (service.port, check.clone()),
                );
            }
            local.insert(service.name.clone(), checks);
        }
        inner.local = local;
        inner.tasks.retain(|key, task| {
            let keep = want
                .get(key)
                .is_some_and(|(port, check)| *port == task.port && *check == task.check);
            if !keep {
                task.handle.abort();
            }
            keep
        });
        for (key, (port, check)) in want {
            if inner.tasks.contains_key(&key) {
                continue;
            }
            let handle = tokio::spawn(runner::run(
                self.clone(),
                key.0.clone(),
                port,
                check.clone(),
                self.containers.clone(),
            ))
            .abort_handle();
            inner.tasks.insert(
                key,
                Task {
                    port,
                    check,
                    handle,
                },
            );
        }
        inner
            .remote
            .retain(|node, _| config.node(node).is_some() && *node != self.node);
        inner
            .unreachable
            .retain(|node, _| config.node(node).is_some() && *node != self.node);
        self.publish(inner);
    }

    /// What this agent knows that an upgrade hands to the next agent of
    /// the node: its reports on its own instances, and the latest reports
    /// of every other node's agent.
    pub fn handover(&self) -> (Vec<InstanceReport>, Vec<Reports>) {
        let local = self.local.borrow().as_ref().clone();
        let inner = self.lock();
        let remote = inner
            .remote
            .iter()
            .map(|(node, reports)| Reports {
                node: node.to_string(),
                instances: reports.values().cloned().collect(),
                news: None,
            })
            .collect();
        (local, remote)
    }

    /// Takes over what the previous agent of the node knew (handed over
    /// in an upgrade, see [`Board::handover`]), so an upgrade turns no
    /// instance critical: a local check of the same service and name gets
    /// its state and output, its thresholds counted as met, and a ttl
    /// check a whole ttl from now (else each would be critical until it
    /// ran, and passed enough times, again); other nodes' reports stand
    /// until their agents report to this one (else their checked
    /// instances would be critical until then). Call after [`Board::sync`].
    pub fn adopt(&self, local: &[InstanceReport], remote: &[Reports]) {
        let mut inner = self.lock();
        for theirs in remote {
            // Names that do not parse name no instance of any config.
            let Ok(node) = theirs.node.parse::<NodeName>() else {
                continue;
            };
            if node != self.node && !inner.remote.contains_key(&node) {
                let reports = by_service(theirs.instances.iter().cloned());
                inner.remote.insert(node, reports);
            }
        }
        let now = Instant::now();
        let mut adopted = 0;
        for report in local {
            for seen in &report.checks {
                let Some(c) = inner.check_mut(&report.service, &seen.name) else {
                    continue;
                };
                c.state = seen.state;
                c.output.clone_from(&seen.output);
                let since = seen
                    .since
                    .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
                c.since = (seen.state, since.unwrap_or_else(SystemTime::now));
                if seen.state.takes_traffic() {
                    c.successes = c.check.success_before_passing;
                } else {
                    c.failures = c.check.failures_before_critical;
                }
                if let CheckKind::Ttl(ttl) = c.check.kind {
                    c.expires = Some(now + ttl);
                }
                adopted += 1;
            }
        }
        info!(
            checks = adopted,
            nodes = remote.len(),
            "took over the previous agent's check states and view"
        );
        self.publish(&mut inner);
    }

    /// Stops every check.
    pub fn stop(&self) {
        for (_, task) in self.lock().tasks.drain() {
            task.handle.abort();
        }
    }

    /// Records one run of the local check `check` of `service`, with
    /// Consul's thresholds: a success turns the check passing (or warning)
    /// after `success_before_passing` in a row, a failure turns it critical
    /// after `failures_before_critical` in a row; until then it keeps its
    /// state, and its output says what it waits for.
    pub fn record(&self, service: &ServiceName, check: &str, state: State, output: String) {
        let mut inner = self.lock();
        let Some(c) = inner.check_mut(service, check) else {
            return;
        };
        let (count, needed) = if state.takes_traffic() {
            c.failures = 0;
            c.successes = c.successes.saturating_add(1);
            (c.successes, c.check.success_before_passing)
        } else {
            c.successes = 0;
            c.failures = c.failures.saturating_add(1);
            (c.failures, c.check.failures_before_critical)
        };
        let (before, output_before) = (c.state, std::mem::take(&mut c.output));
        if count >= needed {
            c.state = state;
            c.output = output;
        } else {
            let what = if state.takes_traffic() {
                "successes before passing"
            } else {
                "failures before critical"
            };
            c.output = format!("{output} ({count} of {needed} {what})");
        }
        let now = Instant::now();
        if c.state != before {
            info!(%service, %check, from = %before, to = %c.state, output = %c.output, "check changed");
        } else if c.output == output_before
            || c.output_sent.is_some_and(|at| now < at + OUTPUT_REFRESH)
        {
            // Same state: a new output alone (a body with a timestamp)
            // goes out with the next change, or after OUTPUT_REFRESH.
            return;
        }
        c.output_sent = Some(now);
        self.publish(&mut inner);
    }

    /// Sets a local ttl check of `service` (`check` names it when the
    /// service has several) to `state` with `note` as output, until its
    /// ttl passes without another update.
    pub fn ttl(
        &self,
        service: &str,
        check: Option<&str>,
        state: State,
        note: Option<String>,
    ) -> Result<(), HealthError> {
        let mut inner = self.lock();
        let Some(checks) = inner.local.get_mut(service) else {
            return Err(HealthError::NotHere {
                service: service.to_owned(),
                node: self.node.to_string(),
            });
        };
        let mut ttls: Vec<(Duration, &mut LocalCheck)> = checks
            .iter_mut()
            .filter_map(|c| match c.check.kind {
                CheckKind::Ttl(ttl) if check.is_none_or(|name| c.check.name == name) => {
                    Some((ttl, c))
                }
                _ => None,
            })
            .collect();
        let (ttl, c) = match ttls.len() {
            0 => {
                return Err(HealthError::NoTtlCheck {
                    service: service.to_owned(),
                    check: check.map(str::to_owned),
                });
            }
            1 => ttls.remove(0),
            _ => {
                return Err(HealthError::WhichTtlCheck {
                    service: service.to_owned(),
                    checks: ttls.iter().map(|(_, c)| c.check.name.clone()).collect(),
                });
            }
        };
        if c.state != state {
            info!(%service, check = %c.check.name, from = %c.state, to = %state, "ttl check updated");
        }
        c.state = state;
        c.output = note.unwrap_or_default();
        c.expires = Some(Instant::now() + ttl);
        self.publish(&mut inner);
        Ok(())
    }

    /// Turns the local ttl check `check` of `service` critical if its
    /// deadline passed at `now`. Returns when to look again (`None`: the
    /// check is gone).
    pub fn expire(&self, service: &ServiceName, check: &str, now: Instant) -> Option<Instant> {
        let mut inner = self.lock();
        let c = inner.check_mut(service, check)?;
        let CheckKind::Ttl(ttl) = c.check.kind else {
            return None;
        };
        match c.expires {
            Some(at) if at <= now => {
                info!(%service, %check, "ttl check expired");
                c.state = State::Critical;
                c.output = format!("TTL expired: no update within {ttl:?}");
                c.expires = None;
                self.publish(&mut inner);
                Some(now + ttl)
            }
            Some(at) => Some(at),
            // Never updated (or expired): nothing to expire until an update.
            None => Some(now + ttl),
        }
    }

    /// The latest reports of `node`'s agent; it is reachable.
    pub fn remote(&self, node: &NodeName, reports: Vec<InstanceReport>) {
        let mut inner = self.lock();
        inner.unreachable.remove(node);
        inner.remote.insert(node.clone(), by_service(reports));
        self.publish(&mut inner);
    }

    /// `node`'s agent cannot be reached: its instances are critical until
    /// it reports again.
    pub fn unreachable(&self, node: &NodeName, why: String) {
        let mut inner = self.lock();
        if inner.unreachable.contains_key(node) {
            return;
        }
        info!(%node, %why, "agent unreachable: its instances are critical");
        inner.unreachable.insert(node.clone(), why);
        self.publish(&mut inner);
    }

    /// The nodes whose agent holds a live registration in etcd (see
    /// `catalog::registry`); instances on other nodes are critical.
    pub fn registered(&self, mut nodes: std::collections::BTreeSet<String>) {
        let mut inner = self.lock();
        nodes.insert(self.node.to_string());
        if inner.registered.as_ref() == Some(&nodes) {
            return;
        }
        if let Some(before) = &inner.registered {
            for node in before.difference(&nodes) {
                info!(%node, "node's registration in etcd gone: its instances are critical");
            }
            for node in nodes.difference(before) {
                info!(%node, "node registered in etcd");
            }
        }
        inner.registered = Some(nodes);
        self.publish(&mut inner);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes `inner` as a view, and this node's reports, where changed.
    fn publish(&self, inner: &mut Inner) {
        let now = SystemTime::now();
        for c in inner.local.values_mut().flatten() {
            if c.since.0 != c.state {
                c.since = (c.state, now);
            }
        }
        let local: Vec<InstanceReport> = inner
            .local
            .iter()
            .map(|(service, checks)| {
                InstanceReport::of(service, checks.iter().map(LocalCheck::report).collect())
            })
            .collect();
        self.local.send_if_modified(|current| {
            let changed = **current != local;
            if changed {
                *current = Arc::new(local.clone());
            }
            changed
        });
        let mut reports = inner.remote.clone();
        reports.insert(
            self.node.clone(),
            inner.local.keys().cloned().zip(local).collect(),
        );
        let view = View {
            reports,
            unreachable: inner.unreachable.clone(),
            registered: inner.registered.clone(),
        };
        self.publisher.send_if_modified(|snapshot| {
            let changed = *snapshot.health != view;
            if changed {
                *snapshot = Arc::new(snapshot.with_health(Arc::new(view)));
            }
            changed
        });
    }
}

/// `reports` by service; a report whose service is not a valid name (no
/// agent sends one) is left out: no config has that service.
fn by_service(
    reports: impl IntoIterator<Item = InstanceReport>,
) -> HashMap<ServiceName, InstanceReport> {
    reports
        .into_iter()
        .filter_map(|r| Some((r.service.parse().ok()?, r)))
        .collect()
}

impl runner::Results for Board {
    fn record(&self, service: &ServiceName, check: &str, state: State, output: String) {
        Board::record(self, service, check, state, output);
    }

    fn expire(&self, service: &ServiceName, check: &str, now: Instant) -> Option<Instant> {
        Board::expire(self, service, check, now)
    }
}

impl Inner {
    fn check_mut(&mut self, service: &str, check: &str) -> Option<&mut LocalCheck> {
        self.local
            .get_mut(service)?
            .iter_mut()
            .find(|c| c.check.name == check)
    }
}

impl LocalCheck {
    /// A check that has not run: critical, as in Consul.
    fn new(check: Check) -> Self {
        Self {
            check,
            state: State::Critical,
            output: "not run yet".to_owned(),
            successes: 0,
            failures: 0,
            expires: None,
            output_sent: None,
            since: (State::Critical, SystemTime::now()),
        }
    }

    fn report(&self) -> CheckReport {
        CheckReport {
            name: self.check.name.clone(),
            state: self.state,
            output: self.output.clone(),
            since: self
                .since
                .1
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs()),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        snapshot::Watch,
        testing::{self, NODES, service},
    };

    /// Nodes a and b; `api` (port 1) on both, `web` (port 2) on a.
    fn mesh() -> String {
        format!(
            "{NODES}{}{}",
            service("api", &["a", "b"], 1),
            service("web", &["a"], 2)
        )
    }

    fn check(name: &str, kind: CheckKind, successes: u32, failures: u32) -> Check {
        Check {
            name: name.into(),
            kind,
            // Long: the runner's first run happens at once, then not again
            // during a test, so only the results recorded here count.
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(1),
            success_before_passing: successes,
            failures_before_critical: failures,
        }
    }

    /// A config where api has `checks`, and a board for node a on it
    /// (also the fixture of `link`'s tests).
    pub(in crate::health) fn board(checks: Vec<Check>) -> (Arc<Board>, Watch, Config) {
        let mut config = testing::config(&mesh());
        config.services[0].checks = checks;
        let (publisher, watch) = testing::snapshots(config.clone());
        let board = Board::new(&"a".parse().unwrap(), Arc::new(publisher), Arc::default());
        board.sync(&config);
        (board, watch, config)
    }

    pub(in crate::health) fn state(watch: &Watch, service: &str, node: &str) -> State {
        let snapshot = watch.borrow().clone();
        let s = snapshot.config.service(service).unwrap();
        snapshot.health.state(s, &node.parse().unwrap())
    }

    /// An upgrade's new agent takes over the old one's check states: no
    /// "not run yet" critical, no thresholds counted from zero, a ttl
    /// check's deadline a whole ttl away.
    #[tokio::test(start_paused = true)]
    async fn adopted_check_states_hold_until_checks_say_otherwise() {
        let ttl = CheckKind::Ttl(Duration::from_secs(30));
        let (board, watch, _) = board(vec![
            check("c", CheckKind::Tcp, 3, 2),
            check("t", ttl, 1, 1),
        ]);
        assert_eq!(state(&watch, "api", "a"), State::Critical, "not run yet");
        // Only the results recorded here count.
        board.stop();
        let passing = |name: &str| crate::health::CheckReport {
            name: name.into(),
            state: State::Passing,
            output: "ok then".into(),
            since: None,
        };
        assert_eq!(state(&watch, "api", "b"), State::Critical, "no report");
        let remote = Reports {
            node: "b".into(),
            instances: vec![InstanceReport::of("api", vec![passing("c")])],
            news: None,
        };
        board.adopt(
            &[
                InstanceReport::of("api", vec![passing("c"), passing("t")]),
                // Not on this node, or no such check: nothing to take over.
                InstanceReport::of("nosuch", vec![passing("c")]),
            ],
            &[remote],
        );
        assert_eq!(state(&watch, "api", "a"), State::Passing);
        assert_eq!(state(&watch, "api", "b"), State::Passing, "b's last report");
        // One failure of the 2 it takes: still passing.
        board.record(
            &"api".parse().unwrap(),
            "c",
            State::Critical,
            "refused".into(),
        );
        assert_eq!(state(&watch, "api", "a"), State::Passing);
        // The ttl check lasts its whole ttl from the takeover.
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(
            board
                .expire(&"api".parse().unwrap(), "t", Instant::now())
                .is_some()
        );
        assert_eq!(state(&watch, "api", "a"), State::Passing);
        tokio::time::advance(Duration::from_secs(2)).await;
        board.expire(&"api".parse().unwrap(), "t", Instant::now());
        assert_eq!(state(&watch, "api", "a"), State::Critical);
    }

    #[tokio::test]
    async fn consul_thresholds() {
        // Port 1 refuses: the runner's first run records a failure too;
        // results below are recorded on top of it.
        let (board, watch, _) = board(vec![check("c", CheckKind::Tcp, 3, 2)]);
        assert_eq!(
            state(&watch, "api", "a"),
            State::Critical,
            "a new check starts critical"
        );
        assert_eq!(
            state(&watch, "web", "a"),
            State::Passing,
            "no checks: passing"
        );
        assert_eq!(
            state(&watch, "api", "b"),
            State::Critical,
            "no report from b yet"
        );
        for n in 1..=3 {
            assert_eq!(
                state(&watch, "api", "a"),
                State::Critical,
                "after {} successes",
                n - 1
            );
            board.record(&"api".parse().unwrap(), "c", State::Passing, "ok".into());
        }
        assert_eq!(state(&watch, "api", "a"), State::Passing);
        board.record(&"api".parse().unwrap(), "c", State::Critical, "down".into());
        assert_eq!(state(&watch, "api", "a"), State::Passing, "1 of 2 failures");
        board.record(&"api".parse().unwrap(), "c", State::Passing, "ok".into());
        board.record(&"api".parse().unwrap(), "c", State::Critical, "down".into());
        assert_eq!(
            state(&watch, "api", "a"),
            State::Passing,
            "the count restarted"
        );
        board.record(&"api".parse().unwrap(), "c", State::Critical, "down".into());
        assert_eq!(state(&watch, "api", "a"), State::Critical);
        // Warning counts as a success.
        for _ in 0..3 {
            board.record(&"api".parse().unwrap(), "c", State::Warning, "busy".into());
        }
        assert_eq!(state(&watch, "api", "a"), State::Warning);
        board.stop();
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_output_alone_is_published_at_most_every_refresh() {
        // A ttl check's task never records, so only these results count.
        let ttl = CheckKind::Ttl(Duration::from_secs(3600));
        let (board, watch, _) = board(vec![check("c", ttl, 0, 0)]);
        let output = |watch: &Watch| {
            let snapshot = watch.borrow().clone();
            let api = snapshot.config.service("api").unwrap();
            snapshot.health.instance(api, &"a".parse().unwrap()).checks[0]
                .output
                .clone()
        };
        board.record(&"api".parse().unwrap(), "c", State::Passing, "t=1".into());
        assert_eq!(output(&watch), "t=1", "a state change goes out at once");
        board.record(&"api".parse().unwrap(), "c", State::Passing, "t=2".into());
        assert_eq!(output(&watch), "t=1", "the same state, a new output: held");
        tokio::time::sleep(OUTPUT_REFRESH).await;
        board.record(&"api".parse().unwrap(), "c", State::Passing, "t=3".into());
        assert_eq!(output(&watch), "t=3", "after OUTPUT_REFRESH");
        board.record(&"api".parse().unwrap(), "c", State::Critical, "down".into());
        assert_eq!(output(&watch), "down");
        board.stop();
    }

    #[tokio::test]
    async fn zero_thresholds_follow_each_result() {
        let (board, watch, _) = board(vec![check("c", CheckKind::Tcp, 0, 0)]);
        board.record(&"api".parse().unwrap(), "c", State::Passing, "ok".into());
        assert_eq!(state(&watch, "api", "a"), State::Passing);
        board.record(&"api".parse().unwrap(), "c", State::Critical, "down".into());
        assert_eq!(state(&watch, "api", "a"), State::Critical);
        board.stop();
    }

    #[tokio::test]
    async fn the_worst_check_decides() {
        let (board, watch, _) = board(vec![
            check("one", CheckKind::Tcp, 0, 0),
            check("two", CheckKind::Tcp, 0, 0),
        ]);
        board.record(&"api".parse().unwrap(), "one", State::Passing, "ok".into());
        assert_eq!(
            state(&watch, "api", "a"),
            State::Critical,
            "two has not passed"
        );
        board.record(
            &"api".parse().unwrap(),
            "two",
            State::Warning,
            "busy".into(),
        );
        assert_eq!(state(&watch, "api", "a"), State::Warning);
        board.stop();
    }

    #[tokio::test(start_paused = true)]
    async fn a_ttl_check_expires_without_updates() {
        let ttl = CheckKind::Ttl(Duration::from_secs(5));
        let (board, watch, _) = board(vec![check("t", ttl, 0, 0)]);
        tokio::task::yield_now().await;
        assert_eq!(state(&watch, "api", "a"), State::Critical);
        board
            .ttl("api", None, State::Passing, Some("fine".into()))
            .unwrap();
        assert_eq!(state(&watch, "api", "a"), State::Passing);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(state(&watch, "api", "a"), State::Passing);
        board.ttl("api", None, State::Warning, None).unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            state(&watch, "api", "a"),
            State::Warning,
            "the update restarted the ttl"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(state(&watch, "api", "a"), State::Critical);
        let snapshot = watch.borrow().clone();
        let api = snapshot.config.service("api").unwrap();
        let output = &snapshot.health.instance(api, &"a".parse().unwrap()).checks[0].output;
        assert!(output.contains("TTL expired"), "{output}");
        board.stop();
    }

    #[tokio::test]
    async fn ttl_updates_are_refused_clearly() {
        let ttl = |name: &str| check(name, CheckKind::Ttl(Duration::from_secs(5)), 0, 0);
        let (board, _, _) = board(vec![ttl("t1"), ttl("t2")]);
        let err = board.ttl("web", None, State::Passing, None).unwrap_err();
        assert_eq!(err.to_string(), "service \"web\" has no ttl check");
        let err = board.ttl("nope", None, State::Passing, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "service \"nope\" has no instance on node \"a\""
        );
        let err = board.ttl("api", None, State::Passing, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "service \"api\" has several ttl checks (t1, t2): say which with --check"
        );
        board.ttl("api", Some("t2"), State::Passing, None).unwrap();
        let err = board
            .ttl("api", Some("t3"), State::Passing, None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "service \"api\" has no ttl check named \"t3\""
        );
        board.stop();
    }

    #[tokio::test]
    async fn reload_keeps_unchanged_checks_and_restarts_changed_ones() {
        let (board, watch, mut config) = board(vec![
            check("keep", CheckKind::Tcp, 0, 0),
            check("change", CheckKind::Tcp, 0, 0),
        ]);
        board.record(&"api".parse().unwrap(), "keep", State::Passing, "ok".into());
        board.record(
            &"api".parse().unwrap(),
            "change",
            State::Passing,
            "ok".into(),
        );
        assert_eq!(state(&watch, "api", "a"), State::Passing);
        config.services[0].checks[1].failures_before_critical = 5;
        board.sync(&config);
        assert_eq!(
            state(&watch, "api", "a"),
            State::Critical,
            "a changed check starts over"
        );
        board.record(
            &"api".parse().unwrap(),
            "change",
            State::Passing,
            "ok".into(),
        );
        assert_eq!(
            state(&watch, "api", "a"),
            State::Passing,
            "keep kept its state"
        );
        board.stop();
    }

    #[tokio::test]
    async fn remote_reports_and_unreachable_agents() {
        let (board, watch, _) = board(Vec::new());
        assert_eq!(
            state(&watch, "api", "b"),
            State::Passing,
            "no checks, no report needed"
        );
        board.unreachable(&"b".parse().unwrap(), "connection refused".into());
        assert_eq!(state(&watch, "api", "b"), State::Critical);
        board.remote(
            &"b".parse().unwrap(),
            vec![InstanceReport::of("api", Vec::new())],
        );
        assert_eq!(
            state(&watch, "api", "b"),
            State::Passing,
            "it reported again"
        );
        let warning = CheckReport {
            name: "c".into(),
            state: State::Warning,
            output: "busy".into(),
            since: None,
        };
        board.remote(
            &"b".parse().unwrap(),
            vec![InstanceReport::of("api", vec![warning])],
        );
        assert_eq!(state(&watch, "api", "b"), State::Warning);
        board.stop();
    }
}
