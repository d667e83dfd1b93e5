//! Transaction matching keys (RFC 3261 §17.1.3 and §17.2.3, with the
//! RFC 2543 fallback for branches without the magic cookie).
//!
//! Keys are hashed to a `u64` with a per-process random seed so that a
//! lookup allocates nothing; the transaction keeps the full key and every
//! hit is verified against it.

use std::hash::{BuildHasher, Hash, Hasher};

use crate::sip::message::{HeaderError, Message, Method};

/// The RFC 3261 branch prefix.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// The full matching key of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A client transaction: top Via branch and CSeq method.
    Client {
        /// Branch.
        branch: Box<str>,
        /// Method (INVITE, CANCEL, ...).
        method: Box<str>,
    },
    /// A server transaction with an RFC 3261 branch: branch, sent-by, and
    /// method (ACK counts as INVITE).
    Server {
        /// Branch.
        branch: Box<str>,
        /// sent-by host and port, lower-cased.
        sent_by: Box<str>,
        /// Method.
        method: Box<str>,
    },
    /// A server transaction of an RFC 2543 peer: the request's identity.
    Legacy(Box<str>),
}

/// Borrowed view of a key, hashed exactly like its owned [`Key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRef<'a> {
    /// See [`Key::Client`].
    Client {
        /// Branch.
        branch: &'a str,
        /// Method.
        method: &'a str,
    },
    /// See [`Key::Server`].
    Server {
        /// Branch.
        branch: &'a str,
        /// sent-by as written (compared case-insensitively).
        sent_by: &'a str,
        /// Method.
        method: &'a str,
    },
    /// See [`Key::Legacy`].
    Legacy(&'a str),
}

impl KeyRef<'_> {
    /// The owned key.
    pub fn to_owned_key(&self) -> Key {
        match *self {
            KeyRef::Client { branch, method } => Key::Client {
                branch: branch.into(),
                method: method.into(),
            },
            KeyRef::Server {
                branch,
                sent_by,
                method,
            } => Key::Server {
                branch: branch.into(),
                sent_by: sent_by.to_ascii_lowercase().into(),
                method: method.into(),
            },
            KeyRef::Legacy(s) => Key::Legacy(s.into()),
        }
    }

    /// The 64-bit hash used by the transaction table.
    pub fn hash_with(&self, seed: &impl BuildHasher) -> u64 {
        let mut h = seed.build_hasher();
        match *self {
            KeyRef::Client { branch, method } => {
                0u8.hash(&mut h);
                branch.hash(&mut h);
                method.hash(&mut h);
            }
            KeyRef::Server {
                branch,
                sent_by,
                method,
            } => {
                1u8.hash(&mut h);
                branch.hash(&mut h);
                for b in sent_by.bytes() {
                    h.write_u8(b.to_ascii_lowercase());
                }
                h.write_u8(0xff);
                method.hash(&mut h);
            }
            KeyRef::Legacy(s) => {
                2u8.hash(&mut h);
                s.hash(&mut h);
            }
        }
        h.finish()
    }

    /// Whether the owned key is this one.
    pub fn matches(&self, key: &Key) -> bool {
        match (*self, key) {
            (
                KeyRef::Client { branch, method },
                Key::Client {
                    branch: b,
                    method: m,
                },
            ) => branch == &**b && method == &**m,
            (
                KeyRef::Server {
                    branch,
                    sent_by,
                    method,
                },
                Key::Server {
                    branch: b,
                    sent_by: s,
                    method: m,
                },
            ) => branch == &**b && method == &**m && sent_by.eq_ignore_ascii_case(s),
            (KeyRef::Legacy(a), Key::Legacy(b)) => a == &**b,
            _ => false,
        }
    }
}

/// The key of the client transaction a response belongs to.
pub fn response_key(msg: &Message) -> Result<KeyRef<'_>, HeaderError> {
    let via = msg.top_via()?;
    let branch = via.branch().ok_or(HeaderError::Missing)?;
    let method = msg.cseq()?.method;
    Ok(KeyRef::Client { branch, method })
}

