use super::*;
use crate::agent::stream::{Protocol, StreamConfig};
use crate::agent::twilio::StreamIds;
use crate::call::Side;
use crate::media::player::Tone;

const CALL: CallId = CallId(7);

fn agent() -> Box<AgentSpec> {
    Box::new(AgentSpec {
        address: "127.0.0.1:9".parse().unwrap(),
        tls: None,
        stream: StreamConfig {
            host: "agent.test".into(),
            path: "/".into(),
            headers: vec![],
            protocol: Protocol::Twilio,
            ids: StreamIds {
                account_sid: StreamIds::sid("AC", &[1; 16]),
                call_sid: StreamIds::sid("CA", &[2; 16]),
                stream_sid: StreamIds::sid("MZ", &[3; 16]),
            },
            custom_parameters: vec![],
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(20),
            max_message: 1 << 20,
            max_queue: 1000,
            max_backlog: 1000,
            nonce: [9; 16],
        },
        hang_up_on_end: true,
        on_end_prompt: None,
    })
}

fn recording() -> Box<Source> {
    Box::new(Source::tone(Tone::new(
        &[440.0],
        -10.0,
        2000,
        0,
        Some(2000),
    )))
}

fn plan(mode: Mode, on_machine: OnMachine, guard: bool) -> Plan {
    Plan {
        amd: Some(AmdPlan {
            mode,
            on_machine,
            config: AnalysisConfig::default(),
            capture_ms: 0,
        }),
        guard: guard.then(|| GuardPlan {
            within: Duration::from_millis(2000),
            safe_harbor: Some(recording()),
        }),
        held_agent: (mode == Mode::Sync).then(agent),
    }
}

fn verdict(outcome: Outcome, at_ms: u32, greeting_end_ms: Option<u32>) -> Report {
    Report::Verdict {
        outcome,
        cause: "test",
        at_ms,
        words: 1,
        voice_ms: 500,
        greeting_end_ms,
    }
}

fn kinds(actions: &[Action]) -> Vec<&'static str> {
    actions
        .iter()
        .map(|a| match a {
            Action::Analyse { .. } => "analyse",
            Action::Attach { .. } => "attach",
            Action::StopAgent { .. } => "stop_agent",
            Action::Play { .. } => "play",
            Action::End { .. } => "end",
            Action::Event(ProgressEvent::Verdict { .. }) => "verdict",
            Action::Event(ProgressEvent::MachineEnd { .. }) => "machine_end",
            Action::Event(ProgressEvent::EarlyTone { .. }) => "early_tone",
            Action::Event(ProgressEvent::Dropped { .. }) => "dropped",
        })
        .collect()
}

fn end_cause(actions: &[Action]) -> Option<EndCause> {
    actions.iter().find_map(|a| match a {
        Action::End { cause, .. } => Some(*cause),
        _ => None,
    })
}

fn ended() -> Ended {
    Ended::local(EndCause::Normal, None)
}

#[test]
fn sync_mode_connects_the_agent_only_after_human_and_the_guard_stands_down() {
    let t0 = Instant::now();
    let mut p = Progress::default();
    p.track(CALL, "c".into(), plan(Mode::Sync, OnMachine::Hangup, true));
    assert!(p.early_media(CALL).len() == 1, "early media is analysed");
    let a = p.answered(t0, CALL);
    assert_eq!(kinds(&a), ["analyse"]);
    // Nothing before the verdict but the analysis deadline.
    assert!(
        p.poll_timeout()
            .is_some_and(|at| at > t0 + Duration::from_secs(5))
    );
    let now = t0 + Duration::from_millis(1400);
    let a = p.report(now, CALL, verdict(Outcome::Human, 1400, Some(600)));
    assert_eq!(kinds(&a), ["verdict", "attach"]);
    // The guard counts from the greeting's end: 0.6 s + 2 s, less the
    // margin for the recording to be heard.
    assert_eq!(p.poll_timeout(), Some(t0 + Duration::from_millis(2500)));
    p.agent_started(t0 + Duration::from_millis(2000), CALL);
    assert_eq!(p.poll_timeout(), None);
    assert!(p.handle_timeout(t0 + Duration::from_secs(10)).is_empty());
    assert_eq!(p.finish(CALL, &ended(), true), Some(Disposition::Human));
}

#[test]
fn an_agent_late_for_a_person_gets_the_safe_harbor_recording_then_dropped() {
    let t0 = Instant::now();
    let mut p = Progress::default();
    p.track(CALL, "c".into(), plan(Mode::Sync, OnMachine::Hangup, true));
    p.answered(t0, CALL);
    p.report(
        t0 + Duration::from_millis(1400),
        CALL,
        verdict(Outcome::Human, 1400, Some(600)),
    );
    assert!(
        p.handle_timeout(t0 + Duration::from_millis(2499))
            .is_empty()
    );
    let due = t0 + Duration::from_millis(2500);
    let a = p.handle_timeout(due);
    assert_eq!(kinds(&a), ["stop_agent", "dropped", "play"]);
    let Some(Action::Event(ProgressEvent::Dropped {
        greeting_end_at,
        recording_at,
        connected_at,
        ..
    })) = a.get(1)
    else {
        panic!("{a:?}");
    };
    assert_eq!(*greeting_end_at, t0 + Duration::from_millis(600));
    assert_eq!(*recording_at, Some(due));
    assert_eq!(*connected_at, None);
    // The agent connecting now changes nothing.
    p.agent_started(due + Duration::from_millis(400), CALL);
    let a = p.play_done(CALL);
    assert_eq!(end_cause(&a), Some(EndCause::Dropped));
    assert_eq!(p.finish(CALL, &ended(), true), Some(Disposition::Dropped));
}

