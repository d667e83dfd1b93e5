//! A command's `websocket` media turned into what a media shard streams
//! with: the URL resolved, TLS trust built, and the stream's ids (done here,
//! at the edge, so that the shard never blocks on a lookup or a file).

use std::time::Duration;

use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};

use crate::agent::stream::{Protocol, StreamConfig};
use crate::agent::twilio::StreamIds;
use crate::control::command::MediaArgs;
use crate::media::agent_conn::{AgentSpec, AgentTls};
use crate::media::player::{Clip, Source};
use crate::sip::transport::tls::{Trust, client_config};

/// Longest a name lookup of the agent's host may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// A ping after this long without one.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// Largest message taken from an agent (a 10 MB frame is refused).
pub const MAX_MESSAGE: usize = 2 * 1024 * 1024;
/// Most agent audio queued: 60 s of µ-law.
pub const MAX_QUEUE: usize = 8 * 60_000;
/// Most bytes waiting to be written to an agent (about 10 s of media).
pub const MAX_BACKLOG: usize = 512 * 1024;

/// The prompt file `name` of the prompt directory, to be played once;
/// the error names `field`.
pub async fn prompt(
    prompt_dir: Option<&std::path::Path>,
    name: &str,
    field: &str,
) -> Result<Box<Source>, String> {
    let dir = prompt_dir.ok_or_else(|| format!("{field}: no media.prompt_dir is configured"))?;
    let bytes = tokio::fs::read(dir.join(name))
        .await
        .map_err(|e| format!("{field} {name:?}: {e}"))?;
    let clip = Clip::from_wav(&bytes).map_err(|e| format!("{field} {name:?}: {e}"))?;
    Ok(Box::new(Source::clip(clip, false)))
}

/// The stream for `media` on the call `call_name` of instance `instance`;
/// the error is the message for the command's result.
pub async fn agent_spec(
    media: &MediaArgs,
    call_name: &str,
    instance: &str,
    prompt_dir: Option<&std::path::Path>,
) -> Result<AgentSpec, String> {
    let on_end_prompt = match &media.on_end_prompt {
        Some(name) => Some(prompt(prompt_dir, name, "args.media.on_end_prompt").await?),
        None => None,
    };
    let url = media
        .url
        .as_deref()
        .and_then(|u| url::Url::parse(u).ok())
        .ok_or("args.media.url: not a URL")?;
    let secure = url.scheme() == "wss";
    let host = url.host_str().ok_or("args.media.url: no host")?.to_owned();
    let port = url
        .port_or_known_default()
        .ok_or("args.media.url: no port")?;
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let lookup = tokio::time::timeout(
        RESOLVE_TIMEOUT,
        tokio::net::lookup_host((bare.as_str(), port)),
    );
    let address = match lookup.await {
        Ok(Ok(mut addrs)) => addrs
            .next()
            .ok_or_else(|| format!("args.media.url: {host} has no address"))?,
        Ok(Err(e)) => return Err(format!("args.media.url: {host}: {e}")),
        Err(_) => return Err(format!("args.media.url: looking {host} up timed out")),
    };
    let tls = if secure {
        let trust = match (&media.tls_ca_file, &media.tls_fingerprint) {
            (Some(file), _) => Trust::CaFile(file.into()),
            (None, Some(fp)) => Trust::Pinned(
                parse_fingerprint(fp).ok_or("args.media.tls_fingerprint: 32 hex bytes")?,
            ),
            (None, None) => Trust::System,
        };
        let config = client_config(&trust).map_err(|e| format!("args.media: {e}"))?;
        let server_name = ServerName::try_from(bare.clone())
            .map_err(|_| format!("args.media.url: {host} is not a TLS server name"))?;
        Some(AgentTls {
            config,
            server_name,
        })
    } else {
        None
    };
    let default_port = if secure { 443 } else { 80 };
    let host_header = if port == default_port {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let mut path = url.path().to_owned();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    let protocol = match media.protocol.as_deref() {
        Some("l16") => Protocol::L16 {
            rate: media.sample_rate.unwrap_or(8000),
        },
        _ => Protocol::Twilio,
    };
    let mut random = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| "no randomness for the stream's ids".to_owned())?;
    let (stream_id, nonce) = random.split_at(16);
    let ids = StreamIds {
        account_sid: StreamIds::sid("AC", &digest16(&["dialerd-account", instance])),
        call_sid: StreamIds::sid("CA", &digest16(&["dialerd-call", call_name])),
        stream_sid: StreamIds::sid("MZ", &to16(stream_id)),
    };
    Ok(AgentSpec {
        address,
        tls,
        stream: StreamConfig {
            host: host_header,
            path,
            headers: media
                .headers
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            protocol,
            ids,
            custom_parameters: media
                .custom_parameters
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            connect_timeout: Duration::from_millis(media.connect_timeout_ms.unwrap_or(5000)),
            ping_interval: PING_INTERVAL,
            max_message: MAX_MESSAGE,
            max_queue: MAX_QUEUE,
            max_backlog: MAX_BACKLOG,
            nonce: to16(nonce),
        },
        hang_up_on_end: media.on_end.as_deref() != Some("continue"),
        on_end_prompt,
    })
}

/// The callSid a call presents to agents: stable for its name, so the
/// backend can map one to the other.
pub fn call_sid(call_name: &str) -> String {
    StreamIds::sid("CA", &digest16(&["dialerd-call", call_name]))
}

fn digest16(parts: &[&str]) -> [u8; 16] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    to16(&h.finalize())
}

fn to16(bytes: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = *b;
    }
    out
}

fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
