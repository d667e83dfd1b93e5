//! The registration machine against scripted registrar answers, with a
//! fake clock.

use std::time::{Duration, Instant};

use super::*;

fn rng() -> Box<dyn Entropy> {
    Box::new(crate::sip::ids::SeededEntropy::new(42))
}
use crate::sip::message::{AuthParams, Framing, HeaderName, Limits};

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn config(registrars: &[&str], outbound: bool) -> RegConfig {
    RegConfig {
        aor: "sip:1001@pbx.example.com".into(),
        registrars: registrars.iter().map(|s| (*s).to_owned()).collect(),
        contact: "sip:1001@203.0.113.10:5060;transport=udp".into(),
        auth_username: "1001".into(),
        password: Some(Secret::new("pw")),
        expires: 3600,
        outbound,
        instance: "urn:uuid:00000000-0000-4000-8000-000000000001".into(),
        route: None,
        user_agent: "dialerd-test".into(),
        backoff: Backoff {
            initial: SECS(1),
            max: SECS(60),
            forbidden: SECS(600),
        },
    }
}

/// The next request the machine asks to send: (attempt, registrar, parsed).
fn sent(r: &mut Registration) -> (u64, usize, Message) {
    while let Some(o) = r.poll_output() {
        if let RegOutput::Send {
            attempt,
            registrar,
            request,
            ..
        } = o
        {
            let mut request = request;
            request.prepend("Via", "SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bKtest");
            let m =
                Message::parse(request.encode(), Framing::Datagram, &Limits::default()).unwrap();
            m.validate().unwrap();
            return (attempt, registrar, m);
        }
    }
    panic!("nothing sent");
}

fn nothing_sent(r: &mut Registration) -> bool {
    std::iter::from_fn(|| r.poll_output()).all(|o| !matches!(o, RegOutput::Send { .. }))
}

fn answer(request: &Message, code: u16, headers: &[(&str, &str)]) -> Message {
    let mut out = OutMessage::response_to(request, code, "Reason", Some("reg1"), None);
    for (n, v) in headers {
        out.push(n, v);
    }
    Message::parse_datagram(out.encode()).unwrap()
}

const CHALLENGE: &str = "Digest realm=\"pbx\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"";

fn registered_at(r: &Registration) -> Option<Instant> {
    match r.state() {
        RegState::Registered { expires_at } => Some(*expires_at),
        _ => None,
    }
}

/// Checks the Authorization a request carries against the password.
fn assert_valid_digest(req: &Message, header: HeaderName, nc: &str) {
    let value = req.value(header).expect("credentials");
    let p = AuthParams::parse(value).unwrap();
    let ch = Challenge {
        realm: p.get("realm").unwrap(),
        nonce: p.get("nonce").unwrap(),
        opaque: None,
        algorithm: auth::Algorithm::parse(&p.get("algorithm").unwrap()).unwrap(),
        qop: vec![auth::Qop::Auth],
        stale: false,
        proxy: false,
    };
    let attempt = Attempt {
        username: "1001",
        password: "pw",
        method: "REGISTER",
        uri: req.request_uri().unwrap(),
        body: b"",
        nc: u32::from_str_radix(&p.get("nc").unwrap(), 16).unwrap(),
        cnonce: &p.get("cnonce").unwrap(),
    };
    assert_eq!(p.get("response").unwrap(), auth::response(&ch, &attempt));
    assert_eq!(p.get("nc").unwrap(), nc);
}

