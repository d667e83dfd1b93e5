//! Liveness (an event-loop heartbeat) and readiness (named checks).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How often the heartbeat task ticks.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A heartbeat older than this means the event loop is stalled.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(5);

/// Proof that the async runtime keeps running tasks: a task stores the time
/// of its last tick; `/healthz` fails when that tick is stale.
#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    last_tick_ms: AtomicU64,
}

impl Heartbeat {
    /// A heartbeat that counts from `origin`, with a tick at `origin`.
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            last_tick_ms: AtomicU64::new(0),
        }
    }

    /// Records a tick at `now`.
    pub fn tick(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.origin).as_millis();
        self.last_tick_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Time since the last tick.
    pub fn age(&self, now: Instant) -> Duration {
        let last = self.origin + Duration::from_millis(self.last_tick_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }

    /// Whether the last tick is recent enough.
    pub fn is_alive(&self, now: Instant) -> bool {
        self.age(now) < HEARTBEAT_STALE
    }

    /// Ticks every [`HEARTBEAT_INTERVAL`] until the runtime stops.
    pub async fn run(&self) {
        let mut interval = tokio::time::interval(HEARTBEAT_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.tick(Instant::now());
        }
    }
}

/// One readiness condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Name of the condition, e.g. `http_listener`.
    pub name: &'static str,
    /// Whether it holds.
    pub ok: bool,
    /// A short human explanation.
    pub detail: String,
}

/// Named readiness checks; ready means every registered check holds.
#[derive(Debug, Default)]
pub struct Readiness {
    checks: Mutex<BTreeMap<&'static str, Check>>,
}

impl Readiness {
    /// Sets (or adds) a check.
    pub fn set(&self, name: &'static str, ok: bool, detail: impl Into<String>) {
        let check = Check {
            name,
            ok,
            detail: detail.into(),
        };
        self.lock().insert(name, check);
    }

    /// Every check, sorted by name.
    pub fn checks(&self) -> Vec<Check> {
        self.lock().values().cloned().collect()
    }

    /// Whether at least one check exists and all hold.
    pub fn all_ok(&self) -> bool {
        let checks = self.lock();
        !checks.is_empty() && checks.values().all(|c| c.ok)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Check>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_goes_stale_without_ticks() {
        let t0 = Instant::now();
        let hb = Heartbeat::new(t0);
        assert!(hb.is_alive(t0 + Duration::from_secs(1)));
        assert!(!hb.is_alive(t0 + HEARTBEAT_STALE));
        hb.tick(t0 + Duration::from_secs(10));
        assert!(hb.is_alive(t0 + Duration::from_secs(11)));
        assert_eq!(hb.age(t0 + Duration::from_secs(12)), Duration::from_secs(2));
    }

    #[test]
    fn readiness_needs_every_check() {
        let r = Readiness::default();
        assert!(!r.all_ok(), "no checks yet means not ready");
        r.set("config", true, "loaded");
        r.set("http_listener", false, "not bound");
        assert!(!r.all_ok());
        r.set("http_listener", true, "bound");
        assert!(r.all_ok());
        assert_eq!(r.checks().len(), 2);
    }
}
