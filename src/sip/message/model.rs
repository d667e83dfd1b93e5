//! A parsed SIP message: the bytes it arrived as, its start line, header
//! fields located by byte ranges, and the body, all without copies.

use std::borrow::Cow;

use bytes::Bytes;
use bytestring::ByteString;

use super::header::{HEADER_NAMES, HeaderName};
use super::lex;
use super::method::Method;
use super::parse::{self, BodyProblem, Field, FrameError, Framing, Limits, StartLine};

/// A parsed SIP request or response.
#[derive(Debug, Clone)]
pub struct Message {
    raw: Bytes,
    head: ByteString,
    body: Bytes,
    start: StartLine,
    fields: Vec<Field>,
    counts: [u8; HEADER_NAMES],
    pub(crate) body_problem: Option<BodyProblem>,
}

/// One header field as it appears in the message.
#[derive(Debug, Clone, Copy)]
pub struct HeaderRef<'a> {
    /// The known name, or [`HeaderName::Other`].
    pub name: HeaderName,
    /// The name as written.
    pub raw_name: &'a str,
    /// The value as written, trimmed; a folded value keeps its CRLF + WS.
    pub raw_value: &'a str,
    /// Whether the value spans continuation lines.
    pub folded: bool,
}

impl<'a> HeaderRef<'a> {
    /// The value with each fold replaced by one space.
    pub fn value(&self) -> Cow<'a, str> {
        if self.folded {
            Cow::Owned(unfold(self.raw_value))
        } else {
            Cow::Borrowed(self.raw_value)
        }
    }
}

fn unfold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("\r\n") {
        out.push_str(rest[..i].trim_end_matches([' ', '\t']));
        out.push(' ');
        rest = rest[i + 2..].trim_start_matches([' ', '\t']);
    }
    out.push_str(rest);
    out
}

impl Message {
    /// Parses one message. `data` is a whole datagram, or one message cut
    /// from a stream by the framer.
    pub fn parse(data: Bytes, framing: Framing, limits: &Limits) -> Result<Self, FrameError> {
        let parts = parse::split(&data, framing, limits)?;
        Ok(Self {
            raw: data,
            head: parts.head,
            body: parts.body,
            start: parts.start,
            fields: parts.fields,
            counts: parts.counts,
            body_problem: parts.body_problem,
        })
    }

    /// Parses a datagram with default limits.
    pub fn parse_datagram(data: impl Into<Bytes>) -> Result<Self, FrameError> {
        Self::parse(data.into(), Framing::Datagram, &Limits::default())
    }

    /// The bytes the message arrived as (a datagram may hold more after the body).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The body, exactly Content-Length bytes when that header is valid.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The method of a request.
    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The method token of a request as written.
    pub fn method_str(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method_span, .. } => Some(method_span.of(&self.head)),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI as written.
    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri.of(&self.head)),
            StartLine::Response { .. } => None,
        }
    }

    /// The SIP-Version of the start line as written.
    pub fn version(&self) -> &str {
        match &self.start {
            StartLine::Request { version, .. } | StartLine::Response { version, .. } => {
                version.of(&self.head)
            }
        }
    }

    /// The status code of a response; `None` for a request or a code that
    /// is not three digits of 100..=699.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => {
                let c = code.of(&self.head);
                (c.len() == 3)
                    .then(|| c.parse::<u16>().ok())
                    .flatten()
                    .filter(|n| (100..=699).contains(n))
            }
            StartLine::Request { .. } => None,
        }
    }

    /// The status code as written (for diagnostics of a bad one).
    pub fn status_str(&self) -> Option<&str> {
        match &self.start {
            StartLine::Response { code, .. } => Some(code.of(&self.head)),
            StartLine::Request { .. } => None,
        }
    }

    /// The reason phrase of a response.
    pub fn reason(&self) -> Option<&str> {
        match &self.start {
            StartLine::Response { reason, .. } => Some(reason.of(&self.head)),
            StartLine::Request { .. } => None,
        }
    }

    /// Every header field in order.
    pub fn headers(&self) -> impl Iterator<Item = HeaderRef<'_>> {
        self.fields.iter().map(|f| self.field(f))
    }

    fn field(&self, f: &Field) -> HeaderRef<'_> {
        HeaderRef {
            name: f.name,
            raw_name: f.name_span.of(&self.head),
            raw_value: f.value.of(&self.head),
            folded: f.folded,
        }
    }

    /// Raw values of every field with a known `name`, in order.
    pub fn values(&self, name: HeaderName) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(move |f| f.name == name)
            .map(|f| f.value.of(&self.head))
    }

    /// Raw value of the first field with a known `name`.
    pub fn value(&self, name: HeaderName) -> Option<&str> {
        self.values(name).next()
    }

    /// How many fields carry `name` (saturating at 255).
    pub fn count(&self, name: HeaderName) -> usize {
        self.counts
            .get(name as usize)
            .copied()
            .map_or(0, usize::from)
    }

    /// Fields with any name, matched case-insensitively as written (for
    /// extension headers).
    pub fn values_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = HeaderRef<'a>> {
        self.headers()
            .filter(move |h| h.raw_name.eq_ignore_ascii_case(name))
    }

    /// The Call-ID.
    pub fn call_id(&self) -> Option<&str> {
        self.value(HeaderName::CallId).map(lex::trim)
    }
}
