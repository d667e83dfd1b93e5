//! RFC 3261 §17 transactions (with RFC 6026), sans-IO.

mod client;
mod key;
mod layer;

pub use client::{ClientRequest, InviteParts};

pub use key::{Key, KeyRef, MAGIC_COOKIE, request_key, response_key};
pub use layer::{
    Event, Kind, Output, State, Timer, Timers, Transactions, TxnError, TxnId, response_target,
};

#[cfg(test)]
mod tests;
