//! SIP message parse / typed read / serialize: dialerd against rsipstack
//! 0.7.14, on the same bytes (`data/invite.sip`, `data/ok200.sip`).
//!
//! Run from `benches/`:
//!   CARGO_TARGET_DIR=/work/main/benches/target cargo bench --bench message
//!
//! What each group times, per message:
//! - `parse/*`: dialerd `Message::parse` + `validate` (a message is not
//!   "parsed" for dialerd until RFC 4475's must-reject cases are rejected);
//!   rsipstack `SipMessage::try_from(&[u8])` (its `parser::parse_message`).
//!   `parse/*/dialerd_structure` is the like-for-like figure: what
//!   rsipstack's parse does (start line with the Request-URI parsed, header
//!   lines split, body framed), with dialerd: `Message::parse` plus
//!   `Uri::parse` of the Request-URI, without `validate`.
//! - `parse_typed/*`: the parse above, then the values a UA reads from every
//!   message: top Via branch, From tag, To tag, Call-ID, CSeq (number and
//!   method), Content-Length, Contact(s), Max-Forwards (request) and the body,
//!   each through the library's own typed accessors.
//! - `serialize/*`: an already parsed message back to wire bytes: dialerd
//!   `OutMessage::encode` (built once from the parsed message outside the
//!   loop), rsipstack `SipMessage::to_bytes` (its wire form; `to_string` is
//!   the same text through `Display`, documented for logging).
//!
//! Before any timing, `check_same_values` asserts that both parsers accept
//! both messages and read the same values, so the comparison is like for like.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dialerd::sip::message::{Contacts, Framing, HeaderName, Limits, Message, OutMessage, Uri};
use rsipstack::sip::HasHeaders;
use rsipstack::sip::SipMessage;
use rsipstack::sip::headers::Header;
use rsipstack::sip::prelude::*;
use rsipstack::sip::typed::Via as RsVia;

static INVITE: &[u8] = include_bytes!("../data/invite.sip");
static OK200: &[u8] = include_bytes!("../data/ok200.sip");

const DIALERD: &str = "dialerd";
const RSIPSTACK: &str = "rsipstack_0_7_14";
const DIALERD_STRUCTURE: &str = "dialerd_structure";

const INPUTS: [(&str, &[u8]); 2] = [("invite", INVITE), ("ok200", OK200)];

// ---------------------------------------------------------------- dialerd

fn d_parse(data: &'static [u8]) -> Message {
    let m = Message::parse(
        Bytes::from_static(data),
        Framing::Datagram,
        &Limits::default(),
    )
    .expect("dialerd: parse");
    m.validate().expect("dialerd: validate");
    m
}

/// The typed values both libraries must agree on.
#[derive(Debug, PartialEq, Eq)]
struct Values {
    branch: String,
    from_tag: String,
    to_tag: Option<String>,
    call_id: String,
    cseq: (u32, String),
    content_length: u32,
    contacts: usize,
    max_forwards: Option<u32>,
    body_len: usize,
}

/// Every typed read of `parse_typed`, results black-boxed.
fn d_typed(m: &Message) {
    let via = m.top_via().expect("dialerd: Via");
    black_box(via.branch());
    black_box(m.from_header().expect("dialerd: From").tag());
    black_box(m.to_header().expect("dialerd: To").tag());
    black_box(m.call_id());
    let cseq = m.cseq().expect("dialerd: CSeq");
    black_box((cseq.seq, cseq.method));
    black_box(m.content_length().expect("dialerd: Content-Length"));
    black_box(m.contacts().expect("dialerd: Contact"));
    if m.is_request() {
        black_box(m.max_forwards().expect("dialerd: Max-Forwards"));
    }
    black_box(m.body());
}

fn d_values(m: &Message) -> Values {
    let cseq = m.cseq().unwrap();
    Values {
        branch: m.top_via().unwrap().branch().unwrap().to_owned(),
        from_tag: m.from_header().unwrap().tag().unwrap().to_owned(),
        to_tag: m.to_header().unwrap().tag().map(str::to_owned),
        call_id: m.call_id().unwrap().to_owned(),
        cseq: (cseq.seq, cseq.method.to_owned()),
        content_length: m.content_length().unwrap(),
        contacts: match m.contacts().unwrap() {
            Contacts::Star => 0,
            Contacts::List(l) => l.len(),
        },
        max_forwards: m.is_request().then(|| u32::from(m.max_forwards().unwrap())),
        body_len: m.body().len(),
    }
}

/// An `OutMessage` carrying the parsed message's start line, headers and body.
fn d_out(m: &Message) -> OutMessage {
    let mut out = match m.method_str() {
        Some(method) => OutMessage::request(method, m.request_uri().unwrap()),
        None => OutMessage::response(m.status().unwrap(), m.reason().unwrap()),
    };
    for h in m.headers() {
        if matches!(h.name, HeaderName::ContentType | HeaderName::ContentLength) {
            continue;
        }
        out.push(h.raw_name, h.value());
    }
    let content_type = m
        .value(HeaderName::ContentType)
        .expect("dialerd: Content-Type");
    out.body(content_type, m.body().clone())
}

// -------------------------------------------------------------- rsipstack

fn r_parse(data: &[u8]) -> SipMessage {
    SipMessage::try_from(data).expect("rsipstack: parse")
}

fn r_content_length(m: &SipMessage) -> u32 {
    m.headers()
        .iter()
        .find_map(|h| match h {
            Header::ContentLength(c) => Some(c),
            _ => None,
        })
        .expect("rsipstack: Content-Length")
        .value()
        .trim()
        .parse()
        .expect("rsipstack: Content-Length number")
}

