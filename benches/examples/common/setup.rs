//! Set-up shared by the relay benchmarks' dialerd processes
//! (`dialerd_relay`, `dialerd_agent`): the generator's address file, free
//! port pairs and the PCMU leg spec. Included with `#[path]`.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use dialerd::media::{AudioCodec, LegSpec};

/// Prints `what` and exits 1.
pub fn fail(what: impl std::fmt::Display) -> ! {
    eprintln!("{what}");
    std::process::exit(1);
}

/// Waits for `path` (at most `limit`) and reads its address pairs (two a
/// line: `A B`, or `PHONE AGENT`).
pub fn wait_pairs(path: &str, limit: Duration) -> Result<Vec<(SocketAddr, SocketAddr)>, String> {
    let deadline = Instant::now() + limit;
    let text = loop {
        match std::fs::read_to_string(path) {
            Ok(text) => break text,
            Err(e) if e.kind() == ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("{path}: {e}")),
        }
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut words = line.split_whitespace().map(str::parse::<SocketAddr>);
            match (words.next(), words.next()) {
                (Some(Ok(a)), Some(Ok(b))) => Ok((a, b)),
                _ => Err(format!("{path}: bad line {line:?}")),
            }
        })
        .collect()
}

/// The next even port from `*next` on whose pair (RTP and RTCP) can be
/// bound on 127.0.0.1 now (other programs may hold some of the range), and
/// moves `*next` past it. The probe's sockets are closed before the shard
/// binds the ports.
pub fn free_pair(next: &mut u16) -> Option<u16> {
    while *next < u16::MAX - 1 {
        let port = *next;
        *next += 2;
        let rtp = UdpSocket::bind(("127.0.0.1", port));
        let rtcp = UdpSocket::bind(("127.0.0.1", port + 1));
        if rtp.is_ok() && rtcp.is_ok() {
            return Some(port);
        }
    }
    None
}

/// The spec of a PCMU/0 20 ms sendrecv leg whose peer is `remote` (as the
/// SIP core gives a call's leg after an offer/answer, and the engine an
/// agent's leg).
pub fn pcmu(remote: SocketAddr) -> LegSpec {
    LegSpec {
        remote,
        rtcp: None,
        codec: AudioCodec::Pcmu,
        payload_type: 0,
        dtmf_payload_type: None,
        local_dtmf_payload_type: None,
        ptime_ms: 20,
        peer_sends: true,
        peer_receives: true,
        watched: false,
    }
}
