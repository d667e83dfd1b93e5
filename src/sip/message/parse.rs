//! Structural parsing: start line, header lines (with folding), framing of
//! the body. Semantic checks live in `validate.rs`, typed header access in
//! `typed.rs`.

use bytes::Bytes;
use bytestring::ByteString;

use super::header::{HEADER_NAMES, HeaderName};
use super::lex;
use super::method::Method;

/// How the message arrived, which decides how its body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One UDP datagram: Content-Length optional, at most the datagram.
    Datagram,
    /// A stream (TCP/TLS) message already cut by the framer: Content-Length
    /// mandatory.
    Stream,
}

/// Caps that bound the work and memory spent on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message in bytes.
    pub max_message: usize,
    /// Most header lines.
    pub max_headers: usize,
    /// Longest line in bytes (a folded header counts each line).
    pub max_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message: 65_535,
            max_headers: 128,
            max_line: 8_192,
        }
    }
}

/// A message that cannot be taken apart at all; no response can be built,
/// so the transport counts and drops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Larger than [`Limits::max_message`].
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    /// No empty line ends the header section.
    #[error("header section not terminated by an empty line")]
    NoHeaderEnd,
    /// The header section is not UTF-8.
    #[error("header section is not UTF-8")]
    NotUtf8,
    /// A line does not end in CRLF.
    #[error("line not terminated by CRLF")]
    BareLineEnd,
    /// A line longer than [`Limits::max_line`].
    #[error("line longer than {0} bytes")]
    LineTooLong(usize),
    /// More header lines than [`Limits::max_headers`].
    #[error("more than {0} header lines")]
    TooManyHeaders(usize),
    /// Neither a request line nor a status line.
    #[error("malformed start line: {0}")]
    StartLine(&'static str),
    /// A header line without a colon or with an invalid name.
    #[error("malformed header line")]
    HeaderLine,
    /// A continuation line before any header.
    #[error("continuation line before the first header")]
    LeadingFold,
}

/// A byte range of the header section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Self {
        // The header section is capped well below 4 GiB by Limits.
        Self {
            start: u32::try_from(start).unwrap_or(u32::MAX),
            end: u32::try_from(end).unwrap_or(u32::MAX),
        }
    }

    pub(crate) fn of<'a>(&self, s: &'a str) -> &'a str {
        s.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }
}

/// The first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartLine {
    Request {
        method: Method,
        method_span: Span,
        uri: Span,
        version: Span,
    },
    Response {
        version: Span,
        code: Span,
        reason: Span,
    },
}

/// One header line (with its continuation lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    pub(crate) name: HeaderName,
    pub(crate) name_span: Span,
    pub(crate) value: Span,
    pub(crate) folded: bool,
}

/// What is wrong with the framing of the body, reported by validation so
/// that a 400 can still be built from the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyProblem {
    /// Content-Length is not a number.
    BadLength,
    /// Content-Length exceeds the bytes of the datagram.
    BeyondDatagram,
    /// More than one Content-Length header.
    Repeated,
    /// No Content-Length on a stream.
    Missing,
}

/// The parts found by [`split`].
pub(crate) struct Parts {
    pub(crate) head: ByteString,
    pub(crate) body: Bytes,
    pub(crate) start: StartLine,
    pub(crate) fields: Vec<Field>,
    pub(crate) counts: [u8; HEADER_NAMES],
    pub(crate) body_problem: Option<BodyProblem>,
}

/// Finds the end of the header section: the index just after CRLF CRLF.
pub fn head_len(data: &[u8]) -> Option<usize> {
    memchr::memmem::find(data, b"\r\n\r\n").map(|i| i + 4)
}

