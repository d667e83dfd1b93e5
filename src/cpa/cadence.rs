//! The speech-cadence stage of answering-machine detection (sans-IO): 20 ms
//! frames of 8 kHz linear audio in, from the answer on, a verdict out.
//!
//! The rules follow the spirit of Asterisk's `AMD()`: a frame is voice when
//! its mean absolute amplitude is over both the silence threshold and an
//! adaptive noise floor (four times the quietest recent level); voice runs
//! of at least `min_word` separated by at least `between_words` of silence
//! are words. A person says a short greeting ("Hello?") and waits; a machine
//! talks on. So:
//!
//! - silence for `initial_silence` before any word: `machine` (a machine
//!   that waits, or dead air; Asterisk's choice);
//! - greeting voice adding up to `greeting`, more than `max_words` words, or
//!   one word longer than `max_word`: `machine`;
//! - `after_greeting_silence` of silence after at least one word: `human`;
//! - nothing decided within `total_analysis`: `unknown`.
//!
//! As in Asterisk, a voice run is cut only by `between_words` of silence
//! (a lost frame inside a word does not split it), and voice ends the
//! silence after a greeting, except a lone 20 ms frame (a click, a peak of
//! line noise).
//!
//! The line's noise may be over the silence threshold from the answer on, so
//! the noise floor starts from the first sound heard (half its level, at
//! most half the threshold: steady noise is not voice, a greeting from the
//! first frame on still stands out), rises quickly over the first second of
//! sound and slowly after; frames of digital silence (lost packets, which
//! the caller feeds as zeros) tell nothing about the line and leave it as
//! it is, unless they go on for 100 ms (the far end sends digital silence):
//! then it starts again from the next sound.
//!
//! The caller feeds frames in RTP timestamp order and a lost or comfort-noise
//! frame as silence, so time here is the frame count.

/// Samples in a frame (20 ms at 8 kHz).
pub const FRAME: usize = 160;
const FRAME_MS: u32 = 20;
/// A frame is voice when its level is this many times the noise floor (and
/// over the silence threshold).
const FLOOR_RATIO: f64 = 4.0;
/// Audio (not digital silence) over which the floor learns the line's
/// noise, ms.
const LEARN_MS: u32 = 1000;
/// How fast the floor rises toward louder levels per frame while it learns
/// (about 8.6 dB a second, for noise louder than the first sound suggested;
/// a word still stands out) and afterwards (about 1 dB a second, so speech
/// never raises it much).
const LEARN_RISE: f64 = 1.02;
/// Digital silence this long is the far end's, not lost packets, ms.
const RESTART_MS: u32 = 100;
const RISE: f64 = 1.0023;

/// The rules, in milliseconds where they are times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CadenceConfig {
    /// Silence before the first word that makes a machine.
    pub initial_silence: u32,
    /// Greeting voice that makes a machine.
    pub greeting: u32,
    /// Silence after the greeting that makes a person.
    pub after_greeting_silence: u32,
    /// Longest analysis; then `unknown`.
    pub total_analysis: u32,
    /// Shortest voice run that counts as a word.
    pub min_word: u32,
    /// Shortest silence that separates words.
    pub between_words: u32,
    /// More words than this make a machine.
    pub max_words: u32,
    /// A word longer than this makes a machine.
    pub max_word: u32,
    /// Mean absolute amplitude (linear, of 32,767) under which a frame is
    /// silence whatever the noise floor.
    pub silence_threshold: u32,
}

impl Default for CadenceConfig {
    /// Asterisk's `amd.conf` defaults, but words are separated by 100 ms of
    /// silence rather than 50 (the closure of a stop consonant inside a
    /// phrase, 50 to 100 ms, does not cut it) and more than five words,
    /// rather than two, make a machine: a person's "Good morning, Smith
    /// residence" must not be called a machine (in the UK a false machine is
    /// an abandoned call). A machine talks on and passes five words or the
    /// 1.5 s of greeting a little later. Measured on the labelled corpus of
    /// tests/integration/amd_corpus.rs.
    fn default() -> Self {
        Self {
            initial_silence: 2500,
            greeting: 1500,
            after_greeting_silence: 800,
            total_analysis: 5000,
            min_word: 100,
            between_words: 100,
            max_words: 5,
            max_word: 5000,
            silence_threshold: 256,
        }
    }
}

/// What answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A person.
    Human,
    /// An answering machine or voicemail.
    Machine,
    /// Not decided within the analysis time.
    Unknown,
}

