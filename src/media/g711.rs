//! G.711 µ-law and A-law (ITU-T G.711), on 16-bit linear samples.
//!
//! The encoders take the 16-bit sample and keep its top 14 (µ-law) or
//! 13 (A-law) bits, as G.711 specifies them: µ-law codes the magnitude
//! (bias 0x84 in the 16-bit scale), A-law the one's complement of a
//! negative sample, with its even bits inverted; the decoders return the
//! middle of each quantization interval, scaled back to 16 bits, so µ-law
//! spans ±32,124 and A-law ±32,256. The µ-law ↔ A-law conversions go
//! through linear, by 256-entry tables computed at compile time.

/// A G.711 companding law.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Law {
    /// µ-law (PCMU, RTP payload type 0).
    Mu,
    /// A-law (PCMA, RTP payload type 8).
    A,
}

impl Law {
    /// The code of a zero sample: 0xFF for µ-law, 0xD5 for A-law.
    pub const fn silence(self) -> u8 {
        match self {
            Law::Mu => ULAW_SILENCE,
            Law::A => ALAW_SILENCE,
        }
    }

    /// Encodes one linear sample.
    pub const fn encode(self, s: i16) -> u8 {
        match self {
            Law::Mu => linear_to_ulaw(s),
            Law::A => linear_to_alaw(s),
        }
    }

    /// Decodes one code to a linear sample.
    pub const fn decode(self, b: u8) -> i16 {
        match self {
            Law::Mu => ulaw_to_linear(b),
            Law::A => alaw_to_linear(b),
        }
    }
}

/// µ-law code of +0.
const ULAW_SILENCE: u8 = 0xFF;
/// A-law code of the smallest positive level.
const ALAW_SILENCE: u8 = 0xD5;

/// Added to the µ-law magnitude so the segment is the position of its
/// top bit (33 in the 14-bit scale of G.711, × 4).
const ULAW_BIAS: i32 = 0x84;
/// Largest µ-law magnitude before the bias (8,158 × 4, rounded up).
const ULAW_CLIP: i32 = 32_635;
/// A-law inverts its even bits on the line.
const ALAW_XOR: u8 = 0x55;

/// Decodes a µ-law code.
pub const fn ulaw_to_linear(u: u8) -> i16 {
    let u = !u;
    let exponent = (u >> 4) & 0x07;
    let mantissa = (u & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    // At most 32,124: the cast is exact.
    let magnitude = magnitude as i16;
    if u & 0x80 != 0 { -magnitude } else { magnitude }
}

/// Encodes a linear sample in µ-law.
pub const fn linear_to_ulaw(s: i16) -> u8 {
    let (sign, magnitude) = if s < 0 {
        (0x80, -(s as i32))
    } else {
        (0x00, s as i32)
    };
    let magnitude = if magnitude > ULAW_CLIP {
        ULAW_CLIP
    } else {
        magnitude
    } + ULAW_BIAS;
    // The top bit is bit 7 (segment 0) to bit 14 (segment 7).
    let top = 31 - magnitude.leading_zeros();
    let segment = top - 7;
    let mantissa = ((magnitude >> (segment + 3)) & 0x0F) as u8;
    !(sign | ((segment as u8) << 4) | mantissa)
}

/// Decodes an A-law code.
pub const fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ ALAW_XOR;
    let segment = (a >> 4) & 0x07;
    let mantissa = (a & 0x0F) as i16;
    // In the 16-bit scale: segment 0 has steps of 16 from 8, segment 1
    // continues it from 264, and each further segment doubles.
    let magnitude = match segment {
        0 => (mantissa << 4) + 8,
        _ => ((mantissa << 4) + 0x108) << (segment - 1),
    };
    if a & 0x80 != 0 { magnitude } else { -magnitude }
}

/// Encodes a linear sample in A-law.
pub const fn linear_to_alaw(s: i16) -> u8 {
    // Negative samples take the one's complement, so -1 and 0 are the two
    // smallest levels (A-law has no zero) and -32,768 fits.
    let (mask, magnitude) = if s >= 0 {
        (ALAW_XOR | 0x80, s)
    } else {
        (ALAW_XOR, !s)
    };
    // The 12-bit magnitude of G.711's 13-bit scale.
    let magnitude = (magnitude >> 3) as u16;
    let code = if magnitude < 32 {
        (magnitude >> 1) as u8
    } else {
        // The top bit is bit 5 (segment 1) to bit 11 (segment 7).
        let segment = 15 - magnitude.leading_zeros() - 4;
        ((segment as u8) << 4) | ((magnitude >> segment) & 0x0F) as u8
    };
    code ^ mask
}

/// µ-law code → A-law code, for all 256 codes.
const ULAW_TO_ALAW: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut rest: &mut [u8] = &mut table;
    let mut code: u8 = 0;
    while let Some((slot, tail)) = rest.split_first_mut() {
        *slot = linear_to_alaw(ulaw_to_linear(code));
        rest = tail;
        code = code.wrapping_add(1);
    }
    table
};

