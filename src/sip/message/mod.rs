//! The SIP message layer: parse, validate, inspect and build messages.

mod build;
mod header;
pub mod lex;
mod method;
mod model;
mod parse;
mod typed;
mod uri;
mod validate;

pub use build::OutMessage;
pub use header::HeaderName;
pub use method::Method;
pub use model::{HeaderRef, Message};
pub use parse::{BodyProblem, FrameError, Framing, Limits, head_len};
pub use typed::{
    AuthParams, CSeq, Contacts, DeltaWithParams, HeaderError, MediaType, NameAddr, Via, parse_delta,
};
pub use uri::{Host, SipUri, TelUri, Uri, UriError, parse_hostport};
pub use validate::Invalid;
