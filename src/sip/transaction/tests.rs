//! Every state and timer of the four transaction machines, driven by a fake
//! clock: no test sleeps.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::sip::message::{HeaderName, Message, Method};
use crate::sip::target::{Target, Transport};

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const T4: Duration = Duration::from_secs(5);

fn peer(transport: Transport) -> Target {
    Target::new(transport, "192.0.2.50:5060".parse::<SocketAddr>().unwrap())
}

fn request(method: &str, branch: &str, cseq_method: &str) -> Bytes {
    Bytes::from(format!(
        "{method} sip:bob@192.0.2.50 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.10:5060;branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@192.0.2.10>;tag=a1\r\n\
         To: <sip:bob@192.0.2.50>\r\n\
         Call-ID: call-1@192.0.2.10\r\n\
         CSeq: 7 {cseq_method}\r\n\
         Route: <sip:proxy.example.com;lr>\r\n\
         Content-Length: 0\r\n\r\n"
    ))
}

fn response_to(req: &Bytes, code: u16) -> Message {
    let r = Message::parse_datagram(req.clone()).unwrap();
    let bytes =
        crate::sip::message::OutMessage::response_to(&r, code, "Reason", Some("b2"), None).encode();
    Message::parse_datagram(bytes).unwrap()
}

fn msg(b: &Bytes) -> Message {
    Message::parse_datagram(b.clone()).unwrap()
}

/// Drains outputs into (transmissions, events).
fn drain(t: &mut Transactions) -> (Vec<Bytes>, Vec<Event>) {
    let mut tx = Vec::new();
    let mut ev = Vec::new();
    while let Some(o) = t.poll_output() {
        match o {
            Output::Transmit { data, .. } => tx.push(data),
            Output::Event(e) => ev.push(e),
        }
    }
    (tx, ev)
}

fn layer() -> Transactions {
    Transactions::new(
        Timers {
            t1: T1,
            t2: T2,
            t4: T4,
        },
        std::collections::hash_map::RandomState::new(),
    )
}

/// Runs timers up to `until`, stepping to each deadline; returns the
/// instants at which something was transmitted.
fn run_until(t: &mut Transactions, start: Instant, until: Instant) -> (Vec<Duration>, Vec<Event>) {
    let mut sent = Vec::new();
    let mut events = Vec::new();
    while let Some(at) = t.poll_timeout() {
        if at > until {
            break;
        }
        t.handle_timeout(at);
        let (tx, ev) = drain(t);
        sent.extend(tx.iter().map(|_| at - start));
        events.extend(ev);
    }
    (sent, events)
}

fn terminated(events: &[Event]) -> bool {
    events.iter().any(|e| matches!(e, Event::Terminated { .. }))
}

fn timed_out(events: &[Event], which: Timer) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::Timeout { timer, .. } if *timer == which))
}

// --- INVITE client ---------------------------------------------------------

#[test]
fn invite_client_timer_a_doubles_and_timer_b_times_out() {
    let mut t = layer();
    let t0 = Instant::now();
    let id = t
        .send_request(
            t0,
            request("INVITE", "z9hG4bKic1", "INVITE"),
            peer(Transport::Udp),
        )
        .unwrap();
    assert_eq!(drain(&mut t).0.len(), 1);
    assert_eq!(t.state(id), Some(State::Calling));
    assert_eq!(t.poll_timeout(), Some(t0 + T1));
    let (sent, events) = run_until(&mut t, t0, t0 + Duration::from_secs(40));
    let ms: Vec<u128> = sent.iter().map(Duration::as_millis).collect();
    assert_eq!(
        ms,
        [500, 1500, 3500, 7500, 15500, 31500],
        "Timer A: T1, doubling"
    );
    assert!(timed_out(&events, Timer::B) && terminated(&events));
    assert_eq!(t.state(id), None);
    assert!(t.is_empty());
}

#[test]
fn invite_client_over_tcp_does_not_retransmit() {
    let mut t = layer();
    let t0 = Instant::now();
    t.send_request(
        t0,
        request("INVITE", "z9hG4bKic2", "INVITE"),
        peer(Transport::Tcp),
    )
    .unwrap();
    drain(&mut t);
    let (sent, events) = run_until(&mut t, t0, t0 + Duration::from_secs(40));
    assert!(sent.is_empty());
    assert!(timed_out(&events, Timer::B));
}

