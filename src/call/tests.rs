//! Calls between two endpoints on the simulated network (fake clock, lossy
//! wire): A places calls, B takes them with a policy.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::*;
use crate::sip::endpoint::Event;
use crate::sip::endpoint::pair::{Pair, Side, Wire};
use crate::sip::ids::SeededEntropy;
use crate::sip::message::Method;

struct Net {
    pair: Pair,
    a: Calls,
    b: Calls,
    policy: InboundAction,
    /// A's policy for INVITEs B sends (B's outbound legs).
    policy_a: InboundAction,
    /// Inbound calls A took, by SIP Call-ID.
    a_calls: HashMap<String, CallId>,
    ended: HashMap<(Side, CallId), Ended>,
    /// Inbound calls B took, by SIP Call-ID.
    b_calls: HashMap<String, CallId>,
    /// A call whose every live state the gauges were checked against.
    checks: usize,
    /// SRTP policy of A's calls (placed and taken) and of B's.
    srtp_a: crate::sdp::SrtpPolicy,
    srtp_b: crate::sdp::SrtpPolicy,
}

/// Key material from a seeded generator (tests only: not a CSPRNG).
#[derive(Debug)]
struct TestKeys(SeededEntropy);

impl KeySource for TestKeys {
    fn fill(&mut self, out: &mut [u8]) -> bool {
        use crate::sip::ids::Entropy;
        for chunk in out.chunks_mut(8) {
            let word = self.0.next_u64().to_be_bytes();
            chunk.copy_from_slice(word.get(..chunk.len()).unwrap());
        }
        true
    }
}

fn table(seed: u64) -> Calls {
    let config = CallConfig {
        ring_timeout: Duration::from_secs(20),
        answer_timeout: Duration::from_secs(40),
        max_duration: Duration::from_secs(600),
        ..CallConfig::default()
    };
    Calls::new(
        config,
        PortPool::new(20000, 40000),
        10_000,
        Box::new(SeededEntropy::new(seed)),
    )
    .with_key_source(Box::new(TestKeys(SeededEntropy::new(!seed))))
}

impl Net {
    fn new(seed: u64, wire: Wire, policy: InboundAction) -> Self {
        Self {
            pair: Pair::new(seed, wire),
            a: table(seed ^ 1),
            b: table(seed ^ 2),
            policy,
            policy_a: InboundAction::Answer,
            a_calls: HashMap::new(),
            ended: HashMap::new(),
            b_calls: HashMap::new(),
            srtp_a: crate::sdp::SrtpPolicy::Off,
            srtp_b: crate::sdp::SrtpPolicy::Off,
            checks: 0,
        }
    }

    /// B places a call to A.
    fn originate_from_b(&mut self) -> CallId {
        let next_hop = self.pair.target(Side::A);
        let origin = Originate {
            to: "sip:dialer@192.0.2.1".into(),
            from_uri: "sip:callee@192.0.2.2".into(),
            display: None,
            asserted_identity: None,
            headers: Vec::new(),
            next_hop,
            route: None,
            credentials: None,
            account: None,
            contact_user: "callee".into(),
            ring_timeout: None,
            max_duration: None,
            name: None,
            srtp: self.srtp_b,
            campaign: None,
        };
        let now = self.pair.now;
        let id = self.b.originate(now, &mut self.pair.b.ep, origin).unwrap();
        self.settle();
        id
    }

    fn originate(&mut self) -> CallId {
        let origin = self.origin();
        let now = self.pair.now;
        let id = self.a.originate(now, &mut self.pair.a.ep, origin).unwrap();
        self.settle();
        id
    }

    /// What A's calls to B ask for.
    fn origin(&self) -> Originate {
        let next_hop = self.pair.target(Side::B);
        Originate {
            to: "sip:callee@192.0.2.2".into(),
            from_uri: "sip:dialer@192.0.2.1".into(),
            display: Some("Dialer".into()),
            asserted_identity: None,
            headers: vec![("X-Campaign".into(), "7".into())],
            next_hop,
            route: None,
            credentials: None,
            account: None,
            contact_user: "dialer".into(),
            ring_timeout: None,
            max_duration: None,
            name: None,
            srtp: self.srtp_a,
            campaign: None,
        }
    }

