//! A sans-IO WebSocket client (RFC 6455): the opening handshake, and the
//! framing of what the client sends (masked) and the server sends (not
//! masked), with fragmented messages reassembled and every size bounded.
//!
//! Nothing here reads a socket or a clock; the masking keys come from the
//! caller.

use crate::base64;

/// The GUID of RFC 6455 §1.3.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Longest response head the handshake accepts.
const MAX_HEAD: usize = 16 * 1024;

/// Why a WebSocket failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// The server answered the upgrade with another status.
    #[error("the server refused the WebSocket upgrade: HTTP {0}")]
    Refused(u16),
    /// The upgrade response is not a valid WebSocket handshake.
    #[error("bad WebSocket handshake: {0}")]
    Handshake(&'static str),
    /// A frame broke the protocol.
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// A message is larger than the limit.
    #[error("WebSocket message of {0} bytes is over the limit")]
    TooBig(u64),
    /// A text message is not UTF-8.
    #[error("WebSocket text message is not UTF-8")]
    NotUtf8,
}

impl WsError {
    /// The close code that says this to the server (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::TooBig(_) => 1009,
            WsError::NotUtf8 => 1007,
            _ => 1002,
        }
    }
}

/// The opening handshake of one connection.
#[derive(Debug, Clone)]
pub struct Handshake {
    accept: String,
}

impl Handshake {
    /// The upgrade request for `path` (with its query) on `host` (the Host
    /// header: name and, if not the default, port), with `nonce` (16 random
    /// bytes) as the key and `headers` added; returns the handshake and the
    /// request bytes.
    pub fn request(
        host: &str,
        path: &str,
        nonce: [u8; 16],
        headers: &[(String, String)],
    ) -> (Handshake, Vec<u8>) {
        let key = base64::encode(&nonce);
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: dialerd/{}\r\n",
            env!("CARGO_PKG_VERSION")
        );
        for (name, value) in headers {
            request.push_str(name);
            request.push_str(": ");
            request.push_str(value);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        (
            Handshake {
                accept: accept_for(&key),
            },
            request.into_bytes(),
        )
    }

    /// Checks the server's response in `buf`: `Ok(None)` until its head is
    /// complete, then how many bytes of `buf` it took (frames may follow).
    pub fn response(&self, buf: &[u8]) -> Result<Option<usize>, WsError> {
        let Some(end) = find(buf, b"\r\n\r\n") else {
            if buf.len() > MAX_HEAD {
                return Err(WsError::Handshake("response head too long"));
            }
            return Ok(None);
        };
        let head = std::str::from_utf8(buf.get(..end).unwrap_or_default())
            .map_err(|_| WsError::Handshake("response head is not text"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.split(' ');
        let version = parts.next().unwrap_or_default();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or(WsError::Handshake("no status line"))?;
        if !version.starts_with("HTTP/1.") {
            return Err(WsError::Handshake("not an HTTP/1.1 response"));
        }
        if status != 101 {
            return Err(WsError::Refused(status));
        }
        let (mut upgrade, mut connection, mut accept) = (false, false, None);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("upgrade") {
                upgrade = value.eq_ignore_ascii_case("websocket");
            } else if name.eq_ignore_ascii_case("connection") {
                connection = value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
            } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
                accept = Some(value);
            }
        }
        if !upgrade || !connection {
            return Err(WsError::Handshake("no Upgrade: websocket"));
        }
        if accept != Some(self.accept.as_str()) {
            return Err(WsError::Handshake("wrong Sec-WebSocket-Accept"));
        }
        Ok(Some(end + 4))
    }
}

/// The `Sec-WebSocket-Accept` a server answers `key` with.
pub fn accept_for(key: &str) -> String {
    let mut input = String::with_capacity(key.len() + GUID.len());
    input.push_str(key);
    input.push_str(GUID);
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, input.as_bytes());
    base64::encode(digest.as_ref())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// The next fragment of a message.
    Continuation,
    /// A UTF-8 message.
    Text,
    /// A binary message.
    Binary,
    /// The closing handshake.
    Close,
    /// A ping.
    Ping,
    /// A pong.
    Pong,
}

impl Opcode {
    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0,
            Opcode::Text => 1,
            Opcode::Binary => 2,
            Opcode::Close => 8,
            Opcode::Ping => 9,
            Opcode::Pong => 10,
        }
    }

    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }
}

