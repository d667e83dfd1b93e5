//! Dialog state (RFC 3261 §12), sans-IO: the tags, the route set, the
//! remote target and the sequence numbers a call needs to build its
//! in-dialog requests and to check the peer's.
//!
//! In-dialog requests go to the dialog's next hop: the flow the dialog was
//! set up on (a PBX's registered TLS connection, never a new connection to
//! the Contact's host). The route set and remote target still shape the
//! request itself, so proxies that Record-Route see what they expect.

use crate::sip::endpoint::DialogKey;
use crate::sip::message::{HeaderError, HeaderName, Message, NameAddr, OutMessage};
use crate::sip::target::Target;

/// Why a message cannot set up or belong to a dialog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    /// A header needed for the dialog is missing or malformed.
    #[error("{header}: {error}")]
    Header {
        /// Which one.
        header: &'static str,
        /// What was wrong.
        error: HeaderError,
    },
    /// The response has no To tag.
    #[error("response without a To tag")]
    NoRemoteTag,
    /// No Contact to send in-dialog requests to.
    #[error("no Contact")]
    NoContact,
    /// The peer's CSeq went backwards (RFC 3261 §12.2.2: 500).
    #[error("CSeq {got} is below the dialog's {last}")]
    CSeqBackwards {
        /// The last one seen.
        last: u32,
        /// The one received.
        got: u32,
    },
}

fn header(header: &'static str) -> impl Fn(HeaderError) -> DialogError {
    move |error| DialogError::Header { header, error }
}

/// One dialog, early or confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag.
    pub remote_tag: String,
    /// Our From (as UAC) or To (as UAS) value, with our tag.
    pub local_party: String,
    /// The peer's value, with its tag.
    pub remote_party: String,
    /// Where requests go: the peer's Contact URI.
    pub remote_target: String,
    /// Route set, in the order requests carry it.
    pub route_set: Vec<String>,
    /// Our last CSeq number.
    pub local_cseq: u32,
    /// The peer's last CSeq number, once it sent a request.
    pub remote_cseq: Option<u32>,
    /// Whether a 2xx confirmed it.
    pub confirmed: bool,
    /// The flow and address in-dialog requests leave on.
    pub next_hop: Target,
}

/// The first URI of a Contact header.
fn contact_uri(msg: &Message) -> Result<String, DialogError> {
    match msg.contacts().map_err(header("Contact"))? {
        crate::sip::message::Contacts::List(list) => list
            .first()
            .map(|c| c.uri_str.to_owned())
            .ok_or(DialogError::NoContact),
        crate::sip::message::Contacts::Star => Err(DialogError::NoContact),
    }
}

fn record_route(msg: &Message) -> Result<Vec<String>, DialogError> {
    msg.values(HeaderName::RecordRoute)
        .flat_map(crate::sip::message::lex::split_list)
        .map(|v| {
            NameAddr::parse(v)
                .map(|_| v.trim().to_owned())
                .map_err(header("Record-Route"))
        })
        .collect()
}

impl Dialog {
    /// The dialog a response to our INVITE sets up (a 1xx with a To tag:
    /// early; a 2xx: confirmed). `local_cseq` is the INVITE's.
    pub fn as_uac(
        response: &Message,
        local_cseq: u32,
        next_hop: Target,
    ) -> Result<Self, DialogError> {
        let from = response.from_header().map_err(header("From"))?;
        let to = response.to_header().map_err(header("To"))?;
        let remote_tag = to.tag().ok_or(DialogError::NoRemoteTag)?.to_owned();
        let local_tag = from.tag().unwrap_or_default().to_owned();
        let mut route_set = record_route(response)?;
        route_set.reverse();
        Ok(Self {
            call_id: response.call_id().unwrap_or_default().to_owned(),
            local_tag,
            remote_tag,
            local_party: response.value(HeaderName::From).unwrap_or("").to_owned(),
            remote_party: response.value(HeaderName::To).unwrap_or("").to_owned(),
            remote_target: contact_uri(response)?,
            route_set,
            local_cseq,
            remote_cseq: None,
            confirmed: response.status().is_some_and(|s| (200..300).contains(&s)),
            next_hop,
        })
    }

    /// The dialog our response to `request` sets up, with our tag.
    pub fn as_uas(
        request: &Message,
        local_tag: &str,
        next_hop: Target,
    ) -> Result<Self, DialogError> {
        let from = request.from_header().map_err(header("From"))?;
        let cseq = request.cseq().map_err(header("CSeq"))?;
        let to = request.value(HeaderName::To).unwrap_or("");
        Ok(Self {
            call_id: request.call_id().unwrap_or_default().to_owned(),
            local_tag: local_tag.to_owned(),
            remote_tag: from.tag().unwrap_or_default().to_owned(),
            local_party: format!("{to};tag={local_tag}"),
            remote_party: request.value(HeaderName::From).unwrap_or("").to_owned(),
            remote_target: contact_uri(request)?,
            route_set: record_route(request)?,
            local_cseq: 0,
            remote_cseq: Some(cseq.seq),
            confirmed: false,
            next_hop,
        })
    }

