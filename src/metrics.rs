//! Prometheus metrics. Gauges are derived from live state at scrape time,
//! never counted up and down by hand.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Labels of `dialerd_http_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Matched route, or `unmatched`.
    pub route: String,
    /// Response status code.
    pub status: u16,
}

/// Every metric dialerd exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests served by route and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// 1 when ready, else 0; set from the readiness checks at scrape.
    pub ready: Gauge,
    /// Age of the event-loop heartbeat in seconds; set at scrape.
    pub heartbeat_age: Gauge<f64, AtomicU64>,
}

impl Metrics {
    /// Registers every metric; `start_time` is the process start in Unix seconds.
    pub fn new(start_time: f64) -> Self {
        let mut registry = Registry::with_prefix("dialerd");
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let started = Gauge::<f64, AtomicU64>::default();
        started.set(start_time);
        registry.register(
            "start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            started,
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests served by route and status",
            http_requests.clone(),
        );
        let ready = Gauge::default();
        registry.register("ready", "1 when every readiness check holds", ready.clone());
        let heartbeat_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "heartbeat_age_seconds",
            "Seconds since the event-loop heartbeat last ticked",
            heartbeat_age.clone(),
        );
        Self {
            registry,
            http_requests,
            ready,
            heartbeat_age,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names() {
        let m = Metrics::new(1_700_000_000.0);
        m.http_requests
            .get_or_create(&HttpLabels {
                route: "/healthz".into(),
                status: 200,
            })
            .inc();
        let text = m.encode().unwrap();
        assert!(text.contains("dialerd_build_info{version=\""), "{text}");
        assert!(
            text.contains("dialerd_start_time_seconds 1700000000"),
            "{text}"
        );
        assert!(
            text.contains("dialerd_http_requests_total{route=\"/healthz\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
