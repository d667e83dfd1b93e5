use std::net::IpAddr;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `text` with every line ending in CRLF.
fn crlf(text: &str) -> String {
    text.lines().map(|l| format!("{l}\r\n")).collect()
}

fn local(codecs: &[Codec]) -> LocalMedia {
    LocalMedia::new(ip("192.0.2.10"), 40000, codecs.to_vec())
}

fn origin() -> Origin {
    Origin::new("dialerd", 42, 1, ip("192.0.2.10"))
}

fn parse_ok(text: &str) -> SessionDescription {
    let sdp = parse(text).unwrap();
    assert_eq!(
        parse(&sdp.to_string()).unwrap(),
        sdp,
        "round trip of {text}"
    );
    sdp
}

fn answer_to(text: &str, codecs: &[Codec]) -> (SessionDescription, Negotiated) {
    let (sdp, negotiated) = answer(&parse_ok(text), &local(codecs), origin()).unwrap();
    assert_eq!(parse(&sdp.to_string()).unwrap(), sdp);
    (sdp, negotiated)
}

fn answer_err(text: &str, codecs: &[Codec]) -> NegotiateError {
    answer(&parse_ok(text), &local(codecs), origin()).unwrap_err()
}

const G711: [Codec; 3] = [Codec::Pcmu, Codec::Pcma, Codec::TelephoneEvent];

// RFC 4566 §5, the example session description.
const RFC4566_EXAMPLE: &str = "\
v=0
o=jdoe 2890844526 2890842807 IN IP4 10.47.16.5
s=SDP Seminar
i=A Seminar on the session description protocol
u=http://www.example.com/seminars/sdp.pdf
e=j.doe@example.com (Jane Doe)
c=IN IP4 224.2.17.12/127
t=2873397496 2873404696
a=recvonly
m=audio 49170 RTP/AVP 0
m=video 51372 RTP/AVP 99
a=rtpmap:99 h263-1998/90000
";

#[test]
fn rfc4566_example() {
    let sdp = parse_ok(&crlf(RFC4566_EXAMPLE));
    assert_eq!(sdp.origin.username, "jdoe");
    assert_eq!(sdp.origin.session_id, 2890844526);
    assert_eq!(sdp.origin.session_version, 2890842807);
    assert_eq!(sdp.origin.address_type, AddressType::Ip4);
    assert_eq!(sdp.origin.ip(), Some(ip("10.47.16.5")));
    assert_eq!(sdp.session_name, "SDP Seminar");
    let connection = sdp.connection.unwrap();
    assert_eq!(
        (connection.address, connection.ttl, connection.count),
        (ip("224.2.17.12"), Some(127), None)
    );
    assert_eq!(sdp.timing, ["2873397496 2873404696"]);
    let letters: Vec<char> = sdp.other_lines.iter().map(|l| l.letter).collect();
    assert_eq!(letters, ['i', 'u', 'e']);
    assert_eq!(sdp.direction(), Some(Direction::RecvOnly));
    assert_eq!(sdp.media.len(), 2);
    assert_eq!(sdp.media_direction(0), Some(Direction::RecvOnly));
    assert_eq!(sdp.media_direction(2), None);
    assert_eq!(sdp.media_connection(1), Some(connection));
    assert_eq!(sdp.media[0].codec(0), Some(Codec::Pcmu));
    let video = &sdp.media[1];
    assert_eq!((video.kind.as_str(), video.port), ("video", 51372));
    let map = video.rtpmap(99).unwrap();
    assert_eq!(
        (map.encoding, map.clock_rate, map.channels),
        ("h263-1998", 90000, None)
    );
    assert_eq!(video.codec(99), None);
    // The example is in RFC 4566 order, so it is written back byte for byte.
    assert_eq!(sdp.to_string(), crlf(RFC4566_EXAMPLE));
}

// RFC 3264 §10.1 (Basic Exchange): Alice's offer and Bob's answer.
const RFC3264_10_1_OFFER: &str = "\
v=0
o=alice 2890844526 2890844526 IN IP4 host.anywhere.com
s=
c=IN IP4 host.anywhere.com
t=0 0
m=audio 49170 RTP/AVP 0
a=rtpmap:0 PCMU/8000
m=video 51372 RTP/AVP 31
a=rtpmap:31 H261/90000
m=video 53000 RTP/AVP 32
a=rtpmap:32 MPV/90000
";

const RFC3264_10_1_ANSWER: &str = "\
v=0
o=bob 2890844730 2890844730 IN IP4 host.example.com
s=
c=IN IP4 host.example.com
t=0 0
m=audio 49920 RTP/AVP 0
a=rtpmap:0 PCMU/8000
m=video 0 RTP/AVP 31
m=video 53000 RTP/AVP 32
a=rtpmap:32 MPV/90000
";

// RFC 3264 §10.1: Bob's later offer, adding a receive-only stream of events.
const RFC3264_10_1_REOFFER: &str = "\
v=0
o=bob 2890844730 2890844731 IN IP4 host.example.com
s=
c=IN IP4 host.example.com
t=0 0
m=audio 65422 RTP/AVP 0
a=rtpmap:0 PCMU/8000
m=video 0 RTP/AVP 31
m=video 53000 RTP/AVP 32
a=rtpmap:32 MPV/90000
m=audio 51434 RTP/AVP 110
a=rtpmap:110 telephone-events/8000
a=recvonly
";

