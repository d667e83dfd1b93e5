//! SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966), borrowed from the
//! message; other schemes are kept whole.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::lex::{self, ParamError, Params, parse_params};

/// A parsed URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uri<'a> {
    /// `sip:` or `sips:`.
    Sip(SipUri<'a>),
    /// `tel:`.
    Tel(TelUri<'a>),
    /// Any other absolute URI, kept as written.
    Other {
        /// The scheme, without `:`.
        scheme: &'a str,
        /// Everything after `scheme:`.
        rest: &'a str,
    },
}

/// A `sip:` or `sips:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri<'a> {
    /// `sips:` rather than `sip:`.
    pub secure: bool,
    /// User part as written (may hold `%` escapes and `;`).
    pub user: Option<&'a str>,
    /// Password as written.
    pub password: Option<&'a str>,
    /// Host.
    pub host: Host<'a>,
    /// Port, if written.
    pub port: Option<u16>,
    /// URI parameters (`;transport=tcp;lr`).
    pub params: Params<'a>,
    /// Header part after `?`, as written.
    pub headers: Option<&'a str>,
}

/// A host: a domain name, IPv4 or IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    /// A domain name as written.
    Domain(&'a str),
    /// An IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 reference (written in brackets).
    V6(Ipv6Addr),
}

/// A `tel:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelUri<'a> {
    /// The number as written.
    pub number: &'a str,
    /// Parameters such as `phone-context`.
    pub params: Params<'a>,
}

/// Why a URI is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// No `scheme:` prefix.
    #[error("no URI scheme")]
    NoScheme,
    /// White space or a control character inside the URI.
    #[error("white space inside the URI")]
    Whitespace,
    /// No host after the user part.
    #[error("no host in the URI")]
    EmptyHost,
    /// A host that is not a name, IPv4 or bracketed IPv6 address.
    #[error("invalid host in the URI")]
    BadHost,
    /// A port that is not 1..=65535.
    #[error("invalid port in the URI")]
    BadPort,
    /// Malformed URI parameters.
    #[error("invalid URI parameters")]
    BadParams,
    /// A tel URI without a number.
    #[error("tel URI without a number")]
    EmptyNumber,
}

impl From<ParamError> for UriError {
    fn from(_: ParamError) -> Self {
        UriError::BadParams
    }
}

impl<'a> Uri<'a> {
    /// Parses a URI that contains no white space.
    pub fn parse(s: &'a str) -> Result<Self, UriError> {
        if s.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(UriError::Whitespace);
        }
        let colon = lex::find(s, b':').ok_or(UriError::NoScheme)?;
        let scheme = &s[..colon];
        let valid_scheme = scheme
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !valid_scheme {
            return Err(UriError::NoScheme);
        }
        let rest = &s[colon + 1..];
        if scheme.eq_ignore_ascii_case("sip") {
            SipUri::parse_rest(rest, false).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("sips") {
            SipUri::parse_rest(rest, true).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("tel") {
            let end = lex::find(rest, b';').unwrap_or(rest.len());
            if end == 0 {
                return Err(UriError::EmptyNumber);
            }
            Ok(Uri::Tel(TelUri {
                number: &rest[..end],
                params: parse_params(&rest[end..])?,
            }))
        } else {
            Ok(Uri::Other { scheme, rest })
        }
    }

    /// The SIP URI, if this is one.
    pub fn as_sip(&self) -> Option<&SipUri<'a>> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }

    /// The scheme, lower-case for the known ones.
    pub fn scheme(&self) -> &str {
        match self {
            Uri::Sip(u) if u.secure => "sips",
            Uri::Sip(_) => "sip",
            Uri::Tel(_) => "tel",
            Uri::Other { scheme, .. } => scheme,
        }
    }
}

impl<'a> SipUri<'a> {
    fn parse_rest(rest: &'a str, secure: bool) -> Result<Self, UriError> {
        // '@' cannot appear unescaped outside the user info (RFC 3261 §25.1),
        // so the first one ends it, even when the user part holds ';' or '?'.
        let (userinfo, hostpart) = match lex::find(rest, b'@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => match lex::find(ui, b':') {
                Some(c) => (Some(&ui[..c]), Some(&ui[c + 1..])),
                None => (Some(ui), None),
            },
        };
        let (hostport, after) = match lex::find2(hostpart, b';', b'?') {
            Some(i) => (&hostpart[..i], &hostpart[i..]),
            None => (hostpart, ""),
        };
        let (host, port) = parse_hostport(hostport)?;
        let (params, headers) = match lex::find(after, b'?') {
            Some(q) => (&after[..q], Some(&after[q + 1..])),
            None => (after, None),
        };
        Ok(SipUri {
            secure,
            user,
            password,
            host,
            port,
            params: parse_params(params)?,
            headers,
        })
    }

