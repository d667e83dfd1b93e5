//! The tone stage of call progress analysis (sans-IO): 20 ms frames of
//! 8 kHz linear audio in, tone events out.
//!
//! Each frame goes through a bank of Goertzel filters 50 Hz apart from 300
//! to 2,100 Hz (only the five bins around the frequency its zero crossings
//! give, which keeps a frame at a few µs). A frame is a *single tone* when
//! its strongest bin and that
//! bin's stronger neighbour hold most of its power; the tone's frequency is
//! refined by parabolic interpolation over the bin magnitudes. Dual tones a
//! network plays (dial tone 350+440 Hz, ringback 440+480 Hz, busy 480+620
//! Hz) are checked with filters at their exact frequencies and never count
//! as single tones. Runs of single-tone frames at one frequency become
//! events when they end: a voicemail beep (one tone held at least
//! `min_beep`, steady in frequency and level as a machine's tone is and a
//! held vowel is not), a fax CED (2,100 Hz held about a second or more), a fax CNG
//! burst (1,100 Hz for about half a second), and a special information tone
//! (SIT: three tones in the 914-986, 1,371-1,429 and 1,777 Hz bands in a
//! row, ITU-T E.180 / ATIS-0300020).
//!
//! Up to two silent frames inside a tone (lost packets, which the caller
//! feeds as silence) do not cut it: the run goes on if the same tone
//! follows, the lost frames counted in its length.
//!
//! Nothing here knows RTP or time beyond the frame count: the caller decodes
//! G.711, feeds frames in order and treats a lost packet as a frame of
//! silence.

use std::f64::consts::PI;

/// Samples in a frame (20 ms at 8 kHz).
pub const FRAME: usize = 160;
/// Milliseconds per frame.
const FRAME_MS: u32 = 20;
/// Silent frames (lost packets) a tone may span.
const MAX_LOST: u32 = 2;
/// A beep's frequency and power hold within these inside it (Hz, and a
/// ratio: 1.8 dB). Beeps in the corpus of tests/integration/amd_corpus.rs
/// (sine tones under noise 20 dB down, through G.711) hold within 1.1 Hz
/// and 0.4 dB; the held vowels of a high synthetic voice that otherwise
/// pass for beeps drift 7 to 40 Hz and 3.6 to 10 dB.
const MAX_SPREAD_HZ: f64 = 8.0;
const MAX_POWER_RATIO: f64 = 1.5;
/// Lowest and highest bin, Hz, and their spacing.
const LOW_HZ: f64 = 300.0;
const HIGH_HZ: f64 = 2100.0;
const STEP_HZ: f64 = 50.0;
/// The network's dual tones (North American precise tone plan, which the
/// European 425 Hz single tone does not need: it is below no beep band).
const DUAL_TONES: [(f64, f64); 3] = [(350.0, 440.0), (440.0, 480.0), (480.0, 620.0)];

/// What the tone stage reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ToneEvent {
    /// One tone held at least the minimum beep length (a voicemail beep).
    Beep {
        /// Its frequency, Hz.
        hz: f64,
        /// When it started, ms from the first frame.
        start_ms: u32,
        /// How long it lasted, ms.
        duration_ms: u32,
    },
    /// A fax machine's answer tone (CED, 2,100 Hz).
    FaxCed {
        /// When it started, ms from the first frame.
        start_ms: u32,
    },
    /// A calling fax machine's tone (CNG, 1,100 Hz, about 0.5 s).
    FaxCng {
        /// When it started, ms from the first frame.
        start_ms: u32,
    },
    /// A special information tone (the three-tone sequence before a network
    /// announcement: number changed, not in service, congestion, ...).
    Sit {
        /// The three frequencies heard, Hz.
        hz: [f64; 3],
        /// When the first one started, ms from the first frame.
        start_ms: u32,
    },
}

/// How the tone stage decides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ToneConfig {
    /// Frames quieter than this (mean square of linear samples) are silence.
    pub silence_power: f64,
    /// Share of a frame's power its tone must hold (0..1).
    pub tone_share: f64,
    /// A tone drifting more than this between frames is another tone, Hz.
    pub max_drift_hz: f64,
    /// Shortest beep, ms.
    pub min_beep_ms: u32,
}

impl Default for ToneConfig {
    fn default() -> Self {
        Self {
            // About -50 dBm0 for G.711 (full scale 32,767 at +3.17 dBm0).
            silence_power: 3_000.0,
            tone_share: 0.7,
            max_drift_hz: 20.0,
            min_beep_ms: 140,
        }
    }
}

