//! SIP message logging for operators (`log.sip_trace`): every message in
//! and out, with direction, transport, addresses and flow, credentials
//! redacted, at a bounded rate (what is over the rate is counted, not
//! logged).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::target::{FlowId, Transport};

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received.
    In,
    /// Sent.
    Out,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// Headers whose values are never logged.
const SECRET_HEADERS: [&str; 2] = ["authorization", "proxy-authorization"];

/// The message as text, with the values of credential headers replaced and
/// SDES keys (`a=crypto:... inline:KEY`) masked.
pub fn redact(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let name = line.split(':').next().unwrap_or_default().trim();
        if SECRET_HEADERS.iter().any(|s| name.eq_ignore_ascii_case(s)) {
            out.push_str(name);
            out.push_str(": <redacted>\r\n");
        } else if let Some(at) = line.to_ascii_lowercase().find("inline:") {
            out.push_str(line.get(..at + 7).unwrap_or_default());
            out.push_str("<redacted>\r\n");
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Logs messages while on, at most `per_second` a second.
#[derive(Debug)]
pub struct Tracer {
    on: bool,
    per_second: u32,
    window: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl Tracer {
    /// A tracer, on or off, limited to `per_second` messages.
    pub fn new(on: bool, per_second: u32) -> Self {
        Self {
            on,
            per_second,
            window: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Turns logging on or off.
    pub fn set(&mut self, on: bool) {
        if on != self.on {
            tracing::info!(sip_trace = on, "SIP message logging switched");
        }
        self.on = on;
    }

    /// Whether it is on.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Messages not logged because of the rate limit, in all.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// Logs one message; returns false when the rate limit suppressed it.
    #[allow(clippy::too_many_arguments)]
    pub fn log(
        &mut self,
        now: Instant,
        direction: Direction,
        transport: Transport,
        flow: Option<FlowId>,
        remote: SocketAddr,
        local: Option<SocketAddr>,
        data: &[u8],
    ) -> bool {
        if !self.on {
            return true;
        }
        match self.window {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.window = Some(now);
                self.in_window = 0;
            }
        }
        if self.in_window >= self.per_second {
            self.suppressed += 1;
            return false;
        }
        self.in_window += 1;
        let flow = flow.map(|f| f.to_string()).unwrap_or_default();
        let local = local.map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(
            target: "sip_trace",
            direction = direction.as_str(),
            %transport,
            %remote,
            %local,
            %flow,
            bytes = data.len(),
            sip = %format_args!("\n{}", redact(data)),
            "SIP message"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_keys_are_redacted() {
        let msg = b"REGISTER sip:r SIP/2.0\r\nAuthorization: Digest username=\"u\", response=\"abc\"\r\n\
            proxy-authorization: Digest x\r\nVia: SIP/2.0/UDP h\r\n\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:SECRETKEY\r\n";
        let text = redact(msg);
        assert!(!text.contains("abc") && !text.contains("SECRETKEY"));
        assert!(!text.contains("Digest x"));
        assert!(text.contains("Authorization: <redacted>"));
        assert!(text.contains("Via: SIP/2.0/UDP h"));
    }

    #[test]
    fn the_rate_limit_counts_what_it_suppresses() {
        let mut t = Tracer::new(true, 2);
        let now = Instant::now();
        let remote: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        let logged: Vec<bool> = (0..5)
            .map(|_| t.log(now, Direction::In, Transport::Udp, None, remote, None, b"x"))
            .collect();
        assert_eq!(logged, [true, true, false, false, false]);
        assert_eq!(t.suppressed(), 3);
        assert!(t.log(
            now + Duration::from_secs(1),
            Direction::Out,
            Transport::Udp,
            None,
            remote,
            None,
            b"x"
        ));
    }
}
