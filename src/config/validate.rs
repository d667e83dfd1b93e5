//! Value checks that the schema alone cannot express. Every problem names
//! its key; no message ever contains a secret.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use tracing_subscriber::EnvFilter;

use super::load::Problem;
use super::settings::{AddressSource, Settings};
use super::types::Transport;

/// Lowest port the RTP range may start at (below are privileged ports).
const MIN_RTP_PORT: u16 = 1024;

/// Checks the resolved settings; an empty result means valid.
pub fn validate(s: &Settings, env: &HashMap<String, String>) -> Vec<Problem> {
    let mut p = Vec::new();
    check_instance(s, env, &mut p);
    if let Err(e) = EnvFilter::try_new(&s.log.level) {
        p.push(Problem::new("log.level", format!("not a log filter: {e}")));
    }
    check_sip(s, &mut p);
    check_accounts(s, &mut p);
    check_media(s, &mut p);
    check_redis(s, &mut p);
    check_http(s, &mut p);
    check_calls(s, &mut p);
    if s.limits.max_concurrent_calls == 0 {
        p.push(Problem::new(
            "limits.max_concurrent_calls",
            "must be at least 1",
        ));
    }
    let cps = s.limits.calls_per_second;
    if !(cps.is_finite() && cps > 0.0) {
        p.push(Problem::new(
            "limits.calls_per_second",
            format!("{cps} is not a positive number"),
        ));
    }
    let r = &s.registration;
    if r.backoff_initial_ms == 0 {
        p.push(Problem::new(
            "registration.backoff_initial_ms",
            "must be at least 1",
        ));
    }
    if r.backoff_max_ms < r.backoff_initial_ms {
        p.push(Problem::new(
            "registration.backoff_max_ms",
            "must not be below registration.backoff_initial_ms",
        ));
    }
    if r.forbidden_retry_secs == 0 {
        p.push(Problem::new(
            "registration.forbidden_retry_secs",
            "must be at least 1",
        ));
    }
    check_lease(s, &mut p);
    if !(1..=3600).contains(&s.shutdown.deadline_secs) {
        p.push(Problem::new(
            "shutdown.deadline_secs",
            format!("{} is not within 1..=3600", s.shutdown.deadline_secs),
        ));
    }
    p
}

fn check_lease(s: &Settings, p: &mut Vec<Problem>) {
    let l = &s.lease;
    if !(3..=300).contains(&l.ttl_secs) {
        p.push(Problem::new(
            "lease.ttl_secs",
            format!("{} is not within 3..=300", l.ttl_secs),
        ));
    }
    if l.enabled && !s.redis.enabled {
        p.push(Problem::new(
            "lease.enabled",
            "account leases live in Redis: set redis.enabled",
        ));
    }
    if l.enabled && s.accounts.is_empty() {
        p.push(Problem::new(
            "lease.enabled",
            "there are no accounts to lease",
        ));
    }
}

fn check_instance(s: &Settings, env: &HashMap<String, String>, p: &mut Vec<Problem>) {
    let id = &s.instance.id;
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        p.push(Problem::new(
            "instance.id",
            format!("{id:?} must be 1 to 64 letters, digits, '-', '_' or '.'"),
        ));
    }
    let pa = &s.instance.public_address;
    match pa.source {
        AddressSource::Local => {}
        AddressSource::Static => {
            if pa.address.is_none() {
                p.push(Problem::new(
                    "instance.public_address.address",
                    "required when source is static",
                ));
            }
        }
        AddressSource::Env => match &pa.var {
            None => p.push(Problem::new(
                "instance.public_address.var",
                "required when source is env",
            )),
            Some(var) => match env.get(var) {
                None => p.push(Problem::new(
                    "instance.public_address.var",
                    format!("environment variable {var} is not set"),
                )),
                Some(v) if v.trim().parse::<IpAddr>().is_err() => p.push(Problem::new(
                    "instance.public_address.var",
                    format!("environment variable {var} holds {v:?}, not an IP address"),
                )),
                Some(_) => {}
            },
        },
        AddressSource::DoMetadata => {
            match url::Url::parse(&pa.url) {
                Ok(u) if u.scheme() == "http" && u.host_str().is_some() => {}
                Ok(_) => p.push(Problem::new(
                    "instance.public_address.url",
                    "must be an http:// URL with a host",
                )),
                Err(e) => p.push(Problem::new(
                    "instance.public_address.url",
                    format!("not a valid URL ({e})"),
                )),
            }
            if !(1..=60_000).contains(&pa.timeout_ms) {
                p.push(Problem::new(
                    "instance.public_address.timeout_ms",
                    "must be within 1..=60000",
                ));
            }
        }
    }
}

