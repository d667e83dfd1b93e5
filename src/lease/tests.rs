//! Lease machines of several instances against a simulated Redis (the
//! scripts' semantics, with expiring keys) on a fake clock, with outages,
//! partitions, data loss and crashes. The invariant checked at every step:
//! no account is ever permitted to two instances at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::*;

const TTL: Duration = Duration::from_secs(15);
const STEP: Duration = Duration::from_millis(100);

/// Redis as the scripts see it.
#[derive(Default)]
struct FakeRedis {
    keys: HashMap<String, (String, Option<Instant>)>,
    members: HashMap<String, Instant>,
}

impl FakeRedis {
    fn get(&mut self, key: &str, now: Instant) -> Option<String> {
        match self.keys.get(key) {
            Some((_, Some(exp))) if *exp <= now => {
                self.keys.remove(key);
                None
            }
            Some((v, _)) => Some(v.clone()),
            None => None,
        }
    }

    fn run(
        &mut self,
        op: &LeaseOp,
        instance: &str,
        accounts: &[String],
        now: Instant,
    ) -> LeaseReply {
        match op {
            LeaseOp::Sync { renew } => {
                self.members.insert(instance.to_owned(), now + TTL);
                self.members.retain(|_, exp| *exp > now);
                let mut members: Vec<String> = self.members.keys().cloned().collect();
                members.sort();
                let observed = accounts
                    .iter()
                    .map(|a| {
                        let key = format!("lease:{a}");
                        let value = self.get(&key, now);
                        if let Some(v) = &value
                            && renew.iter().any(|(n, mine)| n == a && mine == v)
                        {
                            self.keys.insert(key, (v.clone(), Some(now + TTL)));
                        }
                        Observed {
                            value,
                            fenced: self.get(&format!("fence:{a}"), now).is_some(),
                        }
                    })
                    .collect();
                LeaseReply::Synced {
                    members,
                    accounts: observed,
                }
            }
            LeaseOp::Acquire { account, floor } => {
                let key = format!("lease:{account}");
                if let Some(value) = self.get(&key, now) {
                    return LeaseReply::Held { value };
                }
                let fence = format!("fence:{account}");
                let token = self
                    .get(&fence, now)
                    .and_then(|t| t.parse::<u64>().ok())
                    .unwrap_or(0)
                    .max(*floor)
                    + 1;
                self.keys.insert(fence, (token.to_string(), None));
                let value = format!("{instance} {token}");
                self.keys.insert(key, (value.clone(), Some(now + TTL)));
                LeaseReply::Acquired {
                    value,
                    contact: self.get(&format!("contact:{account}"), now),
                }
            }
            LeaseOp::Release { account, value } => {
                let key = format!("lease:{account}");
                let ours = self.get(&key, now).as_ref() == Some(value);
                if ours {
                    self.keys.remove(&key);
                    self.keys.remove(&format!("contact:{account}"));
                }
                LeaseReply::Done(ours)
            }
            LeaseOp::Leave => {
                self.members.remove(instance);
                LeaseReply::Done(true)
            }
            LeaseOp::SaveContact {
                account,
                value,
                contact,
            } => {
                let ours = self.get(&format!("lease:{account}"), now).as_ref() == Some(value);
                if ours {
                    self.keys
                        .insert(format!("contact:{account}"), (contact.clone(), None));
                }
                LeaseReply::Done(ours)
            }
        }
    }
}

/// One instance: its machine and the SIP core's view (permits).
struct Node {
    name: String,
    machine: Leases,
    permits: HashMap<String, Permit>,
    alive: bool,
    reaches_redis: bool,
    registrations: u32,
    retired: Vec<String>,
}

struct World {
    now: Instant,
    redis: FakeRedis,
    redis_up: bool,
    nodes: Vec<Node>,
    accounts: Vec<String>,
}

impl World {
    fn new(instances: &[&str], accounts: &[&str]) -> Self {
        let accounts: Vec<String> = accounts.iter().map(|a| (*a).to_owned()).collect();
        let nodes = instances
            .iter()
            .map(|name| Node {
                name: (*name).to_owned(),
                machine: Leases::new(LeaseConfig {
                    instance: (*name).to_owned(),
                    accounts: accounts.clone(),
                    ttl: TTL,
                }),
                permits: HashMap::new(),
                alive: true,
                reaches_redis: true,
                registrations: 0,
                retired: Vec::new(),
            })
            .collect();
        Self {
            now: Instant::now(),
            redis: FakeRedis::default(),
            redis_up: true,
            nodes,
            accounts,
        }
    }

