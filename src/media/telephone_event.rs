//! RFC 4733 telephone-event payloads (DTMF over RTP): reading and writing
//! them, a [`Detector`] that turns a stream of them into digits, and a
//! [`Generator`] that sends one digit.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     event     |E|R| volume    |          duration             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! All packets of one event carry the RTP timestamp of its start; the
//! duration grows from packet to packet, and the last one has the E bit
//! and is sent three times.

/// Length of a telephone-event payload.
pub const PAYLOAD_LEN: usize = 4;

/// The volume a [`Generator`] sends: -10 dBm0.
pub const VOLUME: u8 = 10;

/// How many times a [`Generator`] sends the end packet.
pub const END_REPEATS: u8 = 3;

/// One telephone-event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// The event code: 0-15 for DTMF (see [`digit`]).
    pub code: u8,
    /// The E bit: this is the end of the event.
    pub end: bool,
    /// The power level as -dBm0, 0-63 (6 bits).
    pub volume: u8,
    /// The duration so far, in RTP timestamp units.
    pub duration: u16,
}

/// Reads a payload's first 4 bytes; `None` if it is shorter. The
/// reserved R bit is ignored.
pub fn parse(payload: &[u8]) -> Option<Event> {
    let &[code, flags, d0, d1] = payload.first_chunk::<PAYLOAD_LEN>()?;
    Some(Event {
        code,
        end: flags & 0x80 != 0,
        volume: flags & 0x3F,
        duration: u16::from_be_bytes([d0, d1]),
    })
}

/// Writes `event` at the start of `out` (the volume's low 6 bits, R
/// clear); `Some(4)`, or `None` if `out` is shorter than that.
pub fn write(out: &mut [u8], event: Event) -> Option<usize> {
    let payload = out.first_chunk_mut::<PAYLOAD_LEN>()?;
    let [d0, d1] = event.duration.to_be_bytes();
    *payload = [
        event.code,
        (u8::from(event.end) << 7) | (event.volume & 0x3F),
        d0,
        d1,
    ];
    Some(PAYLOAD_LEN)
}

/// The DTMF digit of an event code: 0-9, `*` (10), `#` (11), A-D
/// (12-15); `None` for other events.
pub fn digit(code: u8) -> Option<char> {
    match code {
        0..=9 => Some(char::from(b'0' + code)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + code - 12)),
        _ => None,
    }
}

/// The event code of a DTMF digit, the inverse of [`digit`]; a-d are
/// accepted as A-D.
pub fn code(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => u8::try_from(u32::from(digit) - u32::from('0')).ok(),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => u8::try_from(u32::from(digit) - u32::from('A') + 12).ok(),
        'a'..='d' => u8::try_from(u32::from(digit) - u32::from('a') + 12).ok(),
        _ => None,
    }
}

/// The event a [`Detector`] is following.
#[derive(Debug, Clone, Copy)]
struct Open {
    /// The RTP timestamp all its packets carry.
    timestamp: u32,
    code: u8,
    /// The longest duration seen.
    duration: u16,
    /// An end packet has been seen.
    ended: bool,
    /// The digit has been reported (or the event is not a digit).
    reported: bool,
}

impl Open {
    /// Reports the event, once.
    fn report(&mut self) -> Option<(char, u16)> {
        if self.reported {
            return None;
        }
        self.reported = true;
        digit(self.code).map(|d| (d, self.duration))
    }
}

/// Turns received telephone-event packets into digits, each once.
///
/// An event is known by its RTP timestamp. Packets older than the event
/// being followed (by serial-number arithmetic on the timestamp) are
/// late and ignored, so a reordered packet does not report a digit
/// twice. Events other than the 16 DTMF codes are followed (so they do
/// not disturb the next digit) but not reported.
#[derive(Debug, Clone, Default)]
pub struct Detector {
    open: Option<Open>,
}

