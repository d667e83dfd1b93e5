use super::*;
use crate::cpa::test_signal::Signal;

const LOUD: f64 = 8000.0;

/// Everything the analysis of an answered call reports on `s`.
fn reports(s: &Signal) -> Vec<Report> {
    let mut a = Analyzer::answered(AnalysisConfig::default());
    let mut out = Vec::new();
    for frame in s.frames() {
        a.push_frame(&frame);
        out.extend(std::iter::from_fn(|| a.poll_report()));
    }
    out
}

fn verdict(reports: &[Report]) -> Option<(Outcome, u32, Option<u32>)> {
    reports.iter().find_map(|r| match *r {
        Report::Verdict {
            outcome,
            at_ms,
            greeting_end_ms,
            ..
        } => Some((outcome, at_ms, greeting_end_ms)),
        _ => None,
    })
}

fn machine_end(reports: &[Report]) -> Option<(MachineEnd, u32)> {
    reports.iter().find_map(|r| match *r {
        Report::MachineEnd { end, at_ms } => Some((end, at_ms)),
        _ => None,
    })
}

#[test]
fn a_short_hello_then_silence_is_a_person_within_a_second_of_its_end() {
    let s = Signal::new(100.0).silence(300).babble(600).silence(3000);
    let r = reports(&s);
    let (outcome, at, end) = verdict(&r).expect("a verdict");
    assert_eq!(outcome, Outcome::Human, "{r:?}");
    let end = end.expect("the greeting's end");
    assert!(at - end <= 1000, "decided {at} ms, greeting ended {end} ms");
    assert!(machine_end(&r).is_none());
    assert_eq!(r.len(), 1, "nothing after a person: {r:?}");
}

#[test]
fn a_long_greeting_is_a_machine_and_its_beep_ends_it() {
    for hz in [800.0, 1000.0, 1400.0] {
        let s = Signal::new(100.0)
            .babble(5000)
            .silence(400)
            .tones(&[(hz, LOUD)], 500)
            .silence(1000);
        let r = reports(&s);
        assert_eq!(verdict(&r).map(|v| v.0), Some(Outcome::Machine), "{r:?}");
        let (end, at) = machine_end(&r).expect("the greeting's end");
        let MachineEnd::Beep { hz: found, .. } = end else {
            panic!("{hz} Hz: {end:?}");
        };
        assert!((found - hz).abs() < 15.0, "{found} for {hz}");
        // Reported when the beep ends (5.9 s), not before.
        assert!((5800..=6100).contains(&at), "at {at} ms");
    }
}

#[test]
fn a_greeting_without_a_beep_ends_in_silence_or_at_the_time_limit() {
    let s = Signal::new(100.0).babble(4000).silence(3000);
    let r = reports(&s);
    assert_eq!(verdict(&r).map(|v| v.0), Some(Outcome::Machine));
    let (end, at) = machine_end(&r).expect("an end");
    assert_eq!(end, MachineEnd::Silence);
    assert!((6400..=6700).contains(&at), "at {at} ms");

    let s = Signal::new(100.0).babble(35_000);
    let r = reports(&s);
    assert_eq!(machine_end(&r), Some((MachineEnd::Other, 30_000)));
}

#[test]
fn a_beep_right_after_a_short_greeting_is_a_machine_at_once() {
    let s = Signal::new(100.0)
        .babble(500)
        .silence(200)
        .tones(&[(1000.0, LOUD)], 400)
        .silence(2000);
    let r = reports(&s);
    let (outcome, at, end) = verdict(&r).expect("a verdict");
    assert_eq!(outcome, Outcome::Machine, "{r:?}");
    assert!(at <= 1200, "at {at} ms");
    assert_eq!(end, Some(700));
    assert!(matches!(
        machine_end(&r),
        Some((MachineEnd::Beep { .. }, _))
    ));
}

#[test]
fn fax_and_sit_decide_at_once() {
    let fax = Signal::new(50.0)
        .tones(&[(2100.0, LOUD)], 2500)
        .silence(500);
    assert_eq!(verdict(&reports(&fax)).map(|v| v.0), Some(Outcome::Fax));
    let sit = Signal::new(50.0)
        .tones(&[(913.8, LOUD)], 274)
        .tones(&[(1370.6, LOUD)], 274)
        .tones(&[(1776.7, LOUD)], 380)
        .silence(1000);
    assert_eq!(verdict(&reports(&sit)).map(|v| v.0), Some(Outcome::Sit));
}

#[test]
fn early_media_reports_a_sit_and_never_a_verdict() {
    let mut a = Analyzer::early(AnalysisConfig::default());
    let s = Signal::new(50.0)
        .tones(&[(440.0, LOUD / 2.0), (480.0, LOUD / 2.0)], 2000)
        .silence(4000)
        .tones(&[(913.8, LOUD)], 274)
        .tones(&[(1370.6, LOUD)], 274)
        .tones(&[(1776.7, LOUD)], 380)
        .babble(8000);
    let mut out = Vec::new();
    for frame in s.frames() {
        a.push_frame(&frame);
        out.extend(std::iter::from_fn(|| a.poll_report()));
    }
    assert_eq!(
        out,
        vec![Report::EarlyTone {
            tone: "sit",
            at_ms: 6000
        }]
    );
    assert!(a.verdict().is_none());
}
