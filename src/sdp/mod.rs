//! SDP: parsing and writing session descriptions (RFC 4566) and the offer/answer model
//! (RFC 3264) for one audio stream.
//!
//! Sans-IO and self-contained like the SIP message layer: only `std` and `thiserror`.
//! [`parse`] reads a description (CRLF or bare LF line ends) into an owned
//! [`SessionDescription`]; its `Display` writes CRLF lines in RFC 4566 order. Lines and
//! attributes that are not interpreted (`i=`, `b=`, `t=`, `k=`, unknown letters, every `a=`) are
//! kept, so `parse(&sdp.to_string()) == Ok(sdp)` for any parsed `sdp`.
//!
//! [`offer`], [`answer`] and [`accept_answer`] are pure functions: session ids, versions,
//! addresses, ports and SDES keys come from the caller.
//!
//! Connection addresses must be IP addresses: a `c=` line naming a host is rejected
//! ([`SdpError::BadConnection`]), since media needs an address and this layer resolves nothing.

mod codec;
mod crypto;
mod negotiate;
mod parse;
mod write;

#[cfg(test)]
mod srtp_tests;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

pub use codec::{Codec, RtpMap};
pub use crypto::{
    Crypto, CryptoSuite, DtlsParams, Fingerprint, LocalKeys, SdesKey, SdesKeys, Setup, SrtpPolicy,
    base64_decode, base64_encode,
};
pub use negotiate::{LocalMedia, NegotiateError, Negotiated, accept_answer, answer, offer};
pub use parse::{MAX_LINES, MAX_MEDIA, SdpError, parse};

/// A session description: the session-level lines and the media sections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// `o=`: who made the description and its version.
    pub origin: Origin,
    /// `s=`, possibly empty.
    pub session_name: String,
    /// Session-level `c=`, the default for media sections without their own.
    pub connection: Option<Connection>,
    /// `b=` values as written (`AS:64`).
    pub bandwidths: Vec<String>,
    /// `t=` values as written; a description without `t=` parses as `["0 0"]`, and an empty
    /// list is written as `t=0 0`.
    pub timing: Vec<String>,
    /// Other session-level lines (`i= u= e= p= r= z= k=`, unknown letters), in RFC 4566 order.
    pub other_lines: Vec<Line>,
    /// Session-level `a=` lines.
    pub attributes: Vec<Attribute>,
    /// The `m=` sections in order.
    pub media: Vec<Media>,
}

/// The `o=` line: `<username> <sess-id> <sess-version> IN <addrtype> <address>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// User name, `-` when there is none.
    pub username: String,
    /// Session id.
    pub session_id: u64,
    /// Session version, increased by each new offer of the session ([`SessionDescription::bump_version`]).
    pub session_version: u64,
    /// `IP4` or `IP6`.
    pub address_type: AddressType,
    /// The address as written: an IP address or a host name.
    pub address: String,
}

impl Origin {
    /// An origin with an IP address.
    pub fn new(
        username: impl Into<String>,
        session_id: u64,
        session_version: u64,
        address: IpAddr,
    ) -> Origin {
        Origin {
            username: username.into(),
            session_id,
            session_version,
            address_type: AddressType::of(address),
            address: address.to_string(),
        }
    }

    /// The address when it is an IP address.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.parse().ok()
    }
}

/// The address type of `o=` and `c=` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressType {
    /// `IP4`.
    Ip4,
    /// `IP6`.
    Ip6,
}

impl AddressType {
    /// The type of an IP address.
    pub fn of(address: IpAddr) -> AddressType {
        match address {
            IpAddr::V4(_) => AddressType::Ip4,
            IpAddr::V6(_) => AddressType::Ip6,
        }
    }

