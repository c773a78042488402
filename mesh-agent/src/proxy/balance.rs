//! Which instance of a service a connection to its VIP goes to (the
//! service's `lb`), and which instances to skip for a while because
//! connecting to them kept failing (passive ejection).
//!
//! The source agent keeps, per instance, its active proxied connections
//! (an [`Active`] guard lives as long as the connection) and its recent
//! connect outcomes ([`Balancer::failed`], [`Balancer::succeeded`]).
//! A `random` pick costs O(1) whatever the number of instances
//! (candidates are sampled, not listed), falling back to one pass over
//! the instances only when most of them are excluded; `least_request`
//! also makes one pass over them to prefer an instance on the caller's
//! own node (docs/benchmarks.md, "Unit costs", has both).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::warn;

use crate::{
    config::{Balance, Service},
    health::View,
    names::{NameError, NodeName, ServiceName},
    snapshot::Watch,
};

/// Consecutive failed connects that eject an instance.
pub const EJECT_AFTER: u32 = 3;
/// How long a first ejection lasts; each further one in a row doubles it.
pub const EJECTION: Duration = Duration::from_secs(10);
/// The longest ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(80);
/// Random draws per candidate before falling back to a pass over all
/// instances.
const DRAWS: usize = 8;

/// Per-instance load and connect outcomes, and the pick. Instances are
/// keyed by (service, node), so they survive a reload that keeps them.
#[derive(Debug)]
pub struct Balancer {
    pools: Mutex<HashMap<ServiceName, Arc<Pool>>>,
    rng: AtomicU64,
}

/// Counts one active connection to an instance until dropped.
#[derive(Debug)]
pub struct Active {
    slot: Arc<Slot>,
}

/// One service's instances.
#[derive(Debug, Default)]
struct Pool {
    /// The next round robin position.
    next: AtomicUsize,
    slots: Mutex<HashMap<NodeName, Arc<Slot>>>,
}

/// One instance.
#[derive(Debug, Default)]
struct Slot {
    active: AtomicU64,
    ejection: Mutex<Ejection>,
}

#[derive(Debug, Default)]
struct Ejection {
    /// Failed connects since the last success.
    failures: u32,
    /// Ejections since the last success.
    ejections: u32,
    until: Option<Instant>,
}

impl Default for Balancer {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::with_seed(seed)
    }
}

impl Balancer {
    /// Registers `mesh_instance_health` and
    /// `mesh_instance_connections_active`: every instance of the catalog in
    /// `snapshots`, its health as this agent knows it and the connections
    /// this agent has open to it.
    pub fn register_metrics(
        self: &Arc<Self>,
        reg: &mut crate::telemetry::Registry,
        snapshots: crate::snapshot::Watch,
    ) {
        use crate::telemetry::{
            instance,
            registry::{count, gauges},
        };
        let this = self.clone();
        reg.collect(move |e| {
            let snapshot = snapshots.borrow().clone();
            let instances: Vec<_> = snapshot.config.meshed_instances().collect();
            gauges(
                e,
                "mesh_instance_health",
                "Health of each instance as this agent knows it: 0 passing, 1 warning, 2 critical",
                instances.iter().map(|(s, node)| {
                    (
                        instance(&s.name, node),
                        snapshot.health.state(s, node).code(),
                    )
                }),
            )?;
            gauges(
                e,
                "mesh_instance_connections_active",
                "Connections this agent has open to each instance now",
                instances
                    .iter()
                    .map(|(s, node)| (instance(&s.name, node), count(this.active(&s.name, node)))),
            )
        });
    }

