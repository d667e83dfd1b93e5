//! SIP: message layer, transports and transactions.

pub mod message;
pub mod target;
pub mod transaction;
