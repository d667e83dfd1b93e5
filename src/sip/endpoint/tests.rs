//! The transaction-user interface on the simulated network: two endpoints,
//! a fake clock, a wire that loses, duplicates and reorders.

use std::time::Duration;

use bytes::Bytes;

use super::pair::{Pair, Side, Wire};
use super::*;
use crate::sip::message::{Message, Method, OutMessage};
use crate::sip::target::{FlowId, Target, Transport};

const A_OWNER: OwnerId = OwnerId(1);
const B_OWNER: OwnerId = OwnerId(2);
const SEC: Duration = Duration::from_secs(1);

fn invite(call_id: &str) -> OutRequest {
    let m = OutMessage::request("INVITE", "sip:bob@192.0.2.2")
        .header("Max-Forwards", "70")
        .header("From", "\"Alice\" <sip:alice@192.0.2.1>;tag=a1")
        .header("To", "<sip:bob@192.0.2.2>")
        .header("Call-ID", call_id)
        .header("CSeq", "1 INVITE");
    OutRequest::new(m).with_contact(ContactSpec {
        user: "alice".into(),
        params: String::new(),
    })
}

/// The ACK of a 2xx (RFC 3261 §13.2.2.4), or an in-dialog request.
fn in_dialog(method: &str, response: &Message, seq: u32) -> OutRequest {
    let m = OutMessage::request(method, "sip:bob@192.0.2.2")
        .header("Max-Forwards", "70")
        .header("From", response.value(HeaderName::From).unwrap_or_default())
        .header("To", response.value(HeaderName::To).unwrap_or_default())
        .header("Call-ID", response.call_id().unwrap_or_default())
        .header(
            "CSeq",
            format!("{} {method}", if method == "ACK" { 1 } else { seq }),
        );
    OutRequest::new(m)
}

/// A request from B inside the dialog B answered (tags swapped).
fn from_b(method: &str, request: &Message, local_tag: &str, seq: u32) -> OutRequest {
    let from = request.value(HeaderName::From).unwrap_or_default();
    let to = request.value(HeaderName::To).unwrap_or_default();
    let m = OutMessage::request(method, "sip:alice@192.0.2.1")
        .header("Max-Forwards", "70")
        .header("From", format!("{to};tag={local_tag}"))
        .header("To", from)
        .header("Call-ID", request.call_id().unwrap_or_default())
        .header("CSeq", format!("{seq} {method}"));
    OutRequest::new(m)
}

fn to_tag(m: &Message) -> String {
    m.to_header()
        .ok()
        .and_then(|t| t.tag().map(str::to_owned))
        .unwrap_or_default()
}

fn status(e: &Event) -> Option<(TxnId, u16)> {
    match e {
        Event::Response { txn, response, .. } => Some((*txn, response.status()?)),
        _ => None,
    }
}

/// A calls B: the INVITE's client transaction, and B's server transaction
/// and view of the request (adopted by B's owner).
fn place(p: &mut Pair, call_id: &str) -> (TxnId, TxnId, Message) {
    let now = p.now;
    let inv =
        p.a.ep
            .send_request(now, A_OWNER, invite(call_id), p.target(Side::B))
            .unwrap();
    let (txn, request) = new_invite(p);
    (inv, txn, request)
}

/// B's view of a new INVITE.
fn new_invite(p: &mut Pair) -> (TxnId, Message) {
    loop {
        match p.next_event(Side::B, 60 * SEC) {
            Some(Event::NewRequest { txn, request, .. }) => {
                p.b.ep.adopt(txn, B_OWNER);
                return (txn, request);
            }
            Some(_) => continue,
            None => panic!("B never saw the INVITE"),
        }
    }
}

fn acks_to_b(p: &Pair, tag: &str) -> usize {
    p.count(Side::B, |m| {
        m.method() == Some(Method::Ack) && to_tag(m) == tag
    })
}

