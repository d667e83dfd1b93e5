use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;
use crate::agent::ws::accept_for;

fn config(protocol: Protocol) -> StreamConfig {
    StreamConfig {
        host: "agent.test".into(),
        path: "/media".into(),
        headers: vec![],
        protocol,
        ids: StreamIds {
            account_sid: StreamIds::sid("AC", &[1; 16]),
            call_sid: StreamIds::sid("CA", &[2; 16]),
            stream_sid: StreamIds::sid("MZ", &[3; 16]),
        },
        custom_parameters: vec![("lead".into(), "42".into())],
        connect_timeout: Duration::from_secs(5),
        ping_interval: Duration::from_secs(20),
        max_message: 1 << 20,
        max_queue: 8 * 60_000,
        max_backlog: 64 * 1024,
        nonce: [9; 16],
    }
}

/// The agent's side of the wire: unmasks the client's frames and answers.
struct Agent {
    from_client: Vec<u8>,
}

#[derive(Debug, PartialEq)]
enum Frame {
    Text(Value),
    Binary(Vec<u8>),
    Ping,
    Pong,
    Close(u16),
}

impl Agent {
    fn new() -> Agent {
        Agent {
            from_client: Vec::new(),
        }
    }

    /// Takes what the stream wrote.
    fn take(&mut self, s: &mut AgentStream) {
        self.from_client.append(s.outgoing());
    }

    /// Answers the upgrade request.
    fn upgrade(&mut self, s: &mut AgentStream, now: Instant) {
        self.take(s);
        let text = String::from_utf8(std::mem::take(&mut self.from_client)).unwrap();
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap()
            .trim();
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            accept_for(key)
        );
        s.receive(now, response.as_bytes());
    }

    /// Every whole frame the client sent.
    fn frames(&mut self, s: &mut AgentStream) -> Vec<Frame> {
        self.take(s);
        let mut out = Vec::new();
        let b = &self.from_client;
        let mut i = 0;
        while i + 2 <= b.len() {
            let opcode = b[i] & 0x0F;
            assert!(b[i + 1] & 0x80 != 0, "client frames are masked");
            let (len, mut at) = match b[i + 1] & 0x7F {
                126 => (u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize, i + 4),
                127 => (
                    u64::from_be_bytes(b[i + 2..i + 10].try_into().unwrap()) as usize,
                    i + 10,
                ),
                n => (n as usize, i + 2),
            };
            let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            let payload: Vec<u8> = b[at..at + len]
                .iter()
                .zip(mask.iter().cycle())
                .map(|(x, k)| x ^ k)
                .collect();
            out.push(match opcode {
                1 => Frame::Text(serde_json::from_slice(&payload).unwrap()),
                2 => Frame::Binary(payload),
                8 => Frame::Close(u16::from_be_bytes([payload[0], payload[1]])),
                9 => Frame::Ping,
                10 => Frame::Pong,
                o => panic!("opcode {o}"),
            });
            i = at + len;
        }
        self.from_client.drain(..i);
        out
    }
}

