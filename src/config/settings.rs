//! The typed settings tree. Every struct rejects unknown keys; every field
//! has a default so that a file only names what it changes.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::secret::Secret;
use super::types::{IpNet, LogFormat, PortRange, RedisUrl, Transport, Untrusted};

/// Default registration lifetime asked of the registrar, in seconds.
pub const DEFAULT_EXPIRES_SECS: u32 = 3600;
/// Default CRLF keepalive interval on TCP/TLS flows, in seconds.
pub const DEFAULT_KEEPALIVE_SECS: u32 = 25;
/// DigitalOcean metadata address that returns the droplet's public IPv4.
pub const DO_METADATA_PUBLIC_IPV4: &str =
    "http://169.254.169.254/metadata/v1/interfaces/public/0/ipv4/address";

/// The whole configuration of one dialerd instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Identity of this instance and the address it advertises.
    pub instance: InstanceSettings,
    /// Log level and format.
    pub log: LogSettings,
    /// SIP listeners, TLS server material, timers and peer allow-list.
    pub sip: SipSettings,
    /// Defaults for every account that leaves a field unset.
    pub account_defaults: AccountDefaults,
    /// The SIP accounts this instance registers.
    pub accounts: Vec<AccountSettings>,
    /// RTP ports and media timeouts.
    pub media: MediaSettings,
    /// The Redis control channel.
    pub redis: RedisSettings,
    /// The HTTP status server.
    pub http: HttpSettings,
    /// Call admission limits.
    pub limits: LimitSettings,
    /// Graceful shutdown.
    pub shutdown: ShutdownSettings,
    /// Account leases across replicas.
    pub lease: LeaseSettings,
    /// Registration retry policy.
    pub registration: RegistrationSettings,
    /// Call timeouts, codecs and the default inbound policy.
    pub calls: CallSettings,
}

/// What to do with an inbound INVITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundPolicy {
    /// Refuse it with `inbound_reject_code`.
    Reject,
    /// Answer at once.
    Answer,
    /// Ring and wait for an answer command up to `answer_timeout_secs`.
    Ring,
}

/// Whether a call's audio is encrypted with SRTP (SDES keys in the SDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SrtpMode {
    /// Plain RTP; `RTP/SAVP` offers are refused.
    #[default]
    Off,
    /// SRTP when the peer takes it (best-effort offers), else plain RTP.
    Optional,
    /// SRTP or no call: plain RTP is refused (`srtp_required`).
    Required,
    /// As `required`, offering DTLS-SRTP (`UDP/TLS/RTP/SAVP`) instead of SDES.
    Dtls,
}

/// `[calls]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallSettings {
    /// Outbound: how long to ring before cancelling, seconds.
    pub ring_timeout_secs: u64,
    /// Inbound `ring`: how long to wait for an answer, seconds.
    pub answer_timeout_secs: u64,
    /// Longest call after the answer, seconds.
    pub max_duration_secs: u64,
    /// Codecs offered and accepted, in preference order: `PCMU`, `PCMA`,
    /// `G722`, `opus`, `telephone-event`.
    pub codecs: Vec<String>,
    /// Packetization time asked for, milliseconds (0: none).
    pub ptime_ms: u32,
    /// Inbound INVITEs for no account with a policy of its own.
    pub inbound: InboundPolicy,
    /// The status `reject` answers with.
    pub inbound_reject_code: u16,
    /// Session interval asked for and granted (RFC 4028 session timers),
    /// seconds; 0 turns session timers off.
    pub session_expires_secs: u64,
    /// Smallest session interval accepted (Min-SE), seconds.
    pub min_se_secs: u64,
    /// Pass a bridged outbound leg's early media on to its unanswered
    /// inbound leg.
    pub early_media: bool,
    /// An originate to a destination dialed within this many seconds is
    /// refused (`duplicate_destination`) unless forced; 0 turns it off.
    pub destination_window_secs: u64,
    /// How long an ended call's record is kept in Redis, seconds.
    pub record_ttl_secs: u64,
    /// The shortest ring timeout an originate may ask for, seconds
    /// (unanswered calls must ring at least 15 s under US rules; 0 lifts
    /// the floor).
    pub min_ring_secs: u64,
    /// The abandon guard: an answered call's agent must be connected
    /// within this many ms of the greeting's end, else the safe-harbor
    /// recording is played and the call dropped (default 2000).
    pub abandon_ms: u64,
    /// The safe-harbor recording (a file in `media.prompt_dir`) for
    /// originates that name none.
    pub safe_harbor: Option<String>,
    /// Most live calls of one campaign on this instance, for originates
    /// that give no `campaign_max_calls` (0: no limit).
    pub campaign_max_calls: usize,
}