impl Detector {
    /// Feeds one telephone-event packet with its RTP timestamp; returns a
    /// digit and its duration in RTP units once per event: on its first
    /// end packet (the end is sent three times: counted once), or, if the
    /// end packets were all lost, when a packet of a new event (different
    /// timestamp) arrives (then the previous one is reported with its
    /// last seen duration). If that new packet is itself an end (the
    /// event was shorter than a packet), it is reported on the next of
    /// its repeats, or by [`Detector::flush`].
    pub fn on_packet(&mut self, rtp_timestamp: u32, event: Event) -> Option<(char, u16)> {
        if let Some(open) = &mut self.open {
            if open.timestamp == rtp_timestamp {
                open.duration = open.duration.max(event.duration);
                open.ended |= event.end;
                return if open.ended { open.report() } else { None };
            }
            // Serial-number comparison: a timestamp behind the open
            // event's is a late packet of an event already followed.
            if rtp_timestamp.wrapping_sub(open.timestamp) > u32::MAX / 2 {
                return None;
            }
        }
        let previous = self.open.replace(Open {
            timestamp: rtp_timestamp,
            code: event.code,
            duration: event.duration,
            ended: event.end,
            reported: false,
        });
        match previous.and_then(|mut p| p.report()) {
            Some(report) => Some(report),
            None => match &mut self.open {
                Some(open) if open.ended => open.report(),
                _ => None,
            },
        }
    }

    /// Reports the event still open with no end, once (call it from a
    /// timer when no packet has come for a while); its packets arriving
    /// later are then ignored.
    pub fn flush(&mut self) -> Option<(char, u16)> {
        self.open.as_mut().and_then(Open::report)
    }
}

/// A packet [`Generator::next_packet`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratedPacket {
    /// Payload bytes written: 4.
    pub len: usize,
    /// The RTP marker bit: set on the first packet of the event only.
    pub marker: bool,
    /// The E bit is set: this is one of the end packets.
    pub end: bool,
    /// This is the last packet: `next_packet` returns `None` after it.
    pub last: bool,
}

/// Sends one digit as telephone-event payloads.
#[derive(Debug, Clone)]
pub struct Generator {
    code: u8,
    /// The total duration.
    duration: u16,
    /// Duration added per packet.
    step: u16,
    /// The duration of the last packet sent, `None` before the first.
    sent: Option<u16>,
    /// End packets sent.
    ends_sent: u8,
}

impl Generator {
    /// A digit lasting `duration` RTP units, a packet every `step` units
    /// (ptime × 8 at 8 kHz), volume 10 (-10 dBm0). A `step` of 0 sends
    /// only the end packets.
    pub fn new(code: u8, duration: u16, step: u16) -> Generator {
        Generator {
            code,
            duration,
            step,
            sent: None,
            ends_sent: 0,
        }
    }

    /// Writes the next packet of the event into `out`; `None` when the
    /// event is finished (or `out` is shorter than 4 bytes, which
    /// consumes nothing). All packets of one event carry the same RTP
    /// timestamp (the caller keeps it); durations grow by `step` up to
    /// `duration`; the final packet (E bit, duration = total) is sent
    /// three times.
    pub fn next_packet(&mut self, out: &mut [u8]) -> Option<GeneratedPacket> {
        if self.ends_sent >= END_REPEATS || out.len() < PAYLOAD_LEN {
            return None;
        }
        let marker = self.sent.is_none();
        let next = match (self.sent, self.step) {
            (_, 0) => self.duration,
            (None, step) => step.min(self.duration),
            (Some(sent), step) => sent.saturating_add(step).min(self.duration),
        };
        let end = next >= self.duration;
        if end {
            self.ends_sent += 1;
        }
        self.sent = Some(next);
        let len = write(
            out,
            Event {
                code: self.code,
                end,
                volume: VOLUME,
                duration: next,
            },
        )?;
        Some(GeneratedPacket {
            len,
            marker,
            end,
            last: self.ends_sent >= END_REPEATS,
        })
    }

