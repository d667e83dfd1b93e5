//! The Redis control channel (docs/control-channel.md). Built so far: the
//! command envelope and its validation. The Redis connections, event
//! publishing, idempotency records and status keys are not built yet.

pub mod command;

pub use command::{
    COMING, Command, CommandError, CommandKind, ErrorCode, MAX_COMMAND_BYTES, parse,
};