impl Default for CallSettings {
    fn default() -> Self {
        Self {
            ring_timeout_secs: 60,
            answer_timeout_secs: 30,
            max_duration_secs: 4 * 3600,
            codecs: vec!["PCMU".into(), "PCMA".into(), "telephone-event".into()],
            ptime_ms: 20,
            inbound: InboundPolicy::Reject,
            inbound_reject_code: 480,
            session_expires_secs: 1800,
            min_se_secs: 90,
            early_media: true,
            destination_window_secs: 60,
            record_ttl_secs: 86_400,
            min_ring_secs: 15,
            abandon_ms: 2000,
            safe_harbor: None,
            campaign_max_calls: 0,
        }
    }
}

/// `[registration]`: how registrations retry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationSettings {
    /// First retry after a transient failure (5xx, timeout), milliseconds;
    /// doubles per failure, with ±20 % jitter.
    pub backoff_initial_ms: u64,
    /// Longest retry interval, milliseconds.
    pub backoff_max_ms: u64,
    /// Retry interval after a definitive rejection (403, refused credentials), seconds.
    pub forbidden_retry_secs: u64,
}

impl Default for RegistrationSettings {
    fn default() -> Self {
        Self {
            backoff_initial_ms: 1000,
            backoff_max_ms: 300_000,
            forbidden_retry_secs: 600,
        }
    }
}

/// `[instance]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceSettings {
    /// Instance id, used in Redis keys and events; defaults to the host name.
    pub id: String,
    /// Where the public address for Via, Contact and SDP comes from.
    pub public_address: PublicAddress,
}

impl Default for InstanceSettings {
    fn default() -> Self {
        Self {
            id: default_instance_id(),
            public_address: PublicAddress::default(),
        }
    }
}

fn default_instance_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "dialerd".to_owned())
}

/// `[instance.public_address]`: how the advertised public address is found.
///
/// A flat table rather than a tagged enum, so that a later layer (say the
/// environment) can switch `source` while an earlier one set another
/// source's field; fields of other sources are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublicAddress {
    /// Which source applies.
    pub source: AddressSource,
    /// The address, for `static`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// Name of the environment variable, for `env`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub var: Option<String>,
    /// Metadata URL answering with the address as plain text, for `do_metadata`.
    pub url: String,
    /// How long one metadata request may take, milliseconds.
    pub timeout_ms: u64,
}

impl Default for PublicAddress {
    fn default() -> Self {
        Self {
            source: AddressSource::Local,
            address: None,
            var: None,
            url: DO_METADATA_PUBLIC_IPV4.to_owned(),
            timeout_ms: 2000,
        }
    }
}

/// Where the public address comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressSource {
    /// No public address: advertise the local address of each flow.
    Local,
    /// `address`.
    Static,
    /// The environment variable named by `var`, read at start (e.g. set by
    /// the Kubernetes downward API).
    Env,
    /// The DigitalOcean droplet metadata service at `url`.
    DoMetadata,
}