// RFC 3264 §10.2 (One of N Codec Selection): Alice's inactive offer, Bob's answer and
// Alice's updated offer.
const RFC3264_10_2_OFFER: &str = "\
v=0
o=alice 2890844526 2890844526 IN IP4 host.anywhere.com
s=
c=IN IP4 host.anywhere.com
t=0 0
m=audio 62986 RTP/AVP 0 4 18
a=rtpmap:0 PCMU/8000
a=rtpmap:4 G723/8000
a=rtpmap:18 G729/8000
a=inactive
";

const RFC3264_10_2_ANSWER: &str = "\
v=0
o=bob 2890844730 2890844731 IN IP4 host.example.com
s=
c=IN IP4 host.example.com
t=0 0
m=audio 54344 RTP/AVP 0 4
a=rtpmap:0 PCMU/8000
a=rtpmap:4 G723/8000
a=inactive
";

const RFC3264_10_2_UPDATE: &str = "\
v=0
o=alice 2890844526 2890844527 IN IP4 host.anywhere.com
s=
c=IN IP4 host.anywhere.com
t=0 0
m=audio 62986 RTP/AVP 4
a=rtpmap:4 G723/8000
a=sendrecv
";

/// The RFC 3264 examples name hosts in `c=`; media needs addresses, so those are rejected.
/// With addresses instead, they parse and negotiate.
fn with_addresses(text: &str) -> String {
    crlf(
        &text
            .replace("host.anywhere.com", "192.0.2.1")
            .replace("host.example.com", "192.0.2.2"),
    )
}

#[test]
fn rfc3264_examples_with_host_names_are_rejected_at_the_connection() {
    for text in [
        RFC3264_10_1_OFFER,
        RFC3264_10_1_ANSWER,
        RFC3264_10_1_REOFFER,
        RFC3264_10_2_OFFER,
        RFC3264_10_2_ANSWER,
        RFC3264_10_2_UPDATE,
    ] {
        let err = parse(text).unwrap_err();
        assert!(
            matches!(err, SdpError::BadConnection { line: 4, .. }),
            "{err}"
        );
    }
}

#[test]
fn rfc3264_basic_exchange() {
    let offer_text = with_addresses(RFC3264_10_1_OFFER);
    let offer_sdp = parse_ok(&offer_text);
    assert_eq!(offer_sdp.session_name, "");
    assert_eq!(offer_sdp.origin.address, "192.0.2.1");

    // As the answerer: audio accepted, both video streams rejected.
    let (ours, negotiated) = answer_to(&offer_text, &G711);
    let summary: Vec<(&str, u16, Vec<String>)> = ours
        .media
        .iter()
        .map(|m| (m.kind.as_str(), m.port, m.formats.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("audio", 40000, vec!["0".to_owned()]),
            ("video", 0, vec!["31".to_owned()]),
            ("video", 0, vec!["32".to_owned()]),
        ]
    );
    assert!(ours.media[1].attributes.is_empty());
    assert_eq!(ours.timing, ["0 0"]);
    assert_eq!(
        negotiated.remote,
        "192.0.2.1:49170".parse::<std::net::SocketAddr>().unwrap()
    );
    assert_eq!(
        (negotiated.codec, negotiated.payload_type),
        (Codec::Pcmu, 0)
    );
    assert_eq!(negotiated.dtmf_payload_type, None);
    assert_eq!(negotiated.stream_index, 0);

    // As the offerer: Bob's answer.
    let bob = parse_ok(&with_addresses(RFC3264_10_1_ANSWER));
    let accepted = accept_answer(&offer_sdp, &bob).unwrap();
    assert_eq!(
        accepted.remote,
        "192.0.2.2:49920".parse::<std::net::SocketAddr>().unwrap()
    );
    assert_eq!((accepted.codec, accepted.payload_type), (Codec::Pcmu, 0));
    assert_eq!(accepted.local_direction, Direction::SendRecv);

    // Bob's re-offer: the first audio stream is taken, the second (events only) rejected.
    let (ours, negotiated) = answer_to(&with_addresses(RFC3264_10_1_REOFFER), &G711);
    let ports: Vec<u16> = ours.media.iter().map(|m| m.port).collect();
    assert_eq!(ports, [40000, 0, 0, 0]);
    assert_eq!(ours.media[3].formats, ["110"]);
    assert_eq!(
        negotiated.remote,
        "192.0.2.2:65422".parse::<std::net::SocketAddr>().unwrap()
    );
}

