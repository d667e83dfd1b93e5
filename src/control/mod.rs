//! The Redis control channel (docs/control-channel.md): commands in over
//! pub/sub and streams, results and events out, call records, the status
//! snapshot keys, and `dialerd ctl`. `machine` is the sans-IO core;
//! `channel` is its I/O shell.

pub mod channel;
pub mod command;
pub mod ctl;
pub mod machine;
pub mod record;

pub use channel::{ChannelConfig, ChannelStatus, ControlChannel, spawn};
pub use command::{Command, CommandError, CommandKind, ErrorCode, MAX_COMMAND_BYTES, parse};
