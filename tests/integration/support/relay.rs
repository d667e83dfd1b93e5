//! A UDP relay on loopback that loses the first datagrams in one direction,
//! for testing retransmission against real peers.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the relay saw.
#[derive(Debug, Default, Clone)]
pub struct RelayLog {
    /// Datagrams dropped on their way to the server.
    pub dropped_to_server: Vec<Vec<u8>>,
    /// Datagrams dropped on their way back to the client.
    pub dropped_to_client: Vec<Vec<u8>>,
    /// Datagrams forwarded to the server.
    pub forwarded_to_server: Vec<Vec<u8>>,
    /// Datagrams forwarded to the client.
    pub forwarded_to_client: Vec<Vec<u8>>,
}

/// Relays between one client and `server`, dropping the first
/// `drop_to_server` client datagrams and the first `drop_to_client` server
/// datagrams. Stops on drop, or after 60 s at the latest.
pub struct LossyRelay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<RelayLog>>,
    thread: Option<JoinHandle<()>>,
}

impl LossyRelay {
    /// Starts the relay.
    pub fn start(server: SocketAddr, drop_to_server: usize, drop_to_client: usize) -> Self {
        Self::start_matching(server, drop_to_server, |_| true, drop_to_client)
    }

    /// Starts a relay that drops the first `drop_to_server` client
    /// datagrams for which `matches` holds (e.g. the first ACK).
    pub fn start_matching(
        server: SocketAddr,
        drop_to_server: usize,
        matches: impl Fn(&[u8]) -> bool + Send + 'static,
        drop_to_client: usize,
    ) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind relay front");
        let back = UdpSocket::bind("127.0.0.1:0").expect("bind relay back");
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(10)))
                .expect("set timeout");
        }
        let addr = front.local_addr().expect("relay address");
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(RelayLog::default()));
        let (stop2, log2) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(60);
            let mut client: Option<SocketAddr> = None;
            let (mut to_server_left, mut to_client_left) = (drop_to_server, drop_to_client);
            let mut buf = vec![0u8; 65_535];
            while !stop2.load(Ordering::Relaxed) && Instant::now() < end {
                if let Ok((n, from)) = front.recv_from(&mut buf) {
                    client = Some(from);
                    let data = buf[..n].to_vec();
                    let mut log = log2.lock().unwrap_or_else(|e| e.into_inner());
                    if to_server_left > 0 && matches(&data) {
                        to_server_left -= 1;
                        log.dropped_to_server.push(data);
                    } else {
                        let _ = back.send_to(&data, server);
                        log.forwarded_to_server.push(data);
                    }
                }
                if let Ok((n, _)) = back.recv_from(&mut buf) {
                    let data = buf[..n].to_vec();
                    let mut log = log2.lock().unwrap_or_else(|e| e.into_inner());
                    if to_client_left > 0 {
                        to_client_left -= 1;
                        log.dropped_to_client.push(data);
                    } else if let Some(c) = client {
                        let _ = front.send_to(&data, c);
                        log.forwarded_to_client.push(data);
                    }
                }
            }
        });
        Self {
            addr,
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of what the relay saw so far.
    pub fn log(&self) -> RelayLog {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
