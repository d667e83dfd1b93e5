//! RFC 3261 §17 transactions (with RFC 6026), sans-IO.

mod key;
mod layer;

pub use key::{Key, KeyRef, MAGIC_COOKIE, request_key, response_key};
pub use layer::{
    Event, Kind, Output, State, Timer, Timers, Transactions, TxnError, TxnId, response_target,
};

#[cfg(test)]
mod tests;
