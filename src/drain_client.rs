//! `dialerd drain`: asks a running daemon to drain over its status server
//! (`POST /drain`, with the bearer token when one is configured) and
//! optionally waits until it has exited. The pod's preStop hook runs it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long one HTTP exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `--wait` looks whether the daemon is still there.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// Why the drain could not be asked for, or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The status server could not be reached.
    #[error("cannot reach the status server at {addr}: {source}")]
    Unreachable {
        /// Where.
        addr: SocketAddr,
        /// The connection error.
        source: std::io::Error,
    },
    /// It answered something other than 202.
    #[error("POST /drain was answered {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The body, as text.
        body: String,
    },
    /// The daemon was still running when the wait ran out.
    #[error("the daemon was still running {0:?} after the drain started")]
    StillRunning(Duration),
}

/// Where to reach the daemon's status server configured at `bind`: its own
/// address, or loopback when it listens on every address.
pub fn target(bind: SocketAddr) -> SocketAddr {
    if bind.ip().is_unspecified() {
        let ip = if bind.is_ipv4() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        };
        SocketAddr::new(ip, bind.port())
    } else {
        bind
    }
}

/// Sends `POST /drain` to `addr` (with `token` as a bearer token); with
/// `wait`, then waits up to that long for the daemon to exit (its status
/// server to stop accepting connections).
pub fn drain(
    addr: SocketAddr,
    token: Option<&str>,
    wait: Option<Duration>,
) -> Result<(), DrainError> {
    let (status, body) = post_drain(addr, token)?;
    if status != 202 {
        return Err(DrainError::Refused { status, body });
    }
    let Some(limit) = wait else {
        return Ok(());
    };
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if TcpStream::connect_timeout(&addr, EXCHANGE_TIMEOUT).is_err() {
            return Ok(());
        }
        std::thread::sleep(WAIT_POLL);
    }
    Err(DrainError::StillRunning(limit))
}

fn post_drain(addr: SocketAddr, token: Option<&str>) -> Result<(u16, String), DrainError> {
    let unreachable = |source| DrainError::Unreachable { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, EXCHANGE_TIMEOUT).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(EXCHANGE_TIMEOUT))
        .map_err(unreachable)?;
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "POST /drain HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(unreachable)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(unreachable)?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .trim()
        .to_owned();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_bind_is_reached_on_loopback() {
        let t = target(SocketAddr::from(([0, 0, 0, 0], 8080)));
        assert_eq!(t, SocketAddr::from(([127, 0, 0, 1], 8080)));
        let own = SocketAddr::from(([10, 1, 2, 3], 8080));
        assert_eq!(target(own), own);
    }

    #[test]
    fn nothing_listening_is_a_clear_error() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let err = drain(addr, None, None).expect_err("nothing listens");
        assert!(
            err.to_string().contains("cannot reach the status server"),
            "{err}"
        );
    }
}