    /// `IP4` or `IP6`.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressType::Ip4 => "IP4",
            AddressType::Ip6 => "IP6",
        }
    }

    /// Reads `IP4` or `IP6` (any case).
    pub fn from_name(name: &str) -> Option<AddressType> {
        if name.eq_ignore_ascii_case("IP4") {
            Some(AddressType::Ip4)
        } else if name.eq_ignore_ascii_case("IP6") {
            Some(AddressType::Ip6)
        } else {
            None
        }
    }
}

/// A `c=` line: `IN IP4 <address>[/<ttl>[/<count>]]` or `IN IP6 <address>[/<count>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Connection {
    /// The address; its family gives the address type.
    pub address: IpAddr,
    /// TTL of an IPv4 multicast address.
    pub ttl: Option<u8>,
    /// Number of consecutive multicast addresses.
    pub count: Option<u32>,
}

impl Connection {
    /// A unicast connection address.
    pub fn new(address: IpAddr) -> Connection {
        Connection {
            address,
            ttl: None,
            count: None,
        }
    }

    /// Whether the address is `0.0.0.0` or `::`, the RFC 2543 way of putting a call on hold.
    pub fn is_hold(&self) -> bool {
        self.address.is_unspecified()
    }
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// Media type: `audio`, `video`, ...
    pub kind: String,
    /// Transport port; 0 marks a rejected or disabled stream.
    pub port: u16,
    /// The `/<count>` of `<port>/<count>`.
    pub port_count: Option<u16>,
    /// Transport protocol: `RTP/AVP`, `RTP/SAVP`, ...
    pub proto: String,
    /// Media formats (RTP payload type numbers for RTP).
    pub formats: Vec<String>,
    /// Media-level `c=`, overriding the session's.
    pub connection: Option<Connection>,
    /// `b=` values as written.
    pub bandwidths: Vec<String>,
    /// Other media-level lines (`i= k=`, unknown letters), in RFC 4566 order.
    pub other_lines: Vec<Line>,
    /// Media-level `a=` lines.
    pub attributes: Vec<Attribute>,
}

impl Media {
    /// A section with no formats, connection or attributes.
    pub fn new(kind: impl Into<String>, port: u16, proto: impl Into<String>) -> Media {
        Media {
            kind: kind.into(),
            port,
            port_count: None,
            proto: proto.into(),
            formats: Vec::new(),
            connection: None,
            bandwidths: Vec::new(),
            other_lines: Vec::new(),
            attributes: Vec::new(),
        }
    }

    /// Whether this is an audio section.
    pub fn is_audio(&self) -> bool {
        self.kind.eq_ignore_ascii_case("audio")
    }

    /// Whether the stream is rejected or disabled (port 0).
    pub fn is_rejected(&self) -> bool {
        self.port == 0
    }

    /// The value of the first attribute called `name` (any case) that has one.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        attribute_value(&self.attributes, name)
    }

    /// Whether an attribute called `name` (any case) is present, with a
    /// value or as a flag.
    pub fn has_attribute(&self, name: &str) -> bool {
        self.attributes
            .iter()
            .any(|a| a.name.eq_ignore_ascii_case(name))
    }

    /// The media-level direction attribute, if any (see [`SessionDescription::media_direction`]).
    pub fn direction(&self) -> Option<Direction> {
        direction_in(&self.attributes)
    }

    /// Replaces the media-level direction attributes with `direction`.
    pub fn set_direction(&mut self, direction: Direction) {
        self.attributes
            .retain(|a| Direction::from_attribute(a).is_none());
        self.attributes.push(Attribute::flag(direction.as_str()));
    }

    /// `a=ptime` in milliseconds.
    pub fn ptime(&self) -> Option<u32> {
        number(self.attribute("ptime")?.trim())
    }
}

/// An `a=` line: `a=<name>` or `a=<name>:<value>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attribute {
    /// Name, before the first `:`.
    pub name: String,
    /// Value, after the first `:`; `None` for a flag.
    pub value: Option<String>,
}

impl Attribute {
    /// `a=<name>:<value>`.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Attribute {
        Attribute {
            name: name.into(),
            value: Some(value.into()),
        }
    }

    /// `a=<name>`.
    pub fn flag(name: impl Into<String>) -> Attribute {
        Attribute {
            name: name.into(),
            value: None,
        }
    }
}

