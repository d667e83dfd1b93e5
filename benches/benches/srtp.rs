//! SRTP on the relay's packet path: one G.711 packet (172 bytes of RTP)
//! through `Relay::handle_datagram` between two bridged legs, plain on both
//! legs beside SRTP on one or both, in one run; and each suite's protect and
//! unprotect alone.
//!
//! Every packet is new (its sequence number follows the last one), so the
//! receiving side's replay check passes as it would on the wire; making it
//! (writing or protecting the packet as the peer would) is the untimed setup
//! of `iter_batched`, the same for every variant.
//!
//! Run from `benches/`:
//!   CARGO_TARGET_DIR=target cargo bench --locked --bench srtp

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dialerd::media::AudioCodec;
use dialerd::media::LegSpec;
use dialerd::media::relay::{Channel, Relay, RelayConfig};
use dialerd::media::srtp::{MasterKey, SrtpKeys, Suite, Transform, provider};

const A: u64 = 1;
const B: u64 = 2;
const PEER_A: &str = "192.0.2.1:4000";
const PEER_B: &str = "192.0.2.2:5000";
const PAYLOAD: usize = 160;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn spec(remote: &str) -> LegSpec {
    LegSpec {
        remote: addr(remote),
        rtcp: None,
        codec: AudioCodec::Pcmu,
        payload_type: 0,
        dtmf_payload_type: None,
        local_dtmf_payload_type: None,
        ptime_ms: 20,
        peer_sends: true,
        peer_receives: true,
        watched: false,
    }
}

fn keys(suite: Suite, send: u8, receive: u8) -> SrtpKeys {
    let len = 16 + suite.salt_len();
    SrtpKeys {
        suite,
        send: MasterKey::new(vec![send; len]),
        receive: MasterKey::new(vec![receive; len]),
    }
}

fn transform(keys: &SrtpKeys) -> Transform {
    Transform::new(keys, provider().unwrap().as_ref()).unwrap()
}

fn rtp_packet(buf: &mut [u8], seq: u16) -> usize {
    buf[0] = 0x80;
    buf[1] = 0;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    buf[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    buf[12..12 + PAYLOAD].fill(0x55);
    12 + PAYLOAD
}

/// A relay with legs A and B bridged; A's peer's packets go to B.
fn relay(a: Option<Suite>, b: Option<Suite>) -> (Relay, usize, Option<Transform>) {
    let now = Instant::now();
    let mut relay = Relay::new(
        RelayConfig {
            inactivity: None,
            latch_any: true,
            ..RelayConfig::default()
        },
        7,
    );
    let sa = relay.insert(now, A, Arc::from("a"), 30000);
    relay.insert(now, B, Arc::from("b"), 30002);
    relay.set_spec(now, A, spec(PEER_A)).unwrap();
    relay.set_spec(now, B, spec(PEER_B)).unwrap();
    let peer = a.map(|suite| {
        relay.set_keys(A, Some(&keys(suite, 1, 2))).unwrap();
        transform(&keys(suite, 2, 1))
    });
    if let Some(suite) = b {
        relay.set_keys(B, Some(&keys(suite, 3, 4))).unwrap();
    }
    relay.connect(now, A, B).unwrap();
    (relay, sa, peer)
}

fn name(s: Option<Suite>) -> &'static str {
    match s {
        None => "plain",
        Some(Suite::AesCm128HmacSha1_80) => "aes80",
        Some(Suite::AesCm128HmacSha1_32) => "aes32",
        Some(Suite::AeadAes128Gcm) => "gcm",
    }
}

fn relay_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("relay_172B");
    group.throughput(Throughput::Elements(1));
    let aes80 = Some(Suite::AesCm128HmacSha1_80);
    let variants = [
        (None, None),
        (aes80, None),
        (None, aes80),
        (aes80, aes80),
        (Some(Suite::AesCm128HmacSha1_32), None),
        (Some(Suite::AeadAes128Gcm), None),
        (None, Some(Suite::AeadAes128Gcm)),
    ];
    for (a, b) in variants {
        let (mut relay, sa, mut peer) = relay(a, b);
        let mut seq = 0u16;
        let from = addr(PEER_A);
        let now = Instant::now();
        group.bench_function(format!("{}_to_{}", name(a), name(b)), |bench| {
            bench.iter_batched(
                || {
                    // The peer's packet, as it arrives.
                    let mut buf = vec![0u8; 2048];
                    seq = seq.wrapping_add(1);
                    let mut len = rtp_packet(&mut buf, seq);
                    if let Some(p) = peer.as_mut() {
                        len = p.protect_rtp(&mut buf, len).unwrap();
                    }
                    (buf, len)
                },
                |(mut buf, len)| {
                    let t = relay.handle_datagram(now, sa, Channel::Rtp, from, &mut buf, len);
                    black_box(t.unwrap());
                    buf
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn transforms(c: &mut Criterion) {
    let mut group = c.benchmark_group("srtp_172B");
    group.throughput(Throughput::Elements(1));
    for suite in [
        Suite::AesCm128HmacSha1_80,
        Suite::AesCm128HmacSha1_32,
        Suite::AeadAes128Gcm,
    ] {
        let mut sender = transform(&keys(suite, 1, 1));
        let mut receiver = transform(&keys(suite, 1, 1));
        let mut seq = 0u16;
        group.bench_function(format!("protect_{}", name(Some(suite))), |bench| {
            bench.iter_batched(
                || {
                    let mut buf = vec![0u8; 2048];
                    seq = seq.wrapping_add(1);
                    let len = rtp_packet(&mut buf, seq);
                    (buf, len)
                },
                |(mut buf, len)| {
                    black_box(sender.protect_rtp(&mut buf, len).unwrap());
                    buf
                },
                BatchSize::SmallInput,
            );
        });
        let mut seq = 0u16;
        let mut protector = transform(&keys(suite, 1, 1));
        group.bench_function(format!("unprotect_{}", name(Some(suite))), |bench| {
            bench.iter_batched(
                || {
                    let mut buf = vec![0u8; 2048];
                    seq = seq.wrapping_add(1);
                    let len = rtp_packet(&mut buf, seq);
                    let len = protector.protect_rtp(&mut buf, len).unwrap();
                    (buf, len)
                },
                |(mut buf, len)| {
                    black_box(receiver.unprotect_rtp(&mut buf, len).unwrap());
                    buf
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, relay_path, transforms);
criterion_main!(benches);
