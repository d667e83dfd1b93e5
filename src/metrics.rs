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

/// Labels by transport and message kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SipLabels {
    /// `udp`, `tcp` or `tls`.
    pub transport: String,
    /// `request` or `response`.
    pub kind: String,
}

/// Labels by transport.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// `udp`, `tcp` or `tls`.
    pub transport: String,
}

/// Labels by end cause.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    /// The cause.
    pub cause: String,
}

/// Labels by reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: String,
}

/// Metrics of the SIP stack.
#[derive(Debug, Default)]
pub struct SipMetrics {
    /// Messages received by transport and kind.
    pub received_total: Family<SipLabels, Counter>,
    /// Messages sent by transport.
    pub sent_total: Family<TransportLabel, Counter>,
    /// Messages dropped or refused by reason.
    pub dropped_total: Family<ReasonLabel, Counter>,
    /// Connections closed by reason.
    pub flows_closed_total: Family<ReasonLabel, Counter>,
    /// Open TCP/TLS connections, set from the flow table on every change.
    pub flows: Gauge,
    /// SIP messages `sip_trace` did not log because of its rate limit.
    pub trace_suppressed: Counter,
    /// Ended calls by cause.
    pub calls_ended_total: Family<CauseLabel, Counter>,
    /// Live calls by state; set at scrape from the call table.
    pub calls: Family<StateLabel, Gauge>,
    /// Calls refused before their INVITE, by reason.
    pub calls_refused_total: Family<ReasonLabel, Counter>,
    /// Voice agent streams started (`start` sent).
    pub agent_streams_started_total: Counter,
    /// Voice agent streams that ended other than by our stop, by reason.
    pub agent_streams_ended_total: Family<ReasonLabel, Counter>,
    /// Messages from voice agents that were ignored and reported (the first
    /// three per stream).
    pub agent_bad_messages_total: Counter,
}

impl SipMetrics {
    /// The handle counting received requests (`request`) or responses.
    pub fn received_counter(&self, transport: crate::config::Transport, request: bool) -> Counter {
        self.received_total
            .get_or_create(&SipLabels {
                transport: transport.to_string(),
                kind: if request { "request" } else { "response" }.to_owned(),
            })
            .clone()
    }

    /// The handle counting sent messages.
    pub fn sent_counter(&self, transport: crate::config::Transport) -> Counter {
        self.sent_total
            .get_or_create(&TransportLabel {
                transport: transport.to_string(),
            })
            .clone()
    }

    /// The handle counting drops for `reason`.
    pub fn dropped_counter(&self, reason: &str) -> Counter {
        self.dropped_total
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .clone()
    }

    /// The handle counting closed connections for `reason`.
    pub fn closed_counter(&self, reason: &str) -> Counter {
        self.flows_closed_total
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .clone()
    }

    fn register(&self, registry: &mut Registry) {
        let sip = registry.sub_registry_with_prefix("sip");
        sip.register(
            "received",
            "SIP messages received",
            self.received_total.clone(),
        );
        sip.register("sent", "SIP messages sent", self.sent_total.clone());
        sip.register(
            "dropped",
            "SIP messages dropped or refused, by reason",
            self.dropped_total.clone(),
        );
        sip.register(
            "flows_closed",
            "TCP/TLS connections closed, by reason",
            self.flows_closed_total.clone(),
        );
        sip.register("flows", "Open TCP/TLS connections", self.flows.clone());
        sip.register(
            "trace_suppressed",
            "SIP messages sip_trace did not log (rate limit)",
            self.trace_suppressed.clone(),
        );
        registry.register(
            "calls_ended",
            "Ended calls, by cause",
            self.calls_ended_total.clone(),
        );
        registry.register(
            "calls",
            "Live calls by state, from the call table at scrape",
            self.calls.clone(),
        );
        registry.register(
            "calls_refused",
            "Calls refused before their INVITE (capacity, rate_limited, ...), by reason",
            self.calls_refused_total.clone(),
        );
        registry.register(
            "agent_streams_started",
            "Voice agent streams started (start sent)",
            self.agent_streams_started_total.clone(),
        );
        registry.register(
            "agent_streams_ended",
            "Voice agent streams ended by the agent or a fault, by reason",
            self.agent_streams_ended_total.clone(),
        );
        registry.register(
            "agent_bad_messages",
            "Voice agent messages ignored and reported (the first three per stream)",
            self.agent_bad_messages_total.clone(),
        );
    }

