//! Arbitrary bytes into the message layer: parsing, validation, every typed
//! accessor and the stream framer must never panic; the response dialerd
//! builds to a valid request must itself parse and validate.

#![no_main]

use bytes::Bytes;
use dialerd::sip::message::{Framing, Limits, Message, OutMessage, Uri};
use dialerd::sip::transport::framer::Framer;
use libfuzzer_sys::fuzz_target;

fn exercise(m: &Message) {
    let _ = m.vias().count();
    let _ = m.top_via();
    let _ = m.from_header();
    let _ = m.to_header();
    let _ = m.cseq();
    let _ = m.max_forwards();
    let _ = m.contacts();
    let _ = m.routes().count();
    let _ = m.record_routes().count();
    let _ = m.expires();
    let _ = m.min_expires();
    let _ = m.content_type();
    let _ = m.content_length();
    let _ = m.supported().count();
    let _ = m.require().count();
    let _ = m.allow().count();
    let _ = m.retry_after();
    let _ = m.session_expires();
    let _ = m.challenges(false).count();
    let _ = m.challenges(true).count();
    let _ = m.credentials(false).count();
    let _ = m.call_id();
    let _ = (m.status(), m.reason(), m.method(), m.method_str());
    if let Some(uri) = m.request_uri()
        && let Ok(Uri::Sip(sip)) = Uri::parse(uri)
    {
        let _ = sip.user_decoded();
        let _ = sip.params.iter().count();
    }
    for h in m.headers() {
        let _ = h.value();
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    for framing in [Framing::Datagram, Framing::Stream] {
        let Ok(m) = Message::parse(Bytes::copy_from_slice(data), framing, &limits) else {
            continue;
        };
        exercise(&m);
        if m.validate().is_ok() && m.is_request() {
            let source = "192.0.2.1:5060".parse().ok();
            let response =
                OutMessage::response_to(&m, 400, "Bad Request", Some("tag1"), source).encode();
            let back = Message::parse(response, Framing::Datagram, &limits)
                .expect("a response to a valid request parses");
            back.validate()
                .expect("a response to a valid request validates");
        }
    }
    let mut framer = Framer::new(4096);
    for chunk in data.chunks(7) {
        framer.push(chunk);
        while let Ok(Some(_)) = framer.next_frame() {}
    }
});