    /// Hands every endpoint event to its call table, and records the ends.
    fn settle(&mut self) {
        loop {
            self.pair.flush();
            let now = self.pair.now;
            let mut busy = false;
            while let Some(e) = self.pair.a.events.pop_front() {
                busy = true;
                match self.a.handle_event(now, &mut self.pair.a.ep, e) {
                    None | Some(Event::Dropped { .. }) => {}
                    Some(Event::NewRequest {
                        txn,
                        request,
                        source,
                    }) => {
                        let call_id = request.call_id().unwrap_or_default().to_owned();
                        let policy = Inbound {
                            action: self.policy_a,
                            account: None,
                            contact_user: "dialer".into(),
                            srtp: self.srtp_a,
                        };
                        if let Some(id) =
                            self.a
                                .incoming(now, &mut self.pair.a.ep, txn, request, source, policy)
                        {
                            self.a_calls.insert(call_id, id);
                        }
                    }
                    Some(rest) => panic!("A: an event no call took: {rest:?}"),
                }
            }
            while let Some(e) = self.pair.b.events.pop_front() {
                busy = true;
                let rest = self.b.handle_event(now, &mut self.pair.b.ep, e);
                if let Some(Event::NewRequest {
                    txn,
                    request,
                    source,
                }) = rest
                {
                    assert_eq!(request.method(), Some(Method::Invite));
                    let call_id = request.call_id().unwrap_or_default().to_owned();
                    let policy = Inbound {
                        action: self.policy,
                        account: None,
                        contact_user: "callee".into(),
                        srtp: self.srtp_b,
                    };
                    if let Some(id) =
                        self.b
                            .incoming(now, &mut self.pair.b.ep, txn, request, source, policy)
                    {
                        self.b_calls.insert(call_id, id);
                    }
                }
            }
            for (side, calls) in [(Side::A, &mut self.a), (Side::B, &mut self.b)] {
                for e in calls.take_events() {
                    if let Some(ended) = e.ended {
                        assert_eq!(e.state, CallState::Ended);
                        assert!(
                            self.ended.insert((side, e.call), ended).is_none(),
                            "{side:?} {} ended twice",
                            e.call
                        );
                    }
                }
            }
            self.check_gauges();
            if !busy {
                return;
            }
        }
    }

    /// The gauges are the table: every live call counted once, in its
    /// state, and every live call has a deadline.
    fn check_gauges(&mut self) {
        for calls in [&self.a, &self.b] {
            let live = calls.live();
            assert_eq!(live.total, calls.len());
            assert_eq!(
                live.by_state.iter().map(|(_, n)| n).sum::<usize>(),
                calls.len()
            );
            assert!(
                calls.deadlines_cover_every_call(),
                "a live call without a deadline"
            );
        }
        self.checks += 1;
    }

