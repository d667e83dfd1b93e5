//! One call's analysis (sans-IO): the cadence and tone stages together,
//! the verdict, then the end of a machine's greeting.
//!
//! After the answer every 20 ms frame goes to both stages. A fax tone or a
//! SIT decides at once (`fax`, `sit`); a beep before any verdict makes a
//! `machine` whose greeting just ended. Otherwise the cadence stage decides
//! `human`, `machine` or `unknown`. After `machine` the analysis goes on
//! until the greeting ends: a beep (`machine_end_beep`), a long enough
//! silence (`machine_end_silence`) or the time limit (`machine_end_other`).
//!
//! Before the answer (early media) only the tone stage runs: a SIT or a
//! fax tone is reported as a tone and no answer timer starts.

use std::collections::VecDeque;

use super::cadence::{self, Cadence, CadenceConfig};
use super::tones::{ToneConfig, ToneDetector, ToneEvent};

/// Samples in a frame (20 ms at 8 kHz).
pub const FRAME: usize = 160;
const FRAME_MS: u32 = 20;

/// Everything the analysis decides by; every field can be set per call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnalysisConfig {
    /// The cadence rules.
    pub cadence: CadenceConfig,
    /// The tone rules.
    pub tones: ToneConfig,
    /// Silence after a machine's greeting that ends it without a beep, ms.
    pub machine_end_silence: u32,
    /// Longest wait for a machine's greeting to end, ms after the answer.
    pub machine_end_timeout: u32,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        Self {
            cadence: CadenceConfig::default(),
            tones: ToneConfig::default(),
            machine_end_silence: 2500,
            machine_end_timeout: 30_000,
        }
    }
}

/// What answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A person.
    Human,
    /// An answering machine or voicemail.
    Machine,
    /// Not decided in time.
    Unknown,
    /// A fax machine (CED or CNG).
    Fax,
    /// A network announcement (special information tone).
    Sit,
}

impl Outcome {
    /// The name in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Human => "human",
            Outcome::Machine => "machine",
            Outcome::Unknown => "unknown",
            Outcome::Fax => "fax",
            Outcome::Sit => "sit",
        }
    }
}

/// How a machine's greeting ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MachineEnd {
    /// A beep of this frequency (Hz) and length (ms).
    Beep {
        /// Frequency, Hz.
        hz: f64,
        /// Length, ms.
        duration_ms: u32,
    },
    /// Silence after the greeting.
    Silence,
    /// Neither within the time limit.
    Other,
}

impl MachineEnd {
    /// The name in events.
    pub fn as_str(&self) -> &'static str {
        match self {
            MachineEnd::Beep { .. } => "machine_end_beep",
            MachineEnd::Silence => "machine_end_silence",
            MachineEnd::Other => "machine_end_other",
        }
    }
}

/// What the analysis reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Report {
    /// What answered.
    Verdict {
        /// The verdict.
        outcome: Outcome,
        /// Which rule decided (`max_words`, `after_greeting_silence`,
        /// `beep`, `fax_tone`, `sit`, ...).
        cause: &'static str,
        /// When, ms after the answer.
        at_ms: u32,
        /// Words heard.
        words: u32,
        /// Greeting voice heard, ms.
        voice_ms: u32,
        /// When the greeting ended, ms after the answer, if it did.
        greeting_end_ms: Option<u32>,
    },
    /// A machine's greeting ended; a message can be left now.
    MachineEnd {
        /// How.
        end: MachineEnd,
        /// When, ms after the answer.
        at_ms: u32,
    },
    /// A tone heard in early media (before the answer).
    EarlyTone {
        /// `sit`, `fax_ced` or `fax_cng`.
        tone: &'static str,
        /// When it started, ms from the start of early media.
        at_ms: u32,
    },
}

/// The analysis of one call, fed 20 ms frames in RTP order (gaps as
/// silence).
#[derive(Debug)]
pub struct Analyzer {
    config: AnalysisConfig,
    /// `None` before the answer: tones only.
    cadence: Option<Cadence>,
    tones: ToneDetector,
    frames: u32,
    verdict: Option<Outcome>,
    /// Consecutive silence since the machine verdict, ms.
    silence_ms: u32,
    /// A cadence verdict held while a tone sounds (a fax tone or a beep
    /// decides instead, once it ends).
    held: Option<cadence::Verdict>,
    done: bool,
    reports: VecDeque<Report>,
}

impl Analyzer {
    /// The analysis of an answered call, from its first frame.
    pub fn answered(config: AnalysisConfig) -> Analyzer {
        Analyzer {
            cadence: Some(Cadence::new(config.cadence)),
            ..Analyzer::early(config)
        }
    }