/// A line kept as written: `<letter>=<value>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Line {
    /// The type letter.
    pub letter: char,
    /// Everything after `=`.
    pub value: String,
}

/// Media direction (RFC 3264 §5.1), from the point of view of the description's author.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// `a=sendrecv`, the default.
    #[default]
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    /// The direction seen from the other side: sendonly and recvonly swap.
    pub fn reverse(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    /// Whether media is sent.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether media is received.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    /// Sends only if both send, receives only if both receive.
    pub fn intersect(self, other: Direction) -> Direction {
        Direction::from_flags(
            self.sends() && other.sends(),
            self.receives() && other.receives(),
        )
    }

    /// The direction that sends and receives as told.
    pub fn from_flags(sends: bool, receives: bool) -> Direction {
        match (sends, receives) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }

    /// The attribute name: `sendrecv`, `sendonly`, `recvonly`, `inactive`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an attribute states, if it is a direction attribute.
    pub fn from_attribute(attribute: &Attribute) -> Option<Direction> {
        if attribute.value.is_some() {
            return None;
        }
        [
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ]
        .into_iter()
        .find(|d| attribute.name.eq_ignore_ascii_case(d.as_str()))
    }
}

impl SessionDescription {
    /// The session-level direction attribute, if any.
    pub fn direction(&self) -> Option<Direction> {
        direction_in(&self.attributes)
    }

    /// Direction of media section `index`: its own attribute, else the session's, else
    /// sendrecv. `None` when there is no such section.
    pub fn media_direction(&self, index: usize) -> Option<Direction> {
        let media = self.media.get(index)?;
        Some(media.direction().or(self.direction()).unwrap_or_default())
    }

    /// Connection of media section `index`: its own `c=`, else the session's.
    pub fn media_connection(&self, index: usize) -> Option<Connection> {
        self.media.get(index)?.connection.or(self.connection)
    }

    /// The value of the first session-level attribute called `name` (any case) that has one.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        attribute_value(&self.attributes, name)
    }

    /// Increases the session version, as each new offer in a session must (RFC 3264 §8).
    pub fn bump_version(&mut self) {
        self.origin.session_version = self.origin.session_version.wrapping_add(1);
    }

    /// A re-offer of this description with every stream that is not rejected set to
    /// `direction` (hold: [`Direction::SendOnly`], resume: [`Direction::SendRecv`]) and the
    /// version increased.
    pub fn with_direction(&self, direction: Direction) -> SessionDescription {
        let mut sdp = self.clone();
        sdp.attributes
            .retain(|a| Direction::from_attribute(a).is_none());
        for media in sdp.media.iter_mut().filter(|m| !m.is_rejected()) {
            media.set_direction(direction);
        }
        sdp.bump_version();
        sdp
    }
}

fn attribute_value<'a>(attributes: &'a [Attribute], name: &str) -> Option<&'a str> {
    attributes
        .iter()
        .filter(|a| a.name.eq_ignore_ascii_case(name))
        .find_map(|a| a.value.as_deref())
}

fn direction_in(attributes: &[Attribute]) -> Option<Direction> {
    attributes.iter().find_map(Direction::from_attribute)
}

/// Where a kept line goes among the standard ones: ranks below [`LATE`] are written before
/// `c=` (`i= u= e= p=`), the others after `b=`/`t=` (`r= z= k=`, unknown letters).
fn line_rank(letter: char) -> u8 {
    match letter {
        'i' => 0,
        'u' => 1,
        'e' => 2,
        'p' => 3,
        'r' => 4,
        'z' => 5,
        'k' => 6,
        _ => 7,
    }
}

/// First rank of lines written after `c=`, `b=` and `t=`.
const LATE: u8 = 4;

/// A decimal number of ASCII digits only (no sign, no blanks).
fn number<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}
