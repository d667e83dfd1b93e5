//! `dialerd probe URI`: sends one OPTIONS (the PBX "qualify" request) and
//! reports the answer; an ops check of reachability, transport and TLS trust.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Settings, Transport, parse_fingerprint};
use crate::engine::{CoreConfig, Publish, RequestError, SipCore};
use crate::metrics::{RegistrationMetrics, SipMetrics};
use crate::sip::driver::{DriverConfig, DriverError, local_ip_toward};
use crate::sip::endpoint::{EndpointConfig, OutRequest, PeerOptions, TlsClient};
use crate::sip::ids;
use crate::sip::message::{Host, Message, OutMessage, Uri};
use crate::sip::target::Target;
use crate::sip::transport::tls::{self, Trust};
use crate::sip::transport::{Gate, TransportLimits};

/// What to probe and how.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// `sip:` or `sips:` URI of the peer.
    pub uri: String,
    /// Transport; default from the URI (`;transport=`, `sips:` means TLS, else UDP).
    pub transport: Option<Transport>,
    /// CA file that signs the peer's certificate.
    pub tls_ca: Option<PathBuf>,
    /// Pinned SHA-256 fingerprint of the peer's certificate.
    pub tls_fingerprint: Option<String>,
    /// How long to wait for a final response.
    pub timeout: Duration,
}

/// A final response.
#[derive(Debug, Clone)]
pub struct ProbeAnswer {
    /// Where the request went.
    pub target: Target,
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Time to the final response.
    pub elapsed: Duration,
    /// The response.
    pub response: Message,
}

/// Why the probe got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The URI or options are unusable.
    #[error("{0}")]
    Usage(String),
    /// The host name does not resolve.
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// Host.
        host: String,
        /// Why.
        reason: String,
    },
    /// TLS trust could not be set up.
    #[error("{0}")]
    Tls(#[from] tls::TlsConfigError),
    /// The local socket could not be bound.
    #[error("{0}")]
    Stack(#[from] DriverError),
    /// No final response.
    #[error("{target}: {error}")]
    Request {
        /// Where the request went.
        target: Target,
        /// What happened.
        error: RequestError,
    },
    /// Nothing within the timeout.
    #[error("{target}: no final response within {timeout:?}")]
    Timeout {
        /// Where the request went.
        target: Target,
        /// The timeout.
        timeout: Duration,
    },
}

/// Sends one OPTIONS and waits for the final response.
pub async fn probe(opts: &ProbeOptions) -> Result<ProbeAnswer, ProbeError> {
    tls::install_default_provider();
    let uri =
        Uri::parse(&opts.uri).map_err(|e| ProbeError::Usage(format!("{:?}: {e}", opts.uri)))?;
    let Uri::Sip(sip) = &uri else {
        return Err(ProbeError::Usage(format!(
            "{:?} is not a sip: or sips: URI",
            opts.uri
        )));
    };
    let transport = match (opts.transport, sip.transport()) {
        (Some(t), _) => t,
        (None, Some(t)) if t.eq_ignore_ascii_case("tcp") => Transport::Tcp,
        (None, Some(t)) if t.eq_ignore_ascii_case("tls") => Transport::Tls,
        (None, _) if sip.secure => Transport::Tls,
        (None, _) => Transport::Udp,
    };
    let port = sip.port.unwrap_or(if transport == Transport::Tls {
        5061
    } else {
        5060
    });
    let host_text = match sip.host {
        Host::Domain(d) => d.to_owned(),
        Host::V4(a) => a.to_string(),
        Host::V6(a) => a.to_string(),
    };
    let addr = resolve(&sip.host, &host_text, port).await?;
    let target = Target::new(transport, addr);
    let tls = if transport == Transport::Tls {
        let trust = match (&opts.tls_ca, &opts.tls_fingerprint) {
            (Some(_), Some(_)) => {
                return Err(ProbeError::Usage(
                    "give --tls-ca or --tls-fingerprint, not both".into(),
                ));
            }
            (Some(ca), None) => Trust::CaFile(ca.clone()),
            (None, Some(fp)) => Trust::Pinned(
                parse_fingerprint(fp)
                    .map_err(|e| ProbeError::Usage(format!("--tls-fingerprint: {e}")))?,
            ),
            (None, None) => Trust::System,
        };
        Some(TlsClient {
            config: tls::client_config(&trust)?,
            name: tls::server_name(&host_text).map_err(ProbeError::Usage)?,
        })
    } else {
        None
    };
    let mut udp = Vec::new();
    if transport == Transport::Udp {
        let any: SocketAddr = if addr.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        udp.push(any);
    }
    let local_ip = local_ip_toward(addr);
    let config = CoreConfig {
        driver: DriverConfig {
            udp,
            tcp: Vec::new(),
            tls: Vec::new(),
            tls_server: None,
            limits: TransportLimits::default(),
            gate: Gate::open(1024 * 1024),
        },
        endpoint: EndpointConfig {
            advertised: Some(local_ip),
            ..EndpointConfig::default()
        },
        sip_trace: false,
        panic_after: None,
        call_name_prefix: "call-".to_owned(),
        leases: false,
    };
    let publish = Publish {
        status: tokio::sync::watch::channel(Vec::new()).0,
        registration: Arc::new(RegistrationMetrics::default()),
        sip: Arc::new(SipMetrics::default()),
        events: crate::events::EventSender::unheard(),
        media: crate::media::Media::none(),
        media_events: None,
    };
    let (core, task) = SipCore::start(config, &Settings::default(), publish).await?;
    let local_host = match local_ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    let request = OutMessage::request("OPTIONS", &opts.uri)
        .header("Max-Forwards", "70")
        .header(
            "From",
            format!("<sip:probe@{local_host}>;tag={}", ids::token()),
        )
        .header("To", format!("<{}>", opts.uri))
        .header("Call-ID", ids::call_id(&local_host))
        .header("CSeq", "1 OPTIONS")
        .header("Accept", "application/sdp")
        .header("User-Agent", concat!("dialerd/", env!("CARGO_PKG_VERSION")));
    let started = Instant::now();
    let options = tls.map(|tls| PeerOptions {
        keepalive: None,
        tls: Some(tls),
    });
    let sent = core.request(OutRequest::new(request), target, options);
    let outcome = tokio::time::timeout(opts.timeout, sent).await;
    core.shutdown().await;
    let _ = task.await;
    match outcome {
        Err(_) => Err(ProbeError::Timeout {
            target,
            timeout: opts.timeout,
        }),
        Ok(Err(error)) => Err(ProbeError::Request { target, error }),
        Ok(Ok(response)) => Ok(ProbeAnswer {
            target,
            status: response.status().unwrap_or(0),
            reason: response.reason().unwrap_or_default().to_owned(),
            elapsed: started.elapsed(),
            response,
        }),
    }
}

async fn resolve(host: &Host<'_>, text: &str, port: u16) -> Result<SocketAddr, ProbeError> {
    if let Some(ip) = host.ip() {
        return Ok(SocketAddr::new(ip, port));
    }
    let err = |reason: String| ProbeError::Resolve {
        host: text.to_owned(),
        reason,
    };
    tokio::net::lookup_host((text, port))
        .await
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".into()))
}