    /// The next delivery or deadline.
    fn next_at(&self) -> Option<Instant> {
        [
            self.a.poll_timeout(),
            self.b.poll_timeout(),
            self.pair.next_at(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Advances to the next delivery or deadline (the endpoints' or the
    /// tables'); false when nothing is pending.
    fn step(&mut self) -> bool {
        self.settle();
        let tables = [self.a.poll_timeout(), self.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let wire = self.pair.next_at();
        match (tables, wire) {
            (None, None) => return false,
            (Some(t), w) if w.is_none_or(|w| t < w) => {
                self.pair.now = self.pair.now.max(t);
                let now = self.pair.now;
                self.a.handle_timeout(now, &mut self.pair.a.ep);
                self.b.handle_timeout(now, &mut self.pair.b.ep);
            }
            _ => {
                self.pair.step();
            }
        }
        self.settle();
        true
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.pair.now + d;
        while self.next_at().is_some_and(|at| at <= until) {
            self.step();
        }
        self.pair.now = self.pair.now.max(until);
    }

    fn run_until_quiet(&mut self, limit: Duration) {
        let until = self.pair.now + limit;
        while self.step() {
            assert!(self.pair.now <= until, "still busy after {limit:?}");
        }
    }

    fn b_call(&self) -> CallId {
        *self.b_calls.values().next().expect("B took a call")
    }
}

#[test]
fn an_answered_call_hung_up_by_the_caller_ends_normally_on_both_sides() {
    let mut net = Net::new(1, Wire::perfect(), InboundAction::Answer);
    let call = net.originate();
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.a.state(call), Some(CallState::Answered));
    let b = net.b_call();
    assert_eq!(net.b.state(b), Some(CallState::Answered));
    let now = net.pair.now;
    net.a.hangup(now, &mut net.pair.a.ep, call).unwrap();
    net.run_until_quiet(Duration::from_secs(60));
    assert_eq!(
        net.ended[&(Side::A, call)],
        Ended::local(EndCause::Normal, None)
    );
    assert_eq!(
        net.ended[&(Side::B, b)],
        Ended::remote(EndCause::Normal, None)
    );
    assert!(net.a.is_empty() && net.b.is_empty());
    assert_eq!(net.a.live().media_ports, 0);
    // The INVITE carried the offer, the X- header and the display name.
    assert_eq!(
        net.pair
            .count(Side::B, |m| m.method() == Some(Method::Invite)
                && m.value(crate::sip::message::HeaderName::ContentType)
                    == Some("application/sdp")
                && m.values_named("X-Campaign").count() == 1),
        1
    );
}

#[test]
fn the_callee_hangs_up_and_the_caller_hears_the_bye() {
    let mut net = Net::new(2, Wire::perfect(), InboundAction::Answer);
    let call = net.originate();
    net.run_for(Duration::from_secs(1));
    let b = net.b_call();
    let now = net.pair.now;
    net.b.hangup(now, &mut net.pair.b.ep, b).unwrap();
    net.run_until_quiet(Duration::from_secs(60));
    assert_eq!(
        net.ended[&(Side::A, call)],
        Ended::remote(EndCause::Normal, None)
    );
    assert_eq!(
        net.ended[&(Side::B, b)],
        Ended::local(EndCause::Normal, None)
    );
}

#[test]
fn busy_is_mapped_with_its_code() {
    let mut net = Net::new(3, Wire::perfect(), InboundAction::Reject(486));
    let call = net.originate();
    net.run_until_quiet(Duration::from_secs(60));
    assert_eq!(
        net.ended[&(Side::A, call)],
        Ended::remote(EndCause::Busy, Some(486))
    );
    assert!(net.a.is_empty() && net.b.is_empty());
}

#[test]
fn no_answer_is_cancelled_at_the_ring_timeout() {
    let mut net = Net::new(4, Wire::perfect(), InboundAction::Ring);
    let call = net.originate();
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.a.state(call), Some(CallState::Ringing));
    net.run_until_quiet(Duration::from_secs(120));
    let a = net.ended[&(Side::A, call)];
    assert_eq!(
        (a.cause, a.side, a.code),
        (EndCause::NoAnswer, super::Side::Local, Some(487))
    );
    let b = net.ended[&(Side::B, net.b_calls.values().copied().next().unwrap())];
    assert_eq!(b, Ended::remote(EndCause::Cancelled, Some(487)));
    // The CANCEL left when the ring timeout (20 s) passed.
    assert_eq!(
        net.pair
            .count(Side::B, |m| m.method() == Some(Method::Cancel)),
        1
    );
}

#[test]
fn a_ringing_call_answered_on_request() {
    let mut net = Net::new(5, Wire::perfect(), InboundAction::Ring);
    let call = net.originate();
    net.run_for(Duration::from_secs(2));
    let b = net.b_call();
    let now = net.pair.now;
    net.b.answer(now, &mut net.pair.b.ep, b).unwrap();
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.a.state(call), Some(CallState::Answered));
    assert!(
        net.b.answer(now, &mut net.pair.b.ep, b).is_err(),
        "answered twice"
    );
}

#[test]
fn a_caller_that_hangs_up_while_ringing_cancels() {
    let mut net = Net::new(6, Wire::perfect(), InboundAction::Ring);
    let call = net.originate();
    net.run_for(Duration::from_secs(1));
    let now = net.pair.now;
    net.a.hangup(now, &mut net.pair.a.ep, call).unwrap();
    net.run_until_quiet(Duration::from_secs(120));
    assert_eq!(
        net.ended[&(Side::A, call)],
        Ended::local(EndCause::Cancelled, Some(487))
    );
}

#[test]
fn the_maximum_duration_ends_an_answered_call() {
    let mut net = Net::new(7, Wire::perfect(), InboundAction::Answer);
    net.a.config.max_duration = Duration::from_secs(300);
    let call = net.originate();
    net.run_until_quiet(Duration::from_secs(2000));
    assert_eq!(net.ended[&(Side::A, call)].cause, EndCause::MaxDuration);
}

/// 1,000 calls with random outcomes over a wire that loses, duplicates and
/// reorders: every call ends within its bounds with a cause, the tables
/// end empty, and the gauges equal the tables at every step.
#[test]
fn a_thousand_calls_with_random_outcomes_all_end_on_a_lossy_wire() {
    let mut rng = SeededEntropy::new(42);
    let mut placed = Vec::new();
    let mut net = Net::new(9, Wire::lossy(0.1), InboundAction::Answer);
    with_session_timers(&mut net, 120);
    for i in 0..1000u64 {
        let r = crate::sip::ids::Entropy::next_u64(&mut rng);
        net.policy = match r % 6 {
            0 => InboundAction::Answer,
            1 => InboundAction::Reject(486),
            2 => InboundAction::Ring,   // no answer: ring timeout
            3 => InboundAction::Ring,   // cancelled by the caller below
            4 => InboundAction::Answer, // hung up by the callee below
            _ => InboundAction::Answer, // the callee vanishes below
        };
        let started = net.pair.now;
        let call = net.originate();
        placed.push(call);
        net.run_for(Duration::from_millis(1500));
        match r % 6 {
            0 => {
                let now = net.pair.now;
                let _ = net.a.hangup(now, &mut net.pair.a.ep, call);
            }
            3 => {
                let now = net.pair.now;
                let _ = net.a.hangup(now, &mut net.pair.a.ep, call);
            }
            4 => {
                if let Some(b) = net
                    .b_calls
                    .values()
                    .copied()
                    .find(|b| net.b.state(*b).is_some())
                {
                    let now = net.pair.now;
                    let _ = net.b.hangup(now, &mut net.pair.b.ep, b);
                }
            }
            5 => net.pair.wire.loss = 1.0,
            _ => {}
        }
        // The longest bound: the maximum duration (600 s) and ending (32 s).
        net.run_until_quiet(Duration::from_secs(700));
        net.pair.wire.loss = 0.1;
        assert!(
            net.ended.contains_key(&(Side::A, call)),
            "call {i} never ended"
        );
        assert!(net.pair.now - started < Duration::from_secs(700));
        net.b_calls.clear();
    }
    assert!(net.a.is_empty() && net.b.is_empty());
    assert_eq!(net.a.live().media_ports + net.b.live().media_ports, 0);
    let causes: std::collections::BTreeSet<EndCause> = placed
        .iter()
        .map(|c| net.ended[&(Side::A, *c)].cause)
        .collect();
    for cause in [
        EndCause::Normal,
        EndCause::Busy,
        EndCause::NoAnswer,
        EndCause::Cancelled,
        EndCause::SessionTimer,
    ] {
        assert!(causes.contains(&cause), "no call ended {cause}: {causes:?}");
    }
    assert!(net.checks > 1000);
}

#[test]
fn owner_ids_round_trip() {
    let id = CallId(77);
    assert_eq!(Calls::call_of(Calls::owner(id)), Some(id));
    assert_eq!(Calls::call_of(crate::sip::endpoint::OwnerId(1 << 48)), None);
    let _ = Instant::now();
}

fn with_session_timers(net: &mut Net, secs: u64) {
    for calls in [&mut net.a, &mut net.b] {
        calls.config.session_expires = Some(Duration::from_secs(secs));
        calls.config.min_se = Duration::from_secs(90);
    }
}

fn invites_to(net: &Net, side: Side) -> usize {
    net.pair.count(side, |m| m.method() == Some(Method::Invite))
}

#[test]
fn the_caller_refreshes_the_session_and_the_call_lasts() {
    let mut net = Net::new(11, Wire::perfect(), InboundAction::Answer);
    with_session_timers(&mut net, 120);
    net.a.config.max_duration = Duration::from_secs(500);
    let call = net.originate();
    net.run_for(Duration::from_secs(1));
    // The 200 names the caller (which supports timers) as the refresher.
    assert_eq!(
        net.pair.count(Side::A, |m| m.status() == Some(200)
            && m.value(crate::sip::message::HeaderName::SessionExpires)
                == Some("120;refresher=uac")),
        1
    );
    net.run_until_quiet(Duration::from_secs(700));
    assert_eq!(net.ended[&(Side::A, call)].cause, EndCause::MaxDuration);
    // A refresh every 60 s for 500 s: 8 re-INVITEs after the first INVITE.
    assert_eq!(invites_to(&net, Side::B), 1 + 8);
}

#[test]
fn a_callee_that_vanishes_is_found_by_the_session_timer() {
    let mut net = Net::new(12, Wire::perfect(), InboundAction::Answer);
    with_session_timers(&mut net, 120);
    let call = net.originate();
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.a.state(call), Some(CallState::Answered));
    let vanished = net.pair.now;
    net.pair.wire.loss = 1.0;
    net.run_until_quiet(Duration::from_secs(900));
    let ended = net.ended[&(Side::A, call)];
    assert_eq!(ended.cause, EndCause::SessionTimer, "{ended:?}");
    // The refresh at 60 s timed out (Timer B, 32 s), then the BYE did.
    assert!(net.pair.now - vanished < Duration::from_secs(60 + 32 + 32 + 5));
}

#[test]
fn a_caller_that_vanishes_is_found_by_the_callee_expecting_refreshes() {
    let mut net = Net::new(13, Wire::perfect(), InboundAction::Answer);
    with_session_timers(&mut net, 120);
    let _call = net.originate();
    net.run_for(Duration::from_secs(1));
    let b = net.b_call();
    net.pair.wire.loss = 1.0;
    net.run_until_quiet(Duration::from_secs(900));
    // B expected a refresh by 120 - 32 s after the answer.
    assert_eq!(net.ended[&(Side::B, b)].cause, EndCause::SessionTimer);
}

#[test]
fn hold_and_unhold_by_re_invite() {
    let mut net = Net::new(14, Wire::lossy(0.1), InboundAction::Answer);
    let call = net.originate();
    net.run_for(Duration::from_secs(5));
    let now = net.pair.now;
    net.a.hold(now, &mut net.pair.a.ep, call, true).unwrap();
    net.run_for(Duration::from_secs(10));
    assert!(net.a.calls[&call].held);
    let b = net.b_call();
    let seen = net.b.calls[&b].negotiated.clone().unwrap();
    assert_eq!(seen.local_direction, crate::sdp::Direction::RecvOnly);
    let now = net.pair.now;
    net.a.hold(now, &mut net.pair.a.ep, call, false).unwrap();
    net.run_for(Duration::from_secs(10));
    assert!(!net.a.calls[&call].held);
    let seen = net.b.calls[&b].negotiated.clone().unwrap();
    assert_eq!(seen.local_direction, crate::sdp::Direction::SendRecv);
}

#[test]
fn re_invites_that_cross_get_491_and_both_go_through_after_a_wait() {
    let mut net = Net::new(15, Wire::perfect(), InboundAction::Answer);
    let call = net.originate();
    net.run_for(Duration::from_secs(1));
    let b = net.b_call();
    let now = net.pair.now;
    net.a.hold(now, &mut net.pair.a.ep, call, true).unwrap();
    net.b.hold(now, &mut net.pair.b.ep, b, true).unwrap();
    net.run_for(Duration::from_secs(10));
    assert!(net.pair.count(Side::A, |m| m.status() == Some(491)) >= 1);
    assert!(net.a.calls[&call].held && net.b.calls[&b].held);
    assert_eq!(net.a.state(call), Some(CallState::Answered));
}

#[test]
fn an_interval_below_min_se_gets_422_and_the_caller_asks_again() {
    let mut net = Net::new(16, Wire::perfect(), InboundAction::Answer);
    with_session_timers(&mut net, 120);
    net.a.config.session_expires = Some(Duration::from_secs(100));
    net.b.config.min_se = Duration::from_secs(110);
    let call = net.originate();
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.pair.count(Side::A, |m| m.status() == Some(422)), 1);
    assert_eq!(net.a.state(call), Some(CallState::Answered));
}