#[test]
fn challenge_then_registered_then_refreshed_before_expiry() {
    let mut r = Registration::new(config(&["sip:pbx.example.com"], false), rng());
    let t0 = Instant::now();
    r.start(t0);
    let (a1, reg, first) = sent(&mut r);
    assert_eq!(reg, 0);
    assert_eq!(first.request_uri(), Some("sip:pbx.example.com"));
    assert_eq!(first.value(HeaderName::Expires), Some("3600"));
    assert!(first.value(HeaderName::Authorization).is_none());
    assert_eq!(r.state(), &RegState::Registering);
    r.on_result(
        t0,
        a1,
        Ok(answer(&first, 401, &[("WWW-Authenticate", CHALLENGE)])),
    );
    let (a2, _, second) = sent(&mut r);
    assert_valid_digest(&second, HeaderName::Authorization, "00000001");
    assert_eq!(second.cseq().unwrap().seq, 2);
    assert_eq!(
        second.call_id(),
        first.call_id(),
        "one Call-ID per registration"
    );
    let contact = format!(
        "<{}>;expires=10",
        "sip:1001@203.0.113.10:5060;transport=udp"
    );
    r.on_result(
        t0,
        a2,
        Ok(answer(
            &second,
            200,
            &[("Contact", &contact), ("Expires", "3600")],
        )),
    );
    assert_eq!(
        registered_at(&r),
        Some(t0 + SECS(10)),
        "our Contact's expires wins over Expires"
    );
    assert_eq!(
        r.poll_timeout(),
        Some(t0 + Duration::from_millis(7500)),
        "refresh a quarter before expiry"
    );
    r.handle_timeout(t0 + SECS(7));
    assert!(nothing_sent(&mut r), "not yet");
    r.handle_timeout(t0 + Duration::from_millis(7500));
    let (_, _, refresh) = sent(&mut r);
    assert_valid_digest(&refresh, HeaderName::Authorization, "00000002");
    assert_eq!(refresh.cseq().unwrap().seq, 3);
}

#[test]
fn proxy_challenge_is_answered_with_proxy_authorization() {
    let mut r = Registration::new(config(&["sip:pbx"], false), rng());
    let t0 = Instant::now();
    r.start(t0);
    let (a, _, req) = sent(&mut r);
    r.on_result(
        t0,
        a,
        Ok(answer(&req, 407, &[("Proxy-Authenticate", CHALLENGE)])),
    );
    let (_, _, again) = sent(&mut r);
    assert_valid_digest(&again, HeaderName::ProxyAuthorization, "00000001");
    assert!(again.value(HeaderName::Authorization).is_none());
}

#[test]
fn stale_nonce_is_retried_without_counting_a_failure() {
    let mut r = Registration::new(config(&["sip:pbx"], false), rng());
    let t0 = Instant::now();
    r.start(t0);
    let (a, _, req) = sent(&mut r);
    r.on_result(
        t0,
        a,
        Ok(answer(&req, 401, &[("WWW-Authenticate", CHALLENGE)])),
    );
    let (a, _, req) = sent(&mut r);
    let stale = "Digest realm=\"pbx\", nonce=\"n2\", algorithm=MD5, qop=\"auth\", stale=true";
    r.on_result(t0, a, Ok(answer(&req, 401, &[("WWW-Authenticate", stale)])));
    let (a, _, req) = sent(&mut r);
    assert!(
        req.value(HeaderName::Authorization)
            .unwrap()
            .contains("nonce=\"n2\"")
    );
    assert_valid_digest(&req, HeaderName::Authorization, "00000001");
    r.on_result(t0, a, Ok(answer(&req, 200, &[])));
    assert!(registered_at(&r).is_some());
}

#[test]
fn refused_credentials_do_not_loop() {
    let mut r = Registration::new(config(&["sip:pbx"], false), rng());
    let t0 = Instant::now();
    r.start(t0);
    let (a, _, req) = sent(&mut r);
    r.on_result(
        t0,
        a,
        Ok(answer(&req, 401, &[("WWW-Authenticate", CHALLENGE)])),
    );
    let (a, _, req) = sent(&mut r);
    r.on_result(
        t0,
        a,
        Ok(answer(&req, 401, &[("WWW-Authenticate", CHALLENGE)])),
    );
    assert!(nothing_sent(&mut r), "no third attempt at once");
    assert!(
        matches!(r.state(), RegState::Failed { code: 401, reason, retry_at } if reason.contains("credentials rejected") && *retry_at == t0 + SECS(600))
    );
}

#[test]
fn interval_too_brief_is_retried_with_min_expires() {
    let mut r = Registration::new(config(&["sip:pbx"], false), rng());
    let t0 = Instant::now();
    r.start(t0);
    let (a, _, req) = sent(&mut r);
    r.on_result(t0, a, Ok(answer(&req, 423, &[("Min-Expires", "7200")])));
    let (a, _, req) = sent(&mut r);
    assert_eq!(req.value(HeaderName::Expires), Some("7200"));
    r.on_result(t0, a, Ok(answer(&req, 200, &[])));
    assert_eq!(
        registered_at(&r),
        Some(t0 + SECS(7200)),
        "no Contact expiry: our Expires"
    );
}