#[test]
fn invite_client_provisional_stops_a_and_b() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bKic3", "INVITE");
    let id = t
        .send_request(t0, req.clone(), peer(Transport::Udp))
        .unwrap();
    drain(&mut t);
    t.handle(
        t0 + Duration::from_millis(100),
        response_to(&req, 180),
        peer(Transport::Udp),
    );
    let (_, ev) = drain(&mut t);
    assert!(
        matches!(&ev[..], [Event::Response { response, .. }] if response.status() == Some(180))
    );
    assert_eq!(t.state(id), Some(State::Proceeding));
    let (sent, events) = run_until(&mut t, t0, t0 + Duration::from_secs(60));
    assert!(
        sent.is_empty() && events.is_empty(),
        "no retransmission, no timeout in Proceeding"
    );
}

#[test]
fn invite_client_2xx_accepted_passes_retransmissions_then_timer_m() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bKic4", "INVITE");
    let id = t
        .send_request(t0, req.clone(), peer(Transport::Udp))
        .unwrap();
    drain(&mut t);
    t.handle(t0, response_to(&req, 200), peer(Transport::Udp));
    assert_eq!(t.state(id), Some(State::Accepted));
    assert_eq!(drain(&mut t).1.len(), 1);
    t.handle(t0 + T1, response_to(&req, 200), peer(Transport::Udp));
    let (tx, ev) = drain(&mut t);
    assert!(tx.is_empty(), "the TU, not the transaction, ACKs a 2xx");
    assert!(
        matches!(&ev[..], [Event::Response { .. }]),
        "2xx retransmission reaches the TU"
    );
    let (_, events) = run_until(&mut t, t0, t0 + 64 * T1);
    assert!(terminated(&events));
    assert_eq!(t.state(id), None);
}

#[test]
fn invite_client_non_2xx_is_acked_and_timer_d_waits() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bKic5", "INVITE");
    let id = t
        .send_request(t0, req.clone(), peer(Transport::Udp))
        .unwrap();
    drain(&mut t);
    t.handle(t0, response_to(&req, 486), peer(Transport::Udp));
    let (tx, ev) = drain(&mut t);
    assert_eq!(t.state(id), Some(State::Completed));
    assert!(
        matches!(&ev[..], [Event::Response { response, .. }] if response.status() == Some(486))
    );
    assert_eq!(tx.len(), 1);
    let ack = msg(&tx[0]);
    assert_eq!(ack.method_str(), Some("ACK"));
    assert_eq!(ack.request_uri(), Some("sip:bob@192.0.2.50"));
    assert_eq!(
        ack.top_via().unwrap().branch(),
        Some("z9hG4bKic5"),
        "same branch as the INVITE"
    );
    assert_eq!(ack.cseq().unwrap().seq, 7);
    assert_eq!(ack.cseq().unwrap().method, "ACK");
    assert_eq!(
        ack.to_header().unwrap().tag(),
        Some("b2"),
        "To from the response"
    );
    assert_eq!(ack.from_header().unwrap().tag(), Some("a1"));
    assert_eq!(ack.routes().count(), 1);
    ack.validate().unwrap();
    t.handle(t0 + T1, response_to(&req, 486), peer(Transport::Udp));
    let (tx, ev) = drain(&mut t);
    assert_eq!(
        tx.len(),
        1,
        "retransmitted final answered with the ACK again"
    );
    assert!(ev.is_empty(), "and not passed up");
    let (_, events) = run_until(&mut t, t0, t0 + Duration::from_secs(31));
    assert!(events.is_empty());
    let (_, events) = run_until(&mut t, t0, t0 + Duration::from_secs(32));
    assert!(terminated(&events), "Timer D = 32 s over UDP");
}

#[test]
fn invite_client_timer_d_is_zero_over_tcp() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bKic6", "INVITE");
    let id = t
        .send_request(t0, req.clone(), peer(Transport::Tcp))
        .unwrap();
    drain(&mut t);
    t.handle(t0, response_to(&req, 603), peer(Transport::Tcp));
    let (tx, ev) = drain(&mut t);
    assert_eq!(tx.len(), 1, "ACK");
    assert!(terminated(&ev));
    assert_eq!(t.state(id), None);
}