#[test]
fn new_calls_beyond_the_rate_are_refused_and_the_bucket_refills() {
    let mut net = Net::new(17, Wire::perfect(), InboundAction::Reject(486));
    net.a.limit_rate(2.0);
    let next_hop = net.pair.target(Side::B);
    let origin = || Originate {
        to: "sip:callee@192.0.2.2".into(),
        from_uri: "sip:dialer@192.0.2.1".into(),
        display: None,
        asserted_identity: None,
        headers: Vec::new(),
        next_hop,
        route: None,
        credentials: None,
        account: None,
        contact_user: "dialer".into(),
        ring_timeout: None,
        max_duration: None,
        name: None,
        srtp: crate::sdp::SrtpPolicy::Off,
        campaign: None,
    };
    let now = net.pair.now;
    assert!(net.a.originate(now, &mut net.pair.a.ep, origin()).is_ok());
    assert!(net.a.originate(now, &mut net.pair.a.ep, origin()).is_ok());
    assert_eq!(
        net.a.originate(now, &mut net.pair.a.ep, origin()),
        Err(CallError::RateLimited(2.0))
    );
    let later = now + Duration::from_millis(500);
    assert!(net.a.originate(later, &mut net.pair.a.ep, origin()).is_ok());
}

#[test]
fn a_campaign_at_its_limit_and_a_ring_below_the_floor_are_refused() {
    let mut net = Net::new(27, Wire::perfect(), InboundAction::Ring);
    net.a.config.min_ring = Duration::from_secs(15);
    let campaign = |tag: &str| super::Campaign {
        tag: tag.into(),
        max_calls: 2,
    };
    let origin = |c: Option<super::Campaign>, ring: Option<Duration>| Originate {
        campaign: c,
        ring_timeout: ring,
        ..net.origin()
    };
    let (first, second, third, other, short, floor) = (
        origin(Some(campaign("spring")), None),
        origin(Some(campaign("spring")), Some(Duration::from_secs(20))),
        origin(Some(campaign("spring")), None),
        origin(Some(campaign("autumn")), None),
        origin(None, Some(Duration::from_secs(10))),
        origin(None, Some(Duration::from_secs(15))),
    );
    let now = net.pair.now;
    let ep = &mut net.pair.a.ep;
    let a = net.a.originate(now, ep, first).unwrap();
    assert!(net.a.originate(now, ep, second).is_ok());
    assert_eq!(
        net.a.originate(now, ep, third.clone()),
        Err(CallError::CampaignFull {
            campaign: "spring".into(),
            max: 2
        })
    );
    assert!(net.a.originate(now, ep, other).is_ok(), "another campaign");
    assert_eq!(
        net.a.originate(now, ep, short),
        Err(CallError::RingBelowFloor {
            asked_secs: 10,
            floor_secs: 15
        })
    );
    assert!(net.a.originate(now, ep, floor).is_ok());
    // A call of the campaign ends: room for one more (counted from the
    // table, not by hand).
    net.a.hangup(now, ep, a).unwrap();
    net.run_for(Duration::from_secs(40));
    let now = net.pair.now;
    assert!(net.a.originate(now, &mut net.pair.a.ep, third).is_ok());
}

