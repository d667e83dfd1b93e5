//! Integration tests against real processes: the dialerd binary,
//! redis-server and SIPp, all on loopback.

mod support;

mod check_config;
mod control;
mod daemon;
mod flood;
mod peers;
mod registration;
mod rfc4475;
mod sip;
mod tls;
