//! The sans-IO endpoint, whole rounds per second on one core: one INVITE
//! server round (INVITE in; 100, 180, 200 out; ACK in; BYE in; 200 out, the
//! INVITE adopted and its dialog bound as a call would) and one OPTIONS
//! (in, answered by the endpoint). Every message is parsed and validated as
//! on the wire; the responses are built and encoded.
//!
//! Over UDP the transactions stay in the tables for 64×T1 after their final
//! response, as RFC 3261 requires (the clock does not move here, so the
//! tables grow through the measurement, as they do under a sustained load);
//! over TCP they end at once.
//!
//! Run from `benches/`:
//!   CARGO_TARGET_DIR=target cargo bench --locked --bench endpoint

use std::collections::hash_map::RandomState;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dialerd::sip::endpoint::{
    Conn, DialogKey, Endpoint, EndpointConfig, Event, Input, Output, OwnerId, Reply,
};
use dialerd::sip::ids::SeededEntropy;
use dialerd::sip::target::{FlowId, Target, Transport};

const PEER: &str = "198.51.100.20:5060";

fn invite(i: u64) -> Bytes {
    let sdp = "v=0\r\no=ucm 1 1 IN IP4 198.51.100.20\r\ns=-\r\nc=IN IP4 198.51.100.20\r\n\
               t=0 0\r\nm=audio 10000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";
    Bytes::from(format!(
        "INVITE sip:1001@203.0.113.10:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bK-inv-{i};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Caller\" <sip:2000@pbx.example.com>;tag=f{i}\r\n\
         To: <sip:1001@pbx.example.com>\r\n\
         Call-ID: call-{i}@198.51.100.20\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:2000@198.51.100.20:5060>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ))
}

fn in_dialog(method: &str, i: u64, to_tag: &str, seq: u32, branch: &str) -> Bytes {
    Bytes::from(format!(
        "{method} sip:1001@203.0.113.10:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bK-{branch}-{i};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Caller\" <sip:2000@pbx.example.com>;tag=f{i}\r\n\
         To: <sip:1001@pbx.example.com>;tag={to_tag}\r\n\
         Call-ID: call-{i}@198.51.100.20\r\n\
         CSeq: {seq} {method}\r\n\
         Content-Length: 0\r\n\r\n"
    ))
}

fn options(i: u64) -> Bytes {
    Bytes::from(format!(
        "OPTIONS sip:1001@203.0.113.10:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bK-opt-{i};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:qualify@pbx.example.com>;tag=q{i}\r\n\
         To: <sip:1001@203.0.113.10>\r\n\
         Call-ID: qualify-{i}@198.51.100.20\r\n\
         CSeq: 102 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    ))
}

fn endpoint() -> Endpoint {
    let mut ep = Endpoint::new(
        EndpointConfig::default(),
        RandomState::new(),
        Box::new(SeededEntropy::new(1)),
    );
    ep.add_udp(FlowId(1), "203.0.113.10:5060".parse().expect("address"));
    // A connection the PBX opened.
    ep.handle_input(
        Instant::now(),
        Input::FlowOpened {
            flow: FlowId(2),
            conn: Conn {
                transport: Transport::Tcp,
                remote: PEER.parse().expect("address"),
                local: "203.0.113.10:5060".parse().expect("address"),
                outbound: false,
            },
        },
    );
    drain(&mut ep);
    ep
}

fn source(transport: Transport) -> Target {
    Target {
        transport,
        addr: PEER.parse().expect("address"),
        flow: Some(if transport == Transport::Udp {
            FlowId(1)
        } else {
            FlowId(2)
        }),
    }
}

/// Drains outputs; returns (transmits, the last event).
fn drain(ep: &mut Endpoint) -> (usize, Option<Event>) {
    let mut sent = 0;
    let mut last = None;
    while let Some(out) = ep.poll_output() {
        match out {
            Output::Transmit(t) => {
                black_box(&t.data);
                sent += 1;
            }
            Output::Event(e) => last = Some(e),
            Output::Connect { .. } => {}
        }
    }
    (sent, last)
}

fn config() -> Criterion {
    Criterion::default()
        .without_plots()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(50)
}

fn invite_server_round(c: &mut Criterion) {
    let mut group = c.benchmark_group("endpoint");
    group.throughput(Throughput::Elements(1));
    for (name, transport) in [("udp", Transport::Udp), ("tcp", Transport::Tcp)] {
        let mut ep = endpoint();
        let now = Instant::now();
        let mut i = 0u64;
        let from = source(transport);
        group.bench_function(format!("invite_server_round_{name}"), |b| {
            b.iter(|| {
                i += 1;
                let owner = OwnerId(i);
                ep.handle_input(
                    now,
                    Input::Message {
                        data: invite(i),
                        source: from,
                    },
                );
                let (sent, event) = drain(&mut ep);
                debug_assert_eq!(sent, 1, "100 Trying");
                let Some(Event::NewRequest { txn, .. }) = event else {
                    panic!("no INVITE event");
                };
                ep.adopt(txn, owner);
                let tag = ep.local_tag(txn).unwrap_or_default().to_owned();
                ep.bind_dialog(
                    DialogKey {
                        call_id: format!("call-{i}@198.51.100.20").into(),
                        local_tag: tag.clone().into(),
                        remote_tag: format!("f{i}").into(),
                    },
                    owner,
                );
                ep.respond(now, txn, Reply::code(180, "Ringing"))
                    .expect("180");
                ep.respond(now, txn, Reply::code(200, "OK")).expect("200");
                drain(&mut ep);
                ep.handle_input(
                    now,
                    Input::Message {
                        data: in_dialog("ACK", i, &tag, 1, "ack"),
                        source: from,
                    },
                );
                drain(&mut ep);
                ep.handle_input(
                    now,
                    Input::Message {
                        data: in_dialog("BYE", i, &tag, 2, "bye"),
                        source: from,
                    },
                );
                let Some(Event::InDialog { txn: Some(bye), .. }) = drain(&mut ep).1 else {
                    panic!("no BYE event");
                };
                ep.respond(now, bye, Reply::code(200, "OK")).expect("200");
                black_box(drain(&mut ep));
            });
        });
        group.bench_function(format!("options_{name}"), |b| {
            b.iter(|| {
                i += 1;
                ep.handle_input(
                    now,
                    Input::Message {
                        data: options(i),
                        source: from,
                    },
                );
                black_box(drain(&mut ep));
            });
        });
        // Nothing may pile up: transactions end on their timers.
        ep.handle_timeout(now + Duration::from_secs(64));
        drain(&mut ep);
        assert_eq!(ep.live().transactions, 0);
    }
    group.finish();
}

criterion_group! { name = benches; config = config(); targets = invite_server_round }
criterion_main!(benches);
