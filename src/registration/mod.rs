//! Per-account SIP registration: the sans-IO machine and the task that
//! drives every account over the SIP stack.

pub mod driver;
pub mod machine;

pub use driver::{AccountStatus, Publish, Registrations, spawn};
pub use machine::{Backoff, Failure, RegConfig, RegOutput, RegState, Registration, refresh_margin};