#[test]
fn forbidden_waits_the_long_interval() {
    let mut r = Registration::new(config(&["sip:pbx"], false), rng());
    let t0 = Instant::now();
    r.start(t0);
    let (a, _, req) = sent(&mut r);
    r.on_result(t0, a, Ok(answer(&req, 403, &[])));
    assert!(matches!(r.state(), RegState::Failed { code: 403, .. }));
    assert_eq!(r.poll_timeout(), Some(t0 + SECS(600)));
    r.handle_timeout(t0 + SECS(599));
    assert!(nothing_sent(&mut r));
    r.handle_timeout(t0 + SECS(600));
    sent(&mut r);
}

#[test]
fn server_errors_back_off_exponentially_and_honour_retry_after() {
    let mut r = Registration::new(config(&["sip:pbx"], false), rng());
    let mut now = Instant::now();
    r.start(now);
    for step in [1u64, 2, 4, 8, 16, 32, 60, 60] {
        let (a, _, req) = sent(&mut r);
        r.on_result(now, a, Ok(answer(&req, 503, &[])));
        let at = r.poll_timeout().unwrap();
        let wait = at - now;
        assert!(
            wait >= SECS(step).mul_f64(0.8) && wait <= SECS(step).mul_f64(1.2),
            "step {step}: {wait:?}"
        );
        assert!(
            matches!(r.state(), RegState::Backoff { last_error, .. } if last_error == "503 Reason")
        );
        now = at;
        r.handle_timeout(now);
    }
    let (a, _, req) = sent(&mut r);
    r.on_result(now, a, Ok(answer(&req, 503, &[("Retry-After", "300")])));
    assert!(
        r.poll_timeout().unwrap() - now >= SECS(300),
        "Retry-After beyond the cap is honoured"
    );
}

#[test]
fn failures_rotate_through_registrars_in_order() {
    let mut r = Registration::new(
        config(&["sip:primary", "sip:secondary", "sip:tertiary"], false),
        rng(),
    );
    let mut now = Instant::now();
    r.start(now);
    let mut order = Vec::new();
    for _ in 0..4 {
        let (a, idx, req) = sent(&mut r);
        order.push((idx, req.request_uri().unwrap().to_owned()));
        r.on_result(now, a, Err(Failure::Timeout));
        now = r.poll_timeout().unwrap();
        r.handle_timeout(now);
    }
    let uris: Vec<&str> = order.iter().map(|(_, u)| u.as_str()).collect();
    assert_eq!(
        uris,
        [
            "sip:primary",
            "sip:secondary",
            "sip:tertiary",
            "sip:primary"
        ]
    );
    let (a, idx, req) = sent(&mut r);
    r.on_result(now, a, Ok(answer(&req, 200, &[])));
    assert_eq!(idx, 1, "stays on the registrar that answered");
    assert_eq!(r.registrar(), 1);
}

#[test]
fn a_hundred_failures_send_one_register_per_backoff_step() {
    let mut r = Registration::new(config(&["sip:pbx"], false), rng());
    let t0 = Instant::now();
    let mut now = t0;
    r.start(now);
    let mut sends = 0;
    for _ in 0..100 {
        let (a, _, _) = sent(&mut r);
        sends += 1;
        r.on_result(now, a, Err(Failure::Transport("connection refused".into())));
        // Late or repeated outcomes and early timer calls change nothing.
        r.on_result(now, a, Err(Failure::Timeout));
        r.handle_timeout(now);
        r.flow_closed(now);
        assert!(nothing_sent(&mut r), "nothing before the step ends");
        let due = r.poll_timeout().unwrap();
        assert!(due - now >= SECS(1).mul_f64(0.8));
        now = due;
        r.handle_timeout(now);
    }
    assert_eq!(sends, 100);
    assert!(
        now - t0 >= SECS(48 * 60),
        "mostly at the 60 s cap: {:?}",
        now - t0
    );
}

#[test]
fn unregister_answers_the_challenge() {
    let mut r = Registration::new(config(&["sip:pbx"], false), rng());
    let t0 = Instant::now();
    r.start(t0);
    let (a, _, req) = sent(&mut r);
    r.on_result(t0, a, Ok(answer(&req, 200, &[])));
    r.stop(t0);
    let (a, _, unreg) = sent(&mut r);
    assert_eq!(unreg.value(HeaderName::Expires), Some("0"));
    assert!(
        unreg
            .value(HeaderName::Contact)
            .unwrap()
            .ends_with(";expires=0")
    );
    assert_eq!(r.state(), &RegState::Unregistering);
    r.on_result(
        t0,
        a,
        Ok(answer(&unreg, 401, &[("WWW-Authenticate", CHALLENGE)])),
    );
    let (a, _, again) = sent(&mut r);
    assert_eq!(again.value(HeaderName::Expires), Some("0"));
    assert_valid_digest(&again, HeaderName::Authorization, "00000001");
    assert!(!r.is_stopped());
    r.on_result(t0, a, Ok(answer(&again, 200, &[])));
    assert!(r.is_stopped());
    assert_eq!(r.poll_timeout(), None, "no refresh after unregistering");
}