    /// Runs every live node for `d`, checking the invariant at each step.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += STEP;
            let now = self.now;
            for node in self.nodes.iter_mut().filter(|n| n.alive) {
                node.machine.handle_timeout(now);
                // The SIP core's own timer: a permit ends on its own.
                node.permits.retain(|_, p| p.until > now);
                while let Some(op) = node.machine.poll_op(now) {
                    let reply = (self.redis_up && node.reaches_redis)
                        .then(|| self.redis.run(&op, &node.name, &self.accounts, now));
                    node.machine.on_reply(now, reply);
                }
                while let Some(out) = node.machine.poll_output() {
                    match out {
                        LeaseOutput::Permit { account, permit } => {
                            if !node.permits.contains_key(&account) {
                                node.registrations += 1;
                                node.retired.extend(permit.retire.clone());
                                // Registered at once, with its own Contact.
                                node.machine.core_registered(
                                    &account,
                                    Some(&format!("sip:{account}@{}", node.name)),
                                );
                            }
                            node.permits.insert(account, permit);
                        }
                        LeaseOutput::Revoke { account } => {
                            node.permits.remove(&account);
                            node.machine.core_stopped(&account);
                        }
                    }
                }
            }
            for account in &self.accounts {
                let holders: Vec<&str> = self
                    .nodes
                    .iter()
                    .filter(|n| n.alive && n.permits.contains_key(account))
                    .map(|n| n.name.as_str())
                    .collect();
                assert!(
                    holders.len() <= 1,
                    "{account} permitted to {holders:?} at once"
                );
            }
        }
    }

    fn holder(&self, account: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.alive && n.permits.contains_key(account))
            .map(|n| n.name.as_str())
    }

    fn held_by(&self, node: usize) -> usize {
        self.nodes.get(node).map_or(0, |n| n.permits.len())
    }

    /// Runs until `account` is held by someone; how long that took.
    fn until_held(&mut self, account: &str, limit: Duration) -> Duration {
        let start = self.now;
        while self.holder(account).is_none() {
            assert!(
                self.now - start < limit,
                "{account} not taken within {limit:?}"
            );
            self.run(STEP);
        }
        self.now - start
    }
}

/// After a first start (the fence counters do not exist yet, which looks
/// like lost data, so the first acquisition waits a TTL) every account is
/// held.
fn started(instances: &[&str], accounts: &[&str]) -> World {
    let mut w = World::new(instances, accounts);
    w.run(TTL + Duration::from_secs(5));
    for a in accounts {
        assert!(w.holder(a).is_some(), "{a} held after the start");
    }
    w
}

#[test]
fn two_replicas_share_two_accounts_one_each() {
    let w = started(&["a", "b"], &["acct1", "acct2"]);
    assert_eq!((w.held_by(0), w.held_by(1)), (1, 1));
}

#[test]
fn a_replica_joining_later_gets_its_share_by_hand_over() {
    let mut w = World::new(&["a", "b"], &["acct1", "acct2", "acct3", "acct4"]);
    if let Some(b) = w.nodes.get_mut(1) {
        b.alive = false;
    }
    w.run(TTL + Duration::from_secs(5));
    assert_eq!(w.held_by(0), 4, "alone, a holds everything");
    if let Some(b) = w.nodes.get_mut(1) {
        b.alive = true;
    }
    w.run(Duration::from_secs(60));
    assert_eq!((w.held_by(0), w.held_by(1)), (2, 2));
}

#[test]
fn a_crashed_holder_is_replaced_within_the_ttl_and_its_binding_retired() {
    let mut w = started(&["a", "b"], &["acct1", "acct2"]);
    let (crashed, account) = w
        .nodes
        .iter()
        .enumerate()
        .find_map(|(i, n)| n.permits.keys().next().map(|a| (i, a.clone())))
        .expect("someone holds something");
    let old = w
        .nodes
        .get(crashed)
        .map(|n| n.name.clone())
        .unwrap_or_default();
    if let Some(n) = w.nodes.get_mut(crashed) {
        n.alive = false;
        n.permits.clear();
    }
    let took = w.until_held(&account, TTL * 2);
    let period = (TTL / 5).min(Duration::from_secs(5));
    assert!(took <= TTL + period + STEP, "took over after {took:?}");
    let survivor = w.nodes.iter().find(|n| n.alive).expect("a survivor");
    assert!(
        survivor.retired.contains(&format!("sip:{account}@{old}")),
        "the crashed holder's Contact is retired: {:?}",
        survivor.retired
    );
}

