//! The relay's tap of a call leg's inbound audio for call progress
//! analysis: RTP payloads in, timed by their RTP timestamps, 20 ms frames
//! out to the [`Analyzer`].
//!
//! Time is the RTP clock: a gap in timestamps (lost packets, DTX, comfort
//! noise) is fed as silence, a packet behind what was fed (late, repeated)
//! only for its part not yet fed. When nothing arrives at all (dead air),
//! silence is fed by the wall clock, [`JITTER`] behind it, so the analysis
//! still decides in time.

use std::time::{Duration, Instant};

use super::g711::Law;
use crate::cpa::analyzer::{AnalysisConfig, Analyzer, FRAME, Report};

/// How far behind the wall clock the analysis may lag before silence is
/// fed for the audio that did not come.
pub const JITTER: Duration = Duration::from_millis(200);
/// The longest gap fed as silence at once.
const MAX_GAP: u64 = 8000 * 10;
const RATE: u64 = 8000;

/// Samples in `d` at 8 kHz.
fn samples_in(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX / RATE) * RATE / 1_000_000
}

/// One leg's analysis and its timing.
#[derive(Debug)]
pub struct Tap {
    analyzer: Analyzer,
    early: bool,
    started: Instant,
    /// The source whose timeline is followed.
    ssrc: Option<u32>,
    /// The RTP timestamp of the analysis's sample 0.
    base_ts: Option<u32>,
    /// Samples fed so far (whole frames plus `partial`).
    fed: u64,
    partial: Vec<i16>,
    /// The callee's first audio, kept for tuning.
    capture: Option<Vec<i16>>,
    capture_limit: usize,
}

impl Tap {
    /// A tap from `now`: the answered call's analysis, or early media's.
    pub fn new(now: Instant, config: AnalysisConfig, answered: bool, capture_ms: u32) -> Tap {
        let capture_limit = usize::try_from(capture_ms).unwrap_or(0) * 8;
        Tap {
            analyzer: if answered {
                Analyzer::answered(config)
            } else {
                Analyzer::early(config)
            },
            early: !answered,
            started: now,
            ssrc: None,
            base_ts: None,
            fed: 0,
            partial: Vec::with_capacity(FRAME),
            capture: (capture_limit > 0).then(|| Vec::with_capacity(capture_limit)),
            capture_limit,
        }
    }

    /// Whether this is early media's analysis (tones only).
    pub fn is_early(&self) -> bool {
        self.early
    }

    /// Whether nothing more will be reported.
    pub fn is_done(&self) -> bool {
        self.analyzer.is_done()
    }

    /// Whether the analysis is done and its capture full: the tap can go.
    pub fn is_finished(&self) -> bool {
        self.is_done()
            && self
                .capture
                .as_ref()
                .is_none_or(|c| c.len() >= self.capture_limit)
    }

    /// The next report.
    pub fn poll_report(&mut self) -> Option<Report> {
        self.analyzer.poll_report()
    }

    /// The captured audio, once (at the end of the analysis).
    pub fn take_capture(&mut self) -> Option<Vec<i16>> {
        self.capture.take().filter(|c| !c.is_empty())
    }

    /// A G.711 payload of source `ssrc` stamped `ts`, arriving at `now`.
    ///
    /// A new source, a jump back beyond the jitter allowance, or a jump
    /// ahead of what the wall clock allows starts a new timeline at the
    /// audio fed so far; a packet a little behind is fed only for its part
    /// not yet fed.
    pub fn on_audio(&mut self, now: Instant, ssrc: u32, ts: u32, payload: &[u8], law: Law) {
        if self.ssrc != Some(ssrc) {
            self.ssrc = Some(ssrc);
            self.base_ts = None;
        }
        let base = *self
            .base_ts
            .get_or_insert_with(|| ts.wrapping_sub(self.fed as u32));
        let offset = ts.wrapping_sub(base);
        let behind = u64::from(base.wrapping_sub(ts));
        let jitter = samples_in(JITTER);
        let wall = samples_in(now.saturating_duration_since(self.started)) + jitter;
        let position = if offset > u32::MAX / 2 {
            if behind <= jitter {
                // Late, from before the start of this timeline.
                return;
            }
            None
        } else {
            Some(u64::from(offset)).filter(|&p| p <= self.fed.max(wall))
        };
        let position = position.unwrap_or_else(|| {
            self.base_ts = Some(ts.wrapping_sub(self.fed as u32));
            self.fed
        });
        if position > self.fed {
            self.silence(position - self.fed);
        }
        let skip = usize::try_from(self.fed.saturating_sub(position)).unwrap_or(usize::MAX);
        for &b in payload.iter().skip(skip) {
            self.sample(law.decode(b));
        }
    }

    /// Feeds silence for audio that is [`JITTER`] overdue by `now`.
    pub fn on_tick(&mut self, now: Instant) {
        let due = samples_in(
            now.saturating_duration_since(self.started)
                .saturating_sub(JITTER),
        );
        if due > self.fed {
            self.silence(due - self.fed);
        }
    }

    /// When silence is next due if nothing arrives.
    pub fn next_tick(&self) -> Option<Instant> {
        if self.is_finished() {
            return None;
        }
        let ahead = Duration::from_micros((self.fed + FRAME as u64) * 1_000_000 / RATE);
        Some(self.started + ahead + JITTER)
    }

