//! The lease machine, sans-IO: which accounts this instance holds, when to
//! renew, acquire, hand over and release them. The shell runs its
//! [`LeaseOp`]s against Redis (atomic scripts) and feeds the replies back;
//! the SIP core receives its [`Permit`]s and revocations.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{LeaseRole, LeaseStatus, Permit};

/// What the machine needs to know.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// This instance's id (the holder name written into leases).
    pub instance: String,
    /// Every account this instance can register, in configuration order.
    pub accounts: Vec<String>,
    /// How long a lease lasts in Redis without renewal.
    pub ttl: Duration,
}

impl LeaseConfig {
    /// How often the machine renews and looks at the other leases.
    pub fn period(&self) -> Duration {
        (self.ttl / 5).clamp(Duration::from_millis(200), Duration::from_secs(5))
    }

    /// How long a renewal lets the SIP core register: a third of the TTL
    /// short of the lease, so that an account whose lease could not be
    /// renewed is unregistered before the lease can pass to another
    /// instance.
    pub fn validity(&self) -> Duration {
        self.ttl - self.ttl / 3
    }
}

/// A Redis operation for the shell (each is one atomic script).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOp {
    /// Refreshes this instance's membership, renews `renew` (account and
    /// the lease value this instance wrote) where the value is still ours,
    /// and reads every account's lease value and fence counter.
    Sync {
        /// Accounts and values to renew.
        renew: Vec<(String, String)>,
    },
    /// Takes `account`'s lease if nobody holds it: a new fence token, the
    /// value `"<instance> <token>"`, and the last holder's Contact.
    Acquire {
        /// The account.
        account: String,
        /// The highest fence token this instance has seen for it: the new
        /// one is above it even when Redis lost its counter.
        floor: u64,
    },
    /// Deletes `account`'s lease if its value is still `value`, and the
    /// Contact recorded for it.
    Release {
        /// The account.
        account: String,
        /// The value this instance wrote.
        value: String,
    },
    /// Removes this instance from the members (it stops taking leases), so
    /// that the others take its share at once.
    Leave,
    /// Records the Contact `account` is registered with (empty: none), if
    /// the lease's value is still `value`.
    SaveContact {
        /// The account.
        account: String,
        /// The value this instance wrote.
        value: String,
        /// The registered Contact URI.
        contact: String,
    },
}

/// One account as a [`LeaseOp::Sync`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The lease's value, `None` when nobody holds it.
    pub value: Option<String>,
    /// Whether the account's fence counter exists (it is lost with Redis's
    /// data, which is when a free lease may still be in use).
    pub fenced: bool,
}

/// A reply to a [`LeaseOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseReply {
    /// To `Sync`: the live members and each account, in the order of
    /// [`LeaseConfig::accounts`].
    Synced {
        /// Instances that refreshed their membership within the TTL.
        members: Vec<String>,
        /// Every account's lease.
        accounts: Vec<Observed>,
    },
    /// To `Acquire`: taken with `value`; `contact` is the last holder's.
    Acquired {
        /// The value written.
        value: String,
        /// The Contact the previous holder registered, if it recorded one.
        contact: Option<String>,
    },
    /// To `Acquire`: someone holds it.
    Held {
        /// The lease's value.
        value: String,
    },
    /// To `Release` and `SaveContact`: whether the value was still ours.
    Done(bool),
}

