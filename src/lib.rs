//! dialerd: a SIP user-agent dialer daemon.
//!
//! The library holds every part of the daemon; `main.rs` is only the CLI.

pub mod agent;
pub mod base64;
pub mod call;
pub mod config;
pub mod control;
pub mod cpa;
pub mod daemon;
pub mod drain_client;
pub mod engine;
pub mod events;
pub mod health;
pub mod http;
pub mod lease;
pub mod lifecycle;
pub mod logging;
pub mod media;
pub mod metrics;
pub mod oneshot_call;
pub mod probe;
pub mod public_address;
pub mod registration;
pub mod sdp;
pub mod sip;
pub mod status;
