//! The agent's audio on its way to the call: a bounded FIFO of G.711 µ-law
//! bytes with mark sentinels, taken out in 20 ms frames.
//!
//! Agents send audio in chunks of any size and often faster than real
//! time; the queue re-chunks it into frames, starts playing once about
//! 60 ms are queued (or the first byte has waited that long), and drops
//! what would overflow its bound. A mark is echoed once the audio queued
//! before it has been played, at once if nothing is queued; `clear` drops
//! the queued audio and echoes every pending mark.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Bytes of one 20 ms frame of 8 kHz G.711.
pub const FRAME: usize = 160;
/// Queued audio that starts playback (60 ms).
pub const START_BYTES: usize = 480;
/// Longest a first chunk waits for more before it plays anyway.
pub const START_WAIT: Duration = Duration::from_millis(60);

/// The queue of one stream.
#[derive(Debug)]
pub struct Playout {
    queue: VecDeque<u8>,
    /// Bytes ever queued and ever taken out (played or cleared).
    queued: u64,
    taken: u64,
    marks: VecDeque<(u64, String)>,
    max_bytes: usize,
    playing: bool,
    waiting_since: Option<Instant>,
    dropped: u64,
}

impl Playout {
    /// An empty queue holding at most `max_bytes` of audio.
    pub fn new(max_bytes: usize) -> Playout {
        Playout {
            queue: VecDeque::new(),
            queued: 0,
            taken: 0,
            marks: VecDeque::new(),
            max_bytes,
            playing: false,
            waiting_since: None,
            dropped: 0,
        }
    }

    /// Queues audio; returns how many bytes did not fit (dropped).
    pub fn push_audio(&mut self, now: Instant, audio: &[u8]) -> usize {
        let room = self.max_bytes.saturating_sub(self.queue.len());
        let take = audio.len().min(room);
        self.queue.extend(audio.iter().take(take));
        self.queued += take as u64;
        let dropped = audio.len() - take;
        self.dropped += dropped as u64;
        if take > 0 && !self.playing && self.waiting_since.is_none() {
            self.waiting_since = Some(now);
        }
        dropped
    }

    /// Queues a mark; returns it at once when nothing is queued before it.
    pub fn push_mark(&mut self, name: String) -> Option<String> {
        if self.queue.is_empty() {
            return Some(name);
        }
        self.marks.push_back((self.queued, name));
        None
    }

    /// Drops the queued audio; every pending mark goes to `echoed`.
    pub fn clear(&mut self, echoed: &mut Vec<String>) {
        self.taken += self.queue.len() as u64;
        self.queue.clear();
        self.playing = false;
        self.waiting_since = None;
        echoed.extend(self.marks.drain(..).map(|(_, name)| name));
    }

    /// Fills `frame` with the next 20 ms: queued audio once playback has
    /// started, `silence` otherwise (and after the queue's end). Marks whose
    /// audio has now been played go to `echoed`. True when it is audio.
    pub fn next_frame(
        &mut self,
        now: Instant,
        frame: &mut [u8; FRAME],
        silence: u8,
        echoed: &mut Vec<String>,
    ) -> bool {
        if !self.playing {
            let waited = self
                .waiting_since
                .is_some_and(|at| now.saturating_duration_since(at) >= START_WAIT);
            if self.queue.len() >= START_BYTES || (waited && !self.queue.is_empty()) {
                self.playing = true;
                self.waiting_since = None;
            }
        }
        if !self.playing {
            frame.fill(silence);
            return false;
        }
        let n = self.queue.len().min(FRAME);
        for (slot, byte) in frame.iter_mut().zip(self.queue.drain(..n)) {
            *slot = byte;
        }
        if let Some(rest) = frame.get_mut(n..) {
            rest.fill(silence);
        }
        self.taken += n as u64;
        while self.marks.front().is_some_and(|(at, _)| *at <= self.taken) {
            if let Some((_, name)) = self.marks.pop_front() {
                echoed.push(name);
            }
        }
        if self.queue.is_empty() {
            // The utterance is over; the next one buffers again.
            self.playing = false;
        }
        n > 0
    }

    /// Milliseconds of audio queued.
    pub fn queued_ms(&self) -> u64 {
        self.queue.len() as u64 / 8
    }

    /// Bytes dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SILENCE: u8 = 0xFF;