/// Which rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Silence before any word.
    InitialSilence,
    /// The greeting went on too long.
    LongGreeting,
    /// Too many words.
    MaxWords,
    /// One word too long.
    LongWord,
    /// Silence after a short greeting.
    AfterGreetingSilence,
    /// The analysis time ran out.
    TooLong,
}

impl Cause {
    /// The name in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::InitialSilence => "initial_silence",
            Cause::LongGreeting => "long_greeting",
            Cause::MaxWords => "max_words",
            Cause::LongWord => "long_word",
            Cause::AfterGreetingSilence => "after_greeting_silence",
            Cause::TooLong => "too_long",
        }
    }
}

/// The stage's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// What answered.
    pub answer: Answer,
    /// Why.
    pub cause: Cause,
    /// When it was decided, ms after the answer.
    pub at_ms: u32,
    /// Words heard.
    pub words: u32,
    /// Greeting voice heard, ms.
    pub voice_ms: u32,
    /// When the last word ended, ms after the answer (the greeting's end).
    pub greeting_end_ms: Option<u32>,
}

/// The stage of one call.
#[derive(Debug)]
pub struct Cadence {
    config: CadenceConfig,
    frames: u32,
    floor: f64,
    /// Audio heard that was not digital silence, ms (since the floor last
    /// started).
    heard_ms: u32,
    /// Consecutive digital silence, ms.
    digital_silence: u32,
    voice_run: u32,
    /// Silence for the rules: before the first word, the frames that are
    /// not voice; after it, since the last word or voice run.
    silence_run: u32,
    /// Frames that are not voice since the last voice frame, ms.
    gap_run: u32,
    in_word: bool,
    words: u32,
    voice_ms: u32,
    last_word_end: Option<u32>,
    verdict: Option<Verdict>,
    voiced: bool,
}

impl Cadence {
    /// A stage deciding by `config`.
    pub fn new(config: CadenceConfig) -> Cadence {
        Cadence {
            config,
            frames: 0,
            // Until the first sound (which sets it), only the silence
            // threshold counts.
            floor: f64::from(config.silence_threshold) / FLOOR_RATIO,
            heard_ms: 0,
            digital_silence: 0,
            voice_run: 0,
            silence_run: 0,
            gap_run: 0,
            in_word: false,
            words: 0,
            voice_ms: 0,
            last_word_end: None,
            verdict: None,
            voiced: false,
        }
    }

