//! Prometheus metrics of the coordinator and the agent (text exposition format, via the
//! `prometheus-client` crate), and a tiny `/metrics` server for the agent.

use std::net::SocketAddr;
use std::sync::Arc;

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

/// Agent metrics.
#[derive(Debug)]
pub struct AgentMetrics {
    pub registry: Registry,
    pub jobs_running: Gauge,
    pub jobs_finished: Family<Labels, Counter>,
    pub log_bytes_sent: Counter,
    pub step_seconds: Histogram,
}

impl AgentMetrics {
    pub fn new() -> AgentMetrics {
        let mut registry = Registry::with_prefix("runner_agent");
        let m = AgentMetrics {
            registry: Registry::default(),
            jobs_running: Gauge::default(),
            jobs_finished: Family::default(),
            log_bytes_sent: Counter::default(),
            step_seconds: step_histogram(),
        };
        registry.register("jobs_running", "Jobs running now", m.jobs_running.clone());
        registry.register(
            "jobs_finished",
            "Jobs finished, by status",
            m.jobs_finished.clone(),
        );
        registry.register(
            "log_bytes_sent",
            "Log bytes acknowledged by the coordinator",
            m.log_bytes_sent.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Duration of finished steps",
            m.step_seconds.clone(),
        );
        AgentMetrics { registry, ..m }
    }
}

pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, registry);
    out
}

/// Serves `GET /metrics` for the agent until the process ends.
pub async fn serve_agent(addr: SocketAddr, metrics: Arc<AgentMetrics>) -> anyhow::Result<()> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "agent metrics listening");
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    render(&m.registry),
                )
            }
        }),
    );
    axum::serve(listener, app).await?;
    Ok(())
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
        let a = AgentMetrics::new();
        a.jobs_running.set(1);
        assert!(render(&a.registry).contains("runner_agent_jobs_running 1"));
    }
}