/// A server frame (unmasked).
fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    if payload.len() < 126 {
        f.push(payload.len() as u8);
    } else if payload.len() < 65536 {
        f.push(126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    } else {
        f.push(127);
        f.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

fn text(v: Value) -> Vec<u8> {
    server_frame(1, v.to_string().as_bytes())
}

fn open(protocol: Protocol) -> (AgentStream, Agent, Instant) {
    let t0 = Instant::now();
    let mut s = AgentStream::new(t0, config(protocol));
    let mut a = Agent::new();
    s.connected(t0);
    a.upgrade(&mut s, t0);
    assert!(s.is_open());
    assert_eq!(s.poll_event(), Some(StreamEvent::Started));
    (s, a, t0)
}

fn events(s: &mut AgentStream) -> Vec<StreamEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

#[test]
fn connected_and_start_go_once_then_the_calls_audio_and_dtmf_in_order() {
    let (mut s, mut a, _) = open(Protocol::Twilio);
    s.audio(&[0xFF; 160], 1000);
    s.dtmf('7');
    s.audio(&[0x7F; 160], 1160);
    let frames = a.frames(&mut s);
    let events: Vec<&str> = frames
        .iter()
        .map(|f| match f {
            Frame::Text(v) => v["event"].as_str().unwrap(),
            _ => "?",
        })
        .collect();
    assert_eq!(events, ["connected", "start", "media", "dtmf", "media"]);
    let Frame::Text(start) = &frames[1] else {
        panic!()
    };
    assert_eq!(start["start"]["customParameters"], json!({"lead": "42"}));
    let Frame::Text(second) = &frames[4] else {
        panic!()
    };
    assert_eq!(second["sequenceNumber"], "4");
    assert_eq!(second["media"]["chunk"], "2");
    assert_eq!(second["media"]["timestamp"], "20");
    assert_eq!(
        crate::base64::decode(second["media"]["payload"].as_str().unwrap()).unwrap(),
        vec![0x7F; 160]
    );
}

#[test]
fn the_agents_audio_is_paced_in_20_ms_frames_with_marks_echoed_after_it() {
    let (mut s, mut a, t0) = open(Protocol::Twilio);
    a.frames(&mut s);
    let payload = crate::base64::encode(&[0x11; 800]);
    s.receive(
        t0,
        &text(json!({"event": "media", "streamSid": "x", "media": {"payload": payload}})),
    );
    s.receive(
        t0,
        &text(json!({"event": "mark", "streamSid": "x", "mark": {"name": "m1"}})),
    );
    let mut frame = [0u8; FRAME];
    let mut audio_frames = 0;
    let mut mark_at = None;
    for i in 1..=10 {
        let now = t0 + PTIME * i;
        assert!(s.next_frame(now, &mut frame));
        assert!(!s.next_frame(now, &mut frame), "one frame per 20 ms");
        audio_frames += usize::from(frame[0] == 0x11);
        if mark_at.is_none()
            && a.frames(&mut s)
                .iter()
                .any(|f| matches!(f, Frame::Text(v) if v["mark"]["name"] == "m1"))
        {
            mark_at = Some(i);
        }
    }
    assert_eq!(audio_frames, 5, "800 bytes are five frames");
    assert_eq!(
        mark_at,
        Some(5),
        "the mark comes back with its audio's last frame"
    );
}

#[test]
fn clear_silences_the_next_frame_and_echoes_pending_marks() {
    let (mut s, mut a, t0) = open(Protocol::Twilio);
    a.frames(&mut s);
    let payload = crate::base64::encode(&vec![0x22; 80_000]);
    s.receive(
        t0,
        &text(json!({"event": "media", "media": {"payload": payload}})),
    );
    s.receive(
        t0,
        &text(json!({"event": "mark", "mark": {"name": "before_clear"}})),
    );
    let mut frame = [0u8; FRAME];
    assert!(s.next_frame(t0 + PTIME, &mut frame));
    assert_eq!(frame[0], 0x22);
    s.receive(
        t0 + PTIME,
        &text(json!({"event": "clear", "streamSid": "x"})),
    );
    let echoed = a.frames(&mut s);
    assert!(matches!(&echoed[..], [Frame::Text(v)] if v["mark"]["name"] == "before_clear"));
    assert!(s.next_frame(t0 + PTIME * 2, &mut frame));
    assert!(
        frame.iter().all(|&b| b == 0xFF),
        "silence right after clear"
    );
}

#[test]
fn silence_fills_every_frame_while_connecting_and_after_the_agent_goes_quiet() {
    let t0 = Instant::now();
    let mut s = AgentStream::new(t0, config(Protocol::Twilio));
    let mut frame = [0u8; FRAME];
    let mut n = 0;
    for i in 1..=50 {
        if s.next_frame(t0 + PTIME * i, &mut frame) {
            n += 1;
            assert!(frame.iter().all(|&b| b == 0xFF));
        }
    }
    assert_eq!(n, 50);
}

#[test]
fn refusal_timeout_close_and_lost_connections_end_with_their_cause() {
    // Refused upgrade.
    let t0 = Instant::now();
    let mut s = AgentStream::new(t0, config(Protocol::Twilio));
    s.connected(t0);
    s.receive(t0, b"HTTP/1.1 403 Forbidden\r\n\r\n");
    assert_eq!(
        events(&mut s),
        [StreamEvent::Ended(StreamEnd::WebSocket(WsError::Refused(
            403
        )))]
    );
    assert!(s.is_done());

    // Nothing within the connect timeout.
    let mut s = AgentStream::new(t0, config(Protocol::Twilio));
    s.connected(t0);
    let deadline = s.poll_timeout().unwrap();
    assert!(deadline <= t0 + PTIME);
    s.handle_timeout(t0 + Duration::from_secs(5));
    assert_eq!(
        events(&mut s),
        [StreamEvent::Ended(StreamEnd::ConnectTimeout)]
    );

    // The agent closes: our close frame answers, no stop is sent.
    let (mut s, mut a, t0) = open(Protocol::Twilio);
    a.frames(&mut s);
    s.receive(t0, &server_frame(8, &1000u16.to_be_bytes()));
    assert_eq!(
        events(&mut s),
        [StreamEvent::Ended(StreamEnd::Closed(Some(1000)))]
    );
    assert_eq!(a.frames(&mut s), [Frame::Close(1000)]);
    s.audio(&[0; 160], 0);
    assert!(a.frames(&mut s).is_empty(), "nothing after the close");

    // The connection drops without a close frame.
    let (mut s, _, _) = open(Protocol::Twilio);
    s.transport_failed("connection reset".into());
    assert_eq!(
        events(&mut s),
        [StreamEvent::Ended(StreamEnd::Lost(
            "connection reset".into()
        ))]
    );
}

#[test]
fn pings_go_every_interval_and_two_silent_intervals_end_the_stream() {
    let (mut s, mut a, t0) = open(Protocol::Twilio);
    a.frames(&mut s);
    s.handle_timeout(t0 + Duration::from_secs(20));
    assert_eq!(a.frames(&mut s), [Frame::Ping]);
    // A pong keeps it alive.
    s.receive(t0 + Duration::from_secs(21), &server_frame(10, b"dialerd"));
    s.handle_timeout(t0 + Duration::from_secs(40));
    assert_eq!(a.frames(&mut s), [Frame::Ping]);
    assert!(events(&mut s).is_empty());
    // Then nothing at all.
    s.handle_timeout(t0 + Duration::from_secs(61));
    assert_eq!(events(&mut s), [StreamEvent::Ended(StreamEnd::Silent)]);
    // And the agent's pings are answered.
    let (mut s, mut a, t0) = open(Protocol::Twilio);
    a.frames(&mut s);
    s.receive(t0, &server_frame(9, b"hi"));
    assert_eq!(a.frames(&mut s), [Frame::Pong]);
}

#[test]
fn bad_messages_are_reported_and_ignored_but_a_huge_frame_ends_the_stream() {
    let (mut s, mut a, t0) = open(Protocol::Twilio);
    a.frames(&mut s);
    s.receive(t0, &server_frame(1, b"{not json"));
    s.receive(t0, &text(json!({"event": "dance"})));
    s.receive(
        t0,
        &text(json!({"event": "media", "media": {"payload": "!!"}})),
    );
    s.receive(
        t0,
        &text(json!({"event": "media", "media": {"payload": "AAAA"}})),
    );
    let ev = events(&mut s);
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert!(ev.iter().all(|e| matches!(e, StreamEvent::BadMessage(_))));
    assert!(s.is_open());
    assert_eq!(s.stats().bad_messages, 3);
    assert_eq!(s.stats().received_messages, 1);

    let mut header = vec![0x81, 127];
    header.extend_from_slice(&(10u64 * 1024 * 1024).to_be_bytes());
    s.receive(t0, &header);
    assert!(matches!(
        &events(&mut s)[..],
        [StreamEvent::Ended(StreamEnd::WebSocket(WsError::TooBig(_)))]
    ));
    assert_eq!(a.frames(&mut s), [Frame::Close(1009)]);
}

#[test]
fn a_burst_over_the_queue_bound_is_dropped_once_reported_and_the_call_keeps_its_cadence() {
    let (mut s, mut a, t0) = open(Protocol::Twilio);
    a.frames(&mut s);
    // 70 s of audio in 20 ms messages, all at once, into a 60 s queue.
    for _ in 0..3500 {
        let payload = crate::base64::encode(&[0x33; 160]);
        s.receive(
            t0,
            &text(json!({"event": "media", "media": {"payload": payload}})),
        );
    }
    let ev = events(&mut s);
    assert_eq!(ev, [StreamEvent::Overflow { dropped_ms: 20 }]);
    assert_eq!(s.stats().dropped_bytes, 500 * 160);
    let mut frame = [0u8; FRAME];
    let mut n = 0;
    for i in 1..=100 {
        n += usize::from(s.next_frame(t0 + PTIME * i, &mut frame));
    }
    assert_eq!(n, 100);
}

#[test]
fn an_agent_that_does_not_read_ends_the_stream() {
    let (mut s, _, _) = open(Protocol::Twilio);
    for ts in 0..1000u32 {
        s.audio(&[0xFF; 160], ts * 160);
    }
    assert_eq!(events(&mut s), [StreamEvent::Ended(StreamEnd::Backlog)]);
}

#[test]
fn stop_sends_stop_and_a_close_then_waits_for_the_agents_close() {
    let (mut s, mut a, t0) = open(Protocol::Twilio);
    a.frames(&mut s);
    s.stop(t0);
    let frames = a.frames(&mut s);
    assert!(matches!(&frames[..], [Frame::Text(v), Frame::Close(1000)] if v["event"] == "stop"));
    assert!(!s.is_done());
    s.receive(t0, &server_frame(8, &1000u16.to_be_bytes()));
    assert!(s.is_done());
    assert!(events(&mut s).is_empty(), "a stop we asked for is no fault");
}

#[test]
fn l16_streams_binary_pcm_at_16_khz_and_takes_it_back() {
    let (mut s, mut a, t0) = open(Protocol::L16 { rate: 16_000 });
    let frames = a.frames(&mut s);
    assert!(
        matches!(&frames[..], [Frame::Text(v)] if v["event"] == "start" && v["sample_rate"] == 16000)
    );
    s.audio(&[0xFF; 160], 0);
    let frames = a.frames(&mut s);
    assert!(matches!(&frames[..], [Frame::Binary(b)] if b.len() == 640));
    // 20 ms of a loud 16 kHz square wave comes back as 160 µ-law bytes.
    let pcm: Vec<u8> = (0..320)
        .flat_map(|i: i32| (if i % 40 < 20 { 8000i16 } else { -8000 }).to_le_bytes())
        .collect();
    s.receive(t0, &server_frame(2, &pcm));
    s.receive(t0, &server_frame(2, &pcm));
    s.receive(t0, &server_frame(2, &pcm));
    let mut frame = [0u8; FRAME];
    assert!(s.next_frame(t0 + PTIME, &mut frame));
    assert!(frame.iter().all(|&b| b != 0xFF), "audio, not silence");
    let back = l16_to_ulaw(&ulaw_to_l16(&frame, 16_000), 16_000);
    assert_eq!(back.len(), 160);
}

#[test]
fn debug_output_keeps_header_values_and_the_query_out() {
    let mut c = config(Protocol::Twilio);
    c.path = "/media?token=s3cret-query".into();
    c.headers = vec![("Authorization".into(), "Bearer s3cret-header".into())];
    let shown = format!("{c:?}");
    assert!(shown.contains("Authorization"), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");
}