// --- non-INVITE client -----------------------------------------------------

#[test]
fn non_invite_client_timer_e_caps_at_t2_and_timer_f_times_out() {
    let mut t = layer();
    let t0 = Instant::now();
    let id = t
        .send_request(
            t0,
            request("OPTIONS", "z9hG4bKnc1", "OPTIONS"),
            peer(Transport::Udp),
        )
        .unwrap();
    drain(&mut t);
    assert_eq!(t.state(id), Some(State::Trying));
    let (sent, events) = run_until(&mut t, t0, t0 + 64 * T1);
    let ms: Vec<u128> = sent.iter().map(Duration::as_millis).collect();
    assert_eq!(
        ms,
        [
            500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
        ]
    );
    assert!(timed_out(&events, Timer::F) && terminated(&events));
}

#[test]
fn non_invite_client_proceeding_retransmits_every_t2() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("REGISTER", "z9hG4bKnc2", "REGISTER");
    let id = t
        .send_request(t0, req.clone(), peer(Transport::Udp))
        .unwrap();
    drain(&mut t);
    t.handle(
        t0 + Duration::from_millis(100),
        response_to(&req, 100),
        peer(Transport::Udp),
    );
    assert_eq!(t.state(id), Some(State::Proceeding));
    drain(&mut t);
    let (sent, _) = run_until(&mut t, t0, t0 + Duration::from_millis(9000));
    let ms: Vec<u128> = sent.iter().map(Duration::as_millis).collect();
    assert_eq!(
        ms,
        [500, 4500, 8500],
        "first E was armed at T1, then T2 in Proceeding"
    );
}

#[test]
fn non_invite_client_final_completes_and_timer_k_waits_t4() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("OPTIONS", "z9hG4bKnc3", "OPTIONS");
    let id = t
        .send_request(t0, req.clone(), peer(Transport::Udp))
        .unwrap();
    drain(&mut t);
    t.handle(t0, response_to(&req, 200), peer(Transport::Udp));
    assert_eq!(t.state(id), Some(State::Completed));
    assert_eq!(drain(&mut t).1.len(), 1);
    t.handle(t0, response_to(&req, 200), peer(Transport::Udp));
    assert!(drain(&mut t).1.is_empty(), "retransmitted final absorbed");
    let (sent, events) = run_until(&mut t, t0, t0 + T4 - Duration::from_millis(1));
    assert!(sent.is_empty() && events.is_empty());
    let (_, events) = run_until(&mut t, t0, t0 + T4);
    assert!(terminated(&events));
}

#[test]
fn non_invite_client_over_tcp_ends_on_final() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("OPTIONS", "z9hG4bKnc4", "OPTIONS");
    t.send_request(t0, req.clone(), peer(Transport::Tcp))
        .unwrap();
    drain(&mut t);
    t.handle(t0, response_to(&req, 404), peer(Transport::Tcp));
    assert!(terminated(&drain(&mut t).1));
    assert!(t.is_empty());
}

#[test]
fn client_refuses_ack_and_duplicate_branches() {
    let mut t = layer();
    let t0 = Instant::now();
    assert_eq!(
        t.send_request(t0, request("ACK", "z9hG4bKx", "ACK"), peer(Transport::Udp)),
        Err(TxnError::NotTransactional)
    );
    t.send_request(
        t0,
        request("OPTIONS", "z9hG4bKdup", "OPTIONS"),
        peer(Transport::Udp),
    )
    .unwrap();
    assert_eq!(
        t.send_request(
            t0,
            request("OPTIONS", "z9hG4bKdup", "OPTIONS"),
            peer(Transport::Udp)
        ),
        Err(TxnError::Exists)
    );
}

// --- INVITE server ---------------------------------------------------------

fn incoming(
    t: &mut Transactions,
    now: Instant,
    req: &Bytes,
    transport: Transport,
) -> (TxnId, Vec<Bytes>) {
    t.handle(now, msg(req), peer(transport));
    let (tx, ev) = drain(t);
    let id = ev
        .iter()
        .find_map(|e| match e {
            Event::Request { txn, .. } => Some(*txn),
            _ => None,
        })
        .expect("a new server transaction");
    (id, tx)
}

