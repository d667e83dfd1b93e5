//! Cuts a TCP/TLS byte stream into SIP messages by Content-Length, and
//! recognises RFC 5626 §4.4.1 keepalives (CRLF CRLF ping, CRLF pong).
//! Sans-IO: bytes in, frames out.

use bytes::{Bytes, BytesMut};

/// One unit read from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete message (header section and Content-Length bytes of body).
    Message(Bytes),
    /// A CRLF CRLF keepalive ping; answer with a pong.
    Ping,
    /// A CRLF keepalive pong.
    Pong,
}

/// Why the stream cannot be framed any more; the connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramerError {
    /// No end of headers within the message size limit.
    #[error("header section larger than {0} bytes")]
    HeadTooLarge(usize),
    /// Content-Length would make the message larger than the limit.
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    /// Content-Length is not a number.
    #[error("malformed Content-Length")]
    BadContentLength,
}

/// Stream framer with a message size cap.
#[derive(Debug)]
pub struct Framer {
    buf: BytesMut,
    max_message: usize,
    expect_pong: bool,
}

impl Framer {
    /// A framer that refuses messages above `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(4096),
            max_message,
            expect_pong: false,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet framed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Tells the framer that a ping was sent, so a lone CRLF is a pong even
    /// when nothing follows it.
    pub fn expect_pong(&mut self, expect: bool) {
        self.expect_pong = expect;
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FramerError> {
        if self.buf.starts_with(b"\r\n\r\n") {
            let _ = self.buf.split_to(4);
            return Ok(Some(Frame::Ping));
        }
        if self.buf.starts_with(b"\r\n") {
            let lone =
                self.buf.len() == 2 || (self.buf.len() == 3 && self.buf.get(2) == Some(&b'\r'));
            if lone && !self.expect_pong {
                // Maybe the first half of a ping: wait for more.
                return Ok(None);
            }
            let _ = self.buf.split_to(2);
            self.expect_pong = false;
            return Ok(Some(Frame::Pong));
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let Some(head) = crate::sip::message::head_len(&self.buf) else {
            if self.buf.len() > self.max_message {
                return Err(FramerError::HeadTooLarge(self.max_message));
            }
            return Ok(None);
        };
        // A missing Content-Length frames as an empty body; validation then
        // answers 400 (Content-Length is mandatory on streams).
        let body = content_length(self.buf.get(..head).unwrap_or_default())?.unwrap_or(0);
        let total = head
            .checked_add(body)
            .ok_or(FramerError::TooLarge(self.max_message))?;
        if total > self.max_message {
            return Err(FramerError::TooLarge(self.max_message));
        }
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        Ok(Some(Frame::Message(self.buf.split_to(total).freeze())))
    }
}

/// The Content-Length (or `l`) value of a header section, if present.
fn content_length(head: &[u8]) -> Result<Option<usize>, FramerError> {
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = trim_ascii(line.get(..colon).unwrap_or_default());
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let value = trim_ascii(line.get(colon + 1..).unwrap_or_default());
            let text = std::str::from_utf8(value).map_err(|_| FramerError::BadContentLength)?;
            return crate::sip::message::lex::parse_u64(text, u64::from(u32::MAX))
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or(FramerError::BadContentLength);
        }
    }
    Ok(None)
}

fn trim_ascii(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nl: 5\r\nVia: x\r\n\r\nhello";

    #[test]
    fn frames_messages_split_anywhere() {
        let mut stream = Vec::new();
        stream.extend_from_slice(MSG);
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(MSG);
        for chunk in 1..stream.len() {
            let mut f = Framer::new(65_535);
            let mut frames = Vec::new();
            for piece in stream.chunks(chunk) {
                f.push(piece);
                while let Some(frame) = f.next_frame().unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(
                frames,
                [
                    Frame::Message(Bytes::from_static(MSG)),
                    Frame::Ping,
                    Frame::Message(Bytes::from_static(MSG))
                ],
                "chunk size {chunk}"
            );
            assert_eq!(f.buffered(), 0);
        }
    }

    #[test]
    fn pong_after_ping_sent() {
        let mut f = Framer::new(1000);
        f.push(b"\r\n");
        assert_eq!(f.next_frame().unwrap(), None, "could be half a ping");
        f.expect_pong(true);
        assert_eq!(f.next_frame().unwrap(), Some(Frame::Pong));
        f.push(b"\r\nOPTIONS");
        assert_eq!(
            f.next_frame().unwrap(),
            Some(Frame::Pong),
            "CRLF before a message"
        );
    }

    #[test]
    fn limits_and_bad_lengths() {
        let mut f = Framer::new(64);
        f.push(&[b'a'; 65]);
        assert_eq!(f.next_frame(), Err(FramerError::HeadTooLarge(64)));
        let mut f = Framer::new(100);
        f.push(b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 1000\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FramerError::TooLarge(100)));
        let mut f = Framer::new(100);
        f.push(b"OPTIONS sip:a SIP/2.0\r\nContent-Length: -1\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FramerError::BadContentLength));
        let mut f = Framer::new(100);
        f.push(b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n");
        assert!(
            matches!(f.next_frame(), Ok(Some(Frame::Message(_)))),
            "missing length frames as empty body"
        );
    }
}