    /// The key the endpoint routes the dialog's requests by.
    pub fn key(&self) -> DialogKey {
        DialogKey {
            call_id: self.call_id.as_str().into(),
            local_tag: self.local_tag.as_str().into(),
            remote_tag: self.remote_tag.as_str().into(),
        }
    }

    /// A new in-dialog request (BYE, re-INVITE, UPDATE, INFO) with the next
    /// CSeq: Request-URI and Route per the route set (RFC 3261 §12.2.1.1,
    /// loose and strict routing).
    pub fn request(&mut self, method: &str) -> OutMessage {
        self.local_cseq = self.local_cseq.saturating_add(1);
        self.with_cseq(method, self.local_cseq)
    }

    /// The ACK of a 2xx to the INVITE with CSeq `invite_cseq`.
    pub fn ack(&self, invite_cseq: u32) -> OutMessage {
        self.with_cseq("ACK", invite_cseq)
    }

    fn with_cseq(&self, method: &str, cseq: u32) -> OutMessage {
        let strict = self
            .route_set
            .first()
            .is_some_and(|r| NameAddr::parse(r).is_ok_and(|n| !is_loose(&n)));
        let (uri, routes): (String, Vec<&str>) = if strict {
            let first = self
                .route_set
                .first()
                .and_then(|r| NameAddr::parse(r).ok().map(|n| n.uri_str.to_owned()))
                .unwrap_or_default();
            let mut rest: Vec<&str> = self.route_set.iter().skip(1).map(String::as_str).collect();
            rest.push(&self.remote_target);
            (first, rest)
        } else {
            (
                self.remote_target.clone(),
                self.route_set.iter().map(String::as_str).collect(),
            )
        };
        let mut out = OutMessage::request(method, &uri);
        for r in routes {
            if r.starts_with('<') {
                out.push("Route", r);
            } else {
                out.push("Route", format!("<{r}>"));
            }
        }
        out.push("Max-Forwards", "70");
        out.push("From", &self.local_party);
        out.push("To", &self.remote_party);
        out.push("Call-ID", &self.call_id);
        out.push("CSeq", format!("{cseq} {method}"));
        out
    }

    /// Checks and records the CSeq of the peer's in-dialog request (an ACK
    /// carries its INVITE's, which is not a new number).
    pub fn receive(&mut self, request: &Message) -> Result<(), DialogError> {
        let cseq = request.cseq().map_err(header("CSeq"))?;
        if cseq.method.eq_ignore_ascii_case("ACK") {
            return Ok(());
        }
        match self.remote_cseq {
            Some(last) if cseq.seq <= last && !cseq.method.eq_ignore_ascii_case("CANCEL") => {
                Err(DialogError::CSeqBackwards {
                    last,
                    got: cseq.seq,
                })
            }
            _ => {
                self.remote_cseq = Some(cseq.seq);
                Ok(())
            }
        }
    }

    /// Takes a new remote target from a target-refresh request or its 2xx
    /// (re-INVITE, UPDATE) when it carries a Contact.
    pub fn refresh_target(&mut self, msg: &Message) {
        if let Ok(uri) = contact_uri(msg) {
            self.remote_target = uri;
        }
    }

    /// Confirms an early dialog with its 2xx: the remote target and (as
    /// UAC) the route set come from the 2xx (RFC 3261 §13.2.2.4).
    pub fn confirm(&mut self, response: &Message) -> Result<(), DialogError> {
        self.remote_target = contact_uri(response)?;
        let mut routes = record_route(response)?;
        routes.reverse();
        self.route_set = routes;
        self.confirmed = true;
        Ok(())
    }
}