/// Bins computed around the zero-crossing estimate.
const WINDOW: usize = 5;

/// One Goertzel filter's coefficient for `hz` over a frame.
fn coefficient(hz: f64) -> f64 {
    2.0 * (2.0 * PI * hz / 8000.0).cos()
}

/// The power at each of `N` filters' frequencies over the samples,
/// normalised so that a sinusoid of amplitude A at a filter's frequency
/// gives A²/2 (its mean square). One pass: the filters' recurrences are
/// independent, so they run side by side instead of each waiting on its own
/// previous step.
fn goertzel_bank<const N: usize>(samples: &[f64], coefficients: [f64; N]) -> [f64; N] {
    let (mut s1, mut s2) = ([0.0; N], [0.0; N]);
    for &x in samples {
        for ((c, a), b) in coefficients.iter().zip(s1.iter_mut()).zip(s2.iter_mut()) {
            let s = x + c * *a - *b;
            *b = *a;
            *a = s;
        }
    }
    let n = samples.len() as f64;
    let mut out = [0.0; N];
    for (((o, c), a), b) in out.iter_mut().zip(coefficients).zip(s1).zip(s2) {
        *o = 2.0 * (a * a + b * b - c * a * b) / (n * n);
    }
    out
}

/// A run of single-tone frames.
#[derive(Debug, Clone, Copy)]
struct Run {
    start_ms: u32,
    frames: u32,
    hz_sum: f64,
    last_hz: f64,
    /// Silent frames since the tone was last heard: lost frames if it
    /// follows, its end otherwise.
    gap: u32,
    /// The last frame's power (it is inside the tone once another follows).
    last_power: f64,
    /// The lowest and highest frequency and power of the frames inside the
    /// tone (all but its first and last, which may hold only part of it).
    inner_hz: (f64, f64),
    inner_power: (f64, f64),
}

impl Run {
    fn new(start_ms: u32, hz: f64, power: f64) -> Run {
        Run {
            start_ms,
            frames: 1,
            hz_sum: hz,
            last_hz: hz,
            gap: 0,
            last_power: power,
            inner_hz: (f64::INFINITY, f64::NEG_INFINITY),
            inner_power: (f64::INFINITY, f64::NEG_INFINITY),
        }
    }

    /// The next frame of the tone (after the lost frames counted in `gap`).
    fn push(&mut self, hz: f64, power: f64) {
        if self.frames >= 2 {
            // The frame before this one is inside the tone.
            self.inner_hz = (
                self.inner_hz.0.min(self.last_hz),
                self.inner_hz.1.max(self.last_hz),
            );
            self.inner_power = (
                self.inner_power.0.min(self.last_power),
                self.inner_power.1.max(self.last_power),
            );
        }
        // Lost frames count in its length, at its frequency.
        self.frames += self.gap + 1;
        self.hz_sum += self.last_hz * f64::from(self.gap) + hz;
        self.gap = 0;
        self.last_hz = hz;
        self.last_power = power;
    }

    /// Whether the tone held its frequency and level, as a machine's does
    /// and a voice's does not (a voice's pitch and loudness move even on a
    /// held vowel).
    fn steady(&self) -> bool {
        let (low_hz, high_hz) = self.inner_hz;
        let (low_power, high_power) = self.inner_power;
        // Fewer than three frames: nothing inside to judge.
        low_hz > high_hz
            || (high_hz - low_hz <= MAX_SPREAD_HZ && high_power <= low_power * MAX_POWER_RATIO)
    }

    fn hz(&self) -> f64 {
        self.hz_sum / f64::from(self.frames.max(1))
    }

    fn duration_ms(&self) -> u32 {
        self.frames * FRAME_MS
    }
}

/// A finished tone, kept to find a SIT's three segments.
#[derive(Debug, Clone, Copy)]
struct Segment {
    hz: f64,
    start_ms: u32,
    end_ms: u32,
}

/// The tone stage of one call.
#[derive(Debug)]
pub struct ToneDetector {
    config: ToneConfig,
    bins: Vec<(f64, f64)>,
    /// The coefficients of the dual tones' frequencies, in pairs.
    duals: [f64; 6],
    frames: u32,
    run: Option<Run>,
    segments: Vec<Segment>,
    /// A beep that could be a SIT's first or second tone: reported once no
    /// next tone follows it.
    pending_beep: Option<ToneEvent>,
    events: Vec<ToneEvent>,
    samples: Vec<f64>,
}

