//! SIP: message layer, transports and transactions.

pub mod message;
