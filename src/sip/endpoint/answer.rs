//! What the endpoint answers itself to requests outside a dialog (sans-IO):
//! OPTIONS, methods it does not support, unknown URI schemes and
//! extensions. An acceptable INVITE is left to its transaction user.

use crate::sip::message::{Message, Method, Uri};

/// Methods dialerd accepts.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO";
/// Bodies dialerd understands.
pub const ACCEPT: &str = "application/sdp";
/// Option tags dialerd supports (none yet).
pub const SUPPORTED: &str = "";

/// A response decided for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub code: u16,
    /// Reason phrase.
    pub reason: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    fn new(code: u16, reason: &'static str) -> Self {
        Self {
            code,
            reason,
            headers: Vec::new(),
        }
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// The answer to an out-of-dialog request, or `None` for an ACK (never
/// answered) and for an INVITE that passes the checks every request gets
/// (its transaction user decides). A CANCEL is answered by the caller,
/// which knows whether its INVITE transaction exists.
pub fn answer(request: &Message) -> Option<Answer> {
    let method = request.method()?;
    if method == Method::Ack {
        return None;
    }
    // RFC 3261 §8.2.2.1: a scheme we do not understand is 416.
    let scheme_ok = request
        .request_uri()
        .and_then(|u| Uri::parse(u).ok())
        .is_some_and(|u| matches!(u, Uri::Sip(_) | Uri::Tel(_)));
    if !scheme_ok {
        return Some(Answer::new(416, "Unsupported URI Scheme"));
    }
    // RFC 3261 §8.2.2.3: every Require option tag is unknown to us.
    let unsupported: Vec<&str> = request.require().collect();
    if !unsupported.is_empty() && method != Method::Cancel {
        return Some(Answer::new(420, "Bad Extension").with("Unsupported", unsupported.join(", ")));
    }
    Some(match method {
        Method::Options => Answer::new(200, "OK")
            .with("Allow", ALLOW)
            .with("Accept", ACCEPT)
            .with("Supported", SUPPORTED),
        Method::Bye => Answer::new(481, "Call/Transaction Does Not Exist"),
        Method::Cancel => Answer::new(481, "Call/Transaction Does Not Exist"),
        Method::Invite => return None,
        Method::Extension => Answer::new(501, "Not Implemented").with("Allow", ALLOW),
        _ => Answer::new(405, "Method Not Allowed").with("Allow", ALLOW),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str, extra: &str) -> Message {
        Message::parse_datagram(format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\n\
             To: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
        ))
        .unwrap()
    }

    #[test]
    fn options_is_answered_with_capabilities() {
        let a = answer(&req("OPTIONS", "sip:d@h", "")).unwrap();
        assert_eq!(a.code, 200);
        let names: Vec<_> = a.headers.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["Allow", "Accept", "Supported"]);
    }

    #[test]
    fn unsupported_requests() {
        assert_eq!(answer(&req("REGISTER", "sip:h", "")).unwrap().code, 405);
        assert_eq!(answer(&req("SUBSCRIBE", "sip:h", "")).unwrap().code, 405);
        assert_eq!(answer(&req("FOO", "sip:h", "")).unwrap().code, 501);
        assert!(answer(&req("INVITE", "sip:h", "")).is_none());
        assert_eq!(
            answer(&req("INVITE", "sip:h", "Require: 100rel\r\n"))
                .unwrap()
                .code,
            420
        );
        assert_eq!(answer(&req("BYE", "sip:h", "")).unwrap().code, 481);
        assert!(answer(&req("ACK", "sip:h", "")).is_none());
        let a = answer(&req("OPTIONS", "sip:h", "Require: foo, bar\r\n")).unwrap();
        assert_eq!((a.code, a.headers[0].1.as_str()), (420, "foo, bar"));
        assert_eq!(
            answer(&req("OPTIONS", "NOTSIP:joe@example.org", ""))
                .unwrap()
                .code,
            416
        );
        assert_eq!(answer(&req("OPTIONS", "tel:+1555", "")).unwrap().code, 200);
    }
}
