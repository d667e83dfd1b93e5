//! RFC 4475 torture messages (tests/data/rfc4475, see its README for the
//! attribution): every §3.1.1 message parses with its values checked; every
//! §3.1.2 message is rejected or handled as the RFC says.

use dialerd::sip::message::{
    BodyProblem, Contacts, FrameError, HeaderError, HeaderName, Host, Invalid, Message, Method, Uri,
};

use crate::support::repo_root;

fn load(tag: &str) -> Vec<u8> {
    let path = repo_root()
        .join("tests/data/rfc4475")
        .join(format!("{tag}.dat"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn valid(tag: &str) -> Message {
    let msg = Message::parse_datagram(load(tag)).unwrap_or_else(|e| panic!("{tag}: {e}"));
    msg.validate().unwrap_or_else(|e| panic!("{tag}: {e}"));
    msg
}

fn invalid(tag: &str) -> Invalid {
    let msg =
        Message::parse_datagram(load(tag)).unwrap_or_else(|e| panic!("{tag}: frame error {e}"));
    msg.validate().expect_err(tag)
}

#[test]
fn wsinv_short_tortuous_invite() {
    let m = valid("wsinv");
    assert_eq!(m.method(), Some(Method::Invite));
    assert_eq!(
        m.request_uri(),
        Some("sip:vivekg@chair-dnrc.example.com;unknownparam")
    );
    let to = m.to_header().unwrap();
    assert_eq!(to.uri_str, "sip:vivekg@chair-dnrc.example.com");
    assert_eq!(to.tag(), Some("1918181833n"));
    let from = m.from_header().unwrap();
    assert_eq!(from.display_name().unwrap(), "J Rosenberg \\\"");
    assert_eq!(from.uri_str, "sip:jdrosen@example.com");
    assert_eq!(from.tag(), Some("98asjd8"));
    assert_eq!(m.max_forwards().unwrap(), 68);
    assert_eq!(m.call_id(), Some("wsinv.ndaksdj@192.0.2.1"));
    assert_eq!(m.content_length().unwrap(), 150);
    assert_eq!(m.body().len(), 150);
    assert!(m.body().starts_with(b"v=0\r\n"));
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (9, "INVITE"));
    let vias: Vec<_> = m.vias().collect::<Result<_, _>>().unwrap();
    assert_eq!(vias.len(), 3);
    assert_eq!(
        (vias[0].transport, vias[0].branch()),
        ("UDP", Some("390skdjuw"))
    );
    assert_eq!(vias[0].host, Host::V4("192.0.2.2".parse().unwrap()));
    assert_eq!(vias[1].host, Host::Domain("spindle.example.com"));
    assert_eq!(
        (vias[1].transport, vias[1].branch()),
        ("TCP", Some("z9hG4bK9ikj8"))
    );
    assert_eq!(vias[2].host, Host::V4("192.168.255.111".parse().unwrap()));
    assert_eq!(vias[2].branch(), Some("z9hG4bK30239"));
    assert_eq!(m.value(HeaderName::Subject), Some(""));
    let fangled = m.values_named("newfangledheader").next().unwrap();
    assert_eq!(
        fangled.value(),
        "newfangled value continued newfangled value"
    );
    assert_eq!(
        m.values_named("UnknownHeaderWithUnusualValue")
            .next()
            .unwrap()
            .raw_value,
        ";;,,;;,;"
    );
    assert_eq!(m.content_type().unwrap().subtype, "sdp");
    let route = m.routes().next().unwrap().unwrap();
    assert_eq!(
        route.uri_str,
        "sip:services.example.com;lr;unknownwith=value;unknown-no-value"
    );
    let Contacts::List(contacts) = m.contacts().unwrap() else {
        panic!("star")
    };
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].display_name().unwrap(), "Quoted string \"\"");
    assert_eq!(contacts[0].params.get("newparam"), Some(Some("newvalue")));
    assert_eq!(contacts[0].params.get("secondparam"), Some(None));
    assert_eq!(contacts[0].params.get("q"), Some(Some("0.33")));
}

