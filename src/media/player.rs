//! Audio sources for prompts and test tones, producing G.711 frames.
//!
//! A [`Clip`] is a prompt decoded once from a WAV file into 8 kHz mono
//! linear samples and shared; a [`Tone`] computes one or two sine waves
//! with a cadence. A [`Source`] plays either (or silence) into frames of
//! any length, encoded in µ-law or A-law, without allocating.

use std::sync::Arc;

use crate::media::g711::Law;

/// The sample rate of every source: G.711's 8 kHz.
pub const SAMPLE_RATE: u32 = 8000;

/// Samples per millisecond at [`SAMPLE_RATE`].
const SAMPLES_PER_MS: u64 = 8;

/// WAVE format tags accepted.
const FORMAT_PCM: u16 = 1;
const FORMAT_ALAW: u16 = 6;
const FORMAT_MULAW: u16 = 7;

/// Why a WAV file cannot be played.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    /// It does not start with `RIFF`.
    #[error("not a RIFF file")]
    NotRiff,
    /// A RIFF file of another form than `WAVE`.
    #[error("a RIFF file, but not WAVE")]
    NotWave,
    /// No `fmt ` chunk.
    #[error("WAVE file without a fmt chunk")]
    NoFmt,
    /// No `data` chunk.
    #[error("WAVE file without a data chunk")]
    NoData,
    /// Anything but mono 8,000 Hz 16-bit PCM, A-law or µ-law.
    #[error(
        "unsupported WAVE format (tag {format_tag:#06x}, {channels} channels, \
         {sample_rate} Hz, {bits} bits): need mono 8000 Hz 16-bit PCM, \
         8-bit A-law or 8-bit µ-law"
    )]
    UnsupportedFormat {
        /// The format tag: 1 PCM, 6 A-law, 7 µ-law, 0xFFFE extensible...
        format_tag: u16,
        /// Channels.
        channels: u16,
        /// Samples per second.
        sample_rate: u32,
        /// Bits per sample.
        bits: u16,
    },
    /// A chunk runs past the end of the file, or the fmt chunk is short.
    #[error("WAVE file truncated")]
    Truncated,
}

/// A prompt: linear 8 kHz mono samples, shared between the calls that
/// play it.
#[derive(Debug, Clone)]
pub struct Clip {
    samples: Arc<[i16]>,
}

/// A WAV file of `samples`: mono, 8,000 Hz, 16-bit PCM.
pub fn wav_bytes(samples: &[i16]) -> Vec<u8> {
    let data = u32::try_from(samples.len() * 2).unwrap_or(u32::MAX - 36);
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&16_000u32.to_le_bytes()); // bytes a second
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