    /// The user part with `%` escapes decoded; `None` if an escape is bad.
    pub fn user_decoded(&self) -> Option<Cow<'a, str>> {
        self.user.and_then(lex::percent_decode)
    }

    /// The `transport` parameter.
    pub fn transport(&self) -> Option<&'a str> {
        self.params.get("transport").flatten()
    }
}

/// Parses `host [":" port]`.
pub fn parse_hostport(s: &str) -> Result<(Host<'_>, Option<u16>), UriError> {
    if s.is_empty() {
        return Err(UriError::EmptyHost);
    }
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let close = lex::find(v6, b']').ok_or(UriError::BadHost)?;
        let addr: Ipv6Addr = v6[..close].parse().map_err(|_| UriError::BadHost)?;
        let after = &v6[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(UriError::BadHost),
        };
        (Host::V6(addr), port)
    } else {
        let (h, p) = match lex::rfind(s, b':') {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        };
        (parse_host(h)?, p)
    };
    let port = match port {
        None => None,
        Some(p) => Some(
            lex::parse_u64(p, 65535)
                .filter(|n| *n > 0)
                .and_then(|n| u16::try_from(n).ok())
                .ok_or(UriError::BadPort)?,
        ),
    };
    Ok((host, port))
}

fn parse_host(h: &str) -> Result<Host<'_>, UriError> {
    if h.is_empty() {
        return Err(UriError::EmptyHost);
    }
    if h.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && let Ok(v4) = h.parse::<Ipv4Addr>()
    {
        return Ok(Host::V4(v4));
    }
    let ok = h
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !h.starts_with(['-', '.']);
    if ok {
        Ok(Host::Domain(h))
    } else {
        Err(UriError::BadHost)
    }
}

impl Host<'_> {
    /// The address, when the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Domain(_) => None,
            Host::V4(a) => Some(IpAddr::V4(*a)),
            Host::V6(a) => Some(IpAddr::V6(*a)),
        }
    }
}

impl fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sip(s: &str) -> SipUri<'_> {
        match Uri::parse(s) {
            Ok(Uri::Sip(u)) => u,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn sip_uri_parts() {
        let u = sip("sips:alice:pw@[2001:db8::1]:5061;transport=tls;lr?Subject=x");
        assert!(u.secure);
        assert_eq!(u.user, Some("alice"));
        assert_eq!(u.password, Some("pw"));
        assert_eq!(u.host, Host::V6("2001:db8::1".parse().unwrap()));
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.transport(), Some("tls"));
        assert!(u.params.has("lr"));
        assert_eq!(u.headers, Some("Subject=x"));
        assert_eq!(u.host.to_string(), "[2001:db8::1]");
    }

    #[test]
    fn user_parts_with_unusual_characters() {
        let u = sip("sip:user;par=u%40example.net@example.com");
        assert_eq!(u.user, Some("user;par=u%40example.net"));
        assert_eq!(u.host, Host::Domain("example.com"));
        let u = sip(
            "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com",
        );
        assert_eq!(
            u.user,
            Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
        );
        assert_eq!(
            u.password,
            Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
        );
        let u = sip("sip:sips%3Auser%40example.com@example.net");
        assert_eq!(u.user_decoded().unwrap(), "sips:user@example.com");
    }

    #[test]
    fn other_schemes_and_errors() {
        assert!(
            matches!(Uri::parse("tel:+1-201-555-0123;phone-context=x"), Ok(Uri::Tel(t)) if t.number == "+1-201-555-0123")
        );
        assert!(matches!(
            Uri::parse("soap.beep://192.0.2.103:3002"),
            Ok(Uri::Other {
                scheme: "soap.beep",
                ..
            })
        ));
        assert_eq!(
            Uri::parse("<sip:user@example.com>"),
            Err(UriError::NoScheme)
        );
        assert_eq!(Uri::parse("sip:user@"), Err(UriError::EmptyHost));
        assert_eq!(Uri::parse("sip:host:0"), Err(UriError::BadPort));
        assert_eq!(Uri::parse("sip:ho$t"), Err(UriError::BadHost));
        assert_eq!(Uri::parse("sip:a b"), Err(UriError::Whitespace));
        assert_eq!(Uri::parse("sip:[::1"), Err(UriError::BadHost));
        assert_eq!(Uri::parse("sip:h;;"), Err(UriError::BadParams));
    }
}
