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
        let rest = text.as_bytes().get(pos..).unwrap_or_default();
        let nl = memchr::memchr(b'\n', rest)
            .map(|i| pos + i)
            .ok_or(FrameError::BareLineEnd)?;
        if nl == pos || text.as_bytes().get(nl - 1) != Some(&b'\r') {
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
            if let Some(n) = counts.get_mut(name as usize) {
                *n = n.saturating_add(1);
            }
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
    if line.len() > 4
        && line
            .as_bytes()
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
    {
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
    let name = bytes.get(..colon).unwrap_or_default();
    let name_end = name.len()
        - name
            .iter()
            .rev()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
    let name = name.get(..name_end).unwrap_or_default();
    if name.is_empty() || !name.iter().all(|b| lex::is_token_byte(*b)) {
        return Err(FrameError::HeaderLine);
    }
    let after = bytes.get(colon + 1..).unwrap_or_default();
    let start = colon + 1 + after.iter().take_while(|b| lex::is_lws(**b)).count();
    let value = bytes.get(start..).unwrap_or_default();
    let end = start + value.len() - value.iter().rev().take_while(|b| lex::is_lws(**b)).count();
    Ok((name_end, start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibyte_start_lines_do_not_panic() {
        // Found by the parse_message fuzz target: a start line whose first
        // four bytes end inside a multi-byte character.
        let data = Bytes::from_static(b"\x30\x30\x30\x30\x30\x30\x30\x30\x3a\x20\x34\x66\x35\x35\x20\x36\x63\x65\x35\x20\x38\x65\x38\x34\x20\x32\x61\x30\x30\x20\x30\x30\x35\x30\x20\x35\x34\x34\x39\x20\x34\x66\x34\x65\x20\x35\x33\x32\x30\x20\x20\x4f\x55\x6c\x2e\x2e\x2e\x2a\x2e\x2e\x50\x54\x49\x4f\x4e\x53\x20\x0a\x30\x30\x30\x30\x30\x30\x31\x30\x3a\x20\x37\x33\x36\x39\x20\x37\x30\x33\x61\x20\x37\x34\x32\x65\x20\x37\x37\x30\x35\x20\x31\x64\x36\x31\x20\x37\x34\x37\x33\x20\x36\x66\x36\x65\x20\x34\x30\x36\x35\x20\x20\x73\x69\x70\x3a\x74\x2e\x77\x2e\x2e\x61\x74\x73\x6f\x6e\x40\x65\x0a\x30\x30\x30\x30\x30\x30\x32\x30\x3a\x20\x37\x38\x36\x31\x20\x36\x64\x37\x30\x20\x36\x63\x36\x35\x20\x32\x65\x36\x66\x20\x37\x32\x36\x37\x20\x32\x30\x35\x33\x20\x34\x39\x35\x30\x20\x32\x66\x33\x32\x20\x20\x78\x61\x6d\x70\x6c\x65\x2e\x6f\x72\x67\x20\x53\x49\x50\x2f\x32\x0a\x30\x30\x30\x30\x30\x30\x33\x30\x3a\x20\x32\x65\x33\x30\x20\x30\x64\x30\x61\x20\x35\x36\x36\x39\x20\x36\x31\x33\x61\x20\x32\x30\x32\x30\x20\x32\x30\x32\x30\x20\x32\x30\x35\x33\x20\x34\x39\x35\x30\x20\x20\x2e\x30\x2e\x2e\x56\x69\x61\x3a\x20\x20\x20\x20\x20\x53\x49\x50\x0a\x30\x30\x30\x30\x30\x30\x34\x30\x3a\x20\x32\x66\x33\x34\x20\x32\x65\x33\x30\x20\x32\x66\x35\x35\x20\x34\x34\x35\x30\x20\x32\x30\x36\x33\x20\x32\x65\x36\x35\x20\x37\x38\x36\x31\x20\x36\x64\x37\x30\x20\x20\x2f\x34\x2e\x30\x2f\x55\x44\x50\x20\x63\x2e\x65\x78\x61\x6d\x70\x0a\x30\x30\x30\x30\x30\x30\x35\x30\x3a\x20\x36\x63\x36\x35\x20\x32\x65\x36\x33\x20\x36\x66\x36\x64\x20\x33\x61\x33\x35\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x20\x6c\x65\x2e\x63\x6f\x6d\x3a\x35\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x0a\x30\x30\x30\x30\x30\x30\x36\x30\x3a\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x20\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x0a\x30\x30\x30\x30\x30\x30\x37\x30\x3a\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x20\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x0a\x30\x30\x30\x30\x30\x30\x38\x30\x3a\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x20\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x0a\x30\x30\x30\x30\x30\x30\x39\x30\x3a\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x20\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x0a\x30\x30\x30\x30\x30\x30\x61\x30\x3a\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x20\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x0a\x30\x30\x30\x30\x30\x30\x62\x30\x3a\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x20\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x0a\x30\x30\x30\x30\x30\x30\x63\x30\x3a\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x20\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x2e\x0a\x30\x30\x30\x30\x30\x30\x64\x30\x3a\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x30\x30\x30\x30\x20\x33\x30\x33\x36\x20\x33\x30\x33\x62\x20\x36\x32\x37\x32\x20\x36\x31\x36\x65\x20\x36\x33\x36\x38\x20\x20\x2e\x2e\x2e\x2e\x2e\x2e\x30\x36\x30\x3b\x62\x72\x61\x6e\x63\x68\x0a\x30\x30\x30\x30\x30\x30\x65\x30\x3a\x20\x33\x64\x37\x61\x20\x33\x39\x36\x38\x20\x34\x37\x33\x34\x20\x36\x32\x34\x62\x20\x36\x62\x36\x34\x20\x36\x61\x37\x35\x20\x37\x37\x30\x64\x20\x30\x61\x34\x64\x20\x20\x3d\x7a\x39\x68\x47\x34\x62\x4b\x6b\x64\x6a\x75\x77\x2e\x2e\x4d\x0a\x30\x30\x30\x30\x30\x30\x66\x30\x3a\x20\x36\x31\x37\x38\x20\x32\x64\x34\x36\x20\x36\x66\x37\x32\x20\x37\x37\x36\x31\x20\x37\x32\x36\x34\x20\x37\x33\x33\x61\x20\x32\x30\x32\x30\x20\x32\x30\x32\x30\x20\x20\x61\x78\x2d\x46\x6f\x72\x77\x61\x72\x64\x73\x3a\x20\x20\x20\x20\x0a\x30\x30\x30\x30\x30\x31\x30\x30\x3a\x20\x32\x30\x32\x30\x20\x30\x64\x30\x61\x20\x35\x34\x36\x66\x20\x33\x61\x32\x30\x20\x32\x30\x32\x30\x20\x32\x30\x32\x30\x20\x32\x30\x35\x37\x20\x36\x31\x37\x34\x20\x20\x20\x20\x2e\x2e\x54\x6f\x3a\x20\x20\x20\x20\x20\x20\x57\x61\x74\x0a\x30\x30\x30\x30\x30\x31\x31\x30\x3a\x20\x37\x33\x36\x66\x20\x36\x65\x32\x63\x20\x32\x30\x35\x34\x20\x36\x38\x36\x66\x20\x36\x64\x36\x31\x20\x37\x33\x32\x30\x20\x33\x63\x37\x33\x20\x36\x39\x37\x30\x20\x20\x73\x6f\x6e\x2c\x20\x54\x68\x6f\x6d\x61\x73\x20\x3c\x73\x69\x70\x0a\x30\x30\x30\x30\x30\x31\x32\x30\x3a\x20\x36\x31\x37\x34\x20\x36\x39\x36\x66\x20\x36\x65\x32\x66\x20\x37\x33\x36\x34\x20\x37\x30\x30\x64\x20\x30\x61\x34\x33\x20\x35\x33\x36\x35\x20\x37\x31\x33\x61\x20\x20\x61\x74\x69\x6f\x6e\x2f\x73\x64\x70\x2e\x2e\x43\x53\x65\x71\x3a\x0a\x30\x30\x30\x30\x30\x31\x33\x30\x3a\x20\x32\x30\x32\x30\x20\x32\x30\x32\x30\x20\x33\x33\x33\x39\x20\x33\x62\x33\x32\x20\x33\x33\x33\x32\x20\x33\x33\x33\x39\x20\x32\x30\x34\x66\x20\x35\x30\x35\x34\x20\x20\x20\x20\x20\x20\x33\x39\x3b\x32\x33\x32\x33\x39\x20\x4f\x50\x54\x0a\x30\x30\x30\x30\x30\x31\x34\x30\x3a\x20\x34\x39\x34\x66\x20\x34\x65\x35\x33\x20\x30\x64\x30\x61\x20\x36\x63\x33\x61\x20\x32\x30\x33\x30\x20\x30\x64\x30\x61\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x49\x4f\x4e\x53\x2e\x2e\x6c\x3a\x20\x30\x2e\x2e\x0a");
        let _ = split(&data, Framing::Datagram, &Limits::default());
        let data = Bytes::from_static("SI\u{e9}/2.0 200 OK\r\nVia: x\r\n\r\n".as_bytes());
        assert!(split(&data, Framing::Datagram, &Limits::default()).is_err());
    }

    fn request_with(headers: &str) -> Bytes {
        Bytes::from(format!("OPTIONS sip:a@b SIP/2.0\r\n{headers}\r\n"))
    }

    #[test]
    fn caps_bound_size_header_count_and_line_length() {
        let limits = Limits {
            max_message: 200,
            max_headers: 3,
            max_line: 40,
        };
        let big = Bytes::from(vec![b'x'; 201]);
        assert_eq!(
            split(&big, Framing::Datagram, &limits).err(),
            Some(FrameError::TooLarge(200))
        );
        let many = request_with("A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n");
        assert_eq!(
            split(&many, Framing::Datagram, &limits).err(),
            Some(FrameError::TooManyHeaders(3))
        );
        let long = request_with(&format!("Subject: {}\r\n", "y".repeat(40)));
        assert_eq!(
            split(&long, Framing::Datagram, &limits).err(),
            Some(FrameError::LineTooLong(40))
        );
        let ok = request_with("A: 1\r\nB: 2\r\n");
        assert!(split(&ok, Framing::Datagram, &limits).is_ok());
    }

    #[test]
    fn content_length_is_mandatory_on_streams_only() {
        let data = request_with("Via: SIP/2.0/TCP h;branch=z9hG4bK1\r\n");
        let stream = split(&data, Framing::Stream, &Limits::default()).unwrap();
        assert_eq!(stream.body_problem, Some(BodyProblem::Missing));
        let datagram = split(&data, Framing::Datagram, &Limits::default()).unwrap();
        assert_eq!(datagram.body_problem, None);
    }

    #[test]
    fn lines_must_end_in_crlf_and_headers_need_a_colon() {
        let bare = Bytes::from_static(b"OPTIONS sip:a@b SIP/2.0\nVia: x\r\n\r\n");
        assert_eq!(
            split(&bare, Framing::Datagram, &Limits::default()).err(),
            Some(FrameError::BareLineEnd)
        );
        let colonless = request_with("NoColonHere\r\n");
        assert_eq!(
            split(&colonless, Framing::Datagram, &Limits::default()).err(),
            Some(FrameError::HeaderLine)
        );
        let fold_first = Bytes::from_static(b"OPTIONS sip:a@b SIP/2.0\r\n  folded\r\n\r\n");
        assert_eq!(
            split(&fold_first, Framing::Datagram, &Limits::default()).err(),
            Some(FrameError::LeadingFold)
        );
    }
}
