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

/// Longest known name, in bytes.
const MAX_KNOWN_LEN: usize = 19;

impl HeaderName {
    /// Looks a name up case-insensitively, compact forms included.
    pub fn from_name(name: &str) -> Self {
        let bytes = name.as_bytes();
        if bytes.len() > MAX_KNOWN_LEN {
            return HeaderName::Other;
        }
        let mut buf = [0u8; MAX_KNOWN_LEN];
        let lower = &mut buf[..bytes.len()];
        lower.copy_from_slice(bytes);
        lower.make_ascii_lowercase();
        match &*lower {
            b"accept" => HeaderName::Accept,
            b"accept-contact" | b"a" => HeaderName::AcceptContact,
            b"accept-encoding" => HeaderName::AcceptEncoding,
            b"accept-language" => HeaderName::AcceptLanguage,
            b"allow" => HeaderName::Allow,
            b"allow-events" | b"u" => HeaderName::AllowEvents,
            b"authorization" => HeaderName::Authorization,
            b"call-id" | b"i" => HeaderName::CallId,
            b"contact" | b"m" => HeaderName::Contact,
            b"content-disposition" => HeaderName::ContentDisposition,
            b"content-encoding" | b"e" => HeaderName::ContentEncoding,
            b"content-length" | b"l" => HeaderName::ContentLength,
            b"content-type" | b"c" => HeaderName::ContentType,
            b"cseq" => HeaderName::CSeq,
            b"date" => HeaderName::Date,
            b"event" | b"o" => HeaderName::Event,
            b"expires" => HeaderName::Expires,
            b"from" | b"f" => HeaderName::From,
            b"identity" | b"y" => HeaderName::Identity,
            b"max-forwards" => HeaderName::MaxForwards,
            b"min-expires" => HeaderName::MinExpires,
            b"min-se" => HeaderName::MinSe,
            b"p-asserted-identity" => HeaderName::PAssertedIdentity,
            b"path" => HeaderName::Path,
            b"privacy" => HeaderName::Privacy,
            b"proxy-authenticate" => HeaderName::ProxyAuthenticate,
            b"proxy-authorization" => HeaderName::ProxyAuthorization,
            b"proxy-require" => HeaderName::ProxyRequire,
            b"rack" => HeaderName::RAck,
            b"reason" => HeaderName::Reason,
            b"record-route" => HeaderName::RecordRoute,
            b"refer-to" | b"r" => HeaderName::ReferTo,
            b"referred-by" | b"b" => HeaderName::ReferredBy,
            b"reject-contact" | b"j" => HeaderName::RejectContact,
            b"request-disposition" | b"d" => HeaderName::RequestDisposition,
            b"require" => HeaderName::Require,
            b"retry-after" => HeaderName::RetryAfter,
            b"route" => HeaderName::Route,
            b"rseq" => HeaderName::RSeq,
            b"server" => HeaderName::Server,
            b"session-expires" | b"x" => HeaderName::SessionExpires,
            b"subject" | b"s" => HeaderName::Subject,
            b"supported" | b"k" => HeaderName::Supported,
            b"timestamp" => HeaderName::Timestamp,
            b"to" | b"t" => HeaderName::To,
            b"unsupported" => HeaderName::Unsupported,
            b"user-agent" => HeaderName::UserAgent,
            b"via" | b"v" => HeaderName::Via,
            b"warning" => HeaderName::Warning,
            b"www-authenticate" => HeaderName::WwwAuthenticate,
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