fn check_sip(s: &Settings, p: &mut Vec<Problem>) {
    let sip = &s.sip;
    if sip.t1_ms == 0 {
        p.push(Problem::new("sip.t1_ms", "must be at least 1"));
    }
    if sip.t2_ms < sip.t1_ms {
        p.push(Problem::new(
            "sip.t2_ms",
            format!("{} is below sip.t1_ms {}", sip.t2_ms, sip.t1_ms),
        ));
    }
    if sip.t4_ms == 0 {
        p.push(Problem::new("sip.t4_ms", "must be at least 1"));
    }
    for (key, addrs) in [
        ("sip.udp_listen", &sip.udp_listen),
        ("sip.tcp_listen", &sip.tcp_listen),
        ("sip.tls_listen", &sip.tls_listen),
    ] {
        let mut seen = HashSet::new();
        for a in addrs {
            if !seen.insert(a) {
                p.push(Problem::new(key, format!("{a} is listed twice")));
            }
        }
    }
    let tls = &sip.tls;
    if !sip.tls_listen.is_empty() {
        if tls.cert_file.is_none() {
            p.push(Problem::new(
                "sip.tls.cert_file",
                "required by sip.tls_listen",
            ));
        }
        if tls.key_file.is_none() {
            p.push(Problem::new(
                "sip.tls.key_file",
                "required by sip.tls_listen",
            ));
        }
    }
    for (key, file) in [
        ("sip.tls.cert_file", &tls.cert_file),
        ("sip.tls.key_file", &tls.key_file),
        ("sip.tls.ca_file", &tls.ca_file),
    ] {
        if let Some(path) = file {
            check_pem_file(key, path, p);
        }
    }
    if sip.max_connections == 0 {
        p.push(Problem::new("sip.max_connections", "must be at least 1"));
    }
    if sip.max_connections_per_source == 0 {
        p.push(Problem::new(
            "sip.max_connections_per_source",
            "must be at least 1",
        ));
    }
    if !(1..=86_400).contains(&sip.idle_timeout_secs) {
        p.push(Problem::new(
            "sip.idle_timeout_secs",
            "must be within 1..=86400",
        ));
    }
    for (key, ms) in [
        ("sip.t1_ms", sip.t1_ms),
        ("sip.t2_ms", sip.t2_ms),
        ("sip.t4_ms", sip.t4_ms),
    ] {
        if ms > 60_000 {
            p.push(Problem::new(key, format!("{ms} is above 60000")));
        }
    }
    if sip.user_agent.trim().is_empty() {
        p.push(Problem::new("sip.user_agent", "must not be empty"));
    }
}

