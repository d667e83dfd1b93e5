//! SIP: message layer, transports, transactions, and the stack that runs
//! them.

pub mod auth;
pub mod endpoint;
pub mod ids;
pub mod message;
pub mod stack;
pub mod target;
pub mod transaction;
pub mod transport;