#[test]
fn the_same_invite_by_another_path_gets_482() {
    let mut net = Net::new(18, Wire::perfect(), InboundAction::Ring);
    let _call = net.originate();
    net.run_for(Duration::from_millis(100));
    // The INVITE B received, sent again with a new branch: what a forking
    // proxy upstream would deliver by a second path.
    let invite = net
        .pair
        .delivered
        .iter()
        .find(|d| d.to == Side::B && d.message.method() == Some(Method::Invite))
        .map(|d| d.message.raw().clone())
        .unwrap();
    let text = String::from_utf8(invite.to_vec()).unwrap();
    let branch_at = text.find("branch=").unwrap() + "branch=".len();
    let mut again = text.clone();
    again.insert_str(branch_at + "z9hG4bK".len(), "loop");
    net.pair.send_raw(Side::A, bytes::Bytes::from(again));
    net.run_for(Duration::from_secs(1));
    // (Retransmitted: nobody acknowledges it on this path.)
    assert!(net.pair.count(Side::A, |m| m.status() == Some(482)) >= 1);
    assert_eq!(net.b.len(), 1, "still one call");
}

#[test]
fn two_bridged_outbound_legs_end_together() {
    let mut net = Net::new(19, Wire::perfect(), InboundAction::Answer);
    let first = net.originate();
    let second = net.originate();
    net.run_for(Duration::from_secs(1));
    let now = net.pair.now;
    net.a
        .bridge(now, &mut net.pair.a.ep, first, second)
        .unwrap();
    net.settle();
    assert_eq!(net.a.state(first), Some(CallState::Bridged));
    assert_eq!(net.a.state(second), Some(CallState::Bridged));
    assert_eq!(
        net.a
            .live()
            .by_state
            .iter()
            .find(|(s, _)| *s == "bridged")
            .unwrap()
            .1,
        2
    );
    // The callee hangs up the first leg: the second is ended by dialerd.
    let b_first = net.b_calls.values().copied().min().unwrap();
    let now = net.pair.now;
    net.b.hangup(now, &mut net.pair.b.ep, b_first).unwrap();
    net.run_until_quiet(Duration::from_secs(60));
    assert_eq!(
        net.ended[&(Side::A, first)],
        Ended::remote(EndCause::Normal, None)
    );
    assert_eq!(
        net.ended[&(Side::A, second)],
        Ended::local(EndCause::BridgePeer, None)
    );
    assert!(net.a.is_empty() && net.b.is_empty());
}