#[test]
fn a_machine_is_hung_up_on_or_left_a_message_after_its_greeting() {
    let t0 = Instant::now();
    let mut p = Progress::default();
    p.track(CALL, "c".into(), plan(Mode::Async, OnMachine::Hangup, true));
    p.answered(t0, CALL);
    let a = p.report(
        t0 + Duration::from_secs(2),
        CALL,
        verdict(Outcome::Machine, 2000, None),
    );
    assert_eq!(end_cause(&a), Some(EndCause::Machine));
    assert_eq!(p.finish(CALL, &ended(), true), Some(Disposition::Machine));

    p.track(
        CALL,
        "c".into(),
        plan(Mode::Async, OnMachine::Prompt(recording()), false),
    );
    p.answered(t0, CALL);
    let a = p.report(
        t0 + Duration::from_secs(2),
        CALL,
        verdict(Outcome::Machine, 2000, None),
    );
    assert_eq!(kinds(&a), ["verdict"]);
    let beep = Report::MachineEnd {
        end: MachineEnd::Beep {
            hz: 1000.0,
            duration_ms: 400,
        },
        at_ms: 9000,
    };
    let a = p.report(t0 + Duration::from_secs(9), CALL, beep);
    assert_eq!(kinds(&a), ["machine_end", "play"]);
    assert_eq!(end_cause(&p.play_done(CALL)), Some(EndCause::Machine));

    // No end reported at all: the message is left at the wait's limit.
    p.track(
        CALL,
        "d".into(),
        plan(Mode::Async, OnMachine::Prompt(recording()), false),
    );
    p.answered(t0, CALL);
    p.report(
        t0 + Duration::from_secs(2),
        CALL,
        verdict(Outcome::Machine, 2000, None),
    );
    let limit = p.poll_timeout().expect("a deadline");
    assert!(limit >= t0 + Duration::from_secs(30));
    assert_eq!(kinds(&p.handle_timeout(limit)), ["play"]);
    // And a prompt that never reports its end ends at its own limit.
    let last = p.poll_timeout().expect("the prompt's deadline");
    assert_eq!(end_cause(&p.handle_timeout(last)), Some(EndCause::Machine));
}

#[test]
fn no_verdict_in_time_counts_as_unknown_and_connects_the_agent() {
    let t0 = Instant::now();
    let mut p = Progress::default();
    p.track(CALL, "c".into(), plan(Mode::Sync, OnMachine::Hangup, false));
    p.answered(t0, CALL);
    let at = p.poll_timeout().expect("the analysis deadline");
    assert_eq!(at, t0 + Duration::from_millis(5000) + ANALYSIS_GRACE);
    assert_eq!(kinds(&p.handle_timeout(at)), ["verdict", "attach"]);
    assert_eq!(p.finish(CALL, &ended(), true), Some(Disposition::Answered));
}

#[test]
fn fax_sit_and_unanswered_calls_get_their_dispositions() {
    let t0 = Instant::now();
    let mut p = Progress::default();
    p.track(
        CALL,
        "c".into(),
        plan(Mode::Async, OnMachine::Hangup, false),
    );
    p.answered(t0, CALL);
    let a = p.report(t0, CALL, verdict(Outcome::Fax, 1000, None));
    assert_eq!(end_cause(&a), Some(EndCause::Fax));
    assert_eq!(p.finish(CALL, &ended(), true), Some(Disposition::Fax));

    p.track(
        CALL,
        "c".into(),
        plan(Mode::Async, OnMachine::Hangup, false),
    );
    let a = p.report(
        t0,
        CALL,
        Report::EarlyTone {
            tone: "sit",
            at_ms: 100,
        },
    );
    assert_eq!(kinds(&a), ["early_tone"]);
    let failed = Ended::remote(EndCause::Unavailable, Some(500));
    assert_eq!(
        p.finish(CALL, &failed, false),
        Some(Disposition::InvalidNumber)
    );

    p.track(
        CALL,
        "c".into(),
        plan(Mode::Async, OnMachine::Hangup, false),
    );
    let busy = Ended {
        cause: EndCause::Busy,
        code: Some(486),
        side: Side::Remote,
    };
    assert_eq!(p.finish(CALL, &busy, false), Some(Disposition::Busy));
    assert!(p.is_empty());
}

#[test]
fn events_carry_unix_times() {
    let t0 = Instant::now();
    let e = ProgressEvent::Verdict {
        name: "c".into(),
        outcome: Outcome::Human,
        cause: "after_greeting_silence",
        answered_at: t0,
        decided_at: t0 + Duration::from_millis(1500),
        greeting_end_at: Some(t0 + Duration::from_millis(700)),
        words: 1,
        voice_ms: 400,
    };
    let (kind, name, fields) = e.wire(t0 + Duration::from_millis(1500), 1_000_000);
    assert_eq!((kind, &*name), ("call.amd", "c"));
    assert_eq!(fields["result"], "human");
    assert_eq!(fields["answered_ms"], 998_500);
    assert_eq!(fields["greeting_end_ms"], 999_200);
    assert_eq!(fields["decision_after_answer_ms"], 1500);
}