impl Clip {
    /// Decodes a WAV file: RIFF/WAVE with its chunks in any order
    /// (unknown ones skipped, odd sizes padded), mono, 8,000 Hz, in 16-bit
    /// little-endian PCM (format 1), 8-bit A-law (6) or 8-bit µ-law (7).
    /// WAVE_FORMAT_EXTENSIBLE (0xFFFE) is refused as unsupported. Chunks
    /// after the first `fmt ` and `data` are not read; a trailing odd byte
    /// of 16-bit data is ignored.
    pub fn from_wav(bytes: &[u8]) -> Result<Clip, WavError> {
        if !bytes.starts_with(b"RIFF") {
            return Err(WavError::NotRiff);
        }
        let Some((&[_, _, _, _, _, _, _, _, w0, w1, w2, w3], mut rest)) =
            bytes.split_first_chunk::<12>()
        else {
            return Err(WavError::Truncated);
        };
        if &[w0, w1, w2, w3] != b"WAVE" {
            return Err(WavError::NotWave);
        }
        // The RIFF size is not trusted: chunks are read up to the end of
        // the bytes, until both needed ones are found.
        let mut fmt = None;
        let mut data = None;
        while fmt.is_none() || data.is_none() {
            if rest.is_empty() {
                break;
            }
            let Some((&[i0, i1, i2, i3, s0, s1, s2, s3], body)) = rest.split_first_chunk::<8>()
            else {
                return Err(WavError::Truncated);
            };
            let size = usize::try_from(u32::from_le_bytes([s0, s1, s2, s3]))
                .map_err(|_| WavError::Truncated)?;
            if size > body.len() {
                return Err(WavError::Truncated);
            }
            let (content, after) = body.split_at(size);
            match &[i0, i1, i2, i3] {
                b"fmt " => {
                    fmt.get_or_insert(content);
                }
                b"data" => {
                    data.get_or_insert(content);
                }
                _ => {}
            }
            // A chunk of odd size is followed by a pad byte.
            rest = if size % 2 == 1 {
                after.get(1..).unwrap_or_default()
            } else {
                after
            };
        }
        let fmt = fmt.ok_or(WavError::NoFmt)?;
        let &[t0, t1, c0, c1, r0, r1, r2, r3, _, _, _, _, _, _, b0, b1] =
            fmt.first_chunk::<16>().ok_or(WavError::Truncated)?;
        let format_tag = u16::from_le_bytes([t0, t1]);
        let channels = u16::from_le_bytes([c0, c1]);
        let sample_rate = u32::from_le_bytes([r0, r1, r2, r3]);
        let bits = u16::from_le_bytes([b0, b1]);
        let data = data.ok_or(WavError::NoData)?;
        let samples: Arc<[i16]> = match (format_tag, channels, sample_rate, bits) {
            (FORMAT_PCM, 1, SAMPLE_RATE, 16) => data
                .as_chunks::<2>()
                .0
                .iter()
                .map(|&b| i16::from_le_bytes(b))
                .collect(),
            (FORMAT_ALAW, 1, SAMPLE_RATE, 8) => data.iter().map(|&b| Law::A.decode(b)).collect(),
            (FORMAT_MULAW, 1, SAMPLE_RATE, 8) => data.iter().map(|&b| Law::Mu.decode(b)).collect(),
            _ => {
                return Err(WavError::UnsupportedFormat {
                    format_tag,
                    channels,
                    sample_rate,
                    bits,
                });
            }
        };
        Ok(Clip { samples })
    }

    /// A clip of linear 8 kHz mono samples.
    pub fn from_samples(samples: impl Into<Arc<[i16]>>) -> Clip {
        Clip {
            samples: samples.into(),
        }
    }

    /// The linear samples.
    pub fn samples(&self) -> &[i16] {
        &self.samples
    }

    /// The length in milliseconds, rounded down.
    pub fn duration_ms(&self) -> u64 {
        u64::try_from(self.samples.len()).unwrap_or(u64::MAX) / SAMPLES_PER_MS
    }
}

/// The level of a full-scale sine in G.711: +3.14 dBm0 for µ-law (G.711
/// and ANSI T1.107's digital milliwatt: a 0 dBm0 sine peaks 3.14 dB below
/// full scale). A-law's +3.17 dBm0 is within 0.03 dB of it, so both laws
/// use this one.
#[expect(
    clippy::approx_constant,
    reason = "+3.14 dBm0 is G.711's full-scale level, not π"
)]
const FULL_SCALE_DBM0: f64 = 3.14;

/// A test or call-progress tone: one or two sine waves, on and off.
#[derive(Debug, Clone)]
pub struct Tone {
    /// The frequencies in Hz; only the first `count` are used.
    freqs: [f64; 2],
    count: usize,
    /// Peak amplitude of each frequency, in the 16-bit scale.
    amplitude: f64,
    /// Samples of tone, then of silence, per cycle; no silence means the
    /// tone is continuous.
    on: u64,
    off: u64,
    /// Samples in all, or forever.
    total: Option<u64>,
}

impl Tone {
    /// A tone of one or two frequencies (Hz; any beyond two are ignored,
    /// none is silence), `on_ms` of tone then `off_ms` of silence,
    /// repeating (`off_ms` 0 = continuous), each frequency at
    /// `level_dbm0` (e.g. -13.0), for `total_ms` (`None` = forever).
    ///
    /// The peak amplitude is 32,768 × 10^((level − 3.14) / 20): 0 dBm0 is
    /// about 22,800, -13 dBm0 about 5,100. Sums beyond full scale clip.
    pub fn new(
        freqs: &[f32],
        level_dbm0: f32,
        on_ms: u32,
        off_ms: u32,
        total_ms: Option<u64>,
    ) -> Tone {
        let mut kept = [0.0; 2];
        let mut count = 0;
        for (slot, &f) in kept.iter_mut().zip(freqs) {
            *slot = f64::from(f);
            count += 1;
        }
        Tone {
            freqs: kept,
            count,
            amplitude: 32_768.0 * 10f64.powf((f64::from(level_dbm0) - FULL_SCALE_DBM0) / 20.0),
            on: u64::from(on_ms) * SAMPLES_PER_MS,
            off: u64::from(off_ms) * SAMPLES_PER_MS,
            total: total_ms.map(|ms| ms.saturating_mul(SAMPLES_PER_MS)),
        }
    }

