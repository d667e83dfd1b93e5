//! The Redis control channel (docs/control-channel.md): commands in,
//! results and events out, the status snapshot keys, and `dialerd ctl`.

pub mod channel;
pub mod command;
pub mod ctl;

pub use channel::{ChannelConfig, ChannelStatus, ControlChannel, spawn};
pub use command::{
    COMING, Command, CommandError, CommandKind, ErrorCode, MAX_COMMAND_BYTES, parse,
};
