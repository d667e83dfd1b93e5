//! The relay on a fake clock: two legs, packets in, packets out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Channel, MediaEventKind, Relay, RelayConfig, Transmit};
use crate::media::g711::{self, Law};
use crate::media::leg::{AudioCodec, LegSpec};
use crate::media::{rtp, telephone_event};

const A: u64 = 1;
const B: u64 = 2;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn spec(remote: &str, codec: AudioCodec) -> LegSpec {
    let payload_type = match codec {
        AudioCodec::Pcma => 8,
        _ => 0,
    };
    LegSpec {
        remote: addr(remote),
        rtcp: Some(SocketAddr::new(addr(remote).ip(), addr(remote).port() + 1)),
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

struct Net {
    relay: Relay,
    t0: Instant,
    sa: usize,
    sb: usize,
}

impl Net {
    fn new(config: RelayConfig, a: LegSpec, b: LegSpec) -> Net {
        let t0 = Instant::now();
        let mut relay = Relay::new(config, 7);
        let sa = relay.insert(t0, A, Arc::from("call-a"), 30000);
        let sb = relay.insert(t0, B, Arc::from("call-b"), 30002);
        relay.set_spec(t0, A, a).unwrap();
        relay.set_spec(t0, B, b).unwrap();
        relay.connect(t0, A, B).unwrap();
        Net { relay, t0, sa, sb }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Sends one RTP packet into `slot` from `from`; returns what came out.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        ms: u64,
        slot: usize,
        from: &str,
        pt: u8,
        seq: u16,
        ts: u32,
        payload: &[u8],
    ) -> Option<(Transmit, Vec<u8>)> {
        let mut buf = vec![0u8; 1500];
        rtp::write_header(&mut buf, false, pt, seq, ts, 0xAABB).unwrap();
        buf[12..12 + payload.len()].copy_from_slice(payload);
        let len = 12 + payload.len();
        let now = self.at(ms);
        self.relay
            .handle_datagram(now, slot, Channel::Rtp, addr(from), &mut buf, len)
            .map(|t| {
                let bytes = buf[..t.len].to_vec();
                (t, bytes)
            })
    }

    /// Runs the deadlines up to `ms`, one timer at a time; the packets
    /// generated with the time they were due.
    fn run_until(&mut self, ms: u64) -> Vec<(Transmit, Vec<u8>)> {
        let end = self.at(ms);
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1500];
        while let Some(at) = self.relay.poll_timeout() {
            if at > end {
                break;
            }
            while let Some(t) = self.relay.poll_transmit(at, &mut buf) {
                out.push((t, buf[..t.len].to_vec()));
            }
        }
        out
    }

    fn events(&mut self) -> Vec<MediaEventKind> {
        std::iter::from_fn(|| self.relay.poll_event())
            .map(|e| e.kind)
            .collect()
    }
}

#[test]
fn packets_are_relayed_with_the_peers_payload_type_and_transcoded_between_laws() {
    let mut net = Net::new(
        RelayConfig::default(),
        spec("127.0.0.1:4000", AudioCodec::Pcma),
        spec("127.0.0.2:5000", AudioCodec::Pcmu),
    );
    let samples: Vec<i16> = (0..160)
        .map(|i| ((i as f64 * 0.3).sin() * 8000.0) as i16)
        .collect();
    let alaw: Vec<u8> = samples.iter().map(|s| g711::linear_to_alaw(*s)).collect();
    let (t, bytes) = net
        .send(0, net.sa, "127.0.0.1:4000", 8, 100, 1000, &alaw)
        .expect("relayed");
    assert_eq!(
        (t.slot, t.channel, t.to),
        (net.sb, Channel::Rtp, addr("127.0.0.2:5000"))
    );
    let h = rtp::parse(&bytes).unwrap();
    assert_eq!(h.payload_type, 0, "PCMU as leg B numbered it");
    assert!(h.marker, "the first packet toward B starts a talkspurt");
    for (i, byte) in bytes[h.payload_start..h.payload_end].iter().enumerate() {
        let got = i32::from(g711::ulaw_to_linear(*byte));
        let sent = i32::from(g711::alaw_to_linear(alaw[i]));
        assert!(
            (got - sent).abs() <= (sent.abs() / 8).max(32),
            "sample {i}: {got} vs {sent}"
        );
    }
    // And back: B's µ-law reaches A as A-law with PT 8.
    let ulaw = vec![Law::Mu.silence(); 160];
    let (t, bytes) = net
        .send(20, net.sb, "127.0.0.2:5000", 0, 7, 0, &ulaw)
        .expect("relayed back");
    assert_eq!(t.to, addr("127.0.0.1:4000"));
    let h = rtp::parse(&bytes).unwrap();
    assert_eq!(h.payload_type, 8);
    assert!(
        bytes[h.payload_start..h.payload_end]
            .iter()
            .all(|b| g711::alaw_to_linear(*b).abs() <= 8)
    );
}

#[test]
fn the_peer_is_latched_from_its_signalled_ip_on_any_port_and_others_are_dropped() {
    let mut net = Net::new(
        RelayConfig::default(),
        spec("127.0.0.1:4000", AudioCodec::Pcmu),
        spec("127.0.0.2:5000", AudioCodec::Pcmu),
    );
    assert!(
        net.send(0, net.sa, "127.0.0.9:4000", 0, 1, 0, &[0xFF; 160])
            .is_none(),
        "another IP is not latched"
    );
    assert!(
        net.send(20, net.sa, "127.0.0.1:4444", 0, 2, 160, &[0xFF; 160])
            .is_some()
    );
    assert!(net.events().contains(&MediaEventKind::Latched {
        address: addr("127.0.0.1:4444")
    }));
    // B answers: it goes to where A really sends from.
    let (t, _) = net
        .send(30, net.sb, "127.0.0.2:5000", 0, 1, 0, &[0xFF; 160])
        .unwrap();
    assert_eq!(t.to, addr("127.0.0.1:4444"));
    // The same SSRC from another port does not take the latch over.
    assert!(
        net.send(40, net.sa, "127.0.0.1:4446", 0, 3, 320, &[0xFF; 160])
            .is_none()
    );
    let stats = net.relay.stats(net.at(40), A).unwrap();
    assert_eq!((stats.rx_packets, stats.dropped_packets), (1, 2));
}

#[test]
fn a_quiet_source_is_replaced_by_silence_at_50_packets_a_second_with_continuous_numbers() {
    let config = RelayConfig {
        inactivity: None,
        ..RelayConfig::default()
    };
    let mut net = Net::new(
        config,
        spec("127.0.0.1:4000", AudioCodec::Pcmu),
        spec("127.0.0.2:5000", AudioCodec::Pcmu),
    );
    // A sends ten packets, then stops.
    let mut relayed = Vec::new();
    for i in 0..10u16 {
        let ms = u64::from(i) * 20;
        relayed.push(
            net.send(
                ms,
                net.sa,
                "127.0.0.1:4000",
                0,
                500 + i,
                9000 + u32::from(i) * 160,
                &[0x55; 160],
            )
            .unwrap(),
        );
        // B keeps sending so A's side is never filled.
        net.send(
            ms,
            net.sb,
            "127.0.0.2:5000",
            0,
            i,
            u32::from(i) * 160,
            &[0xFF; 160],
        );
        net.run_until(ms);
    }
    let generated: Vec<_> = net
        .run_until(180 + 1000)
        .into_iter()
        .filter(|(t, _)| t.slot == net.sb)
        .collect();
    assert!(
        (45..=52).contains(&generated.len()),
        "about 50 packets in a second, got {}",
        generated.len()
    );
    let last = rtp::parse(&relayed.last().unwrap().1).unwrap();
    let mut seq = last.sequence;
    let mut ts = last.timestamp;
    let first_gap = rtp::parse(&generated[0].1).unwrap();
    assert!(first_gap.marker, "silence starts a talkspurt");
    for (t, bytes) in &generated {
        let h = rtp::parse(bytes).unwrap();
        assert_eq!(t.to, addr("127.0.0.2:5000"));
        assert_eq!(h.sequence, seq.wrapping_add(1), "sequence +1");
        assert!(h.timestamp.wrapping_sub(ts) >= 160, "timestamps advance");
        assert_eq!(h.ssrc, last.ssrc, "one SSRC toward B");
        assert!(
            bytes[h.payload_start..h.payload_end]
                .iter()
                .all(|b| *b == 0xFF)
        );
        seq = h.sequence;
        ts = h.timestamp;
    }
    let steps: Vec<u32> = generated
        .windows(2)
        .map(|w| rtp::parse(&w[1].1).unwrap().timestamp - rtp::parse(&w[0].1).unwrap().timestamp)
        .collect();
    assert!(steps.iter().all(|s| *s == 160), "{steps:?}");
    // A comes back: relaying resumes, numbers still continuous.
    let (_, bytes) = net
        .send(
            1300,
            net.sa,
            "127.0.0.1:4000",
            0,
            510,
            9000 + 160 * 10,
            &[0x55; 160],
        )
        .unwrap();
    let h = rtp::parse(&bytes).unwrap();
    assert_eq!(h.sequence, seq.wrapping_add(1));
    assert!(h.marker);
    assert!(
        !net.events()
            .iter()
            .any(|e| matches!(e, MediaEventKind::Quiet { .. })),
        "1.1 s of silence is not yet a fault"
    );
}

#[test]
fn a_peer_silent_past_the_timeout_is_reported_once_and_hold_suspends_it() {
    let config = RelayConfig {
        inactivity: Some(Duration::from_secs(5)),
        quiet_after: Duration::from_secs(2),
        ..RelayConfig::default()
    };
    let mut net = Net::new(
        config,
        spec("127.0.0.1:4000", AudioCodec::Pcmu),
        spec("127.0.0.2:5000", AudioCodec::Pcmu),
    );
    net.send(0, net.sa, "127.0.0.1:4000", 0, 1, 0, &[0xFF; 160]);
    net.send(0, net.sb, "127.0.0.2:5000", 0, 1, 0, &[0xFF; 160]);
    net.run_until(4000);
    let early = net.events();
    assert!(
        early
            .iter()
            .any(|e| matches!(e, MediaEventKind::Quiet { .. })),
        "{early:?}"
    );
    assert!(!early.contains(&MediaEventKind::Timeout));
    // B holds (it stops sending): no timeout for B.
    let mut held = spec("127.0.0.2:5000", AudioCodec::Pcmu);
    held.peer_sends = false;
    net.relay.set_spec(net.at(4000), B, held).unwrap();
    net.run_until(12000);
    let timeouts: Vec<_> = std::iter::from_fn(|| net.relay.poll_event())
        .filter(|e| e.kind == MediaEventKind::Timeout)
        .map(|e| e.leg)
        .collect();
    assert_eq!(
        timeouts,
        vec![A],
        "only the leg that still should send times out, once"
    );
}

#[test]
fn telephone_events_are_reported_once_relayed_mapped_and_generated() {
    let mut b = spec("127.0.0.2:5000", AudioCodec::Pcmu);
    b.dtmf_payload_type = Some(96);
    let mut net = Net::new(
        RelayConfig::default(),
        spec("127.0.0.1:4000", AudioCodec::Pcmu),
        b,
    );
    // Digit 5: three updates, then the end three times, one timestamp.
    let mut pt_seen = Vec::new();
    for (i, (end, duration)) in [
        (false, 160),
        (false, 320),
        (false, 480),
        (true, 640),
        (true, 640),
        (true, 640),
    ]
    .into_iter()
    .enumerate()
    {
        let mut payload = [0u8; 4];
        telephone_event::write(
            &mut payload,
            telephone_event::Event {
                code: 5,
                end,
                volume: 10,
                duration,
            },
        )
        .unwrap();
        let out = net.send(
            i as u64 * 20,
            net.sa,
            "127.0.0.1:4000",
            101,
            10 + i as u16,
            8000,
            &payload,
        );
        pt_seen.push(rtp::parse(&out.unwrap().1).unwrap().payload_type);
    }
    assert!(
        pt_seen.iter().all(|pt| *pt == 96),
        "mapped to B's number: {pt_seen:?}"
    );
    let digits: Vec<_> = net
        .events()
        .into_iter()
        .filter_map(|e| match e {
            MediaEventKind::Dtmf { digit, duration_ms } => Some((digit, duration_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(digits, vec![('5', 80)]);
    // Generated toward B: one event, end sent three times, PT 96.
    net.relay
        .send_dtmf(net.at(200), B, "7", Duration::from_millis(100))
        .unwrap();
    let sent: Vec<_> = net
        .run_until(2000)
        .into_iter()
        .filter(|(t, bytes)| t.slot == net.sb && rtp::parse(bytes).unwrap().payload_type == 96)
        .map(|(_, bytes)| {
            let h = rtp::parse(&bytes).unwrap();
            let ev = telephone_event::parse(&bytes[h.payload_start..h.payload_end]).unwrap();
            (h.timestamp, ev)
        })
        .collect();
    assert!(sent.len() >= 4, "{sent:?}");
    assert!(sent.iter().all(|(ts, e)| *ts == sent[0].0 && e.code == 7));
    assert_eq!(sent.iter().filter(|(_, e)| e.end).count(), 3);
    assert!(net.events().contains(&MediaEventKind::DtmfSent));
}

#[test]
fn closing_a_leg_reports_its_totals_and_unlinks_the_peer() {
    let mut net = Net::new(
        RelayConfig::default(),
        spec("127.0.0.1:4000", AudioCodec::Pcmu),
        spec("127.0.0.2:5000", AudioCodec::Pcmu),
    );
    for i in 0..5u16 {
        net.send(
            u64::from(i) * 20,
            net.sa,
            "127.0.0.1:4000",
            0,
            i,
            u32::from(i) * 160,
            &[0xFF; 160],
        );
    }
    net.relay.remove(net.at(100), B);
    let totals: Vec<_> = net
        .events()
        .into_iter()
        .filter_map(|e| match e {
            MediaEventKind::Closed { stats } => Some(stats),
            _ => None,
        })
        .collect();
    assert_eq!(totals.len(), 1);
    assert_eq!(totals[0].tx_packets, 5);
    assert!(
        net.send(120, net.sa, "127.0.0.1:4000", 0, 6, 960, &[0xFF; 160])
            .is_none()
    );
    assert_eq!(net.relay.stats(net.at(120), A).unwrap().rx_packets, 6);
    assert_eq!(net.relay.len(), 1);
}

#[test]
fn silence_before_the_answer_does_not_count_toward_the_timeout() {
    let config = RelayConfig {
        inactivity: Some(Duration::from_secs(30)),
        ..RelayConfig::default()
    };
    let t0 = Instant::now();
    let mut relay = Relay::new(config, 1);
    relay.insert(t0, A, Arc::from("call-a"), 30000);
    // Rings for 40 s, then is answered.
    let answered = t0 + Duration::from_secs(40);
    relay
        .set_spec(answered, A, spec("127.0.0.1:4000", AudioCodec::Pcmu))
        .unwrap();
    let mut buf = vec![0u8; 1500];
    let mut timeout_at = None;
    while let Some(at) = relay.poll_timeout() {
        if at > t0 + Duration::from_secs(100) {
            break;
        }
        while relay.poll_transmit(at, &mut buf).is_some() {}
        while let Some(e) = relay.poll_event() {
            if e.kind == MediaEventKind::Timeout {
                timeout_at.get_or_insert(at);
            }
        }
    }
    let at = timeout_at.expect("the silent answered leg times out");
    assert!(
        at >= answered + Duration::from_secs(30) && at < answered + Duration::from_secs(31),
        "timed out {:?} after the answer",
        at - answered
    );
}

#[test]
fn a_source_port_of_zero_is_taken_but_never_latched() {
    let mut net = Net::new(
        RelayConfig::default(),
        spec("127.0.0.1:4000", AudioCodec::Pcmu),
        spec("127.0.0.2:5000", AudioCodec::Pcmu),
    );
    assert!(
        net.send(0, net.sa, "127.0.0.1:0", 0, 1, 0, &[0xFF; 160])
            .is_some()
    );
    assert!(
        net.send(20, net.sa, "127.0.0.9:0", 0, 2, 160, &[0xFF; 160])
            .is_none()
    );
    let (t, _) = net
        .send(30, net.sb, "127.0.0.2:5000", 0, 1, 0, &[0xFF; 160])
        .unwrap();
    assert_eq!(t.to, addr("127.0.0.1:4000"), "still the signalled port");
    let stats = net.relay.stats(net.at(30), A).unwrap();
    assert_eq!((stats.rx_packets, stats.latched), (1, None));
}

#[test]
fn a_digit_whose_end_packets_were_lost_is_reported_when_audio_resumes_or_the_leg_closes() {
    let mut net = Net::new(
        RelayConfig::default(),
        spec("127.0.0.1:4000", AudioCodec::Pcmu),
        spec("127.0.0.2:5000", AudioCodec::Pcmu),
    );
    let event = |code, duration| {
        let mut payload = [0u8; 4];
        telephone_event::write(
            &mut payload,
            telephone_event::Event {
                code,
                end: false,
                volume: 10,
                duration,
            },
        )
        .unwrap();
        payload
    };
    net.send(0, net.sa, "127.0.0.1:4000", 101, 1, 8000, &event(3, 160));
    net.send(20, net.sa, "127.0.0.1:4000", 101, 2, 8000, &event(3, 320));
    // No end packet: audio resumes.
    net.send(40, net.sa, "127.0.0.1:4000", 0, 3, 8640, &[0xFF; 160]);
    net.send(60, net.sa, "127.0.0.1:4000", 0, 4, 8800, &[0xFF; 160]);
    let digits = |events: Vec<MediaEventKind>| -> Vec<(char, u32)> {
        events
            .into_iter()
            .filter_map(|e| match e {
                MediaEventKind::Dtmf { digit, duration_ms } => Some((digit, duration_ms)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(digits(net.events()), vec![('3', 40)]);
    // Another one, cut off by the leg's close.
    net.send(80, net.sa, "127.0.0.1:4000", 101, 5, 9000, &event(9, 160));
    net.relay.remove(net.at(100), A);
    assert_eq!(digits(net.events()), vec![('9', 20)]);
}

mod srtp {
    use super::*;
    use crate::media::srtp::{MasterKey, SrtpKeys, Suite, Transform, provider};

    fn keys(send: u8, receive: u8) -> SrtpKeys {
        SrtpKeys {
            suite: Suite::AesCm128HmacSha1_80,
            send: MasterKey::new(vec![send; 30]),
            receive: MasterKey::new(vec![receive; 30]),
        }
    }

    /// A bridge whose leg A has SRTP keys, and A's peer: it encrypts with
    /// A's receive key and decrypts with A's send key.
    fn keyed_bridge() -> (Net, Transform) {
        let mut net = Net::new(
            RelayConfig::default(),
            spec("192.0.2.1:4000", AudioCodec::Pcmu),
            spec("192.0.2.2:5000", AudioCodec::Pcmu),
        );
        net.relay.set_keys(A, Some(&keys(1, 2))).unwrap();
        let peer = Transform::new(&keys(2, 1), provider().unwrap().as_ref()).unwrap();
        (net, peer)
    }

    #[test]
    fn an_srtp_leg_and_a_plain_leg_relay_each_others_audio() {
        let (mut net, mut peer) = keyed_bridge();
        let audio: Vec<u8> = (0..160).map(|i| i as u8).collect();

        // SRTP in on A, plain RTP out on B.
        let mut buf = vec![0u8; 1500];
        rtp::write_header(&mut buf, false, 0, 100, 16000, 0x1234).unwrap();
        buf[12..172].copy_from_slice(&audio);
        let len = peer.protect_rtp(&mut buf, 172).unwrap();
        assert_eq!(len, 182);
        let t = net
            .relay
            .handle_datagram(
                net.at(20),
                net.sa,
                Channel::Rtp,
                addr("192.0.2.1:4000"),
                &mut buf,
                len,
            )
            .unwrap();
        assert_eq!((t.slot, t.len), (net.sb, 172));
        assert_eq!(&buf[12..172], &audio[..], "B hears A's audio in the clear");

        // Plain in on B, SRTP out on A that A's peer decrypts.
        let (t, bytes) = net
            .send(40, net.sb, "192.0.2.2:5000", 0, 7, 800, &audio)
            .unwrap();
        assert_eq!((t.slot, t.len), (net.sa, 182));
        assert_ne!(&bytes[12..172], &audio[..], "encrypted toward A");
        let mut buf = bytes.clone();
        let n = peer.unprotect_rtp(&mut buf, bytes.len()).unwrap();
        assert_eq!(&buf[12..n], &audio[..]);

        // Generated silence toward A is encrypted too.
        let generated = net.run_until(2000);
        let toward_a: Vec<_> = generated.iter().filter(|(t, _)| t.slot == net.sa).collect();
        assert!(!toward_a.is_empty());
        for (t, bytes) in toward_a {
            let mut buf = bytes.clone();
            let n = peer.unprotect_rtp(&mut buf, t.len).unwrap();
            assert!(buf[12..n].iter().all(|&b| b == 0xFF), "µ-law silence");
        }
    }

    #[test]
    fn forged_and_replayed_srtp_is_dropped_and_counted() {
        let (mut net, mut peer) = keyed_bridge();
        let mut buf = vec![0u8; 1500];
        rtp::write_header(&mut buf, false, 0, 100, 16000, 0x1234).unwrap();
        let len = peer.protect_rtp(&mut buf, 172).unwrap();
        let packet = buf[..len].to_vec();
        let from = addr("192.0.2.1:4000");
        let mut forged = packet.clone();
        forged[30] ^= 0x40;
        for (bytes, relayed) in [(&forged, false), (&packet, true), (&packet, false)] {
            let mut b = bytes.clone();
            let out = net.relay.handle_datagram(
                net.at(20),
                net.sa,
                Channel::Rtp,
                from,
                &mut b,
                bytes.len(),
            );
            assert_eq!(out.is_some(), relayed);
        }
        // Plain RTP on an SRTP leg is not taken either.
        assert!(
            net.send(25, net.sa, "192.0.2.1:4000", 0, 101, 16160, &[0xFF; 160])
                .is_none()
        );
        let stats = net.relay.stats(net.at(30), A).unwrap();
        assert_eq!(stats.srtp_rejected, 3);
        assert_eq!(stats.srtp, Some("AES_CM_128_HMAC_SHA1_80"));
        // Keys removed: the leg is plain again.
        net.relay.set_keys(A, None).unwrap();
        assert_eq!(net.relay.stats(net.at(30), A).unwrap().srtp, None);
    }
}

mod dtls {
    use super::*;
    use crate::media::dtls::{DtlsSession, DtlsSetup, Identity, is_dtls};
    use crate::media::srtp::{Transform, provider};

    const PEER_A: &str = "192.0.2.1:4000";

    /// A bridge whose leg A is DTLS-SRTP (the relay the client), and A's
    /// peer, a DTLS server with its own certificate.
    fn dtls_bridge() -> (Net, DtlsSession) {
        let mut net = Net::new(
            RelayConfig::default(),
            spec(PEER_A, AudioCodec::Pcmu),
            spec("192.0.2.2:5000", AudioCodec::Pcmu),
        );
        let (ours, theirs) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let peer = DtlsSession::new(
            net.t0,
            &theirs,
            DtlsSetup {
                client: false,
                fingerprint: ours.fingerprint().to_vec(),
            },
            addr("192.0.2.9:9"),
        )
        .unwrap();
        net.relay.set_identity(Some(ours));
        let setup = DtlsSetup {
            client: true,
            fingerprint: theirs.fingerprint().to_vec(),
        };
        net.relay.set_dtls(net.t0, A, setup).unwrap();
        (net, peer)
    }

    /// Runs the handshake between the relay's leg A and `peer`; the peer's
    /// SRTP transform once done.
    fn handshake(net: &mut Net, peer: &mut DtlsSession) -> Transform {
        let mut buf = vec![0u8; 2048];
        let now = net.at(0);
        for _ in 0..50 {
            let mut keys = None;
            while let Some(t) = net.relay.poll_transmit(now, &mut buf) {
                assert_eq!((t.slot, t.to), (net.sa, addr(PEER_A)));
                assert!(is_dtls(&buf[..t.len]), "only the handshake goes out");
                keys = peer.handle(now, &buf[..t.len]).unwrap().or(keys);
            }
            while let Some(p) = peer.poll_transmit() {
                buf[..p.len()].copy_from_slice(&p);
                let out = net.relay.handle_datagram(
                    now,
                    net.sa,
                    Channel::Rtp,
                    addr(PEER_A),
                    &mut buf,
                    p.len(),
                );
                assert!(out.is_none(), "handshake records are not relayed");
            }
            if let Some(keys) = keys.filter(|_| net.relay.stats(now, A).unwrap().srtp.is_some()) {
                return Transform::new(&keys, provider().unwrap().as_ref()).unwrap();
            }
            if peer.is_done() && net.relay.stats(now, A).unwrap().srtp.is_some() {
                panic!("keys came before the last flight");
            }
        }
        panic!("no handshake");
    }

    #[test]
    fn a_dtls_leg_handshakes_then_relays_srtp_with_a_plain_leg() {
        let (mut net, mut peer) = dtls_bridge();
        // Before the handshake nothing plain goes toward the DTLS leg.
        assert!(
            net.send(0, net.sb, "192.0.2.2:5000", 0, 1, 0, &[0xFF; 160])
                .is_none()
        );
        let mut srtp = handshake(&mut net, &mut peer);
        assert!(net.events().contains(&MediaEventKind::DtlsConnected));
        let stats = net.relay.stats(net.at(0), A).unwrap();
        assert!(stats.srtp.is_some(), "{stats:?}");

        // Plain from B leaves encrypted toward A's peer.
        let audio = [0x42u8; 160];
        let (t, bytes) = net
            .send(20, net.sb, "192.0.2.2:5000", 0, 2, 160, &audio)
            .unwrap();
        assert_eq!(t.slot, net.sa);
        let mut buf = bytes.clone();
        let n = srtp.unprotect_rtp(&mut buf, bytes.len()).unwrap();
        assert_eq!(&buf[12..n], &audio[..]);

        // SRTP from A's peer leaves in the clear toward B.
        let mut buf = vec![0u8; 2048];
        rtp::write_header(&mut buf, false, 0, 77, 1234, 0x5151).unwrap();
        buf[12..172].copy_from_slice(&[0x24; 160]);
        let len = srtp.protect_rtp(&mut buf, 172).unwrap();
        let t = net
            .relay
            .handle_datagram(
                net.at(40),
                net.sa,
                Channel::Rtp,
                addr(PEER_A),
                &mut buf,
                len,
            )
            .unwrap();
        assert_eq!((t.slot, t.len), (net.sb, 172));
        assert_eq!(&buf[12..172], &[0x24; 160][..]);
    }

    #[test]
    fn a_handshake_nobody_answers_fails_the_leg_by_its_deadline() {
        let (mut net, _) = dtls_bridge();
        let sent = net.run_until(30_000);
        let hellos = sent
            .iter()
            .filter(|(t, b)| t.slot == net.sa && is_dtls(b))
            .count();
        assert!(hellos >= 2, "the first flight was sent again: {hellos}");
        let failed = net
            .events()
            .into_iter()
            .filter(|e| matches!(e, MediaEventKind::DtlsFailed { .. }))
            .count();
        assert_eq!(failed, 1);
        assert!(net.relay.stats(net.at(30_000), A).unwrap().srtp.is_none());
    }
}
