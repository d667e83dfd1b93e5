//! Receive statistics of one RTP stream: packets, bytes, loss and
//! interarrival jitter, as RFC 3550 Appendix A.1, A.3 and A.8 compute them.
//!
//! Sequence tracking follows A.1 without the probation: the first packet
//! starts the sequence. A jump of more than [`MAX_DROPOUT`] ahead (or of
//! more than [`MAX_MISORDER`] back) is taken for a restarted sender only
//! when the next packet follows it in order; until then the packet is
//! counted in [`ReceiveStats::packets`] but not in the loss figures, as
//! A.1 does. Each run of sequence numbers (between restarts) keeps its own
//! expected and received counts, and the totals add the runs up.

/// A jump ahead larger than this is a restart or garbage, not loss.
pub const MAX_DROPOUT: u16 = 3000;
/// A packet further back than this is a restart or garbage, not late.
pub const MAX_MISORDER: u16 = 100;

/// One run of sequence numbers (RFC 3550 A.1's `source`).
#[derive(Debug, Clone, Copy)]
struct Run {
    /// The first sequence number of the run.
    base: u16,
    /// The highest sequence number seen.
    max: u16,
    /// Wraps of `max`, counted in units of 2^16.
    cycles: u64,
    /// After a large jump, the sequence number that would confirm it.
    bad: Option<u16>,
    /// Packets counted in this run.
    received: u64,
}

impl Run {
    fn start(seq: u16) -> Run {
        Run {
            base: seq,
            max: seq,
            cycles: 0,
            bad: None,
            received: 0,
        }
    }

    /// Packets expected from the first to the highest (A.3).
    fn expected(&self) -> u64 {
        let highest = (self.cycles << 16) + u64::from(self.max);
        (highest + 1).saturating_sub(u64::from(self.base))
    }

    /// Expected less received, clamped at 0: duplicates count against.
    fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }
}

/// What becomes of a packet in sequence tracking.
enum Verdict {
    /// Counted in the current run.
    Counted,
    /// A large jump not confirmed yet: not counted.
    Held,
    /// Confirms a large jump: a new run starts with this packet.
    Restart,
}

/// Receive statistics of one RTP stream.
#[derive(Debug, Clone, Default)]
pub struct ReceiveStats {
    packets: u64,
    bytes: u64,
    run: Option<Run>,
    /// Expected packets of the runs before `run`.
    prior_expected: u64,
    /// Lost packets of the runs before `run`.
    prior_lost: u64,
    /// The relative transit time of the last packet (A.8).
    transit: Option<u32>,
    /// The jitter estimate, ×16 (A.8).
    jitter_x16: u64,
}

impl ReceiveStats {
    /// Counts one packet: its sequence number, RTP timestamp, arrival
    /// time in RTP clock units (any origin; wraps), and size.
    pub fn on_packet(&mut self, sequence: u16, rtp_timestamp: u32, arrival: u32, bytes: usize) {
        self.packets += 1;
        self.bytes = self
            .bytes
            .saturating_add(u64::try_from(bytes).unwrap_or(u64::MAX));
        match self.update_sequence(sequence) {
            Verdict::Counted => {}
            Verdict::Held => return,
            Verdict::Restart => {
                self.end_run();
                self.transit = None;
                let mut run = Run::start(sequence);
                run.received = 1;
                self.run = Some(run);
            }
        }
        self.update_jitter(rtp_timestamp, arrival);
    }

    /// A.1's `update_seq`, without the probation.
    fn update_sequence(&mut self, seq: u16) -> Verdict {
        let Some(run) = &mut self.run else {
            let mut run = Run::start(seq);
            run.received = 1;
            self.run = Some(run);
            return Verdict::Counted;
        };
        let delta = seq.wrapping_sub(run.max);
        if delta < MAX_DROPOUT {
            // In order, with a permissible gap.
            if seq < run.max {
                run.cycles += 1;
            }
            run.max = seq;
        } else if delta <= u16::MAX - MAX_MISORDER + 1 {
            // A very large jump: believe it once the next one follows.
            if run.bad == Some(seq) {
                return Verdict::Restart;
            }
            run.bad = Some(seq.wrapping_add(1));
            return Verdict::Held;
        }
        // Otherwise a duplicate or a late packet: counted as received.
        run.received += 1;
        Verdict::Counted
    }

    /// A.8: J += (|D| - J) / 16, kept ×16.
    fn update_jitter(&mut self, rtp_timestamp: u32, arrival: u32) {
        let transit = arrival.wrapping_sub(rtp_timestamp);
        if let Some(previous) = self.transit.replace(transit) {
            let diff = transit.wrapping_sub(previous);
            // |D| of the signed 32-bit difference.
            let d = u64::from(diff.min(diff.wrapping_neg()));
            self.jitter_x16 = self.jitter_x16 + d - ((self.jitter_x16 + 8) >> 4);
        }
    }

    /// Closes the current run into the totals.
    fn end_run(&mut self) {
        if let Some(run) = self.run.take() {
            self.prior_expected += run.expected();
            self.prior_lost += run.lost();
        }
    }