fn resp_bytes(req: &Bytes, code: u16) -> Bytes {
    let r = msg(req);
    crate::sip::message::OutMessage::response_to(&r, code, "R", Some("s1"), None).encode()
}

#[test]
fn invite_server_sends_100_and_answers_retransmissions_with_last_provisional() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bKis1", "INVITE");
    let (id, tx) = incoming(&mut t, t0, &req, Transport::Udp);
    assert_eq!(t.state(id), Some(State::Proceeding));
    assert_eq!(tx.len(), 1);
    assert_eq!(msg(&tx[0]).status(), Some(100));
    t.handle(t0 + T1, msg(&req), peer(Transport::Udp));
    let (tx, ev) = drain(&mut t);
    assert!(ev.is_empty(), "retransmission not passed up");
    assert_eq!(msg(&tx[0]).status(), Some(100));
    t.respond(t0, id, 180, resp_bytes(&req, 180)).unwrap();
    drain(&mut t);
    t.handle(t0 + 2 * T1, msg(&req), peer(Transport::Udp));
    let (tx, _) = drain(&mut t);
    assert_eq!(msg(&tx[0]).status(), Some(180), "last provisional resent");
}

#[test]
fn invite_server_2xx_accepted_absorbs_invites_until_timer_l() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bKis2", "INVITE");
    let (id, _) = incoming(&mut t, t0, &req, Transport::Udp);
    t.respond(t0, id, 200, resp_bytes(&req, 200)).unwrap();
    assert_eq!(t.state(id), Some(State::Accepted));
    drain(&mut t);
    t.handle(t0 + T1, msg(&req), peer(Transport::Udp));
    let (tx, ev) = drain(&mut t);
    assert!(
        tx.is_empty() && ev.is_empty(),
        "INVITE retransmission absorbed in Accepted"
    );
    t.respond(t0 + T1, id, 200, resp_bytes(&req, 200)).unwrap();
    assert_eq!(
        drain(&mut t).0.len(),
        1,
        "the TU's 2xx retransmission goes out"
    );
    let (_, events) = run_until(&mut t, t0, t0 + 64 * T1);
    assert!(terminated(&events), "Timer L");
}

#[test]
fn invite_server_non_2xx_timer_g_until_ack_then_timer_i() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bKis3", "INVITE");
    let (id, _) = incoming(&mut t, t0, &req, Transport::Udp);
    t.respond(t0, id, 486, resp_bytes(&req, 486)).unwrap();
    assert_eq!(t.state(id), Some(State::Completed));
    drain(&mut t);
    let (sent, _) = run_until(&mut t, t0, t0 + Duration::from_millis(7600));
    let ms: Vec<u128> = sent.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [500, 1500, 3500, 7500], "Timer G: T1 doubling");
    t.handle(
        t0 + Duration::from_millis(7600),
        msg(&request("ACK", "z9hG4bKis3", "ACK")),
        peer(Transport::Udp),
    );
    assert_eq!(t.state(id), Some(State::Confirmed));
    let (tx, ev) = drain(&mut t);
    assert!(tx.is_empty() && ev.is_empty(), "ACK absorbed");
    t.handle(
        t0 + Duration::from_millis(7700),
        msg(&request("ACK", "z9hG4bKis3", "ACK")),
        peer(Transport::Udp),
    );
    assert!(drain(&mut t).1.is_empty(), "ACK retransmission absorbed");
    let (sent, events) = run_until(&mut t, t0, t0 + Duration::from_millis(7600) + T4);
    assert!(sent.is_empty(), "no more G after the ACK");
    assert!(terminated(&events), "Timer I = T4");
}

#[test]
fn invite_server_timer_g_caps_at_t2_and_timer_h_times_out() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bKis4", "INVITE");
    let (id, _) = incoming(&mut t, t0, &req, Transport::Udp);
    t.respond(t0, id, 500, resp_bytes(&req, 500)).unwrap();
    drain(&mut t);
    let (sent, events) = run_until(&mut t, t0, t0 + 64 * T1);
    let ms: Vec<u128> = sent.iter().map(Duration::as_millis).collect();
    assert_eq!(
        ms,
        [
            500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
        ]
    );
    assert!(timed_out(&events, Timer::H), "no ACK: Timer H");
    assert_eq!(t.state(id), None);
}

