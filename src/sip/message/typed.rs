//! Typed views of the headers the stack uses, parsed on demand from the
//! message's bytes and borrowing from them.

use super::header::HeaderName;
use super::lex::{self, Params, parse_params, split_list, trim, trim_start};
use super::model::Message;
use super::uri::{Host, Uri, UriError, parse_hostport};

/// Why a header value is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The header is absent.
    #[error("missing")]
    Missing,
    /// An empty element in a list (`a,,b`).
    #[error("empty list element")]
    EmptyElement,
    /// A quoted string without its closing quote.
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    /// `<` without `>`, or white space just inside them.
    #[error("unbalanced or padded angle brackets")]
    AngleBrackets,
    /// A display name with characters that need quoting.
    #[error("display name must be quoted")]
    DisplayName,
    /// An addr-spec with `,`, `?` or `;` that must be in angle brackets.
    #[error("URI with ',', '?' or ';' outside angle brackets")]
    BareUri,
    /// The URI is malformed.
    #[error("bad URI: {0}")]
    Uri(UriError),
    /// Malformed parameters.
    #[error("bad parameters")]
    Params,
    /// Malformed Via protocol or sent-by.
    #[error("bad Via")]
    Via,
    /// A number that is malformed or out of range.
    #[error("number malformed or out of range")]
    Number,
    /// A method that is not a token.
    #[error("bad method")]
    Method,
    /// Any other syntax error.
    #[error("syntax error")]
    Syntax,
}

impl From<UriError> for HeaderError {
    fn from(e: UriError) -> Self {
        HeaderError::Uri(e)
    }
}

impl From<lex::ParamError> for HeaderError {
    fn from(e: lex::ParamError) -> Self {
        match e {
            lex::ParamError::UnterminatedQuote => HeaderError::UnterminatedQuote,
            _ => HeaderError::Params,
        }
    }
}

/// One Via entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via<'a> {
    /// Protocol name, `SIP`.
    pub protocol: &'a str,
    /// Protocol version, `2.0`.
    pub version: &'a str,
    /// Transport as written (`UDP`, `TCP`, `TLS`, `SCTP`, ...).
    pub transport: &'a str,
    /// sent-by host.
    pub host: Host<'a>,
    /// sent-by port.
    pub port: Option<u16>,
    /// Parameters (`branch`, `received`, `rport`, ...).
    pub params: Params<'a>,
}

impl<'a> Via<'a> {
    /// Parses one via-parm.
    pub fn parse(s: &'a str) -> Result<Self, HeaderError> {
        let s = trim(s);
        let (protocol, rest) = take_token(s).ok_or(HeaderError::Via)?;
        let rest = expect(rest, '/').ok_or(HeaderError::Via)?;
        let (version, rest) = take_token(rest).ok_or(HeaderError::Via)?;
        let rest = expect(rest, '/').ok_or(HeaderError::Via)?;
        let (transport, rest) = take_token(rest).ok_or(HeaderError::Via)?;
        let sent_by_start = trim_start(rest);
        if sent_by_start.len() == rest.len() {
            return Err(HeaderError::Via);
        }
        let end = sent_by_start
            .bytes()
            .position(|b| b == b';' || lex::is_lws(b))
            .unwrap_or(sent_by_start.len());
        let (host, port) = parse_hostport(&sent_by_start[..end]).map_err(|_| HeaderError::Via)?;
        let params = parse_params(&sent_by_start[end..])?;
        Ok(Via {
            protocol,
            version,
            transport,
            host,
            port,
            params,
        })
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&'a str> {
        self.params.get("branch").flatten()
    }

    /// The `received` parameter.
    pub fn received(&self) -> Option<&'a str> {
        self.params.get("received").flatten()
    }

    /// The `rport` parameter: `Some(None)` when present without a value.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params
            .get("rport")
            .map(|v| v.and_then(|p| p.parse().ok()))
    }
}