    fn silence(&mut self, samples: u64) {
        for _ in 0..samples.min(MAX_GAP) {
            if self.is_finished() {
                return;
            }
            self.sample(0);
        }
        // Beyond a gap's limit the timeline moves on without analysing.
        self.fed += samples.saturating_sub(MAX_GAP);
    }

    fn sample(&mut self, s: i16) {
        self.fed += 1;
        if let Some(c) = self.capture.as_mut()
            && c.len() < self.capture_limit
        {
            c.push(s);
        }
        if self.analyzer.is_done() {
            return;
        }
        self.partial.push(s);
        if self.partial.len() == FRAME {
            self.analyzer.push_frame(&self.partial);
            self.partial.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reports(tap: &mut Tap) -> Vec<Report> {
        std::iter::from_fn(|| tap.poll_report()).collect()
    }

    /// µ-law of a loud "word": alternating full-scale-ish samples.
    fn loud() -> Vec<u8> {
        (0..160)
            .map(|i| Law::Mu.encode(if i % 2 == 0 { 9000 } else { -9000 }))
            .collect()
    }

    #[test]
    fn dead_air_is_fed_as_silence_by_the_wall_clock() {
        let t0 = Instant::now();
        let mut tap = Tap::new(t0, AnalysisConfig::default(), true, 0);
        let mut now = t0;
        let mut out = Vec::new();
        while out.is_empty() && now < t0 + Duration::from_secs(10) {
            now = tap.next_tick().expect("a tick while undecided").max(now);
            tap.on_tick(now);
            out = reports(&mut tap);
        }
        // Asterisk's rule: 2.5 s of initial silence is a machine.
        let Some(Report::Verdict { outcome, at_ms, .. }) = out.first() else {
            panic!("{out:?}");
        };
        assert_eq!(outcome.as_str(), "machine");
        assert_eq!(*at_ms, 2500);
        let late = now.duration_since(t0);
        assert!(late <= Duration::from_millis(2500) + JITTER + Duration::from_millis(40));
    }

    /// When packet `k` of a 20 ms stream from `t0` arrives.
    fn at(t0: Instant, k: u64) -> Instant {
        t0 + Duration::from_millis(20 * k)
    }

    #[test]
    fn timestamp_gaps_are_silence_and_repeats_are_not_fed_twice() {
        let t0 = Instant::now();
        let mut tap = Tap::new(t0, AnalysisConfig::default(), true, 10_000);
        let word = loud();
        // 300 ms of voice, one packet repeated, one lost, then silence by
        // timestamp only: a person.
        let mut ts = 1000u32;
        for k in 0..16 {
            if k != 7 {
                tap.on_audio(at(t0, k), 7, ts, &word, Law::Mu);
            }
            if k == 3 {
                tap.on_audio(at(t0, k), 7, ts, &word, Law::Mu);
            }
            ts = ts.wrapping_add(160);
        }
        let quiet = vec![Law::Mu.silence(); 160];
        for k in 16..76 {
            tap.on_audio(at(t0, k), 7, ts, &quiet, Law::Mu);
            ts = ts.wrapping_add(160);
        }
        let out = reports(&mut tap);
        let Some(Report::Verdict { outcome, at_ms, .. }) = out.first() else {
            panic!("{out:?}");
        };
        assert_eq!(outcome.as_str(), "human");
        // 16 frames of 20 ms, then 800 ms of silence.
        assert_eq!(*at_ms, 320 + 800);
        let capture = tap.take_capture().expect("a capture");
        assert_eq!(capture.len(), 76 * 160);
    }

    #[test]
    fn a_timestamp_wrap_is_not_a_gap() {
        let t0 = Instant::now();
        let mut tap = Tap::new(t0, AnalysisConfig::default(), true, 1000);
        let quiet = vec![Law::Mu.silence(); 160];
        let mut ts = u32::MAX - 320;
        for k in 0..5 {
            tap.on_audio(at(t0, k), 7, ts, &quiet, Law::Mu);
            ts = ts.wrapping_add(160);
        }
        assert_eq!(tap.fed, 800);
    }

    #[test]
    fn a_new_source_or_a_jump_back_or_far_ahead_continues_the_timeline() {
        let t0 = Instant::now();
        let mut tap = Tap::new(t0, AnalysisConfig::default(), true, 0);
        let quiet = vec![Law::Mu.silence(); 160];
        tap.on_audio(at(t0, 0), 7, 50_000, &quiet, Law::Mu);
        tap.on_audio(at(t0, 1), 7, 50_160, &quiet, Law::Mu);
        assert_eq!(tap.fed, 320);
        // Another source (the phone after the PBX's early media), its
        // timestamps far behind: appended, not dropped.
        tap.on_audio(at(t0, 2), 9, 10, &quiet, Law::Mu);
        assert_eq!(tap.fed, 480);
        // A jump back on the same source beyond the jitter allowance.
        let back = 10u32.wrapping_sub(40_000);
        tap.on_audio(at(t0, 3), 9, back, &quiet, Law::Mu);
        assert_eq!(tap.fed, 640);
        // Slightly behind (a late packet): nothing new.
        tap.on_audio(at(t0, 4), 9, back, &quiet, Law::Mu);
        assert_eq!(tap.fed, 640);
        // Five seconds ahead of the wall clock: not five seconds of silence.
        tap.on_audio(at(t0, 4), 9, back.wrapping_add(40_160), &quiet, Law::Mu);
        assert_eq!(tap.fed, 800);
    }
}