#[test]
fn a_ringing_inbound_leg_is_answered_when_its_bridged_outbound_leg_answers() {
    // A calls B; B lets it ring, places its own call to A, bridges the two.
    let mut net = Net::new(20, Wire::lossy(0.05), InboundAction::Ring);
    net.policy_a = InboundAction::Ring;
    let caller = net.originate();
    net.run_for(Duration::from_secs(2));
    let inbound = net.b_call();
    let outbound = net.originate_from_b();
    let now = net.pair.now;
    net.b
        .bridge(now, &mut net.pair.b.ep, inbound, outbound)
        .unwrap();
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.b.state(inbound), Some(CallState::Ringing));
    // A answers B's outbound leg: B answers the inbound leg.
    let a_leg = *net.a_calls.values().next().unwrap();
    let now = net.pair.now;
    net.a.answer(now, &mut net.pair.a.ep, a_leg).unwrap();
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.a.state(caller), Some(CallState::Answered));
    assert_eq!(net.b.state(inbound), Some(CallState::Bridged));
    assert_eq!(net.b.state(outbound), Some(CallState::Bridged));
    // The original caller hangs up: the outbound leg follows.
    let now = net.pair.now;
    net.a.hangup(now, &mut net.pair.a.ep, caller).unwrap();
    net.run_until_quiet(Duration::from_secs(120));
    assert_eq!(
        net.ended[&(Side::B, inbound)],
        Ended::remote(EndCause::Normal, None)
    );
    assert_eq!(
        net.ended[&(Side::B, outbound)],
        Ended::local(EndCause::BridgePeer, None)
    );
    assert_eq!(
        net.ended[&(Side::A, a_leg)],
        Ended::remote(EndCause::Normal, None)
    );
}

