//! What a client transaction keeps of its request: the bytes to retransmit,
//! its key, and for an INVITE the headers its CANCEL and its non-2xx ACK
//! are built from (RFC 3261 §9.1, §17.1.1.3). Built from the outgoing
//! message's own header list, so nothing the endpoint built is parsed again.

use bytes::Bytes;

use crate::sip::message::{CSeq, HeaderError, HeaderName, Message, Method, OutMessage, lex};

use super::TxnError;

/// A request about to open a client transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    /// The complete request.
    pub data: Bytes,
    /// Its method.
    pub method: Method,
    /// The method token (the CSeq method; extension methods included).
    pub method_name: Box<str>,
    /// The top Via's branch.
    pub branch: Box<str>,
    /// INVITE only: what CANCEL and ACK copy.
    pub invite: Option<InviteParts>,
}

/// The headers of an INVITE that its CANCEL and the ACK of a non-2xx copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteParts {
    uri: Box<str>,
    via: Box<str>,
    from: Box<str>,
    to: Box<str>,
    call_id: Box<str>,
    seq: u32,
    routes: Vec<Box<str>>,
}

impl ClientRequest {
    /// From an outgoing request whose top Via (with its branch) is set;
    /// `data` is its encoding.
    pub fn from_out(
        out: &OutMessage,
        method: &str,
        uri: &str,
        data: Bytes,
    ) -> Result<Self, TxnError> {
        let mut via = None;
        let mut from = None;
        let mut to = None;
        let mut call_id = None;
        let mut cseq = None;
        let mut routes = Vec::new();
        for (name, value) in out.headers() {
            match HeaderName::from_name(name) {
                HeaderName::Via if via.is_none() => via = Some(value),
                HeaderName::From => from = Some(value),
                HeaderName::To => to = Some(value),
                HeaderName::CallId => call_id = Some(value),
                HeaderName::CSeq => cseq = Some(value),
                HeaderName::Route => routes.push(value.into()),
                _ => {}
            }
        }
        let missing = TxnError::Header(HeaderError::Missing);
        let via = via.ok_or(missing.clone())?;
        let top = lex::split_list(via).next().unwrap_or(via);
        let branch = crate::sip::message::Via::parse(top)?
            .branch()
            .ok_or(missing.clone())?
            .into();
        let seq = CSeq::parse(cseq.ok_or(missing.clone())?)?.seq;
        let method_kind = Method::from_token(method);
        let invite = if method_kind == Method::Invite {
            Some(InviteParts {
                uri: uri.into(),
                via: top.into(),
                from: from.ok_or(missing.clone())?.into(),
                to: to.ok_or(missing.clone())?.into(),
                call_id: call_id.ok_or(missing)?.into(),
                seq,
                routes,
            })
        } else {
            None
        };
        Ok(Self {
            data,
            method: method_kind,
            method_name: method.into(),
            branch,
            invite,
        })
    }

    /// From a parsed request (bytes given by a caller).
    pub fn from_message(request: &Message) -> Result<Self, TxnError> {
        let method = request.method().ok_or(TxnError::NotTransactional)?;
        let method_name = request.method_str().ok_or(TxnError::NotTransactional)?;
        let via = request.top_via()?;
        let branch: Box<str> = via.branch().ok_or(HeaderError::Missing)?.into();
        let invite = if method == Method::Invite {
            let top = request
                .value(HeaderName::Via)
                .and_then(|v| lex::split_list(v).next())
                .ok_or(HeaderError::Missing)?;
            Some(InviteParts {
                uri: request.request_uri().unwrap_or_default().into(),
                via: top.into(),
                from: request
                    .value(HeaderName::From)
                    .ok_or(HeaderError::Missing)?
                    .into(),
                to: request
                    .value(HeaderName::To)
                    .ok_or(HeaderError::Missing)?
                    .into(),
                call_id: request.call_id().ok_or(HeaderError::Missing)?.into(),
                seq: request.cseq()?.seq,
                routes: request.values(HeaderName::Route).map(Into::into).collect(),
            })
        } else {
            None
        };
        Ok(Self {
            data: request.raw().clone(),
            method,
            method_name: method_name.into(),
            branch,
            invite,
        })
    }

    /// The CANCEL of this INVITE, in its own transaction (same branch,
    /// method CANCEL).
    pub(super) fn cancel(&self) -> Option<ClientRequest> {
        let i = self.invite.as_ref()?;
        let mut out = OutMessage::request("CANCEL", &i.uri);
        out.push("Via", &i.via);
        out.push("Max-Forwards", "70");
        out.push("From", &i.from);
        out.push("To", &i.to);
        out.push("Call-ID", &i.call_id);
        out.push("CSeq", format!("{} CANCEL", i.seq));
        for r in &i.routes {
            out.push("Route", r);
        }
        Some(ClientRequest {
            data: out.encode(),
            method: Method::Cancel,
            method_name: "CANCEL".into(),
            branch: self.branch.clone(),
            invite: None,
        })
    }

    /// The ACK of a non-2xx final response whose To is `to`.
    pub(super) fn ack_for(&self, to: &str) -> Bytes {
        let Some(i) = self.invite.as_ref() else {
            return Bytes::new();
        };
        let mut ack = OutMessage::request("ACK", &i.uri);
        ack.push("Via", &i.via);
        for r in &i.routes {
            ack.push("Route", r);
        }
        ack.push("Max-Forwards", "70");
        ack.push("From", &i.from);
        ack.push("To", to);
        ack.push("Call-ID", &i.call_id);
        ack.push("CSeq", format!("{} ACK", i.seq));
        ack.encode()
    }
}
