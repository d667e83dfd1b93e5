//! Reading a session description (RFC 4566 §5).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    AddressType, Attribute, Connection, Line, Media, Origin, SessionDescription, line_rank, number,
};

/// Most lines a description may have (blank ones included).
pub const MAX_LINES: usize = 1000;

/// Most `m=` sections a description may have.
pub const MAX_MEDIA: usize = 32;

/// Why a description does not parse; `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// The first line is not `v=0`.
    #[error("line {line}: a session description starts with v=0")]
    MissingVersion {
        /// The line found instead.
        line: usize,
    },
    /// The session section has no `o=` line.
    #[error("line {line}: no o= line before the media sections")]
    MissingOrigin {
        /// The first `m=` line, or one past the last line.
        line: usize,
    },
    /// The session section has no `s=` line.
    #[error("line {line}: no s= line before the media sections")]
    MissingSessionName {
        /// The first `m=` line, or one past the last line.
        line: usize,
    },
    /// A line is not `<letter>=<value>`, or holds a control character.
    #[error("line {line}: not of the form <letter>=<value>")]
    BadLine {
        /// The line.
        line: usize,
    },
    /// A line that may appear once per section appears again.
    #[error("line {line}: a second {letter}= line")]
    Repeated {
        /// The second occurrence.
        line: usize,
        /// Its type letter.
        letter: char,
    },
    /// A session-only line (`v= o= s=`) inside a media section.
    #[error("line {line}: {letter}= inside a media section")]
    Misplaced {
        /// The line.
        line: usize,
        /// Its type letter.
        letter: char,
    },
    /// A malformed `o=` line.
    #[error("line {line}: bad o= line: {problem}")]
    BadOrigin {
        /// The line.
        line: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// A malformed or unsupported `c=` line.
    #[error("line {line}: bad c= line: {problem}")]
    BadConnection {
        /// The line.
        line: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// A malformed `m=` line.
    #[error("line {line}: bad m= line: {problem}")]
    BadMedia {
        /// The line.
        line: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// More than [`MAX_LINES`] lines.
    #[error("line {line}: more than {MAX_LINES} lines")]
    TooManyLines {
        /// The first line over the limit.
        line: usize,
    },
    /// More than [`MAX_MEDIA`] media sections.
    #[error("line {line}: more than {MAX_MEDIA} media sections")]
    TooManyMedia {
        /// The first `m=` line over the limit.
        line: usize,
    },
}

impl SdpError {
    /// The 1-based line the error is about.
    pub fn line(&self) -> usize {
        match *self {
            SdpError::MissingVersion { line }
            | SdpError::MissingOrigin { line }
            | SdpError::MissingSessionName { line }
            | SdpError::BadLine { line }
            | SdpError::Repeated { line, .. }
            | SdpError::Misplaced { line, .. }
            | SdpError::BadOrigin { line, .. }
            | SdpError::BadConnection { line, .. }
            | SdpError::BadMedia { line, .. }
            | SdpError::TooManyLines { line }
            | SdpError::TooManyMedia { line } => line,
        }
    }
}

/// Parses a session description. Lines end with CRLF or LF; trailing blanks and blank lines
/// are ignored. `v=0` must come first; `o=` and `s=` (which may be empty) may be anywhere in the
/// session section; every other line is kept, unknown ones included.
pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
    let mut session = Session::default();
    let mut media: Vec<Media> = Vec::new();
    let mut seen_version = false;
    let mut count = 0;
    for (index, raw) in text.split_terminator('\n').enumerate() {
        let line = index + 1;
        count = line;
        if line > MAX_LINES {
            return Err(SdpError::TooManyLines { line });
        }
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let raw = raw.trim_end_matches([' ', '\t']);
        if raw.is_empty() {
            continue;
        }
        let shape = split_line(raw);
        if !seen_version {
            match shape {
                Some(('v', value)) if value.trim() == "0" => {
                    seen_version = true;
                    continue;
                }
                _ => return Err(SdpError::MissingVersion { line }),
            }
        }
        let (letter, value) = shape.ok_or(SdpError::BadLine { line })?;
        if letter == 'm' {
            if media.is_empty() {
                session.check(line)?;
            }
            if media.len() >= MAX_MEDIA {
                return Err(SdpError::TooManyMedia { line });
            }
            media.push(parse_media(line, value)?);
            continue;
        }
        match media.last_mut() {
            None => session.line(line, letter, value)?,
            Some(section) => media_line(section, line, letter, value)?,
        }
    }
    if !seen_version {
        return Err(SdpError::MissingVersion { line: count + 1 });
    }
    let (origin, session_name) = session.check(count + 1)?;
    for section in &mut media {
        section.other_lines.sort_by_key(|l| line_rank(l.letter));
    }
    let mut other_lines = session.other_lines;
    other_lines.sort_by_key(|l| line_rank(l.letter));
    let mut timing = session.timing;
    if timing.is_empty() {
        timing.push("0 0".to_owned());
    }
    Ok(SessionDescription {
        origin,
        session_name,
        connection: session.connection,
        bandwidths: session.bandwidths,
        timing,
        other_lines,
        attributes: session.attributes,
        media,
    })
}

/// The session section as read so far.
#[derive(Default)]
struct Session {
    origin: Option<Origin>,
    name: Option<String>,
    connection: Option<Connection>,
    bandwidths: Vec<String>,
    timing: Vec<String>,
    other_lines: Vec<Line>,
    attributes: Vec<Attribute>,
}

impl Session {
    fn line(&mut self, line: usize, letter: char, value: &str) -> Result<(), SdpError> {
        match letter {
            'v' => return Err(SdpError::Repeated { line, letter }),
            'o' if self.origin.is_some() => return Err(SdpError::Repeated { line, letter }),
            'o' => self.origin = Some(parse_origin(line, value)?),
            's' if self.name.is_some() => return Err(SdpError::Repeated { line, letter }),
            's' => self.name = Some(value.to_owned()),
            'c' if self.connection.is_some() => return Err(SdpError::Repeated { line, letter }),
            'c' => self.connection = Some(parse_connection(line, value)?),
            'b' => self.bandwidths.push(value.to_owned()),
            't' => self.timing.push(value.to_owned()),
            'a' => self.attributes.push(parse_attribute(value)),
            _ => self.other_lines.push(Line {
                letter,
                value: value.to_owned(),
            }),
        }
        Ok(())
    }

    /// The origin and session name, required by the end of the session section (`line`).
    fn check(&self, line: usize) -> Result<(Origin, String), SdpError> {
        let origin = self
            .origin
            .clone()
            .ok_or(SdpError::MissingOrigin { line })?;
        let name = self
            .name
            .clone()
            .ok_or(SdpError::MissingSessionName { line })?;
        Ok((origin, name))
    }
}

fn media_line(media: &mut Media, line: usize, letter: char, value: &str) -> Result<(), SdpError> {
    match letter {
        'v' | 'o' | 's' => return Err(SdpError::Misplaced { line, letter }),
        'c' if media.connection.is_some() => return Err(SdpError::Repeated { line, letter }),
        'c' => media.connection = Some(parse_connection(line, value)?),
        'b' => media.bandwidths.push(value.to_owned()),
        'a' => media.attributes.push(parse_attribute(value)),
        _ => media.other_lines.push(Line {
            letter,
            value: value.to_owned(),
        }),
    }
    Ok(())
}

/// `<letter>=<value>` with an ASCII letter and no control character but tab.
fn split_line(raw: &str) -> Option<(char, &str)> {
    let mut chars = raw.chars();
    let letter = chars.next().filter(char::is_ascii_alphabetic)?;
    let value = chars.as_str().strip_prefix('=')?;
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return None;
    }
    Some((letter, value))
}