#[test]
fn invite_server_over_tcp_no_timer_g_and_timer_i_zero() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bKis5", "INVITE");
    let (id, _) = incoming(&mut t, t0, &req, Transport::Tcp);
    t.respond(t0, id, 480, resp_bytes(&req, 480)).unwrap();
    drain(&mut t);
    t.handle(
        t0 + T1,
        msg(&request("ACK", "z9hG4bKis5", "ACK")),
        peer(Transport::Tcp),
    );
    assert!(terminated(&drain(&mut t).1), "Timer I is zero on TCP");
    let (sent, _) = run_until(&mut t, t0, t0 + Duration::from_secs(60));
    assert!(sent.is_empty());
}

#[test]
fn invite_server_refuses_responses_after_final() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bKis6", "INVITE");
    let (id, _) = incoming(&mut t, t0, &req, Transport::Udp);
    t.respond(t0, id, 486, resp_bytes(&req, 486)).unwrap();
    assert_eq!(
        t.respond(t0, id, 200, resp_bytes(&req, 200)),
        Err(TxnError::BadState {
            code: 200,
            state: State::Completed
        })
    );
}

// --- non-INVITE server -----------------------------------------------------

#[test]
fn non_invite_server_trying_proceeding_completed_timer_j() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("OPTIONS", "z9hG4bKns1", "OPTIONS");
    let (id, tx) = incoming(&mut t, t0, &req, Transport::Udp);
    assert!(tx.is_empty(), "no automatic 100 for non-INVITE");
    assert_eq!(t.state(id), Some(State::Trying));
    t.handle(t0, msg(&req), peer(Transport::Udp));
    assert!(
        drain(&mut t).0.is_empty(),
        "retransmission in Trying absorbed"
    );
    t.respond(t0, id, 100, resp_bytes(&req, 100)).unwrap();
    assert_eq!(t.state(id), Some(State::Proceeding));
    drain(&mut t);
    t.handle(t0, msg(&req), peer(Transport::Udp));
    assert_eq!(msg(&drain(&mut t).0[0]).status(), Some(100));
    t.respond(t0, id, 200, resp_bytes(&req, 200)).unwrap();
    assert_eq!(t.state(id), Some(State::Completed));
    drain(&mut t);
    t.handle(t0 + T1, msg(&req), peer(Transport::Udp));
    assert_eq!(
        msg(&drain(&mut t).0[0]).status(),
        Some(200),
        "final resent on retransmission"
    );
    let (_, events) = run_until(&mut t, t0, t0 + 64 * T1 - Duration::from_millis(1));
    assert!(events.is_empty());
    let (_, events) = run_until(&mut t, t0, t0 + 64 * T1);
    assert!(terminated(&events), "Timer J = 64*T1");
}

#[test]
fn non_invite_server_over_tcp_timer_j_zero() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("OPTIONS", "z9hG4bKns2", "OPTIONS");
    let (id, _) = incoming(&mut t, t0, &req, Transport::Tcp);
    t.respond(t0, id, 200, resp_bytes(&req, 200)).unwrap();
    assert!(terminated(&drain(&mut t).1));
}

// --- matching and stray messages ------------------------------------------

#[test]
fn stray_response_and_ack_for_2xx_reach_the_tu() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bKnone", "INVITE");
    t.handle(t0, response_to(&req, 200), peer(Transport::Udp));
    assert!(matches!(
        &drain(&mut t).1[..],
        [Event::StrayResponse { .. }]
    ));
    t.handle(
        t0,
        msg(&request("ACK", "z9hG4bKnew", "ACK")),
        peer(Transport::Udp),
    );
    assert!(matches!(&drain(&mut t).1[..], [Event::Ack { .. }]));
}

#[test]
fn responses_match_on_branch_and_method() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bKm1", "INVITE");
    let id = t
        .send_request(t0, req.clone(), peer(Transport::Udp))
        .unwrap();
    drain(&mut t);
    // A CANCEL's response carries the same branch but another method.
    let cancel = request("CANCEL", "z9hG4bKm1", "CANCEL");
    t.handle(t0, response_to(&cancel, 200), peer(Transport::Udp));
    assert!(matches!(
        &drain(&mut t).1[..],
        [Event::StrayResponse { .. }]
    ));
    assert_eq!(t.state(id), Some(State::Calling));
}

