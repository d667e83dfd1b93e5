//! dialerd: a SIP user-agent dialer daemon.
//!
//! The library holds every part of the daemon; `main.rs` is only the CLI.

pub mod config;
pub mod control;
pub mod daemon;
pub mod engine;
pub mod events;
pub mod health;
pub mod http;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod probe;
pub mod sdp;
pub mod public_address;
pub mod registration;
pub mod sip;
pub mod status;