#[test]
fn rfc3264_one_of_n_codec_selection() {
    let offer_text = with_addresses(RFC3264_10_2_OFFER);
    let (ours, negotiated) = answer_to(&offer_text, &G711);
    assert_eq!(ours.media[0].formats, ["0"]);
    assert_eq!(ours.media[0].direction(), Some(Direction::Inactive));
    assert_eq!(negotiated.local_direction, Direction::Inactive);
    assert_eq!(negotiated.remote_direction, Direction::Inactive);

    let alice = parse_ok(&offer_text);
    let bob = parse_ok(&with_addresses(RFC3264_10_2_ANSWER));
    let accepted = accept_answer(&alice, &bob).unwrap();
    assert_eq!((accepted.codec, accepted.payload_type), (Codec::Pcmu, 0));
    assert_eq!(accepted.local_direction, Direction::Inactive);

    // The update keeps only G.723, which dialerd does not have.
    assert_eq!(
        answer_err(&with_addresses(RFC3264_10_2_UPDATE), &G711),
        NegotiateError::NoCommonCodec
    );
}

// The shape of an Asterisk (chan_pjsip) offer.
const ASTERISK_OFFER: &str = "\
v=0
o=- 1712345678 1712345678 IN IP4 203.0.113.10
s=Asterisk
c=IN IP4 203.0.113.10
t=0 0
m=audio 18230 RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=maxptime:150
a=sendrecv
";

#[test]
fn asterisk_offer() {
    let offer_sdp = parse_ok(&crlf(ASTERISK_OFFER));
    let audio = &offer_sdp.media[0];
    assert_eq!(audio.ptime(), Some(20));
    assert_eq!(audio.fmtp(101), Some("0-16"));
    assert_eq!(audio.attribute("maxptime"), Some("150"));
    assert_eq!(audio.codec(101), Some(Codec::TelephoneEvent));

    let mut ours = local(&[Codec::Pcma, Codec::Pcmu, Codec::TelephoneEvent]);
    ours.ptime_ms = Some(20);
    let (sdp, negotiated) = answer(&offer_sdp, &ours, origin()).unwrap();
    assert_eq!(
        sdp.to_string(),
        "v=0\r\n\
         o=dialerd 42 1 IN IP4 192.0.2.10\r\n\
         s=-\r\n\
         c=IN IP4 192.0.2.10\r\n\
         t=0 0\r\n\
         m=audio 40000 RTP/AVP 8 0 101\r\n\
         a=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-16\r\n\
         a=ptime:20\r\n\
         a=sendrecv\r\n"
    );
    assert_eq!(
        negotiated,
        Negotiated {
            remote: "203.0.113.10:18230".parse().unwrap(),
            codec: Codec::Pcma,
            payload_type: 8,
            dtmf_payload_type: Some(101),
            ptime_ms: Some(20),
            local_direction: Direction::SendRecv,
            remote_direction: Direction::SendRecv,
            stream_index: 0,
            rtcp_mux: false,
            srtp: None,
            dtls: None,
        }
    );
}

// The shape of a Grandstream phone's or FreeSWITCH's offer: G.722, opus and DTMF.
const FREESWITCH_OFFER: &str = "\
v=0
o=FreeSWITCH 1712300000 1712300001 IN IP4 198.51.100.7
s=FreeSWITCH
c=IN IP4 198.51.100.7
t=0 0
m=audio 25000 RTP/AVP 9 111 0 8 101
a=rtpmap:9 G722/8000
a=rtpmap:111 opus/48000/2
a=fmtp:111 useinbandfec=1; minptime=10
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
a=rtcp:25001 IN IP4 198.51.100.7
";

#[test]
fn freeswitch_offer_with_g722_and_opus() {
    let offer_sdp = parse_ok(&crlf(FREESWITCH_OFFER));
    let audio = &offer_sdp.media[0];
    assert_eq!(audio.fmtp(111), Some("useinbandfec=1; minptime=10"));
    let codecs: Vec<Option<Codec>> = audio.payload_types().map(|pt| audio.codec(pt)).collect();
    assert_eq!(
        codecs,
        [
            Some(Codec::G722),
            Some(Codec::Opus),
            Some(Codec::Pcmu),
            Some(Codec::Pcma),
            Some(Codec::TelephoneEvent)
        ]
    );

    let prefs = [Codec::Opus, Codec::G722, Codec::Pcmu, Codec::TelephoneEvent];
    let (sdp, negotiated) = answer_to(&crlf(FREESWITCH_OFFER), &prefs);
    assert_eq!(sdp.media[0].formats, ["111", "9", "0", "101"]);
    assert_eq!(sdp.media[0].attribute("rtpmap"), Some("111 opus/48000/2"));
    assert_eq!(
        (negotiated.codec, negotiated.payload_type),
        (Codec::Opus, 111)
    );
    assert_eq!(negotiated.dtmf_payload_type, Some(101));
    assert_eq!(negotiated.ptime_ms, Some(20));

    // Without opus, G.722 (static 9) comes first.
    let (_, negotiated) = answer_to(&crlf(FREESWITCH_OFFER), &[Codec::G722, Codec::Pcmu]);
    assert_eq!(
        (negotiated.codec, negotiated.payload_type),
        (Codec::G722, 9)
    );
    assert_eq!(negotiated.dtmf_payload_type, None);
}

