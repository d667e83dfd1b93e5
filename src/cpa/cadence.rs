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
//! The caller feeds frames in RTP timestamp order and a lost or comfort-noise
//! frame as silence, so time here is the frame count.

/// Samples in a frame (20 ms at 8 kHz).
pub const FRAME: usize = 160;
const FRAME_MS: u32 = 20;

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
    /// Asterisk's `amd.conf` defaults, but three words rather than two
    /// before a machine: a person's "Hello, this is Ann" must not be called a
    /// machine (in the UK a false machine is an abandoned call).
    fn default() -> Self {
        Self {
            initial_silence: 2500,
            greeting: 1500,
            after_greeting_silence: 800,
            total_analysis: 5000,
            min_word: 100,
            between_words: 50,
            max_words: 3,
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
    voice_run: u32,
    silence_run: u32,
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
            // Below any threshold: a greeting from the first frame on is
            // voice.
            floor: f64::from(config.silence_threshold) / 4.0,
            voice_run: 0,
            silence_run: 0,
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
        // (about 1 dB a second), so speech never raises it much.
        self.floor = if level < self.floor {
            level
        } else if level < self.floor * 2.0 {
            self.floor * 0.9 + level * 0.1
        } else {
            self.floor * 1.0023
        };
        let voice = level >= f64::from(self.config.silence_threshold) && level >= self.floor * 4.0;
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
                self.silence_run = 0;
            }
        } else {
            self.silence_run += FRAME_MS;
            if self.silence_run >= c.between_words || !self.in_word {
                if self.in_word {
                    self.last_word_end = Some(now - self.silence_run);
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
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut frames = Vec::new();
        for &(talk, ms) in pattern {
            for _ in 0..ms / FRAME_MS {
                let level = if talk { 5000.0 } else { 60.0 };
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
        assert_eq!(v.words, 4);
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