#[test]
fn cancel_finds_its_invite_server_transaction() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bKc1", "INVITE");
    let (invite, _) = incoming(&mut t, t0, &req, Transport::Udp);
    let cancel = request("CANCEL", "z9hG4bKc1", "CANCEL");
    let (cancel_txn, _) = incoming(&mut t, t0, &cancel, Transport::Udp);
    assert_ne!(invite, cancel_txn, "CANCEL has its own transaction");
    assert_eq!(t.cancelled_invite(&msg(&cancel)), Some(invite));
    let other = request("CANCEL", "z9hG4bKc2", "CANCEL");
    assert_eq!(t.cancelled_invite(&msg(&other)), None);
}

#[test]
fn rfc2543_requests_match_by_identity() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("INVITE", "1234-no-cookie", "INVITE");
    let (id, _) = incoming(&mut t, t0, &req, Transport::Udp);
    t.handle(t0 + T1, msg(&req), peer(Transport::Udp));
    let (tx, ev) = drain(&mut t);
    assert!(ev.is_empty(), "matched as a retransmission");
    assert_eq!(tx.len(), 1);
    t.respond(t0, id, 404, resp_bytes(&req, 404)).unwrap();
    drain(&mut t);
    let ack = request("ACK", "1234-no-cookie", "ACK");
    t.handle(t0 + T1, msg(&ack), peer(Transport::Udp));
    assert_eq!(
        t.state(id),
        Some(State::Confirmed),
        "ACK matched without the To tag"
    );
}

#[test]
fn magic_cookie_alone_is_a_valid_branch() {
    // RFC 4475 §3.2 badbranch: "z9hG4bK" with nothing after it.
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("OPTIONS", "z9hG4bK", "OPTIONS");
    incoming(&mut t, t0, &req, Transport::Udp);
    t.handle(t0, msg(&req), peer(Transport::Udp));
    assert!(drain(&mut t).1.is_empty(), "retransmission matched");
}

#[test]
fn transport_error_terminates_and_reports() {
    let mut t = layer();
    let t0 = Instant::now();
    let id = t
        .send_request(
            t0,
            request("OPTIONS", "z9hG4bKte", "OPTIONS"),
            peer(Transport::Tcp),
        )
        .unwrap();
    drain(&mut t);
    t.transport_error(id);
    let (_, ev) = drain(&mut t);
    assert!(matches!(ev[0], Event::TransportError { txn } if txn == id));
    assert!(terminated(&ev));
    assert!(t.is_empty());
}

#[test]
fn responses_go_to_rport_or_sent_by_port() {
    let with_rport = msg(&request("OPTIONS", "z9hG4bKr", "OPTIONS"));
    let src = Target::new(Transport::Udp, "198.51.100.7:40123".parse().unwrap());
    assert_eq!(response_target(&with_rport, src).addr, src.addr);
    let plain = Bytes::from(
        String::from_utf8(request("OPTIONS", "z9hG4bKr", "OPTIONS").to_vec())
            .unwrap()
            .replace(";rport", ""),
    );
    let target = response_target(&msg(&plain), src);
    assert_eq!(
        target.addr,
        "198.51.100.7:5060".parse::<SocketAddr>().unwrap()
    );
    let tcp = Target::new(Transport::Tcp, "198.51.100.7:40123".parse().unwrap());
    assert_eq!(
        response_target(&msg(&plain), tcp),
        tcp,
        "connection-oriented: same flow"
    );
}

#[test]
fn matching_finds_server_and_client_transactions_without_acting() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("OPTIONS", "z9hG4bKmt1", "OPTIONS");
    let (server, _) = incoming(&mut t, t0, &req, Transport::Udp);
    assert_eq!(t.matching(&msg(&req)), Some(server));
    assert!(drain(&mut t).0.is_empty(), "matching sends nothing");
    let out = request("OPTIONS", "z9hG4bKmt2", "OPTIONS");
    let client = t
        .send_request(t0, out.clone(), peer(Transport::Udp))
        .unwrap();
    assert_eq!(t.matching(&response_to(&out, 200)), Some(client));
    assert_eq!(
        t.matching(&msg(&request("OPTIONS", "z9hG4bKnone", "OPTIONS"))),
        None
    );
}

