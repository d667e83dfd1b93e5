//! A 400 for a request whose start line (or another part) does not parse
//! but whose Via, From, To, Call-ID and CSeq can still be read line by line
//! (RFC 4475 §3.1.2.x requests such as badinv01, lwsruri, lwsstart, trws):
//! the sender learns what is wrong instead of retransmitting into silence.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::sip::message::{HeaderName, OutMessage, Via, lex};
use crate::sip::target::Target;

/// The 400 and where it goes, or `None` when the bytes are not a request
/// or have no readable Via.
pub(super) fn bad_request(
    data: &[u8],
    source: Target,
    problem: &str,
    server: &str,
) -> Option<(Target, Bytes)> {
    let head_end = memchr::memmem::find(data, b"\r\n\r\n").unwrap_or(data.len());
    let head = std::str::from_utf8(data.get(..head_end)?).ok()?;
    let mut lines = head.split("\r\n");
    let start = lines.next()?.trim();
    if start.starts_with("SIP/") || start.is_empty() {
        return None; // a response, or nothing
    }
    // Unfold continuation lines, keep the headers a response copies.
    let mut headers: Vec<(HeaderName, String)> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        let (name, value) = line.split_once(':')?;
        let name = HeaderName::from_name(name.trim());
        if matches!(
            name,
            HeaderName::Via
                | HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq
        ) {
            headers.push((name, value.trim().to_owned()));
        }
    }
    let via_value = headers
        .iter()
        .find(|(n, _)| *n == HeaderName::Via)
        .map(|(_, v)| v.clone())?;
    let top = lex::split_list(&via_value).next()?;
    let via = Via::parse(top).ok()?;
    let port = match via.rport() {
        Some(_) => source.addr.port(),
        None => via.port.unwrap_or(5060),
    };
    let reason = format!("Bad Request ({})", problem.replace(['\r', '\n'], " "));
    let mut out = OutMessage::response(400, &reason);
    for (name, value) in &headers {
        let canonical = name.canonical().unwrap_or("X");
        out.push(canonical, value);
    }
    out.push("Server", server);
    let target = if source.is_reliable() {
        source
    } else {
        Target {
            addr: SocketAddr::new(source.addr.ip(), port),
            ..source
        }
    };
    Some((target, out.encode()))
}
