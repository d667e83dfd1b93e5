//! Semantic checks of RFC 3261 §§7, 8.2 and 20 and RFC 4475 §3.1.2: what a
//! parsed message must satisfy before the transaction layer sees it.

use std::fmt;

use super::header::HeaderName;
use super::lex;
use super::model::Message;
use super::parse::BodyProblem;
use super::typed::{HeaderError, NameAddr};
use super::uri::{Uri, UriError};

/// Headers every request and response carries (RFC 3261 §8.1.1).
const MANDATORY: [HeaderName; 5] = [
    HeaderName::Via,
    HeaderName::From,
    HeaderName::To,
    HeaderName::CallId,
    HeaderName::CSeq,
];

/// Why a structurally sound message is invalid. A request gets the
/// response [`Invalid::status`] with [`Invalid::reason`]; a response is
/// dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// SIP-Version other than SIP/2.0 (505).
    Version,
    /// A status code outside 100..=699.
    StatusCode,
    /// The Request-URI does not parse.
    RequestUri(UriError),
    /// The Request-URI carries `?headers` (RFC 3261 §19.1.5 forbids them there).
    RequestUriHeaders,
    /// Content-Length missing, repeated, malformed or beyond the datagram.
    Body(BodyProblem),
    /// A mandatory header is absent.
    Missing(HeaderName),
    /// A single-valued header appears more than once.
    Repeated(HeaderName),
    /// A header does not parse.
    Bad(HeaderName, HeaderError),
    /// The CSeq method differs from the request method.
    CSeqMismatch,
}

impl Invalid {
    /// Status code of the response to an invalid request.
    pub fn status(&self) -> u16 {
        match self {
            Invalid::Version => 505,
            _ => 400,
        }
    }

    /// Reason phrase naming the problem.
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

fn name(h: HeaderName) -> &'static str {
    h.canonical().unwrap_or("header")
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::Version => f.write_str("Version Not Supported"),
            Invalid::StatusCode => f.write_str("Bad Status Code"),
            Invalid::RequestUri(e) => write!(f, "Bad Request-URI ({e})"),
            Invalid::RequestUriHeaders => f.write_str("Bad Request-URI (headers not allowed)"),
            Invalid::Body(BodyProblem::BadLength) => f.write_str("Bad Content-Length"),
            Invalid::Body(BodyProblem::BeyondDatagram) => {
                f.write_str("Bad Content-Length (larger than the message)")
            }
            Invalid::Body(BodyProblem::Repeated) => f.write_str("Multiple Content-Length Headers"),
            Invalid::Body(BodyProblem::Missing) => f.write_str("Missing Content-Length"),
            Invalid::Missing(h) => write!(f, "Missing {} Header", name(*h)),
            Invalid::Repeated(h) => write!(f, "Multiple {} Headers", name(*h)),
            Invalid::Bad(h, e) => write!(f, "Bad {} Header ({e})", name(*h)),
            Invalid::CSeqMismatch => f.write_str("CSeq Method Does Not Match"),
        }
    }
}

impl Message {
    /// Checks the message; `Ok` means the stack may act on it.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.version().eq_ignore_ascii_case("SIP/2.0") {
            return Err(Invalid::Version);
        }
        if let Some(uri) = self.request_uri() {
            let parsed = Uri::parse(uri).map_err(Invalid::RequestUri)?;
            if parsed.as_sip().is_some_and(|u| u.headers.is_some()) {
                return Err(Invalid::RequestUriHeaders);
            }
        } else if self.status().is_none() {
            return Err(Invalid::StatusCode);
        }
        if let Some(problem) = self.body_problem {
            return Err(Invalid::Body(problem));
        }
        for h in MANDATORY {
            if self.count(h) == 0 {
                return Err(Invalid::Missing(h));
            }
        }
        for h in [
            HeaderName::CallId,
            HeaderName::CSeq,
            HeaderName::From,
            HeaderName::To,
            HeaderName::MaxForwards,
            HeaderName::ContentType,
            HeaderName::Expires,
            HeaderName::MinExpires,
        ] {
            if self.count(h) > 1 {
                return Err(Invalid::Repeated(h));
            }
        }
        let cseq = self.cseq().map_err(|e| Invalid::Bad(HeaderName::CSeq, e))?;
        if let Some(method) = self.method_str()
            && cseq.method != method
        {
            return Err(Invalid::CSeqMismatch);
        }
        if self.call_id().is_none_or(str::is_empty) {
            return Err(Invalid::Bad(HeaderName::CallId, HeaderError::Syntax));
        }
        self.from_header()
            .map_err(|e| Invalid::Bad(HeaderName::From, e))?;
        self.to_header()
            .map_err(|e| Invalid::Bad(HeaderName::To, e))?;
        for via in self.vias() {
            via.map_err(|e| Invalid::Bad(HeaderName::Via, e))?;
        }
        if !self.is_request() {
            return Ok(());
        }
        if self.count(HeaderName::MaxForwards) > 0 {
            self.max_forwards()
                .map_err(|e| Invalid::Bad(HeaderName::MaxForwards, e))?;
        }
        self.check_contacts()
            .map_err(|e| Invalid::Bad(HeaderName::Contact, e))?;
        if self.count(HeaderName::Expires) > 0 {
            self.expires()
                .map_err(|e| Invalid::Bad(HeaderName::Expires, e))?;
        }
        if self.count(HeaderName::ContentType) > 0 {
            self.content_type()
                .map_err(|e| Invalid::Bad(HeaderName::ContentType, e))?;
        }
        for value in self
            .values(HeaderName::Route)
            .chain(self.values(HeaderName::RecordRoute))
        {
            for item in lex::split_list(value) {
                NameAddr::parse(item).map_err(|e| Invalid::Bad(HeaderName::Route, e))?;
            }
        }
        Ok(())
    }
}

impl Message {
    /// Checks every Contact without collecting them: `*` alone, or
    /// addresses that each parse.
    fn check_contacts(&self) -> Result<(), HeaderError> {
        let mut star = false;
        let mut total = 0usize;
        for value in self.values(HeaderName::Contact) {
            for item in lex::split_list(value) {
                total += 1;
                if item == "*" {
                    star = true;
                } else if item.is_empty() {
                    return Err(HeaderError::EmptyElement);
                } else {
                    NameAddr::parse(item)?;
                }
            }
        }
        if star && total > 1 {
            return Err(HeaderError::Syntax);
        }
        Ok(())
    }
}