#[test]
fn invite_client_gets_every_provisional_and_each_forked_2xx_and_acks_each() {
    let mut p = Pair::new(1, Wire::perfect());
    let (inv, txn, request) = place(&mut p, "fork-1");
    let now = p.now;
    p.b.ep
        .respond(now, txn, Reply::code(180, "Ringing"))
        .unwrap();
    let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    p.b.ep
        .respond(
            now,
            txn,
            Reply::code(183, "Session Progress").body("application/sdp", sdp),
        )
        .unwrap();
    // A forking proxy's two 2xx, from different UASs (different To tags).
    p.flush();
    let a_addr = p.a.addr;
    let fork =
        |tag: &str| OutMessage::response_to(&request, 200, "OK", Some(tag), Some(a_addr)).encode();
    p.send_raw(Side::B, fork("f1"));
    p.send_raw(Side::B, fork("f2"));
    let mut seen = Vec::new();
    let mut early_sdp = false;
    while let Some(e) = p.next_event(Side::A, 5 * SEC) {
        if let Event::Response {
            txn,
            response,
            acked_again,
            ..
        } = &e
        {
            assert_eq!(*txn, inv);
            let code = response.status().unwrap();
            if code == 183 {
                early_sdp = response.body().starts_with(b"v=0");
            }
            if code == 200 {
                assert!(!acked_again);
                let tag = to_tag(response);
                let now = p.now;
                p.a.ep
                    .send_ack(
                        now,
                        A_OWNER,
                        inv,
                        &tag,
                        in_dialog("ACK", response, 1),
                        p.target(Side::B),
                    )
                    .unwrap();
                seen.push(format!("200/{tag}"));
            } else {
                seen.push(code.to_string());
            }
        }
        if seen.len() == 5 {
            break;
        }
    }
    assert_eq!(seen, ["100", "180", "183", "200/f1", "200/f2"]);
    assert!(early_sdp, "183 carries its SDP to the owner");
    // A retransmitted 2xx reaches the owner again and is acknowledged again.
    p.send_raw(Side::B, fork("f1"));
    let again = p.next_event(Side::A, 5 * SEC).unwrap();
    assert!(matches!(
        again,
        Event::Response {
            acked_again: true,
            ..
        }
    ));
    p.run_until(p.now + SEC);
    assert_eq!(acks_to_b(&p, "f1"), 2, "each 2xx of f1 acknowledged");
    assert_eq!(acks_to_b(&p, "f2"), 1);
    let acks: Vec<&Message> = p
        .delivered
        .iter()
        .filter(|d| d.message.method() == Some(Method::Ack))
        .map(|d| &d.message)
        .collect();
    let b1 = acks[0].top_via().unwrap().branch().unwrap().to_owned();
    let b3 = acks[2].top_via().unwrap().branch().unwrap().to_owned();
    assert_eq!(
        b1, b3,
        "the same ACK, byte for byte, for the retransmission"
    );
}

/// A places a call to B; B rings; A cancels. Returns A's (cancel 200,
/// invite 487) observations.
fn cancel_while_ringing(p: &mut Pair) -> (bool, bool, bool) {
    let (inv, txn, _) = place(p, "cancel-1");
    let now = p.now;
    p.b.ep
        .respond(now, txn, Reply::code(180, "Ringing"))
        .unwrap();
    // A provisional (100 or 180; either may be lost, the other comes).
    loop {
        match p.next_event(Side::A, 60 * SEC).as_ref().and_then(status) {
            Some((_, 100..=199)) => break,
            Some(_) => continue,
            None => panic!("no provisional response"),
        }
    }
    let now = p.now;
    p.a.ep.cancel(now, inv).unwrap();
    let mut told = false;
    while let Some(e) = p.next_event(Side::B, 60 * SEC) {
        if let Event::Cancelled { owner, invite } = e {
            assert_eq!((owner, invite), (B_OWNER, txn));
            told = true;
            let now = p.now;
            p.b.ep
                .respond(now, txn, Reply::code(487, "Request Terminated"))
                .unwrap();
            break;
        }
    }
    let (mut cancel_ok, mut terminated) = (false, false);
    while let Some(e) = p.next_event(Side::A, 60 * SEC) {
        match status(&e) {
            Some((t, 200)) if t != inv => cancel_ok = true,
            Some((t, 487)) if t == inv => terminated = true,
            _ => {}
        }
        if cancel_ok && terminated {
            break;
        }
    }
    (told, cancel_ok, terminated)
}