#[test]
fn dynamic_payload_types_keep_the_offerers_numbers() {
    let text = "v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\n\
                m=audio 5004 RTP/AVP 96 100\r\na=rtpmap:96 OPUS/48000/2\r\n\
                a=rtpmap:100 telephone-event/8000\r\na=fmtp:100 0-15\r\n";
    let (sdp, negotiated) = answer_to(text, &[Codec::Opus, Codec::TelephoneEvent]);
    assert_eq!(sdp.media[0].formats, ["96", "100"]);
    assert_eq!(sdp.media[0].rtpmap(96).unwrap().encoding, "opus");
    assert_eq!(sdp.media[0].fmtp(100), Some("0-16"));
    assert_eq!(
        (negotiated.codec, negotiated.payload_type),
        (Codec::Opus, 96)
    );
    assert_eq!(negotiated.dtmf_payload_type, Some(100));
    assert_eq!(negotiated.ptime_ms, None);
}

#[test]
fn audio_and_video_offer_rejects_the_video() {
    let text = "v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\n\
                m=video 5006 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
                m=audio 5004 RTP/AVP 0\r\nc=IN IP4 192.0.2.6\r\n";
    let (sdp, negotiated) = answer_to(text, &G711);
    assert_eq!(
        (sdp.media[0].kind.as_str(), sdp.media[0].port),
        ("video", 0)
    );
    assert_eq!(sdp.media[0].proto, "RTP/AVP");
    assert_eq!(sdp.media[0].formats, ["96"]);
    assert_eq!(sdp.media[1].port, 40000);
    assert_eq!(negotiated.stream_index, 1);
    // The media-level c= overrides the session's.
    assert_eq!(
        negotiated.remote,
        "192.0.2.6:5004".parse::<std::net::SocketAddr>().unwrap()
    );
}

#[test]
fn offers_without_usable_audio() {
    let head = "v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\n";
    let srtp = format!(
        "{head}m=audio 5004 RTP/SAVP 0 8\r\n\
         a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"
    );
    // SRTP is off unless asked for: an SDES-only offer is refused.
    assert_eq!(answer_err(&srtp, &G711), NegotiateError::SrtpOff);
    let g729 = format!("{head}m=audio 5004 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n");
    assert_eq!(answer_err(&g729, &G711), NegotiateError::NoCommonCodec);
    let dtmf_only =
        format!("{head}m=audio 5004 RTP/AVP 101\r\na=rtpmap:101 telephone-event/8000\r\n");
    assert_eq!(answer_err(&dtmf_only, &G711), NegotiateError::NoCommonCodec);
    let video = format!("{head}m=video 5006 RTP/AVP 31\r\n");
    assert_eq!(answer_err(&video, &G711), NegotiateError::NoAudio);
    let disabled = format!("{head}m=audio 0 RTP/AVP 0\r\n");
    assert_eq!(answer_err(&disabled, &G711), NegotiateError::NoAudio);
    assert_eq!(answer_err(head, &G711), NegotiateError::NoAudio);
    let no_connection =
        "v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\ns=-\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n";
    assert_eq!(
        answer_err(no_connection, &G711),
        NegotiateError::NoConnection
    );
    // A second audio stream with plain RTP is taken when the first is SRTP.
    let (_, negotiated) = answer_to(&format!("{srtp}m=audio 5008 RTP/AVPF 8\r\n"), &G711);
    assert_eq!(
        (negotiated.stream_index, negotiated.codec),
        (1, Codec::Pcma)
    );
}

#[test]
fn hold_and_directions() {
    let offer_with = |connection: &str, direction: &str| {
        format!(
            "v=0\r\no=- 1 2 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 {connection}\r\nt=0 0\r\n\
             m=audio 5004 RTP/AVP 0\r\n{direction}"
        )
    };
    let cases = [
        (
            "192.0.2.5",
            "a=sendonly\r\n",
            Direction::SendOnly,
            Direction::RecvOnly,
        ),
        ("0.0.0.0", "", Direction::SendOnly, Direction::RecvOnly),
        (
            "0.0.0.0",
            "a=sendrecv\r\n",
            Direction::SendOnly,
            Direction::RecvOnly,
        ),
        (
            "0.0.0.0",
            "a=recvonly\r\n",
            Direction::Inactive,
            Direction::Inactive,
        ),
        (
            "192.0.2.5",
            "a=inactive\r\n",
            Direction::Inactive,
            Direction::Inactive,
        ),
        (
            "192.0.2.5",
            "a=recvonly\r\n",
            Direction::RecvOnly,
            Direction::SendOnly,
        ),
        ("192.0.2.5", "", Direction::SendRecv, Direction::SendRecv),
    ];
    for (connection, direction, remote, ours) in cases {
        let (sdp, negotiated) = answer_to(&offer_with(connection, direction), &G711);
        assert_eq!(
            negotiated.remote_direction, remote,
            "{connection} {direction}"
        );
        assert_eq!(negotiated.local_direction, ours, "{connection} {direction}");
        assert_eq!(sdp.media_direction(0), Some(ours));
    }
    // Our own wish intersects: we hold a sendrecv offer.
    let mut holding = local(&G711);
    holding.direction = Direction::SendOnly;
    let offer_sdp = parse_ok(&offer_with("192.0.2.5", ""));
    let (_, negotiated) = answer(&offer_sdp, &holding, origin()).unwrap();
    assert_eq!(negotiated.local_direction, Direction::SendOnly);
}