/// What the machine tells the SIP core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutput {
    /// Register `account` (or keep it registered) until the permit's end.
    Permit {
        /// The account.
        account: String,
        /// What it may do.
        permit: Permit,
    },
    /// Stop registering `account` (unREGISTER it).
    Revoke {
        /// The account.
        account: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Hold {
    /// Someone else (or nobody) holds it.
    Other {
        holder: Option<String>,
        /// When this instance first saw it free with its fence counter
        /// gone (Redis lost its data): it waits a TTL before taking it.
        unfenced_since: Option<Instant>,
    },
    /// An `Acquire` is on its way; `reacquire` when this instance held the
    /// lease until Redis lost it (its permit still runs).
    Acquiring { reacquire: bool },
    /// Ours.
    Held {
        value: String,
        token: u64,
        until: Instant,
        contact: Option<String>,
    },
    /// Ours, revoked from the SIP core to pass it on; released once the
    /// core has unregistered it (or after a TTL).
    HandingOver { value: String, since: Instant },
    /// A `Release` is on its way.
    Releasing,
}

/// The lease machine of one instance.
#[derive(Debug)]
pub struct Leases {
    config: LeaseConfig,
    holds: Vec<Hold>,
    members: Vec<String>,
    next_sync: Option<Instant>,
    in_flight: Option<(LeaseOp, Instant)>,
    queue: VecDeque<LeaseOp>,
    out: VecDeque<LeaseOutput>,
    stopping: bool,
    /// The highest fence token seen per account.
    fences: Vec<u64>,
}

impl Leases {
    /// A machine holding nothing; its first sync is due at once.
    pub fn new(config: LeaseConfig) -> Self {
        let holds = config
            .accounts
            .iter()
            .map(|_| Hold::Other {
                holder: None,
                unfenced_since: None,
            })
            .collect();
        let fences = vec![0; config.accounts.len()];
        Self {
            config,
            holds,
            members: Vec::new(),
            next_sync: None,
            in_flight: None,
            queue: VecDeque::new(),
            out: VecDeque::new(),
            stopping: false,
            fences,
        }
    }

    /// The next operation to run, if none is in flight (one at a time).
    pub fn poll_op(&mut self, now: Instant) -> Option<LeaseOp> {
        if self.in_flight.is_some() {
            return None;
        }
        if self.queue.is_empty() && !self.stopping && self.next_sync.is_none_or(|t| t <= now) {
            self.next_sync = Some(now + self.config.period());
            let renew = self
                .config
                .accounts
                .iter()
                .zip(&self.holds)
                .filter_map(|(a, h)| match h {
                    Hold::Held { value, .. } | Hold::HandingOver { value, .. } => {
                        Some((a.clone(), value.clone()))
                    }
                    _ => None,
                })
                .collect();
            self.queue.push_back(LeaseOp::Sync { renew });
        }
        let op = self.queue.pop_front()?;
        self.in_flight = Some((op.clone(), now));
        Some(op)
    }

    /// The next output for the SIP core.
    pub fn poll_output(&mut self) -> Option<LeaseOutput> {
        self.out.pop_front()
    }

    /// When [`Leases::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let ends = self.holds.iter().filter_map(|h| match h {
            Hold::Held { until, .. } => Some(*until),
            Hold::HandingOver { since, .. } => Some(*since + self.config.ttl),
            _ => None,
        });
        let sync = (!self.stopping && self.in_flight.is_none())
            .then_some(self.next_sync)
            .flatten();
        ends.chain(sync).min()
    }

    /// Ends permits whose renewal did not come in time, and hand-overs the
    /// SIP core did not finish.
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.holds.len() {
            let Some(account) = self.config.accounts.get(i).cloned() else {
                continue;
            };
            let Some(hold) = self.holds.get_mut(i) else {
                continue;
            };
            match hold {
                Hold::Held { until, .. } if *until <= now => {
                    tracing::warn!(%account, "account lease not renewed in time; giving the account up");
                    *hold = Hold::Other {
                        holder: None,
                        unfenced_since: None,
                    };
                    self.out.push_back(LeaseOutput::Revoke { account });
                }
                Hold::HandingOver { value, since, .. } if *since + self.config.ttl <= now => {
                    let value = value.clone();
                    *hold = Hold::Releasing;
                    self.queue.push_back(LeaseOp::Release { account, value });
                }
                _ => {}
            }
        }
    }

    /// The SIP core has unregistered `account` (its state after a
    /// revocation): a hand-over can release the lease now.
    pub fn core_stopped(&mut self, account: &str) {
        let Some(i) = self.index(account) else {
            return;
        };
        if let Some(hold) = self.holds.get_mut(i)
            && let Hold::HandingOver { value, .. } = hold
        {
            let value = value.clone();
            *hold = Hold::Releasing;
            self.queue.push_back(LeaseOp::Release {
                account: account.to_owned(),
                value,
            });
        }
    }

    /// The SIP core registered `account` with `contact` (or holds no
    /// binding: `None`): recorded with the lease, so that the next holder
    /// can remove a binding this instance leaves behind.
    pub fn core_registered(&mut self, account: &str, contact: Option<&str>) {
        let Some(i) = self.index(account) else {
            return;
        };
        if let Some(Hold::Held {
            value, contact: c, ..
        }) = self.holds.get_mut(i)
            && c.as_deref() != contact
        {
            *c = contact.map(str::to_owned);
            self.queue.push_back(LeaseOp::SaveContact {
                account: account.to_owned(),
                value: value.clone(),
                contact: contact.unwrap_or_default().to_owned(),
            });
        }
    }

    /// Stops acquiring and releases every lease held (the SIP core has
    /// unregistered the accounts first).
    pub fn release_all(&mut self) {
        self.stopping = true;
        for (account, hold) in self.config.accounts.iter().zip(self.holds.iter_mut()) {
            if let Hold::Held { value, .. } | Hold::HandingOver { value, .. } = hold {
                let value = value.clone();
                *hold = Hold::Releasing;
                self.out.push_back(LeaseOutput::Revoke {
                    account: account.clone(),
                });
                self.queue.push_back(LeaseOp::Release {
                    account: account.clone(),
                    value,
                });
            }
        }
        self.queue.push_back(LeaseOp::Leave);
    }

    /// Whether every lease is released (after [`Leases::release_all`]).
    pub fn released(&self) -> bool {
        self.stopping
            && self.in_flight.is_none()
            && self.queue.is_empty()
            && !self.holds.iter().any(|h| {
                matches!(
                    h,
                    Hold::Held { .. } | Hold::HandingOver { .. } | Hold::Releasing
                )
            })
    }

    /// The outcome of the operation in flight: a reply, or `None` when
    /// Redis could not be asked (nothing changes; permits run out on their
    /// own).
    pub fn on_reply(&mut self, now: Instant, reply: Option<LeaseReply>) {
        let Some((op, sent)) = self.in_flight.take() else {
            return;
        };
        match (op, reply) {
            (LeaseOp::Sync { .. }, Some(LeaseReply::Synced { members, accounts })) => {
                self.on_synced(now, sent, members, accounts);
            }
            (LeaseOp::Acquire { account, .. }, reply) => self.on_acquired(sent, &account, reply),
            (LeaseOp::Release { account, .. }, _) => {
                // Released, or no longer ours, or unknown: the lease runs
                // out in Redis within its TTL either way.
                if let Some(h) = self.index(&account).and_then(|i| self.holds.get_mut(i)) {
                    *h = Hold::Other {
                        holder: None,
                        unfenced_since: None,
                    };
                }
            }
            (LeaseOp::SaveContact { .. } | LeaseOp::Sync { .. } | LeaseOp::Leave, _) => {}
        }
    }

    fn on_synced(
        &mut self,
        now: Instant,
        sent: Instant,
        members: Vec<String>,
        accounts: Vec<Observed>,
    ) {
        self.members = members;
        let until = sent + self.config.validity();
        for (i, seen) in accounts.into_iter().enumerate() {
            let Some(account) = self.config.accounts.get(i).cloned() else {
                break;
            };
            if let (Some(token), Some(f)) = (
                seen.value.as_deref().and_then(token_of),
                self.fences.get_mut(i),
            ) {
                *f = (*f).max(token);
            }
            let floor = self.fences.get(i).copied().unwrap_or(0);
            let Some(hold) = self.holds.get_mut(i) else {
                break;
            };
            match hold {
                Hold::Held {
                    value,
                    token,
                    until: u,
                    ..
                } => {
                    if seen.value.as_deref() == Some(value.as_str()) {
                        *u = until;
                        self.out.push_back(LeaseOutput::Permit {
                            account,
                            permit: Permit {
                                token: *token,
                                until,
                                retire: None,
                            },
                        });
                    } else if seen.value.is_none() && !seen.fenced {
                        // Redis lost its data: nobody else can have held
                        // it since, so this instance takes it straight
                        // back (its permit runs meanwhile).
                        tracing::warn!(%account, "account lease gone with Redis's data; taking it back");
                        *hold = Hold::Acquiring { reacquire: true };
                        self.queue.push_back(LeaseOp::Acquire { account, floor });
                    } else {
                        tracing::warn!(%account, holder = ?seen.value, "account lease lost; giving the account up");
                        *hold = Hold::Other {
                            holder: seen.value.as_deref().map(holder_of),
                            unfenced_since: (seen.value.is_none() && !seen.fenced).then_some(now),
                        };
                        self.out.push_back(LeaseOutput::Revoke { account });
                    }
                }
                // Renewed by the sync (its value is sent) until released.
                Hold::HandingOver { .. } => {}
                Hold::Other {
                    holder,
                    unfenced_since,
                } => {
                    *holder = seen.value.as_deref().map(holder_of);
                    *unfenced_since = match (&seen.value, seen.fenced) {
                        (None, false) => Some(unfenced_since.unwrap_or(now)),
                        _ => None,
                    };
                    // A lease still naming this instance that it does not
                    // hold (left from before a Redis outage): given back.
                    if let Some(value) = &seen.value
                        && holder_of(value) == self.config.instance
                        && !self.stopping
                    {
                        self.queue.push_back(LeaseOp::Release {
                            account,
                            value: value.clone(),
                        });
                        *hold = Hold::Releasing;
                    }
                }
                Hold::Acquiring { .. } | Hold::Releasing => {}
            }
        }
        if !self.stopping {
            self.balance(now);
        }
    }

    /// Takes free accounts up to this instance's share, or hands one over
    /// when it holds more than its share.
    fn balance(&mut self, now: Instant) {
        let members = self.members.len().max(1);
        let share = self.config.accounts.len().div_ceil(members);
        let held = self
            .holds
            .iter()
            .filter(|h| matches!(h, Hold::Held { .. } | Hold::Acquiring { .. }))
            .count();
        let handing = self
            .holds
            .iter()
            .any(|h| matches!(h, Hold::HandingOver { .. } | Hold::Releasing));
        if held < share {
            let mut free: Vec<usize> = self
                .holds
                .iter()
                .enumerate()
                .filter(|(_, h)| match h {
                    Hold::Other {
                        holder: None,
                        unfenced_since,
                    } => unfenced_since.is_none_or(|t| t + self.config.ttl <= now),
                    _ => false,
                })
                .map(|(i, _)| i)
                .collect();
            // Instances prefer different accounts, so that two starting
            // together do not race for the same ones.
            free.sort_by_key(|&i| preference(&self.config.instance, self.account(i)));
            for i in free.into_iter().take(share - held) {
                let account = self.account(i).to_owned();
                if let Some(h) = self.holds.get_mut(i) {
                    *h = Hold::Acquiring { reacquire: false };
                }
                let floor = self.fences.get(i).copied().unwrap_or(0);
                self.queue.push_back(LeaseOp::Acquire { account, floor });
            }
        } else if held > share && !handing && self.members.len() > 1 {
            // One at a time: the one this instance prefers least.
            let pick = self
                .holds
                .iter()
                .enumerate()
                .filter(|(_, h)| matches!(h, Hold::Held { .. }))
                .map(|(i, _)| i)
                .max_by_key(|&i| preference(&self.config.instance, self.account(i)));
            if let Some(i) = pick {
                let account = self.account(i).to_owned();
                if let Some(hold) = self.holds.get_mut(i)
                    && let Hold::Held { value, .. } = hold
                {
                    tracing::info!(%account, share, held, "handing an account over to balance the replicas");
                    *hold = Hold::HandingOver {
                        value: value.clone(),
                        since: now,
                    };
                    self.out.push_back(LeaseOutput::Revoke { account });
                }
            }
        }
    }

    fn on_acquired(&mut self, sent: Instant, account: &str, reply: Option<LeaseReply>) {
        let Some(i) = self.index(account) else {
            return;
        };
        let reacquire = matches!(self.holds.get(i), Some(Hold::Acquiring { reacquire: true }));
        if let Some(LeaseReply::Acquired { value, .. } | LeaseReply::Held { value }) = &reply
            && let (Some(token), Some(f)) = (token_of(value), self.fences.get_mut(i))
        {
            *f = (*f).max(token);
        }
        let won = matches!(reply, Some(LeaseReply::Acquired { .. }));
        if reacquire && (!won || self.stopping) {
            self.out.push_back(LeaseOutput::Revoke {
                account: account.to_owned(),
            });
        }
        let next = match reply {
            Some(LeaseReply::Acquired { value, contact }) if !self.stopping => {
                let token = token_of(&value).unwrap_or(0);
                let until = sent + self.config.validity();
                tracing::info!(account, token, "account lease acquired");
                self.out.push_back(LeaseOutput::Permit {
                    account: account.to_owned(),
                    permit: Permit {
                        token,
                        until,
                        retire: contact.filter(|c| !c.is_empty()),
                    },
                });
                Hold::Held {
                    value,
                    token,
                    until,
                    contact: None,
                }
            }
            Some(LeaseReply::Acquired { value, .. }) => {
                // Taken while stopping: given straight back.
                self.queue.push_back(LeaseOp::Release {
                    account: account.to_owned(),
                    value,
                });
                Hold::Releasing
            }
            Some(LeaseReply::Held { value }) => Hold::Other {
                holder: Some(holder_of(&value)),
                unfenced_since: None,
            },
            _ => Hold::Other {
                holder: None,
                unfenced_since: None,
            },
        };
        if let Some(h) = self.holds.get_mut(i) {
            *h = next;
        }
    }

    /// Every account's lease as this instance sees it.
    pub fn statuses(&self, now: Instant) -> Vec<LeaseStatus> {
        self.config
            .accounts
            .iter()
            .zip(&self.holds)
            .map(|(account, hold)| {
                let (role, holder, token) = match hold {
                    Hold::Held { token, until, .. } if *until > now => (
                        LeaseRole::Active,
                        Some(self.config.instance.clone()),
                        Some(*token),
                    ),
                    Hold::Held { .. } | Hold::Acquiring { .. } => (LeaseRole::Standby, None, None),
                    Hold::HandingOver { .. } | Hold::Releasing => (
                        LeaseRole::Releasing,
                        Some(self.config.instance.clone()),
                        None,
                    ),
                    Hold::Other { holder, .. } => (LeaseRole::Standby, holder.clone(), None),
                };
                LeaseStatus {
                    account: account.clone(),
                    role,
                    holder,
                    token,
                }
            })
            .collect()
    }

    fn index(&self, account: &str) -> Option<usize> {
        self.config.accounts.iter().position(|a| a == account)
    }

    fn account(&self, i: usize) -> &str {
        self.config.accounts.get(i).map_or("", String::as_str)
    }
}

/// The holder named in a lease value (`"<instance> <token>"`).
pub fn holder_of(value: &str) -> String {
    value
        .rsplit_once(' ')
        .map_or(value, |(holder, _)| holder)
        .to_owned()
}

/// The fence token in a lease value.
pub fn token_of(value: &str) -> Option<u64> {
    value.rsplit_once(' ')?.1.parse().ok()
}

/// A stable order of accounts per instance (FNV-1a of both names).
fn preference(instance: &str, account: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in instance.bytes().chain([0]).chain(account.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