    /// Counts one agent stream that ended for `reason`.
    pub fn agent_stream_ended(&self, reason: &str) {
        self.agent_streams_ended_total
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts one call refused for `reason`.
    pub fn call_refused(&self, reason: &str) {
        self.calls_refused_total
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts one ended call.
    pub fn call_ended(&self, cause: &str) {
        self.calls_ended_total
            .get_or_create(&CauseLabel {
                cause: cause.to_owned(),
            })
            .inc();
    }

    /// Sets the live-call gauges from the table's counts.
    pub fn set_calls(&self, by_state: &[(&'static str, usize)]) {
        for (state, n) in by_state {
            self.calls
                .get_or_create(&StateLabel {
                    state: (*state).to_owned(),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }
}

/// Labels by account.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabel {
    /// Account name.
    pub account: String,
}

/// Labels by registration state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// State name.
    pub state: String,
}

/// Registration state names, for the per-state gauge.
pub const REGISTRATION_STATES: [&str; 6] = [
    "unregistered",
    "registering",
    "registered",
    "backoff",
    "failed",
    "unregistering",
];

/// Metrics of account registration.
#[derive(Debug, Default)]
pub struct RegistrationMetrics {
    /// REGISTER requests sent, by account.
    pub requests_total: Family<AccountLabel, Counter>,
    /// Accounts by state, set from the published states at scrape.
    pub accounts: Family<StateLabel, Gauge>,
}

impl RegistrationMetrics {
    /// Counts a REGISTER.
    pub fn request(&self, account: &str) {
        self.requests_total
            .get_or_create(&AccountLabel {
                account: account.to_owned(),
            })
            .inc();
    }

    /// Sets the per-state gauge from the current states.
    pub fn set_states<'a>(&self, states: impl Iterator<Item = &'a str> + Clone) {
        for name in REGISTRATION_STATES {
            let n = states.clone().filter(|s| *s == name).count();
            self.accounts
                .get_or_create(&StateLabel {
                    state: name.to_owned(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "registration_requests",
            "REGISTER requests sent, by account",
            self.requests_total.clone(),
        );
        registry.register(
            "accounts",
            "Accounts by registration state",
            self.accounts.clone(),
        );
    }
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
    /// SIP stack metrics.
    pub sip: std::sync::Arc<SipMetrics>,
    /// Registration metrics.
    pub registration: std::sync::Arc<RegistrationMetrics>,
    /// 1 when the control channel is connected; set at scrape.
    pub redis_connected: Gauge,
    /// Control-channel reconnections; set at scrape from the channel's count.
    pub redis_reconnects: Gauge,
    /// Events lost to a full buffer; set at scrape.
    pub events_dropped: Gauge,
    /// Transitions the SIP core could not queue for the control channel.
    pub core_events_dropped: Counter,
    /// The media shards' counters.
    pub media: crate::media::ShardCounters,
    /// Live media legs; set at scrape.
    pub media_legs: Gauge,
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
        let sip = std::sync::Arc::new(SipMetrics::default());
        sip.register(&mut registry);
        let registration = std::sync::Arc::new(RegistrationMetrics::default());
        registration.register(&mut registry);
        let redis_connected = Gauge::default();
        registry.register(
            "redis_connected",
            "1 when the control channel is connected",
            redis_connected.clone(),
        );
        let redis_reconnects = Gauge::default();
        registry.register(
            "redis_reconnects",
            "Control-channel reconnections since start",
            redis_reconnects.clone(),
        );
        let events_dropped = Gauge::default();
        registry.register(
            "events_dropped",
            "Events lost to a full buffer while Redis was away",
            events_dropped.clone(),
        );
        let core_events_dropped = Counter::default();
        registry.register(
            "core_events_dropped",
            "State transitions dropped because the feed to the control channel was full",
            core_events_dropped.clone(),
        );
        let media = crate::media::ShardCounters::default();
        let media_legs = Gauge::default();
        registry.register(
            "media_packets_received",
            "RTP and RTCP datagrams received on calls' media ports",
            media.received.clone(),
        );
        registry.register(
            "media_packets_sent",
            "RTP and RTCP datagrams sent by the media shards (relayed and generated)",
            media.sent.clone(),
        );
        registry.register(
            "media_send_failed",
            "Media datagrams that could not be sent",
            media.send_failed.clone(),
        );
        registry.register(
            "media_bind_failed",
            "Media ports of calls that could not be bound",
            media.bind_failed.clone(),
        );
        registry.register(
            "media_commands_dropped",
            "Commands to a media shard dropped because its queue was full",
            media.commands_dropped.clone(),
        );
        registry.register(
            "media_events_dropped",
            "Media reports dropped because the SIP core's queue was full",
            media.events_dropped.clone(),
        );
        registry.register(
            "media_packets_lost",
            "RTP packets lost on their way to dialerd (RFC 3550), summed over ended legs",
            media.lost.clone(),
        );
        registry.register(
            "media_packets_generated",
            "RTP packets dialerd generated (silence fill, prompts, DTMF), summed over ended legs",
            media.generated.clone(),
        );
        registry.register(
            "media_jitter_ms",
            "Interarrival jitter of each ended leg that received RTP (RFC 3550 A.8), milliseconds",
            media.jitter_ms.clone(),
        );
        registry.register(
            "media_timeouts",
            "Legs whose peer sent no RTP for media.inactivity_timeout_secs",
            media.timeouts.clone(),
        );
        registry.register(
            "media_legs",
            "Media legs live in the shards (set at scrape from the shards' tables)",
            media_legs.clone(),
        );
        Self {
            media,
            media_legs,
            core_events_dropped,
            redis_connected,
            redis_reconnects,
            events_dropped,
            registration,
            registry,
            http_requests,
            ready,
            heartbeat_age,
            sip,
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