#[test]
fn stop_before_registering_is_immediate() {
    let mut r = Registration::new(config(&["sip:pbx"], false), rng());
    r.stop(Instant::now());
    assert!(r.is_stopped());
    assert!(nothing_sent(&mut r));
}

#[test]
fn a_lost_flow_re_registers_at_once_only_when_registered() {
    let mut r = Registration::new(config(&["sip:pbx"], false), rng());
    let t0 = Instant::now();
    r.start(t0);
    let (a, _, req) = sent(&mut r);
    r.on_result(t0, a, Ok(answer(&req, 200, &[])));
    r.flow_closed(t0 + Duration::from_millis(300));
    assert!(
        nothing_sent(&mut r),
        "not sooner than 1 s after registering"
    );
    assert_eq!(r.poll_timeout(), Some(t0 + SECS(1)));
    r.handle_timeout(t0 + SECS(1));
    let (a, _, req) = sent(&mut r);
    r.on_result(t0 + SECS(1), a, Ok(answer(&req, 200, &[])));
    r.flow_closed(t0 + SECS(5));
    let (a, _, _) = sent(&mut r);
    r.on_result(t0, a, Err(Failure::Transport("refused".into())));
    r.flow_closed(t0 + SECS(5));
    assert!(
        nothing_sent(&mut r),
        "in backoff, a closed flow does not shortcut the wait"
    );
}

#[test]
fn outbound_contact_and_fallback_on_439() {
    let mut r = Registration::new(config(&["sip:pbx"], true), rng());
    let t0 = Instant::now();
    r.start(t0);
    let (a, _, req) = sent(&mut r);
    let contact = req.value(HeaderName::Contact).unwrap();
    assert!(
        contact.contains(
            ";+sip.instance=\"<urn:uuid:00000000-0000-4000-8000-000000000001>\";reg-id=1"
        ),
        "{contact}"
    );
    assert_eq!(req.supported().collect::<Vec<_>>(), ["outbound", "path"]);
    r.on_result(t0, a, Ok(answer(&req, 439, &[])));
    let (_, _, plain) = sent(&mut r);
    assert!(!plain.value(HeaderName::Contact).unwrap().contains("reg-id"));
    assert_eq!(plain.supported().count(), 0);
}

#[test]
fn a_binding_missing_from_the_200_is_a_failure() {
    let mut r = Registration::new(config(&["sip:pbx"], false), rng());
    let t0 = Instant::now();
    r.start(t0);
    let (a, _, req) = sent(&mut r);
    let contact = "<sip:1001@203.0.113.10:5060;transport=udp>;expires=0";
    r.on_result(t0, a, Ok(answer(&req, 200, &[("Contact", contact)])));
    assert!(matches!(r.state(), RegState::Backoff { .. }));
}

#[test]
fn refresh_margins() {
    assert_eq!(refresh_margin(SECS(10)), Duration::from_millis(2500));
    assert_eq!(refresh_margin(SECS(3600)), SECS(60));
    assert_eq!(
        refresh_margin(SECS(3)),
        Duration::from_millis(1500),
        "never more than half"
    );
}