#[test]
fn bare_lf_and_blank_lines() {
    let lf = parse_ok(ASTERISK_OFFER);
    assert_eq!(lf, parse_ok(&crlf(ASTERISK_OFFER)));
    let spaced = format!(
        "\n{}\n\n",
        ASTERISK_OFFER.replace("s=Asterisk", "s=Asterisk  \t")
    );
    assert_eq!(parse_ok(&spaced), lf);
}

#[test]
fn our_offers() {
    let mut ours = local(&[
        Codec::Opus,
        Codec::G722,
        Codec::Pcmu,
        Codec::Pcma,
        Codec::TelephoneEvent,
        Codec::Pcmu,
    ]);
    ours.ptime_ms = Some(20);
    let sdp = offer(&ours, origin());
    assert_eq!(
        sdp.to_string(),
        "v=0\r\n\
         o=dialerd 42 1 IN IP4 192.0.2.10\r\n\
         s=-\r\n\
         c=IN IP4 192.0.2.10\r\n\
         t=0 0\r\n\
         m=audio 40000 RTP/AVP 111 9 0 8 101\r\n\
         a=rtpmap:111 opus/48000/2\r\n\
         a=rtpmap:9 G722/8000\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-16\r\n\
         a=ptime:20\r\n\
         a=sendrecv\r\n"
    );
    assert_eq!(parse(&sdp.to_string()).unwrap(), sdp);

    let mut v6 = LocalMedia::new(ip("2001:db8::10"), 4000, vec![Codec::Pcmu]);
    v6.direction = Direction::RecvOnly;
    v6.dtmf_pt = 96;
    let sdp = offer(&v6, Origin::new("-", u64::MAX, 0, ip("2001:db8::10")));
    assert!(sdp.to_string().contains("c=IN IP6 2001:db8::10\r\n"));
    assert_eq!(parse(&sdp.to_string()).unwrap(), sdp);
}

#[test]
fn offer_answer_between_two_dialerds() {
    let caller = local(&[Codec::Pcmu, Codec::Opus, Codec::TelephoneEvent]);
    let mut callee = LocalMedia::new(ip("192.0.2.20"), 50000, vec![Codec::Opus, Codec::Pcma]);
    callee.ptime_ms = Some(40);
    let offer_sdp = offer(&caller, origin());
    let (answer_sdp, at_callee) = answer(
        &offer_sdp,
        &callee,
        Origin::new("-", 7, 1, ip("192.0.2.20")),
    )
    .unwrap();
    let answer_sdp = parse(&answer_sdp.to_string()).unwrap();
    let at_caller = accept_answer(&offer_sdp, &answer_sdp).unwrap();
    assert_eq!(
        (at_callee.codec, at_callee.payload_type),
        (Codec::Opus, 111)
    );
    assert_eq!(
        (at_caller.codec, at_caller.payload_type),
        (Codec::Opus, 111)
    );
    assert_eq!(
        at_callee.remote,
        "192.0.2.10:40000".parse::<std::net::SocketAddr>().unwrap()
    );
    assert_eq!(
        at_caller.remote,
        "192.0.2.20:50000".parse::<std::net::SocketAddr>().unwrap()
    );
    assert_eq!(at_caller.dtmf_payload_type, None);
    assert_eq!(at_callee.ptime_ms, Some(40));
    assert_eq!(at_caller.ptime_ms, Some(40));

    // Hold and resume by re-offer.
    let hold = offer_sdp.with_direction(Direction::SendOnly);
    assert_eq!(
        hold.origin.session_version,
        offer_sdp.origin.session_version + 1
    );
    assert_eq!(hold.origin.session_id, offer_sdp.origin.session_id);
    assert_eq!(hold.media_direction(0), Some(Direction::SendOnly));
    assert_eq!(
        hold.media[0]
            .attributes
            .iter()
            .filter(|a| a.value.is_none())
            .count(),
        1
    );
    let (held_answer, held) =
        answer(&hold, &callee, Origin::new("-", 7, 2, ip("192.0.2.20"))).unwrap();
    assert_eq!(held.local_direction, Direction::RecvOnly);
    let at_caller = accept_answer(&hold, &held_answer).unwrap();
    assert_eq!(at_caller.local_direction, Direction::SendOnly);
    assert_eq!(at_caller.remote_direction, Direction::RecvOnly);
    let resume = hold.with_direction(Direction::SendRecv);
    assert_eq!(
        resume.origin.session_version,
        offer_sdp.origin.session_version + 2
    );
    assert_eq!(resume.media_direction(0), Some(Direction::SendRecv));
    assert_eq!(parse(&resume.to_string()).unwrap(), resume);
}

