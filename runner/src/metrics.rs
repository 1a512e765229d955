//! Prometheus metrics of the agent, and a tiny `/metrics` server for it. The coordinator's are
//! in `coordinator::metrics`, whose helpers these share.

use std::net::SocketAddr;
use std::sync::Arc;

use coordinator::metrics::{render, step_histogram, Labels};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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
        let a = AgentMetrics::new();
        a.jobs_running.set(1);
        assert!(render(&a.registry).contains("runner_agent_jobs_running 1"));
    }
}