#[test]
fn a_busy_outbound_leg_gives_its_inbound_peer_the_busy_status() {
    let mut net = Net::new(21, Wire::perfect(), InboundAction::Ring);
    net.policy_a = InboundAction::Reject(486);
    let caller = net.originate();
    net.run_for(Duration::from_secs(1));
    let inbound = net.b_call();
    let outbound = net.originate_from_b();
    let now = net.pair.now;
    // Bridged while the outbound leg is still dialing (the wire takes
    // 10 ms); A refuses it with 486.
    net.b
        .bridge(now, &mut net.pair.b.ep, inbound, outbound)
        .unwrap();
    net.run_until_quiet(Duration::from_secs(60));
    assert_eq!(
        net.ended[&(Side::B, outbound)],
        Ended::remote(EndCause::Busy, Some(486))
    );
    assert_eq!(
        net.ended[&(Side::B, inbound)],
        Ended::local(EndCause::BridgePeer, Some(486))
    );
    assert_eq!(
        net.ended[&(Side::A, caller)],
        Ended::remote(EndCause::Busy, Some(486))
    );
}

#[test]
fn dtmf_digits_go_as_info_one_at_a_time_and_arrive_in_order_on_a_lossy_wire() {
    let mut net = Net::new(31, Wire::lossy(0.1), InboundAction::Answer);
    let call = net.originate();
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.a.state(call), Some(CallState::Answered));
    let now = net.pair.now;
    net.a
        .send_dtmf(now, &mut net.pair.a.ep, call, "1#9")
        .unwrap();
    net.run_for(Duration::from_secs(30));
    let digits: Vec<char> = net
        .b
        .take_notes()
        .filter_map(|n| match n.kind {
            super::NoteKind::Dtmf { digit, .. } => Some(digit),
            super::NoteKind::Media { .. } => None,
        })
        .collect();
    assert_eq!(digits, ['1', '#', '9']);
    assert!(net.a.calls[&call].dtmf.is_empty() && net.a.calls[&call].info.is_none());
    // Before the answer there is no dialog to send in.
    let ringing = net.originate();
    let now = net.pair.now;
    assert!(matches!(
        net.a.send_dtmf(now, &mut net.pair.a.ep, ringing, "1"),
        Err(CallError::WrongState { .. })
    ));
}

#[test]
fn calls_are_found_by_name_and_a_live_name_is_not_given_twice() {
    let mut net = Net::new(32, Wire::perfect(), InboundAction::Answer);
    let call = net.originate();
    let name = net.a.name_of(call).unwrap();
    assert_eq!(net.a.find(&name), Some(call));
    let mut origin = net.origin();
    origin.name = Some(name.to_string());
    let now = net.pair.now;
    assert_eq!(
        net.a.originate(now, &mut net.pair.a.ep, origin),
        Err(CallError::NameInUse(name.to_string()))
    );
    net.run_for(Duration::from_secs(1));
    let now = net.pair.now;
    net.a.hangup(now, &mut net.pair.a.ep, call).unwrap();
    net.run_for(Duration::from_secs(5));
    assert_eq!(
        net.a.find(&name),
        None,
        "the name is free once the call ended"
    );
}

#[test]
fn an_account_limit_refuses_beyond_its_live_calls_and_its_rate() {
    let mut net = Net::new(33, Wire::perfect(), InboundAction::Ring);
    net.a.limit_account("acct", AccountLimit::new(1, 0.0));
    let mut origin = net.origin();
    origin.account = Some("acct".into());
    let now = net.pair.now;
    net.a
        .originate(now, &mut net.pair.a.ep, origin.clone())
        .unwrap();
    assert!(matches!(
        net.a.originate(now, &mut net.pair.a.ep, origin.clone()),
        Err(CallError::AccountFull { max: 1, .. })
    ));
    // Another account is not limited by it.
    let mut other = origin.clone();
    other.account = Some("other".into());
    assert!(net.a.originate(now, &mut net.pair.a.ep, other).is_ok());
    net.a.limit_account("slow", AccountLimit::new(0, 1.0));
    let mut slow = origin;
    slow.account = Some("slow".into());
    assert!(
        net.a
            .originate(now, &mut net.pair.a.ep, slow.clone())
            .is_ok()
    );
    assert!(matches!(
        net.a.originate(now, &mut net.pair.a.ep, slow),
        Err(CallError::AccountRateLimited { .. })
    ));
}

