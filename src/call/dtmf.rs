//! DTMF as SIP INFO (`application/dtmf-relay`): digits we send one INFO at
//! a time in the call's dialog, and digits the peer sends us. RFC 4733
//! telephone-events come with the media relay.

use std::time::Instant;

use super::table::{CallError, Calls};
use super::{CallId, CallNote, CallState, NoteKind};
use crate::sip::endpoint::{Endpoint, OutRequest};
use crate::sip::message::{HeaderName, Message};
use crate::sip::transaction::TxnId;

/// Most digits one request may queue.
pub const MAX_DIGITS: usize = 32;
/// Duration announced for each digit we send, milliseconds.
const DIGIT_MS: u32 = 160;

/// Whether `c` is a DTMF digit we can send.
pub fn is_digit(c: char) -> bool {
    matches!(c, '0'..='9' | '*' | '#' | 'A'..='D')
}

impl Calls {
    /// Queues `digits` for an answered call; they go out as INFO requests,
    /// one after the other.
    pub fn send_dtmf(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        id: CallId,
        digits: &str,
    ) -> Result<(), CallError> {
        let c = self.calls.get_mut(&id).ok_or(CallError::Unknown(id))?;
        if !matches!(c.state, CallState::Answered | CallState::Bridged) {
            return Err(CallError::WrongState {
                call: id,
                state: c.state,
                action: "send DTMF",
            });
        }
        if c.dialog.is_none() {
            return Err(CallError::NoDialog(id));
        }
        c.dtmf.extend(
            digits
                .chars()
                .filter(|d| is_digit(*d))
                .take(MAX_DIGITS.saturating_sub(c.dtmf.len())),
        );
        if c.info.is_none() {
            self.next_digit(now, ep, id);
        }
        Ok(())
    }

    /// Sends the next queued digit, if any and none is in flight.
    fn next_digit(&mut self, now: Instant, ep: &mut Endpoint, id: CallId) {
        let user_agent = self.config.user_agent.clone();
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(digit) = c.dtmf.pop_front() else {
            return;
        };
        let Some(d) = c.dialog.as_mut() else {
            c.dtmf.clear();
            return;
        };
        let mut info = d.request("INFO");
        info.push("User-Agent", &user_agent);
        let info = info.body(
            "application/dtmf-relay",
            format!("Signal={digit}\r\nDuration={DIGIT_MS}\r\n").into_bytes(),
        );
        let hop = d.next_hop;
        match ep.send_request(now, Self::owner(id), OutRequest::new(info), hop) {
            Ok(txn) => c.info = Some(txn),
            Err(e) => {
                tracing::debug!(call = %id, error = %e, "INFO not sent; DTMF dropped");
                c.dtmf.clear();
            }
        }
    }

    /// A response to one of our INFO requests; `true` when it was one.
    pub(super) fn on_info_response(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        id: CallId,
        txn: TxnId,
        code: u16,
    ) -> bool {
        let Some(c) = self.calls.get_mut(&id) else {
            return false;
        };
        if c.info != Some(txn) {
            return false;
        }
        if code >= 200 {
            c.info = None;
            if code >= 300 {
                tracing::debug!(call = %id, code, "INFO refused; remaining DTMF dropped");
                c.dtmf.clear();
            }
            self.next_digit(now, ep, id);
        }
        true
    }

    /// A failed INFO (timeout, transport): the remaining digits are dropped.
    pub(super) fn on_info_failed(&mut self, id: CallId, txn: TxnId) -> bool {
        match self.calls.get_mut(&id) {
            Some(c) if c.info == Some(txn) => {
                c.info = None;
                c.dtmf.clear();
                true
            }
            _ => false,
        }
    }

    /// An INFO from the peer: a DTMF digit becomes a note.
    pub(super) fn on_peer_info(&mut self, id: CallId, request: &Message) {
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        let kind = request
            .value(HeaderName::ContentType)
            .map(|t| t.trim().to_ascii_lowercase());
        let Some(digit) = parse_info(kind.as_deref(), request.body()) else {
            return;
        };
        self.notes.push(CallNote {
            name: c.name.clone(),
            kind: NoteKind::Dtmf {
                digit: digit.0,
                duration_ms: digit.1,
            },
        });
    }
}

/// The digit and duration of an INFO body of type `content_type`.
fn parse_info(content_type: Option<&str>, body: &[u8]) -> Option<(char, u32)> {
    let text = std::str::from_utf8(body).ok()?;
    match content_type? {
        "application/dtmf-relay" => {
            let mut digit = None;
            let mut duration = DIGIT_MS;
            for line in text.lines() {
                let Some((name, value)) = line.split_once('=') else {
                    continue;
                };
                match name.trim().to_ascii_lowercase().as_str() {
                    "signal" => digit = value.trim().chars().next(),
                    "duration" => duration = value.trim().parse().unwrap_or(DIGIT_MS),
                    _ => {}
                }
            }
            digit
                .filter(|d| is_digit(d.to_ascii_uppercase()))
                .map(|d| (d.to_ascii_uppercase(), duration))
        }
        "application/dtmf" => text
            .trim()
            .chars()
            .next()
            .filter(|d| is_digit(d.to_ascii_uppercase()))
            .map(|d| (d.to_ascii_uppercase(), DIGIT_MS)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_bodies_are_read() {
        let relay = Some("application/dtmf-relay");
        assert_eq!(
            parse_info(relay, b"Signal=5\r\nDuration=200\r\n"),
            Some(('5', 200))
        );
        assert_eq!(
            parse_info(relay, b"signal= #\nduration=x"),
            Some(('#', 160))
        );
        assert_eq!(parse_info(relay, b"Signal=Z\r\n"), None);
        assert_eq!(parse_info(Some("application/dtmf"), b"a"), Some(('A', 160)));
        assert_eq!(parse_info(Some("text/plain"), b"Signal=1"), None);
        assert_eq!(parse_info(None, b"Signal=1"), None);
        assert!(is_digit('D') && !is_digit('E'));
    }
}