fn parse_attribute(value: &str) -> Attribute {
    match value.split_once(':') {
        Some((name, value)) => Attribute::new(name, value),
        None => Attribute::flag(value),
    }
}

fn parse_origin(line: usize, value: &str) -> Result<Origin, SdpError> {
    let bad = |problem| SdpError::BadOrigin { line, problem };
    let mut fields = value.split_whitespace();
    let (Some(username), Some(id), Some(version), Some(net), Some(addrtype), Some(address), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(bad("expected 6 fields"));
    };
    let session_id = number(id).ok_or(bad("session id is not a number"))?;
    let session_version = number(version).ok_or(bad("session version is not a number"))?;
    if !net.eq_ignore_ascii_case("IN") {
        return Err(bad("network type is not IN"));
    }
    let address_type =
        AddressType::from_name(addrtype).ok_or(bad("address type is not IP4 or IP6"))?;
    Ok(Origin {
        username: username.to_owned(),
        session_id,
        session_version,
        address_type,
        address: address.to_owned(),
    })
}

fn parse_connection(line: usize, value: &str) -> Result<Connection, SdpError> {
    let bad = |problem| SdpError::BadConnection { line, problem };
    let mut fields = value.split_whitespace();
    let (Some(net), Some(addrtype), Some(address), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(bad("expected IN <addrtype> <address>"));
    };
    if !net.eq_ignore_ascii_case("IN") {
        return Err(bad("network type is not IN"));
    }
    let address_type =
        AddressType::from_name(addrtype).ok_or(bad("address type is not IP4 or IP6"))?;
    let mut parts = address.split('/');
    let host = parts.next().unwrap_or_default();
    let address: IpAddr = match address_type {
        AddressType::Ip4 => host.parse::<Ipv4Addr>().map(IpAddr::V4),
        AddressType::Ip6 => host.parse::<Ipv6Addr>().map(IpAddr::V6),
    }
    .map_err(|_| bad("not an IP address of its address type"))?;
    let mut connection = Connection::new(address);
    let suffix: Vec<&str> = parts.collect();
    if suffix.is_empty() {
        return Ok(connection);
    }
    if !address.is_multicast() {
        return Err(bad("a /ttl or /count on a unicast address"));
    }
    let invalid = || bad("bad multicast /ttl or /count");
    match (address_type, suffix.as_slice()) {
        (AddressType::Ip4, [ttl]) => connection.ttl = Some(number(ttl).ok_or_else(invalid)?),
        (AddressType::Ip4, [ttl, count]) => {
            connection.ttl = Some(number(ttl).ok_or_else(invalid)?);
            connection.count = Some(number(count).ok_or_else(invalid)?);
        }
        (AddressType::Ip6, [count]) => connection.count = Some(number(count).ok_or_else(invalid)?),
        _ => return Err(invalid()),
    }
    Ok(connection)
}

fn parse_media(line: usize, value: &str) -> Result<Media, SdpError> {
    let bad = |problem| SdpError::BadMedia { line, problem };
    let mut fields = value.split_whitespace();
    let (Some(kind), Some(port), Some(proto)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(bad("expected <media> <port> <proto> <fmt>..."));
    };
    let (port, port_count) = match port.split_once('/') {
        Some((port, count)) => (port, Some(count)),
        None => (port, None),
    };
    let mut media = Media::new(
        kind,
        number(port).ok_or(bad("port is not a number"))?,
        proto,
    );
    if let Some(count) = port_count {
        media.port_count = Some(number(count).ok_or(bad("port count is not a number"))?);
    }
    media.formats = fields.map(str::to_owned).collect();
    Ok(media)
}
