//! One call's stream to a voice agent: a sans-IO machine over the bytes of
//! its connection (plaintext: TLS, if any, is the caller's) and the time.
//!
//! It sends the WebSocket upgrade once the caller's connection is up, then
//! the protocol's `connected` and `start` (exactly once: a stream is never
//! reconnected, so an agent never greets twice), the call's audio as it
//! comes and its DTMF, pings every interval, and ends when the agent closes,
//! breaks the protocol, stops answering or falls too far behind reading.
//! Toward the call it yields a 20 ms frame at every absolute deadline: the
//! agent's audio from the [`Playout`] queue, or silence, so the call never
//! starves whatever the agent does.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::playout::{FRAME, Playout};
use super::twilio::{self, BadMessage, FromAgent, StreamIds, Writer};
use super::ws::{self, Decoder, Handshake, Incoming, Opcode, WsError};
use crate::media::g711;

/// The frame interval toward the call.
pub const PTIME: Duration = Duration::from_millis(20);
/// How long a closing stream waits for the agent's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Bad messages reported per stream (the rest are only counted).
const BAD_REPORTS: u32 = 3;

/// The wire protocol spoken with the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Twilio Media Streams: JSON text frames, base64 µ-law at 8 kHz.
    Twilio,
    /// Raw audio: binary frames of 16-bit little-endian PCM at `rate` Hz
    /// (8000 or 16000), JSON text frames for control.
    L16 {
        /// Sample rate of the binary frames.
        rate: u32,
    },
}

/// What one stream is. Its `Debug` shows header names, not their values,
/// and the path without its query (either may carry the agent's
/// credentials).
#[derive(Clone)]
pub struct StreamConfig {
    /// The `Host` header: the URL's host, and its port if not the default.
    pub host: String,
    /// The URL's path and query.
    pub path: String,
    /// Extra headers of the upgrade request.
    pub headers: Vec<(String, String)>,
    /// The protocol.
    pub protocol: Protocol,
    /// The ids the stream presents.
    pub ids: StreamIds,
    /// `customParameters` of the start message.
    pub custom_parameters: Vec<(String, String)>,
    /// The connection and upgrade must complete within this.
    pub connect_timeout: Duration,
    /// A ping after this long; two intervals with nothing heard end it.
    pub ping_interval: Duration,
    /// Largest message taken from the agent.
    pub max_message: usize,
    /// Most agent audio queued, bytes of µ-law (8 per millisecond).
    pub max_queue: usize,
    /// Most bytes waiting to be written to the agent before it counts as
    /// not reading.
    pub max_backlog: usize,
    /// 16 random bytes: the handshake nonce, and the seed of the masks.
    pub nonce: [u8; 16],
}

impl std::fmt::Debug for StreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("StreamConfig")
            .field("host", &self.host)
            .field("path", &self.path.split('?').next().unwrap_or_default())
            .field("headers", &headers)
            .field("protocol", &self.protocol)
            .field("ids", &self.ids)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// Why a stream ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamEnd {
    /// The TCP or TLS connection could not be made.
    #[error("could not connect: {0}")]
    Connect(String),
    /// Not connected and upgraded within the connect timeout.
    #[error("no WebSocket within the connect timeout")]
    ConnectTimeout,
    /// The upgrade was refused or malformed, or a frame broke the protocol.
    #[error(transparent)]
    WebSocket(#[from] WsError),
    /// The agent closed the WebSocket (its code, if it gave one).
    #[error("the agent closed the stream (code {})", .0.map_or_else(|| "none".to_owned(), |c| c.to_string()))]
    Closed(Option<u16>),
    /// The connection was lost without a close frame.
    #[error("connection lost: {0}")]
    Lost(String),
    /// Nothing heard (not even a pong) for two ping intervals.
    #[error("no answer to pings")]
    Silent,
    /// The agent does not read what it is sent.
    #[error("the agent does not read its stream")]
    Backlog,
    /// The call ended or the stream was stopped.
    #[error("stopped")]
    Stopped,
}