#[test]
fn intmeth_wide_range_of_valid_characters() {
    let m = valid("intmeth");
    let method = "!interesting-Method0123456789_*+`.%indeed'~";
    assert_eq!(m.method(), Some(Method::Extension));
    assert_eq!(m.method_str(), Some(method));
    assert_eq!(m.cseq().unwrap().method, method);
    assert_eq!(m.cseq().unwrap().seq, 139122385);
    assert_eq!(m.max_forwards().unwrap(), 255);
    let Ok(Uri::Sip(uri)) = Uri::parse(m.request_uri().unwrap()) else {
        panic!("uri")
    };
    assert_eq!(
        uri.user,
        Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
    );
    assert_eq!(
        uri.password,
        Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
    );
    assert_eq!(uri.host, Host::Domain("example.com"));
    assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bK-.!%66*_+`'~"));
    assert_eq!(
        m.to_header().unwrap().display_name().unwrap(),
        "BEL:\u{7} NUL:\0 DEL:\u{7f}"
    );
    let from = m.from_header().unwrap();
    assert_eq!(from.display, Some("token1~` token2'+_ token3*%!.-"));
    assert_eq!(
        from.params.get("fromParam''~+*_!.-%"),
        Some(Some(
            "\"\u{0440}\u{0430}\u{0431}\u{043e}\u{0442}\u{0430}\u{044e}\u{0449}\u{0438}\u{0439}\""
        ))
    );
    assert_eq!(
        m.call_id(),
        Some("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{")
    );
    let ext = m.values_named("extensionHeader-!.%*+_`'~").next().unwrap();
    assert_eq!(ext.raw_value, "\u{FEFF}\u{5927}\u{505C}\u{96FB}");
}

#[test]
fn esc01_valid_escaping() {
    let m = valid("esc01");
    let Ok(Uri::Sip(uri)) = Uri::parse(m.request_uri().unwrap()) else {
        panic!("uri")
    };
    assert_eq!(uri.user_decoded().unwrap(), "sips:user@example.com");
    assert_eq!(uri.host, Host::Domain("example.net"));
    let to = m.to_header().unwrap();
    assert_eq!(to.uri.as_sip().unwrap().user_decoded().unwrap(), "user");
    let from = m.from_header().unwrap();
    assert_eq!(
        from.uri.as_sip().unwrap().user_decoded().unwrap(),
        "I have spaces"
    );
    assert_eq!(m.call_id(), Some("esc01.239409asdfakjkn23onasd0-3234"));
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!("star")
    };
    let curi = c[0].uri.as_sip().unwrap();
    assert_eq!(curi.user_decoded().unwrap(), "caller");
    assert_eq!(curi.params.get("n%61me"), Some(Some("v%61lue%25%34%31")));
    assert_eq!(m.body().len(), 150);
}

#[test]
fn escnull_escaped_nulls() {
    let m = valid("escnull");
    assert_eq!(m.method(), Some(Method::Register));
    let to = m.to_header().unwrap();
    assert_eq!(
        to.uri.as_sip().unwrap().user_decoded().unwrap(),
        "null-\0-null"
    );
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!("star")
    };
    assert_eq!(c.len(), 2);
    assert_eq!(c[1].uri.as_sip().unwrap().user_decoded().unwrap(), "\0\0");
    assert_eq!(m.content_length().unwrap(), 0);
}

#[test]
fn esc02_escapes_outside_uris_are_literal() {
    let m = valid("esc02");
    assert_eq!(m.method(), Some(Method::Extension));
    assert_eq!(m.method_str(), Some("RE%47IST%45R"));
    assert_eq!(m.cseq().unwrap().method, "RE%47IST%45R");
    assert_eq!(m.to_header().unwrap().display_name().unwrap(), "%Z%45");
    assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bK209%fzsnel234"));
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!("star")
    };
    assert_eq!(c.len(), 2, "C%6Fntact is another header");
    assert_eq!(m.values_named("C%6Fntact").count(), 1);
}

#[test]
fn lwsdisp_no_space_before_angle() {
    let m = valid("lwsdisp");
    assert_eq!(m.from_header().unwrap().display, Some("caller"));
    assert_eq!(m.from_header().unwrap().tag(), Some("323"));
}

#[test]
fn longreq_long_values() {
    let m = valid("longreq");
    assert_eq!(m.vias().count(), 34);
    assert!(m.vias().all(|v| v.is_ok()));
    let last = m.vias().last().unwrap().unwrap();
    assert_eq!(last.received(), Some("192.0.2.5"));
    assert!(last.branch().unwrap().starts_with("verylonglong"));
    assert_eq!(m.call_id().unwrap().len(), 141);
    assert_eq!(m.from_header().unwrap().tag().unwrap().len(), 155);
    assert!(
        m.to_header()
            .unwrap()
            .display_name()
            .unwrap()
            .contains("extremeextreme")
    );
    assert_eq!(m.body().len(), 150);
}

#[test]
fn dblreq_second_message_in_datagram_is_ignored() {
    let m = valid("dblreq");
    assert_eq!(m.method(), Some(Method::Register));
    assert_eq!(m.content_length().unwrap(), 0);
    assert!(
        m.body().is_empty(),
        "bytes after Content-Length are not body"
    );
}

