//! Bytes into the transaction layer: a script of received messages, sent
//! requests, responses from the TU and clock steps. Nothing may panic, and
//! once every request has a final response and ten minutes pass, only INVITE
//! client transactions in Proceeding may remain (RFC 3261 leaves that wait
//! to the transaction user, whose call timers bound it).

#![no_main]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dialerd::sip::message::{Framing, Limits, Message};
use dialerd::sip::target::{Target, Transport};
use dialerd::sip::transaction::{Event, Kind, Output, State, Timers, Transactions, TxnId};
use libfuzzer_sys::fuzz_target;

fn target(selector: u8) -> Target {
    let transport = match selector % 3 {
        0 => Transport::Udp,
        1 => Transport::Tcp,
        _ => Transport::Tls,
    };
    Target::new(transport, "192.0.2.7:5060".parse().expect("address"))
}

fn drain(t: &mut Transactions, servers: &mut Vec<TxnId>, seen: &mut HashSet<TxnId>) {
    while let Some(o) = t.poll_output() {
        if let Output::Event(e) = o {
            match e {
                Event::Request { txn, .. } => {
                    servers.push(txn);
                    seen.insert(txn);
                }
                Event::Response { txn, .. } | Event::Timeout { txn, .. } => {
                    seen.insert(txn);
                }
                _ => {}
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut t = Transactions::new(
        Timers::default(),
        std::collections::hash_map::RandomState::new(),
    );
    let start = Instant::now();
    let mut now = start;
    let mut servers = Vec::new();
    let mut seen = HashSet::new();
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 4 {
            0 | 1 => {
                let len = usize::from(rest.first().copied().unwrap_or(0)) * 4;
                let body = rest.get(1..).unwrap_or_default();
                let (bytes, after) = body.split_at(len.min(body.len()));
                rest = after;
                let Ok(m) = Message::parse(
                    Bytes::copy_from_slice(bytes),
                    Framing::Datagram,
                    &Limits::default(),
                ) else {
                    continue;
                };
                if m.validate().is_err() {
                    continue;
                }
                if op % 4 == 0 {
                    t.handle(now, m, target(op >> 2));
                } else if m.is_request() {
                    if let Ok(id) = t.send_request(now, m.raw().clone(), target(op >> 2)) {
                        seen.insert(id);
                    }
                }
            }
            2 => {
                let step = u64::from(rest.first().copied().unwrap_or(0));
                rest = rest.get(1..).unwrap_or_default();
                now += Duration::from_millis(step * 137);
                t.handle_timeout(now);
            }
            _ => {
                let code = 100 + u16::from(rest.first().copied().unwrap_or(0)) * 2;
                rest = rest.get(1..).unwrap_or_default();
                if let Some(id) = servers.last().copied() {
                    let _ = t.respond(now, id, code, Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"));
                }
            }
        }
        drain(&mut t, &mut servers, &mut seen);
    }
    for id in servers.clone() {
        let _ = t.respond(
            now,
            id,
            500,
            Bytes::from_static(b"SIP/2.0 500 Server Error\r\n\r\n"),
        );
    }
    drain(&mut t, &mut servers, &mut seen);
    let later = now + Duration::from_secs(600);
    while let Some(at) = t.poll_timeout() {
        if at > later {
            break;
        }
        t.handle_timeout(at);
        drain(&mut t, &mut servers, &mut seen);
    }
    for id in seen {
        if let Some(state) = t.state(id) {
            assert_eq!(
                (t.kind(id), state),
                (Some(Kind::InviteClient), State::Proceeding),
                "a transaction outlived every timer"
            );
        }
    }
});