/// A-law code → µ-law code, for all 256 codes.
const ALAW_TO_ULAW: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut rest: &mut [u8] = &mut table;
    let mut code: u8 = 0;
    while let Some((slot, tail)) = rest.split_first_mut() {
        *slot = linear_to_ulaw(alaw_to_linear(code));
        rest = tail;
        code = code.wrapping_add(1);
    }
    table
};

/// Converts a µ-law code to the A-law code of the same level.
pub fn ulaw_to_alaw(u: u8) -> u8 {
    ULAW_TO_ALAW
        .get(usize::from(u))
        .copied()
        .unwrap_or(ALAW_SILENCE)
}

/// Converts an A-law code to the µ-law code of the same level.
pub fn alaw_to_ulaw(a: u8) -> u8 {
    ALAW_TO_ULAW
        .get(usize::from(a))
        .copied()
        .unwrap_or(ULAW_SILENCE)
}

/// Converts a G.711 payload from one law to the other in place; nothing
/// to do when the laws are the same.
pub fn transcode(payload: &mut [u8], from: Law, to: Law) {
    let convert: fn(u8) -> u8 = match (from, to) {
        (Law::Mu, Law::A) => ulaw_to_alaw,
        (Law::A, Law::Mu) => alaw_to_ulaw,
        (Law::Mu, Law::Mu) | (Law::A, Law::A) => return,
    };
    for b in payload {
        *b = convert(*b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAWS: [Law; 2] = [Law::Mu, Law::A];

    #[test]
    fn silence_decodes_to_the_smallest_level() {
        assert_eq!(Law::Mu.silence(), 0xFF);
        assert_eq!(Law::A.silence(), 0xD5);
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_alaw(-1), 0x55);
    }

    #[test]
    fn known_codes() {
        // Full scale.
        assert_eq!(ulaw_to_linear(0x80), 32_124);
        assert_eq!(ulaw_to_linear(0x00), -32_124);
        assert_eq!(alaw_to_linear(0xAA), 32_256);
        assert_eq!(alaw_to_linear(0x2A), -32_256);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
        // First steps: µ-law segment 0 has steps of 8, A-law of 16.
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(ulaw_to_linear(0x7E), -8);
        assert_eq!(alaw_to_linear(0xD4), 24);
        // The middle of µ-law segment 1's first step.
        assert_eq!(ulaw_to_linear(0xEF), 132);
        // µ-law of 1,000: biased 1,132 = 0b100_0110_1100, segment 3,
        // mantissa 1.
        assert_eq!(linear_to_ulaw(1000), !(0x30 | 1));
        assert_eq!(linear_to_ulaw(-1000), !(0x80 | 0x30 | 1));
        // A-law of 1,000: 13-bit 125 = 0b111_1101, segment 2, mantissa 15.
        assert_eq!(linear_to_alaw(1000), (0x20 | 15) ^ 0xD5);
        assert_eq!(linear_to_alaw(-1000), (0x20 | 15) ^ 0x55);
    }

    #[test]
    fn reference_vectors() {
        // (linear, µ-law, A-law), as the widespread g711.c gives them.
        let vectors = [
            (7i16, 0xFEu8, 0xD5u8),
            (-7, 0x7E, 0x55),
            (100, 0xF2, 0xD3),
            (-100, 0x72, 0x53),
            (1000, 0xCE, 0xFA),
            (5000, 0xAB, 0x86),
            (-5000, 0x2B, 0x06),
            (12_345, 0x97, 0xBD),
            (-12_345, 0x17, 0x3D),
            (32_000, 0x80, 0xAA),
            (-32_000, 0x00, 0x2A),
        ];
        for (s, u, a) in vectors {
            assert_eq!(linear_to_ulaw(s), u, "µ-law {s}");
            assert_eq!(linear_to_alaw(s), a, "A-law {s}");
        }
    }

    #[test]
    fn both_laws_are_symmetric() {
        // µ-law codes the magnitude; A-law the one's complement, so -1
        // mirrors 0.
        for s in -32_767..=i16::MAX {
            assert_eq!(
                ulaw_to_linear(linear_to_ulaw(-s)),
                -ulaw_to_linear(linear_to_ulaw(s)),
                "{s}"
            );
        }
        for s in 0..=i16::MAX {
            assert_eq!(
                alaw_to_linear(linear_to_alaw(-1 - s)),
                -alaw_to_linear(linear_to_alaw(s)),
                "{s}"
            );
        }
    }

    #[test]
    fn every_code_survives_a_round_trip() {
        for law in LAWS {
            for code in 0..=255u8 {
                let level = law.decode(code);
                assert_eq!(law.decode(law.encode(level)), level, "{law:?} {code:#04x}");
            }
        }
    }

    #[test]
    fn codes_are_distinct_except_the_two_mu_law_zeros() {
        let mut mu: Vec<i16> = (0..=255u8).map(ulaw_to_linear).collect();
        mu.sort_unstable();
        mu.dedup();
        assert_eq!(mu.len(), 255);
        let mut a: Vec<i16> = (0..=255u8).map(alaw_to_linear).collect();
        a.sort_unstable();
        a.dedup();
        assert_eq!(a.len(), 256);
    }

    #[test]
    fn encoding_is_monotonic_and_close() {
        for law in LAWS {
            let mut previous = i32::MIN;
            for s in i16::MIN..=i16::MAX {
                let level = i32::from(law.decode(law.encode(s)));
                assert!(level >= previous, "{law:?} {s}");
                previous = level;
                // Within half of the largest step (1,024), but for the
                // clipping above ±32,124 (µ-law) or ±32,256 (A-law).
                let err = (level - i32::from(s)).abs();
                let tolerance = if s.unsigned_abs() > 32_000 { 644 } else { 512 };
                assert!(err <= tolerance, "{law:?} {s} → {level}");
            }
        }
    }

    #[test]
    fn the_relative_error_is_small_above_the_first_segments() {
        for law in LAWS {
            for s in (1000..=32_000i16).step_by(7) {
                for s in [s, -s] {
                    let level = f64::from(law.decode(law.encode(s)));
                    let rel = (level - f64::from(s)).abs() / f64::from(s).abs();
                    // Half a step over the segment's lowest level: 1/32,
                    // a little more for µ-law's bias.
                    assert!(rel < 1.0 / 25.0, "{law:?} {s} → {level}");
                }
            }
        }
    }

    #[test]
    fn the_tables_agree_with_going_through_linear() {
        for code in 0..=255u8 {
            assert_eq!(ulaw_to_alaw(code), linear_to_alaw(ulaw_to_linear(code)));
            assert_eq!(alaw_to_ulaw(code), linear_to_ulaw(alaw_to_linear(code)));
        }
        assert_eq!(ulaw_to_alaw(0xFF), 0xD5);
        assert_eq!(alaw_to_ulaw(0xD5), 0xFE);
    }

    #[test]
    fn transcoding_twice_moves_a_level_by_at_most_one_step() {
        for code in 0..=255u8 {
            let direct = i32::from(ulaw_to_linear(code));
            let back = i32::from(ulaw_to_linear(alaw_to_ulaw(ulaw_to_alaw(code))));
            // A step is 1/16 of the segment's base; 16 near zero.
            let step = (direct.abs() / 8).max(16);
            assert!(
                (direct - back).abs() <= step,
                "{code:#04x}: {direct} → {back}"
            );
        }
    }

    #[test]
    fn transcode_works_in_place() {
        let original: Vec<u8> = (0..=255u8).collect();
        let mut p = original.clone();
        transcode(&mut p, Law::Mu, Law::Mu);
        assert_eq!(p, original);
        transcode(&mut p, Law::A, Law::A);
        assert_eq!(p, original);
        transcode(&mut p, Law::Mu, Law::A);
        let expected: Vec<u8> = original.iter().map(|&u| ulaw_to_alaw(u)).collect();
        assert_eq!(p, expected);
        transcode(&mut p, Law::A, Law::Mu);
        let expected: Vec<u8> = expected.iter().map(|&a| alaw_to_ulaw(a)).collect();
        assert_eq!(p, expected);
        transcode(&mut [], Law::Mu, Law::A);
    }

    fn energy(samples: impl Iterator<Item = i16>) -> f64 {
        samples.map(|s| f64::from(s) * f64::from(s)).sum()
    }

    #[test]
    fn a_sine_through_both_laws_keeps_its_energy() {
        for amplitude in [200.0f64, 3000.0, 20_000.0] {
            let linear: Vec<i16> = (0..8000)
                .map(|n| {
                    let t = f64::from(n) / 8000.0;
                    (amplitude * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()).round() as i16
                })
                .collect();
            let mut payload: Vec<u8> = linear.iter().map(|&s| linear_to_ulaw(s)).collect();
            let before = energy(payload.iter().map(|&u| ulaw_to_linear(u)));
            transcode(&mut payload, Law::Mu, Law::A);
            transcode(&mut payload, Law::A, Law::Mu);
            let after = energy(payload.iter().map(|&u| ulaw_to_linear(u)));
            let db = 10.0 * (after / before).log10();
            assert!(db.abs() < 1.0, "amplitude {amplitude}: {db} dB");
            let original = energy(linear.iter().copied());
            let db = 10.0 * (after / original).log10();
            assert!(db.abs() < 1.0, "amplitude {amplitude}: {db} dB from linear");
        }
    }
}
