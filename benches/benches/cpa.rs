//! Call progress analysis per 20 ms frame (160 samples of 8 kHz audio), the
//! unit it runs on beside the relay: the speech-cadence stage, the tone
//! stage (a Goertzel bank of 37 bins from 300 to 2,100 Hz and the dual-tone
//! checks), on speech-like noise, on a tone and on silence.
//!
//! Run from `benches/`:
//!   CARGO_TARGET_DIR=target cargo bench --locked --bench cpa

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dialerd::cpa::cadence::{Cadence, CadenceConfig};
use dialerd::cpa::tones::{FRAME, ToneConfig, ToneDetector};

fn frames(kind: &str) -> Vec<Vec<i16>> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..250)
        .map(|f| {
            (0..FRAME)
                .map(|i| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let noise = (state % 2001) as f64 / 1000.0 - 1.0;
                    let t = (f * FRAME + i) as f64 / 8000.0;
                    let x = match kind {
                        "speech" => noise * 6000.0,
                        "tone" => 8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin(),
                        _ => noise * 30.0,
                    };
                    x as i16
                })
                .collect()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpa_frame");
    group.throughput(Throughput::Elements(1));
    for kind in ["speech", "tone", "silence"] {
        let input = frames(kind);
        group.bench_function(format!("tones/{kind}"), |b| {
            let mut d = ToneDetector::new(ToneConfig::default());
            let mut i = 0;
            b.iter(|| {
                d.push_frame(black_box(&input[i % input.len()]));
                while d.poll_event().is_some() {}
                i += 1;
            });
        });
        group.bench_function(format!("cadence/{kind}"), |b| {
            let mut i = 0;
            let mut c = Cadence::new(CadenceConfig::default());
            b.iter(|| {
                if c.verdict().is_some() {
                    c = Cadence::new(CadenceConfig::default());
                }
                black_box(c.push_frame(black_box(&input[i % input.len()])));
                i += 1;
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
