//! Runs parse + validate of the INVITE in a loop, for `perf record`.

use bytes::Bytes;
use dialerd::sip::message::{Framing, Limits, Message};

fn main() {
    let invite = Bytes::from_static(include_bytes!("../data/invite.sip"));
    let limits = Limits::default();
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let mut ok = 0u64;
    for _ in 0..n {
        let m = Message::parse(invite.clone(), Framing::Datagram, &limits).expect("parses");
        if m.validate().is_ok() {
            ok += 1;
        }
    }
    println!("{ok}");
}
