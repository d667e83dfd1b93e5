//! Header names: canonical spelling, compact forms (RFC 3261 §7.3.3 and the
//! extensions that define one), case-insensitive lookup.

/// A header name; [`HeaderName::Other`] for names the stack does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderName {
    /// `Accept`.
    Accept,
    /// `Accept-Contact` (compact `a`).
    AcceptContact,
    /// `Accept-Encoding`.
    AcceptEncoding,
    /// `Accept-Language`.
    AcceptLanguage,
    /// `Allow`.
    Allow,
    /// `Allow-Events` (compact `u`).
    AllowEvents,
    /// `Authorization`.
    Authorization,
    /// `Call-ID` (compact `i`).
    CallId,
    /// `Contact` (compact `m`).
    Contact,
    /// `Content-Disposition`.
    ContentDisposition,
    /// `Content-Encoding` (compact `e`).
    ContentEncoding,
    /// `Content-Length` (compact `l`).
    ContentLength,
    /// `Content-Type` (compact `c`).
    ContentType,
    /// `CSeq`.
    CSeq,
    /// `Date`.
    Date,
    /// `Event` (compact `o`).
    Event,
    /// `Expires`.
    Expires,
    /// `From` (compact `f`).
    From,
    /// `Identity` (compact `y`).
    Identity,
    /// `Max-Forwards`.
    MaxForwards,
    /// `Min-Expires`.
    MinExpires,
    /// `Min-SE`.
    MinSe,
    /// `P-Asserted-Identity`.
    PAssertedIdentity,
    /// `Path`.
    Path,
    /// `Privacy`.
    Privacy,
    /// `Proxy-Authenticate`.
    ProxyAuthenticate,
    /// `Proxy-Authorization`.
    ProxyAuthorization,
    /// `Proxy-Require`.
    ProxyRequire,
    /// `RAck`.
    RAck,
    /// `Reason`.
    Reason,
    /// `Record-Route`.
    RecordRoute,
    /// `Refer-To` (compact `r`).
    ReferTo,
    /// `Referred-By` (compact `b`).
    ReferredBy,
    /// `Reject-Contact` (compact `j`).
    RejectContact,
    /// `Request-Disposition` (compact `d`).
    RequestDisposition,
    /// `Require`.
    Require,
    /// `Retry-After`.
    RetryAfter,
    /// `Route`.
    Route,
    /// `RSeq`.
    RSeq,
    /// `Server`.
    Server,
    /// `Session-Expires` (compact `x`).
    SessionExpires,
    /// `Subject` (compact `s`).
    Subject,
    /// `Supported` (compact `k`).
    Supported,
    /// `Timestamp`.
    Timestamp,
    /// `To` (compact `t`).
    To,
    /// `Unsupported`.
    Unsupported,
    /// `User-Agent`.
    UserAgent,
    /// `Via` (compact `v`).
    Via,
    /// `Warning`.
    Warning,
    /// `WWW-Authenticate`.
    WwwAuthenticate,
    /// Any other header; its spelling is kept with the header.
    Other,
}

/// Number of [`HeaderName`] values, for tables indexed by name.
pub const HEADER_NAMES: usize = HeaderName::Other as usize + 1;

