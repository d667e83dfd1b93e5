//! Arbitrary datagrams, timers and commands into the media relay: two
//! bridged legs (PCMA and PCMU, telephone-event on both) on a fake clock.
//! Nothing may panic; every transmit leaves from one of the two legs with
//! a length within the buffer; a leg never counts more generated packets
//! than it sent.

#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialerd::media::player::{Source, Tone};
use dialerd::media::relay::{Channel, Relay, RelayConfig};
use dialerd::media::{AudioCodec, LegSpec};
use libfuzzer_sys::fuzz_target;

const BUF: usize = 2048;

fn spec(remote: &str, codec: AudioCodec, payload_type: u8) -> LegSpec {
    let remote: SocketAddr = remote.parse().expect("address");
    LegSpec {
        remote,
        rtcp: Some(SocketAddr::new(remote.ip(), remote.port() + 1)),
        codec,
        payload_type,
        dtmf_payload_type: Some(101),
        local_dtmf_payload_type: Some(101),
        ptime_ms: 20,
        peer_sends: true,
        peer_receives: true,
        watched: true,
    }
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut now = t0;
    let mut relay = Relay::new(RelayConfig::default(), 3);
    let slots = [
        relay.insert(t0, 1, Arc::from("a"), 30000),
        relay.insert(t0, 2, Arc::from("b"), 30002),
    ];
    let specs = [
        spec("127.0.0.1:4000", AudioCodec::Pcma, 8),
        spec("127.0.0.2:5000", AudioCodec::Pcmu, 0),
    ];
    for (leg, s) in [(1, specs[0]), (2, specs[1])] {
        relay.set_spec(t0, leg, s).expect("leg");
    }
    relay.connect(t0, 1, 2).expect("legs");
    let sources = [
        "127.0.0.1:4000",
        "127.0.0.1:4444",
        "127.0.0.2:5000",
        "127.0.0.9:1",
        "127.0.0.1:0",
    ];
    let mut buf = vec![0u8; BUF];
    let mut rest = data;
    while let [op, arg, tail @ ..] = rest {
        rest = tail;
        let leg = usize::from(op & 1);
        match op >> 1 {
            0..=79 => {
                // A datagram: the next `arg` bytes, from one of the sources.
                let len = usize::from(*arg).min(rest.len());
                let (packet, tail) = rest.split_at(len);
                rest = tail;
                buf[..len].copy_from_slice(packet);
                let from = sources[usize::from(op >> 1) % sources.len()]
                    .parse()
                    .expect("source");
                let channel = if op & 2 == 0 {
                    Channel::Rtp
                } else {
                    Channel::Rtcp
                };
                if let Some(t) =
                    relay.handle_datagram(now, slots[leg], channel, from, &mut buf, len)
                {
                    assert!(slots.contains(&t.slot));
                    assert!(t.len <= BUF);
                }
            }
            80..=99 => {
                now += Duration::from_millis(u64::from(*arg) * 10);
                while let Some(t) = relay.poll_transmit(now, &mut buf) {
                    assert!(slots.contains(&t.slot));
                    assert!(t.len <= BUF);
                }
            }
            100..=104 => {
                let digits = ["1", "*#", "9A", "", "x7"][usize::from(*arg) % 5];
                let _ = relay.send_dtmf(
                    now,
                    leg as u64 + 1,
                    digits,
                    Duration::from_millis(u64::from(*arg)),
                );
            }
            105..=109 => {
                let tone = Tone::new(
                    &[f32::from(*arg) * 10.0],
                    -13.0,
                    100,
                    50,
                    Some(u64::from(*arg)),
                );
                let _ = relay.play(now, leg as u64 + 1, Some(Source::tone(tone)));
            }
            110..=114 => {
                let mut s = specs[leg];
                s.peer_sends = arg & 1 == 0;
                s.peer_receives = arg & 2 == 0;
                s.ptime_ms = u32::from(*arg);
                s.rtcp = (arg & 4 == 0).then_some(s.remote);
                let _ = relay.set_spec(now, leg as u64 + 1, s);
            }
            _ => {
                let _ = relay.disconnect(leg as u64 + 1);
                let _ = relay.connect(now, 1, 2);
            }
        }
        while relay.poll_event().is_some() {}
    }
    for s in relay.all_stats(now) {
        assert!(s.generated_packets <= s.tx_packets + s.send_failed);
    }
});