#[test]
fn accept_answer_cases() {
    let offer_sdp = offer(
        &local(&[Codec::Pcmu, Codec::Pcma, Codec::Opus, Codec::TelephoneEvent]),
        origin(),
    );
    let answer_with = |media: &str| {
        parse(&format!(
            "v=0\r\no=- 5 5 IN IP4 198.51.100.1\r\ns=-\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n{media}"
        ))
        .unwrap()
    };
    // The answer's own numbering and order decide.
    let answered = answer_with(
        "m=audio 30000 RTP/AVP 96 8 100\r\na=rtpmap:96 opus/48000/2\r\n\
         a=rtpmap:100 telephone-event/8000\r\na=ptime:30\r\na=sendonly\r\n",
    );
    let negotiated = accept_answer(&offer_sdp, &answered).unwrap();
    assert_eq!(
        (negotiated.codec, negotiated.payload_type),
        (Codec::Opus, 96)
    );
    assert_eq!(negotiated.dtmf_payload_type, Some(100));
    assert_eq!(negotiated.ptime_ms, Some(30));
    assert_eq!(
        negotiated.remote,
        "198.51.100.1:30000"
            .parse::<std::net::SocketAddr>()
            .unwrap()
    );
    assert_eq!(negotiated.remote_direction, Direction::SendOnly);
    assert_eq!(negotiated.local_direction, Direction::RecvOnly);

    let pcma = accept_answer(&offer_sdp, &answer_with("m=audio 30000 RTP/AVP 8\r\n")).unwrap();
    assert_eq!(
        (pcma.codec, pcma.payload_type, pcma.ptime_ms),
        (Codec::Pcma, 8, None)
    );

    let two = answer_with("m=audio 30000 RTP/AVP 0\r\nm=video 0 RTP/AVP 31\r\n");
    assert_eq!(
        accept_answer(&offer_sdp, &two),
        Err(NegotiateError::MismatchedStreams)
    );
    let video = answer_with("m=video 30000 RTP/AVP 31\r\n");
    assert_eq!(
        accept_answer(&offer_sdp, &video),
        Err(NegotiateError::MismatchedStreams)
    );
    let rejected = answer_with("m=audio 0 RTP/AVP 0\r\n");
    assert_eq!(
        accept_answer(&offer_sdp, &rejected),
        Err(NegotiateError::Rejected)
    );
    let g729 = answer_with("m=audio 30000 RTP/AVP 18\r\n");
    assert_eq!(
        accept_answer(&offer_sdp, &g729),
        Err(NegotiateError::NoCommonCodec)
    );
    let dtmf_only =
        answer_with("m=audio 30000 RTP/AVP 101\r\na=rtpmap:101 telephone-event/8000\r\n");
    assert_eq!(
        accept_answer(&offer_sdp, &dtmf_only),
        Err(NegotiateError::NoCommonCodec)
    );
    let mut no_connection = answer_with("m=audio 30000 RTP/AVP 0\r\n");
    no_connection.connection = None;
    assert_eq!(
        accept_answer(&offer_sdp, &no_connection),
        Err(NegotiateError::NoConnection)
    );
    let mut no_audio = offer_sdp.clone();
    no_audio.media[0].kind = "video".to_owned();
    assert_eq!(
        accept_answer(&no_audio, &answer_with("m=video 1 RTP/AVP 0\r\n")),
        Err(NegotiateError::NoAudio)
    );
}

const HEAD: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\ns=-\r\n";

