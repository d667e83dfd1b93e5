//! Bytes into the endpoint: a script of datagrams and stream messages from a
//! few peers, the owner's answers to what reaches it (provisional, final,
//! nothing), CANCELs of its own INVITEs, flows closing, and clock steps.
//! Nothing may panic; after the script, once ten minutes pass with no input,
//! no transaction, unacknowledged 2xx, server entry or cached ACK may remain.

#![no_main]

use std::collections::hash_map::RandomState;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dialerd::sip::endpoint::{
    Conn, Endpoint, EndpointConfig, Event, Input, OutRequest, Output, OwnerId, Reply,
};
use dialerd::sip::ids::SeededEntropy;
use dialerd::sip::message::OutMessage;
use dialerd::sip::target::{FlowId, Target, Transport};
use dialerd::sip::transport::CloseReason;
use libfuzzer_sys::fuzz_target;

const UDP: FlowId = FlowId(1);
const TCP: FlowId = FlowId(2);

fn source(selector: u8) -> Target {
    let port = 5060 + u16::from(selector % 3);
    let addr = std::net::SocketAddr::from(([192, 0, 2, 7], port));
    if selector & 0x80 == 0 {
        Target {
            transport: Transport::Udp,
            addr,
            flow: Some(UDP),
        }
    } else {
        Target {
            transport: Transport::Tcp,
            addr: "192.0.2.8:40000".parse().expect("address"),
            flow: Some(TCP),
        }
    }
}

fn tcp_opened(ep: &mut Endpoint, now: Instant) {
    ep.handle_input(
        now,
        Input::FlowOpened {
            flow: TCP,
            conn: Conn {
                transport: Transport::Tcp,
                remote: "192.0.2.8:40000".parse().expect("address"),
                local: "192.0.2.1:5060".parse().expect("address"),
                outbound: false,
            },
        },
    );
}

fuzz_target!(|data: &[u8]| {
    let mut ep = Endpoint::new(
        EndpointConfig::default(),
        RandomState::new(),
        Box::new(SeededEntropy::new(9)),
    );
    let start = Instant::now();
    let mut now = start;
    ep.add_udp(UDP, "192.0.2.1:5060".parse().expect("address"));
    tcp_opened(&mut ep, now);
    let mut pending = Vec::new();
    let mut invites = Vec::new();
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 6 {
            0 | 1 => {
                let len = usize::from(rest.first().copied().unwrap_or(0)) * 4;
                let selector = rest.get(1).copied().unwrap_or(0);
                let body = rest.get(2..).unwrap_or_default();
                let (bytes, after) = body.split_at(len.min(body.len()));
                rest = after;
                let input = Input::Message {
                    data: Bytes::copy_from_slice(bytes),
                    source: source(selector),
                };
                ep.handle_input(now, input);
            }
            2 => {
                // The owner answers the oldest request waiting for it.
                if let Some(txn) = pending.first().copied() {
                    let code = [180u16, 200, 486, 487][usize::from(op >> 4) % 4];
                    let _ = ep.respond(now, txn, Reply::code(code, "Fuzz"));
                    if code >= 200 {
                        pending.remove(0);
                    }
                }
            }
            3 => {
                let m = OutMessage::request("INVITE", "sip:peer@192.0.2.7")
                    .header("Max-Forwards", "70")
                    .header("From", "<sip:a@192.0.2.1>;tag=f")
                    .header("To", "<sip:peer@192.0.2.7>")
                    .header("Call-ID", format!("fuzz-{}", invites.len()))
                    .header("CSeq", "1 INVITE");
                if let Ok(txn) = ep.send_request(now, OwnerId(1), OutRequest::new(m), source(op)) {
                    invites.push(txn);
                }
            }
            4 => {
                if let Some(txn) = invites.get(usize::from(op >> 3) % invites.len().max(1)) {
                    let _ = ep.cancel(now, *txn);
                }
                if op & 0x80 != 0 {
                    ep.handle_input(
                        now,
                        Input::FlowClosed {
                            flow: TCP,
                            reason: CloseReason::PeerClosed,
                        },
                    );
                    tcp_opened(&mut ep, now);
                }
            }
            _ => {
                now += Duration::from_millis(u64::from(op) * 40);
                ep.handle_timeout(now);
            }
        }
        while let Some(out) = ep.poll_output() {
            if let Output::Event(
                Event::NewRequest { txn, .. } | Event::InDialog { txn: Some(txn), .. },
            ) = out
            {
                ep.adopt(txn, OwnerId(2));
                pending.push(txn);
            }
        }
    }
    // Whatever the owner left unanswered is answered now (as a call's
    // timers would), then ten minutes pass.
    for txn in pending {
        let _ = ep.respond(now, txn, Reply::code(500, "Fuzz"));
    }
    for txn in invites {
        ep.abandon(now, txn);
    }
    let end = now + Duration::from_secs(600);
    while let Some(at) = ep.poll_timeout() {
        if at > end {
            break;
        }
        now = now.max(at);
        ep.handle_timeout(now);
        while ep.poll_output().is_some() {}
    }
    ep.handle_timeout(end);
    while ep.poll_output().is_some() {}
    let live = ep.live();
    assert_eq!(live.transactions, 0, "{live:?}");
    assert_eq!(live.unacked, 0, "{live:?}");
    assert_eq!(live.servers, 0, "{live:?}");
    assert_eq!(live.acks, 0, "{live:?}");
    assert_eq!(live.timers, 0, "{live:?}");
});