impl StreamEnd {
    /// A short name for events and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            StreamEnd::Connect(_) => "connect_failed",
            StreamEnd::ConnectTimeout => "connect_timeout",
            StreamEnd::WebSocket(WsError::Refused(_)) => "refused",
            StreamEnd::WebSocket(WsError::TooBig(_)) => "message_too_big",
            StreamEnd::WebSocket(_) => "protocol_error",
            StreamEnd::Closed(_) => "closed",
            StreamEnd::Lost(_) => "lost",
            StreamEnd::Silent => "ping_timeout",
            StreamEnd::Backlog => "not_reading",
            StreamEnd::Stopped => "stopped",
        }
    }
}

/// What a stream reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The WebSocket is up and `start` was sent.
    Started,
    /// A message from the agent was ignored (the first few are reported).
    BadMessage(String),
    /// Agent audio was dropped because the queue was full.
    Overflow {
        /// Milliseconds dropped.
        dropped_ms: u64,
    },
    /// The stream ended.
    Ended(StreamEnd),
}

#[derive(Debug)]
enum State {
    /// Waiting for the caller's connection.
    Connecting,
    /// Upgrade sent; reading the response head.
    Upgrading(Handshake, Vec<u8>),
    /// Streaming.
    Open,
    /// Our close frame is out; waiting for the agent's (or the deadline).
    Closing(Instant),
    /// Over: the caller closes the connection once `outgoing` is written.
    Done,
}

/// Counters of one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Media messages (or binary frames) sent to the agent.
    pub sent_frames: u64,
    /// Audio messages taken from the agent.
    pub received_messages: u64,
    /// Frames toward the call that carried agent audio.
    pub played_frames: u64,
    /// Messages from the agent that were ignored.
    pub bad_messages: u64,
    /// Agent audio dropped for a full queue, bytes.
    pub dropped_bytes: u64,
}

/// The machine.
#[derive(Debug)]
pub struct AgentStream {
    config: StreamConfig,
    state: State,
    writer: Writer,
    decoder: Decoder,
    playout: Playout,
    outgoing: Vec<u8>,
    events: VecDeque<StreamEvent>,
    rng: u64,
    created: Instant,
    next_frame: Instant,
    last_heard: Instant,
    next_ping: Option<Instant>,
    first_ts: Option<u32>,
    text: String,
    echoed: Vec<String>,
    stats: StreamStats,
    overflow_reported: bool,
}

impl AgentStream {
    /// A stream waiting for its connection (made by the caller).
    pub fn new(now: Instant, config: StreamConfig) -> AgentStream {
        let seed = u64::from_le_bytes(
            config
                .nonce
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .unwrap_or([7; 8]),
        );
        AgentStream {
            writer: Writer::new(config.ids.clone()),
            decoder: Decoder::new(config.max_message),
            playout: Playout::new(config.max_queue),
            state: State::Connecting,
            outgoing: Vec::new(),
            events: VecDeque::new(),
            rng: seed | 1,
            created: now,
            next_frame: now + PTIME,
            last_heard: now,
            next_ping: None,
            first_ts: None,
            text: String::new(),
            echoed: Vec::new(),
            stats: StreamStats::default(),
            overflow_reported: false,
            config,
        }
    }

    /// The stream's ids.
    pub fn ids(&self) -> &StreamIds {
        self.writer.ids()
    }

    /// Its counters.
    pub fn stats(&self) -> StreamStats {
        StreamStats {
            dropped_bytes: self.playout.dropped(),
            ..self.stats
        }
    }