/// `[display-name] <uri>` or a bare URI, with header parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name as written (quoted strings keep their quotes).
    pub display: Option<&'a str>,
    /// The URI as written.
    pub uri_str: &'a str,
    /// The parsed URI.
    pub uri: Uri<'a>,
    /// Header parameters after the URI (`tag`, `expires`, `q`, ...).
    pub params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    /// Parses one name-addr or addr-spec with its parameters.
    pub fn parse(s: &'a str) -> Result<Self, HeaderError> {
        let s = trim(s);
        if s.is_empty() {
            return Err(HeaderError::EmptyElement);
        }
        let (display, bracketed) = if s.starts_with('"') {
            let n = lex::quoted_len(s).ok_or(HeaderError::UnterminatedQuote)?;
            let rest = trim_start(&s[n..]);
            if !rest.starts_with('<') {
                return Err(HeaderError::AngleBrackets);
            }
            (Some(&s[..n]), Some(rest))
        } else if let Some(lt) = lex::find(s, b'<') {
            let name = trim(&s[..lt]);
            if !name
                .split(|c: char| c.is_ascii() && lex::is_lws(c as u8))
                .all(|w| w.is_empty() || lex::is_token(w))
            {
                return Err(HeaderError::DisplayName);
            }
            ((!name.is_empty()).then_some(name), Some(&s[lt..]))
        } else {
            (None, None)
        };
        if let Some(b) = bracketed {
            let gt = lex::find(b, b'>').ok_or(HeaderError::AngleBrackets)?;
            let uri_str = &b[1..gt];
            if uri_str.starts_with(|c: char| c.is_ascii_whitespace())
                || uri_str.ends_with(|c: char| c.is_ascii_whitespace())
            {
                return Err(HeaderError::AngleBrackets);
            }
            let uri = Uri::parse(uri_str)?;
            let params = parse_params(&b[gt + 1..])?;
            return Ok(NameAddr {
                display,
                uri_str,
                uri,
                params,
            });
        }
        if s.contains('>') {
            return Err(HeaderError::AngleBrackets);
        }
        // addr-spec: the URI ends at the first ';', header parameters follow.
        let end = lex::find(s, b';').unwrap_or(s.len());
        let uri_str = trim(&s[..end]);
        if uri_str.contains(['?', ',']) {
            return Err(HeaderError::BareUri);
        }
        if lex::has_lws(uri_str) {
            return Err(HeaderError::DisplayName);
        }
        Ok(NameAddr {
            display: None,
            uri_str,
            uri: Uri::parse(uri_str)?,
            params: parse_params(&s[end..])?,
        })
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&'a str> {
        self.params.get("tag").flatten()
    }

    /// The display name without quotes and escapes.
    pub fn display_name(&self) -> Option<String> {
        self.display.map(|d| {
            if d.starts_with('"') {
                lex::unquote(d)
            } else {
                d.to_owned()
            }
        })
    }
}

/// The CSeq header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    /// Sequence number, below 2^31 (RFC 3261 §8.1.1.5).
    pub seq: u32,
    /// Method token.
    pub method: &'a str,
}

impl<'a> CSeq<'a> {
    /// Parses `1*DIGIT LWS Method`.
    pub fn parse(s: &'a str) -> Result<Self, HeaderError> {
        let s = trim(s);
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let seq = lex::parse_u64(&s[..digits], (1 << 31) - 1).ok_or(HeaderError::Number)?;
        let method = trim(&s[digits..]);
        if method.len() == s.len() - digits || !lex::is_token(method) {
            return Err(HeaderError::Method);
        }
        Ok(CSeq {
            seq: u32::try_from(seq).map_err(|_| HeaderError::Number)?,
            method,
        })
    }
}

/// A WWW-/Proxy-Authenticate challenge or Authorization credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthParams<'a> {
    /// Scheme, e.g. `Digest`.
    pub scheme: &'a str,
    /// `name=value` pairs; values keep their quotes.
    pub params: Vec<(&'a str, &'a str)>,
}

impl<'a> AuthParams<'a> {
    /// Parses `scheme LWS auth-param *(COMMA auth-param)`.
    pub fn parse(s: &'a str) -> Result<Self, HeaderError> {
        let s = trim(s);
        let (scheme, rest) = take_token(s).ok_or(HeaderError::Syntax)?;
        let mut params = Vec::new();
        for item in split_list(rest) {
            if item.is_empty() {
                continue;
            }
            let (name, value) = item.split_once('=').ok_or(HeaderError::Syntax)?;
            let (name, value) = (trim(name), trim(value));
            if !lex::is_token(name) || value.is_empty() {
                return Err(HeaderError::Syntax);
            }
            if value.starts_with('"') && lex::quoted_len(value) != Some(value.len()) {
                return Err(HeaderError::UnterminatedQuote);
            }
            params.push((name, value));
        }
        Ok(AuthParams { scheme, params })
    }