impl AddressSource {
    /// The name used in configuration and status.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressSource::Local => "local",
            AddressSource::Static => "static",
            AddressSource::Env => "env",
            AddressSource::DoMetadata => "do_metadata",
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A tracing filter such as `info` or `dialerd=debug,info`; `RUST_LOG` wins.
    pub level: String,
    /// `text` or `json`; the `--log-format` flag wins.
    pub format: LogFormat,
    /// Log every SIP message in and out (credentials redacted); also
    /// switchable at run time.
    pub sip_trace: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
            sip_trace: false,
        }
    }
}

/// `[sip]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipSettings {
    /// UDP listen addresses.
    pub udp_listen: Vec<SocketAddr>,
    /// TCP listen addresses.
    pub tcp_listen: Vec<SocketAddr>,
    /// TLS listen addresses (need `sip.tls.cert_file` and `sip.tls.key_file`).
    pub tls_listen: Vec<SocketAddr>,
    /// TLS server material for inbound connections.
    pub tls: SipTlsSettings,
    /// RFC 3261 T1 (round-trip estimate), milliseconds.
    pub t1_ms: u64,
    /// RFC 3261 T2 (maximum retransmit interval), milliseconds.
    pub t2_ms: u64,
    /// RFC 3261 T4 (maximum time a message stays in the network), milliseconds.
    pub t4_ms: u64,
    /// Sources allowed to send requests; empty allows any source.
    pub allowed_peers: Vec<IpNet>,
    /// `drop` (default) or `reject` (403) requests from other sources.
    pub untrusted: Untrusted,
    /// Most open TCP/TLS connections.
    pub max_connections: usize,
    /// Most inbound connections from one address.
    pub max_connections_per_source: usize,
    /// Close a connection after this long without traffic, seconds.
    pub idle_timeout_secs: u64,
    /// User-Agent header value.
    pub user_agent: String,
}