    /// Whether it streams now.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open)
    }

    /// Whether it is over (the caller closes the connection once the
    /// outgoing bytes are written, or at once).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn mask(&mut self) -> [u8; 4] {
        // xorshift64*: masks need not be secret from the agent, only
        // unpredictable to what sits between (RFC 6455 §10.3).
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) as u32).to_le_bytes()
    }

    /// Plaintext for the connection; the caller drains what it wrote.
    pub fn outgoing(&mut self) -> &mut Vec<u8> {
        &mut self.outgoing
    }

    /// The caller's connection (TCP, and TLS if any) is up: the upgrade
    /// request goes out.
    pub fn connected(&mut self, _now: Instant) {
        if !matches!(self.state, State::Connecting) {
            return;
        }
        let (handshake, request) = Handshake::request(
            &self.config.host,
            &self.config.path,
            self.config.nonce,
            &self.config.headers,
        );
        self.outgoing.extend_from_slice(&request);
        self.state = State::Upgrading(handshake, Vec::new());
    }

    /// The connection failed or closed.
    pub fn transport_failed(&mut self, reason: String) {
        match self.state {
            State::Connecting => self.end(StreamEnd::Connect(reason)),
            State::Upgrading(..) | State::Open => self.end(StreamEnd::Lost(reason)),
            State::Closing(_) => self.state = State::Done,
            State::Done => {}
        }
    }

    fn end(&mut self, why: StreamEnd) {
        if matches!(self.state, State::Done) {
            return;
        }
        self.state = State::Done;
        self.events.push_back(StreamEvent::Ended(why));
    }

    fn fail(&mut self, error: WsError) {
        let mask = self.mask();
        ws::encode_close(error.close_code(), "", mask, &mut self.outgoing);
        self.end(StreamEnd::WebSocket(error));
    }

    /// Bytes from the agent.
    pub fn receive(&mut self, now: Instant, data: &[u8]) {
        self.last_heard = now;
        match &mut self.state {
            State::Upgrading(handshake, head) => {
                head.extend_from_slice(data);
                match handshake.response(head) {
                    Ok(None) => return,
                    Ok(Some(used)) => {
                        let rest = head.get(used..).unwrap_or_default().to_vec();
                        self.open(now);
                        self.decoder.push(&rest);
                    }
                    Err(e) => return self.end(StreamEnd::WebSocket(e)),
                }
            }
            State::Open | State::Closing(_) => self.decoder.push(data),
            State::Connecting | State::Done => return,
        }
        self.decode(now);
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open;
        self.next_ping = Some(now + self.config.ping_interval);
        match self.config.protocol {
            Protocol::Twilio => {
                let connected = self.writer.connected();
                self.send_text(&connected);
                let start = self.writer.start(&self.config.custom_parameters);
                self.send_text(&start);
            }
            Protocol::L16 { rate } => {
                let ids = self.writer.ids();
                let custom: serde_json::Map<String, serde_json::Value> = self
                    .config
                    .custom_parameters
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect();
                let start = serde_json::json!({
                    "event": "start",
                    "call_sid": ids.call_sid,
                    "stream_sid": ids.stream_sid,
                    "encoding": "L16",
                    "sample_rate": rate,
                    "channels": 1,
                    "custom_parameters": custom,
                })
                .to_string();
                self.send_text(&start);
            }
        }
        self.events.push_back(StreamEvent::Started);
    }

    fn send_text(&mut self, text: &str) {
        let mask = self.mask();
        ws::encode(Opcode::Text, text.as_bytes(), mask, &mut self.outgoing);
        self.check_backlog();
    }

    fn check_backlog(&mut self) {
        if self.outgoing.len() > self.config.max_backlog && !matches!(self.state, State::Done) {
            self.outgoing.clear();
            self.end(StreamEnd::Backlog);
        }
    }

    fn decode(&mut self, now: Instant) {
        loop {
            match self.decoder.next_message() {
                Ok(None) => return,
                Ok(Some(incoming)) => self.incoming(now, incoming),
                Err(e) => return self.fail(e),
            }
            if matches!(self.state, State::Done) {
                return;
            }
        }
    }

    fn incoming(&mut self, now: Instant, incoming: Incoming) {
        match incoming {
            Incoming::Ping(payload) => {
                let mask = self.mask();
                ws::encode(Opcode::Pong, &payload, mask, &mut self.outgoing);
            }
            Incoming::Pong => {}
            Incoming::Close(code) => {
                if matches!(self.state, State::Open) {
                    let mask = self.mask();
                    ws::encode_close(code.unwrap_or(1000), "", mask, &mut self.outgoing);
                    self.end(StreamEnd::Closed(code));
                } else {
                    self.state = State::Done;
                }
            }
            Incoming::Text(text) if matches!(self.state, State::Open) => {
                let parsed = match self.config.protocol {
                    Protocol::Twilio => twilio::parse(&text),
                    Protocol::L16 { .. } => parse_l16_control(&text),
                };
                match parsed {
                    Ok(message) => self.take_message(now, message),
                    Err(e) => self.bad_message(&e),
                }
            }
            Incoming::Binary(bytes) if matches!(self.state, State::Open) => {
                match self.config.protocol {
                    Protocol::L16 { rate } => {
                        let ulaw = l16_to_ulaw(&bytes, rate);
                        self.take_message(now, FromAgent::Media(ulaw));
                    }
                    Protocol::Twilio => {
                        self.bad_message(&BadMessage::Malformed("a binary frame".into()));
                    }
                }
            }
            Incoming::Text(_) | Incoming::Binary(_) => {}
        }
    }

    fn bad_message(&mut self, e: &BadMessage) {
        self.stats.bad_messages += 1;
        if self.stats.bad_messages <= u64::from(BAD_REPORTS) {
            self.events
                .push_back(StreamEvent::BadMessage(e.to_string()));
        }
    }

    fn take_message(&mut self, now: Instant, message: FromAgent) {
        match message {
            FromAgent::Media(audio) => {
                self.stats.received_messages += 1;
                let dropped = self.playout.push_audio(now, &audio);
                if dropped > 0 && !self.overflow_reported {
                    self.overflow_reported = true;
                    self.events.push_back(StreamEvent::Overflow {
                        dropped_ms: dropped as u64 / 8,
                    });
                }
            }
            FromAgent::Mark(name) => {
                if let Some(name) = self.playout.push_mark(name) {
                    self.echo_mark(&name);
                }
            }
            FromAgent::Clear => {
                let mut echoed = std::mem::take(&mut self.echoed);
                self.playout.clear(&mut echoed);
                for name in echoed.drain(..) {
                    self.echo_mark(&name);
                }
                self.echoed = echoed;
            }
        }
    }

    fn echo_mark(&mut self, name: &str) {
        let text = match self.config.protocol {
            Protocol::Twilio => self.writer.mark(name),
            Protocol::L16 { .. } => serde_json::json!({"event": "mark", "name": name}).to_string(),
        };
        self.send_text(&text);
    }

    /// The call's audio (µ-law, one packet's worth) with its RTP timestamp:
    /// on to the agent while the stream is open.
    pub fn audio(&mut self, ulaw: &[u8], rtp_timestamp: u32) {
        if !matches!(self.state, State::Open) {
            return;
        }
        let first = *self.first_ts.get_or_insert(rtp_timestamp);
        let ms = u64::from(rtp_timestamp.wrapping_sub(first)) / 8;
        self.stats.sent_frames += 1;
        match self.config.protocol {
            Protocol::Twilio => {
                let mut text = std::mem::take(&mut self.text);
                self.writer.media(ms, ulaw, &mut text);
                self.send_text(&text);
                self.text = text;
            }
            Protocol::L16 { rate } => {
                let pcm = ulaw_to_l16(ulaw, rate);
                let mask = self.mask();
                ws::encode(Opcode::Binary, &pcm, mask, &mut self.outgoing);
                self.check_backlog();
            }
        }
    }

    /// A digit the caller pressed.
    pub fn dtmf(&mut self, digit: char) {
        if !matches!(self.state, State::Open) {
            return;
        }
        let text = match self.config.protocol {
            Protocol::Twilio => self.writer.dtmf(digit),
            Protocol::L16 { .. } => {
                serde_json::json!({"event": "dtmf", "digit": digit.to_string()}).to_string()
            }
        };
        self.send_text(&text);
    }

    /// The next frame toward the call, if one is due at `now`: true with
    /// `frame` filled (agent audio or silence).
    pub fn next_frame(&mut self, now: Instant, frame: &mut [u8; FRAME]) -> bool {
        if now < self.next_frame {
            return false;
        }
        self.next_frame += PTIME;
        if self.next_frame + PTIME * 5 < now {
            // After a stall: restart the cadence rather than burst.
            self.next_frame = now + PTIME;
        }
        let mut echoed = std::mem::take(&mut self.echoed);
        let played = self
            .playout
            .next_frame(now, frame, g711::Law::Mu.silence(), &mut echoed);
        self.stats.played_frames += u64::from(played);
        for name in echoed.drain(..) {
            self.echo_mark(&name);
        }
        self.echoed = echoed;
        true
    }

    /// The next deadline: a frame, a ping, the connect or close deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut at = self.next_frame;
        match self.state {
            State::Connecting | State::Upgrading(..) => {
                at = at.min(self.created + self.config.connect_timeout);
            }
            State::Open => {
                if let Some(ping) = self.next_ping {
                    at = at.min(ping);
                }
                at = at.min(self.last_heard + self.config.ping_interval * 2);
            }
            State::Closing(until) => at = at.min(until),
            State::Done => {}
        }
        Some(at)
    }

    /// Runs the deadlines due at `now` (frames are taken with
    /// [`AgentStream::next_frame`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Connecting | State::Upgrading(..)
                if now >= self.created + self.config.connect_timeout =>
            {
                self.end(StreamEnd::ConnectTimeout);
            }
            State::Open => {
                if now >= self.last_heard + self.config.ping_interval * 2 {
                    self.end(StreamEnd::Silent);
                    return;
                }
                if self.next_ping.is_some_and(|at| now >= at) {
                    let mask = self.mask();
                    ws::encode(Opcode::Ping, b"dialerd", mask, &mut self.outgoing);
                    self.next_ping = Some(now + self.config.ping_interval);
                }
            }
            State::Closing(until) if now >= until => self.state = State::Done,
            _ => {}
        }
    }

    /// Ends the stream from our side: `stop` and a close frame when open.
    pub fn stop(&mut self, now: Instant) {
        match self.state {
            State::Open => {
                if self.config.protocol == Protocol::Twilio {
                    let stop = self.writer.stop();
                    self.send_text(&stop);
                } else {
                    self.send_text(r#"{"event":"stop"}"#);
                }
                let mask = self.mask();
                ws::encode_close(1000, "call ended", mask, &mut self.outgoing);
                self.state = State::Closing(now + CLOSE_WAIT);
            }
            State::Closing(_) | State::Done => {}
            State::Connecting | State::Upgrading(..) => self.state = State::Done,
        }
    }

    /// The next report.
    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }
}