/// Appends one client frame (final, masked with `mask`) to `out`.
pub fn encode(opcode: Opcode, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | opcode.bits());
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(
        payload
            .iter()
            .zip(mask.iter().cycle())
            .map(|(byte, key)| byte ^ key),
    );
}

/// Appends a close frame with `code` and `reason` to `out`.
pub fn encode_close(code: u16, reason: &str, mask: [u8; 4], out: &mut Vec<u8>) {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(
        reason
            .as_bytes()
            .get(..reason.len().min(120))
            .unwrap_or_default(),
    );
    encode(Opcode::Close, &payload, mask, out);
}

/// A whole message or control frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A ping (answer with a pong carrying the payload).
    Ping(Vec<u8>),
    /// A pong.
    Pong,
    /// The server closes, with its code if it gave one.
    Close(Option<u16>),
}

/// Reassembles the server's frames into messages.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    message: Vec<u8>,
    message_kind: Option<Opcode>,
    max_message: usize,
}

impl Decoder {
    /// A decoder refusing messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            message: Vec::new(),
            message_kind: None,
            max_message,
        }
    }

    /// Bytes received and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.message.len()
    }

    /// Takes received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole message or control frame, `Ok(None)` until one is
    /// complete. An error ends the connection.
    pub fn next_message(&mut self) -> Result<Option<Incoming>, WsError> {
        loop {
            let Some(frame) = self.frame()? else {
                return Ok(None);
            };
            if let Some(incoming) = frame {
                return Ok(Some(incoming));
            }
        }
    }

    /// Decodes one frame: `Ok(None)` if incomplete, `Ok(Some(None))` for a
    /// fragment that does not finish a message.
    #[allow(clippy::type_complexity)]
    fn frame(&mut self) -> Result<Option<Option<Incoming>>, WsError> {
        let (Some(&b0), Some(&b1)) = (self.buf.first(), self.buf.get(1)) else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        if b1 & 0x80 != 0 {
            return Err(WsError::Protocol("a server frame is masked"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(WsError::Protocol("unknown opcode"))?;
        let (len, header) = match b1 & 0x7F {
            126 => match self.buf.get(2..4).and_then(|b| <[u8; 2]>::try_from(b).ok()) {
                Some(b) => (u64::from(u16::from_be_bytes(b)), 4),
                None => return Ok(None),
            },
            127 => match self
                .buf
                .get(2..10)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
            {
                Some(b) => (u64::from_be_bytes(b), 10),
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        let control = matches!(opcode, Opcode::Close | Opcode::Ping | Opcode::Pong);
        if control && (len > 125 || !fin) {
            return Err(WsError::Protocol("bad control frame"));
        }
        let total = (self.message.len() as u64).saturating_add(len);
        if total > self.max_message as u64 {
            return Err(WsError::TooBig(total));
        }
        let len = usize::try_from(len).map_err(|_| WsError::TooBig(len))?;
        let Some(payload) = self.buf.get(header..header + len) else {
            return Ok(None);
        };
        let incoming = match opcode {
            Opcode::Ping => Some(Incoming::Ping(payload.to_vec())),
            Opcode::Pong => Some(Incoming::Pong),
            Opcode::Close => Some(Incoming::Close(
                payload
                    .get(..2)
                    .and_then(|c| <[u8; 2]>::try_from(c).ok())
                    .map(u16::from_be_bytes),
            )),
            Opcode::Text | Opcode::Binary => {
                if self.message_kind.is_some() {
                    return Err(WsError::Protocol("a new message inside a fragmented one"));
                }
                if fin {
                    Some(message(opcode, payload.to_vec())?)
                } else {
                    self.message_kind = Some(opcode);
                    self.message.extend_from_slice(payload);
                    None
                }
            }
            Opcode::Continuation => {
                let kind = self
                    .message_kind
                    .ok_or(WsError::Protocol("a continuation with no message"))?;
                self.message.extend_from_slice(payload);
                if fin {
                    self.message_kind = None;
                    Some(message(kind, std::mem::take(&mut self.message))?)
                } else {
                    None
                }
            }
        };
        self.buf.drain(..header + len);
        Ok(Some(incoming))
    }
}

fn message(kind: Opcode, payload: Vec<u8>) -> Result<Incoming, WsError> {
    if kind == Opcode::Text {
        String::from_utf8(payload)
            .map(Incoming::Text)
            .map_err(|_| WsError::NotUtf8)
    } else {
        Ok(Incoming::Binary(payload))
    }
}

#[cfg(test)]
#[path = "ws_tests.rs"]
mod tests;
