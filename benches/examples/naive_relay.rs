//! The naive RTP relay that `benches/relay_load.sh` compares dialerd's with:
//! tokio on one thread, one task and one socket per leg, one `recv_from` and
//! one `send_to` per packet.
//!
//!   naive_relay --calls N --base-port P --addrs FILE --ports FILE
//!
//! Prints `READY`, then waits for the load generator's `--addrs` file (one
//! call a line, as `rtp_load` writes it; only the count is used here), binds
//! for each call leg A and leg B on 127.0.0.1, each on the next even port
//! from `P` on that is free (in a free range call `c` gets `P + 4c` and
//! `P + 4c + 2`, the layout of `dialerd_relay`, which also binds the RTCP
//! port after each), writes `--ports` (one call a line: `127.0.0.1:PA
//! 127.0.0.1:PB`, written whole and renamed into place), prints `SETUP` and
//! relays until it is killed.
//!
//! Each leg's task receives on its own socket, latches the first source
//! address as its peer (symmetric RTP) and sends each packet, unchanged, out
//! of the other leg's socket to the other leg's latched peer (dropped until
//! that peer has sent once). The runtime is current-thread: one core.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// One bridged call: a socket and a latched peer per leg.
struct Call {
    sockets: [UdpSocket; 2],
    peers: [OnceLock<SocketAddr>; 2],
}

/// Leg `side`'s task: what its peer sends goes out of the other leg.
async fn relay(call: Arc<Call>, side: usize) {
    let mut buf = [0u8; 2048];
    let other = side ^ 1;
    loop {
        let (len, from) = match call.sockets[side].recv_from(&mut buf).await {
            Ok(got) => got,
            Err(_) => continue,
        };
        let _ = call.peers[side].get_or_init(|| from);
        if let Some(to) = call.peers[other].get() {
            let _ = call.sockets[other].send_to(&buf[..len], *to).await;
        }
    }
}

/// A socket on the next even port from `*next` on that can be bound on
/// 127.0.0.1 (other programs may hold some of the range), and its port.
async fn bind_next(next: &mut u16) -> (UdpSocket, u16) {
    while *next < u16::MAX - 1 {
        let port = *next;
        *next += 2;
        if let Ok(socket) = UdpSocket::bind(("127.0.0.1", port)).await {
            return (socket, port);
        }
    }
    eprintln!("no free port left");
    std::process::exit(1);
}

fn usage() -> ! {
    eprintln!("usage: naive_relay --calls N --base-port P --addrs FILE --ports FILE");
    std::process::exit(1);
}

/// Waits for `path` (at most `limit`) and counts its non-empty lines.
fn wait_lines(path: &str, limit: Duration) -> std::io::Result<usize> {
    let deadline = Instant::now() + limit;
    loop {
        match std::fs::read_to_string(path) {
            Ok(text) => return Ok(text.lines().filter(|l| !l.trim().is_empty()).count()),
            Err(e) if e.kind() == ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

fn main() {
    let mut calls = None;
    let mut base = None;
    let mut addrs = None;
    let mut ports = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--calls" => calls = value.parse::<usize>().ok(),
            "--base-port" => base = value.parse::<u16>().ok(),
            "--addrs" => addrs = Some(value),
            "--ports" => ports = Some(value),
            _ => usage(),
        }
    }
    let (Some(calls), Some(base), Some(addrs), Some(ports)) = (calls, base, addrs, ports) else {
        usage()
    };
    if base % 2 == 1 {
        usage();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a tokio runtime");
    println!("READY");
    match wait_lines(&addrs, Duration::from_secs(120)) {
        Ok(n) if n == calls => {}
        Ok(n) => {
            eprintln!("{addrs}: {n} calls, expected {calls}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("{addrs}: {e}");
            std::process::exit(1);
        }
    }
    runtime.block_on(async move {
        let mut text = String::with_capacity(calls * 32);
        let mut next = base;
        for _ in 0..calls {
            let (a, port_a) = bind_next(&mut next).await;
            let (b, port_b) = bind_next(&mut next).await;
            let call = Arc::new(Call {
                sockets: [a, b],
                peers: [OnceLock::new(), OnceLock::new()],
            });
            tokio::spawn(relay(call.clone(), 0));
            tokio::spawn(relay(call, 1));
            text.push_str(&format!("127.0.0.1:{port_a} 127.0.0.1:{port_b}\n"));
        }
        let tmp = format!("{ports}.tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &ports)) {
            eprintln!("{ports}: {e}");
            std::process::exit(1);
        }
        println!("SETUP");
        std::future::pending::<()>().await;
    });
}
