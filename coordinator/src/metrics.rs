//! Prometheus metrics of the coordinator (text exposition format, via the `prometheus-client`
//! crate), and the helpers the agent's metrics share.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub type Labels = Vec<(String, String)>;

/// Step durations from 50 ms to about 7 h.
pub fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 20))
}

/// Coordinator metrics.
#[derive(Debug)]
pub struct CoordinatorMetrics {
    pub registry: Registry,
    /// Jobs by state (set at scrape time from the store).
    pub jobs: Family<Labels, Gauge>,
    pub runners_online: Gauge,
    pub jobs_dispatched: Counter,
    pub log_bytes: Counter,
    pub step_seconds: Histogram,
    pub runners_lost: Counter,
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CoordinatorMetrics {
    pub fn new() -> CoordinatorMetrics {
        let mut registry = Registry::with_prefix("runner_coordinator");
        let m = CoordinatorMetrics {
            jobs: Family::default(),
            runners_online: Gauge::default(),
            jobs_dispatched: Counter::default(),
            log_bytes: Counter::default(),
            step_seconds: step_histogram(),
            runners_lost: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("jobs", "Jobs by state", m.jobs.clone());
        registry.register(
            "runners_online",
            "Runners heard from within the heartbeat timeout",
            m.runners_online.clone(),
        );
        registry.register(
            "jobs_dispatched",
            "Jobs handed to runners",
            m.jobs_dispatched.clone(),
        );
        registry.register(
            "log_bytes_received",
            "Log bytes appended to stored job logs",
            m.log_bytes.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Duration of finished steps, as runners report them",
            m.step_seconds.clone(),
        );
        registry.register(
            "jobs_lost",
            "Jobs whose runner stopped heartbeating",
            m.runners_lost.clone(),
        );
        CoordinatorMetrics { registry, ..m }
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = CoordinatorMetrics::new();
        m.log_bytes.inc_by(42);
        m.jobs
            .get_or_create(&vec![("state".into(), "running".into())])
            .set(3);
        m.step_seconds.observe(0.2);
        let text = m.render();
        assert!(
            text.contains("runner_coordinator_log_bytes_received_total 42"),
            "{text}"
        );
        assert!(
            text.contains("runner_coordinator_jobs{state=\"running\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("runner_coordinator_step_duration_seconds_count 1"),
            "{text}"
        );
    }
}
