//! 2xx responses to INVITEs waiting for their ACK (RFC 3261 §13.3.1.4,
//! RFC 6026 §7.1): over UDP the 2xx is retransmitted at T1, doubling up to
//! T2; after 64×T1 without an ACK the owner is told. One ordered set holds
//! exactly one deadline per entry.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::OwnerId;
use crate::sip::transaction::{Timers, TxnId};

/// Call-ID, CSeq number and our To tag: what the ACK of a 2xx shares with
/// its INVITE and the 2xx (two merged INVITEs answered apart differ by tag).
pub(super) type AckKey = (Box<str>, u32, Box<str>);

struct Entry {
    key: AckKey,
    owner: Option<OwnerId>,
    /// The 2xx, when it is retransmitted (UDP).
    data: Option<Bytes>,
    interval: Duration,
    give_up: Instant,
    armed: Instant,
}

/// What is due.
pub(super) enum Due {
    /// Send the 2xx again on its transaction.
    Retransmit { invite: TxnId, data: Bytes },
    /// No ACK came.
    GiveUp {
        invite: TxnId,
        owner: Option<OwnerId>,
    },
}

pub(super) struct Unacked {
    timers: Timers,
    entries: HashMap<TxnId, Entry>,
    by_key: HashMap<AckKey, TxnId>,
    deadlines: BTreeSet<(Instant, TxnId)>,
}

impl Unacked {
    pub(super) fn new(timers: Timers) -> Self {
        Self {
            timers,
            entries: HashMap::new(),
            by_key: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// A 2xx was sent on `invite`; `data` is retransmitted until the ACK.
    pub(super) fn insert(
        &mut self,
        now: Instant,
        key: AckKey,
        invite: TxnId,
        owner: Option<OwnerId>,
        data: Option<Bytes>,
    ) {
        self.remove_txn(invite);
        let give_up = now + self.timers.t1 * 64;
        let armed = if data.is_some() {
            now + self.timers.t1
        } else {
            give_up
        };
        self.by_key.insert(key.clone(), invite);
        self.deadlines.insert((armed, invite));
        self.entries.insert(
            invite,
            Entry {
                key,
                owner,
                data,
                interval: self.timers.t1,
                give_up,
                armed,
            },
        );
    }

    /// The ACK for `key` arrived.
    pub(super) fn acked(&mut self, key: &AckKey) {
        if let Some(invite) = self.by_key.get(key).copied() {
            self.remove_txn(invite);
        }
    }

    pub(super) fn remove_txn(&mut self, invite: TxnId) {
        if let Some(e) = self.entries.remove(&invite) {
            self.deadlines.remove(&(e.armed, invite));
            if self.by_key.get(&e.key) == Some(&invite) {
                self.by_key.remove(&e.key);
            }
        }
    }

    /// Everything due at `now`.
    pub(super) fn due(&mut self, now: Instant) -> Vec<Due> {
        let mut due = Vec::new();
        while let Some(&(at, invite)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(e) = self.entries.get_mut(&invite) else {
                continue;
            };
            if at >= e.give_up {
                let owner = e.owner;
                self.remove_txn(invite);
                due.push(Due::GiveUp { invite, owner });
                continue;
            }
            if let Some(data) = e.data.clone() {
                due.push(Due::Retransmit { invite, data });
            }
            e.interval = (e.interval * 2).min(self.timers.t2);
            e.armed = (at + e.interval).min(e.give_up);
            self.deadlines.insert((e.armed, invite));
        }
        due
    }
}