#[test]
fn cancel_while_ringing_gives_200_and_487_and_tells_the_uas_owner() {
    let mut p = Pair::new(2, Wire::perfect());
    assert_eq!(cancel_while_ringing(&mut p), (true, true, true));
    p.run_until(p.now + 64 * SEC);
    assert_eq!(p.a.ep.live(), Live::default(), "A's tables are empty");
    assert_eq!(p.b.ep.live(), Live::default(), "B's tables are empty");
}

#[test]
fn cancel_crossing_a_200_delivers_both_to_the_owner() {
    let mut p = Pair::new(3, Wire::perfect());
    let (inv, txn, _) = place(&mut p, "cross-1");
    let now = p.now;
    p.b.ep
        .respond(now, txn, Reply::code(180, "Ringing"))
        .unwrap();
    while p.next_event(Side::A, 5 * SEC).as_ref().and_then(status) != Some((inv, 180)) {}
    // Both leave at the same instant and cross on the wire.
    let now = p.now;
    p.b.ep.respond(now, txn, Reply::code(200, "OK")).unwrap();
    p.a.ep.cancel(now, inv).unwrap();
    let (mut ok_invite, mut ok_cancel) = (false, false);
    while let Some(e) = p.next_event(Side::A, 5 * SEC) {
        match status(&e) {
            Some((t, 200)) if t == inv => ok_invite = true,
            Some((_, 200)) => ok_cancel = true,
            _ => {}
        }
    }
    assert!(
        ok_invite && ok_cancel,
        "the 200 of the INVITE and of the CANCEL"
    );
    assert!(
        !p.b.events
            .iter()
            .any(|e| matches!(e, Event::Cancelled { .. })),
        "a CANCEL after the 2xx has no effect at the UAS"
    );
}

#[test]
fn invite_server_retransmits_its_2xx_until_the_ack_then_stops() {
    let mut p = Pair::new(4, Wire::perfect());
    let (inv, txn, request) = place(&mut p, "uas-1");
    let tag = p.b.ep.local_tag(txn).unwrap().to_owned();
    p.b.ep.bind_dialog(
        DialogKey {
            call_id: "uas-1".into(),
            local_tag: tag.clone().into(),
            remote_tag: "a1".into(),
        },
        B_OWNER,
    );
    let now = p.now;
    p.b.ep
        .respond(now, txn, Reply::code(180, "Ringing"))
        .unwrap();
    p.b.ep.respond(now, txn, Reply::code(200, "OK")).unwrap();
    assert!(request.method() == Some(Method::Invite));
    // A's owner is slow: it acknowledges only after 3.6 s.
    p.run_until(now + Duration::from_millis(3600));
    let twos = p.count(Side::A, |m| m.status() == Some(200));
    assert_eq!(twos, 4, "sent at 0 and retransmitted at T1, 2T1, 4T1");
    let response = p
        .delivered
        .iter()
        .find(|d| d.message.status() == Some(200))
        .map(|d| d.message.clone())
        .unwrap();
    let now = p.now;
    p.a.ep
        .send_ack(
            now,
            A_OWNER,
            inv,
            &tag,
            in_dialog("ACK", &response, 1),
            p.target(Side::B),
        )
        .unwrap();
    let got_ack = loop {
        match p.next_event(Side::B, 5 * SEC) {
            Some(Event::InDialog {
                owner,
                txn: None,
                request,
                ..
            }) => break owner == B_OWNER && request.method() == Some(Method::Ack),
            Some(_) => continue,
            None => break false,
        }
    };
    assert!(got_ack, "the ACK reaches the dialog's owner");
    p.run_until(p.now + 40 * SEC);
    assert_eq!(
        p.count(Side::A, |m| m.status() == Some(200)),
        twos,
        "no retransmission after the ACK"
    );
    assert!(
        !p.b.events
            .iter()
            .any(|e| matches!(e, Event::AckTimeout { .. }))
    );
}