/// The key of the server transaction a request belongs to. `legacy` holds
/// the RFC 2543 identity when the branch lacks the magic cookie.
pub fn request_key<'a>(
    msg: &'a Message,
    legacy: &'a mut String,
) -> Result<KeyRef<'a>, HeaderError> {
    let method = match msg.method() {
        Some(Method::Ack) => "INVITE",
        _ => msg.method_str().ok_or(HeaderError::Missing)?,
    };
    let top = msg
        .value(crate::sip::message::HeaderName::Via)
        .ok_or(HeaderError::Missing)?;
    let top = crate::sip::message::lex::split_list(top)
        .next()
        .unwrap_or_default();
    let via = crate::sip::message::Via::parse(top)?;
    match via.branch() {
        Some(branch) if branch.starts_with(MAGIC_COOKIE) => {
            let sent_by = sent_by_text(top);
            Ok(KeyRef::Server {
                branch,
                sent_by,
                method,
            })
        }
        _ => {
            // RFC 3261 §17.2.3: Request-URI, To tag, From tag, Call-ID,
            // CSeq number and top Via; the To tag is left out for ACK,
            // which carries the tag of the response.
            let to_tag = if msg.method() == Some(Method::Ack) {
                ""
            } else {
                msg.to_header()?.tag().unwrap_or("")
            };
            legacy.clear();
            for part in [
                msg.request_uri().unwrap_or(""),
                to_tag,
                msg.from_header()?.tag().unwrap_or(""),
                msg.call_id().unwrap_or(""),
                &msg.cseq()?.seq.to_string(),
                method,
                top,
            ] {
                legacy.push_str(part);
                legacy.push('\n');
            }
            Ok(KeyRef::Legacy(legacy))
        }
    }
}

/// The sent-by of a via-parm as written (host and port, without params).
fn sent_by_text(via: &str) -> &str {
    // "SIP / 2.0 / UDP host:port ;params": the sent-by is the first
    // white-space separated word after the transport.
    let after_proto = via
        .match_indices('/')
        .nth(1)
        .map_or(via, |(i, _)| &via[i + 1..]);
    let after_proto = crate::sip::message::lex::trim_start(after_proto);
    let after_transport = after_proto.trim_start_matches(|c: char| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | '.' | '!' | '%' | '*' | '_' | '+' | '`' | '\'' | '~'
            )
    });
    let sent = crate::sip::message::lex::trim_start(after_transport);
    let end = sent
        .find(|c: char| c == ';' || c.is_ascii_whitespace())
        .unwrap_or(sent.len());
    &sent[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::RandomState;

    #[test]
    fn sent_by_is_extracted_as_written() {
        assert_eq!(
            sent_by_text("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1"),
            "192.0.2.1:5060"
        );
        assert_eq!(
            sent_by_text("SIP  /   2.0\r\n /UDP\r\n    Host.Example.com;branch=x"),
            "Host.Example.com"
        );
        assert_eq!(
            sent_by_text("SIP/2.0/TLS [2001:db8::1]:5061 ;rport"),
            "[2001:db8::1]:5061"
        );
    }

    #[test]
    fn borrowed_and_owned_keys_agree() {
        let seed = RandomState::new();
        let k = KeyRef::Server {
            branch: "z9hG4bKa",
            sent_by: "Host:5060",
            method: "INVITE",
        };
        let owned = k.to_owned_key();
        assert!(k.matches(&owned));
        let lower = KeyRef::Server {
            branch: "z9hG4bKa",
            sent_by: "host:5060",
            method: "INVITE",
        };
        assert_eq!(k.hash_with(&seed), lower.hash_with(&seed));
        assert!(lower.matches(&owned));
        let other = KeyRef::Client {
            branch: "z9hG4bKa",
            method: "INVITE",
        };
        assert!(!other.matches(&owned));
        assert_ne!(other.hash_with(&seed), k.hash_with(&seed));
    }
}
