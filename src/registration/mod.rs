//! Per-account SIP registration: the sans-IO machine and the task that
//! drives every account over the SIP stack.

pub mod machine;

pub use machine::{Backoff, Failure, RegConfig, RegOutput, RegState, Registration, refresh_margin};
