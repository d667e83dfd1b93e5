//! Daemon phases, signals, and the ordered shutdown steps run under a
//! deadline.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

/// Where the daemon is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Loading and binding; not ready.
    Starting,
    /// Serving.
    Running,
    /// Refusing new work, finishing what exists; not ready.
    Draining,
    /// Shutting down.
    Stopping,
}

/// The current phase, observable by every component.
#[derive(Debug)]
pub struct Lifecycle {
    tx: watch::Sender<Phase>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            tx: watch::Sender::new(Phase::Starting),
        }
    }
}

impl Lifecycle {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.tx.borrow()
    }

    /// A receiver that sees every later phase change.
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.tx.subscribe()
    }

    /// Moves to `Running` from `Starting`.
    pub fn started(&self) {
        self.tx.send_if_modified(|p| {
            let change = *p == Phase::Starting;
            if change {
                *p = Phase::Running;
            }
            change
        });
    }

    /// Moves to `Draining` unless already draining or stopping; returns the
    /// phase after the call.
    pub fn drain(&self) -> Phase {
        self.tx.send_if_modified(|p| {
            let change = matches!(p, Phase::Starting | Phase::Running);
            if change {
                *p = Phase::Draining;
            }
            change
        });
        self.phase()
    }

    /// Moves to `Stopping`.
    pub fn stopping(&self) {
        self.tx.send_replace(Phase::Stopping);
    }
}

type StepFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Ordered shutdown work. Later features add their steps (wait for calls,
/// unREGISTER, release leases) before the server steps.
#[derive(Default)]
pub struct ShutdownSteps {
    steps: Vec<(&'static str, StepFuture)>,
}

/// A shutdown that did not finish in time.
#[derive(Debug, thiserror::Error)]
#[error("shutdown deadline of {deadline:?} passed during step {step:?}")]
pub struct DeadlineExceeded {
    /// The deadline that passed.
    pub deadline: Duration,
    /// The step that was still running.
    pub step: &'static str,
}

impl ShutdownSteps {
    /// Appends a step; steps run one after another in the order added.
    pub fn add(&mut self, name: &'static str, step: impl Future<Output = ()> + Send + 'static) {
        self.steps.push((name, Box::pin(step)));
    }

    /// Names of the steps in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.steps.iter().map(|(n, _)| *n).collect()
    }

    /// Runs every step in order; fails if they take longer than `deadline`
    /// in all.
    pub async fn run(self, deadline: Duration) -> Result<(), DeadlineExceeded> {
        let end = tokio::time::Instant::now() + deadline;
        for (name, step) in self.steps {
            tracing::debug!(step = name, "shutdown step");
            if tokio::time::timeout_at(end, step).await.is_err() {
                return Err(DeadlineExceeded {
                    deadline,
                    step: name,
                });
            }
        }
        Ok(())
    }
}

/// A termination request from the operating system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM (Kubernetes stopping the pod).
    Terminate,
    /// SIGINT (Ctrl-C).
    Interrupt,
}

/// Listens for SIGTERM and SIGINT. Create it early so that no signal sent
/// during start-up kills the process with the default action.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers.
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next signal.
    pub async fn recv(&mut self) -> StopSignal {
        tokio::select! {
            _ = self.term.recv() => StopSignal::Terminate,
            _ = self.int.recv() => StopSignal::Interrupt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn phases_move_forward_only() {
        let l = Lifecycle::default();
        assert_eq!(l.phase(), Phase::Starting);
        l.started();
        assert_eq!(l.phase(), Phase::Running);
        assert_eq!(l.drain(), Phase::Draining);
        l.started();
        assert_eq!(
            l.phase(),
            Phase::Draining,
            "draining never returns to running"
        );
        l.stopping();
        assert_eq!(
            l.drain(),
            Phase::Stopping,
            "stopping is not undone by drain"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn steps_run_in_order_within_deadline() {
        let order = Arc::new(AtomicUsize::new(0));
        let mut steps = ShutdownSteps::default();
        for (i, name) in ["first", "second"].into_iter().enumerate() {
            let order = order.clone();
            steps.add(name, async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert_eq!(order.fetch_add(1, Ordering::SeqCst), i);
            });
        }
        assert_eq!(steps.names(), ["first", "second"]);
        steps.run(Duration::from_secs(1)).await.unwrap();
        assert_eq!(order.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_step_breaks_the_deadline() {
        let mut steps = ShutdownSteps::default();
        steps.add("quick", async {});
        steps.add("stuck", std::future::pending());
        let err = steps.run(Duration::from_secs(3)).await.unwrap_err();
        assert_eq!(err.step, "stuck");
        assert_eq!(err.deadline, Duration::from_secs(3));
    }
}