fn check_accounts(s: &Settings, p: &mut Vec<Problem>) {
    let mut names = HashSet::new();
    for (i, a) in s.accounts.iter().enumerate() {
        let key = |field: &str| format!("accounts[{i}].{field}");
        if a.name.is_empty() {
            p.push(Problem::new(key("name"), "is missing"));
        } else if !names.insert(a.name.as_str()) {
            p.push(Problem::new(
                key("name"),
                format!("{:?} is used by another account", a.name),
            ));
        }
        if a.registrar.is_empty() {
            p.push(Problem::new(key("registrar"), "is missing"));
        } else if let Err(e) = check_sip_uri(&a.registrar) {
            p.push(Problem::new(key("registrar"), e));
        } else if a.registrar.starts_with("sips:") && a.transport != Some(Transport::Tls) {
            let t = a
                .transport
                .map_or_else(|| "none".to_owned(), |t| t.to_string());
            p.push(Problem::new(
                key("transport"),
                format!("{t} cannot carry a sips: registrar; use tls"),
            ));
        }
        for (j, uri) in a.failover_registrars.iter().enumerate() {
            if let Err(e) = check_sip_uri(uri) {
                p.push(Problem::new(key(&format!("failover_registrars[{j}]")), e));
            }
        }
        if a.username.is_empty() {
            p.push(Problem::new(key("username"), "is missing"));
        }
        if a.password.as_ref().is_some_and(|s| s.is_empty()) {
            p.push(Problem::new(key("password"), "is empty"));
        }
        if let Some(proxy) = &a.outbound_proxy
            && let Err(e) = check_sip_uri(proxy)
        {
            p.push(Problem::new(key("outbound_proxy"), e));
        }
        if let Some(exp) = a.expires_secs
            && !(10..=86_400).contains(&exp)
        {
            p.push(Problem::new(
                key("expires_secs"),
                format!("{exp} is not within 10..=86400"),
            ));
        }
        if let Some(ka) = a.keepalive_secs
            && ka > 3600
        {
            p.push(Problem::new(
                key("keepalive_secs"),
                format!("{ka} is above 3600 (0 disables keepalive)"),
            ));
        }
        if let Some(fp) = &a.tls_fingerprint_sha256
            && let Err(e) = parse_fingerprint(fp)
        {
            p.push(Problem::new(key("tls_fingerprint_sha256"), e));
        }
        if let Some(path) = &a.tls_ca_file {
            check_pem_file(&key("tls_ca_file"), path, p);
        }
    }
}

fn check_media(s: &Settings, p: &mut Vec<Problem>) {
    let r = s.media.rtp_port_range;
    if r.start > r.end {
        p.push(Problem::new(
            "media.rtp_port_range",
            format!("start {} is above end {}", r.start, r.end),
        ));
    } else if r.start < MIN_RTP_PORT {
        p.push(Problem::new(
            "media.rtp_port_range",
            format!("start {} is below {MIN_RTP_PORT}", r.start),
        ));
    } else if r.len() < 2 {
        p.push(Problem::new(
            "media.rtp_port_range",
            "must hold at least two ports (RTP and RTCP)",
        ));
    }
    if s.media.inactivity_timeout_secs == 0 {
        p.push(Problem::new(
            "media.inactivity_timeout_secs",
            "must be at least 1",
        ));
    }
    let m = &s.media;
    for (key, value, min, max) in [
        ("media.fill_after_ms", m.fill_after_ms, 20, 10_000),
        ("media.quiet_report_ms", m.quiet_report_ms, 100, 600_000),
        ("media.port_drain_ms", m.port_drain_ms, 0, 600_000),
        ("media.batch_wait_us", m.batch_wait_us, 0, 5_000),
    ] {
        if !(min..=max).contains(&value) {
            p.push(Problem::new(key, format!("must be {min} to {max}")));
        }
    }
    if m.shards > 1024 {
        p.push(Problem::new(
            "media.shards",
            "must be 0 (one per core) to 1024",
        ));
    }
    if let Some(dir) = &m.prompt_dir
        && !dir.is_dir()
    {
        p.push(Problem::new(
            "media.prompt_dir",
            format!("{} is not a directory", dir.display()),
        ));
    }
}

