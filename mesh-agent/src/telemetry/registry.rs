//! `GET /metrics`: the families each component registers at start, read
//! at each scrape in the OpenMetrics text format.

use std::fmt;

use crate::endpoint::{Reply, Routes};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Metric,
};

/// Something to run before each scrape (folds the kernel's counts into
/// the counters).
type Hook = Box<dyn Fn() + Send + Sync>;

/// Every metric family of the agent; built at start, then shared.
#[derive(Default)]
pub struct Registry {
    families: prometheus_client::registry::Registry,
    before: Vec<Hook>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("hooks", &self.before.len())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// A family the component keeps updating (counters, gauges).
    pub fn register(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.families.register(name, help, metric);
    }

    /// Families read at each scrape by `encode` (with [`gauge`] and
    /// [`gauges`]).
    pub fn collect(
        &mut self,
        encode: impl Fn(&mut DescriptorEncoder) -> fmt::Result + Send + Sync + 'static,
    ) {
        self.families.register_collector(Box::new(Collect(encode)));
    }

    /// `hook` runs before each scrape.
    pub fn before_scrape(&mut self, hook: impl Fn() + Send + Sync + 'static) {
        self.before.push(Box::new(hook));
    }

    /// Answers `GET /metrics` from now on.
    pub fn serve_at(self, routes: &mut Routes) {
        routes.any("/metrics", move |_| Reply {
            status: http::StatusCode::OK,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: self.render(),
        });
    }

    /// The text exposition, after the hooks.
    pub fn render(&self) -> String {
        for hook in &self.before {
            hook();
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.families);
        out
    }
}

/// A [`Collector`] made of a function.
struct Collect<F>(F);

impl<F> fmt::Debug for Collect<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Collect")
    }
}

impl<F> Collector for Collect<F>
where
    F: Fn(&mut DescriptorEncoder) -> fmt::Result + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        (self.0)(&mut encoder)
    }
}

/// A value a gauge can show.
pub trait GaugeValue:
    prometheus_client::encoding::EncodeGaugeValue + fmt::Debug + Send + Sync
{
}
impl GaugeValue for i64 {}
impl GaugeValue for f64 {}

/// Encodes one gauge family, one sample per labels, from a collector;
/// nothing without samples (as a family registered empty).
pub fn gauges<L: EncodeLabelSet, N: GaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, N)>,
) -> fmt::Result {
    family(
        encoder,
        name,
        help,
        MetricType::Gauge,
        samples,
        ConstGauge::new,
    )
}

/// Encodes one counter family (`<name>_total`), one sample per labels,
/// from a collector; nothing without samples.
pub fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    family(
        encoder,
        name,
        help,
        MetricType::Counter,
        samples,
        ConstCounter::new,
    )
}

/// One family of `kind`, each sample's value made a metric by `metric`.
fn family<L: EncodeLabelSet, V, M: prometheus_client::encoding::EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, V)>,
    metric: impl Fn(V) -> M,
) -> fmt::Result {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        metric(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Encodes one gauge without labels, from a collector.
pub fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// A count as a gauge value.
pub fn count(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}