impl Default for SipSettings {
    fn default() -> Self {
        Self {
            udp_listen: vec![SocketAddr::from(([0, 0, 0, 0], 5060))],
            tcp_listen: Vec::new(),
            tls_listen: Vec::new(),
            tls: SipTlsSettings::default(),
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            allowed_peers: Vec::new(),
            untrusted: Untrusted::Drop,
            max_connections: 1024,
            max_connections_per_source: 32,
            idle_timeout_secs: 300,
            user_agent: concat!("dialerd/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// `[sip.tls]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipTlsSettings {
    /// PEM certificate chain presented to inbound TLS peers.
    pub cert_file: Option<PathBuf>,
    /// PEM private key for `cert_file`.
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle for verifying peers that present client certificates.
    pub ca_file: Option<PathBuf>,
}

/// `[account_defaults]`: per-PBX defaults, usually set by a sip-profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountDefaults {
    /// Transport toward the registrar.
    pub transport: Option<Transport>,
    /// Registration lifetime asked for, seconds.
    pub expires_secs: Option<u32>,
    /// CRLF keepalive interval on TCP/TLS, seconds; 0 disables.
    pub keepalive_secs: Option<u32>,
    /// Use RFC 5626 outbound (`+sip.instance`, `reg-id`).
    pub outbound: Option<bool>,
    /// PEM CA bundle that signs the PBX's TLS certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// SHA-256 fingerprint of the PBX's (often self-signed) certificate.
    pub tls_fingerprint_sha256: Option<String>,
    /// SRTP policy of the account's calls.
    pub srtp: Option<SrtpMode>,
}

/// `[[accounts]]`: one SIP account.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountSettings {
    /// Name used in commands, events and status; unique per instance.
    pub name: String,
    /// Registrar URI, e.g. `sips:pbx.example.com:5061`.
    pub registrar: String,
    /// Registrars to fail over to, in order.
    pub failover_registrars: Vec<String>,
    /// Whether `/readyz` waits for this account to be registered (default true).
    pub required: Option<bool>,
    /// User part of the address of record.
    pub username: String,
    /// Digest user name when it differs from `username`.
    pub auth_username: Option<String>,
    /// Digest password (prefer `password_file`).
    pub password: Option<Secret>,
    /// File holding the digest password (e.g. a mounted Kubernetes secret).
    pub password_file: Option<PathBuf>,
    /// Outbound proxy URI that every request is routed through.
    pub outbound_proxy: Option<String>,
    /// sip-profile whose `account_defaults` apply to this account.
    pub profile: Option<String>,
    /// Live calls of this account at most (besides `limits`); none when unset.
    pub max_concurrent_calls: Option<u32>,
    /// New outbound calls of this account per second at most.
    pub calls_per_second: Option<f64>,
    /// Transport; default from the profile or `account_defaults`.
    pub transport: Option<Transport>,
    /// Registration lifetime, seconds.
    pub expires_secs: Option<u32>,
    /// CRLF keepalive interval, seconds; 0 disables.
    pub keepalive_secs: Option<u32>,
    /// RFC 5626 outbound.
    pub outbound: Option<bool>,
    /// PEM CA bundle for the registrar's certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// Pinned SHA-256 fingerprint of the registrar's certificate.
    pub tls_fingerprint_sha256: Option<String>,
    /// What to do with INVITEs for this account (default `[calls].inbound`).
    pub inbound: Option<InboundPolicy>,
    /// SRTP policy of the account's calls (default `[media].srtp`).
    pub srtp: Option<SrtpMode>,
}

impl AccountSettings {
    /// Fills every unset default field from `defaults`.
    pub fn inherit(&mut self, defaults: &AccountDefaults) {
        fn fill<T: Clone>(slot: &mut Option<T>, from: &Option<T>) {
            if slot.is_none() {
                slot.clone_from(from);
            }
        }
        fill(&mut self.transport, &defaults.transport);
        fill(&mut self.expires_secs, &defaults.expires_secs);
        fill(&mut self.keepalive_secs, &defaults.keepalive_secs);
        fill(&mut self.outbound, &defaults.outbound);
        fill(&mut self.tls_ca_file, &defaults.tls_ca_file);
        fill(
            &mut self.tls_fingerprint_sha256,
            &defaults.tls_fingerprint_sha256,
        );
        fill(&mut self.srtp, &defaults.srtp);
    }
}

/// `[media]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSettings {
    /// UDP ports used for RTP (and RTCP).
    pub rtp_port_range: PortRange,
    /// An answered call with no RTP received from its peer for this long
    /// ends with `media_timeout`, seconds (at least 1). Not applied while
    /// the peer holds (sendonly, inactive).
    pub inactivity_timeout_secs: u32,
    /// Media shard threads; 0 for one per core.
    pub shards: usize,
    /// Latch a peer's RTP from any address, not only its signalled IP.
    pub latch_any_address: bool,
    /// Silence is sent to a peer after this long with nothing relayed to
    /// it, milliseconds.
    pub fill_after_ms: u32,
    /// A peer that stops sending for this long is reported (`call.media`),
    /// milliseconds.
    pub quiet_report_ms: u32,
    /// A port given back is not reused for this long, milliseconds.
    pub port_drain_ms: u32,
    /// Where the `play` command's WAV files are; `play` names a file in it.
    pub prompt_dir: Option<std::path::PathBuf>,
    /// Where answering-machine detection writes the callee audio it
    /// captures (`amd.capture_ms`), one WAV per call.
    pub amd_capture_dir: Option<std::path::PathBuf>,
    /// While packets flow, a media shard sleeps this long between polls and
    /// reads what gathered in one go, instead of waking for every packet;
    /// microseconds, 0 to wake per packet (least latency, most CPU).
    pub batch_wait_us: u32,
    /// SRTP policy of calls without an account or an account policy:
    /// `off`, `optional` or `required`.
    pub srtp: SrtpMode,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            rtp_port_range: PortRange {
                start: 10000,
                end: 20000,
            },
            inactivity_timeout_secs: 30,
            shards: 0,
            latch_any_address: false,
            fill_after_ms: 100,
            quiet_report_ms: 2000,
            port_drain_ms: 2000,
            prompt_dir: None,
            amd_capture_dir: None,
            batch_wait_us: 100,
            srtp: SrtpMode::Off,
        }
    }
}

