//! Call progress of outbound calls (sans-IO): what the SIP core does with
//! the analysis's reports (connect the agent after `human`, hang up on a
//! machine or leave it a message, end fax and SIT calls), the abandon
//! guard, and each call's disposition. Inputs come with `now`; actions and
//! events come out; every stage short of settled has a deadline.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::call::{CallId, Disposition, EndCause, Ended};
use crate::cpa::analyzer::{AnalysisConfig, MachineEnd, Outcome, Report};
use crate::media::agent_conn::AgentSpec;
use crate::media::player::Source;

/// How long past its limit an analysis may stay silent before it is
/// treated as `unknown` (no audio path at all).
const ANALYSIS_GRACE: Duration = Duration::from_secs(2);
/// The guard acts this much before its limit, so the recording is heard
/// within it (the shard's next frame, the network).
const GUARD_MARGIN: Duration = Duration::from_millis(100);
/// Longest prompt (safe-harbor recording, machine message) awaited.
const PROMPT_LIMIT: Duration = Duration::from_secs(120);

/// When the agent is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// At once; the verdict is an event.
    Async,
    /// Only after `human` (or `unknown`).
    Sync,
}

/// What to do when a machine answers.
#[derive(Debug, Clone)]
pub enum OnMachine {
    /// Hang up at once.
    Hangup,
    /// Play this message after the greeting's end, then hang up.
    Prompt(Box<Source>),
    /// Connect the agent anyway.
    Bridge,
}

/// Answering-machine detection for one call.
#[derive(Debug, Clone)]
pub struct AmdPlan {
    /// When the agent is connected.
    pub mode: Mode,
    /// What to do on `machine`.
    pub on_machine: OnMachine,
    /// The rules.
    pub config: AnalysisConfig,
    /// How much of the callee's audio to capture, ms.
    pub capture_ms: u32,
}

/// The abandon guard of one call.
#[derive(Debug, Clone)]
pub struct GuardPlan {
    /// The agent must be connected within this of the greeting's end.
    pub within: Duration,
    /// Played when it is not; `None`: the call is only hung up.
    pub safe_harbor: Option<Box<Source>>,
}

/// What an outbound call asked for.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Answering-machine detection, if on.
    pub amd: Option<AmdPlan>,
    /// The abandon guard, if the call names an agent.
    pub guard: Option<GuardPlan>,
    /// The agent connected after `human` (sync mode).
    pub held_agent: Option<Box<AgentSpec>>,
}

/// What the SIP core must do.
#[derive(Debug)]
pub enum Action {
    /// Start (or replace) the analysis of the call's inbound audio.
    Analyse {
        /// The call.
        call: CallId,
        /// Its rules, whether it is answered, the capture length.
        analysis: (AnalysisConfig, bool, u32),
    },
    /// Connect the call's agent.
    Attach {
        /// The call.
        call: CallId,
        /// The agent.
        agent: Box<AgentSpec>,
    },
    /// Stop the call's agent stream.
    StopAgent {
        /// The call.
        call: CallId,
    },
    /// Play to the callee.
    Play {
        /// The call.
        call: CallId,
        /// What.
        source: Box<Source>,
    },
    /// Hang up.
    End {
        /// The call.
        call: CallId,
        /// Why.
        cause: EndCause,
    },
    /// Publish.
    Event(ProgressEvent),
}

