//! SIP: the message layer, transactions and the endpoint (all sans-IO),
//! the transports and the thin driver that does their I/O.

pub mod auth;
pub mod dialog;
pub mod driver;
pub mod endpoint;
pub mod ids;
pub mod message;
pub mod target;
pub mod trace;
pub mod transaction;
pub mod transport;