impl ToneDetector {
    /// A detector deciding as `config` says.
    pub fn new(config: ToneConfig) -> ToneDetector {
        let count = ((HIGH_HZ - LOW_HZ) / STEP_HZ) as usize + 1;
        let bins = (0..count)
            .map(|i| {
                let hz = LOW_HZ + STEP_HZ * i as f64;
                (hz, coefficient(hz))
            })
            .collect();
        let mut duals = [0.0; 6];
        for (pair, &(a, b)) in duals.chunks_exact_mut(2).zip(DUAL_TONES.iter()) {
            pair.copy_from_slice(&[coefficient(a), coefficient(b)]);
        }
        ToneDetector {
            config,
            bins,
            duals,
            frames: 0,
            run: None,
            segments: Vec::new(),
            pending_beep: None,
            events: Vec::new(),
            samples: Vec::with_capacity(FRAME),
        }
    }

    /// Milliseconds of audio taken so far.
    pub fn elapsed_ms(&self) -> u32 {
        self.frames * FRAME_MS
    }

    /// The next 20 ms (160 samples; fewer are padded with silence).
    pub fn push_frame(&mut self, frame: &[i16]) {
        self.samples.clear();
        self.samples
            .extend(frame.iter().take(FRAME).map(|&s| f64::from(s)));
        self.samples.resize(FRAME, 0.0);
        let power = self.samples.iter().map(|x| x * x).sum::<f64>() / self.samples.len() as f64;
        let silent = power < self.config.silence_power;
        let tone = if silent {
            None
        } else {
            self.single_tone(power)
        };
        let now_ms = self.elapsed_ms();
        self.frames += 1;
        match (tone, self.run.as_mut()) {
            (Some(hz), Some(run)) if (hz - run.last_hz).abs() <= self.config.max_drift_hz => {
                run.push(hz, power);
            }
            (None, Some(run)) if silent && run.gap < MAX_LOST && run.frames >= 2 => run.gap += 1,
            (tone, run) => {
                let end = now_ms - run.map_or(0, |r| r.gap * FRAME_MS);
                self.end_run(end);
                self.run = tone.map(|hz| Run::new(now_ms, hz, power));
            }
        }
        // A SIT's next tone follows within 60 ms; past that, a held beep
        // was a beep.
        let last_end = self.segments.last().map_or(0, |s| s.end_ms);
        if self.run.is_none() && now_ms >= last_end + 80 {
            self.events.extend(self.pending_beep.take());
        }
    }

    /// Whether a single tone is sounding now (its kind is known once it
    /// ends).
    pub fn tone_running(&self) -> bool {
        self.run.is_some_and(|r| r.frames >= 2)
    }

