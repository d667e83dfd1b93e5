//! Integration tests against real processes: the dialerd binary,
//! redis-server and SIPp, all on loopback.

// A panic in a test is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

mod agent;
mod amd;
mod amd_corpus;
mod call_control;
mod calls;
mod campaign;
mod check_config;
mod control;
mod daemon;
mod drain;
mod flood;
mod kamailio;
mod leases;
mod media;
mod peers;
mod redis_tls;
mod registration;
mod rfc4475;
mod sip;
mod srtp_calls;
mod srtp_interop;
mod tls;