    /// The analysis of early media: tones only, never a verdict.
    pub fn early(config: AnalysisConfig) -> Analyzer {
        Analyzer {
            config,
            cadence: None,
            tones: ToneDetector::new(config.tones),
            frames: 0,
            verdict: None,
            silence_ms: 0,
            held: None,
            done: false,
            reports: VecDeque::new(),
        }
    }

    /// Milliseconds of audio analysed.
    pub fn elapsed_ms(&self) -> u32 {
        self.frames * FRAME_MS
    }

    /// Whether nothing more will be reported.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The verdict, once there is one.
    pub fn verdict(&self) -> Option<Outcome> {
        self.verdict
    }

    /// The next report.
    pub fn poll_report(&mut self) -> Option<Report> {
        self.reports.pop_front()
    }

    /// The next 20 ms (160 samples at 8 kHz; fewer are padded).
    pub fn push_frame(&mut self, frame: &[i16]) {
        if self.done {
            return;
        }
        self.frames += 1;
        self.tones.push_frame(frame);
        if self.cadence.is_none() {
            self.early_tones();
            return;
        }
        let now = self.elapsed_ms();
        let decided = self.cadence.as_mut().and_then(|c| c.push_frame(frame));
        let voiced = self.cadence.as_ref().is_some_and(Cadence::voiced);
        // Tones first: a fax or SIT overrides the cadence, a beep ends a
        // greeting.
        while let Some(tone) = self.tones.poll_event() {
            self.on_tone(tone, now);
            if self.done {
                return;
            }
        }
        if self.verdict.is_none()
            && let Some(v) = decided.or(self.held.take())
        {
            if self.tones.tone_running() {
                self.held = Some(v);
            } else {
                self.cadence_verdict(v);
            }
            return;
        }
        if self.verdict == Some(Outcome::Machine) {
            self.silence_ms = if voiced {
                0
            } else {
                self.silence_ms + FRAME_MS
            };
            if self.silence_ms >= self.config.machine_end_silence {
                self.machine_end(MachineEnd::Silence, now);
            } else if now >= self.config.machine_end_timeout {
                self.machine_end(MachineEnd::Other, now);
            }
        }
    }

    fn early_tones(&mut self) {
        while let Some(tone) = self.tones.poll_event() {
            let (tone, at_ms) = match tone {
                ToneEvent::Sit { start_ms, .. } => ("sit", start_ms),
                ToneEvent::FaxCed { start_ms } => ("fax_ced", start_ms),
                ToneEvent::FaxCng { start_ms } => ("fax_cng", start_ms),
                // Ringback and announcements' beeps mean nothing yet.
                ToneEvent::Beep { .. } => continue,
            };
            self.reports.push_back(Report::EarlyTone { tone, at_ms });
        }
    }

    fn on_tone(&mut self, tone: ToneEvent, now: u32) {
        match (tone, self.verdict) {
            (ToneEvent::FaxCed { .. } | ToneEvent::FaxCng { .. }, None) => {
                self.decide(Outcome::Fax, "fax_tone", now, None);
                self.done = true;
            }
            (ToneEvent::Sit { .. }, None) => {
                self.decide(Outcome::Sit, "sit", now, None);
                self.done = true;
            }
            (
                ToneEvent::Beep {
                    hz,
                    start_ms,
                    duration_ms,
                },
                None | Some(Outcome::Machine),
            ) => {
                if self.verdict.is_none() {
                    // A greeting short enough to beat the cadence rules.
                    self.decide(Outcome::Machine, "beep", now, Some(start_ms));
                }
                self.machine_end(MachineEnd::Beep { hz, duration_ms }, now);
            }
            _ => {}
        }
    }

    fn cadence_verdict(&mut self, v: cadence::Verdict) {
        let outcome = match v.answer {
            cadence::Answer::Human => Outcome::Human,
            cadence::Answer::Machine => Outcome::Machine,
            cadence::Answer::Unknown => Outcome::Unknown,
        };
        self.verdict = Some(outcome);
        self.reports.push_back(Report::Verdict {
            outcome,
            cause: v.cause.as_str(),
            at_ms: v.at_ms,
            words: v.words,
            voice_ms: v.voice_ms,
            greeting_end_ms: v.greeting_end_ms,
        });
        // After `machine` the greeting's end is awaited; anything else is
        // final.
        self.done = outcome != Outcome::Machine;
    }

    fn decide(&mut self, outcome: Outcome, cause: &'static str, now: u32, end: Option<u32>) {
        self.verdict = Some(outcome);
        self.reports.push_back(Report::Verdict {
            outcome,
            cause,
            at_ms: now,
            words: 0,
            voice_ms: 0,
            greeting_end_ms: end,
        });
    }

    fn machine_end(&mut self, end: MachineEnd, now: u32) {
        self.reports
            .push_back(Report::MachineEnd { end, at_ms: now });
        self.done = true;
    }
}

#[cfg(test)]
#[path = "analyzer_tests.rs"]
mod tests;