#[test]
fn semiuri_semicolon_in_user_part() {
    let m = valid("semiuri");
    let Ok(Uri::Sip(uri)) = Uri::parse(m.request_uri().unwrap()) else {
        panic!("uri")
    };
    assert_eq!(uri.user, Some("user;par=u%40example.net"));
    assert_eq!(uri.user_decoded().unwrap(), "user;par=u@example.net");
    assert_eq!(uri.host, Host::Domain("example.com"));
    assert!(uri.params.is_empty());
    let accept: Vec<_> = m
        .values(HeaderName::Accept)
        .flat_map(dialerd::sip::message::lex::split_list)
        .collect();
    assert_eq!(accept.len(), 6);
    assert_eq!(accept[5], "message/sipfrag");
}

#[test]
fn transports_unknown_transport_in_via() {
    let m = valid("transports");
    let t: Vec<_> = m.vias().map(|v| v.unwrap().transport).collect();
    assert_eq!(t, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
    assert_eq!(m.call_id(), Some("transports.kijh4akdnaqjkwendsasfdj"));
}

#[test]
fn mpart01_binary_body_preserved() {
    let raw = load("mpart01");
    let m = valid("mpart01");
    assert_eq!(m.method(), Some(Method::Message));
    let ct = m.content_type().unwrap();
    assert!(ct.is("multipart", "mixed"));
    assert_eq!(ct.params.get("boundary"), Some(Some("7a9cbec02ceef655")));
    let head = dialerd::sip::message::head_len(&raw).unwrap();
    assert_eq!(m.body().as_ref(), &raw[head..], "body byte for byte");
    assert_eq!(m.body().len() as u32, m.content_length().unwrap());
}

#[test]
fn unreason_and_noreason_reason_phrases() {
    let m = valid("unreason");
    assert_eq!(m.status(), Some(200));
    assert!(m.reason().unwrap().starts_with("= 2**3 * 5**2 "));
    assert!(m.reason().unwrap().ends_with('\u{0435}'));
    assert_eq!(m.body().len(), 154);
    let m = valid("noreason");
    assert_eq!(m.status(), Some(100));
    assert_eq!(m.reason(), Some(""));
}

#[test]
fn invalid_requests_get_the_status_the_rfc_gives() {
    let cases: &[(&str, Invalid)] = &[
        (
            "badinv01",
            Invalid::Bad(HeaderName::Via, HeaderError::Params),
        ),
        ("clerr", Invalid::Body(BodyProblem::BeyondDatagram)),
        ("ncl", Invalid::Body(BodyProblem::BadLength)),
        (
            "scalar02",
            Invalid::Bad(HeaderName::CSeq, HeaderError::Number),
        ),
        (
            "quotbal",
            Invalid::Bad(HeaderName::To, HeaderError::UnterminatedQuote),
        ),
        (
            "regbadct",
            Invalid::Bad(HeaderName::Contact, HeaderError::BareUri),
        ),
        (
            "badaspec",
            Invalid::Bad(HeaderName::To, HeaderError::AngleBrackets),
        ),
        (
            "baddn",
            Invalid::Bad(HeaderName::From, HeaderError::DisplayName),
        ),
        ("badvers", Invalid::Version),
        ("mismatch01", Invalid::CSeqMismatch),
        ("mismatch02", Invalid::CSeqMismatch),
        ("escruri", Invalid::RequestUriHeaders),
        ("multi01", Invalid::Repeated(HeaderName::CallId)),
        ("mcl01", Invalid::Body(BodyProblem::Repeated)),
    ];
    for (tag, want) in cases {
        let got = invalid(tag);
        assert_eq!(&got, want, "{tag}");
        let status = if *tag == "badvers" { 505 } else { 400 };
        assert_eq!(got.status(), status, "{tag}");
        assert!(!got.reason().is_empty());
    }
}

#[test]
fn invalid_request_lines_cannot_be_framed() {
    for tag in ["ltgtruri", "lwsruri", "lwsstart", "trws"] {
        let raw = load(tag);
        match Message::parse_datagram(raw) {
            Err(FrameError::StartLine(_)) => {}
            Ok(m) => {
                // ltgtruri frames but its Request-URI does not parse.
                assert!(matches!(m.validate(), Err(Invalid::RequestUri(_))), "{tag}");
            }
            Err(other) => panic!("{tag}: {other}"),
        }
    }
}

#[test]
fn invalid_responses_are_dropped() {
    let bigcode = Message::parse_datagram(load("bigcode")).unwrap();
    assert_eq!(bigcode.status(), None);
    assert_eq!(bigcode.validate(), Err(Invalid::StatusCode));
    let scalarlg = Message::parse_datagram(load("scalarlg")).unwrap();
    assert_eq!(
        scalarlg.validate(),
        Err(Invalid::Bad(HeaderName::CSeq, HeaderError::Number))
    );
}

#[test]
fn baddate_is_accepted() {
    let m = valid("baddate");
    assert_eq!(
        m.value(HeaderName::Date),
        Some("Fri, 01 Jan 2010 16:00:00 EST")
    );
}

#[test]
fn insuf_missing_headers() {
    assert!(matches!(invalid("insuf"), Invalid::Missing(_)));
}

#[test]
fn application_layer_messages_parse() {
    for tag in [
        "badbranch",
        "unkscm",
        "novelsc",
        "unksm2",
        "bext01",
        "invut",
        "regaut01",
        "bcast",
        "zeromf",
        "cparam01",
        "cparam02",
        "regescrt",
        "sdp01",
        "inv2543",
    ] {
        let msg = Message::parse_datagram(load(tag)).unwrap_or_else(|e| panic!("{tag}: {e}"));
        msg.validate().unwrap_or_else(|e| panic!("{tag}: {e}"));
    }
}

/// Every RFC 4475 request sent over UDP to a running dialerd: each §3.1.1
/// request is answered, each §3.1.2 request refused with a 4xx or 5xx, and
/// the process stays healthy. Responses go to the sender's address and the
/// sent-by port of the message's own Via (5060, 5050, 5070), so the test
/// sends from its own loopback address and listens on those ports there.
#[test]
fn every_torture_request_sent_to_dialerd_is_answered_or_refused() {
    use std::net::{SocketAddr, UdpSocket};
    use std::time::{Duration, Instant};

    let port = crate::support::ports::free_udp_tcp_port();
    let d = crate::support::daemon::Daemon::start(
        &["--profile", "local"],
        &[("DIALERD__SIP__UDP_LISTEN", &format!("127.0.0.1:{port}"))],
    );
    let dialerd = SocketAddr::from(([127, 0, 0, 1], port));
    // A loopback address of this test's own (from the port, to keep
    // parallel runs apart).
    let me = std::net::Ipv4Addr::new(127, 44, (port >> 8) as u8, (port & 0xff) as u8);
    let sender = UdpSocket::bind((me, 0)).expect("bind sender");
    let listeners: Vec<UdpSocket> = [5060u16, 5050, 5070]
        .iter()
        .map(|p| UdpSocket::bind((me, *p)).expect("bind a sent-by port"))
        .collect();
    for l in listeners.iter().chain(std::iter::once(&sender)) {
        l.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    }
    let valid = [
        "wsinv",
        "intmeth",
        "esc01",
        "escnull",
        "esc02",
        "lwsdisp",
        "longreq",
        "dblreq",
        "semiuri",
        "transports",
        "mpart01",
    ];
    let invalid = [
        "badinv01",
        "clerr",
        "ncl",
        "scalar02",
        "quotbal",
        "ltgtruri",
        "lwsruri",
        "lwsstart",
        "trws",
        "escruri",
        "baddate",
        "regbadct",
        "badaspec",
        "baddn",
        "badvers",
        "mismatch01",
        "mismatch02",
    ];
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for tag in valid.iter().chain(invalid.iter()) {
        let data = load(tag);
        sender.send_to(&data, dialerd).unwrap();
        // The Call-ID names the answer (each torture message has its own).
        let call_id = String::from_utf8_lossy(&data)
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                let n = n.trim();
                (n.eq_ignore_ascii_case("call-id") || n.eq_ignore_ascii_case("i"))
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default();
        let end = Instant::now() + Duration::from_secs(5);
        let mut code = None;
        'wait: while Instant::now() < end {
            for s in listeners.iter().chain(std::iter::once(&sender)) {
                let mut buf = [0u8; 65536];
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    let Ok(m) = Message::parse_datagram(buf[..n].to_vec()) else {
                        continue;
                    };
                    let final_code = m.status().filter(|c| *c >= 200);
                    if m.call_id() == Some(call_id.as_str())
                        && let Some(c) = final_code
                    {
                        code = Some(c);
                        break 'wait;
                    }
                }
            }
        }
        match code {
            None => missing.push(*tag),
            Some(c) if invalid.contains(tag) && c < 400 => wrong.push(format!("{tag}: {c}")),
            Some(_) => {}
        }
    }
    assert!(missing.is_empty(), "not answered: {missing:?}");
    assert!(wrong.is_empty(), "invalid requests accepted: {wrong:?}");
    let health = crate::support::http::get(d.http(), "/healthz").unwrap();
    assert_eq!(health.status, 200, "the process is alive and healthy");
}
