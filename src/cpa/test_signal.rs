//! Synthesized test signals for the analysis stages (8 kHz).

use std::f64::consts::PI;

/// A deterministic noise source (xorshift), amplitude `level`.
pub struct Noise(u64);

impl Noise {
    pub fn next(&mut self, level: f64) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 % 20_001) as f64 / 10_000.0 - 1.0) * level
    }
}

/// A signal built piece by piece, 8 kHz.
pub struct Signal {
    /// The samples, linear.
    pub samples: Vec<f64>,
    noise: Noise,
    noise_level: f64,
}

impl Signal {
    pub fn new(noise_level: f64) -> Signal {
        Signal {
            samples: Vec::new(),
            noise: Noise(0x9E37_79B9_7F4A_7C15),
            noise_level,
        }
    }

    /// `ms` of the sum of `tones` (Hz, amplitude).
    pub fn tones(mut self, tones: &[(f64, f64)], ms: u32) -> Signal {
        let start = self.samples.len();
        for n in 0..(ms as usize * 8) {
            let t = (start + n) as f64 / 8000.0;
            let x: f64 = tones
                .iter()
                .map(|&(hz, a)| a * (2.0 * PI * hz * t).sin())
                .sum();
            let noise = self.noise.next(self.noise_level);
            self.samples.push(x + noise);
        }
        self
    }

    pub fn silence(self, ms: u32) -> Signal {
        self.tones(&[], ms)
    }

    /// `ms` of loud noise shaped in 60-200 ms bursts: speech-like energy with
    /// no tone in it.
    pub fn babble(mut self, ms: u32) -> Signal {
        for n in 0..(ms as usize * 8) {
            let on = (n / 8 / 90) % 3 != 2;
            let x = if on { self.noise.next(6000.0) } else { 0.0 };
            self.samples.push(x + self.noise.next(self.noise_level));
        }
        self
    }
}

impl Signal {
    /// The signal as 20 ms frames of 16-bit samples.
    pub fn frames(&self) -> Vec<Vec<i16>> {
        self.samples
            .chunks(160)
            .map(|f| {
                f.iter()
                    .map(|&x| x.clamp(-32768.0, 32767.0) as i16)
                    .collect()
            })
            .collect()
    }
}