/// The keys of the last `Negotiated` the table asked of the media layer.
fn media_keys(calls: &mut Calls, id: CallId) -> Option<crate::sdp::SdesKeys> {
    calls
        .take_media_ops()
        .filter_map(|op| match op {
            MediaOp::Negotiated { call, media, .. } if call == id => Some(media.srtp),
            _ => None,
        })
        .next_back()
        .flatten()
}

#[test]
fn srtp_calls_carry_mirrored_keys_to_the_media_layer_and_keep_them_on_hold() {
    use crate::sdp::{CryptoSuite, SrtpPolicy};
    let mut net = Net::new(31, Wire::lossy(0.1), InboundAction::Answer);
    net.srtp_a = SrtpPolicy::Required;
    net.srtp_b = SrtpPolicy::Optional;
    let call = net.originate();
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.a.state(call), Some(CallState::Answered));
    let b = net.b_call();
    let a_keys = media_keys(&mut net.a, call).expect("A's media is keyed");
    let b_keys = media_keys(&mut net.b, b).expect("B's media is keyed");
    assert_eq!(a_keys.suite, CryptoSuite::AesCm128HmacSha1_80);
    assert_eq!(a_keys.local, b_keys.remote);
    assert_eq!(a_keys.remote, b_keys.local);
    assert_ne!(a_keys.local, a_keys.remote, "each side has its own key");

    // A hold re-INVITE renegotiates with the same keys on both sides.
    let now = net.pair.now;
    net.a.hold(now, &mut net.pair.a.ep, call, true).unwrap();
    net.run_for(Duration::from_secs(10));
    assert!(net.a.calls[&call].held);
    assert_eq!(media_keys(&mut net.b, b), Some(b_keys));
    assert_eq!(media_keys(&mut net.a, call), Some(a_keys));
}

#[test]
fn a_required_srtp_leg_refuses_plain_rtp_with_488_and_its_own_cause() {
    use crate::sdp::SrtpPolicy;
    let mut net = Net::new(32, Wire::perfect(), InboundAction::Answer);
    net.srtp_b = SrtpPolicy::Required;
    let call = net.originate();
    net.run_until_quiet(Duration::from_secs(60));
    let b = net.b_call();
    assert_eq!(
        net.ended[&(Side::B, b)],
        Ended::local(EndCause::SrtpRequired, Some(488))
    );
    assert_eq!(
        net.ended[&(Side::A, call)],
        Ended::remote(EndCause::Incompatible, Some(488))
    );
}

#[test]
fn an_srtp_offer_to_a_plain_only_peer_is_refused_not_downgraded() {
    use crate::sdp::SrtpPolicy;
    let mut net = Net::new(33, Wire::perfect(), InboundAction::Answer);
    net.srtp_a = SrtpPolicy::Required;
    let call = net.originate();
    net.run_until_quiet(Duration::from_secs(60));
    let b = net.b_call();
    assert_eq!(
        net.ended[&(Side::B, b)],
        Ended::local(EndCause::Incompatible, Some(488))
    );
    assert_eq!(net.ended[&(Side::A, call)].cause, EndCause::Incompatible);
}

#[test]
fn optional_srtp_falls_back_to_plain_rtp_with_a_peer_that_has_none() {
    use crate::sdp::SrtpPolicy;
    let mut net = Net::new(34, Wire::perfect(), InboundAction::Answer);
    net.srtp_a = SrtpPolicy::Optional;
    let call = net.originate();
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.a.state(call), Some(CallState::Answered));
    assert_eq!(media_keys(&mut net.a, call), None);
    assert!(net.a.negotiated(call).is_some_and(|n| n.srtp.is_none()));
}

#[test]
fn srtp_without_a_key_source_is_refused_before_anything_is_sent() {
    use crate::sdp::SrtpPolicy;
    let mut net = Net::new(35, Wire::perfect(), InboundAction::Answer);
    net.a = Calls::new(
        CallConfig::default(),
        PortPool::new(20000, 40000),
        10,
        Box::new(SeededEntropy::new(5)),
    );
    net.srtp_a = SrtpPolicy::Required;
    let origin = net.origin();
    let now = net.pair.now;
    assert_eq!(
        net.a.originate(now, &mut net.pair.a.ep, origin),
        Err(CallError::NoKeySource)
    );
    assert_eq!(net.a.len(), 0);
}