    /// Whether every packet has been sent.
    pub fn finished(&self) -> bool {
        self.ends_sent >= END_REPEATS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(code: u8, end: bool, duration: u16) -> Event {
        Event {
            code,
            end,
            volume: 10,
            duration,
        }
    }

    /// Every packet of a generated digit.
    fn generate(code: u8, duration: u16, step: u16) -> Vec<(Event, GeneratedPacket)> {
        let mut g = Generator::new(code, duration, step);
        let mut packets = Vec::new();
        let mut buf = [0u8; 8];
        while let Some(p) = g.next_packet(&mut buf) {
            packets.push((parse(&buf[..p.len]).unwrap(), p));
            assert!(packets.len() < 10_000);
        }
        assert!(g.finished());
        packets
    }

    #[test]
    fn parse_and_write_round_trip() {
        let cases = [
            event(0, false, 0),
            event(11, true, 1600),
            Event {
                code: 255,
                end: true,
                volume: 63,
                duration: u16::MAX,
            },
        ];
        for e in cases {
            let mut buf = [0u8; 4];
            assert_eq!(write(&mut buf, e), Some(4));
            assert_eq!(parse(&buf), Some(e));
        }
    }

    #[test]
    fn the_wire_format() {
        let mut buf = [0u8; 6];
        write(&mut buf, event(5, true, 0x0320)).unwrap();
        assert_eq!(buf, [5, 0x8A, 0x03, 0x20, 0, 0]);
        // The R bit is ignored, volume is 6 bits.
        let expected = Event {
            volume: 63,
            ..event(9, false, 160)
        };
        assert_eq!(parse(&[9, 0x7F, 0, 160]), Some(expected));
        // Longer payloads: the first 4 bytes.
        assert_eq!(parse(&[1, 0x0A, 0, 1, 0xFF]), Some(event(1, false, 1)));
        // A volume too large for 6 bits is cut.
        write(
            &mut buf,
            Event {
                volume: 0xFF,
                ..event(1, false, 1)
            },
        )
        .unwrap();
        assert_eq!(buf[1], 0x3F);
    }

    #[test]
    fn short_payloads_and_buffers() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[1, 2, 3]), None);
        let mut buf = [0u8; 3];
        assert_eq!(write(&mut buf, event(1, false, 1)), None);
        assert_eq!(buf, [0; 3]);
    }

    #[test]
    fn digits_and_codes() {
        let digits = "0123456789*#ABCD";
        for (code, d) in digits.chars().enumerate() {
            let code = code as u8;
            assert_eq!(digit(code), Some(d));
            assert_eq!(super::code(d), Some(code));
            assert_eq!(super::code(d.to_ascii_lowercase()), Some(code));
        }
        assert_eq!(digit(16), None);
        assert_eq!(digit(255), None);
        for c in ['e', 'E', ' ', '+', 'x', '\u{0660}'] {
            assert_eq!(code(c), None, "{c:?}");
        }
    }

    #[test]
    fn the_generator_grows_the_duration_then_ends_three_times() {
        let packets = generate(5, 800, 160);
        let durations: Vec<u16> = packets.iter().map(|(e, _)| e.duration).collect();
        assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800]);
        let ends: Vec<bool> = packets.iter().map(|(e, _)| e.end).collect();
        assert_eq!(ends, [false, false, false, false, true, true, true]);
        let markers: Vec<bool> = packets.iter().map(|(_, p)| p.marker).collect();
        assert_eq!(markers, [true, false, false, false, false, false, false]);
        let lasts: Vec<bool> = packets.iter().map(|(_, p)| p.last).collect();
        assert_eq!(lasts, [false, false, false, false, false, false, true]);
        for (e, p) in &packets {
            assert_eq!((e.code, e.volume, p.len, p.end), (5, 10, 4, e.end));
        }
    }

    #[test]
    fn the_generator_caps_an_uneven_duration() {
        let durations: Vec<u16> = generate(1, 500, 160)
            .iter()
            .map(|(e, _)| e.duration)
            .collect();
        assert_eq!(durations, [160, 320, 480, 500, 500, 500]);
        // Shorter than one step: only the end packets, the first marked.
        let packets = generate(1, 100, 160);
        assert_eq!(packets.len(), 3);
        assert!(packets.iter().all(|(e, _)| e.end && e.duration == 100));
        assert!(packets[0].1.marker);
        // A step of 0 does not loop forever.
        assert_eq!(generate(1, 800, 0).len(), 3);
        // Near the top of the range, no overflow.
        let durations: Vec<u16> = generate(1, u16::MAX, 30_000)
            .iter()
            .map(|(e, _)| e.duration)
            .collect();
        assert_eq!(durations, [30_000, 60_000, u16::MAX, u16::MAX, u16::MAX]);
    }

    #[test]
    fn the_generator_needs_four_bytes() {
        let mut g = Generator::new(1, 320, 160);
        assert_eq!(g.next_packet(&mut [0u8; 3]), None);
        let p = g.next_packet(&mut [0u8; 4]).unwrap();
        assert!(p.marker);
    }

    #[test]
    fn a_generated_digit_is_detected_once_with_its_duration() {
        let mut d = Detector::default();
        let mut reports = Vec::new();
        for (e, _) in generate(11, 1600, 160) {
            reports.extend(d.on_packet(48_000, e));
        }
        assert_eq!(reports, [('#', 1600)]);
        assert_eq!(d.flush(), None);
    }

    #[test]
    fn a_digit_whose_end_packets_are_lost_is_reported_by_the_next_event() {
        let mut d = Detector::default();
        for (e, _) in generate(3, 800, 160).into_iter().filter(|(e, _)| !e.end) {
            assert_eq!(d.on_packet(1000, e), None);
        }
        let mut second = generate(4, 480, 160).into_iter();
        let (first_of_next, _) = second.next().unwrap();
        assert_eq!(d.on_packet(5000, first_of_next), Some(('3', 640)));
        let reports: Vec<_> = second.filter_map(|(e, _)| d.on_packet(5000, e)).collect();
        assert_eq!(reports, [('4', 480)]);
    }

    #[test]
    fn a_digit_whose_end_packets_are_lost_is_reported_by_flush() {
        let mut d = Detector::default();
        for (e, _) in generate(9, 800, 160).into_iter().filter(|(e, _)| !e.end) {
            assert_eq!(d.on_packet(1000, e), None);
        }
        assert_eq!(d.flush(), Some(('9', 640)));
        assert_eq!(d.flush(), None);
        // Its end arriving late after all is not a second digit.
        assert_eq!(d.on_packet(1000, event(9, true, 800)), None);
        // Nor is the next event held up.
        assert_eq!(d.on_packet(2000, event(9, true, 160)), Some(('9', 160)));
    }

    #[test]
    fn a_digit_pressed_twice_is_reported_twice() {
        let mut d = Detector::default();
        let mut reports = Vec::new();
        for ts in [8000u32, 16_000] {
            for (e, _) in generate(2, 640, 160) {
                reports.extend(d.on_packet(ts, e));
            }
        }
        assert_eq!(reports, [('2', 640), ('2', 640)]);
    }

    #[test]
    fn a_short_event_seen_only_by_its_ends() {
        let mut d = Detector::default();
        // The previous digit lost its ends; the next one has only ends.
        assert_eq!(d.on_packet(100, event(1, false, 160)), None);
        assert_eq!(d.on_packet(900, event(2, true, 80)), Some(('1', 160)));
        assert_eq!(d.on_packet(900, event(2, true, 80)), Some(('2', 80)));
        assert_eq!(d.on_packet(900, event(2, true, 80)), None);
        // With nothing before it, an end is reported at once.
        let mut d = Detector::default();
        assert_eq!(d.on_packet(900, event(2, true, 80)), Some(('2', 80)));
        assert_eq!(d.flush(), None);
        // If all its repeats but the first are lost, flush reports it.
        let mut d = Detector::default();
        d.on_packet(100, event(1, false, 160));
        d.on_packet(900, event(2, true, 80));
        assert_eq!(d.flush(), Some(('2', 80)));
    }

    #[test]
    fn late_and_reordered_packets_do_not_repeat_a_digit() {
        let mut d = Detector::default();
        assert_eq!(d.on_packet(1000, event(1, false, 160)), None);
        assert_eq!(d.on_packet(1000, event(1, false, 480)), None);
        assert_eq!(d.on_packet(1000, event(1, false, 320)), None);
        assert_eq!(d.on_packet(1000, event(1, true, 640)), Some(('1', 640)));
        assert_eq!(d.on_packet(2000, event(5, false, 160)), None);
        // A repeat of the previous end, arriving late.
        assert_eq!(d.on_packet(1000, event(1, true, 640)), None);
        assert_eq!(d.on_packet(2000, event(5, true, 320)), Some(('5', 320)));
    }

    #[test]
    fn the_longest_duration_seen_is_reported() {
        let mut d = Detector::default();
        d.on_packet(7, event(0, false, 480));
        d.on_packet(7, event(0, false, 320));
        assert_eq!(d.on_packet(99, event(0, false, 160)), Some(('0', 480)));
    }

    #[test]
    fn timestamps_wrap() {
        let mut d = Detector::default();
        assert_eq!(d.on_packet(u32::MAX - 100, event(7, false, 160)), None);
        assert_eq!(d.on_packet(200, event(8, false, 160)), Some(('7', 160)));
        assert_eq!(d.on_packet(u32::MAX - 100, event(7, true, 320)), None);
    }

    #[test]
    fn other_events_are_not_digits() {
        let mut d = Detector::default();
        // Flash (16) ends: nothing to report, and nothing held over.
        assert_eq!(d.on_packet(10, event(16, false, 160)), None);
        assert_eq!(d.on_packet(10, event(16, true, 320)), None);
        assert_eq!(d.on_packet(500, event(6, false, 160)), None);
        assert_eq!(d.flush(), Some(('6', 160)));
    }

    #[test]
    fn flush_with_nothing_open() {
        assert_eq!(Detector::default().flush(), None);
    }
}