fn check_redis(s: &Settings, p: &mut Vec<Problem>) {
    let r = &s.redis;
    match r.url.parse() {
        Err(e) => p.push(Problem::new("redis.url", e)),
        Ok(u) => {
            if r.tls_ca_file.is_some() && u.scheme() != "rediss" {
                p.push(Problem::new(
                    "redis.tls_ca_file",
                    "is set but redis.url does not use rediss://",
                ));
            }
        }
    }
    if r.prefix.is_empty() || r.prefix.chars().any(|c| c.is_whitespace() || c == ':') {
        p.push(Problem::new(
            "redis.prefix",
            format!("{:?} must be non-empty without spaces or ':'", r.prefix),
        ));
    }
    if !(1..=2_592_000).contains(&r.dedup_window_secs) {
        p.push(Problem::new(
            "redis.dedup_window_secs",
            "must be within 1..=2592000 (30 days)",
        ));
    }
    if !(1..=3600).contains(&r.keepalive_secs) {
        p.push(Problem::new(
            "redis.keepalive_secs",
            "must be within 1..=3600",
        ));
    }
    let ranges: [(&str, u64, u64, u64); 6] = [
        (
            "redis.response_timeout_secs",
            u64::from(r.response_timeout_secs),
            1,
            60,
        ),
        ("redis.command_lease_secs", r.command_lease_secs, 1, 3600),
        (
            "redis.stream_claim_idle_secs",
            r.stream_claim_idle_secs,
            1,
            3600,
        ),
        (
            "redis.stream_max_age_secs",
            r.stream_max_age_secs,
            1,
            86_400,
        ),
        (
            "redis.events_stream_maxlen",
            r.events_stream_maxlen,
            0,
            100_000_000,
        ),
        (
            "redis.event_buffer",
            u64::try_from(r.event_buffer).unwrap_or(u64::MAX),
            2,
            10_000_000,
        ),
    ];
    for (key, value, min, max) in ranges {
        if !(min..=max).contains(&value) {
            p.push(Problem::new(key, format!("must be within {min}..={max}")));
        }
    }
    if let Some(path) = &r.tls_ca_file {
        check_pem_file("redis.tls_ca_file", path, p);
    }
}

/// Shortest bearer token accepted (`http.token`).
const MIN_HTTP_TOKEN_LEN: usize = 16;

fn check_http(s: &Settings, p: &mut Vec<Problem>) {
    let Some(token) = &s.http.token else {
        return;
    };
    // The message names the setting, never the token.
    let key = if s.http.token_file.is_some() {
        "http.token_file"
    } else {
        "http.token"
    };
    let value = token.expose();
    if value.len() < MIN_HTTP_TOKEN_LEN {
        p.push(Problem::new(
            key,
            format!("the token must be at least {MIN_HTTP_TOKEN_LEN} characters"),
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        p.push(Problem::new(
            key,
            "the token must be printable ASCII without spaces",
        ));
    }
}

/// Checks that a PEM file can be read and holds at least one PEM block.
fn check_pem_file(key: &str, path: &Path, p: &mut Vec<Problem>) {
    match std::fs::read(path) {
        Err(e) => p.push(Problem::new(
            key,
            format!("cannot read {}: {e}", path.display()),
        )),
        Ok(bytes) => {
            if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
                p.push(Problem::new(
                    key,
                    format!("{} holds no PEM block", path.display()),
                ));
            }
        }
    }
}

/// Parses a SHA-256 fingerprint written as 64 hex digits, with or without
/// `:` between bytes.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], String> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return Err(format!(
            "must be 32 bytes in hex (64 digits), got {} digits",
            hex.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| "has a character that is not a hex digit".to_owned())?;
    }
    Ok(out)
}

/// Checks the shape of a `sip:` or `sips:` URI: scheme, optional user part,
/// host (name, IPv4 or bracketed IPv6), optional port, optional parameters.
pub fn check_sip_uri(uri: &str) -> Result<(), String> {
    let lower = uri
        .get(..5)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let rest = if lower.starts_with("sips:") {
        &uri[5..]
    } else if lower.starts_with("sip:") {
        &uri[4..]
    } else {
        return Err(format!("{uri:?} is not a sip: or sips: URI"));
    };
    if let Some((userinfo, _)) = rest.rsplit_once('@')
        && userinfo.contains(':')
    {
        // Never echo the URI here: it holds a password.
        return Err("holds a password; set it in password or password_file".to_owned());
    }
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let hostport = rest.split([';', '?']).next().unwrap_or_default();
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{uri:?} has an unclosed IPv6 reference"))?;
        addr.parse::<Ipv6Addr>()
            .map_err(|_| format!("{uri:?} has an invalid IPv6 address"))?;
        (addr, after.strip_prefix(':'))
    } else {
        match hostport.split_once(':') {
            Some((h, port)) => (h, Some(port)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{uri:?} has no host"));
    }
    if !hostport.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(format!("{uri:?} has an invalid host {host:?}"));
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(format!("{uri:?} has an invalid port {port:?}")),
        }
    }
    Ok(())
}