    /// Whether sample `n` is past the end.
    fn is_over(&self, n: u64) -> bool {
        self.total.is_some_and(|total| n >= total)
    }

    /// Sample `n` from the start. Each burst starts at phase 0.
    fn sample(&self, n: u64) -> i16 {
        if self.is_over(n) {
            return 0;
        }
        let n = if self.off == 0 {
            n
        } else {
            let within = n % (self.on + self.off);
            if within >= self.on {
                return 0;
            }
            within
        };
        // Exact in f64 for any n a call can reach.
        let t = n as f64 / f64::from(SAMPLE_RATE);
        let freqs = self.freqs.get(..self.count).unwrap_or_default();
        let sum: f64 = freqs
            .iter()
            .map(|f| (std::f64::consts::TAU * (f * t).fract()).sin())
            .sum();
        // A float-to-int cast saturates (and NaN gives 0).
        (sum * self.amplitude).round() as i16
    }
}

/// What a [`Source`] plays.
#[derive(Debug, Clone)]
enum Kind {
    Clip {
        clip: Clip,
        /// The next sample to play.
        position: usize,
        loops: bool,
    },
    Tone {
        tone: Tone,
        /// The next sample to play.
        position: u64,
    },
    Silence,
}

/// Something to play into a call: a clip, a tone or silence, with its
/// position.
#[derive(Debug, Clone)]
pub struct Source {
    kind: Kind,
}

impl Source {
    /// Plays `clip` from the start, once or looping.
    pub fn clip(clip: Clip, loops: bool) -> Source {
        Source {
            kind: Kind::Clip {
                clip,
                position: 0,
                loops,
            },
        }
    }

    /// Plays `tone` from the start.
    pub fn tone(tone: Tone) -> Source {
        Source {
            kind: Kind::Tone { tone, position: 0 },
        }
    }

    /// Silence, forever.
    pub fn silence() -> Source {
        Source {
            kind: Kind::Silence,
        }
    }

    /// Fills `out` with the next `out.len()` samples encoded in `law`;
    /// returns false once the source is finished (the rest of `out` is
    /// silence then). All of `out` is written either way, so a frame the
    /// source finished in is still worth sending. No allocation.
    pub fn fill(&mut self, out: &mut [u8], law: Law) -> bool {
        let silence = law.silence();
        match &mut self.kind {
            Kind::Clip {
                clip,
                position,
                loops,
            } => {
                let samples = clip.samples();
                for slot in out.iter_mut() {
                    if *position >= samples.len() && *loops {
                        *position = 0;
                    }
                    *slot = match samples.get(*position) {
                        Some(&s) => {
                            *position += 1;
                            law.encode(s)
                        }
                        None => silence,
                    };
                }
            }
            Kind::Tone { tone, position } => {
                for slot in out.iter_mut() {
                    *slot = if tone.is_over(*position) {
                        silence
                    } else {
                        law.encode(tone.sample(*position))
                    };
                    *position = position.saturating_add(1);
                }
            }
            Kind::Silence => out.fill(silence),
        }
        !self.finished()
    }