#[test]
fn a_2xx_never_acknowledged_ends_in_ack_timeout_after_64_t1() {
    let mut p = Pair::new(5, Wire::perfect());
    let (_, txn, _) = place(&mut p, "noack-1");
    let answered = p.now;
    p.b.ep
        .respond(answered, txn, Reply::code(200, "OK"))
        .unwrap();
    let timeout = loop {
        match p.next_event(Side::B, 60 * SEC) {
            Some(Event::AckTimeout { owner, invite }) => break Some((owner, invite, p.now)),
            Some(_) => continue,
            None => break None,
        }
    };
    let (owner, invite, at) = timeout.expect("AckTimeout");
    assert_eq!((owner, invite), (B_OWNER, txn));
    assert_eq!(at - answered, 64 * Duration::from_millis(500));
    // T1, 2T1, 4T1, then every T2 until 64×T1: 0.5, 1.5, 3.5, 7.5, ... 31.5
    assert_eq!(p.count(Side::A, |m| m.status() == Some(200)), 1 + 10);
}

/// A whole call over the lossy wire: INVITE, 180, 200, ACK, BYE from A,
/// 200; returns whether each step was seen by its owner.
fn call_over(p: &mut Pair, call_id: &str) -> bool {
    let (inv, txn, _) = place(p, call_id);
    let tag = p.b.ep.local_tag(txn).unwrap().to_owned();
    p.b.ep.bind_dialog(
        DialogKey {
            call_id: call_id.into(),
            local_tag: tag.clone().into(),
            remote_tag: "a1".into(),
        },
        B_OWNER,
    );
    let now = p.now;
    p.b.ep
        .respond(now, txn, Reply::code(180, "Ringing"))
        .unwrap();
    p.b.ep.respond(now, txn, Reply::code(200, "OK")).unwrap();
    let mut answer = None;
    while let Some(e) = p.next_event(Side::A, 40 * SEC) {
        if let Event::Response {
            txn: t,
            response,
            acked_again: false,
            ..
        } = e
            && t == inv
            && response.status() == Some(200)
        {
            answer = Some(response);
            break;
        }
    }
    let Some(answer) = answer else {
        return false;
    };
    let now = p.now;
    p.a.ep
        .send_ack(
            now,
            A_OWNER,
            inv,
            &tag,
            in_dialog("ACK", &answer, 1),
            p.target(Side::B),
        )
        .unwrap();
    let bye =
        p.a.ep
            .send_request(
                now,
                A_OWNER,
                in_dialog("BYE", &answer, 2),
                p.target(Side::B),
            )
            .unwrap();
    let mut bye_done = false;
    let mut b_answered = false;
    let deadline = p.now + 40 * SEC;
    while p.now < deadline && !bye_done {
        while let Some(e) = p.b.events.pop_front() {
            if let Event::InDialog {
                txn: Some(t),
                request,
                ..
            } = e
                && request.method() == Some(Method::Bye)
            {
                let now = p.now;
                p.b.ep.respond(now, t, Reply::code(200, "OK")).unwrap();
                b_answered = true;
            }
        }
        while let Some(e) = p.a.events.pop_front() {
            if status(&e) == Some((bye, 200)) {
                bye_done = true;
            }
        }
        if !p.step() {
            break;
        }
    }
    b_answered && bye_done
}

#[test]
fn calls_and_cancels_complete_under_20_percent_loss_and_leave_nothing_behind() {
    for seed in 0..20u64 {
        let mut p = Pair::new(100 + seed, Wire::lossy(0.2));
        assert!(call_over(&mut p, &format!("lossy-{seed}")), "seed {seed}");
        let mut c = Pair::new(200 + seed, Wire::lossy(0.2));
        assert_eq!(
            cancel_while_ringing(&mut c),
            (true, true, true),
            "seed {seed}"
        );
        for q in [&mut p, &mut c] {
            q.run_until(q.now + 120 * SEC);
            assert_eq!(q.a.ep.live().transactions, 0, "seed {seed}");
            assert_eq!(q.b.ep.live().transactions, 0, "seed {seed}");
            assert_eq!(q.a.ep.live().timers, 0);
            assert_eq!(q.a.ep.live().acks, 0);
            assert_eq!(q.b.ep.live().unacked, 0);
            assert_eq!(q.b.ep.live().servers, 0);
        }
    }
}