    /// Restarts sequence tracking (a new SSRC): the next packet starts a
    /// new run; packet, byte and loss totals and the jitter estimate are
    /// kept, and the next packet starts a new transit baseline.
    pub fn restart(&mut self) {
        self.end_run();
        self.transit = None;
    }

    /// Packets received, including those sequence tracking held back.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Bytes received, as the caller counted them.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Packets expected: from the first to the highest sequence number of
    /// each run, summed over the runs.
    pub fn expected(&self) -> u64 {
        self.prior_expected + self.run.as_ref().map_or(0, Run::expected)
    }

    /// Packets lost: expected less received, clamped at 0 in each run (so
    /// duplicates in one run do not hide losses in another).
    pub fn lost(&self) -> u64 {
        self.prior_lost + self.run.as_ref().map_or(0, Run::lost)
    }

    /// Interarrival jitter in RTP clock units (A.8's `jitter >> 4`).
    pub fn jitter(&self) -> u32 {
        u32::try_from(self.jitter_x16 >> 4).unwrap_or(u32::MAX)
    }

    /// Interarrival jitter in milliseconds at `clock_rate` Hz (0 if the
    /// clock rate is 0).
    pub fn jitter_ms(&self, clock_rate: u32) -> f64 {
        if clock_rate == 0 {
            return 0.0;
        }
        // ×16 is exact in f64 up to 2^53.
        self.jitter_x16 as f64 / 16.0 * 1000.0 / f64::from(clock_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `seqs` paced perfectly at 160 units per sequence number.
    fn feed(stats: &mut ReceiveStats, seqs: impl IntoIterator<Item = u16>) {
        for seq in seqs {
            let ts = u32::from(seq).wrapping_mul(160);
            stats.on_packet(seq, ts, ts.wrapping_add(12_345), 172);
        }
    }

    #[test]
    fn nothing_received_is_nothing_lost() {
        let s = ReceiveStats::default();
        assert_eq!(
            (s.packets(), s.bytes(), s.expected(), s.lost(), s.jitter()),
            (0, 0, 0, 0, 0)
        );
        assert_eq!(s.jitter_ms(8000), 0.0);
    }

    #[test]
    fn an_in_order_stream_loses_nothing_and_has_no_jitter() {
        let mut s = ReceiveStats::default();
        feed(&mut s, 1000..1500);
        assert_eq!(s.packets(), 500);
        assert_eq!(s.bytes(), 500 * 172);
        assert_eq!(s.expected(), 500);
        assert_eq!(s.lost(), 0);
        assert_eq!(s.jitter(), 0);
        assert_eq!(s.jitter_ms(8000), 0.0);
    }

    #[test]
    fn a_gap_of_five_is_five_lost() {
        let mut s = ReceiveStats::default();
        feed(&mut s, (0..10).chain(15..20));
        assert_eq!(s.packets(), 15);
        assert_eq!(s.expected(), 20);
        assert_eq!(s.lost(), 5);
        // Pacing by timestamp, so the gap is no jitter.
        assert_eq!(s.jitter(), 0);
    }

    #[test]
    fn the_sequence_number_wraps() {
        let mut s = ReceiveStats::default();
        feed(&mut s, (65_530..=65_535).chain(0..6));
        assert_eq!(s.expected(), 12);
        assert_eq!(s.lost(), 0);
        // Several wraps.
        let mut s = ReceiveStats::default();
        feed(&mut s, (0..3 * 65_536 + 10).map(|n: u32| n as u16));
        assert_eq!(s.expected(), 3 * 65_536 + 10);
        assert_eq!(s.lost(), 0);
    }

    #[test]
    fn loss_across_the_wrap() {
        let mut s = ReceiveStats::default();
        feed(&mut s, [65_533, 65_534, 2, 3]);
        assert_eq!(s.expected(), 7);
        assert_eq!(s.lost(), 3);
    }

    #[test]
    fn reordering_is_not_loss() {
        let mut s = ReceiveStats::default();
        feed(&mut s, [1, 2, 4, 3, 5, 7, 6, 8]);
        assert_eq!(s.expected(), 8);
        assert_eq!(s.lost(), 0);
        // Reordered across the wrap.
        let mut s = ReceiveStats::default();
        feed(&mut s, [65_534, 0, 65_535, 1]);
        assert_eq!(s.expected(), 4);
        assert_eq!(s.lost(), 0);
    }

    #[test]
    fn duplicates_do_not_make_loss_negative() {
        let mut s = ReceiveStats::default();
        feed(&mut s, [1, 2, 2, 3, 3, 3]);
        assert_eq!(s.packets(), 6);
        assert_eq!(s.expected(), 3);
        assert_eq!(s.lost(), 0);
        // Within a run duplicates offset losses, as in RFC 3550: three
        // duplicates against one lost, then against five.
        feed(&mut s, [5]);
        assert_eq!(s.expected(), 5);
        assert_eq!(s.lost(), 0);
        feed(&mut s, [10]);
        assert_eq!(s.expected(), 10);
        assert_eq!(s.lost(), 2);
    }

    #[test]
    fn a_large_jump_restarts_after_two_in_order_packets() {
        let mut s = ReceiveStats::default();
        feed(&mut s, 0..10);
        // One stray packet far ahead: held back, not counted as loss.
        feed(&mut s, [40_000]);
        assert_eq!((s.packets(), s.expected(), s.lost()), (11, 10, 0));
        feed(&mut s, 10..12);
        assert_eq!((s.packets(), s.expected(), s.lost()), (13, 12, 0));
        // A real restart: two in order far away.
        feed(&mut s, [50_000, 50_001]);
        assert_eq!(s.packets(), 15);
        // The run 0..12 plus the new run from 50,001.
        assert_eq!(s.expected(), 13);
        feed(&mut s, [50_002, 50_004]);
        assert_eq!(s.expected(), 16);
        assert_eq!(s.lost(), 1);
    }

    #[test]
    fn a_packet_far_behind_is_treated_like_a_jump() {
        let mut s = ReceiveStats::default();
        feed(&mut s, 1000..1010);
        // 99 back is late; 500 back is held.
        feed(&mut s, [910]);
        assert_eq!((s.expected(), s.lost()), (10, 0));
        feed(&mut s, [500]);
        assert_eq!(s.packets(), 12);
        assert_eq!((s.expected(), s.lost()), (10, 0));
    }

    #[test]
    fn restart_keeps_the_totals() {
        let mut s = ReceiveStats::default();
        feed(&mut s, (0..10).chain(12..20));
        assert_eq!((s.expected(), s.lost()), (20, 2));
        s.restart();
        assert_eq!((s.packets(), s.expected(), s.lost()), (18, 20, 2));
        // The new SSRC starts anywhere, without a jump being held.
        feed(&mut s, (30_000..30_010).chain(30_011..30_020));
        assert_eq!(s.packets(), 37);
        assert_eq!(s.bytes(), 37 * 172);
        assert_eq!(s.expected(), 40);
        assert_eq!(s.lost(), 3);
    }

    #[test]
    fn duplicates_in_one_run_do_not_hide_loss_in_another() {
        let mut s = ReceiveStats::default();
        feed(&mut s, [1, 1, 1, 2]);
        s.restart();
        feed(&mut s, [10, 12]);
        assert_eq!(s.expected(), 5);
        assert_eq!(s.lost(), 1);
    }

    /// A.8 in the test's own words: J += (|D| - J) / 16 on the ×16 value.
    fn reference_jitter(transits: &[i64]) -> i64 {
        let mut j = 0i64;
        for pair in transits.windows(2) {
            let d = (pair[1] - pair[0]).abs();
            j += d - ((j + 8) >> 4);
        }
        j >> 4
    }

    #[test]
    fn jitter_converges_for_an_alternating_delay() {
        const DELAY: u32 = 40;
        let mut s = ReceiveStats::default();
        let mut transits = Vec::new();
        for n in 0..400u32 {
            let ts = n * 160;
            let extra = if n % 2 == 0 { 0 } else { DELAY };
            let arrival = ts + 1_000 + extra;
            transits.push(i64::from(arrival) - i64::from(ts));
            s.on_packet(n as u16, ts, arrival, 172);
        }
        let expected = reference_jitter(&transits);
        assert_eq!(i64::from(s.jitter()), expected);
        // |D| is always 40; the estimate settles within one unit of it.
        assert!(s.jitter().abs_diff(DELAY) <= 1, "{}", s.jitter());
        assert!(
            (s.jitter_ms(8000) - 5.0).abs() < 0.2,
            "{}",
            s.jitter_ms(8000)
        );
    }

    #[test]
    fn jitter_follows_the_formula_step_by_step() {
        let mut s = ReceiveStats::default();
        let delays = [0u32, 80, 10, 300, 0, 0, 25, 160, 5, 90];
        let mut transits = Vec::new();
        for (n, delay) in delays.iter().enumerate() {
            let ts = n as u32 * 160;
            let arrival = ts.wrapping_add(*delay).wrapping_sub(5_000);
            s.on_packet(n as u16, ts, arrival, 100);
            transits.push(i64::from(*delay) - 5_000);
            assert_eq!(i64::from(s.jitter()), reference_jitter(&transits), "{n}");
        }
    }

    #[test]
    fn jitter_survives_clock_wraps() {
        let mut s = ReceiveStats::default();
        let base = u32::MAX - 800;
        for n in 0..20u32 {
            let ts = base.wrapping_add(n * 160);
            let arrival = ts.wrapping_add(7);
            s.on_packet(n as u16, ts, arrival, 10);
        }
        assert_eq!(s.jitter(), 0);
    }

    #[test]
    fn a_restart_does_not_turn_a_new_timestamp_base_into_jitter() {
        let mut s = ReceiveStats::default();
        feed(&mut s, 0..50);
        s.restart();
        // The new source's timestamps start elsewhere.
        for n in 0..50u32 {
            let ts = 3_000_000_000 + n * 160;
            s.on_packet(n as u16 + 7, ts, n * 160, 172);
        }
        assert_eq!(s.jitter(), 0);
    }
}