#[test]
fn malformed_descriptions() {
    let cases: Vec<(String, SdpError)> = vec![
        (String::new(), SdpError::MissingVersion { line: 1 }),
        ("v=1\r\n".into(), SdpError::MissingVersion { line: 1 }),
        (
            "\r\no=- 1 1 IN IP4 192.0.2.5\r\n".into(),
            SdpError::MissingVersion { line: 2 },
        ),
        ("hello".into(), SdpError::MissingVersion { line: 1 }),
        (
            "v=0\r\ns=x\r\nm=audio 1 RTP/AVP 0\r\n".into(),
            SdpError::MissingOrigin { line: 3 },
        ),
        ("v=0\ns=x\n".into(), SdpError::MissingOrigin { line: 3 }),
        (
            "v=0\no=- 1 1 IN IP4 192.0.2.5\nt=0 0\n".into(),
            SdpError::MissingSessionName { line: 4 },
        ),
        ("v=0\r\nhello\r\n".into(), SdpError::BadLine { line: 2 }),
        (format!("{HEAD}xy=1\r\n"), SdpError::BadLine { line: 4 }),
        (format!("{HEAD}=1\r\n"), SdpError::BadLine { line: 4 }),
        (format!("{HEAD}1=1\r\n"), SdpError::BadLine { line: 4 }),
        (format!("{HEAD}a=x\ry\r\n"), SdpError::BadLine { line: 4 }),
        (format!("{HEAD}a=x\0\r\n"), SdpError::BadLine { line: 4 }),
        (
            format!("{HEAD}v=0\r\n"),
            SdpError::Repeated {
                line: 4,
                letter: 'v',
            },
        ),
        (
            format!("{HEAD}o=- 1 1 IN IP4 192.0.2.5\r\n"),
            SdpError::Repeated {
                line: 4,
                letter: 'o',
            },
        ),
        (
            format!("{HEAD}s=again\r\n"),
            SdpError::Repeated {
                line: 4,
                letter: 's',
            },
        ),
        (
            format!("{HEAD}m=audio 1 RTP/AVP 0\r\nc=IN IP4 192.0.2.1\r\nc=IN IP4 192.0.2.2\r\n"),
            SdpError::Repeated {
                line: 6,
                letter: 'c',
            },
        ),
        (
            format!("{HEAD}m=audio 1 RTP/AVP 0\r\ns=late\r\n"),
            SdpError::Misplaced {
                line: 5,
                letter: 's',
            },
        ),
        (
            "v=0\r\no=- x 1 IN IP4 192.0.2.5\r\ns=-\r\n".into(),
            SdpError::BadOrigin {
                line: 2,
                problem: "session id is not a number",
            },
        ),
        (
            "v=0\r\no=- 1 -1 IN IP4 192.0.2.5\r\ns=-\r\n".into(),
            SdpError::BadOrigin {
                line: 2,
                problem: "session version is not a number",
            },
        ),
        (
            "v=0\r\no=- 1 1 IN IP4\r\ns=-\r\n".into(),
            SdpError::BadOrigin {
                line: 2,
                problem: "expected 6 fields",
            },
        ),
        (
            "v=0\r\no=- 1 1 ATM IP4 x\r\ns=-\r\n".into(),
            SdpError::BadOrigin {
                line: 2,
                problem: "network type is not IN",
            },
        ),
        (
            "v=0\r\no=- 1 1 IN IPX x\r\ns=-\r\n".into(),
            SdpError::BadOrigin {
                line: 2,
                problem: "address type is not IP4 or IP6",
            },
        ),
        (
            format!("{HEAD}c=IN IP4 pbx.example.com\r\n"),
            SdpError::BadConnection {
                line: 4,
                problem: "not an IP address of its address type",
            },
        ),
        (
            format!("{HEAD}c=IN IP4 2001:db8::1\r\n"),
            SdpError::BadConnection {
                line: 4,
                problem: "not an IP address of its address type",
            },
        ),
        (
            format!("{HEAD}c=ATM NSAP 47.0005.80.ffe100.0000.f21a.01.ffffffff\r\n"),
            SdpError::BadConnection {
                line: 4,
                problem: "network type is not IN",
            },
        ),
        (
            format!("{HEAD}c=IN IPX 1\r\n"),
            SdpError::BadConnection {
                line: 4,
                problem: "address type is not IP4 or IP6",
            },
        ),
        (
            format!("{HEAD}c=IN IP4\r\n"),
            SdpError::BadConnection {
                line: 4,
                problem: "expected IN <addrtype> <address>",
            },
        ),
        (
            format!("{HEAD}c=IN IP4 192.0.2.1/127\r\n"),
            SdpError::BadConnection {
                line: 4,
                problem: "a /ttl or /count on a unicast address",
            },
        ),
        (
            format!("{HEAD}c=IN IP4 224.2.1.1/300\r\n"),
            SdpError::BadConnection {
                line: 4,
                problem: "bad multicast /ttl or /count",
            },
        ),
        (
            format!("{HEAD}m=audio x RTP/AVP 0\r\n"),
            SdpError::BadMedia {
                line: 4,
                problem: "port is not a number",
            },
        ),
        (
            format!("{HEAD}m=audio 70000 RTP/AVP 0\r\n"),
            SdpError::BadMedia {
                line: 4,
                problem: "port is not a number",
            },
        ),
        (
            format!("{HEAD}m=audio 49170/ RTP/AVP 0\r\n"),
            SdpError::BadMedia {
                line: 4,
                problem: "port count is not a number",
            },
        ),
        (
            format!("{HEAD}m=audio 49170\r\n"),
            SdpError::BadMedia {
                line: 4,
                problem: "expected <media> <port> <proto> <fmt>...",
            },
        ),
        (
            format!("{HEAD}{}", "a=x\r\n".repeat(MAX_LINES)),
            SdpError::TooManyLines {
                line: MAX_LINES + 1,
            },
        ),
        (
            format!("{HEAD}{}", "m=audio 0 RTP/AVP 0\r\n".repeat(MAX_MEDIA + 1)),
            SdpError::TooManyMedia {
                line: 4 + MAX_MEDIA,
            },
        ),
    ];
    for (text, expected) in cases {
        let err = parse(&text).unwrap_err();
        assert_eq!(err, expected, "{text:?}");
        assert_eq!(err.line(), expected.line());
    }
    assert_eq!(
        SdpError::BadMedia {
            line: 7,
            problem: "port is not a number"
        }
        .to_string(),
        "line 7: bad m= line: port is not a number"
    );
}

#[test]
fn lenient_where_harmless() {
    // Empty s=, no t=, o=/s= in any order, port/count, unknown lines, multicast with count.
    let sdp = parse_ok(
        "v=0\r\ns=\r\nk=prompt\r\nx=unknown\r\ni=info\r\no=- 1 1 in ip4 host.example.com\r\n\
         c=IN IP6 ff15::101/3\r\nm=audio 49170/2 RTP/AVP 0\r\nk=clear\r\ni=media info\r\n\
         b=AS:64\r\nc=IN IP4 224.2.1.1/16/2\r\na=\r\na=:v\r\na=x:\r\n",
    );
    assert_eq!(sdp.session_name, "");
    assert_eq!(sdp.timing, ["0 0"]);
    assert_eq!(sdp.origin.ip(), None);
    let letters: Vec<char> = sdp.other_lines.iter().map(|l| l.letter).collect();
    assert_eq!(letters, ['i', 'k', 'x']);
    let media = &sdp.media[0];
    assert_eq!((media.port, media.port_count), (49170, Some(2)));
    assert_eq!(media.bandwidths, ["AS:64"]);
    let connection = media.connection.unwrap();
    assert_eq!((connection.ttl, connection.count), (Some(16), Some(2)));
    assert_eq!(sdp.connection.unwrap().count, Some(3));
    assert_eq!(
        sdp.to_string(),
        "v=0\r\no=- 1 1 IN IP4 host.example.com\r\ns= \r\ni=info\r\nc=IN IP6 ff15::101/3\r\n\
         t=0 0\r\nk=prompt\r\nx=unknown\r\n\
         m=audio 49170/2 RTP/AVP 0\r\ni=media info\r\nc=IN IP4 224.2.1.1/16/2\r\nb=AS:64\r\n\
         k=clear\r\na=\r\na=:v\r\na=x:\r\n"
    );
}

