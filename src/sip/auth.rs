//! Digest client authentication (RFC 2617, RFC 7616, RFC 8760 for SIP):
//! MD5, MD5-sess, SHA-256, SHA-256-sess; qop auth and auth-int; nonce count
//! and cnonce; the strongest of several challenges. Used for REGISTER now
//! and for INVITE and BYE later.

use md5::Md5;
use sha2::{Digest, Sha256};

use super::message::{AuthParams, HeaderError, Message};

/// Digest algorithms, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Algorithm {
    /// MD5 (the default when a challenge names none).
    Md5,
    /// MD5-sess.
    Md5Sess,
    /// SHA-256 (RFC 7616, RFC 8760).
    Sha256,
    /// SHA-256-sess.
    Sha256Sess,
}

impl Algorithm {
    /// Parses the `algorithm` parameter (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        [
            ("MD5", Algorithm::Md5),
            ("MD5-sess", Algorithm::Md5Sess),
            ("SHA-256", Algorithm::Sha256),
            ("SHA-256-sess", Algorithm::Sha256Sess),
        ]
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(s))
        .map(|(_, a)| a)
    }

    /// The token for the Authorization header.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    fn is_sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    /// Lower-case hex digest of `data`.
    pub fn hex(self, data: &[u8]) -> String {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => to_hex(&Md5::digest(data)),
            Algorithm::Sha256 | Algorithm::Sha256Sess => to_hex(&Sha256::digest(data)),
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Quality of protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qop {
    /// Authenticates the request line.
    Auth,
    /// Also authenticates the body.
    AuthInt,
}

/// A parsed Digest challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Protection space.
    pub realm: String,
    /// Server nonce.
    pub nonce: String,
    /// Opaque value to echo.
    pub opaque: Option<String>,
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Offered qop values; empty means RFC 2069 compatibility (no qop).
    pub qop: Vec<Qop>,
    /// `stale=true`: the credentials were right, only the nonce was old.
    pub stale: bool,
    /// From a 407 (Proxy-Authenticate), answered with Proxy-Authorization.
    pub proxy: bool,
}

/// Why no usable challenge was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The response carries no challenge header.
    #[error("no {0} challenge")]
    Missing(&'static str),
    /// A challenge header does not parse.
    #[error("malformed challenge: {0}")]
    Malformed(HeaderError),
    /// Only schemes or algorithms dialerd does not support.
    #[error("no supported challenge (offered: {0})")]
    Unsupported(String),
}

impl Challenge {
    /// Reads a Digest challenge; `None` for other schemes or algorithms.
    pub fn from_params(p: &AuthParams<'_>, proxy: bool) -> Option<Self> {
        if !p.scheme.eq_ignore_ascii_case("Digest") {
            return None;
        }
        let algorithm = match p.get("algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(&a)?,
        };
        let qop = p
            .get("qop")
            .map(|q| {
                q.split(',')
                    .filter_map(|t| match t.trim().to_ascii_lowercase().as_str() {
                        "auth" => Some(Qop::Auth),
                        "auth-int" => Some(Qop::AuthInt),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Challenge {
            realm: p.get("realm")?,
            nonce: p.get("nonce")?,
            opaque: p.get("opaque"),
            algorithm,
            qop,
            stale: p
                .get("stale")
                .is_some_and(|s| s.eq_ignore_ascii_case("true")),
            proxy,
        })
    }

    /// The strongest supported challenge of a 401 or 407 response.
    pub fn best_of(response: &Message) -> Result<Self, AuthError> {
        let proxy = response.status() == Some(407);
        let header = if proxy {
            "Proxy-Authenticate"
        } else {
            "WWW-Authenticate"
        };
        let mut offered = Vec::new();
        let mut best: Option<Challenge> = None;
        for parsed in response.challenges(proxy) {
            let params = parsed.map_err(AuthError::Malformed)?;
            offered.push(format!(
                "{} {}",
                params.scheme,
                params.get("algorithm").unwrap_or_else(|| "MD5".into())
            ));
            if let Some(c) = Challenge::from_params(&params, proxy)
                && best.as_ref().is_none_or(|b| c.algorithm > b.algorithm)
            {
                best = Some(c);
            }
        }
        match best {
            Some(c) => Ok(c),
            None if offered.is_empty() => Err(AuthError::Missing(header)),
            None => Err(AuthError::Unsupported(offered.join(", "))),
        }
    }

    /// The qop to answer with: `auth` when offered, else `auth-int`.
    pub fn chosen_qop(&self) -> Option<Qop> {
        if self.qop.contains(&Qop::Auth) {
            Some(Qop::Auth)
        } else {
            self.qop.first().copied()
        }
    }

    /// Name of the header that answers this challenge.
    pub fn answer_header(&self) -> &'static str {
        if self.proxy {
            "Proxy-Authorization"
        } else {
            "Authorization"
        }
    }
}

/// What a request answering a challenge is made of.
#[derive(Clone, Copy)]
pub struct Attempt<'a> {
    /// Digest user name.
    pub username: &'a str,
    /// Password.
    pub password: &'a str,
    /// Request method.
    pub method: &'a str,
    /// Digest URI (the Request-URI).
    pub uri: &'a str,
    /// Request body (for auth-int).
    pub body: &'a [u8],
    /// Nonce count, from 1 for each new nonce.
    pub nc: u32,
    /// Client nonce.
    pub cnonce: &'a str,
}

impl std::fmt::Debug for Attempt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("username", &self.username)
            .field("password", &crate::config::REDACTED)
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("nc", &self.nc)
            .finish_non_exhaustive()
    }
}