#[test]
fn options_is_answered_by_the_endpoint_and_an_unknown_method_refused() {
    let mut p = Pair::new(7, Wire::perfect());
    let options = OutMessage::request("OPTIONS", "sip:192.0.2.2")
        .header("Max-Forwards", "70")
        .header("From", "<sip:a@192.0.2.1>;tag=x")
        .header("To", "<sip:192.0.2.2>")
        .header("Call-ID", "opt-1")
        .header("CSeq", "1 OPTIONS");
    let now = p.now;
    let txn =
        p.a.ep
            .send_request(now, A_OWNER, OutRequest::new(options), p.target(Side::B))
            .unwrap();
    assert_eq!(
        p.next_event(Side::A, 5 * SEC).as_ref().and_then(status),
        Some((txn, 200))
    );
    assert!(p.b.events.is_empty(), "nothing reaches B's users");
}

#[test]
fn a_request_with_a_broken_start_line_but_a_readable_via_gets_400() {
    let mut p = Pair::new(8, Wire::perfect());
    let raw = "INVITE  sip:bob@192.0.2.2 SIP/2.0 \r\n\
               Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKbad;rport\r\n\
               From: <sip:a@192.0.2.1>;tag=1\r\nTo: <sip:bob@192.0.2.2>\r\n\
               Call-ID: bad-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n\
               Content-Length: 0\r\n\r\n";
    p.send_raw(Side::A, Bytes::from(raw));
    p.run_until(p.now + SEC);
    let answers: Vec<&Message> = p
        .delivered
        .iter()
        .filter(|d| d.to == Side::A)
        .map(|d| &d.message)
        .collect();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].status(), Some(400));
    assert!(answers[0].reason().unwrap().contains("start line"));
    assert_eq!(answers[0].call_id(), Some("bad-1"));
}

#[test]
fn statuses_outside_100_to_699_are_refused() {
    assert_eq!(Status::new(99), Err(BadStatus(99)));
    assert_eq!(Status::new(700), Err(BadStatus(700)));
    assert!(Status::new(487).is_ok());
    assert_eq!(Reply::code(1000, "x").status().code(), 500);
}

/// Forked 2xx under 20 % loss: a forking proxy retransmits each 2xx until
/// its ACK arrives (as a UAS does); the owner gets each 2xx and every one
/// is acknowledged; retransmissions after the owner's ACK are acknowledged
/// again by the endpoint.
#[test]
fn forked_2xx_under_loss_are_each_delivered_and_acknowledged() {
    for seed in 0..20u64 {
        let mut p = Pair::new(300 + seed, Wire::lossy(0.2));
        let (inv, _, request) = place(&mut p, "lossy-fork");
        let a_addr = p.a.addr;
        let fork = |tag: &str| {
            OutMessage::response_to(&request, 200, "OK", Some(tag), Some(a_addr)).encode()
        };
        let mut first_seen = Vec::new();
        let mut interval = Duration::from_millis(500);
        let mut next = p.now;
        let deadline = p.now + 32 * SEC;
        while p.now < deadline && (acks_to_b(&p, "f1") == 0 || acks_to_b(&p, "f2") == 0) {
            if p.now >= next {
                for tag in ["f1", "f2"] {
                    if acks_to_b(&p, tag) == 0 {
                        p.send_raw(Side::B, fork(tag));
                    }
                }
                next = p.now + interval;
                interval = (interval * 2).min(4 * SEC);
            }
            while let Some(e) = p.a.events.pop_front() {
                if let Event::Response {
                    txn,
                    response,
                    acked_again: false,
                    ..
                } = e
                    && txn == inv
                    && response.status() == Some(200)
                {
                    let tag = to_tag(&response);
                    first_seen.push(tag.clone());
                    let now = p.now;
                    p.a.ep
                        .send_ack(
                            now,
                            A_OWNER,
                            inv,
                            &tag,
                            in_dialog("ACK", &response, 1),
                            p.target(Side::B),
                        )
                        .unwrap();
                }
            }
            let until = p.now + Duration::from_millis(50);
            p.run_until(until);
        }
        // A duplicate that arrives before the owner acknowledged is reported
        // as new again (the owner acknowledges it again); none is lost.
        first_seen.sort();
        first_seen.dedup();
        assert_eq!(first_seen, ["f1", "f2"], "seed {seed}: each 2xx delivered");
        assert!(
            acks_to_b(&p, "f1") >= 1 && acks_to_b(&p, "f2") >= 1,
            "seed {seed}"
        );
    }
}