/// What the analysis found, for the control channel (`call.amd`,
/// `call.dropped`).
#[derive(Debug, Clone, PartialEq)]
pub enum ProgressEvent {
    /// The verdict.
    Verdict {
        /// The call's name.
        name: Arc<str>,
        /// What answered.
        outcome: Outcome,
        /// The rule that decided.
        cause: &'static str,
        /// The answer.
        answered_at: Instant,
        /// The decision.
        decided_at: Instant,
        /// The greeting's end, if known.
        greeting_end_at: Option<Instant>,
        /// Words heard.
        words: u32,
        /// Greeting voice, ms.
        voice_ms: u32,
    },
    /// A machine's greeting ended.
    MachineEnd {
        /// The call's name.
        name: Arc<str>,
        /// How.
        end: MachineEnd,
        /// When.
        at: Instant,
    },
    /// A tone in early media.
    EarlyTone {
        /// The call's name.
        name: Arc<str>,
        /// `sit`, `fax_ced` or `fax_cng`.
        tone: &'static str,
    },
    /// The abandon guard dropped the call.
    Dropped {
        /// The call's name.
        name: Arc<str>,
        /// The answer.
        answered_at: Instant,
        /// The greeting's end.
        greeting_end_at: Instant,
        /// The safe-harbor recording's start (none without one).
        recording_at: Option<Instant>,
        /// When the agent connected, if it did before the drop.
        connected_at: Option<Instant>,
    },
}