    /// A parameter value without quotes.
    pub fn get(&self, name: &str) -> Option<String> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| {
                if v.starts_with('"') {
                    lex::unquote(v)
                } else {
                    (*v).to_owned()
                }
            })
    }
}

/// `type/subtype;params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType<'a> {
    /// Top-level type.
    pub kind: &'a str,
    /// Subtype.
    pub subtype: &'a str,
    /// Parameters.
    pub params: Params<'a>,
}

impl<'a> MediaType<'a> {
    /// Parses a media type.
    pub fn parse(s: &'a str) -> Result<Self, HeaderError> {
        let s = trim(s);
        let (kind, rest) = take_token(s).ok_or(HeaderError::Syntax)?;
        let rest = expect(rest, '/').ok_or(HeaderError::Syntax)?;
        let (subtype, rest) = take_token(rest).ok_or(HeaderError::Syntax)?;
        Ok(MediaType {
            kind,
            subtype,
            params: parse_params(rest)?,
        })
    }

    /// Whether this is `type/subtype` (case-insensitive).
    pub fn is(&self, kind: &str, subtype: &str) -> bool {
        self.kind.eq_ignore_ascii_case(kind) && self.subtype.eq_ignore_ascii_case(subtype)
    }
}

/// `delta-seconds *(; param)`: Retry-After (its comment is skipped) and
/// Session-Expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaWithParams<'a> {
    /// Seconds (values beyond u32 saturate).
    pub secs: u32,
    /// Parameters (`duration`, `refresher`).
    pub params: Params<'a>,
}

impl<'a> DeltaWithParams<'a> {
    /// Parses delta-seconds, an optional `(comment)`, and parameters.
    pub fn parse(s: &'a str) -> Result<Self, HeaderError> {
        let s = trim(s);
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let secs = parse_delta(&s[..digits])?;
        let mut rest = trim_start(&s[digits..]);
        if rest.starts_with('(') {
            let close = lex::find(rest, b')').ok_or(HeaderError::Syntax)?;
            rest = trim_start(&rest[close + 1..]);
        }
        Ok(DeltaWithParams {
            secs,
            params: parse_params(rest)?,
        })
    }
}

/// delta-seconds; values beyond u32 saturate (RFC 3261 §20.19 allows
/// treating huge values as the largest one).
pub fn parse_delta(s: &str) -> Result<u32, HeaderError> {
    let s = trim(s);
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeaderError::Number);
    }
    Ok(s.parse::<u32>().unwrap_or(u32::MAX))
}

fn take_token(s: &str) -> Option<(&str, &str)> {
    let s = trim_start(s);
    let n = s.bytes().take_while(|b| lex::is_token_byte(*b)).count();
    (n > 0).then(|| (&s[..n], &s[n..]))
}

fn expect(s: &str, c: char) -> Option<&str> {
    trim_start(s).strip_prefix(c)
}

/// The Contact header value: `*` or addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contacts<'a> {
    /// `Contact: *` (remove all bindings).
    Star,
    /// Addresses in order.
    List(Vec<NameAddr<'a>>),
}

