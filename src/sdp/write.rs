//! Writing a session description: CRLF lines in RFC 4566 §5 order.

use std::fmt;

use super::{
    AddressType, Attribute, Connection, Direction, LATE, Line, Media, Origin, SessionDescription,
    line_rank,
};

impl fmt::Display for SessionDescription {
    /// `v o s [i u e p] c b t [r z k ...] a`, then each media section.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("v=0\r\n")?;
        write!(f, "o={}\r\n", self.origin)?;
        if self.session_name.is_empty() {
            // RFC 4566 §5.3: a single space when there is no name.
            f.write_str("s= \r\n")?;
        } else {
            write!(f, "s={}\r\n", self.session_name)?;
        }
        lines(f, &self.other_lines, true)?;
        if let Some(connection) = &self.connection {
            write!(f, "c={connection}\r\n")?;
        }
        for bandwidth in &self.bandwidths {
            write!(f, "b={bandwidth}\r\n")?;
        }
        if self.timing.is_empty() {
            f.write_str("t=0 0\r\n")?;
        }
        for timing in &self.timing {
            write!(f, "t={timing}\r\n")?;
        }
        lines(f, &self.other_lines, false)?;
        for attribute in &self.attributes {
            write!(f, "a={attribute}\r\n")?;
        }
        for media in &self.media {
            write!(f, "{media}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Media {
    /// The `m=` line and its section (`m [i] c b [k ...] a`), each line ending in CRLF.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m={} {}", self.kind, self.port)?;
        if let Some(count) = self.port_count {
            write!(f, "/{count}")?;
        }
        write!(f, " {}", self.proto)?;
        for format in &self.formats {
            write!(f, " {format}")?;
        }
        f.write_str("\r\n")?;
        lines(f, &self.other_lines, true)?;
        if let Some(connection) = &self.connection {
            write!(f, "c={connection}\r\n")?;
        }
        for bandwidth in &self.bandwidths {
            write!(f, "b={bandwidth}\r\n")?;
        }
        lines(f, &self.other_lines, false)?;
        for attribute in &self.attributes {
            write!(f, "a={attribute}\r\n")?;
        }
        Ok(())
    }
}

/// The kept lines that go before `c=` (`early`) or after `b=`/`t=`.
fn lines(f: &mut fmt::Formatter<'_>, lines: &[Line], early: bool) -> fmt::Result {
    for line in lines
        .iter()
        .filter(|l| (line_rank(l.letter) < LATE) == early)
    {
        write!(f, "{}={}\r\n", line.letter, line.value)?;
    }
    Ok(())
}

impl fmt::Display for Origin {
    /// The value of `o=`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} IN {} {}",
            self.username, self.session_id, self.session_version, self.address_type, self.address
        )
    }
}

impl fmt::Display for AddressType {
    /// `IP4` or `IP6`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Connection {
    /// The value of `c=`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IN {} {}", AddressType::of(self.address), self.address)?;
        if self.address.is_ipv4()
            && let Some(ttl) = self.ttl
        {
            write!(f, "/{ttl}")?;
            if let Some(count) = self.count {
                write!(f, "/{count}")?;
            }
        } else if self.address.is_ipv6()
            && let Some(count) = self.count
        {
            write!(f, "/{count}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Attribute {
    /// The value of `a=`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}:{value}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl fmt::Display for Direction {
    /// The attribute name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