// --- CANCEL, abandon, timer set ---------------------------------------------

fn cancel_sent(events: &[Event]) -> Option<(TxnId, TxnId)> {
    events.iter().find_map(|e| match e {
        Event::CancelSent { invite, cancel } => Some((*invite, *cancel)),
        _ => None,
    })
}

#[test]
fn cancel_in_proceeding_reuses_the_branch_and_ends_64_t1_later_without_final() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bKcx1", "INVITE");
    let id = t
        .send_request(t0, req.clone(), peer(Transport::Udp))
        .unwrap();
    drain(&mut t);
    t.handle(t0, response_to(&req, 180), peer(Transport::Udp));
    drain(&mut t);
    t.cancel(t0, id).unwrap();
    let (tx, ev) = drain(&mut t);
    let (invite, cancel) = cancel_sent(&ev).expect("CANCEL sent at once");
    assert_eq!(invite, id);
    let m = msg(&tx[0]);
    assert_eq!(m.method(), Some(Method::Cancel));
    assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bKcx1"));
    assert_eq!(m.cseq().unwrap().seq, 7);
    assert_eq!(
        m.value(HeaderName::Route),
        Some("<sip:proxy.example.com;lr>")
    );
    assert_eq!(t.kind(cancel), Some(Kind::NonInviteClient));
    assert_eq!(t.cancel(t0, id), Err(TxnError::NotCancellable));
    let (_, events) = run_until(&mut t, t0, t0 + 64 * T1);
    assert!(timed_out(&events, Timer::Cancel));
    assert_eq!(t.state(id), None, "INVITE ended 64×T1 after the CANCEL");
}

#[test]
fn cancel_before_any_provisional_waits_for_one() {
    let mut t = layer();
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bKcx2", "INVITE");
    let id = t
        .send_request(t0, req.clone(), peer(Transport::Udp))
        .unwrap();
    drain(&mut t);
    t.cancel(t0, id).unwrap();
    let (tx, ev) = drain(&mut t);
    assert!(tx.is_empty() && cancel_sent(&ev).is_none(), "RFC 3261 §9.1");
    t.handle(t0 + T1, response_to(&req, 100), peer(Transport::Udp));
    let (tx, ev) = drain(&mut t);
    assert!(cancel_sent(&ev).is_some());
    assert_eq!(msg(&tx[0]).method(), Some(Method::Cancel));
    t.handle(t0 + T1, response_to(&req, 487), peer(Transport::Udp));
    let (tx, ev) = drain(&mut t);
    assert_eq!(msg(&tx[0]).method(), Some(Method::Ack), "487 acknowledged");
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::Response { txn, .. } if *txn == id))
    );
}

#[test]
fn abandon_forgets_without_sending() {
    let mut t = layer();
    let t0 = Instant::now();
    let id = t
        .send_request(
            t0,
            request("INVITE", "z9hG4bKab1", "INVITE"),
            peer(Transport::Udp),
        )
        .unwrap();
    drain(&mut t);
    t.abandon(id);
    let (tx, ev) = drain(&mut t);
    assert!(tx.is_empty() && terminated(&ev));
    assert!(t.is_empty());
    assert_eq!(t.armed_timers(), 0);
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn timer_set_holds_only_live_timers() {
    let mut t = layer();
    let t0 = Instant::now();
    let mut reqs = Vec::new();
    for i in 0..1000 {
        let req = request("INVITE", &format!("z9hG4bKts{i}"), "INVITE");
        t.send_request(t0, req.clone(), peer(Transport::Udp))
            .unwrap();
        reqs.push(req);
    }
    assert_eq!(t.armed_timers(), 2000, "A and B each");
    for req in &reqs {
        t.handle(t0, response_to(req, 180), peer(Transport::Udp));
    }
    assert_eq!(t.armed_timers(), 0, "disarmed timers are gone, not stale");
    for req in &reqs {
        t.handle(t0, response_to(req, 200), peer(Transport::Udp));
    }
    assert_eq!(t.armed_timers(), 1000, "Timer M only");
    drain(&mut t);
    run_until(&mut t, t0, t0 + 64 * T1);
    assert!(t.is_empty());
    assert_eq!(t.armed_timers(), 0);
}