#[test]
fn a_new_nonce_after_proactive_credentials_is_a_new_challenge() {
    let mut r = Registration::new(config(&["sip:pbx"], false), rng());
    let t0 = Instant::now();
    r.start(t0);
    let (a, _, req) = sent(&mut r);
    r.on_result(
        t0,
        a,
        Ok(answer(&req, 401, &[("WWW-Authenticate", CHALLENGE)])),
    );
    let (a, _, req) = sent(&mut r);
    r.on_result(t0, a, Ok(answer(&req, 200, &[])));
    // The refresh carries credentials for n1; the registrar issued a new
    // nonce meanwhile, without saying stale.
    let at = r.poll_timeout().unwrap();
    r.handle_timeout(at);
    let (a, _, refresh) = sent(&mut r);
    assert!(
        refresh
            .value(HeaderName::Authorization)
            .unwrap()
            .contains("nonce=\"n1\"")
    );
    let fresh = "Digest realm=\"pbx\", nonce=\"n9\", algorithm=MD5, qop=\"auth\"";
    r.on_result(
        at,
        a,
        Ok(answer(&refresh, 401, &[("WWW-Authenticate", fresh)])),
    );
    let (a, _, again) = sent(&mut r);
    assert!(
        again
            .value(HeaderName::Authorization)
            .unwrap()
            .contains("nonce=\"n9\"")
    );
    r.on_result(at, a, Ok(answer(&again, 200, &[])));
    assert!(registered_at(&r).is_some());
}

#[test]
fn endless_new_nonces_are_cut_off() {
    let mut r = Registration::new(config(&["sip:pbx"], false), rng());
    let t0 = Instant::now();
    r.start(t0);
    for round in 0..5 {
        let (a, _, req) = sent(&mut r);
        let ch = format!("Digest realm=\"pbx\", nonce=\"round{round}\", algorithm=MD5");
        r.on_result(t0, a, Ok(answer(&req, 401, &[("WWW-Authenticate", &ch)])));
        if matches!(r.state(), RegState::Failed { .. }) {
            assert_eq!(round, 3, "three challenge rounds, then a rejection");
            return;
        }
    }
    panic!("never gave up: {:?}", r.state());
}

#[test]
fn a_retired_binding_is_removed_before_registering_even_through_a_challenge() {
    let mut r = Registration::new(config(&["sip:pbx.example.com"], false), rng());
    let t0 = Instant::now();
    let old = "sip:1001@198.51.100.7:5061;transport=tls";
    r.retire(old.to_owned());
    r.start(t0);
    let (a1, _, first) = sent(&mut r);
    assert_eq!(
        first.value(HeaderName::Contact),
        Some(format!("<{old}>;expires=0").as_str())
    );
    assert_eq!(first.value(HeaderName::Expires), Some("0"));
    assert_eq!(r.state(), &RegState::Registering);
    r.on_result(
        t0,
        a1,
        Ok(answer(&first, 401, &[("WWW-Authenticate", CHALLENGE)])),
    );
    let (a2, _, second) = sent(&mut r);
    assert_valid_digest(&second, HeaderName::Authorization, "00000001");
    assert_eq!(
        second.value(HeaderName::Contact),
        first.value(HeaderName::Contact),
        "the challenge is answered for the same removal"
    );
    r.on_result(t0, a2, Ok(answer(&second, 200, &[])));
    let (a3, _, third) = sent(&mut r);
    assert_eq!(
        third.value(HeaderName::Contact),
        Some("<sip:1001@203.0.113.10:5060;transport=udp>")
    );
    assert_eq!(third.value(HeaderName::Expires), Some("3600"));
    assert!(
        third.value(HeaderName::Authorization).is_some(),
        "the registration reuses the challenge"
    );
    let contact = "<sip:1001@203.0.113.10:5060;transport=udp>;expires=3600";
    r.on_result(t0, a3, Ok(answer(&third, 200, &[("Contact", contact)])));
    assert!(registered_at(&r).is_some());
    // A later start (after an unREGISTER) does not remove it again.
    r.stop(t0);
    let (a4, _, bye) = sent(&mut r);
    assert_eq!(bye.value(HeaderName::Expires), Some("0"));
    r.on_result(t0, a4, Ok(answer(&bye, 200, &[])));
    r.start(t0);
    let (_, _, again) = sent(&mut r);
    assert_eq!(again.value(HeaderName::Expires), Some("3600"));
}

#[test]
fn an_unanswered_removal_does_not_hold_up_the_registration() {
    let mut r = Registration::new(config(&["sip:pbx.example.com"], false), rng());
    let t0 = Instant::now();
    r.retire("sip:1001@198.51.100.7:5060".to_owned());
    r.start(t0);
    let (a1, _, first) = sent(&mut r);
    assert_eq!(first.value(HeaderName::Expires), Some("0"));
    r.on_result(t0, a1, Err(Failure::Timeout));
    let (_, _, second) = sent(&mut r);
    assert_eq!(second.value(HeaderName::Expires), Some("3600"));
    assert_eq!(r.state(), &RegState::Registering);
}
