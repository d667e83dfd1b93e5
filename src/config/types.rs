//! Small value types used by the settings, each with its own parsing rules.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::secret::REDACTED;

/// SIP transport of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// SIP over UDP.
    Udp,
    /// SIP over TCP.
    Tcp,
    /// SIP over TLS (SIPS).
    Tls,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        })
    }
}

/// What to do with SIP requests from sources outside `sip.allowed_peers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Untrusted {
    /// Say nothing (scanners learn nothing).
    #[default]
    Drop,
    /// Answer 403 Forbidden.
    Reject,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// An inclusive range of UDP ports for RTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    /// First port of the range.
    pub start: u16,
    /// Last port of the range (inclusive).
    pub end: u16,
}

impl PortRange {
    /// Number of ports in the range (0 when `start > end`).
    pub fn len(&self) -> u32 {
        if self.start > self.end {
            0
        } else {
            u32::from(self.end) - u32::from(self.start) + 1
        }
    }

    /// Whether the range holds no port.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An IP network in CIDR notation; a bare address means a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("{0:?} is not an IP address or CIDR network")]
    Address(String),
    /// The prefix length is not a number within the address family's width.
    #[error("prefix length {prefix:?} is not 0..={max}")]
    Prefix {
        /// The prefix as written.
        prefix: String,
        /// Largest prefix for the family.
        max: u8,
    },
}

impl IpNet {
    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr_part, prefix_part) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_part
            .trim()
            .parse()
            .map_err(|_| IpNetError::Address(s.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_part {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(IpNetError::Prefix {
                        prefix: p.to_owned(),
                        max,
                    });
                }
            },
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A Redis connection URL, which may carry a password.
///
/// Printing it (Debug, Display, Serialize) replaces any password with
/// [`REDACTED`]; a URL that does not parse is printed as [`REDACTED`] whole,
/// because its password cannot be located reliably.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Wraps a URL string; see [`RedisUrl::parse`] for validation.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL itself, for the one place that connects with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Parses and checks the URL; the error never contains the URL.
    pub fn parse(&self) -> Result<url::Url, String> {
        let parsed = url::Url::parse(&self.0).map_err(|e| format!("not a valid URL ({e})"))?;
        match parsed.scheme() {
            "redis" | "rediss" => {
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err("the URL has no host".into());
                }
                let db = parsed.path().trim_start_matches('/');
                if !db.is_empty() && db.parse::<u32>().is_err() {
                    return Err(format!("database {db:?} is not a number"));
                }
            }
            "unix" | "redis+unix" => {
                if parsed.path().is_empty() {
                    return Err("the unix socket URL has no path".into());
                }
            }
            other => {
                return Err(format!(
                    "scheme {other:?} is not one of redis, rediss, unix, redis+unix"
                ));
            }
        }
        Ok(parsed)
    }

    /// The URL with any password replaced, safe to print.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) => {
                if u.password().is_some() {
                    // Cannot fail for URLs that already carry a password.
                    let _ = u.set_password(Some(REDACTED));
                }
                u.to_string()
            }
            Err(_) => REDACTED.to_owned(),
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipnet_parses_hosts_and_networks() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        let host: IpNet = "192.0.2.7".parse().unwrap();
        assert_eq!(host.to_string(), "192.0.2.7/32");
        assert!(host.contains("192.0.2.7".parse().unwrap()));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
        assert!(!v6.contains("10.1.0.1".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn ipnet_rejects_garbage() {
        assert!(matches!(
            "pbx".parse::<IpNet>(),
            Err(IpNetError::Address(_))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<IpNet>(),
            Err(IpNetError::Prefix { max: 32, .. })
        ));
        assert!(matches!(
            "::/129".parse::<IpNet>(),
            Err(IpNetError::Prefix { max: 128, .. })
        ));
    }

    #[test]
    fn redis_url_hides_password() {
        let u = RedisUrl::new("redis://app:s3cret@redis.internal:6379/2");
        assert!(u.parse().is_ok());
        let shown = u.to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("app:"), "{shown}");
        let bad = RedisUrl::new("redis//app:s3cret@host");
        let err = bad.parse().unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
        assert_eq!(bad.to_string(), REDACTED);
    }

    #[test]
    fn redis_url_checks_scheme_host_and_db() {
        assert!(
            RedisUrl::new("http://h:1")
                .parse()
                .unwrap_err()
                .contains("scheme")
        );
        assert!(
            RedisUrl::new("redis://h:1/x")
                .parse()
                .unwrap_err()
                .contains("database")
        );
        assert!(RedisUrl::new("rediss://h:6380/0").parse().is_ok());
        assert!(RedisUrl::new("unix:///run/redis.sock").parse().is_ok());
    }

    #[test]
    fn port_range_len() {
        assert_eq!(
            PortRange {
                start: 10000,
                end: 10001
            }
            .len(),
            2
        );
        assert!(PortRange { start: 2, end: 1 }.is_empty());
    }
}