/// The `response` value (RFC 7616 §3.4.1).
pub fn response(ch: &Challenge, a: &Attempt<'_>) -> String {
    let alg = ch.algorithm;
    let mut ha1 = alg.hex(format!("{}:{}:{}", a.username, ch.realm, a.password).as_bytes());
    if alg.is_sess() {
        ha1 = alg.hex(format!("{ha1}:{}:{}", ch.nonce, a.cnonce).as_bytes());
    }
    let qop = ch.chosen_qop();
    let ha2 = match qop {
        Some(Qop::AuthInt) => {
            alg.hex(format!("{}:{}:{}", a.method, a.uri, alg.hex(a.body)).as_bytes())
        }
        _ => alg.hex(format!("{}:{}", a.method, a.uri).as_bytes()),
    };
    match qop {
        None => alg.hex(format!("{ha1}:{}:{ha2}", ch.nonce).as_bytes()),
        Some(q) => {
            let q = if q == Qop::Auth { "auth" } else { "auth-int" };
            alg.hex(format!("{ha1}:{}:{:08x}:{}:{q}:{ha2}", ch.nonce, a.nc, a.cnonce).as_bytes())
        }
    }
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The Authorization (or Proxy-Authorization) header value.
pub fn credentials(ch: &Challenge, a: &Attempt<'_>) -> String {
    let mut v = format!(
        "Digest username={}, realm={}, nonce={}, uri={}, response=\"{}\", algorithm={}",
        quoted(a.username),
        quoted(&ch.realm),
        quoted(&ch.nonce),
        quoted(a.uri),
        response(ch, a),
        ch.algorithm.as_str()
    );
    if let Some(q) = ch.chosen_qop() {
        let q = if q == Qop::Auth { "auth" } else { "auth-int" };
        v.push_str(&format!(
            ", qop={q}, nc={:08x}, cnonce={}",
            a.nc,
            quoted(a.cnonce)
        ));
    }
    if let Some(o) = &ch.opaque {
        v.push_str(&format!(", opaque={}", quoted(o)));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(realm: &str, nonce: &str, algorithm: Algorithm, qop: Vec<Qop>) -> Challenge {
        Challenge {
            realm: realm.into(),
            nonce: nonce.into(),
            opaque: None,
            algorithm,
            qop,
            stale: false,
            proxy: false,
        }
    }

    #[test]
    fn rfc2617_section_3_5() {
        let ch = challenge(
            "testrealm@host.com",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Algorithm::Md5,
            vec![Qop::Auth, Qop::AuthInt],
        );
        let a = Attempt {
            username: "Mufasa",
            password: "Circle Of Life",
            method: "GET",
            uri: "/dir/index.html",
            body: b"",
            nc: 1,
            cnonce: "0a4f113b",
        };
        assert_eq!(response(&ch, &a), "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc7616_section_3_9_1_md5_and_sha256() {
        let a = Attempt {
            username: "Mufasa",
            password: "Circle of Life",
            method: "GET",
            uri: "/dir/index.html",
            body: b"",
            nc: 1,
            cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        };
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let qop = vec![Qop::Auth, Qop::AuthInt];
        let md5 = challenge("http-auth@example.org", nonce, Algorithm::Md5, qop.clone());
        assert_eq!(response(&md5, &a), "8ca523f5e9506fed4657c9700eebdbec");
        let sha = challenge("http-auth@example.org", nonce, Algorithm::Sha256, qop);
        assert_eq!(
            response(&sha, &a),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn sess_auth_int_and_no_qop_follow_the_formulas() {
        let a = Attempt {
            username: "u",
            password: "p",
            method: "REGISTER",
            uri: "sip:r",
            body: b"body",
            nc: 2,
            cnonce: "c",
        };
        let h = |alg: Algorithm, s: &str| alg.hex(s.as_bytes());
        let sess = challenge("r", "n", Algorithm::Sha256Sess, vec![Qop::Auth]);
        let ha1 = h(
            Algorithm::Sha256,
            &format!("{}:n:c", h(Algorithm::Sha256, "u:r:p")),
        );
        let ha2 = h(Algorithm::Sha256, "REGISTER:sip:r");
        assert_eq!(
            response(&sess, &a),
            h(Algorithm::Sha256, &format!("{ha1}:n:00000002:c:auth:{ha2}"))
        );
        let int = challenge("r", "n", Algorithm::Md5, vec![Qop::AuthInt]);
        let ha1 = h(Algorithm::Md5, "u:r:p");
        let ha2 = h(
            Algorithm::Md5,
            &format!("REGISTER:sip:r:{}", h(Algorithm::Md5, "body")),
        );
        assert_eq!(
            response(&int, &a),
            h(
                Algorithm::Md5,
                &format!("{ha1}:n:00000002:c:auth-int:{ha2}")
            )
        );
        let plain = challenge("r", "n", Algorithm::Md5, vec![]);
        let ha2 = h(Algorithm::Md5, "REGISTER:sip:r");
        assert_eq!(
            response(&plain, &a),
            h(Algorithm::Md5, &format!("{ha1}:n:{ha2}"))
        );
        assert!(
            !credentials(&plain, &a).contains("qop"),
            "RFC 2069 form has no qop"
        );
    }

    fn response_with(headers: &str, code: u16) -> Message {
        Message::parse_datagram(format!(
            "SIP/2.0 {code} Unauthorized\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\n\
             To: <sip:a@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n{headers}Content-Length: 0\r\n\r\n"
        ))
        .unwrap()
    }

    #[test]
    fn the_strongest_supported_challenge_wins() {
        let m = response_with(
            "WWW-Authenticate: Digest realm=\"r\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"\r\n\
             WWW-Authenticate: Digest realm=\"r\", nonce=\"n2\", algorithm=SHA-256, qop=\"auth\"\r\n\
             WWW-Authenticate: Digest realm=\"r\", nonce=\"n3\", algorithm=SHA-512-256\r\n",
            401,
        );
        let c = Challenge::best_of(&m).unwrap();
        assert_eq!((c.algorithm, c.nonce.as_str()), (Algorithm::Sha256, "n2"));
        assert!(!c.proxy);
        let p = response_with(
            "Proxy-Authenticate: Digest realm=\"p\", nonce=\"x\", stale=TRUE\r\n",
            407,
        );
        let c = Challenge::best_of(&p).unwrap();
        assert!(c.proxy && c.stale);
        assert_eq!(c.answer_header(), "Proxy-Authorization");
        assert_eq!(c.algorithm, Algorithm::Md5, "no algorithm means MD5");
        let none = response_with("", 401);
        assert_eq!(
            Challenge::best_of(&none),
            Err(AuthError::Missing("WWW-Authenticate"))
        );
        let other = response_with("WWW-Authenticate: Basic realm=\"r\"\r\n", 401);
        assert!(matches!(
            Challenge::best_of(&other),
            Err(AuthError::Unsupported(_))
        ));
    }

    #[test]
    fn credentials_header_is_complete_and_quoted() {
        let mut ch = challenge("r\"x", "n", Algorithm::Md5, vec![Qop::Auth]);
        ch.opaque = Some("o".into());
        let a = Attempt {
            username: "10\"01",
            password: "p",
            method: "REGISTER",
            uri: "sip:pbx",
            body: b"",
            nc: 1,
            cnonce: "abc",
        };
        let v = credentials(&ch, &a);
        assert!(v.starts_with("Digest username=\"10\\\"01\", realm=\"r\\\"x\", nonce=\"n\", uri=\"sip:pbx\", response=\""), "{v}");
        assert!(
            v.ends_with(", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"abc\", opaque=\"o\""),
            "{v}"
        );
        let parsed = AuthParams::parse(&v).unwrap();
        assert_eq!(parsed.get("response").unwrap(), response(&ch, &a));
    }
}