/// Splits `data` into start line, header fields and body.
pub(crate) fn split(data: &Bytes, framing: Framing, limits: &Limits) -> Result<Parts, FrameError> {
    if data.len() > limits.max_message {
        return Err(FrameError::TooLarge(limits.max_message));
    }
    // A datagram whose headers end with the datagram (no empty line, no
    // body) is accepted as if the empty line were there.
    let end = match head_len(data) {
        Some(end) => end,
        None if framing == Framing::Datagram && data.ends_with(b"\r\n") => data.len() + 2,
        None => return Err(FrameError::NoHeaderEnd),
    };
    // The head keeps the CRLF of its last line; the empty line is dropped.
    let head = ByteString::try_from(data.slice(..end - 2)).map_err(|_| FrameError::NotUtf8)?;
    let text: &str = &head;
    let mut fields: Vec<Field> = Vec::with_capacity(24);
    let mut counts = [0u8; HEADER_NAMES];
    let mut start = None;
    let mut content_length: Option<Span> = None;
    let mut repeated_length = false;
    let mut pos = 0;
    while pos < text.len() {
        let nl = memchr::memchr(b'\n', &text.as_bytes()[pos..])
            .map(|i| pos + i)
            .ok_or(FrameError::BareLineEnd)?;
        if nl == pos || text.as_bytes()[nl - 1] != b'\r' {
            return Err(FrameError::BareLineEnd);
        }
        let line_end = nl - 1;
        if line_end - pos > limits.max_line {
            return Err(FrameError::LineTooLong(limits.max_line));
        }
        let line = &text[pos..line_end];
        if start.is_none() {
            start = Some(start_line(line, pos)?);
        } else if line.starts_with([' ', '\t']) {
            let last = fields.last_mut().ok_or(FrameError::LeadingFold)?;
            if !lex::trim(line).is_empty() {
                let trailing = line.len() - line.trim_end_matches([' ', '\t']).len();
                last.value.end = Span::new(0, line_end - trailing).end;
                last.folded = true;
            }
        } else {
            if fields.len() >= limits.max_headers {
                return Err(FrameError::TooManyHeaders(limits.max_headers));
            }
            let (name_end, value_start, value_end) = header_line(line)?;
            let name = HeaderName::from_name(&line[..name_end]);
            let value = Span::new(pos + value_start, pos + value_end);
            let n = &mut counts[name as usize];
            *n = n.saturating_add(1);
            if name == HeaderName::ContentLength {
                repeated_length |= content_length.is_some();
                content_length = Some(value);
            }
            fields.push(Field {
                name,
                name_span: Span::new(pos, pos + name_end),
                value,
                folded: false,
            });
        }
        pos = nl + 1;
    }
    let start = start.ok_or(FrameError::StartLine("empty"))?;

    let rest = data.slice(end.min(data.len())..);
    let (body, body_problem) = frame_body(text, rest, content_length, repeated_length, framing);
    Ok(Parts {
        head,
        body,
        start,
        fields,
        counts,
        body_problem,
    })
}

fn frame_body(
    text: &str,
    rest: Bytes,
    content_length: Option<Span>,
    repeated: bool,
    framing: Framing,
) -> (Bytes, Option<BodyProblem>) {
    if repeated {
        return (rest, Some(BodyProblem::Repeated));
    }
    let Some(span) = content_length else {
        return match framing {
            Framing::Datagram => (rest, None),
            Framing::Stream => (Bytes::new(), Some(BodyProblem::Missing)),
        };
    };
    let value = lex::trim(span.of(text));
    match lex::parse_u64(value, u64::from(u32::MAX)).and_then(|n| usize::try_from(n).ok()) {
        None => (rest, Some(BodyProblem::BadLength)),
        Some(n) if n > rest.len() => (rest, Some(BodyProblem::BeyondDatagram)),
        // Bytes after Content-Length in a datagram are ignored (RFC 3261 §18.3).
        Some(n) => (rest.slice(..n), None),
    }
}

fn start_line(line: &str, offset: usize) -> Result<StartLine, FrameError> {
    let span = |a: usize, b: usize| Span::new(offset + a, offset + b);
    if line.len() > 4 && line[..4].eq_ignore_ascii_case("SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let sp1 = lex::find(line, b' ').ok_or(FrameError::StartLine("no status code"))?;
        let after = &line[sp1 + 1..];
        let sp2 = lex::find(after, b' ').unwrap_or(after.len());
        let code = &after[..sp2];
        if code.is_empty() || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FrameError::StartLine("status code is not a number"));
        }
        let reason_start = (sp1 + 1 + sp2 + 1).min(line.len());
        return Ok(StartLine::Response {
            version: span(0, sp1),
            code: span(sp1 + 1, sp1 + 1 + sp2),
            reason: span(reason_start, line.len()),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version, single spaces.
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(FrameError::StartLine(
            "request line is not METHOD SP Request-URI SP SIP-Version",
        ));
    };
    if !lex::is_token(method) {
        return Err(FrameError::StartLine("method is not a token"));
    }
    if uri.is_empty() || version.is_empty() {
        return Err(FrameError::StartLine("empty Request-URI or version"));
    }
    let m_end = method.len();
    let u_end = m_end + 1 + uri.len();
    Ok(StartLine::Request {
        method: Method::from_token(method),
        method_span: span(0, m_end),
        uri: span(m_end + 1, u_end),
        version: span(u_end + 1, line.len()),
    })
}

/// Offsets within `line` of the end of the name and the start and end of
/// the trimmed value.
#[inline]
fn header_line(line: &str) -> Result<(usize, usize, usize), FrameError> {
    let bytes = line.as_bytes();
    let colon = memchr::memchr(b':', bytes).ok_or(FrameError::HeaderLine)?;
    let mut name_end = colon;
    while name_end > 0 && matches!(bytes[name_end - 1], b' ' | b'\t') {
        name_end -= 1;
    }
    if name_end == 0 || !bytes[..name_end].iter().all(|b| lex::is_token_byte(*b)) {
        return Err(FrameError::HeaderLine);
    }
    let mut start = colon + 1;
    while start < bytes.len() && lex::is_lws(bytes[start]) {
        start += 1;
    }
    let mut end = bytes.len();
    while end > start && lex::is_lws(bytes[end - 1]) {
        end -= 1;
    }
    Ok((name_end, start, end))
}