    /// The verdict, once there is one.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
    }

    /// Whether the last frame was voice (the detector keeps following the
    /// noise floor after its verdict).
    pub fn voiced(&self) -> bool {
        self.voiced
    }

    /// The next 20 ms; returns the verdict when this frame decided it.
    pub fn push_frame(&mut self, frame: &[i16]) -> Option<Verdict> {
        let level = frame
            .iter()
            .take(FRAME)
            .map(|&s| f64::from(s).abs())
            .sum::<f64>()
            / FRAME as f64;
        self.frames += 1;
        let now = self.frames * FRAME_MS;
        // The floor follows the quietest level down at once, toward a level
        // just above it quickly (steady line noise), and up slowly otherwise
        // (after it has learned the line), so speech never raises it much.
        // Digital silence (a lost packet) leaves it alone: a floor of zero
        // could never rise again.
        if level == 0.0 {
            // A long digital silence (the far end sends nothing: a gateway
            // between its tones, or before the callee's audio) is not lost
            // packets: the floor starts again from the next sound.
            self.digital_silence += FRAME_MS;
            if self.digital_silence >= RESTART_MS {
                self.heard_ms = 0;
            }
        } else {
            self.digital_silence = 0;
            if self.heard_ms == 0 {
                // The first sound: line noise, or a greeting from the first
                // frame on, which stands out if over twice the threshold.
                self.floor = level.min(f64::from(self.config.silence_threshold)) / 2.0;
            }
            self.heard_ms += FRAME_MS;
            let learning = self.heard_ms <= LEARN_MS;
            self.floor = if level < self.floor {
                level
            } else if level < self.floor * 2.0 {
                self.floor * 0.9 + level * 0.1
            } else if learning {
                self.floor * LEARN_RISE
            } else {
                self.floor * RISE
            };
        }
        let voice =
            level >= f64::from(self.config.silence_threshold) && level >= self.floor * FLOOR_RATIO;
        self.voiced = voice;
        if self.verdict.is_some() {
            return None;
        }
        let c = self.config;
        if voice {
            self.voice_run += FRAME_MS;
            if !self.in_word && self.voice_run >= c.min_word {
                self.in_word = true;
                self.words += 1;
                // The frames of the word so far count as greeting.
                self.voice_ms += self.voice_run - FRAME_MS;
            }
            if self.in_word {
                self.voice_ms += FRAME_MS;
            }
            self.gap_run = 0;
            // Voice in a word ends the silence; after the first word any
            // voice does but a lone frame (a click).
            if self.in_word || (self.words > 0 && self.voice_run > FRAME_MS) {
                self.silence_run = 0;
            }
        } else {
            self.silence_run += FRAME_MS;
            self.gap_run += FRAME_MS;
            // Only a pause between words ends a voice run (Asterisk's
            // rule): a lost frame inside a word does not split it.
            if self.gap_run >= c.between_words {
                if self.in_word {
                    self.last_word_end = Some(now - self.gap_run);
                }
                self.in_word = false;
                self.voice_run = 0;
            }
        }
        let decided = if self.words == 0 && self.silence_run >= c.initial_silence {
            Some((Answer::Machine, Cause::InitialSilence))
        } else if self.words > c.max_words {
            Some((Answer::Machine, Cause::MaxWords))
        } else if self.in_word && self.voice_run >= c.max_word {
            Some((Answer::Machine, Cause::LongWord))
        } else if self.voice_ms >= c.greeting {
            Some((Answer::Machine, Cause::LongGreeting))
        } else if self.words > 0 && !self.in_word && self.silence_run >= c.after_greeting_silence {
            Some((Answer::Human, Cause::AfterGreetingSilence))
        } else if now >= c.total_analysis {
            Some((Answer::Unknown, Cause::TooLong))
        } else {
            None
        };
        self.verdict = decided.map(|(answer, cause)| Verdict {
            answer,
            cause,
            at_ms: now,
            words: self.words,
            voice_ms: self.voice_ms,
            greeting_end_ms: self.last_word_end,
        });
        self.verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ms` of speech-like noise (a "word") or of quiet line noise.
    fn audio(pattern: &[(bool, u32)]) -> Vec<Vec<i16>> {
        let levels: Vec<(f64, u32)> = pattern
            .iter()
            .map(|&(talk, ms)| (if talk { 5000.0 } else { 60.0 }, ms))
            .collect();
        noise(&levels)
    }

    /// `ms` of uniform noise of peak `level` each (0: digital silence, a
    /// lost frame).
    /// The default rules' verdict on `frames`.
    fn verdict_on(frames: &[Vec<i16>]) -> Verdict {
        let mut c = Cadence::new(CadenceConfig::default());
        frames
            .iter()
            .find_map(|f| c.push_frame(f))
            .expect("a verdict")
    }

    fn noise(pattern: &[(f64, u32)]) -> Vec<Vec<i16>> {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut frames = Vec::new();
        for &(level, ms) in pattern {
            for _ in 0..ms / FRAME_MS {
                let frame = (0..FRAME)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (((state % 2001) as f64 / 1000.0 - 1.0) * level) as i16
                    })
                    .collect();
                frames.push(frame);
            }
        }
        frames
    }

    fn decide(pattern: &[(bool, u32)]) -> Option<Verdict> {
        let mut c = Cadence::new(CadenceConfig::default());
        audio(pattern).iter().find_map(|f| c.push_frame(f))
    }

    #[test]
    fn a_person_saying_hello_then_waiting_is_human_800_ms_after_the_word() {
        let v = decide(&[(false, 300), (true, 500), (false, 3000)]).unwrap();
        assert_eq!(
            (v.answer, v.cause),
            (Answer::Human, Cause::AfterGreetingSilence)
        );
        assert_eq!(v.words, 1);
        assert_eq!(v.greeting_end_ms, Some(800));
        assert_eq!(v.at_ms, 800 + 800);
    }

    #[test]
    fn a_person_saying_hello_this_is_ann_is_still_human() {
        let v = decide(&[
            (false, 200),
            (true, 300),
            (false, 200),
            (true, 250),
            (false, 120),
            (true, 300),
            (false, 2000),
        ])
        .unwrap();
        assert_eq!(v.answer, Answer::Human, "{v:?}");
        assert_eq!(v.words, 3);
    }

    #[test]
    fn a_long_greeting_is_a_machine_as_soon_as_it_passes_the_limit() {
        let v = decide(&[
            (false, 200),
            (true, 900),
            (false, 150),
            (true, 2000),
            (false, 1000),
        ])
        .unwrap();
        assert_eq!((v.answer, v.cause), (Answer::Machine, Cause::LongGreeting));
        assert!(v.at_ms <= 200 + 900 + 150 + 700, "{v:?}");
    }

    #[test]
    fn many_short_words_make_a_machine() {
        let mut pattern = vec![(false, 100)];
        for _ in 0..6 {
            pattern.push((true, 200));
            pattern.push((false, 150));
        }
        pattern.push((false, 2000));
        let v = decide(&pattern).unwrap();
        assert_eq!((v.answer, v.cause), (Answer::Machine, Cause::MaxWords));
        assert_eq!(v.words, CadenceConfig::default().max_words + 1);
    }

    #[test]
    fn silence_from_the_answer_on_is_a_machine_at_the_initial_silence_limit() {
        let v = decide(&[(false, 4000)]).unwrap();
        assert_eq!(
            (v.answer, v.cause),
            (Answer::Machine, Cause::InitialSilence)
        );
        assert_eq!(v.at_ms, 2500);
    }

    #[test]
    fn a_hello_from_the_first_frame_on_line_noise_is_still_a_word() {
        let v = decide(&[(true, 400), (false, 2000)]).unwrap();
        assert_eq!((v.answer, v.words), (Answer::Human, 1), "{v:?}");
    }

    #[test]
    fn clicks_shorter_than_a_word_are_not_words() {
        let v = decide(&[
            (false, 500),
            (true, 60),
            (false, 500),
            (true, 40),
            (false, 2000),
        ])
        .unwrap();
        assert_eq!(
            (v.answer, v.cause),
            (Answer::Machine, Cause::InitialSilence)
        );
        assert_eq!(v.words, 0);
    }

    #[test]
    fn line_noise_over_the_silence_threshold_is_learned_and_lost_frames_do_not_unlearn_it() {
        // Noise of mean level 400 (over the threshold of 256) from the
        // answer on, with lost frames, then "Hello" and the noise again.
        let pattern = [
            (800.0, 400),
            (0.0, 20),
            (800.0, 300),
            (5000.0, 500),
            (800.0, 200),
            (0.0, 20),
            (800.0, 3000),
        ];
        let v = verdict_on(&noise(&pattern));
        assert_eq!(
            (v.answer, v.cause, v.words),
            (Answer::Human, Cause::AfterGreetingSilence, 1),
            "{v:?}"
        );
        assert_eq!(v.greeting_end_ms, Some(1220));
    }

    #[test]
    fn bursts_between_digital_silence_each_start_the_floor_again() {
        // A gateway's busy tone: loud bursts, digital silence between them.
        let mut pattern = vec![];
        for _ in 0..5 {
            pattern.push((1500.0, 500));
            pattern.push((0.0, 500));
        }
        let v = verdict_on(&noise(&pattern));
        assert_eq!(
            (v.answer, v.cause),
            (Answer::Machine, Cause::LongGreeting),
            "{v:?}"
        );
    }

    #[test]
    fn a_lost_frame_does_not_split_a_short_word() {
        // "Yes": 80 ms, a frame lost, 80 ms; a word of 160 ms.
        let pattern = [
            (60.0, 500),
            (5000.0, 80),
            (0.0, 20),
            (5000.0, 80),
            (60.0, 3000),
        ];
        let v = verdict_on(&noise(&pattern));
        assert_eq!((v.answer, v.words), (Answer::Human, 1), "{v:?}");
    }

    #[test]
    fn voice_too_short_for_a_word_still_holds_off_the_person_verdict() {
        // A word, then bursts of 60 ms (voice, too short for words) every
        // 400 ms: a greeting going on, not the silence of a person waiting.
        let mut pattern = vec![(false, 200), (true, 400)];
        for _ in 0..6 {
            pattern.push((false, 400));
            pattern.push((true, 60));
        }
        pattern.push((false, 2000));
        let v = decide(&pattern).unwrap();
        assert_eq!(v.answer, Answer::Human, "{v:?}");
        assert!(v.at_ms >= 600 + 6 * 460 + 800, "{v:?}");
    }

    #[test]
    fn nothing_decided_within_the_analysis_time_is_unknown() {
        let config = CadenceConfig {
            greeting: 10_000,
            max_words: 100,
            ..CadenceConfig::default()
        };
        let mut c = Cadence::new(config);
        let mut pattern = vec![];
        for _ in 0..20 {
            pattern.push((true, 300));
            pattern.push((false, 300));
        }
        let v = audio(&pattern)
            .iter()
            .find_map(|f| c.push_frame(f))
            .unwrap();
        assert_eq!((v.answer, v.cause), (Answer::Unknown, Cause::TooLong));
        assert_eq!(v.at_ms, 5000);
    }
}