impl HeaderName {
    /// Looks a name up case-insensitively, compact forms included.
    pub fn from_name(name: &str) -> Self {
        let b = name.as_bytes();
        let Some(first) = b.first().map(u8::to_ascii_lowercase) else {
            return HeaderName::Other;
        };
        let is = |known: &[u8]| b.eq_ignore_ascii_case(known);
        // Switch on length, then first byte: one comparison per lookup.
        match b.len() {
            1 => match first {
                b'a' => HeaderName::AcceptContact,
                b'b' => HeaderName::ReferredBy,
                b'c' => HeaderName::ContentType,
                b'd' => HeaderName::RequestDisposition,
                b'e' => HeaderName::ContentEncoding,
                b'f' => HeaderName::From,
                b'i' => HeaderName::CallId,
                b'j' => HeaderName::RejectContact,
                b'k' => HeaderName::Supported,
                b'l' => HeaderName::ContentLength,
                b'm' => HeaderName::Contact,
                b'o' => HeaderName::Event,
                b'r' => HeaderName::ReferTo,
                b's' => HeaderName::Subject,
                b't' => HeaderName::To,
                b'u' => HeaderName::AllowEvents,
                b'v' => HeaderName::Via,
                b'x' => HeaderName::SessionExpires,
                b'y' => HeaderName::Identity,
                _ => HeaderName::Other,
            },
            2 => match first {
                b't' if is(b"to") => HeaderName::To,
                _ => HeaderName::Other,
            },
            3 => match first {
                b'v' if is(b"via") => HeaderName::Via,
                _ => HeaderName::Other,
            },
            4 => match first {
                b'c' if is(b"cseq") => HeaderName::CSeq,
                b'd' if is(b"date") => HeaderName::Date,
                b'f' if is(b"from") => HeaderName::From,
                b'p' if is(b"path") => HeaderName::Path,
                b'r' if is(b"rack") => HeaderName::RAck,
                b'r' if is(b"rseq") => HeaderName::RSeq,
                _ => HeaderName::Other,
            },
            5 => match first {
                b'a' if is(b"allow") => HeaderName::Allow,
                b'e' if is(b"event") => HeaderName::Event,
                b'r' if is(b"route") => HeaderName::Route,
                _ => HeaderName::Other,
            },
            6 => match first {
                b'a' if is(b"accept") => HeaderName::Accept,
                b'm' if is(b"min-se") => HeaderName::MinSe,
                b'r' if is(b"reason") => HeaderName::Reason,
                b's' if is(b"server") => HeaderName::Server,
                _ => HeaderName::Other,
            },
            7 => match first {
                b'c' if is(b"call-id") => HeaderName::CallId,
                b'c' if is(b"contact") => HeaderName::Contact,
                b'e' if is(b"expires") => HeaderName::Expires,
                b'p' if is(b"privacy") => HeaderName::Privacy,
                b'r' if is(b"require") => HeaderName::Require,
                b's' if is(b"subject") => HeaderName::Subject,
                b'w' if is(b"warning") => HeaderName::Warning,
                _ => HeaderName::Other,
            },
            8 => match first {
                b'i' if is(b"identity") => HeaderName::Identity,
                b'r' if is(b"refer-to") => HeaderName::ReferTo,
                _ => HeaderName::Other,
            },
            9 => match first {
                b's' if is(b"supported") => HeaderName::Supported,
                b't' if is(b"timestamp") => HeaderName::Timestamp,
                _ => HeaderName::Other,
            },
            10 => match first {
                b'u' if is(b"user-agent") => HeaderName::UserAgent,
                _ => HeaderName::Other,
            },
            11 => match first {
                b'm' if is(b"min-expires") => HeaderName::MinExpires,
                b'r' if is(b"referred-by") => HeaderName::ReferredBy,
                b'r' if is(b"retry-after") => HeaderName::RetryAfter,
                b'u' if is(b"unsupported") => HeaderName::Unsupported,
                _ => HeaderName::Other,
            },
            12 => match first {
                b'a' if is(b"allow-events") => HeaderName::AllowEvents,
                b'c' if is(b"content-type") => HeaderName::ContentType,
                b'm' if is(b"max-forwards") => HeaderName::MaxForwards,
                b'r' if is(b"record-route") => HeaderName::RecordRoute,
                _ => HeaderName::Other,
            },
            13 => match first {
                b'a' if is(b"authorization") => HeaderName::Authorization,
                b'p' if is(b"proxy-require") => HeaderName::ProxyRequire,
                _ => HeaderName::Other,
            },
            14 => match first {
                b'a' if is(b"accept-contact") => HeaderName::AcceptContact,
                b'c' if is(b"content-length") => HeaderName::ContentLength,
                b'r' if is(b"reject-contact") => HeaderName::RejectContact,
                _ => HeaderName::Other,
            },
            15 => match first {
                b'a' if is(b"accept-encoding") => HeaderName::AcceptEncoding,
                b'a' if is(b"accept-language") => HeaderName::AcceptLanguage,
                b's' if is(b"session-expires") => HeaderName::SessionExpires,
                _ => HeaderName::Other,
            },
            16 => match first {
                b'c' if is(b"content-encoding") => HeaderName::ContentEncoding,
                b'w' if is(b"www-authenticate") => HeaderName::WwwAuthenticate,
                _ => HeaderName::Other,
            },
            18 => match first {
                b'p' if is(b"proxy-authenticate") => HeaderName::ProxyAuthenticate,
                _ => HeaderName::Other,
            },
            19 => match first {
                b'c' if is(b"content-disposition") => HeaderName::ContentDisposition,
                b'p' if is(b"p-asserted-identity") => HeaderName::PAssertedIdentity,
                b'p' if is(b"proxy-authorization") => HeaderName::ProxyAuthorization,
                b'r' if is(b"request-disposition") => HeaderName::RequestDisposition,
                _ => HeaderName::Other,
            },
            _ => HeaderName::Other,
        }
    }