fn r_max_forwards(m: &SipMessage) -> u32 {
    m.max_forwards_header()
        .expect("rsipstack: Max-Forwards")
        .value()
        .trim()
        .parse()
        .expect("rsipstack: Max-Forwards number")
}

fn r_body(m: &SipMessage) -> &[u8] {
    match m {
        SipMessage::Request(r) => r.body(),
        SipMessage::Response(r) => r.body(),
    }
}

fn r_typed(m: &SipMessage) {
    let via = RsVia::parse(m.top_via_header().expect("rsipstack: Via").value())
        .expect("rsipstack: typed Via");
    black_box(via.branch());
    black_box(
        m.from_header()
            .expect("rsipstack: From")
            .tag()
            .expect("rsipstack: From tag"),
    );
    black_box(
        m.to_header()
            .expect("rsipstack: To")
            .tag()
            .expect("rsipstack: To tag"),
    );
    black_box(m.call_id_header().expect("rsipstack: Call-ID").value());
    let cseq = m
        .cseq_header()
        .expect("rsipstack: CSeq")
        .typed()
        .expect("rsipstack: typed CSeq");
    black_box(&cseq);
    black_box(r_content_length(m));
    black_box(m.typed_contact_headers().expect("rsipstack: Contact"));
    if m.is_request() {
        black_box(r_max_forwards(m));
    }
    black_box(r_body(m));
}

fn r_values(m: &SipMessage) -> Values {
    let via = RsVia::parse(m.top_via_header().unwrap().value()).unwrap();
    let cseq = m.cseq_header().unwrap().typed().unwrap();
    Values {
        branch: via.branch().unwrap().value().to_owned(),
        from_tag: m
            .from_header()
            .unwrap()
            .tag()
            .unwrap()
            .unwrap()
            .value()
            .to_owned(),
        to_tag: m
            .to_header()
            .unwrap()
            .tag()
            .unwrap()
            .map(|t| t.value().to_owned()),
        call_id: m.call_id_header().unwrap().value().trim().to_owned(),
        cseq: (cseq.seq, cseq.method.to_string()),
        content_length: r_content_length(m),
        contacts: m.typed_contact_headers().unwrap().len(),
        max_forwards: m.is_request().then(|| r_max_forwards(m)),
        body_len: r_body(m).len(),
    }
}

// ------------------------------------------------------------------ checks

/// Both parsers accept both messages and read the same values; both
/// serializations parse back (with dialerd) to the same values.
fn check_same_values() {
    for (name, data) in INPUTS {
        let d = d_parse(data);
        let r = r_parse(data);
        let dv = d_values(&d);
        let rv = r_values(&r);
        assert_eq!(
            dv, rv,
            "{name}: dialerd and rsipstack read different values"
        );
        assert_eq!(
            dv.body_len, dv.content_length as usize,
            "{name}: body framing"
        );
        assert_eq!(d.is_request(), name == "invite");

        let d_wire = d_out(&d).encode();
        let r_wire = Bytes::from(r.to_bytes());
        for (who, wire) in [(DIALERD, d_wire), (RSIPSTACK, r_wire)] {
            let back = Message::parse(wire, Framing::Datagram, &Limits::default())
                .unwrap_or_else(|e| panic!("{name}: {who} output does not parse: {e}"));
            back.validate()
                .unwrap_or_else(|e| panic!("{name}: {who} output does not validate: {e}"));
            assert_eq!(
                d_values(&back),
                dv,
                "{name}: {who} output reads differently"
            );
        }
    }
}

// ------------------------------------------------------------------ groups

fn config() -> Criterion {
    Criterion::default()
        .without_plots()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

fn parse(c: &mut Criterion) {
    check_same_values();
    for (name, data) in INPUTS {
        let mut g = c.benchmark_group(format!("parse/{name}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function(DIALERD, |b| b.iter(|| d_parse(black_box(data))));
        g.bench_function(RSIPSTACK, |b| b.iter(|| r_parse(black_box(data))));
        // Like for like with rsipstack's parse: structure and start line
        // (Request-URI parsed), no semantic validation.
        g.bench_function(DIALERD_STRUCTURE, |b| {
            b.iter(|| {
                let m = Message::parse(
                    Bytes::from_static(black_box(data)),
                    Framing::Datagram,
                    &Limits::default(),
                )
                .expect("dialerd: parse");
                if let Some(uri) = m.request_uri() {
                    black_box(Uri::parse(uri).expect("dialerd: Request-URI"));
                }
                m
            })
        });
        g.finish();
    }
}

fn parse_typed(c: &mut Criterion) {
    for (name, data) in INPUTS {
        let mut g = c.benchmark_group(format!("parse_typed/{name}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function(DIALERD, |b| {
            b.iter(|| {
                let m = d_parse(black_box(data));
                d_typed(&m);
                m
            })
        });
        g.bench_function(RSIPSTACK, |b| {
            b.iter(|| {
                let m = r_parse(black_box(data));
                r_typed(&m);
                m
            })
        });
        g.finish();
    }
}

fn serialize(c: &mut Criterion) {
    for (name, data) in INPUTS {
        let out = d_out(&d_parse(data));
        let r = r_parse(data);
        let mut g = c.benchmark_group(format!("serialize/{name}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function(DIALERD, |b| b.iter(|| black_box(&out).encode()));
        g.bench_function(RSIPSTACK, |b| b.iter(|| black_box(&r).to_bytes()));
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = parse, parse_typed, serialize
}
criterion_main!(benches);