#[test]
fn a_holder_cut_off_from_redis_gives_up_before_the_other_takes_over() {
    let mut w = started(&["a", "b"], &["acct1", "acct2"]);
    let cut = 0;
    let held: Vec<String> = w
        .nodes
        .first()
        .map(|n| n.permits.keys().cloned().collect())
        .unwrap_or_default();
    if let Some(n) = w.nodes.get_mut(cut) {
        n.reaches_redis = false;
    }
    // The invariant is checked at every step of run().
    w.run(Duration::from_secs(60));
    for account in held {
        assert_eq!(w.holder(&account), Some("b"), "{account} moved to b");
    }
    assert_eq!(w.held_by(cut), 0);
}

#[test]
fn redis_down_never_lets_two_hold_and_everything_comes_back() {
    let mut w = started(&["a", "b"], &["acct1", "acct2", "acct3"]);
    w.redis_up = false;
    w.run(Duration::from_secs(40));
    assert_eq!(w.held_by(0) + w.held_by(1), 0, "no permit outlives Redis");
    w.redis_up = true;
    w.run(Duration::from_secs(40));
    assert_eq!(w.held_by(0) + w.held_by(1), 3);
}

#[test]
fn redis_losing_its_data_does_not_let_a_second_holder_in_early() {
    let mut w = started(&["a", "b"], &["acct1", "acct2"]);
    let registrations: u32 = w.nodes.iter().map(|n| n.registrations).sum();
    let tokens: Vec<u64> = w
        .nodes
        .iter()
        .flat_map(|n| n.permits.values().map(|p| p.token))
        .collect();
    w.redis = FakeRedis::default();
    w.run(Duration::from_secs(60));
    assert_eq!(w.held_by(0) + w.held_by(1), 2);
    assert_eq!(
        w.nodes.iter().map(|n| n.registrations).sum::<u32>(),
        registrations,
        "the holders took their leases straight back, staying registered"
    );
    let after: Vec<u64> = w
        .nodes
        .iter()
        .flat_map(|n| n.permits.values().map(|p| p.token))
        .collect();
    assert!(
        after.iter().min() > tokens.iter().max(),
        "fence tokens keep rising across the data loss: {tokens:?} then {after:?}"
    );
}

#[test]
fn a_drained_replica_hands_its_accounts_over_within_a_period() {
    let mut w = started(&["a", "b"], &["acct1", "acct2"]);
    let account = w
        .nodes
        .first()
        .and_then(|n| n.permits.keys().next().cloned())
        .expect("a holds one");
    if let Some(a) = w.nodes.get_mut(0) {
        a.machine.release_all();
    }
    w.run(STEP * 2);
    assert!(w.nodes.first().is_some_and(|a| a.machine.released()));
    let took = w.until_held(&account, TTL);
    assert!(took <= Duration::from_secs(4), "handed over in {took:?}");
    assert_eq!(w.holder(&account), Some("b"));
    let b = w.nodes.get(1).expect("b");
    assert!(
        b.retired.is_empty(),
        "a clean hand-over leaves nothing to retire"
    );
}

#[test]
fn statuses_name_the_holder_of_standby_accounts() {
    let w = started(&["a", "b"], &["acct1", "acct2"]);
    let a = w.nodes.first().expect("a");
    let statuses = a.machine.statuses(w.now);
    assert_eq!(statuses.len(), 2);
    for s in statuses {
        match s.role {
            LeaseRole::Active => {
                assert_eq!(s.holder.as_deref(), Some("a"));
                assert!(s.token.is_some());
            }
            LeaseRole::Standby => assert_eq!(s.holder.as_deref(), Some("b")),
            LeaseRole::Releasing => panic!("nothing is being released"),
        }
    }
}

#[test]
fn lease_values_name_holder_and_token() {
    assert_eq!(machine::holder_of("pod-a 17"), "pod-a");
    assert_eq!(machine::token_of("pod-a 17"), Some(17));
    assert_eq!(machine::token_of("garbage"), None);
}
