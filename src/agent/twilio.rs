//! The Twilio Media Streams messages, as Twilio's public documentation
//! ("Media Streams - WebSocket Messages") specifies them: what the stream
//! sends (`connected`, `start`, `media`, `dtmf`, `mark`, `stop`; counters
//! as strings, `sequenceNumber` counting every message after `connected`)
//! and what the agent sends back (`media` of any size, `mark`, `clear`).

use serde::Deserialize;
use serde_json::{Value, json};

use crate::base64;

/// The ids a stream presents, in Twilio's shapes: `AC`, `CA` and `MZ`
/// followed by 32 lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamIds {
    /// The account (`AC…`).
    pub account_sid: String,
    /// The call (`CA…`).
    pub call_sid: String,
    /// The stream (`MZ…`).
    pub stream_sid: String,
}

impl StreamIds {
    /// An id of `prefix` and the hex of 16 bytes.
    pub fn sid(prefix: &str, bytes: &[u8; 16]) -> String {
        let mut s = String::with_capacity(34);
        s.push_str(prefix);
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// Writes the messages of one stream, numbering them.
#[derive(Debug)]
pub struct Writer {
    ids: StreamIds,
    sequence: u64,
    chunk: u64,
}

impl Writer {
    /// A writer for the stream `ids`.
    pub fn new(ids: StreamIds) -> Writer {
        Writer {
            ids,
            sequence: 0,
            chunk: 0,
        }
    }

    /// The stream's ids.
    pub fn ids(&self) -> &StreamIds {
        &self.ids
    }

    fn next_sequence(&mut self) -> String {
        self.sequence += 1;
        self.sequence.to_string()
    }

    /// `connected`: the first message, not numbered.
    pub fn connected(&self) -> String {
        json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string()
    }

    /// `start`, with the custom parameters the command gave.
    pub fn start(&mut self, custom: &[(String, String)]) -> String {
        let params: serde_json::Map<String, Value> = custom
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        json!({
            "event": "start",
            "sequenceNumber": self.next_sequence(),
            "start": {
                "accountSid": self.ids.account_sid,
                "streamSid": self.ids.stream_sid,
                "callSid": self.ids.call_sid,
                "tracks": ["inbound"],
                "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": self.ids.stream_sid,
        })
        .to_string()
    }

    /// `media`: one chunk of the call's audio (µ-law), `timestamp_ms`
    /// after the stream's start. Written without an intermediate value:
    /// it is the hot path.
    pub fn media(&mut self, timestamp_ms: u64, ulaw: &[u8], out: &mut String) {
        self.chunk += 1;
        self.sequence += 1;
        out.clear();
        out.push_str(r#"{"event":"media","sequenceNumber":""#);
        out.push_str(&self.sequence.to_string());
        out.push_str(r#"","media":{"track":"inbound","chunk":""#);
        out.push_str(&self.chunk.to_string());
        out.push_str(r#"","timestamp":""#);
        out.push_str(&timestamp_ms.to_string());
        out.push_str(r#"","payload":""#);
        base64::encode_into(ulaw, out);
        out.push_str(r#""},"streamSid":""#);
        out.push_str(&self.ids.stream_sid);
        out.push_str(r#""}"#);
    }

    /// `dtmf`: a digit the caller pressed.
    pub fn dtmf(&mut self, digit: char) -> String {
        json!({
            "event": "dtmf",
            "streamSid": self.ids.stream_sid,
            "sequenceNumber": self.next_sequence(),
            "dtmf": {"track": "inbound_track", "digit": digit.to_string()},
        })
        .to_string()
    }

    /// `mark`: the echo of the agent's mark, once its audio has played.
    pub fn mark(&mut self, name: &str) -> String {
        json!({
            "event": "mark",
            "sequenceNumber": self.next_sequence(),
            "streamSid": self.ids.stream_sid,
            "mark": {"name": name},
        })
        .to_string()
    }

    /// `stop`: the stream ends (the call ended or the stream was stopped).
    pub fn stop(&mut self) -> String {
        json!({
            "event": "stop",
            "sequenceNumber": self.next_sequence(),
            "streamSid": self.ids.stream_sid,
            "stop": {"accountSid": self.ids.account_sid, "callSid": self.ids.call_sid},
        })
        .to_string()
    }
}

/// A message from the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromAgent {
    /// Audio to play (µ-law bytes, any length).
    Media(Vec<u8>),
    /// A mark to echo once the audio before it has played.
    Mark(String),
    /// Drop the queued audio.
    Clear,
}

/// Why a message from the agent was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadMessage {
    /// Not JSON, or not the shape of its event.
    #[error("not a Media Streams message: {0}")]
    Malformed(String),
    /// An event the protocol does not have.
    #[error("unknown event {0:?}")]
    UnknownEvent(String),
    /// A media payload that is not base64.
    #[error("media payload is not base64")]
    Payload,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    media: Option<IncomingMedia<'a>>,
    #[serde(default)]
    mark: Option<IncomingMark>,
}

#[derive(Deserialize)]
struct IncomingMedia<'a> {
    #[serde(borrow)]
    payload: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct IncomingMark {
    name: String,
}

/// Parses one text message from the agent.
pub fn parse(text: &str) -> Result<FromAgent, BadMessage> {
    let m: Incoming<'_> =
        serde_json::from_str(text).map_err(|e| BadMessage::Malformed(e.to_string()))?;
    match &*m.event {
        "media" => {
            let media = m
                .media
                .ok_or_else(|| BadMessage::Malformed("media without a media object".into()))?;
            let mut audio = Vec::new();
            if !base64::decode_into(&media.payload, &mut audio) {
                return Err(BadMessage::Payload);
            }
            Ok(FromAgent::Media(audio))
        }
        "mark" => m
            .mark
            .map(|mark| FromAgent::Mark(mark.name))
            .ok_or_else(|| BadMessage::Malformed("mark without a name".into())),
        "clear" => Ok(FromAgent::Clear),
        other => Err(BadMessage::UnknownEvent(
            other.chars().take(40).collect::<String>(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> StreamIds {
        StreamIds {
            account_sid: StreamIds::sid("AC", &[0xab; 16]),
            call_sid: StreamIds::sid("CA", &[1; 16]),
            stream_sid: StreamIds::sid("MZ", &[0x10; 16]),
        }
    }

    #[test]
    fn messages_have_twilios_shapes_and_numbering() {
        let mut w = Writer::new(ids());
        assert_eq!(w.ids().account_sid, format!("AC{}", "ab".repeat(16)));
        let connected: Value = serde_json::from_str(&w.connected()).unwrap();
        assert_eq!(
            connected,
            json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        );
        let start: Value =
            serde_json::from_str(&w.start(&[("campaign".into(), "x".into())])).unwrap();
        assert_eq!(start["sequenceNumber"], "1");
        assert_eq!(start["start"]["callSid"], format!("CA{}", "01".repeat(16)));
        assert_eq!(start["start"]["customParameters"]["campaign"], "x");
        assert_eq!(start["start"]["mediaFormat"]["sampleRate"], 8000);
        let mut text = String::new();
        w.media(20, &[0xFF, 0x7F, 0x00], &mut text);
        let media: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            media,
            json!({"event": "media", "sequenceNumber": "2", "streamSid": w.ids().stream_sid,
                   "media": {"track": "inbound", "chunk": "1", "timestamp": "20", "payload": "/38A"}})
        );
        let dtmf: Value = serde_json::from_str(&w.dtmf('5')).unwrap();
        assert_eq!(dtmf["sequenceNumber"], "3");
        assert_eq!(
            dtmf["dtmf"],
            json!({"track": "inbound_track", "digit": "5"})
        );
        let mark: Value = serde_json::from_str(&w.mark("m1")).unwrap();
        assert_eq!(mark["mark"]["name"], "m1");
        let stop: Value = serde_json::from_str(&w.stop()).unwrap();
        assert_eq!(stop["sequenceNumber"], "5");
        assert_eq!(stop["stop"]["callSid"], w.ids().call_sid);
    }

    #[test]
    fn the_agents_messages_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse(r#"{"event":"media","streamSid":"MZ1","media":{"payload":"/38A"}}"#),
            Ok(FromAgent::Media(vec![0xFF, 0x7F, 0x00]))
        );
        assert_eq!(
            parse(r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"greeting"}}"#),
            Ok(FromAgent::Mark("greeting".into()))
        );
        assert_eq!(
            parse(r#"{"event":"clear","streamSid":"MZ1"}"#),
            Ok(FromAgent::Clear)
        );
        assert!(matches!(parse("{not json"), Err(BadMessage::Malformed(_))));
        assert!(matches!(
            parse(r#"{"event":"dance"}"#),
            Err(BadMessage::UnknownEvent(e)) if e == "dance"
        ));
        assert_eq!(
            parse(r#"{"event":"media","media":{"payload":"!!!"}}"#),
            Err(BadMessage::Payload)
        );
        assert!(matches!(
            parse(r#"{"event":"mark"}"#),
            Err(BadMessage::Malformed(_))
        ));
    }
}