#[test]
fn codecs() {
    let media = parse_ok(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\ns=-\r\nm=audio 1 RTP/AVP 0 8 9 18 96 97 98 99 x\r\n\
         a=rtpmap:0 pcmu/8000\r\na=rtpmap:9 G722/16000\r\na=rtpmap:96 Opus/48000\r\n\
         a=rtpmap:97 PCMA/8000/2\r\na=rtpmap:98 telephone-event/48000\r\na=rtpmap:99 garbage\r\n\
         a=fmtp:99\r\n",
    )
    .media
    .remove(0);
    let resolved: Vec<(u8, Option<Codec>)> = media
        .payload_types()
        .map(|pt| (pt, media.codec(pt)))
        .collect();
    assert_eq!(
        resolved,
        [
            (0, Some(Codec::Pcmu)),
            (8, Some(Codec::Pcma)),
            (9, None),
            (18, None),
            (96, Some(Codec::Opus)),
            (97, None),
            (98, None),
            (99, None),
        ]
    );
    assert_eq!(media.fmtp(99), None);
    for codec in Codec::ALL {
        let pt = codec.static_payload_type().unwrap_or(100);
        let value = codec.rtpmap_value(pt);
        let (_, map) = value.split_once(' ').unwrap();
        assert_eq!(
            Codec::from_rtpmap(&RtpMap::parse(map).unwrap()),
            Some(codec)
        );
        if let Some(pt) = codec.static_payload_type() {
            assert_eq!(Codec::from_static_payload_type(pt), Some(codec));
        }
    }
    assert_eq!(Codec::G722.clock_rate(), 8000);
    assert_eq!(Codec::Opus.rtpmap_value(111), "111 opus/48000/2");
    assert_eq!(RtpMap::parse("PCMU/8000/1/2"), None);
    assert_eq!(RtpMap::parse("/8000"), None);
}

#[test]
fn directions() {
    use Direction::*;
    assert_eq!(
        [SendRecv, SendOnly, RecvOnly, Inactive].map(Direction::reverse),
        [SendRecv, RecvOnly, SendOnly, Inactive]
    );
    assert_eq!(SendOnly.intersect(RecvOnly), Inactive);
    assert_eq!(SendRecv.intersect(RecvOnly), RecvOnly);
    assert_eq!(
        Direction::from_attribute(&Attribute::flag("SENDONLY")),
        Some(SendOnly)
    );
    assert_eq!(
        Direction::from_attribute(&Attribute::new("sendonly", "x")),
        None
    );
    assert_eq!(Direction::default(), SendRecv);
}

#[test]
fn no_panic_on_truncated_and_mangled_inputs() {
    let samples = [
        crlf(RFC4566_EXAMPLE),
        crlf(ASTERISK_OFFER),
        crlf(FREESWITCH_OFFER),
        with_addresses(RFC3264_10_1_REOFFER),
    ];
    let ours = local(&[Codec::Opus, Codec::Pcmu, Codec::TelephoneEvent]);
    for sample in &samples {
        for (cut, _) in sample.char_indices() {
            for text in [&sample[..cut], &sample[cut..]] {
                if let Ok(sdp) = parse(text) {
                    assert_eq!(parse(&sdp.to_string()).as_ref(), Ok(&sdp), "{text:?}");
                    let _ = answer(&sdp, &ours, origin());
                }
            }
        }
    }
}

#[test]
fn an_offered_rtcp_mux_is_answered_and_negotiated() {
    let offer = parse("v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp-mux\r\n").unwrap();
    let local = LocalMedia::new("10.0.0.2".parse().unwrap(), 5000, vec![Codec::Pcmu]);
    let (answer, n) = super::answer(
        &offer,
        &local,
        Origin::new("dialerd", 1, 1, "10.0.0.2".parse().unwrap()),
    )
    .unwrap();
    assert!(n.rtcp_mux);
    assert!(answer.media[0].has_attribute("rtcp-mux"));
    let plain = parse("v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n").unwrap();
    let (answer, n) = super::answer(
        &plain,
        &local,
        Origin::new("dialerd", 1, 1, "10.0.0.2".parse().unwrap()),
    )
    .unwrap();
    assert!(!n.rtcp_mux);
    assert!(!answer.media[0].has_attribute("rtcp-mux"));
}