fn is_loose(n: &NameAddr<'_>) -> bool {
    n.uri.as_sip().is_some_and(|s| s.params.has("lr"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::target::Transport;

    fn parse(s: &str) -> Message {
        Message::parse_datagram(s.replace('\n', "\r\n").into_bytes()).unwrap()
    }

    fn hop() -> Target {
        Target::new(Transport::Udp, "127.0.0.1:5060".parse().unwrap())
    }

    const OK: &str = "SIP/2.0 200 OK
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa
Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>
Record-Route: <sip:p3.example.com;lr>
From: \"Dialer\" <sip:dialer@example.com>;tag=ours
To: <sip:bob@example.com>;tag=theirs
Call-ID: c1
CSeq: 1 INVITE
Contact: <sip:bob@192.0.2.4:5062;transport=udp>
Content-Length: 0

";

    #[test]
    fn uac_route_set_is_reversed_and_requests_are_loose_routed() {
        let mut d = Dialog::as_uac(&parse(OK), 1, hop()).unwrap();
        assert!(d.confirmed);
        assert_eq!(d.remote_target, "sip:bob@192.0.2.4:5062;transport=udp");
        let bye = d.request("BYE").encode();
        let text = std::str::from_utf8(&bye).unwrap();
        assert!(text.starts_with("BYE sip:bob@192.0.2.4:5062;transport=udp SIP/2.0\r\n"));
        let routes: Vec<&str> = text.lines().filter(|l| l.starts_with("Route:")).collect();
        assert_eq!(
            routes,
            [
                "Route: <sip:p3.example.com;lr>",
                "Route: <sip:p2.example.com;lr>",
                "Route: <sip:p1.example.com;lr>"
            ]
        );
        assert!(text.contains("CSeq: 2 BYE\r\n"));
        assert!(text.contains("To: <sip:bob@example.com>;tag=theirs\r\n"));
        assert!(text.contains("From: \"Dialer\" <sip:dialer@example.com>;tag=ours\r\n"));
        let ack = std::str::from_utf8(&d.ack(1).encode()).unwrap().to_owned();
        assert!(ack.contains("CSeq: 1 ACK\r\n"));
        assert_eq!(
            d.key(),
            DialogKey {
                call_id: "c1".into(),
                local_tag: "ours".into(),
                remote_tag: "theirs".into()
            }
        );
    }

    #[test]
    fn a_strict_router_takes_the_request_uri() {
        let strict = OK.replace(
            "Record-Route: <sip:p3.example.com;lr>",
            "Record-Route: <sip:p3.example.com>",
        );
        let mut d = Dialog::as_uac(&parse(&strict), 1, hop()).unwrap();
        let text = String::from_utf8(d.request("BYE").encode().to_vec()).unwrap();
        assert!(
            text.starts_with("BYE sip:p3.example.com SIP/2.0\r\n"),
            "{text}"
        );
        assert!(text.contains("Route: <sip:bob@192.0.2.4:5062;transport=udp>\r\n"));
    }

    const INVITE: &str = "INVITE sip:dialer@192.0.2.1 SIP/2.0
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKb
Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>
From: <sip:alice@example.com>;tag=a1
To: <sip:dialer@example.com>
Call-ID: c2
CSeq: 7 INVITE
Contact: <sip:alice@192.0.2.9>
Max-Forwards: 70
Content-Length: 0

";

    #[test]
    fn uas_keeps_the_route_order_and_checks_the_peers_cseq() {
        let mut d = Dialog::as_uas(&parse(INVITE), "b1", hop()).unwrap();
        assert_eq!(
            d.route_set,
            ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
        );
        assert_eq!(d.local_party, "<sip:dialer@example.com>;tag=b1");
        let bye = String::from_utf8(d.request("BYE").encode().to_vec()).unwrap();
        assert!(bye.starts_with("BYE sip:alice@192.0.2.9 SIP/2.0\r\n"));
        assert!(bye.contains("CSeq: 1 BYE\r\n"));
        assert!(bye.contains("To: <sip:alice@example.com>;tag=a1\r\n"));
        let old = parse(&INVITE.replace("CSeq: 7 INVITE", "CSeq: 6 BYE"));
        assert_eq!(
            d.receive(&old),
            Err(DialogError::CSeqBackwards { last: 7, got: 6 })
        );
        let ack = parse(&INVITE.replace("CSeq: 7 INVITE", "CSeq: 7 ACK"));
        assert_eq!(d.receive(&ack), Ok(()));
        let bye = parse(&INVITE.replace("CSeq: 7 INVITE", "CSeq: 8 BYE"));
        assert_eq!(d.receive(&bye), Ok(()));
        assert_eq!(d.remote_cseq, Some(8));
    }

    #[test]
    fn a_response_without_to_tag_or_contact_is_refused() {
        let no_tag = OK.replace(";tag=theirs", "");
        assert_eq!(
            Dialog::as_uac(&parse(&no_tag), 1, hop()),
            Err(DialogError::NoRemoteTag)
        );
        let no_contact = OK.replace("Contact: <sip:bob@192.0.2.4:5062;transport=udp>\n", "");
        assert!(Dialog::as_uac(&parse(&no_contact), 1, hop()).is_err());
    }
}