    /// The canonical spelling; `None` for [`HeaderName::Other`].
    pub fn canonical(self) -> Option<&'static str> {
        Some(match self {
            HeaderName::Accept => "Accept",
            HeaderName::AcceptContact => "Accept-Contact",
            HeaderName::AcceptEncoding => "Accept-Encoding",
            HeaderName::AcceptLanguage => "Accept-Language",
            HeaderName::Allow => "Allow",
            HeaderName::AllowEvents => "Allow-Events",
            HeaderName::Authorization => "Authorization",
            HeaderName::CallId => "Call-ID",
            HeaderName::Contact => "Contact",
            HeaderName::ContentDisposition => "Content-Disposition",
            HeaderName::ContentEncoding => "Content-Encoding",
            HeaderName::ContentLength => "Content-Length",
            HeaderName::ContentType => "Content-Type",
            HeaderName::CSeq => "CSeq",
            HeaderName::Date => "Date",
            HeaderName::Event => "Event",
            HeaderName::Expires => "Expires",
            HeaderName::From => "From",
            HeaderName::Identity => "Identity",
            HeaderName::MaxForwards => "Max-Forwards",
            HeaderName::MinExpires => "Min-Expires",
            HeaderName::MinSe => "Min-SE",
            HeaderName::PAssertedIdentity => "P-Asserted-Identity",
            HeaderName::Path => "Path",
            HeaderName::Privacy => "Privacy",
            HeaderName::ProxyAuthenticate => "Proxy-Authenticate",
            HeaderName::ProxyAuthorization => "Proxy-Authorization",
            HeaderName::ProxyRequire => "Proxy-Require",
            HeaderName::RAck => "RAck",
            HeaderName::Reason => "Reason",
            HeaderName::RecordRoute => "Record-Route",
            HeaderName::ReferTo => "Refer-To",
            HeaderName::ReferredBy => "Referred-By",
            HeaderName::RejectContact => "Reject-Contact",
            HeaderName::RequestDisposition => "Request-Disposition",
            HeaderName::Require => "Require",
            HeaderName::RetryAfter => "Retry-After",
            HeaderName::Route => "Route",
            HeaderName::RSeq => "RSeq",
            HeaderName::Server => "Server",
            HeaderName::SessionExpires => "Session-Expires",
            HeaderName::Subject => "Subject",
            HeaderName::Supported => "Supported",
            HeaderName::Timestamp => "Timestamp",
            HeaderName::To => "To",
            HeaderName::Unsupported => "Unsupported",
            HeaderName::UserAgent => "User-Agent",
            HeaderName::Via => "Via",
            HeaderName::Warning => "Warning",
            HeaderName::WwwAuthenticate => "WWW-Authenticate",
            HeaderName::Other => return None,
        })
    }

    /// Headers that may appear at most once (RFC 3261 §7.3.1 and §20).
    pub fn is_single(self) -> bool {
        matches!(
            self,
            HeaderName::CallId
                | HeaderName::CSeq
                | HeaderName::From
                | HeaderName::To
                | HeaderName::MaxForwards
                | HeaderName::ContentLength
                | HeaderName::ContentType
                | HeaderName::Expires
                | HeaderName::MinExpires
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive_with_compact_forms() {
        for (name, want) in [
            ("Via", HeaderName::Via),
            ("vIA", HeaderName::Via),
            ("v", HeaderName::Via),
            ("V", HeaderName::Via),
            ("i", HeaderName::CallId),
            ("CALL-ID", HeaderName::CallId),
            ("l", HeaderName::ContentLength),
            ("cseq", HeaderName::CSeq),
            ("WWW-Authenticate", HeaderName::WwwAuthenticate),
            ("x", HeaderName::SessionExpires),
            ("C%6Fntact", HeaderName::Other),
            ("NewFangledHeader", HeaderName::Other),
            ("P-Asserted-Identity", HeaderName::PAssertedIdentity),
            ("A-Very-Long-Unknown-Header-Name", HeaderName::Other),
        ] {
            assert_eq!(HeaderName::from_name(name), want, "{name}");
        }
        assert_eq!(HeaderName::CallId.canonical(), Some("Call-ID"));
        assert_eq!(HeaderName::Other.canonical(), None);
    }
}
