//! Typed responses and requests handed to the endpoint: a status code that
//! is checked once, so the code the transaction acts on and the bytes sent
//! cannot disagree.

use bytes::Bytes;

use crate::sip::message::OutMessage;

/// A response status, 100 to 699.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Status(u16);

/// A code outside 100..=699.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("status code {0} is outside 100..=699")]
pub struct BadStatus(pub u16);

impl Status {
    /// `code` if it is a valid status.
    pub fn new(code: u16) -> Result<Self, BadStatus> {
        if (100..=699).contains(&code) {
            Ok(Self(code))
        } else {
            Err(BadStatus(code))
        }
    }

    /// The code.
    pub fn code(self) -> u16 {
        self.0
    }

    /// 1xx.
    pub fn is_provisional(self) -> bool {
        self.0 < 200
    }

    /// 2xx.
    pub fn is_success(self) -> bool {
        (200..300).contains(&self.0)
    }
}

/// A response for the endpoint to send on a server transaction: status,
/// reason, extra headers and body. Via, From, To (with the transaction's
/// tag), Call-ID, CSeq and Server come from the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub(crate) status: Status,
    pub(crate) reason: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Option<(String, Bytes)>,
}

impl Reply {
    /// A reply with `status` and `reason`.
    pub fn new(status: Status, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// A reply with a code known to be valid at the call site; an invalid
    /// one becomes 500.
    pub fn code(code: u16, reason: impl Into<String>) -> Self {
        match Status::new(code) {
            Ok(s) => Self::new(s, reason),
            Err(_) => Self::new(Status(500), "Server Internal Error"),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body and its content type.
    pub fn body(mut self, content_type: impl Into<String>, body: impl Into<Bytes>) -> Self {
        self.body = Some((content_type.into(), body.into()));
        self
    }

    /// The status.
    pub fn status(&self) -> Status {
        self.status
    }
}

/// The Contact the endpoint writes into a request once it knows the local
/// address of the flow the request leaves on (with no listener of a
/// connection's transport, that is the connection's own port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactSpec {
    /// The user part.
    pub user: String,
    /// Header parameters after the `>` (`;expires=0`, `;+sip.instance=...`).
    pub params: String,
}

/// A request for the endpoint to send: everything but the Via (the
/// endpoint adds its own with a fresh branch) and, when `contact` is given,
/// the Contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRequest {
    /// The request (built with [`OutMessage::request`]).
    pub message: OutMessage,
    /// A Contact for the endpoint to fill in.
    pub contact: Option<ContactSpec>,
}

impl OutRequest {
    /// The request `message` as it is.
    pub fn new(message: OutMessage) -> Self {
        Self {
            message,
            contact: None,
        }
    }

    /// Asks the endpoint to write the Contact.
    pub fn with_contact(mut self, contact: ContactSpec) -> Self {
        self.contact = Some(contact);
        self
    }
}