/// `[redis]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// Run the control channel (false: no Redis at all).
    pub enabled: bool,
    /// How long a command id is remembered (idempotency), seconds.
    pub dedup_window_secs: u64,
    /// `redis://`, `rediss://` or `unix://` URL (a password in it is redacted).
    pub url: RedisUrl,
    /// Prefix of every channel and key.
    pub prefix: String,
    /// PING interval on the subscribed connection (and heartbeat), seconds.
    pub keepalive_secs: u32,
    /// Longest wait for any Redis reply (the PING's included), seconds.
    pub response_timeout_secs: u32,
    /// How long a command's claim lasts before another instance may take
    /// it over, seconds.
    pub command_lease_secs: u64,
    /// Stream entries another consumer left pending this long are claimed,
    /// seconds.
    pub stream_claim_idle_secs: u64,
    /// Stream commands older than this are answered `expired`, seconds.
    pub stream_max_age_secs: u64,
    /// Approximate length of `<prefix>:events:stream`.
    pub events_stream_maxlen: u64,
    /// Events kept while Redis is away.
    pub event_buffer: usize,
    /// PEM CA bundle for `rediss://`.
    pub tls_ca_file: Option<PathBuf>,
    /// ACL user name.
    pub username: Option<String>,
    /// ACL password (prefer `password_file`).
    pub password: Option<Secret>,
    /// File holding the ACL password.
    pub password_file: Option<PathBuf>,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            dedup_window_secs: 86_400,
            url: RedisUrl::new("redis://127.0.0.1:6379"),
            prefix: "dialer".to_owned(),
            keepalive_secs: 5,
            response_timeout_secs: 2,
            command_lease_secs: 30,
            stream_claim_idle_secs: 30,
            stream_max_age_secs: 60,
            events_stream_maxlen: 100_000,
            event_buffer: 10_000,
            tls_ca_file: None,
            username: None,
            password: None,
            password_file: None,
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Listen address of the status server.
    pub bind: SocketAddr,
    /// Bearer token that callers from other than loopback must send for
    /// `/status`, `/metrics`, `POST /drain` and `POST /sip-trace` (prefer
    /// `token_file`). `/healthz` and `/readyz` stay open.
    pub token: Option<Secret>,
    /// File holding the bearer token (read at load).
    pub token_file: Option<PathBuf>,
    /// Serve `POST /2010-04-01/Accounts/{AC}/Calls/{CA}.json` with
    /// `Status=completed` (guarded like `/drain`): the Twilio REST call
    /// update a voice agent framework (Pipecat's auto hang-up) ends a
    /// call with. Off by default.
    pub agent_hangup_api: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            token_file: None,
            agent_hangup_api: false,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Calls that may exist at once; more are refused.
    pub max_concurrent_calls: u32,
    /// New outbound calls per second (may be fractional).
    pub calls_per_second: f64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_concurrent_calls: 100,
            calls_per_second: 10.0,
        }
    }
}

/// `[lease]`: with several replicas sharing the same accounts, each
/// account is registered by exactly one of them, the holder of its lease in
/// Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseSettings {
    /// Register accounts only under a lease (needs `[redis]`).
    pub enabled: bool,
    /// How long a lease lasts without renewal, seconds: a standby replica
    /// takes an account over within this plus the registration time.
    pub ttl_secs: u64,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            ttl_secs: 15,
        }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// How long calls may go on after a drain starts (POST /drain, the
    /// `drain` command, SIGTERM) before they are ended with cause
    /// `shutdown`, seconds; ending them, unregistering and releasing leases
    /// take at most 20 s more.
    pub deadline_secs: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self { deadline_secs: 30 }
    }
}
