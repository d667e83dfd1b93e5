//! Arbitrary bytes from an agent into a stream whose WebSocket is up, cut
//! into reads at the positions the first bytes give and interleaved with
//! the call's audio, DTMF, frames and deadlines: the stream must never
//! panic, keep what it writes bounded, stay over once over, and yield one
//! 20 ms frame per deadline. The same bytes also go to the Twilio message
//! parser and the raw L16 protocol.

#![no_main]

use std::time::{Duration, Instant};

use dialerd::agent::playout::FRAME;
use dialerd::agent::stream::{AgentStream, PTIME, Protocol, StreamConfig};
use dialerd::agent::twilio::{self, StreamIds};
use dialerd::agent::ws::accept_for;
use libfuzzer_sys::fuzz_target;

const BACKLOG: usize = 64 * 1024;

fn stream(now: Instant, protocol: Protocol) -> AgentStream {
    let mut s = AgentStream::new(
        now,
        StreamConfig {
            host: "agent".into(),
            path: "/".into(),
            headers: vec![],
            protocol,
            ids: StreamIds {
                account_sid: StreamIds::sid("AC", &[1; 16]),
                call_sid: StreamIds::sid("CA", &[2; 16]),
                stream_sid: StreamIds::sid("MZ", &[3; 16]),
            },
            custom_parameters: vec![],
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(20),
            max_message: 4096,
            max_queue: 8000,
            max_backlog: BACKLOG,
            nonce: [5; 16],
        },
    );
    s.connected(now);
    let request = String::from_utf8_lossy(s.outgoing()).into_owned();
    s.outgoing().clear();
    let key = request
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_for(&key)
    );
    s.receive(now, response.as_bytes());
    assert!(s.is_open());
    s
}

fn drive(data: &[u8], protocol: Protocol) {
    let t0 = Instant::now();
    let mut s = stream(t0, protocol);
    let mut now = t0;
    let mut rest = data;
    let mut step = 0u32;
    let mut frame = [0u8; FRAME];
    while !rest.is_empty() {
        let cut = usize::from(rest[0]).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(cut);
        rest = tail;
        s.receive(now, chunk);
        step += 1;
        match step % 4 {
            0 => s.audio(&[0xFF; 160], step * 160),
            1 => s.dtmf('5'),
            2 => {
                now += PTIME;
                let due = s.next_frame(now, &mut frame);
                assert!(due, "a frame at every deadline");
                assert!(!s.next_frame(now, &mut frame), "one frame per deadline");
            }
            _ => s.handle_timeout(now),
        }
        assert!(s.outgoing().len() <= BACKLOG + 16 * 1024, "what it writes stays bounded");
        let done = s.is_done();
        s.outgoing().clear();
        while s.poll_event().is_some() {}
        if done {
            s.receive(now, chunk);
            s.audio(&[0; 160], 0);
            assert!(s.is_done(), "over stays over");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    drive(data, Protocol::Twilio);
    drive(data, Protocol::L16 { rate: 16_000 });
    let _ = twilio::parse(&String::from_utf8_lossy(data));
});
