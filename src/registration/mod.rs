//! Per-account SIP registration: the sans-IO machine, and the accounts
//! that run one each as owners on the endpoint inside the SIP core task.

pub mod accounts;
pub mod machine;

pub use accounts::{AccountRoute, AccountStatus, Accounts, Lookup};
pub use machine::{Backoff, Failure, RegConfig, RegOutput, RegState, Registration, refresh_margin};

/// The handle the control channel registers and unregisters accounts with.
pub type Registrations = crate::engine::SipCore;
