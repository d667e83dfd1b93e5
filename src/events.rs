//! The one bounded feed of state transitions from the SIP core to the
//! control channel, which publishes each as an event.
//!
//! Transitions are edges, not snapshots: a state that lasts a millisecond
//! is still reported. When the control channel falls behind and the feed is
//! full, the transition is dropped, counted and logged; the SIP core never
//! waits for it.

use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::registration::AccountStatus;

/// Transitions the feed holds before it drops.
pub const FEED_DEPTH: usize = 4096;

/// A state transition in the SIP core.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreEvent {
    /// An account's registration state changed (or its error did).
    Registration(AccountStatus),
    /// A call changed state.
    Call(crate::call::CallEvent),
    /// A call reported something else (DTMF, media).
    Note(crate::call::CallNote),
    /// A media shard's report about a call's leg.
    Media(crate::media::MediaEvent),
    /// Call progress (`call.amd`, `call.dropped`): the event type, the
    /// call's name and the fields.
    Progress {
        /// The event type.
        kind: &'static str,
        /// The call's name.
        name: std::sync::Arc<str>,
        /// Its fields.
        fields: serde_json::Value,
    },
}

/// A transition and when it happened (Unix milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped {
    /// When.
    pub at_ms: u64,
    /// What.
    pub event: CoreEvent,
}

/// Now, in Unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The SIP core's end of the feed.
#[derive(Debug, Clone)]
pub struct EventSender {
    tx: Option<mpsc::Sender<Stamped>>,
    dropped: Counter,
    last_warning: Option<Instant>,
}

/// The control channel's end of the feed.
pub type EventReceiver = mpsc::Receiver<Stamped>;

/// A feed `depth` transitions deep; `dropped` counts what did not fit.
pub fn feed(depth: usize, dropped: Counter) -> (EventSender, EventReceiver) {
    let (tx, rx) = mpsc::channel(depth.max(1));
    (
        EventSender {
            tx: Some(tx),
            dropped,
            last_warning: None,
        },
        rx,
    )
}

impl EventSender {
    /// A sender nobody listens to (no control channel configured).
    pub fn unheard() -> Self {
        Self {
            tx: None,
            dropped: Counter::default(),
            last_warning: None,
        }
    }

    /// Queues `event` without waiting; a full feed drops it, counted.
    pub fn emit(&mut self, event: CoreEvent) {
        let Some(tx) = &self.tx else {
            return;
        };
        let stamped = Stamped {
            at_ms: unix_ms(),
            event,
        };
        match tx.try_send(stamped) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.inc();
                let now = Instant::now();
                if self
                    .last_warning
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                {
                    self.last_warning = Some(now);
                    tracing::warn!(
                        dropped_total = self.dropped.get(),
                        "event feed to the control channel is full; transition dropped"
                    );
                }
            }
            // The control channel ended; the daemon's supervision reports
            // that, and the status snapshot stays current without it.
            Err(mpsc::error::TrySendError::Closed(_)) => self.tx = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &'static str) -> CoreEvent {
        CoreEvent::Registration(AccountStatus {
            name: "a".into(),
            state,
            registrar: String::new(),
            transport: crate::config::Transport::Udp,
            required: true,
            expires_at_unix_ms: None,
            retry_at_unix_ms: None,
            code: None,
            last_error: None,
            contact: None,
            role: None,
        })
    }

    #[test]
    fn transitions_arrive_in_order_and_overflow_is_counted() {
        let dropped = Counter::default();
        let (mut tx, mut rx) = feed(2, dropped.clone());
        tx.emit(status("registering"));
        tx.emit(status("registered"));
        tx.emit(status("backoff"));
        assert_eq!(dropped.get(), 1);
        assert_eq!(
            rx.try_recv().ok().map(|s| s.event),
            Some(status("registering"))
        );
        assert_eq!(
            rx.try_recv().ok().map(|s| s.event),
            Some(status("registered"))
        );
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_closed_or_absent_listener_is_not_a_drop() {
        let dropped = Counter::default();
        let (mut tx, rx) = feed(1, dropped.clone());
        drop(rx);
        tx.emit(status("registering"));
        EventSender::unheard().emit(status("registered"));
        assert_eq!(dropped.get(), 0);
    }
}