impl ProgressEvent {
    /// The event's type, call name and fields on the control channel;
    /// instants become Unix ms by `now` = `unix_now`.
    pub fn wire(&self, now: Instant, unix_now: u64) -> (&'static str, Arc<str>, serde_json::Value) {
        let unix = |at: Instant| {
            let back = u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(0);
            unix_now.saturating_sub(back)
        };
        let after = |at: Instant, from: Instant| {
            u64::try_from(at.saturating_duration_since(from).as_millis()).unwrap_or(u64::MAX)
        };
        match self {
            ProgressEvent::Verdict {
                name,
                outcome,
                cause,
                answered_at,
                decided_at,
                greeting_end_at,
                words,
                voice_ms,
            } => (
                "call.amd",
                name.clone(),
                serde_json::json!({
                    "result": outcome.as_str(), "cause": cause,
                    "answered_ms": unix(*answered_at), "decided_ms": unix(*decided_at),
                    "decision_after_answer_ms": after(*decided_at, *answered_at),
                    "greeting_end_ms": greeting_end_at.map(unix),
                    "words": words, "voice_ms": voice_ms,
                }),
            ),
            ProgressEvent::MachineEnd { name, end, at } => {
                let mut fields = serde_json::json!({"result": end.as_str(), "at_ms": unix(*at)});
                if let (MachineEnd::Beep { hz, duration_ms }, Some(m)) =
                    (end, fields.as_object_mut())
                {
                    m.insert("beep_hz".into(), serde_json::json!(hz.round()));
                    m.insert("beep_ms".into(), serde_json::json!(duration_ms));
                }
                ("call.amd", name.clone(), fields)
            }
            ProgressEvent::EarlyTone { name, tone } => (
                "call.amd",
                name.clone(),
                serde_json::json!({"result": "early_tone", "tone": tone}),
            ),
            ProgressEvent::Dropped {
                name,
                answered_at,
                greeting_end_at,
                recording_at,
                connected_at,
            } => (
                "call.dropped",
                name.clone(),
                serde_json::json!({
                    "answered_ms": unix(*answered_at), "greeting_end_ms": unix(*greeting_end_at),
                    "recording_ms": recording_at.map(unix), "connected_ms": connected_at.map(unix),
                }),
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Not answered yet.
    Ringing,
    /// Answered, the verdict awaited.
    Analysing,
    /// A person: the agent awaited until the deadline.
    Guarding,
    /// A machine: its greeting's end awaited (to leave a message).
    AwaitingMachineEnd,
    /// A prompt plays; then the call ends with this cause.
    Playing(EndCause),
    /// Nothing more to do.
    Settled,
}

#[derive(Debug)]
struct Entry {
    name: Arc<str>,
    plan: Plan,
    stage: Stage,
    deadline: Option<Instant>,
    answered_at: Option<Instant>,
    greeting_end_at: Option<Instant>,
    connected_at: Option<Instant>,
    outcome: Option<Outcome>,
    early_sit: bool,
    dropped: bool,
}

/// The progress of every outbound call that asked for analysis or a guard.
#[derive(Debug, Default)]
pub struct Progress {
    calls: HashMap<CallId, Entry>,
    deadlines: BTreeSet<(Instant, CallId)>,
}

impl Progress {
    /// Calls tracked.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Tracks a placed call.
    pub fn track(&mut self, call: CallId, name: Arc<str>, plan: Plan) {
        self.calls.insert(
            call,
            Entry {
                name,
                plan,
                stage: Stage::Ringing,
                deadline: None,
                answered_at: None,
                greeting_end_at: None,
                connected_at: None,
                outcome: None,
                early_sit: false,
                dropped: false,
            },
        );
    }

    /// Whether `call` is tracked.
    pub fn tracks(&self, call: CallId) -> bool {
        self.calls.contains_key(&call)
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Early media began: its tones are analysed.
    pub fn early_media(&mut self, call: CallId) -> Vec<Action> {
        let Some(e) = self.calls.get(&call) else {
            return Vec::new();
        };
        match (&e.plan.amd, e.stage) {
            (Some(amd), Stage::Ringing) => vec![Action::Analyse {
                call,
                analysis: (amd.config, false, 0),
            }],
            _ => Vec::new(),
        }
    }

    /// The call was answered.
    pub fn answered(&mut self, now: Instant, call: CallId) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(e) = self.calls.get_mut(&call) else {
            return out;
        };
        if e.stage != Stage::Ringing {
            return out;
        }
        e.answered_at = Some(now);
        match &e.plan.amd {
            Some(amd) => {
                let limit = Duration::from_millis(u64::from(amd.config.cadence.total_analysis));
                out.push(Action::Analyse {
                    call,
                    analysis: (amd.config, true, amd.capture_ms),
                });
                self.set_stage(call, Stage::Analysing, Some(now + limit + ANALYSIS_GRACE));
            }
            // Without analysis the greeting's end is not known: the guard
            // counts from the answer.
            None => self.person(now, call, now, &mut out),
        }
        out
    }

    /// The call's agent stream started.
    pub fn agent_started(&mut self, now: Instant, call: CallId) {
        let Some(e) = self.calls.get_mut(&call) else {
            return;
        };
        e.connected_at.get_or_insert(now);
        if e.stage == Stage::Guarding {
            self.set_stage(call, Stage::Settled, None);
        }
    }

    /// A prompt played to the callee finished.
    pub fn play_done(&mut self, call: CallId) -> Vec<Action> {
        match self.calls.get(&call).map(|e| e.stage) {
            Some(Stage::Playing(cause)) => {
                self.set_stage(call, Stage::Settled, None);
                vec![Action::End { call, cause }]
            }
            _ => Vec::new(),
        }
    }

    /// The analysis reported.
    pub fn report(&mut self, now: Instant, call: CallId, report: Report) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(e) = self.calls.get_mut(&call) else {
            return out;
        };
        match report {
            Report::EarlyTone { tone, .. } => {
                e.early_sit |= tone == "sit";
                out.push(Action::Event(ProgressEvent::EarlyTone {
                    name: e.name.clone(),
                    tone,
                }));
            }
            Report::Verdict {
                outcome,
                cause,
                words,
                voice_ms,
                greeting_end_ms,
                ..
            } if e.stage == Stage::Analysing => {
                let answered_at = e.answered_at.unwrap_or(now);
                let greeting_end_at = greeting_end_ms
                    .map(|ms| (answered_at + Duration::from_millis(u64::from(ms))).min(now));
                e.outcome = Some(outcome);
                e.greeting_end_at = greeting_end_at;
                out.push(Action::Event(ProgressEvent::Verdict {
                    name: e.name.clone(),
                    outcome,
                    cause,
                    answered_at,
                    decided_at: now,
                    greeting_end_at,
                    words,
                    voice_ms,
                }));
                // The guard counts from the last voice: a person is decided
                // `after_greeting_silence` after it (short sounds after the
                // last word included), an `unknown` at the decision.
                let quiet = e
                    .plan
                    .amd
                    .as_ref()
                    .map_or(0, |a| u64::from(a.config.cadence.after_greeting_silence));
                let last_voice = match outcome {
                    Outcome::Human => {
                        let by_rule = now.checked_sub(Duration::from_millis(quiet));
                        greeting_end_at.max(by_rule).unwrap_or(now)
                    }
                    _ => now,
                };
                self.decided(now, call, outcome, last_voice, &mut out);
            }
            Report::MachineEnd { end, .. } => {
                out.push(Action::Event(ProgressEvent::MachineEnd {
                    name: e.name.clone(),
                    end,
                    at: now,
                }));
                if e.stage == Stage::AwaitingMachineEnd {
                    self.leave_message(now, call, &mut out);
                }
            }
            Report::Verdict { outcome, .. } => {
                tracing::debug!(call = %e.name, outcome = outcome.as_str(), "a verdict after the call's analysis deadline; ignored");
            }
        }
        out
    }

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(&(at, call)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(e) = self.calls.get_mut(&call) else {
                continue;
            };
            if e.deadline != Some(at) {
                continue;
            }
            e.deadline = None;
            match e.stage {
                Stage::Analysing => {
                    // No verdict came: no audio reached the analysis.
                    tracing::info!(call = %e.name, "no analysis verdict in time; treated as unknown");
                    e.outcome = Some(Outcome::Unknown);
                    out.push(Action::Event(ProgressEvent::Verdict {
                        name: e.name.clone(),
                        outcome: Outcome::Unknown,
                        cause: "no_verdict",
                        answered_at: e.answered_at.unwrap_or(now),
                        decided_at: now,
                        greeting_end_at: None,
                        words: 0,
                        voice_ms: 0,
                    }));
                    self.decided(now, call, Outcome::Unknown, now, &mut out);
                }
                Stage::Guarding => self.drop_call(now, call, &mut out),
                Stage::AwaitingMachineEnd => self.leave_message(now, call, &mut out),
                Stage::Playing(cause) => {
                    self.set_stage(call, Stage::Settled, None);
                    out.push(Action::End { call, cause });
                }
                Stage::Ringing | Stage::Settled => {}
            }
        }
        out
    }

    /// The call ended: its disposition (`None` when it is not tracked).
    pub fn finish(&mut self, call: CallId, ended: &Ended, answered: bool) -> Option<Disposition> {
        let e = self.calls.remove(&call)?;
        if let Some(at) = e.deadline {
            self.deadlines.remove(&(at, call));
        }
        Some(if e.dropped {
            Disposition::Dropped
        } else if answered {
            match e.outcome {
                Some(Outcome::Human) => Disposition::Human,
                Some(Outcome::Machine) => Disposition::Machine,
                Some(Outcome::Fax) => Disposition::Fax,
                Some(Outcome::Sit) => Disposition::InvalidNumber,
                Some(Outcome::Unknown) | None => Disposition::Answered,
            }
        } else if e.early_sit {
            Disposition::InvalidNumber
        } else {
            Disposition::unanswered(ended)
        })
    }

    fn set_stage(&mut self, call: CallId, stage: Stage, deadline: Option<Instant>) {
        let Some(e) = self.calls.get_mut(&call) else {
            return;
        };
        if let Some(old) = e.deadline.take() {
            self.deadlines.remove(&(old, call));
        }
        e.stage = stage;
        e.deadline = deadline;
        if let Some(at) = deadline {
            self.deadlines.insert((at, call));
        }
    }

    fn decided(
        &mut self,
        now: Instant,
        call: CallId,
        outcome: Outcome,
        greeting_end: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(e) = self.calls.get_mut(&call) else {
            return;
        };
        match outcome {
            Outcome::Human | Outcome::Unknown => self.person(now, call, greeting_end, out),
            Outcome::Machine => match e.plan.amd.as_ref().map(|a| &a.on_machine) {
                Some(OnMachine::Prompt(_)) => {
                    let timeout = e
                        .plan
                        .amd
                        .as_ref()
                        .map_or(0, |a| a.config.machine_end_timeout);
                    let answered = e.answered_at.unwrap_or(now);
                    let at = answered + Duration::from_millis(u64::from(timeout)) + ANALYSIS_GRACE;
                    self.set_stage(call, Stage::AwaitingMachineEnd, Some(at.max(now)));
                }
                Some(OnMachine::Bridge) => {
                    if let Some(agent) = e.plan.held_agent.take() {
                        out.push(Action::Attach { call, agent });
                    }
                    self.set_stage(call, Stage::Settled, None);
                }
                Some(OnMachine::Hangup) | None => {
                    self.set_stage(call, Stage::Settled, None);
                    out.push(Action::End {
                        call,
                        cause: EndCause::Machine,
                    });
                }
            },
            Outcome::Fax | Outcome::Sit => {
                self.set_stage(call, Stage::Settled, None);
                let cause = if outcome == Outcome::Fax {
                    EndCause::Fax
                } else {
                    EndCause::Sit
                };
                out.push(Action::End { call, cause });
            }
        }
    }

    /// A person (or nobody can tell): connect the agent, and guard the
    /// time it takes from the greeting's end.
    fn person(&mut self, now: Instant, call: CallId, greeting_end: Instant, out: &mut Vec<Action>) {
        let Some(e) = self.calls.get_mut(&call) else {
            return;
        };
        e.greeting_end_at.get_or_insert(greeting_end);
        if let Some(agent) = e.plan.held_agent.take() {
            out.push(Action::Attach { call, agent });
        }
        match &e.plan.guard {
            Some(guard) if e.connected_at.is_none() => {
                let at = (greeting_end + guard.within.saturating_sub(GUARD_MARGIN)).max(now);
                self.set_stage(call, Stage::Guarding, Some(at));
            }
            _ => self.set_stage(call, Stage::Settled, None),
        }
    }

    /// The abandon guard's deadline passed: safe-harbor recording, then
    /// hang up.
    fn drop_call(&mut self, now: Instant, call: CallId, out: &mut Vec<Action>) {
        let Some(e) = self.calls.get_mut(&call) else {
            return;
        };
        e.dropped = true;
        let recording = e.plan.guard.as_mut().and_then(|g| g.safe_harbor.take());
        tracing::info!(call = %e.name, recording = recording.is_some(), "agent not connected in time; the call is dropped");
        out.push(Action::StopAgent { call });
        out.push(Action::Event(ProgressEvent::Dropped {
            name: e.name.clone(),
            answered_at: e.answered_at.unwrap_or(now),
            greeting_end_at: e.greeting_end_at.unwrap_or(now),
            recording_at: recording.is_some().then_some(now),
            connected_at: e.connected_at,
        }));
        self.play_then_end(now, call, recording, EndCause::Dropped, out);
    }

    /// Plays `source`, then ends the call with `cause`; at once without one.
    fn play_then_end(
        &mut self,
        now: Instant,
        call: CallId,
        source: Option<Box<Source>>,
        cause: EndCause,
        out: &mut Vec<Action>,
    ) {
        match source {
            Some(source) => {
                out.push(Action::Play { call, source });
                self.set_stage(call, Stage::Playing(cause), Some(now + PROMPT_LIMIT));
            }
            None => {
                self.set_stage(call, Stage::Settled, None);
                out.push(Action::End { call, cause });
            }
        }
    }

    /// The machine's greeting ended (or the wait did): the message.
    fn leave_message(&mut self, now: Instant, call: CallId, out: &mut Vec<Action>) {
        let Some(e) = self.calls.get_mut(&call) else {
            return;
        };
        let prompt = match e.plan.amd.as_mut().map(|a| &mut a.on_machine) {
            Some(OnMachine::Prompt(p)) => Some(p.clone()),
            _ => None,
        };
        self.play_then_end(now, call, prompt, EndCause::Machine, out);
    }
}

#[cfg(test)]
#[path = "progress_tests.rs"]
mod tests;