    fn frames(p: &mut Playout, now: Instant, n: usize, echoed: &mut Vec<String>) -> Vec<bool> {
        let mut frame = [0u8; FRAME];
        (0..n)
            .map(|i| {
                p.next_frame(
                    now + Duration::from_millis(20 * i as u64),
                    &mut frame,
                    SILENCE,
                    echoed,
                )
            })
            .collect()
    }

    #[test]
    fn audio_of_any_chunk_size_comes_out_in_frames_after_the_start_threshold() {
        let t0 = Instant::now();
        let mut p = Playout::new(8000);
        let mut echoed = Vec::new();
        let mut frame = [0u8; FRAME];
        // 100 bytes: below the threshold, nothing plays yet.
        p.push_audio(t0, &[1; 100]);
        assert!(!p.next_frame(t0, &mut frame, SILENCE, &mut echoed));
        assert!(frame.iter().all(|&b| b == SILENCE));
        // 400 more: 500 bytes queued, playback starts.
        p.push_audio(t0, &[2; 400]);
        assert!(p.next_frame(t0, &mut frame, SILENCE, &mut echoed));
        assert_eq!(&frame[..100], &[1; 100][..]);
        assert_eq!(&frame[100..], &[2; 60][..]);
        assert!(p.next_frame(t0, &mut frame, SILENCE, &mut echoed));
        assert!(p.next_frame(t0, &mut frame, SILENCE, &mut echoed));
        // The last 20 bytes, padded with silence; then the queue is dry.
        assert!(p.next_frame(t0, &mut frame, SILENCE, &mut echoed));
        assert_eq!(&frame[..20], &[2; 20][..]);
        assert!(frame[20..].iter().all(|&b| b == SILENCE));
        assert!(!p.next_frame(t0, &mut frame, SILENCE, &mut echoed));
    }

    #[test]
    fn a_short_chunk_plays_after_waiting_60_ms() {
        let t0 = Instant::now();
        let mut p = Playout::new(8000);
        let mut echoed = Vec::new();
        p.push_audio(t0, &[5; 160]);
        assert_eq!(
            frames(&mut p, t0, 4, &mut echoed),
            [false, false, false, true]
        );
    }

    #[test]
    fn marks_are_echoed_when_the_audio_before_them_has_played() {
        let t0 = Instant::now();
        let mut p = Playout::new(8000);
        let mut echoed = Vec::new();
        assert_eq!(p.push_mark("empty".into()), Some("empty".into()));
        p.push_audio(t0, &[1; 480]);
        assert_eq!(p.push_mark("a".into()), None);
        p.push_audio(t0, &[1; 160]);
        assert_eq!(p.push_mark("b".into()), None);
        let mut frame = [0u8; FRAME];
        p.next_frame(t0, &mut frame, SILENCE, &mut echoed);
        p.next_frame(t0, &mut frame, SILENCE, &mut echoed);
        assert!(echoed.is_empty());
        p.next_frame(t0, &mut frame, SILENCE, &mut echoed);
        assert_eq!(echoed, ["a"]);
        p.next_frame(t0, &mut frame, SILENCE, &mut echoed);
        assert_eq!(echoed, ["a", "b"]);
    }

    #[test]
    fn clear_drops_the_queue_at_once_and_echoes_every_pending_mark() {
        let t0 = Instant::now();
        let mut p = Playout::new(80_000);
        let mut echoed = Vec::new();
        p.push_audio(t0, &[1; 80_000]);
        p.push_mark("one".into());
        p.push_audio(t0, &[1; 10]);
        p.push_mark("two".into());
        let mut frame = [0u8; FRAME];
        assert!(p.next_frame(t0, &mut frame, SILENCE, &mut echoed));
        p.clear(&mut echoed);
        assert_eq!(echoed, ["one", "two"]);
        // The very next frame is silence.
        assert!(!p.next_frame(t0, &mut frame, SILENCE, &mut echoed));
        assert!(frame.iter().all(|&b| b == SILENCE));
        assert_eq!(p.queued_ms(), 0);
    }

    #[test]
    fn a_burst_past_the_bound_is_dropped_and_counted() {
        let t0 = Instant::now();
        let mut p = Playout::new(1000);
        assert_eq!(p.push_audio(t0, &[1; 600]), 0);
        assert_eq!(p.push_audio(t0, &[1; 600]), 200);
        assert_eq!(p.dropped(), 200);
        assert_eq!(p.queued_ms(), 125);
    }
}