fn check_calls(s: &Settings, p: &mut Vec<Problem>) {
    let c = &s.calls;
    for (key, value) in [
        ("calls.ring_timeout_secs", c.ring_timeout_secs),
        ("calls.answer_timeout_secs", c.answer_timeout_secs),
        ("calls.max_duration_secs", c.max_duration_secs),
    ] {
        if value == 0 {
            p.push(Problem::new(key, "must be at least 1"));
        }
    }
    if c.ring_timeout_secs < c.min_ring_secs {
        p.push(Problem::new(
            "calls.ring_timeout_secs",
            format!("must be at least calls.min_ring_secs ({})", c.min_ring_secs),
        ));
    }
    if !(100..=60_000).contains(&c.abandon_ms) {
        p.push(Problem::new("calls.abandon_ms", "must be 100 to 60000"));
    }
    if let Some(file) = &c.safe_harbor {
        let name_ok = !file.is_empty()
            && file.len() <= 128
            && !file.starts_with('.')
            && file
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'));
        if !name_ok {
            p.push(Problem::new(
                "calls.safe_harbor",
                "a file name (A-Z a-z 0-9 . _ -) in media.prompt_dir",
            ));
        } else if s.media.prompt_dir.is_none() {
            p.push(Problem::new("calls.safe_harbor", "needs media.prompt_dir"));
        }
    }
    if c.session_expires_secs > 0 && c.session_expires_secs < c.min_se_secs {
        p.push(Problem::new(
            "calls.session_expires_secs",
            format!(
                "{} is below calls.min_se_secs ({})",
                c.session_expires_secs, c.min_se_secs
            ),
        ));
    }
    if c.min_se_secs == 0 {
        p.push(Problem::new("calls.min_se_secs", "must be at least 1"));
    }
    if c.codecs.is_empty() {
        p.push(Problem::new("calls.codecs", "names no codec"));
    }
    for name in &c.codecs {
        if crate::sdp::Codec::from_name(name).is_none() {
            p.push(Problem::new(
                "calls.codecs",
                format!("{name:?} is not one of PCMU, PCMA, G722, opus, telephone-event"),
            ));
        }
    }
    if !(300..700).contains(&c.inbound_reject_code) {
        p.push(Problem::new(
            "calls.inbound_reject_code",
            format!("{} is not a 3xx-6xx status", c.inbound_reject_code),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uris() {
        for ok in [
            "sip:pbx.example.com",
            "sips:pbx.example.com:5061",
            "sip:1001@192.0.2.1:5060;transport=tcp",
            "sip:[2001:db8::1]:5060",
            "SIP:host",
        ] {
            assert_eq!(check_sip_uri(ok), Ok(()), "{ok}");
        }
        for bad in [
            "pbx.example.com",
            "sip:",
            "sip:host:0",
            "sip:host:99999",
            "sip:[2001:db8::1",
            "sip:ho st",
            "sip:1001:secret@pbx",
            "http://x",
        ] {
            assert!(check_sip_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprints() {
        let colon = (0..32)
            .map(|i| format!("{i:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        let fp = parse_fingerprint(&colon).unwrap();
        assert_eq!(fp[31], 31);
        assert_eq!(parse_fingerprint(&colon.replace(':', "")).unwrap(), fp);
        assert!(parse_fingerprint("AB:CD").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }
}
