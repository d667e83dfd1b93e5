//! Resolves the address dialerd advertises in Via, Contact and SDP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{AddressSource, PublicAddress};

/// Attempts made against the metadata service before giving up.
const METADATA_ATTEMPTS: u32 = 3;
/// Pause between metadata attempts.
const METADATA_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Largest metadata response read.
const METADATA_MAX_RESPONSE: usize = 4096;

/// Why the public address could not be found.
#[derive(Debug, thiserror::Error)]
pub enum PublicAddressError {
    /// The environment variable is missing or not an address.
    #[error("environment variable {var}: {problem}")]
    Env {
        /// Variable name.
        var: String,
        /// What is wrong.
        problem: String,
    },
    /// The metadata service failed every attempt.
    #[error("metadata service {url}: {problem} (after {METADATA_ATTEMPTS} attempts)")]
    Metadata {
        /// The URL asked.
        url: String,
        /// The last failure.
        problem: String,
    },
}

/// Finds the public address; `None` for the `local` source.
pub async fn resolve(
    settings: &PublicAddress,
    env: &HashMap<String, String>,
) -> Result<Option<IpAddr>, PublicAddressError> {
    match settings.source {
        AddressSource::Local => Ok(None),
        AddressSource::Static => Ok(settings.address),
        AddressSource::Env => {
            let var = settings.var.clone().unwrap_or_default();
            let value = env.get(&var).ok_or_else(|| PublicAddressError::Env {
                var: var.clone(),
                problem: "not set".into(),
            })?;
            value
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| PublicAddressError::Env {
                    var,
                    problem: format!("{value:?} is not an IP address"),
                })
        }
        AddressSource::DoMetadata => {
            let url = &settings.url;
            let timeout = Duration::from_millis(settings.timeout_ms);
            let mut problem = String::new();
            for attempt in 1..=METADATA_ATTEMPTS {
                match fetch_address(url, timeout).await {
                    Ok(ip) => return Ok(Some(ip)),
                    Err(e) => {
                        tracing::warn!(%url, attempt, error = %e, "public address lookup failed");
                        problem = e;
                    }
                }
                if attempt < METADATA_ATTEMPTS {
                    tokio::time::sleep(METADATA_RETRY_PAUSE).await;
                }
            }
            Err(PublicAddressError::Metadata {
                url: url.clone(),
                problem,
            })
        }
    }
}

/// One plain-HTTP GET whose body is an IP address.
async fn fetch_address(url: &str, timeout: Duration) -> Result<IpAddr, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    let host = parsed.host_str().ok_or("URL has no host")?.to_owned();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
        parsed.path()
    );
    let exchange = async {
        let mut stream = TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut body = Vec::new();
        stream
            .take(METADATA_MAX_RESPONSE as u64)
            .read_to_end(&mut body)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        Ok::<_, String>(body)
    };
    let response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))??;
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> Result<IpAddr, String> {
    let text = std::str::from_utf8(response).map_err(|_| "response is not UTF-8".to_owned())?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("response has no header end")?;
    let status = head.lines().next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        return Err(format!("status line {status:?}"));
    }
    let body = body.trim();
    body.parse()
        .map_err(|_| format!("body {body:?} is not an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_metadata_answer() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n203.0.113.7\n";
        assert_eq!(parse_response(ok).unwrap().to_string(), "203.0.113.7");
        let not_found = b"HTTP/1.1 404 Not Found\r\n\r\nnope";
        assert!(parse_response(not_found).unwrap_err().contains("404"));
        let junk = b"HTTP/1.1 200 OK\r\n\r\n<html>";
        assert!(parse_response(junk).unwrap_err().contains("not an IP"));
    }
}