/// The L16 protocol's control messages from the agent: `mark` (`name`) and
/// `clear`.
fn parse_l16_control(text: &str) -> Result<FromAgent, BadMessage> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| BadMessage::Malformed(e.to_string()))?;
    match value.get("event").and_then(|e| e.as_str()) {
        Some("mark") => value
            .get("name")
            .and_then(|n| n.as_str())
            .map(|n| FromAgent::Mark(n.to_owned()))
            .ok_or_else(|| BadMessage::Malformed("mark without a name".into())),
        Some("clear") => Ok(FromAgent::Clear),
        Some(other) => Err(BadMessage::UnknownEvent(other.chars().take(40).collect())),
        None => Err(BadMessage::Malformed("no event".into())),
    }
}

/// µ-law at 8 kHz to 16-bit little-endian PCM at `rate` (8 or 16 kHz; 16
/// kHz by linear interpolation).
pub fn ulaw_to_l16(ulaw: &[u8], rate: u32) -> Vec<u8> {
    let samples = ulaw.iter().map(|&u| g711::ulaw_to_linear(u));
    if rate == 16_000 {
        let mut out = Vec::with_capacity(ulaw.len() * 4);
        let mut previous: Option<i16> = None;
        for s in samples {
            let p = previous.unwrap_or(s);
            let mid = ((i32::from(p) + i32::from(s)) / 2) as i16;
            out.extend_from_slice(&mid.to_le_bytes());
            out.extend_from_slice(&s.to_le_bytes());
            previous = Some(s);
        }
        out
    } else {
        samples.flat_map(i16::to_le_bytes).collect()
    }
}

/// 16-bit little-endian PCM at `rate` (8 or 16 kHz; 16 kHz averaged down
/// in pairs) to µ-law at 8 kHz. A trailing odd byte is ignored.
pub fn l16_to_ulaw(pcm: &[u8], rate: u32) -> Vec<u8> {
    let samples = pcm.chunks_exact(2).map(|b| {
        i16::from_le_bytes([
            b.first().copied().unwrap_or(0),
            b.get(1).copied().unwrap_or(0),
        ])
    });
    if rate == 16_000 {
        let all: Vec<i16> = samples.collect();
        all.chunks(2)
            .map(|pair| {
                let sum: i32 = pair.iter().map(|&s| i32::from(s)).sum();
                g711::linear_to_ulaw((sum / pair.len().max(1) as i32) as i16)
            })
            .collect()
    } else {
        samples.map(g711::linear_to_ulaw).collect()
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