    /// Ends the analysis: a tone still running is judged as it stands.
    pub fn finish(&mut self) {
        let now = self.elapsed_ms();
        let end = now - self.run.map_or(0, |r| r.gap * FRAME_MS);
        self.end_run(end);
        self.events.extend(self.pending_beep.take());
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ToneEvent> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    /// The frequency of the frame's single tone, if it is one; `power` is
    /// the frame's (over the silence power).
    fn single_tone(&self, power: f64) -> Option<f64> {
        let samples = &self.samples;
        // Zero crossings estimate a tone's frequency (to within a bin or
        // two at 20 dB SNR): only the bins around it are computed, and the
        // dual-tone checks only where the network's dual tones lie.
        let crossings = samples
            .iter()
            .zip(samples.iter().skip(1))
            .filter(|(a, b)| (**a < 0.0) != (**b < 0.0))
            .count();
        let estimate = crossings as f64 * 8000.0 / (2.0 * FRAME as f64);
        if !(LOW_HZ - 3.0 * STEP_HZ..=HIGH_HZ + 3.0 * STEP_HZ).contains(&estimate) {
            return None;
        }
        if estimate < 800.0 {
            let duals = goertzel_bank(samples, self.duals);
            if duals
                .chunks_exact(2)
                .any(|pair| pair.iter().all(|&p| p > power * 0.2))
            {
                return None;
            }
        }
        let center = ((estimate - LOW_HZ) / STEP_HZ).round().max(0.0) as usize;
        let first = center.saturating_sub(WINDOW / 2);
        // The window's bins; those past the bank's end get a zero
        // coefficient and are not looked at.
        let mut coefficients = [0.0; WINDOW];
        for (slot, &(_, c)) in coefficients.iter_mut().zip(self.bins.iter().skip(first)) {
            *slot = c;
        }
        let in_bank = self.bins.len().saturating_sub(first).min(WINDOW);
        let window = goertzel_bank(samples, coefficients);
        let powers = window.get(..in_bank)?;
        let (w, &peak) = powers
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))?;
        let k = first + w;
        let left = w
            .checked_sub(1)
            .and_then(|i| powers.get(i))
            .copied()
            .unwrap_or(0.0);
        let right = powers.get(w + 1).copied().unwrap_or(0.0);
        if (peak + left.max(right)) < power * self.config.tone_share {
            return None;
        }
        // Parabolic interpolation over the magnitudes.
        let (ml, mc, mr) = (left.sqrt(), peak.sqrt(), right.sqrt());
        let denominator = ml - 2.0 * mc + mr;
        let delta = if denominator.abs() > f64::EPSILON {
            (0.5 * (ml - mr) / denominator).clamp(-0.5, 0.5)
        } else {
            0.0
        };
        let hz = self.bins.get(k)?.0 + delta * STEP_HZ;
        Some(hz)
    }

    /// Judges the run that ended at `now_ms`.
    fn end_run(&mut self, now_ms: u32) {
        let Some(run) = self.run.take() else {
            return;
        };
        let hz = run.hz();
        let duration = run.duration_ms();
        // Tones shorter than two frames are not kept, not even for a SIT.
        if run.frames < 2 {
            return;
        }
        self.segments.push(Segment {
            hz,
            start_ms: run.start_ms,
            end_ms: now_ms,
        });
        if self.segments.len() > 3 {
            self.segments.remove(0);
        }
        if let Some(sit) = self.sit() {
            self.events.push(sit);
            self.segments.clear();
            self.pending_beep = None;
            return;
        }
        // A held beep is decided by the tone after it: the next tone of a
        // SIT keeps it from being a beep, anything else reports it.
        let continues = match self.segments.as_slice() {
            [.., prev, this] => continues_sit(prev, this),
            _ => false,
        };
        let held = self.pending_beep.take();
        if !continues {
            self.events.extend(held);
        }
        let event = if (hz - 2100.0).abs() <= 30.0 && duration >= 1000 {
            Some(ToneEvent::FaxCed {
                start_ms: run.start_ms,
            })
        } else if (hz - 1100.0).abs() <= 30.0 && (400..=700).contains(&duration) {
            Some(ToneEvent::FaxCng {
                start_ms: run.start_ms,
            })
        } else if duration >= self.config.min_beep_ms && run.steady() {
            Some(ToneEvent::Beep {
                hz,
                start_ms: run.start_ms,
                duration_ms: duration,
            })
        } else {
            None
        };
        if event.is_some() && in_sit_band(hz) && (200..=460).contains(&duration) {
            // It may be the start of a SIT: wait for what follows.
            self.pending_beep = event;
            return;
        }
        self.events.extend(event);
    }

    /// The last three segments as a SIT, if they are one.
    fn sit(&self) -> Option<ToneEvent> {
        let [a, b, c] = <[Segment; 3]>::try_from(self.segments.as_slice()).ok()?;
        let in_bands = [a.hz, b.hz, c.hz]
            .iter()
            .zip(SIT_BANDS)
            .all(|(hz, (low, high))| (low..=high).contains(hz));
        let lengths_ok = [a, b, c]
            .iter()
            .all(|s| (200..=460).contains(&(s.end_ms - s.start_ms)));
        let gaps_ok =
            b.start_ms.saturating_sub(a.end_ms) <= 60 && c.start_ms.saturating_sub(b.end_ms) <= 60;
        (in_bands && lengths_ok && gaps_ok).then_some(ToneEvent::Sit {
            hz: [a.hz, b.hz, c.hz],
            start_ms: a.start_ms,
        })
    }
}

/// The SIT bands, Hz: the first, second and third tone.
const SIT_BANDS: [(f64, f64); 3] = [(900.0, 1000.0), (1355.0, 1445.0), (1760.0, 1795.0)];

/// Which SIT band `hz` lies in.
fn sit_band(hz: f64) -> Option<usize> {
    SIT_BANDS
        .iter()
        .position(|&(low, high)| (low..=high).contains(&hz))
}

/// Whether `hz` lies in one of the SIT bands (such a tone may be the start
/// of a SIT).
fn in_sit_band(hz: f64) -> bool {
    sit_band(hz).is_some()
}

/// Whether `this` can be the SIT tone after `prev`.
fn continues_sit(prev: &Segment, this: &Segment) -> bool {
    matches!((sit_band(prev.hz), sit_band(this.hz)), (Some(a), Some(b)) if b == a + 1)
        && this.start_ms.saturating_sub(prev.end_ms) <= 60
}

#[cfg(test)]
#[path = "tones_tests.rs"]
mod tests;
