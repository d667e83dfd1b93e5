//! The sans-IO transaction layer: matching a message to its transaction,
//! and requests per second through a non-INVITE server transaction.
//!
//! Run from `benches/`:
//!   CARGO_TARGET_DIR=/work/main/benches/target cargo bench --bench transaction

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dialerd::sip::message::{Message, OutMessage};
use dialerd::sip::target::{Target, Transport};
use dialerd::sip::transaction::{Event, Output, Timers, Transactions};

/// Live transactions in the table while matching.
const LIVE: usize = 10_000;

fn options(i: usize) -> Bytes {
    Bytes::from(format!(
        "OPTIONS sip:dialer-1@203.0.113.10:5061;transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS 198.51.100.20:5061;branch=z9hG4bK-ucm-{i:010};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:qualify@pbx.example.com>;tag=q{i}\r\n\
         To: <sip:dialer-1@203.0.113.10:5061>\r\n\
         Call-ID: qualify-{i}@198.51.100.20\r\n\
         CSeq: 102 OPTIONS\r\n\
         User-Agent: Grandstream UCM6302V1.3A 1.0.27.10\r\n\
         Content-Length: 0\r\n\r\n"
    ))
}

fn parse(b: Bytes) -> Message {
    Message::parse_datagram(b).expect("parses")
}

fn peer() -> Target {
    Target::new(
        Transport::Tcp,
        "198.51.100.20:5061".parse().expect("address"),
    )
}

fn config() -> Criterion {
    Criterion::default()
        .without_plots()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

/// Matching a retransmitted request (already parsed) among `LIVE` server
/// transactions: Via and CSeq reads, key hash, table lookup, key check.
fn matching(c: &mut Criterion) {
    let mut t = Transactions::new(
        Timers::default(),
        std::collections::hash_map::RandomState::new(),
    );
    let now = Instant::now();
    let requests: Vec<Message> = (0..LIVE).map(|i| parse(options(i))).collect();
    for r in &requests {
        t.handle(now, r.clone(), peer());
    }
    while t.poll_output().is_some() {}
    assert_eq!(t.len(), LIVE);
    assert!(requests.iter().all(|r| t.matching(r).is_some()));
    let mut g = c.benchmark_group("transaction");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("match_request_among_10k", |b| {
        b.iter(|| {
            i = (i + 7919) % LIVE;
            black_box(t.matching(black_box(&requests[i])))
        })
    });
    g.finish();
}

/// One OPTIONS through a non-INVITE server transaction over TCP (Timer J is
/// zero, so the transaction ends with its response): event to the TU, the
/// 200 built from the request, respond, outputs drained.
fn server_rps(c: &mut Criterion) {
    let mut t = Transactions::new(
        Timers::default(),
        std::collections::hash_map::RandomState::new(),
    );
    let raw = options(1);
    let request = parse(raw.clone());
    let mut g = c.benchmark_group("transaction");
    g.throughput(Throughput::Elements(1));
    let serve = |t: &mut Transactions, msg: Message| {
        let now = Instant::now();
        t.handle(now, msg, peer());
        let mut txn = None;
        while let Some(o) = t.poll_output() {
            if let Output::Event(Event::Request {
                txn: id, request, ..
            }) = o
            {
                let ok = OutMessage::response_to(&request, 200, "OK", Some("d1"), None).encode();
                txn = Some((id, ok));
            }
        }
        let (id, ok) = txn.expect("a new server transaction");
        t.respond(now, id, 200, ok).expect("respond");
        while let Some(o) = t.poll_output() {
            black_box(o);
        }
    };
    serve(&mut t, request.clone());
    assert!(t.is_empty(), "TCP: the transaction ends with its response");
    g.bench_function("options_server_transaction", |b| {
        b.iter(|| serve(&mut t, black_box(request.clone())))
    });
    g.bench_function("options_parse_validate_and_server_transaction", |b| {
        b.iter(|| {
            let msg = parse(black_box(raw.clone()));
            msg.validate().expect("valid");
            serve(&mut t, msg)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = matching, server_rps
}
criterion_main!(benches);
