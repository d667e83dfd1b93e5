//! Media ports for calls, from the configured RTP range.
//!
//! This is the allocator interface the media layer fills in: today it hands
//! out and takes back port numbers (even ones, RTP/RTCP pairs); nothing is
//! bound to them yet, so media sent to a call is not received (the media
//! relay issue binds and relays).

use std::collections::BTreeSet;

/// A change to the set of ports in use, for the media layer to bind or
/// release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortChange {
    /// A call took this port.
    Open(u16),
    /// The call ended.
    Close(u16),
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

/// Even ports of a range, handed out round-robin so a port just released
/// is not reused at once (late packets of the old call).
#[derive(Debug, Clone)]
pub struct PortPool {
    start: u16,
    end: u16,
    next: u16,
    used: BTreeSet<u16>,
    changes: Vec<PortChange>,
}

impl PortPool {
    /// The even ports of `start..=end` (with their odd RTCP neighbours).
    pub fn new(start: u16, end: u16) -> Self {
        let start = start.saturating_add(start % 2);
        Self {
            start,
            end,
            next: start,
            used: BTreeSet::new(),
            changes: Vec::new(),
        }
    }

    /// Pairs in use.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }

    /// A free even port.
    pub fn allocate(&mut self) -> Result<u16, MediaError> {
        let pairs = usize::from(self.end.saturating_sub(self.start) / 2) + 1;
        for _ in 0..pairs {
            let port = self.next;
            self.next = match self.next.checked_add(2) {
                Some(n) if n < self.end => n,
                _ => self.start,
            };
            if port < self.end && self.used.insert(port) {
                self.changes.push(PortChange::Open(port));
                return Ok(port);
            }
        }
        Err(MediaError::Exhausted {
            start: self.start,
            end: self.end,
        })
    }

    /// Gives `port` back.
    pub fn release(&mut self, port: u16) {
        if self.used.remove(&port) {
            self.changes.push(PortChange::Close(port));
        }
    }

    /// The ports taken and given back since the last call, in order.
    pub fn take_changes(&mut self) -> std::vec::Drain<'_, PortChange> {
        self.changes.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_even_unique_and_come_back() {
        let mut pool = PortPool::new(10001, 10008);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        let c = pool.allocate().unwrap();
        assert_eq!((a, b, c), (10002, 10004, 10006));
        assert!(pool.allocate().is_err(), "10008 has no RTCP port in range");
        pool.release(b);
        assert_eq!(pool.allocate(), Ok(10004));
        assert_eq!(pool.in_use(), 3);
    }
}
