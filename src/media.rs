//! Media: the RTP relay between the legs of a bridge, and between a leg and
//! a media endpoint (an external RTP endpoint, the built-in player).
//!
//! The packet path is the sans-IO [`relay::Relay`] (latching, payload-type
//! mapping, G.711 transcoding, RFC 4733 telephone-events, silence fill,
//! statistics, media timeouts), driven by [`shard`] threads, one per core,
//! each owning the sockets of its legs. The SIP core owns the [`Media`]
//! handle: it opens a leg when a call takes a port, tells it what was
//! negotiated, connects bridged legs (both on one shard) and closes it when
//! the call ends; the shards report back ([`MediaEvent`]) over a bounded
//! channel.

pub mod agent_conn;
pub mod cpa_tap;
pub mod dtls;
pub mod g711;
pub mod handle;
pub mod leg;
pub mod player;
pub mod relay;
pub mod rtp;
pub mod shard;
pub mod srtp;
pub mod stats;
pub mod telephone_event;

pub use handle::{Media, MediaConfig, MediaReader};
pub use leg::{AudioCodec, ENDPOINT_BIT, LegId, LegSpec, LegStats};
pub use relay::{MediaEvent, MediaEventKind, RelayConfig};
pub use shard::ShardCounters;
