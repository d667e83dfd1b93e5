//! Media ports for calls, from the configured RTP range, and what the call
//! table asks of the media layer.
//!
//! The table hands out even ports (RTP, with RTCP on the next one) and says
//! what to do with them as [`MediaOp`]s: the SIP core carries them to the
//! media shards, which bind the ports and relay.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::CallId;
use crate::sdp::Negotiated;

/// What the call table asks of the media layer, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaOp {
    /// A call took `port`: bind it.
    Open {
        /// The call.
        call: CallId,
        /// Its name.
        name: Arc<str>,
        /// The even RTP port.
        port: u16,
    },
    /// The call's media was negotiated (or renegotiated).
    Negotiated {
        /// The call.
        call: CallId,
        /// The outcome.
        media: Negotiated,
        /// We may send to the peer (answered, or early media we give).
        sending: bool,
        /// The call is answered: the peer's silence counts against it.
        answered: bool,
    },
    /// Relay between two calls (a bridge).
    Connect {
        /// One call.
        a: CallId,
        /// The other.
        b: CallId,
    },
    /// Stop relaying for the call.
    Disconnect {
        /// The call.
        call: CallId,
    },
    /// The call ended: close its port.
    Close {
        /// The call.
        call: CallId,
    },
}

/// The range has no free port left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// Every port pair in the range is in use.
    #[error("no free media port in {start}..={end}")]
    Exhausted {
        /// First port of the range.
        start: u16,
        /// Last port of the range.
        end: u16,
    },
}

/// Takes a port for real before it is advertised in SDP (the media layer
/// binds its sockets), injected like the RNG so the pool stays sans-IO.
pub trait PortClaim: Send + std::fmt::Debug {
    /// Whether `port` (RTP) and `port + 1` (RTCP) could be taken.
    fn claim(&mut self, port: u16) -> bool;
}

/// Even ports of a range, handed out round-robin; a port given back drains
/// for a while (late packets of the old call) before it is used again; a
/// port another process holds is skipped.
#[derive(Debug)]
pub struct PortPool {
    start: u16,
    end: u16,
    next: u16,
    used: BTreeSet<u16>,
    draining: VecDeque<(Instant, u16)>,
    drain: Duration,
    claim: Option<Box<dyn PortClaim>>,
    claims_failed: u64,
}

impl PortPool {
    /// How long a port given back drains unless told otherwise.
    pub const DRAIN: Duration = Duration::from_secs(2);

    /// The even ports of `start..=end` (with their odd RTCP neighbours).
    pub fn new(start: u16, end: u16) -> Self {
        let start = start.saturating_add(start % 2);
        Self {
            start,
            end,
            next: start,
            used: BTreeSet::new(),
            draining: VecDeque::new(),
            drain: Self::DRAIN,
            claim: None,
            claims_failed: 0,
        }
    }

    /// The same pool handing out ports from the pair `seed` picks (so two
    /// processes sharing a range, or a restarted one, do not start on the
    /// same port).
    pub fn starting_at(mut self, seed: u64) -> Self {
        let pairs = u64::from(self.end.saturating_sub(self.start) / 2) + 1;
        let offset = u16::try_from(seed % pairs).unwrap_or(0);
        self.next = self.start.saturating_add(offset.saturating_mul(2));
        self
    }

    /// The same pool taking each port with `claim` before handing it out.
    pub fn with_claim(mut self, claim: Box<dyn PortClaim>) -> Self {
        self.claim = Some(claim);
        self
    }

    /// Takes each port with `claim` from now on.
    pub fn set_claim(&mut self, claim: Box<dyn PortClaim>) {
        self.claim = Some(claim);
    }

    /// Ports skipped because they could not be taken (another process
    /// holds them).
    pub fn claims_failed(&self) -> u64 {
        self.claims_failed
    }

    /// The same pool with ports draining for `drain` after release.
    pub fn with_drain(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    /// Pairs held by calls (draining ones not counted).
    pub fn in_use(&self) -> usize {
        self.used.len().saturating_sub(self.draining.len())
    }

    /// Pairs given back and still draining.
    pub fn draining(&self) -> usize {
        self.draining.len()
    }

    /// A free even port.
    pub fn allocate(&mut self, now: Instant) -> Result<u16, MediaError> {
        while let Some(&(until, port)) = self.draining.front() {
            if until > now {
                break;
            }
            self.draining.pop_front();
            self.used.remove(&port);
        }
        let pairs = usize::from(self.end.saturating_sub(self.start) / 2) + 1;
        for _ in 0..pairs {
            let port = self.next;
            self.next = match self.next.checked_add(2) {
                Some(n) if n < self.end => n,
                _ => self.start,
            };
            if port >= self.end || self.used.contains(&port) {
                continue;
            }
            if self.claim.as_mut().is_some_and(|c| !c.claim(port)) {
                self.claims_failed += 1;
                continue;
            }
            self.used.insert(port);
            return Ok(port);
        }
        Err(MediaError::Exhausted {
            start: self.start,
            end: self.end,
        })
    }

    /// Gives `port` back; it drains before it is handed out again.
    pub fn release(&mut self, now: Instant, port: u16) {
        if self.used.contains(&port) {
            self.draining.push_back((now + self.drain, port));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_even_unique_and_come_back_after_draining() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(10001, 10008);
        let a = pool.allocate(t0).unwrap();
        let b = pool.allocate(t0).unwrap();
        let c = pool.allocate(t0).unwrap();
        assert_eq!((a, b, c), (10002, 10004, 10006));
        assert!(
            pool.allocate(t0).is_err(),
            "10008 has no RTCP port in range"
        );
        pool.release(t0, b);
        assert_eq!((pool.in_use(), pool.draining()), (2, 1));
        let early = t0 + PortPool::DRAIN - Duration::from_millis(1);
        assert!(
            matches!(pool.allocate(early), Err(MediaError::Exhausted { .. })),
            "a draining port is not reused"
        );
        assert_eq!(pool.allocate(t0 + PortPool::DRAIN), Ok(10004));
        assert_eq!(pool.in_use(), 3);
        assert_eq!(pool.draining(), 0);
    }

    #[test]
    fn a_pool_can_start_anywhere_in_its_range_and_wraps() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(10000, 10007).starting_at(2);
        let ports: Vec<u16> = (0..4).map(|_| pool.allocate(t0).unwrap()).collect();
        assert_eq!(ports, [10004, 10006, 10000, 10002]);
        assert!(pool.allocate(t0).is_err());
    }

    #[derive(Debug)]
    struct Taken(Vec<u16>);

    impl PortClaim for Taken {
        fn claim(&mut self, port: u16) -> bool {
            !self.0.contains(&port)
        }
    }

    #[test]
    fn a_port_another_process_holds_is_skipped() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(10000, 10007).with_claim(Box::new(Taken(vec![10000, 10004])));
        assert_eq!(pool.allocate(t0), Ok(10002));
        assert_eq!(pool.allocate(t0), Ok(10006));
        assert!(pool.allocate(t0).is_err());
        assert_eq!(pool.claims_failed(), 4);
    }
}