/// B answers A's INVITE, A binds the dialog, B sends a BYE (which must
/// reach A's owner, whose 200 must reach B), A unbinds, B sends another BYE
/// (which must get 481). Returns whether the first BYE went through its
/// owner and the second BYE's final status.
fn bye_then_stray_bye(p: &mut Pair, call_id: &str) -> (bool, Option<u16>) {
    let (_, txn, request) = place(&mut *p, call_id);
    let tag = p.b.ep.local_tag(txn).unwrap().to_owned();
    let now = p.now;
    p.b.ep.respond(now, txn, Reply::code(200, "OK")).unwrap();
    let key = DialogKey {
        call_id: call_id.into(),
        local_tag: "a1".into(),
        remote_tag: tag.clone().into(),
    };
    p.a.ep.bind_dialog(key.clone(), A_OWNER);
    let bye =
        p.b.ep
            .send_request(
                now,
                B_OWNER,
                from_b("BYE", &request, &tag, 1),
                p.target(Side::A),
            )
            .unwrap();
    let (mut answered, mut done) = (false, false);
    let deadline = p.now + 40 * SEC;
    while p.now < deadline && !done {
        while let Some(e) = p.a.events.pop_front() {
            if let Event::InDialog {
                owner,
                txn: Some(t),
                request,
                ..
            } = e
                && request.method() == Some(Method::Bye)
            {
                assert_eq!(owner, A_OWNER);
                let now = p.now;
                p.a.ep.respond(now, t, Reply::code(200, "OK")).unwrap();
                answered = true;
            }
        }
        while let Some(e) = p.b.events.pop_front() {
            if status(&e) == Some((bye, 200)) {
                done = true;
            }
        }
        if !p.step() {
            break;
        }
    }
    p.a.ep.unbind_dialog(&key);
    let now = p.now;
    let stray =
        p.b.ep
            .send_request(
                now,
                B_OWNER,
                from_b("BYE", &request, &tag, 2),
                p.target(Side::A),
            )
            .unwrap();
    let mut code = None;
    while let Some(e) = p.next_event(Side::B, 40 * SEC) {
        if let Some((t, c)) = status(&e)
            && t == stray
        {
            code = Some(c);
            break;
        }
    }
    (answered && done, code)
}

#[test]
fn in_dialog_bye_reaches_its_owner_and_an_unknown_one_gets_481() {
    let mut p = Pair::new(6, Wire::perfect());
    assert_eq!(bye_then_stray_bye(&mut p, "bye-1"), (true, Some(481)));
}

#[test]
fn in_dialog_requests_under_loss_reach_their_owner_or_get_481() {
    for seed in 0..20u64 {
        let mut p = Pair::new(400 + seed, Wire::lossy(0.2));
        let outcome = bye_then_stray_bye(&mut p, &format!("lossy-bye-{seed}"));
        assert_eq!(outcome, (true, Some(481)), "seed {seed}");
    }
}

#[test]
fn a_request_cancelled_while_its_connection_opens_is_never_sent() {
    let mut p = Pair::new(9, Wire::perfect());
    let peer: std::net::SocketAddr = "192.0.2.2:5060".parse().unwrap();
    let target = Target::new(Transport::Tcp, peer);
    let now = p.now;
    let txn =
        p.a.ep
            .send_request(now, A_OWNER, invite("waiting-1"), target)
            .unwrap();
    assert!(matches!(p.a.ep.poll_output(), Some(Output::Connect { .. })));
    p.a.ep.cancel(now, txn).unwrap();
    let failed = p.a.ep.poll_output();
    assert!(
        matches!(
            failed,
            Some(Output::Event(Event::RequestFailed {
                failure: Failure::Cancelled,
                ..
            }))
        ),
        "{failed:?}"
    );
    p.a.ep.handle_input(
        now,
        Input::FlowOpened {
            flow: FlowId(7),
            conn: Conn {
                transport: Transport::Tcp,
                remote: peer,
                local: "192.0.2.1:40000".parse().unwrap(),
                outbound: true,
            },
        },
    );
    while let Some(out) = p.a.ep.poll_output() {
        assert!(!matches!(out, Output::Transmit(_)), "nothing sent");
    }
    assert_eq!(p.a.ep.live().waiting, 0);
}