/// Typed access on [`Message`].
impl Message {
    fn list<'a, T>(
        &'a self,
        name: HeaderName,
        parse: impl Fn(&'a str) -> Result<T, HeaderError> + 'a,
    ) -> impl Iterator<Item = Result<T, HeaderError>> + 'a {
        self.values(name).flat_map(split_list).map(move |item| {
            if item.is_empty() {
                Err(HeaderError::EmptyElement)
            } else {
                parse(item)
            }
        })
    }

    fn single<'a, T>(
        &'a self,
        name: HeaderName,
        parse: impl Fn(&'a str) -> Result<T, HeaderError>,
    ) -> Result<T, HeaderError> {
        self.value(name).ok_or(HeaderError::Missing).and_then(parse)
    }

    /// Every Via entry, top first, across lines and commas.
    pub fn vias(&self) -> impl Iterator<Item = Result<Via<'_>, HeaderError>> {
        self.list(HeaderName::Via, Via::parse)
    }

    /// The topmost Via.
    pub fn top_via(&self) -> Result<Via<'_>, HeaderError> {
        self.vias().next().unwrap_or(Err(HeaderError::Missing))
    }

    /// The From header.
    pub fn from_header(&self) -> Result<NameAddr<'_>, HeaderError> {
        self.single(HeaderName::From, NameAddr::parse)
    }

    /// The To header.
    pub fn to_header(&self) -> Result<NameAddr<'_>, HeaderError> {
        self.single(HeaderName::To, NameAddr::parse)
    }

    /// The CSeq header.
    pub fn cseq(&self) -> Result<CSeq<'_>, HeaderError> {
        self.single(HeaderName::CSeq, CSeq::parse)
    }

    /// Max-Forwards (0..=255).
    pub fn max_forwards(&self) -> Result<u8, HeaderError> {
        self.single(HeaderName::MaxForwards, |v| {
            lex::parse_u64(trim(v), 255)
                .and_then(|n| u8::try_from(n).ok())
                .ok_or(HeaderError::Number)
        })
    }

    /// The Contact header(s).
    pub fn contacts(&self) -> Result<Contacts<'_>, HeaderError> {
        if self.values(HeaderName::Contact).any(|v| trim(v) == "*") {
            return if self.count(HeaderName::Contact) == 1 {
                Ok(Contacts::Star)
            } else {
                Err(HeaderError::Syntax)
            };
        }
        self.list(HeaderName::Contact, NameAddr::parse)
            .collect::<Result<_, _>>()
            .map(Contacts::List)
    }

    /// Route entries in order.
    pub fn routes(&self) -> impl Iterator<Item = Result<NameAddr<'_>, HeaderError>> {
        self.list(HeaderName::Route, NameAddr::parse)
    }

    /// Record-Route entries in order.
    pub fn record_routes(&self) -> impl Iterator<Item = Result<NameAddr<'_>, HeaderError>> {
        self.list(HeaderName::RecordRoute, NameAddr::parse)
    }

    /// Expires, in seconds.
    pub fn expires(&self) -> Result<u32, HeaderError> {
        self.single(HeaderName::Expires, parse_delta)
    }

    /// Min-Expires, in seconds.
    pub fn min_expires(&self) -> Result<u32, HeaderError> {
        self.single(HeaderName::MinExpires, parse_delta)
    }

    /// Content-Type.
    pub fn content_type(&self) -> Result<MediaType<'_>, HeaderError> {
        self.single(HeaderName::ContentType, MediaType::parse)
    }

    /// Content-Length as written (the body is already framed by it).
    pub fn content_length(&self) -> Result<u32, HeaderError> {
        self.single(HeaderName::ContentLength, |v| {
            lex::parse_u64(trim(v), u64::from(u32::MAX))
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(HeaderError::Number)
        })
    }

    /// Option tags of Supported.
    pub fn supported(&self) -> impl Iterator<Item = &str> {
        self.tokens(HeaderName::Supported)
    }

    /// Option tags of Require.
    pub fn require(&self) -> impl Iterator<Item = &str> {
        self.tokens(HeaderName::Require)
    }

    /// Methods of Allow.
    pub fn allow(&self) -> impl Iterator<Item = &str> {
        self.tokens(HeaderName::Allow)
    }

    fn tokens(&self, name: HeaderName) -> impl Iterator<Item = &str> {
        self.values(name)
            .flat_map(split_list)
            .filter(|t| !t.is_empty())
    }

    /// Retry-After.
    pub fn retry_after(&self) -> Result<DeltaWithParams<'_>, HeaderError> {
        self.single(HeaderName::RetryAfter, DeltaWithParams::parse)
    }

    /// Session-Expires.
    pub fn session_expires(&self) -> Result<DeltaWithParams<'_>, HeaderError> {
        self.single(HeaderName::SessionExpires, DeltaWithParams::parse)
    }

    /// WWW-Authenticate (401) or Proxy-Authenticate (407) challenges.
    pub fn challenges(
        &self,
        proxy: bool,
    ) -> impl Iterator<Item = Result<AuthParams<'_>, HeaderError>> {
        let name = if proxy {
            HeaderName::ProxyAuthenticate
        } else {
            HeaderName::WwwAuthenticate
        };
        self.values(name).map(AuthParams::parse)
    }

    /// Authorization (or Proxy-Authorization) credentials.
    pub fn credentials(
        &self,
        proxy: bool,
    ) -> impl Iterator<Item = Result<AuthParams<'_>, HeaderError>> {
        let name = if proxy {
            HeaderName::ProxyAuthorization
        } else {
            HeaderName::Authorization
        };
        self.values(name).map(AuthParams::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_lws_everywhere() {
        let v = Via::parse("SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!((v.protocol, v.version, v.transport), ("SIP", "2.0", "UDP"));
        assert_eq!(v.host, Host::V4("192.0.2.2".parse().unwrap()));
        assert_eq!(v.branch(), Some("390skdjuw"));
        let v = Via::parse("SIP/2.0/TCP [2001:db8::9]:5061;rport;received=192.0.2.1").unwrap();
        assert_eq!(v.port, Some(5061));
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.received(), Some("192.0.2.1"));
        assert_eq!(Via::parse("SIP/2.0/UDP"), Err(HeaderError::Via));
        assert!(Via::parse("SIP/2.0/UDP 192.0.2.15;;").is_err());
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(
            "\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8",
        )
        .unwrap();
        assert_eq!(n.display_name().unwrap(), "J Rosenberg \\\"");
        assert_eq!(n.tag(), Some("98asjd8"));
        let n = NameAddr::parse("caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(n.display, Some("caller"));
        let n =
            NameAddr::parse("sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n").unwrap();
        assert_eq!(n.uri_str, "sip:vivekg@chair-dnrc.example.com");
        assert_eq!(n.tag(), Some("1918181833n"));
        assert_eq!(
            NameAddr::parse("\"Mr. J. User <sip:j.user@example.com>"),
            Err(HeaderError::UnterminatedQuote)
        );
        assert_eq!(
            NameAddr::parse("Bell, Alexander <sip:a.g.bell@example.com>"),
            Err(HeaderError::DisplayName)
        );
        assert_eq!(
            NameAddr::parse("\"Watson, Thomas\" < sip:t.watson@example.org >"),
            Err(HeaderError::AngleBrackets)
        );
        assert_eq!(
            NameAddr::parse("sip:user@example.com?Route=%3Csip:sip.example.com%3E"),
            Err(HeaderError::BareUri)
        );
    }

    #[test]
    fn cseq_and_numbers() {
        assert_eq!(
            CSeq::parse("0009\r\n  INVITE").unwrap(),
            CSeq {
                seq: 9,
                method: "INVITE"
            }
        );
        assert_eq!(
            CSeq::parse("36893488147419103232 REGISTER"),
            Err(HeaderError::Number)
        );
        assert_eq!(CSeq::parse("2147483648 INVITE"), Err(HeaderError::Number));
        assert_eq!(CSeq::parse("8INVITE"), Err(HeaderError::Method));
        assert_eq!(parse_delta("10000000000000000000"), Ok(u32::MAX));
        assert_eq!(parse_delta("-1"), Err(HeaderError::Number));
    }

    #[test]
    fn challenges_and_media_types() {
        let c = AuthParams::parse("Digest realm=\"atlanta.com\", qop=\"auth,auth-int\", nonce=\"n1\", algorithm=SHA-256, stale=TRUE").unwrap();
        assert_eq!(c.scheme, "Digest");
        assert_eq!(c.get("qop").unwrap(), "auth,auth-int");
        assert_eq!(c.get("ALGORITHM").unwrap(), "SHA-256");
        let m = MediaType::parse("multipart/mixed;boundary=7a9cbec02ceef655").unwrap();
        assert!(m.is("Multipart", "MIXED"));
        assert_eq!(m.params.get("boundary"), Some(Some("7a9cbec02ceef655")));
        let r = DeltaWithParams::parse("18000 (lunch);duration=3600").unwrap();
        assert_eq!(
            (r.secs, r.params.get("duration")),
            (18000, Some(Some("3600")))
        );
    }
}
