use super::*;
use crate::cpa::test_signal::Signal;

/// What the tone stage reports on `s`.
fn events_of(s: &Signal) -> Vec<ToneEvent> {
    let mut d = ToneDetector::new(ToneConfig::default());
    for frame in s.frames() {
        d.push_frame(&frame);
    }
    d.finish();
    std::iter::from_fn(|| d.poll_event()).collect()
}

const LOUD: f64 = 8000.0;

#[test]
fn a_beep_after_a_greeting_is_found_with_its_frequency_and_length() {
    for hz in [440.0, 700.0, 850.0, 1000.0, 1400.0, 1777.0, 2000.0] {
        let s = Signal::new(200.0)
            .babble(3000)
            .silence(300)
            .tones(&[(hz, LOUD)], 400)
            .silence(500);
        let events = events_of(&s);
        let beeps: Vec<&ToneEvent> = events
            .iter()
            .filter(|e| matches!(e, ToneEvent::Beep { .. }))
            .collect();
        assert_eq!(beeps.len(), 1, "{hz} Hz: {events:?}");
        let ToneEvent::Beep {
            hz: found,
            start_ms,
            duration_ms,
        } = *beeps[0]
        else {
            unreachable!()
        };
        assert!((found - hz).abs() <= 15.0, "{hz} Hz found as {found}");
        assert!(
            (3280..=3340).contains(&start_ms),
            "{hz} Hz at {start_ms} ms"
        );
        assert!(
            (360..=420).contains(&duration_ms),
            "{hz} Hz lasted {duration_ms} ms"
        );
    }
}

#[test]
fn short_tones_and_a_greeting_alone_are_not_beeps() {
    let s = Signal::new(200.0)
        .babble(4000)
        .tones(&[(1000.0, LOUD)], 100)
        .silence(1000);
    assert_eq!(events_of(&s), vec![]);
}

#[test]
fn dial_tone_ringback_and_busy_never_make_a_beep() {
    let s = Signal::new(100.0)
        .tones(&[(350.0, 4000.0), (440.0, 4000.0)], 3000)
        .silence(200)
        .tones(&[(440.0, 4000.0), (480.0, 4000.0)], 2000)
        .silence(4000)
        .tones(&[(440.0, 4000.0), (480.0, 4000.0)], 2000)
        .silence(200)
        .tones(&[(480.0, 4000.0), (620.0, 4000.0)], 500)
        .silence(500)
        .tones(&[(480.0, 4000.0), (620.0, 4000.0)], 500);
    assert_eq!(events_of(&s), vec![]);
}

#[test]
fn a_special_information_tone_is_one_sit_not_three_beeps() {
    // "Vacant code": low 985.2 Hz 380 ms, low 1428.5 Hz 274 ms, 1776.7 Hz 380 ms.
    let s = Signal::new(200.0)
        .silence(200)
        .tones(&[(985.2, LOUD)], 380)
        .tones(&[(1428.5, LOUD)], 280)
        .tones(&[(1776.7, LOUD)], 380)
        .silence(600);
    let events = events_of(&s);
    assert_eq!(events.len(), 1, "{events:?}");
    let ToneEvent::Sit { hz, start_ms } = events[0] else {
        panic!("{events:?}")
    };
    assert!(
        (hz[0] - 985.2).abs() < 20.0 && (hz[1] - 1428.5).abs() < 20.0,
        "{hz:?}"
    );
    assert!((180..=240).contains(&start_ms), "{start_ms}");
}

#[test]
fn fax_answer_and_calling_tones_are_told_apart() {
    let ced = Signal::new(200.0)
        .silence(200)
        .tones(&[(2100.0, LOUD)], 2600);
    assert!(
        matches!(events_of(&ced)[..], [ToneEvent::FaxCed { .. }]),
        "{:?}",
        events_of(&ced)
    );
    let cng = Signal::new(200.0)
        .tones(&[(1100.0, LOUD)], 500)
        .silence(3000)
        .tones(&[(1100.0, LOUD)], 500)
        .silence(300);
    let events = events_of(&cng);
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.iter().all(|e| matches!(e, ToneEvent::FaxCng { .. })));
}

#[test]
fn a_beep_in_a_sit_band_is_reported_once_nothing_follows_it() {
    // A 1,000 Hz voicemail beep of 300 ms: it could open a SIT until the
    // silence after it says it does not.
    let s = Signal::new(200.0)
        .babble(2000)
        .silence(200)
        .tones(&[(1000.0, LOUD)], 300)
        .silence(1000);
    let events = events_of(&s);
    assert!(
        matches!(events[..], [ToneEvent::Beep { hz, .. }] if (hz - 1000.0).abs() < 15.0),
        "{events:?}"
    );
}

#[test]
fn a_beep_under_noise_and_lost_frames_is_still_found() {
    // Noise 20 dB under the tone, and every tenth frame lost (silence).
    let s = Signal::new(800.0)
        .babble(2000)
        .tones(&[(900.0, LOUD)], 600)
        .silence(300);
    let mut d = ToneDetector::new(ToneConfig::default());
    for (i, frame) in s.samples.chunks(FRAME).enumerate() {
        let pcm: Vec<i16> = if i % 10 == 9 {
            vec![0; FRAME]
        } else {
            frame.iter().map(|&x| x as i16).collect()
        };
        d.push_frame(&pcm);
    }
    d.finish();
    let events: Vec<ToneEvent> = std::iter::from_fn(|| d.poll_event()).collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ToneEvent::Beep { hz, .. } if (hz - 900.0).abs() < 15.0)),
        "{events:?}"
    );
}

#[test]
fn lost_frames_inside_a_tone_do_not_cut_it() {
    // A fax answer tone with one and then two frames lost (as silence).
    let s = Signal::new(200.0)
        .silence(200)
        .tones(&[(2100.0, LOUD)], 2600)
        .silence(300);
    let mut d = ToneDetector::new(ToneConfig::default());
    for (i, frame) in s.frames().iter().enumerate() {
        if [30, 70, 71].contains(&i) {
            d.push_frame(&[0; FRAME]);
        } else {
            d.push_frame(frame);
        }
    }
    d.finish();
    let events: Vec<ToneEvent> = std::iter::from_fn(|| d.poll_event()).collect();
    assert!(
        matches!(events[..], [ToneEvent::FaxCed { start_ms: 200 }]),
        "{events:?}"
    );
}

#[test]
fn a_held_vowel_whose_loudness_moves_is_not_a_beep() {
    // A high voice's vowel can be nearly a pure tone; its level swells and
    // fades, a machine's beep holds it.
    let vowel = Signal::new(100.0)
        .silence(200)
        .tones(&[(420.0, 3000.0)], 60)
        .tones(&[(420.0, 6000.0)], 60)
        .tones(&[(420.0, 2000.0)], 60)
        .tones(&[(420.0, 5000.0)], 80)
        .silence(500);
    assert_eq!(events_of(&vowel), vec![]);
    let beep = Signal::new(100.0)
        .silence(200)
        .tones(&[(420.0, 4000.0)], 260)
        .silence(500);
    assert!(
        matches!(events_of(&beep)[..], [ToneEvent::Beep { .. }]),
        "{:?}",
        events_of(&beep)
    );
}