    /// Whether everything has been played: a clip played once to its end
    /// (an empty clip at once, even looping), a tone past its total;
    /// silence never finishes.
    pub fn finished(&self) -> bool {
        match &self.kind {
            Kind::Clip {
                clip,
                position,
                loops,
            } => clip.samples.is_empty() || (!loops && *position >= clip.samples.len()),
            Kind::Tone { tone, position } => tone.is_over(*position),
            Kind::Silence => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::g711;

    /// A canonical 44-byte-header WAV file.
    fn wav(format_tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
        let block_align = channels * bits / 8;
        let mut w = Vec::new();
        w.extend_from_slice(b"RIFF");
        w.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        w.extend_from_slice(b"WAVE");
        w.extend_from_slice(b"fmt ");
        w.extend_from_slice(&16u32.to_le_bytes());
        w.extend_from_slice(&format_tag.to_le_bytes());
        w.extend_from_slice(&channels.to_le_bytes());
        w.extend_from_slice(&rate.to_le_bytes());
        w.extend_from_slice(&(rate * u32::from(block_align)).to_le_bytes());
        w.extend_from_slice(&block_align.to_le_bytes());
        w.extend_from_slice(&bits.to_le_bytes());
        w.extend_from_slice(b"data");
        w.extend_from_slice(&(data.len() as u32).to_le_bytes());
        w.extend_from_slice(data);
        assert_eq!(w.len(), 44 + data.len());
        w
    }

    fn chunk(id: &[u8; 4], content: &[u8]) -> Vec<u8> {
        let mut c = id.to_vec();
        c.extend_from_slice(&(content.len() as u32).to_le_bytes());
        c.extend_from_slice(content);
        if content.len() % 2 == 1 {
            c.push(0);
        }
        c
    }

    fn riff(chunks: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = chunks.concat();
        let mut w = b"RIFF".to_vec();
        w.extend_from_slice(&(4 + body.len() as u32).to_le_bytes());
        w.extend_from_slice(b"WAVE");
        w.extend_from_slice(&body);
        w
    }

    fn fmt(format_tag: u16, channels: u16, rate: u32, bits: u16) -> Vec<u8> {
        // The 44-byte file's fmt chunk, taken from `wav`.
        wav(format_tag, channels, rate, bits, &[])[12..36].to_vec()
    }

    #[test]
    fn pcm_16_parses() {
        let samples = [0i16, 1000, -1000, i16::MAX, i16::MIN, 1];
        let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let clip = Clip::from_wav(&wav(1, 1, 8000, 16, &data)).unwrap();
        assert_eq!(clip.samples(), samples);
    }

    #[test]
    fn a_law_parses() {
        let clip = Clip::from_wav(&wav(6, 1, 8000, 8, &[0xD5, 0x55, 0xAA, 0x2A])).unwrap();
        assert_eq!(clip.samples(), [8, -8, 32_256, -32_256]);
    }

    #[test]
    fn mu_law_parses() {
        let clip = Clip::from_wav(&wav(7, 1, 8000, 8, &[0xFF, 0x7F, 0x80, 0x00])).unwrap();
        assert_eq!(clip.samples(), [0, 0, 32_124, -32_124]);
    }

    #[test]
    fn an_odd_byte_of_16_bit_data_is_ignored() {
        let clip = Clip::from_wav(&wav(1, 1, 8000, 16, &[1, 0, 2, 0, 3])).unwrap();
        assert_eq!(clip.samples(), [1, 2]);
    }

    #[test]
    fn chunks_come_in_any_order_and_unknown_ones_are_skipped() {
        let w = riff(&[
            chunk(b"LIST", b"odd"),
            chunk(b"data", &[0xFF, 0x80, 0x00]),
            chunk(b"fact", &[3, 0, 0, 0]),
            fmt(7, 1, 8000, 8),
        ]);
        let clip = Clip::from_wav(&w).unwrap();
        assert_eq!(clip.samples(), [0, 32_124, -32_124]);
        // Anything after both needed chunks is not read, even if broken.
        let mut w = riff(&[fmt(6, 1, 8000, 8), chunk(b"data", &[0xD5])]);
        w.extend_from_slice(b"junk\xFF\xFF\xFF\x7F");
        assert_eq!(Clip::from_wav(&w).unwrap().samples(), [8]);
    }

    #[test]
    fn a_longer_fmt_chunk_is_fine() {
        let mut f = fmt(1, 1, 8000, 16);
        f[4] = 18;
        f.extend_from_slice(&[0, 0]);
        let w = riff(&[f, chunk(b"data", &[0x10, 0x00])]);
        assert_eq!(Clip::from_wav(&w).unwrap().samples(), [16]);
    }

    #[test]
    fn duration() {
        let clip = Clip::from_wav(&wav(7, 1, 8000, 8, &[0xFF; 8000])).unwrap();
        assert_eq!(clip.duration_ms(), 1000);
        assert_eq!(Clip::from_samples(vec![0; 160]).duration_ms(), 20);
        assert_eq!(Clip::from_samples(vec![0; 167]).duration_ms(), 20);
        assert_eq!(Clip::from_samples(Vec::new()).duration_ms(), 0);
    }

    #[test]
    fn bad_files_give_the_right_error() {
        let good = wav(1, 1, 8000, 16, &[0, 0]);
        assert_eq!(Clip::from_wav(b"").unwrap_err(), WavError::NotRiff);
        assert_eq!(Clip::from_wav(b"RIF").unwrap_err(), WavError::NotRiff);
        let mut rifx = good.clone();
        rifx[3] = b'X';
        assert_eq!(Clip::from_wav(&rifx).unwrap_err(), WavError::NotRiff);
        assert_eq!(
            Clip::from_wav(b"RIFF\x04\0\0\0WAV").unwrap_err(),
            WavError::Truncated
        );
        let mut avi = good.clone();
        avi[8..12].copy_from_slice(b"AVI ");
        assert_eq!(Clip::from_wav(&avi).unwrap_err(), WavError::NotWave);

        assert_eq!(
            Clip::from_wav(&riff(&[chunk(b"data", &[0, 0])])).unwrap_err(),
            WavError::NoFmt
        );
        assert_eq!(
            Clip::from_wav(&riff(&[fmt(1, 1, 8000, 16)])).unwrap_err(),
            WavError::NoData
        );
        assert_eq!(Clip::from_wav(&riff(&[])).unwrap_err(), WavError::NoFmt);

        // A data chunk longer than the file.
        assert_eq!(
            Clip::from_wav(&good[..good.len() - 1]).unwrap_err(),
            WavError::Truncated
        );
        // Cut inside a chunk header.
        assert_eq!(
            Clip::from_wav(&good[..40]).unwrap_err(),
            WavError::Truncated
        );
        // A fmt chunk too short to hold the format.
        let short_fmt = riff(&[chunk(b"fmt ", &[1, 0, 1, 0]), chunk(b"data", &[0, 0])]);
        assert_eq!(Clip::from_wav(&short_fmt).unwrap_err(), WavError::Truncated);
    }

    #[test]
    fn unsupported_formats_are_named() {
        let cases = [
            (1u16, 2u16, 8000u32, 16u16),
            (1, 1, 16_000, 16),
            (1, 1, 8000, 8),
            (1, 1, 8000, 24),
            (3, 1, 8000, 32),
            (6, 1, 8000, 16),
            (7, 2, 8000, 8),
            (0xFFFE, 1, 8000, 16),
        ];
        for (format_tag, channels, sample_rate, bits) in cases {
            let err =
                Clip::from_wav(&wav(format_tag, channels, sample_rate, bits, &[0; 4])).unwrap_err();
            assert_eq!(
                err,
                WavError::UnsupportedFormat {
                    format_tag,
                    channels,
                    sample_rate,
                    bits
                }
            );
        }
        let message = WavError::UnsupportedFormat {
            format_tag: 0xFFFE,
            channels: 2,
            sample_rate: 44_100,
            bits: 16,
        }
        .to_string();
        assert!(message.contains("0xfffe"), "{message}");
        assert!(message.contains("44100 Hz"), "{message}");
    }

    fn zero_crossings(frame: &[u8], law: Law) -> usize {
        frame
            .windows(2)
            .filter(|w| (law.decode(w[0]) >= 0) != (law.decode(w[1]) >= 0))
            .count()
    }

    fn rms_db(frame: &[u8], law: Law) -> f64 {
        let energy: f64 = frame
            .iter()
            .map(|&b| f64::from(law.decode(b)).powi(2))
            .sum();
        10.0 * (energy / frame.len() as f64).log10()
    }

    #[test]
    fn a_1_khz_tone_crosses_zero_40_times_per_20_ms() {
        for law in [Law::Mu, Law::A] {
            let mut source = Source::tone(Tone::new(&[1000.0], -13.0, 0, 0, None));
            let mut frame = [0u8; 160];
            for _ in 0..50 {
                assert!(source.fill(&mut frame, law));
                let crossings = zero_crossings(&frame, law);
                assert!((38..=42).contains(&crossings), "{law:?}: {crossings}");
            }
            assert!(!source.finished());
        }
    }

    #[test]
    fn a_tone_keeps_its_frequency_a_day_in() {
        // Crossings over one second of a frequency that is not a divisor
        // of 8,000 (2 per cycle), a day into a continuous tone.
        let day = 24 * 3600 * u64::from(SAMPLE_RATE);
        let mut source = Source {
            kind: Kind::Tone {
                tone: Tone::new(&[1004.0], -10.0, 0, 0, None),
                position: day,
            },
        };
        let mut second = vec![0u8; 8000];
        assert!(source.fill(&mut second, Law::Mu));
        let crossings = zero_crossings(&second, Law::Mu);
        assert!((2006..=2010).contains(&crossings), "{crossings}");
    }

    #[test]
    fn the_tone_level_follows_dbm0() {
        // A sine's power is amplitude² / 2.
        let expected = |dbm0: f64| {
            let amplitude = 32_768.0 * 10f64.powf((dbm0 - FULL_SCALE_DBM0) / 20.0);
            10.0 * (amplitude * amplitude / 2.0).log10()
        };
        for law in [Law::Mu, Law::A] {
            for dbm0 in [0.0f32, -10.0, -13.0, -20.0] {
                let mut source = Source::tone(Tone::new(&[1000.0], dbm0, 0, 0, None));
                let mut frame = [0u8; 800];
                source.fill(&mut frame, law);
                let db = rms_db(&frame, law);
                let want = expected(f64::from(dbm0));
                assert!(
                    (db - want).abs() < 0.3,
                    "{law:?} {dbm0} dBm0: {db} vs {want}"
                );
            }
        }
        // 0 dBm0 peaks near 22,800.
        let mut source = Source::tone(Tone::new(&[1000.0], 0.0, 0, 0, None));
        let mut frame = [0u8; 160];
        source.fill(&mut frame, Law::Mu);
        let peak = frame
            .iter()
            .map(|&b| g711::ulaw_to_linear(b))
            .max()
            .unwrap();
        assert!((21_500..=23_500).contains(&peak), "{peak}");
    }

    #[test]
    fn a_dual_tone_sums_both_frequencies() {
        // North American dial tone: 350 + 440 Hz at -13 dBm0 each.
        let mut source = Source::tone(Tone::new(&[350.0, 440.0, 9999.0], -13.0, 0, 0, None));
        let mut frame = [0u8; 8000];
        source.fill(&mut frame, Law::Mu);
        let single = {
            let mut s = Source::tone(Tone::new(&[350.0], -13.0, 0, 0, None));
            let mut f = [0u8; 8000];
            s.fill(&mut f, Law::Mu);
            rms_db(&f, Law::Mu)
        };
        // Two uncorrelated sines: twice the power.
        let db = rms_db(&frame, Law::Mu);
        assert!((db - single - 3.01).abs() < 0.3, "{db} vs {single}");
        // The beat of 90 Hz: 2 × 350..440 crossings; well below 9999 Hz.
        let crossings = zero_crossings(&frame, Law::Mu);
        assert!((700..=900).contains(&crossings), "{crossings}");
    }

    #[test]
    fn a_tone_with_no_frequency_is_silence() {
        let mut source = Source::tone(Tone::new(&[], 0.0, 0, 0, Some(40)));
        let mut frame = [0u8; 160];
        assert!(source.fill(&mut frame, Law::A));
        assert!(frame.iter().all(|&b| b == Law::A.silence()));
    }

    #[test]
    fn a_tone_follows_its_cadence_and_ends() {
        // 100 ms on, 50 ms off, for 400 ms: on, off, on, off, on (100).
        let mut source = Source::tone(Tone::new(&[425.0], -13.0, 100, 50, Some(400)));
        let mut played = Vec::new();
        let mut frame = [0u8; 160];
        let mut frames = 0;
        while source.fill(&mut frame, Law::Mu) {
            played.extend_from_slice(&frame);
            frames += 1;
            assert!(frames < 100);
        }
        played.extend_from_slice(&frame);
        assert_eq!(frames, 19);
        assert!(source.finished());
        let silent = |range: std::ops::Range<usize>| {
            played[range]
                .iter()
                .all(|&b| g711::ulaw_to_linear(b).abs() <= 8)
        };
        let sounding = |range: std::ops::Range<usize>| {
            played[range]
                .iter()
                .filter(|&&b| g711::ulaw_to_linear(b).abs() > 1000)
                .count()
                > 100
        };
        assert!(sounding(0..800));
        assert!(silent(800..1200));
        assert!(sounding(1200..2000));
        assert!(silent(2000..2400));
        assert!(sounding(2400..3200));
        assert!(silent(3200..played.len()));
        // Each burst starts at phase 0.
        assert_eq!(played[1200..1210], played[0..10]);
        // Finished: silence from now on.
        frame.fill(0);
        assert!(!source.fill(&mut frame, Law::Mu));
        assert!(frame.iter().all(|&b| b == 0xFF));
    }

    #[test]
    fn a_tone_ending_mid_frame_fills_the_rest_with_silence() {
        let mut source = Source::tone(Tone::new(&[1000.0], -13.0, 0, 0, Some(10)));
        let mut frame = [0u8; 160];
        assert!(!source.fill(&mut frame, Law::A));
        assert!(frame[..80].iter().any(|&b| b != 0xD5));
        assert!(frame[80..].iter().all(|&b| b == 0xD5));
    }

    #[test]
    fn a_clip_ends_after_its_samples() {
        let samples: Vec<i16> = (0..400).map(|n| n * 50 - 10_000).collect();
        let clip = Clip::from_samples(samples.clone());
        let mut source = Source::clip(clip, false);
        let mut frame = [0u8; 160];
        assert!(source.fill(&mut frame, Law::Mu));
        let expected: Vec<u8> = samples[..160].iter().map(|&s| Law::Mu.encode(s)).collect();
        assert_eq!(frame[..], expected[..]);
        assert!(source.fill(&mut frame, Law::Mu));
        assert!(!source.finished());
        // The last 80 samples, then silence.
        assert!(!source.fill(&mut frame, Law::Mu));
        let expected: Vec<u8> = samples[320..].iter().map(|&s| Law::Mu.encode(s)).collect();
        assert_eq!(frame[..80], expected[..]);
        assert!(frame[80..].iter().all(|&b| b == 0xFF));
        assert!(source.finished());
        assert!(!source.fill(&mut frame, Law::A));
        assert!(frame.iter().all(|&b| b == 0xD5));
    }

    #[test]
    fn a_clip_ending_on_a_frame_boundary_is_finished_with_that_frame() {
        let mut source = Source::clip(Clip::from_samples(vec![1000; 320]), false);
        let mut frame = [0u8; 160];
        assert!(source.fill(&mut frame, Law::Mu));
        assert!(!source.fill(&mut frame, Law::Mu));
        assert!(frame.iter().all(|&b| b == Law::Mu.encode(1000)));
    }

    #[test]
    fn a_looping_clip_does_not_end() {
        let samples: Vec<i16> = (0..100).map(|n| n * 300 - 15_000).collect();
        let mut source = Source::clip(Clip::from_samples(samples.clone()), true);
        let mut played = Vec::new();
        let mut frame = [0u8; 160];
        for _ in 0..100 {
            assert!(source.fill(&mut frame, Law::A));
            played.extend_from_slice(&frame);
        }
        assert!(!source.finished());
        for (n, &b) in played.iter().enumerate() {
            assert_eq!(b, Law::A.encode(samples[n % 100]), "{n}");
        }
    }

    #[test]
    fn an_empty_clip_is_finished_at_once_even_looping() {
        for loops in [false, true] {
            let mut source = Source::clip(Clip::from_samples(Vec::new()), loops);
            assert!(source.finished());
            let mut frame = [0u8; 160];
            assert!(!source.fill(&mut frame, Law::Mu));
            assert!(frame.iter().all(|&b| b == 0xFF));
        }
    }

    #[test]
    fn silence_never_ends() {
        let mut source = Source::silence();
        let mut frame = [0u8; 160];
        for law in [Law::Mu, Law::A] {
            assert!(source.fill(&mut frame, law));
            assert!(frame.iter().all(|&b| b == law.silence()));
        }
        assert!(!source.finished());
    }

    #[test]
    fn a_clip_is_shared_not_copied() {
        let clip = Clip::from_samples(vec![1, 2, 3]);
        let a = Source::clip(clip.clone(), false);
        let b = Source::clip(clip.clone(), true);
        assert!(std::ptr::eq(clip.samples(), clip.clone().samples()));
        drop((a, b));
    }
}