    /// A balancer whose random choices start from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            pools: Mutex::default(),
            rng: AtomicU64::new(seed),
        }
    }

    /// The node of the instance of `service` that a connection from the
    /// node `here` goes to, by the service's `lb`, among the instances that
    /// take traffic in `health` (passing or warning), not in `tried` and
    /// not ejected at `now`. Ejected ones are used only when no other is
    /// left. `None` if every instance is tried or critical.
    pub fn pick(
        &self,
        service: &Service,
        here: &NodeName,
        tried: &[NodeName],
        now: Instant,
        health: &View,
    ) -> Option<NodeName> {
        let pool = self.pool(&service.name);
        let nodes = &service.nodes;
        let open = |i: usize| {
            let node = &nodes[i];
            !tried.contains(node) && health.state(service, node).takes_traffic()
        };
        let ok = |i: usize| open(i) && !pool.slot(&nodes[i]).ejected(now);
        let picked = self
            .choose(service, here, &pool, &ok)
            .or_else(|| self.choose(service, here, &pool, &open));
        picked.map(|i| nodes[i].clone())
    }

    /// Counts a connection to the instance of `service` on `node` as
    /// active until the guard is dropped.
    pub fn started(&self, service: &ServiceName, node: &NodeName) -> Active {
        let slot = self.pool(service).slot(node);
        slot.active.fetch_add(1, Ordering::Relaxed);
        Active { slot }
    }

    /// The connections open now to the instance of `service` on `node`.
    pub fn active(&self, service: &ServiceName, node: &NodeName) -> u64 {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pool) = pools.get(service) else {
            return 0;
        };
        let slots = pool.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .get(node)
            .map_or(0, |slot| slot.active.load(Ordering::Relaxed))
    }

    /// Records a failed dial or handshake to the instance of `service` on
    /// `node`: the [`EJECT_AFTER`]th in a row ejects it until `now` +
    /// [`EJECTION`] (doubled for each ejection since the last success, at
    /// most [`MAX_EJECTION`]). Returns whether this failure ejected it.
    pub fn failed(&self, service: &ServiceName, node: &NodeName, now: Instant) -> bool {
        let slot = self.pool(service).slot(node);
        let mut e = slot.ejection.lock().unwrap_or_else(|e| e.into_inner());
        e.failures = e.failures.saturating_add(1);
        if e.failures < EJECT_AFTER {
            return false;
        }
        let factor = 1u32 << e.ejections.min(16);
        let time = EJECTION.saturating_mul(factor).min(MAX_EJECTION);
        e.ejections = e.ejections.saturating_add(1);
        e.until = Some(now + time);
        warn!(%service, %node, seconds = time.as_secs(), failures = e.failures, "instance ejected");
        true
    }

    /// Records a successful connect: the instance's failures and
    /// ejections are forgotten.
    pub fn succeeded(&self, service: &ServiceName, node: &NodeName) {
        let slot = self.pool(service).slot(node);
        let mut e = slot.ejection.lock().unwrap_or_else(|e| e.into_inner());
        *e = Ejection::default();
    }

    /// Forgets the failures and ejection of each instance of `services`
    /// that was critical in `before` and takes traffic in `after`: its
    /// checks (or its agent's link) vouch for it again, as Envoy un-ejects
    /// a host that active health checking finds healthy. Else an instance
    /// back and passing would still be skipped until its ejection ran out
    /// (up to [`MAX_EJECTION`]).
    pub fn health_changed(&self, services: &[Service], before: &View, after: &View) {
        for service in services {
            for node in &service.nodes {
                if !before.state(service, node).takes_traffic()
                    && after.state(service, node).takes_traffic()
                {
                    self.succeeded(&service.name, node);
                }
            }
        }
    }

    /// The index in `service.nodes` of the pick among the instances `ok`
    /// accepts.
    fn choose(
        &self,
        service: &Service,
        here: &NodeName,
        pool: &Pool,
        ok: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = service.nodes.len();
        match service.lb {
            Balance::LeastRequest => {
                // Bytes to the local instance never leave the node.
                if let Some(i) = service.nodes.iter().position(|node| node == here)
                    && ok(i)
                {
                    return Some(i);
                }
                let a = self.draw(n, ok)?;
                let Some(b) = self.draw(n, &|i| i != a && ok(i)) else {
                    return Some(a);
                };
                let load = |i: usize| pool.slot(&service.nodes[i]).active.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
            Balance::Random => self.draw(n, ok),
            Balance::RoundRobin => {
                let start = pool.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
            }
        }
    }

    /// A uniformly random index below `n` that `ok` accepts: [`DRAWS`]
    /// draws, then one pass over the accepted ones.
    fn draw(&self, n: usize, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        if n == 0 {
            return None;
        }
        for _ in 0..DRAWS {
            let i = self.below(n);
            if ok(i) {
                return Some(i);
            }
        }
        let accepted: Vec<usize> = (0..n).filter(|&i| ok(i)).collect();
        (!accepted.is_empty()).then(|| accepted[self.below(accepted.len())])
    }

    /// A random number below `n` (splitmix64; `n` > 0).
    fn below(&self, n: usize) -> usize {
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // Modulo bias is below 2^-40 for any realistic `n`.
        (z % n as u64) as usize
    }

    fn pool(&self, service: &ServiceName) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.entry(service.clone()).or_default().clone()
    }

    /// Forgets the instances `services` no longer has (their counts and
    /// ejections), so a long-lived agent under a changing catalog does not
    /// keep them. A connection still open to one keeps its own count.
    pub fn retain(&self, services: &[Service]) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|name, pool| {
            let Some(service) = services.iter().find(|s| s.name == *name) else {
                return false;
            };
            let mut slots = pool.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.retain(|node, _| service.hosted_on(node));
            true
        });
    }

    /// The instances it keeps state for, as (service, node), sorted.
    #[cfg(test)]
    fn kept(&self) -> Vec<(String, String)> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept: Vec<(String, String)> = pools
            .iter()
            .flat_map(|(name, pool)| {
                let slots = pool.slots.lock().unwrap_or_else(|e| e.into_inner());
                slots
                    .keys()
                    .map(|node| (name.to_string(), node.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        kept.sort();
        kept
    }
}

/// Hands every health change published on `snapshots` to `balancer`
/// ([`Balancer::health_changed`]), and every config change
/// ([`Balancer::retain`]), until the channel closes.
pub async fn follow_health(balancer: Arc<Balancer>, mut snapshots: Watch) {
    let first = snapshots.borrow_and_update().clone();
    let (mut health, mut config) = (first.health.clone(), first.config.clone());
    while snapshots.changed().await.is_ok() {
        let snapshot = snapshots.borrow_and_update().clone();
        if !Arc::ptr_eq(&health, &snapshot.health) {
            balancer.health_changed(&snapshot.config.services, &health, &snapshot.health);
            health = snapshot.health.clone();
        }
        if !Arc::ptr_eq(&config, &snapshot.config) {
            balancer.retain(&snapshot.config.services);
            config = snapshot.config.clone();
        }
    }
}

impl Pool {
    fn slot(&self, node: &NodeName) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(node) {
            return slot.clone();
        }
        let slot = Arc::new(Slot::default());
        slots.insert(node.clone(), slot.clone());
        slot
    }
}

impl Slot {
    fn ejected(&self, now: Instant) -> bool {
        let e = self.ejection.lock().unwrap_or_else(|e| e.into_inner());
        e.until.is_some_and(|until| now < until)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.slot.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Nanoseconds per pick by `lb` among `instances` passing instances of one
/// service, from a node without one: the mean of `picks` picks, slots
/// warmed as a running agent has them. For `benches/units.rs`
/// (`cargo xtask bench --only pick`).
#[doc(hidden)]
pub fn bench_ns_per_pick(lb: Balance, instances: usize, picks: u32) -> Result<f64, NameError> {
    let s = Service {
        name: "api".parse()?,
        nodes: (0..instances)
            .map(|i| format!("n{i}").parse())
            .collect::<Result<_, _>>()?,
        port: 5001,
        vip: std::net::IpAddr::from([240, 0, 0, 2]),
        public: false,
        cgroup: None,
        lb,
        checks: Vec::new(),
    };
    let b = Balancer::with_seed(1);
    for node in &s.nodes {
        drop(b.started(&s.name, node));
    }
    let mut health = View::default();
    for node in &s.nodes {
        let report = crate::health::InstanceReport {
            service: s.name.to_string(),
            state: crate::health::State::Passing,
            checks: Vec::new(),
        };
        health
            .reports
            .entry(node.clone())
            .or_default()
            .insert(s.name.clone(), report);
    }
    let elsewhere = "elsewhere".parse()?;
    let now = Instant::now();
    let start = Instant::now();
    for _ in 0..picks {
        std::hint::black_box(b.pick(&s, &elsewhere, &[], now, &health));
    }
    Ok(start.elapsed().as_nanos() as f64 / f64::from(picks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{InstanceReport, State};

    fn nn(name: &str) -> NodeName {
        name.parse().unwrap()
    }

    fn sn(name: &str) -> ServiceName {
        name.parse().unwrap()
    }

    fn service(nodes: &[&str], lb: Balance) -> Service {
        Service {
            name: sn("api"),
            nodes: nodes.iter().map(|n| nn(n)).collect(),
            port: 5001,
            vip: "240.0.0.2".parse().unwrap(),
            public: false,
            cgroup: None,
            lb,
            checks: Vec::new(),
        }
    }

    /// How many of `picks` picks from node `here` went to each node.
    fn spread(b: &Balancer, s: &Service, here: &str, picks: usize) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for _ in 0..picks {
            let node = b
                .pick(s, &nn(here), &[], Instant::now(), &View::default())
                .unwrap();
            *counts.entry(node.to_string()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn every_policy_spreads_two_instances_evenly() {
        for lb in [Balance::LeastRequest, Balance::Random, Balance::RoundRobin] {
            let b = Balancer::with_seed(7);
            let s = service(&["b", "c"], lb);
            let counts = spread(&b, &s, "a", 1000);
            for node in ["b", "c"] {
                let n = counts.get(node).copied().unwrap_or(0);
                assert!((300..=700).contains(&n), "{lb:?}: {counts:?}");
            }
        }
    }

    #[test]
    fn least_request_prefers_the_callers_node() {
        let b = Balancer::with_seed(1);
        let s = service(&["b", "c"], Balance::LeastRequest);
        assert_eq!(spread(&b, &s, "c", 100).get("c"), Some(&100));
        // Even when it is the busier one.
        let _busy: Vec<Active> = (0..5).map(|_| b.started(&sn("api"), &nn("c"))).collect();
        assert_eq!(spread(&b, &s, "c", 100).get("c"), Some(&100));
        // Random and round robin do not prefer it.
        let s = service(&["b", "c"], Balance::Random);
        assert!(spread(&b, &s, "c", 100).contains_key("b"));
    }

    #[test]
    fn round_robin_takes_turns_in_order() {
        let b = Balancer::with_seed(1);
        let s = service(&["b", "c", "d"], Balance::RoundRobin);
        let picks: Vec<String> = (0..6)
            .map(|_| {
                b.pick(&s, &nn("b"), &[], Instant::now(), &View::default())
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(picks, ["b", "c", "d", "b", "c", "d"]);
    }

    #[test]
    fn least_request_prefers_the_less_loaded() {
        let b = Balancer::with_seed(3);
        let s = service(&["b", "c"], Balance::LeastRequest);
        let busy: Vec<Active> = (0..3).map(|_| b.started(&sn("api"), &nn("b"))).collect();
        assert_eq!(spread(&b, &s, "a", 100).get("c"), Some(&100));
        // Ended connections no longer count.
        drop(busy);
        let _c = b.started(&sn("api"), &nn("c"));
        assert_eq!(spread(&b, &s, "a", 100).get("b"), Some(&100));
    }

    #[test]
    fn tried_instances_are_not_picked_again() {
        let b = Balancer::with_seed(5);
        for lb in [Balance::LeastRequest, Balance::Random, Balance::RoundRobin] {
            let s = service(&["b", "c", "d"], lb);
            let tried = [nn("b"), nn("d")];
            for _ in 0..50 {
                assert_eq!(
                    b.pick(&s, &nn("b"), &tried, Instant::now(), &View::default())
                        .unwrap(),
                    "c"
                );
            }
            let all = ["b", "c", "d"].map(nn);
            assert_eq!(
                b.pick(&s, &nn("a"), &all, Instant::now(), &View::default()),
                None
            );
        }
    }

    #[test]
    fn three_failures_in_a_row_eject_until_the_time_is_up() {
        let b = Balancer::with_seed(9);
        let s = service(&["b", "c"], Balance::LeastRequest);
        let t0 = Instant::now();
        assert!(!b.failed(&sn("api"), &nn("c"), t0));
        assert!(!b.failed(&sn("api"), &nn("c"), t0));
        assert!(b.failed(&sn("api"), &nn("c"), t0));
        let at = |d: Duration| b.pick(&s, &nn("c"), &[], t0 + d, &View::default()).unwrap();
        // Skipped, local preference included.
        for _ in 0..50 {
            assert_eq!(at(Duration::ZERO), "b");
        }
        assert_eq!(at(EJECTION - Duration::from_millis(1)), "b");
        assert_eq!(at(EJECTION), "c");
        // Failing again right after doubles the time.
        assert!(b.failed(&sn("api"), &nn("c"), t0 + EJECTION));
        assert_eq!(at(EJECTION * 3 - Duration::from_millis(1)), "b");
        assert_eq!(at(EJECTION * 3), "c");
        // A success forgets it all.
        b.succeeded(&sn("api"), &nn("c"));
        assert!(!b.failed(&sn("api"), &nn("c"), t0));
        assert_eq!(at(Duration::ZERO), "c");
    }

    #[test]
    fn ejection_doubles_up_to_the_cap() {
        let b = Balancer::with_seed(9);
        let s = service(&["b", "c"], Balance::Random);
        let mut now = Instant::now();
        for _ in 0..EJECT_AFTER - 1 {
            b.failed(&sn("api"), &nn("b"), now);
        }
        for _ in 0..10 {
            assert!(b.failed(&sn("api"), &nn("b"), now));
            now += MAX_EJECTION;
        }
        assert_eq!(
            b.pick(
                &s,
                &nn("a"),
                &[nn("c")],
                now - Duration::from_secs(1),
                &View::default()
            ),
            Some(nn("b")),
            "ejected: used as the last one left"
        );
        let ejected = (0..50).all(|_| {
            b.pick(
                &s,
                &nn("a"),
                &[],
                now - Duration::from_secs(1),
                &View::default(),
            )
            .unwrap()
                == "c"
        });
        assert!(ejected);
    }

    #[test]
    fn an_ejected_instance_is_used_when_no_other_is_left() {
        let b = Balancer::with_seed(11);
        let s = service(&["b", "c"], Balance::LeastRequest);
        let now = Instant::now();
        for node in ["b", "c"] {
            for _ in 0..EJECT_AFTER {
                b.failed(&sn("api"), &nn(node), now);
            }
        }
        assert!(b.pick(&s, &nn("a"), &[], now, &View::default()).is_some());
        assert_eq!(
            b.pick(&s, &nn("a"), &[nn("b")], now, &View::default()),
            Some(nn("c"))
        );
    }

    /// A view in which every instance of `s` reported passing, except
    /// those in `states`.
    fn health(s: &Service, states: &[(&str, State)]) -> View {
        let mut view = View::default();
        for node in &s.nodes {
            let state = states
                .iter()
                .find(|(n, _)| n == node)
                .map_or(State::Passing, |(_, state)| *state);
            let report = InstanceReport {
                service: s.name.to_string(),
                state,
                checks: Vec::new(),
            };
            view.reports
                .entry(node.clone())
                .or_default()
                .insert(s.name.clone(), report);
        }
        view
    }

    #[test]
    fn critical_instances_get_nothing_warning_ones_do() {
        for lb in [Balance::LeastRequest, Balance::Random, Balance::RoundRobin] {
            let b = Balancer::with_seed(3);
            let s = service(&["a", "b", "c"], lb);
            let view = health(&s, &[("a", State::Critical), ("b", State::Warning)]);
            let mut counts = HashMap::new();
            for _ in 0..300 {
                let node = b.pick(&s, &nn("a"), &[], Instant::now(), &view).unwrap();
                *counts.entry(node).or_insert(0) += 1;
            }
            assert_eq!(counts.get("a"), None, "{lb:?}: {counts:?}");
            assert!(
                counts.get("b").is_some_and(|n| *n > 50),
                "{lb:?}: {counts:?}"
            );
            // An unreachable agent's instances are critical too.
            let mut view = view;
            view.unreachable.insert(nn("b"), "gone".into());
            assert_eq!(
                b.pick(&s, &nn("a"), &[], Instant::now(), &view),
                Some(nn("c"))
            );
            view.unreachable.insert(nn("c"), "gone".into());
            assert_eq!(b.pick(&s, &nn("a"), &[], Instant::now(), &view), None);
        }
    }

    #[test]
    fn an_instance_passing_again_after_critical_is_no_longer_ejected() {
        let b = Balancer::with_seed(9);
        let s = service(&["b", "c"], Balance::LeastRequest);
        let now = Instant::now();
        for _ in 0..EJECT_AFTER {
            b.failed(&sn("api"), &nn("c"), now);
        }
        let passing = health(&s, &[]);
        let c_critical = health(&s, &[("c", State::Critical)]);
        let services = [s.clone()];
        // No transition from critical: the ejection holds.
        b.health_changed(&services, &passing, &passing);
        b.health_changed(&services, &passing, &c_critical);
        assert_eq!(b.pick(&s, &nn("c"), &[], now, &passing), Some(nn("b")));
        // Critical, then passing: the check vouches for it again.
        b.health_changed(&services, &c_critical, &passing);
        assert_eq!(b.pick(&s, &nn("c"), &[], now, &passing), Some(nn("c")));
    }

    #[test]
    fn state_of_instances_that_left_is_dropped() {
        let b = Balancer::with_seed(5);
        let api = service(&["b", "c"], Balance::LeastRequest);
        let mut web = service(&["a"], Balance::LeastRequest);
        web.name = sn("web");
        for node in ["b", "c"] {
            b.failed(&sn("api"), &nn(node), Instant::now());
        }
        b.failed(&sn("web"), &nn("a"), Instant::now());
        let open = b.started(&sn("api"), &nn("c"));
        let api_on_b = service(&["b"], Balance::LeastRequest);
        b.retain(&[api_on_b]);
        assert_eq!(b.kept(), [("api".to_owned(), "b".to_owned())]);
        drop(open); // its slot is gone; dropping it is harmless
        b.retain(&[api]);
        assert_eq!(b.kept(), [("api".to_owned(), "b".to_owned())]);
    }

    #[tokio::test]
    async fn follow_health_forgets_ejections_of_instances_back_from_critical() {
        use crate::testing::{self, node, service};
        let config = testing::config(&format!(
            "{}{}{}",
            node("b", "10.0.0.2"),
            node("c", "10.0.0.3"),
            service("api", &["b", "c"], 5001)
        ));
        let s = config.services[0].clone();
        let (publisher, watch) = testing::snapshots(config);
        let publish = |view: View| {
            publisher.send_modify(|snap| *snap = Arc::new(snap.with_health(Arc::new(view))));
        };
        publish(health(&s, &[("c", State::Critical)]));
        let b = Arc::new(Balancer::with_seed(9));
        let task = tokio::spawn(follow_health(b.clone(), watch));
        tokio::task::yield_now().await;
        let now = Instant::now();
        for _ in 0..EJECT_AFTER {
            b.failed(&sn("api"), &nn("c"), now);
        }
        publish(health(&s, &[]));
        let unejected = async {
            while b.pick(&s, &nn("c"), &[], now, &health(&s, &[])) != Some(nn("c")) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), unejected)
            .await
            .expect("c still ejected");
        task.abort();
    }
}
