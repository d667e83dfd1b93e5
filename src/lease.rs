//! Account leases: with several replicas sharing accounts, each account is
//! registered by exactly one of them, the holder of its lease in Redis
//! (`SET NX PX` with renewal, and a fence token per acquisition). The
//! machine decides (sans-IO, [`machine`]); the shell runs its operations
//! against Redis and hands permits to the SIP core ([`shell`]).

use std::time::Instant;

use serde::Serialize;

pub mod machine;
pub mod shell;

pub use machine::{LeaseConfig, LeaseOp, LeaseOutput, LeaseReply, Leases, Observed};
pub use shell::{LeaseHandle, LeaseShellConfig};

/// What the SIP core may do with an account whose lease this instance
/// holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    /// The fence token of the acquisition; a permit with a lower token than
    /// one already seen is stale and ignored.
    pub token: u64,
    /// Registering (a REGISTER leaving) is allowed until then.
    pub until: Instant,
    /// A Contact the previous holder left registered, to remove first.
    pub retire: Option<String>,
}

/// An account's lease as this instance sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseRole {
    /// This instance holds it and registers the account.
    Active,
    /// Another instance holds it (or nobody yet).
    Standby,
    /// This instance is giving it up (unregistering, then releasing).
    Releasing,
}

/// One account's lease, in `/status` and the status key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseStatus {
    /// The account.
    pub account: String,
    /// This instance's role for it.
    pub role: LeaseRole,
    /// The instance holding it, when known.
    pub holder: Option<String>,
    /// The fence token, when this instance holds it.
    pub token: Option<u64>,
}

#[cfg(test)]
mod tests;
