//! Outgoing messages: a small owned builder and its serializer, and the
//! response a UAS builds from a request (RFC 3261 §8.2.6).

use std::fmt::Write as _;
use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};

use super::header::HeaderName;
use super::model::Message;

/// An outgoing request or response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    start: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

/// Replaces CR and LF so that no value can inject a header line.
fn clean(value: &str) -> String {
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        value.replace(['\r', '\n'], " ")
    } else {
        value.to_owned()
    }
}

impl OutMessage {
    /// A request `METHOD uri SIP/2.0`.
    pub fn request(method: &str, uri: &str) -> Self {
        Self {
            start: format!("{} {} SIP/2.0", clean(method), clean(uri)),
            headers: Vec::with_capacity(12),
            body: Bytes::new(),
        }
    }

    /// A response `SIP/2.0 code reason`.
    pub fn response(code: u16, reason: &str) -> Self {
        Self {
            start: format!("SIP/2.0 {code} {}", clean(reason)),
            headers: Vec::with_capacity(12),
            body: Bytes::new(),
        }
    }

    /// Appends a header (CR/LF in the value become spaces). Content-Length
    /// is always computed by [`OutMessage::encode`] and cannot be set.
    pub fn header(mut self, name: &str, value: impl AsRef<str>) -> Self {
        self.push(name, value);
        self
    }

    /// Appends a header in place.
    pub fn push(&mut self, name: &str, value: impl AsRef<str>) {
        if HeaderName::from_name(name) == HeaderName::ContentLength {
            return;
        }
        self.headers.push((clean(name), clean(value.as_ref())));
    }

    /// Inserts a header above all others (a Via added by the stack).
    pub fn prepend(&mut self, name: &str, value: impl AsRef<str>) {
        self.headers.insert(0, (clean(name), clean(value.as_ref())));
    }

    /// Sets the body and its Content-Type.
    pub fn body(mut self, content_type: &str, body: impl Into<Bytes>) -> Self {
        self.push("Content-Type", content_type);
        self.body = body.into();
        self
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&str> {
        self.request_line().map(|(m, _)| m)
    }

    /// The Request-URI of a request.
    pub fn request_uri(&self) -> Option<&str> {
        self.request_line().map(|(_, u)| u)
    }

    fn request_line(&self) -> Option<(&str, &str)> {
        let line = self.start.strip_suffix(" SIP/2.0")?;
        line.split_once(' ')
    }

    /// Removes every header `name`; returns the first value removed.
    pub fn remove_header(&mut self, name: &str) -> Option<String> {
        let mut first = None;
        self.headers.retain(|(n, v)| {
            if n.eq_ignore_ascii_case(name) {
                if first.is_none() {
                    first = Some(v.clone());
                }
                false
            } else {
                true
            }
        });
        first
    }

    /// Replaces the value of every header `name` with `f(value)`.
    pub fn map_header(&mut self, name: &str, f: impl Fn(&str) -> String) {
        for (n, v) in &mut self.headers {
            if n.eq_ignore_ascii_case(name) {
                *v = clean(&f(v));
            }
        }
    }

    /// Headers in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Serializes with a computed Content-Length.
    pub fn encode(&self) -> Bytes {
        let size = self.start.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 4)
                .sum::<usize>()
            + 24
            + self.body.len();
        let mut out = BytesMut::with_capacity(size);
        out.put_slice(self.start.as_bytes());
        out.put_slice(b"\r\n");
        for (name, value) in &self.headers {
            out.put_slice(name.as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        let mut length = String::with_capacity(24);
        let _ = write!(length, "Content-Length: {}\r\n\r\n", self.body.len());
        out.put_slice(length.as_bytes());
        out.put_slice(&self.body);
        out.freeze()
    }

    /// The response to `request` (RFC 3261 §8.2.6.2): every Via in order
    /// (the top one with `received`/`rport` from `source`, RFC 3581), From,
    /// To (with `to_tag` added when it has none and the code is above 100),
    /// Call-ID, CSeq, and Timestamp on a 100.
    pub fn response_to(
        request: &Message,
        code: u16,
        reason: &str,
        to_tag: Option<&str>,
        source: Option<SocketAddr>,
    ) -> Self {
        let mut out = Self::response(code, reason);
        let mut first = true;
        for h in request.headers() {
            match h.name {
                HeaderName::Via => {
                    let value = h.value();
                    if first {
                        first = false;
                        out.push("Via", annotate_via(&value, source));
                    } else {
                        out.push("Via", value);
                    }
                }
                HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                    out.push(h.name.canonical().unwrap_or(h.raw_name), h.value());
                }
                HeaderName::To => {
                    let value = h.value();
                    let has_tag = request.to_header().is_ok_and(|t| t.tag().is_some());
                    match to_tag {
                        Some(tag) if code > 100 && !has_tag => {
                            out.push("To", format!("{value};tag={tag}"));
                        }
                        _ => out.push("To", value),
                    }
                }
                HeaderName::Timestamp if code == 100 => out.push("Timestamp", h.value()),
                _ => {}
            }
        }
        out
    }
}

/// Adds `received` (when the source address differs from sent-by) and fills
/// a valueless `rport` on the first entry of a Via value (RFC 3261 §18.2.1,
/// RFC 3581 §4).
fn annotate_via(value: &str, source: Option<SocketAddr>) -> String {
    let Some(source) = source else {
        return value.to_owned();
    };
    let (first, rest) = match super::lex::split_list(value).next() {
        Some(first) if first.len() < value.len() => {
            let idx = value.find(first).map_or(0, |i| i + first.len());
            (first, &value[idx..])
        }
        _ => (value, ""),
    };
    let Ok(via) = super::typed::Via::parse(first) else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(first.len() + 40);
    let source_ip = source.ip();
    let needs_received = via.host.ip() != Some(source_ip) || via.rport().is_some();
    for part in first.split(';') {
        let p = part.trim();
        if p.eq_ignore_ascii_case("rport") {
            let _ = write!(out, ";rport={}", source.port());
            continue;
        }
        if !out.is_empty() {
            out.push(';');
        }
        out.push_str(part);
    }
    if needs_received && via.received().is_none() {
        let _ = write!(out, ";received={source_ip}");
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_annotation() {
        let src: SocketAddr = "192.0.2.9:40000".parse().unwrap();
        assert_eq!(
            annotate_via(
                "SIP/2.0/UDP pc.example.com;branch=z9hG4bK1;rport",
                Some(src)
            ),
            "SIP/2.0/UDP pc.example.com;branch=z9hG4bK1;rport=40000;received=192.0.2.9"
        );
        assert_eq!(
            annotate_via("SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK1", Some(src)),
            "SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK1"
        );
        assert_eq!(
            annotate_via("SIP/2.0/UDP a;branch=1, SIP/2.0/UDP b;branch=2", Some(src)),
            "SIP/2.0/UDP a;branch=1;received=192.0.2.9, SIP/2.0/UDP b;branch=2"
        );
    }

    #[test]
    fn builder_refuses_injection_and_sets_length() {
        let m = OutMessage::request("OPTIONS", "sip:a@b")
            .header("Subject", "x\r\nVia: evil")
            .header("Content-Length", "999")
            .body("text/plain", "hi");
        let text = String::from_utf8(m.encode().to_vec()).unwrap();
        assert_eq!(
            text,
            "OPTIONS sip:a@b SIP/2.0\r\nSubject: x  Via: evil\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        );
    }
}
