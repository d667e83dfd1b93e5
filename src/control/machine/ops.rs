//! The Redis operations the control core asks for, the replies it reads,
//! and which step of a command a reply continues.

use std::collections::HashMap;
use std::sync::Arc;

/// One Redis operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisOp {
    /// `PUBLISH channel payload`.
    Publish {
        /// Channel.
        channel: String,
        /// Payload.
        payload: Arc<str>,
    },
    /// `XADD stream MAXLEN ~ maxlen * field payload` (no trimming at 0).
    XAdd {
        /// Stream.
        stream: String,
        /// Approximate length kept.
        maxlen: u64,
        /// Field name.
        field: &'static str,
        /// Payload.
        payload: Arc<str>,
    },
    /// `SET key value NX PX ms` (reply: OK or nil).
    SetNx {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// TTL.
        ms: u64,
    },
    /// `SET key value PX ms`.
    Set {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// TTL.
        ms: u64,
    },
    /// `GET key`.
    Get {
        /// Key.
        key: String,
    },
    /// `DEL key`.
    Del {
        /// Key.
        key: String,
    },
    /// `HSETNX key field value` (reply: 1 or 0).
    HSetNx {
        /// Key.
        key: String,
        /// Field.
        field: &'static str,
        /// Value.
        value: String,
    },
    /// `HSET key f v ...`, then `PEXPIRE key ms` when a TTL is given.
    HSet {
        /// Key.
        key: String,
        /// Fields.
        fields: Vec<(&'static str, String)>,
        /// TTL.
        ms: Option<u64>,
    },
    /// `HGETALL key`.
    HGetAll {
        /// Key.
        key: String,
    },
    /// `SADD key member`.
    SAdd {
        /// Key.
        key: String,
        /// Member.
        member: String,
    },
    /// `SREM key member`.
    SRem {
        /// Key.
        key: String,
        /// Member.
        member: String,
    },
    /// `SMEMBERS key`.
    SMembers {
        /// Key.
        key: String,
    },
    /// Deletes a status snapshot key if `instance` wrote it (a script).
    DelIfInstance {
        /// Key.
        key: String,
        /// Instance id.
        instance: String,
    },
    /// `XACK stream group entry`.
    XAck {
        /// Stream.
        stream: String,
        /// Entry id.
        entry: String,
    },
}

/// A Redis reply, as the machine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Nil.
    Nil,
    /// A status or bulk string.
    Text(String),
    /// An integer.
    Int(i64),
    /// An array of strings (SMEMBERS) or a flat field/value list (HGETALL).
    List(Vec<String>),
    /// An error reply.
    Error(String),
}

/// What a reply continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Owner,
    Claim,
    Check,
    Gate,
    Destination,
    DestinationHolder,
    Record,
    RecordExisting,
    Recorded,
    RecordOwner,
    Status,
    Recover,
    RecoverRecord,
}

/// An operation and, when its reply matters, who waits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The operation.
    pub op: RedisOp,
    pub(super) wait: Option<(u64, Step)>,
    /// Whether it belongs to an event (the bounded event queue).
    pub(super) event: bool,
}

impl Op {
    pub(super) fn fire(op: RedisOp) -> Self {
        Self {
            op,
            wait: None,
            event: false,
        }
    }

    /// Whether its reply is needed.
    pub fn waits(&self) -> bool {
        self.wait.is_some()
    }
}

pub(super) fn is_event(op: &Op) -> bool {
    // Not by its kind: a result is published like an event but is queued
    // (and requeued) with the operations of its command.
    op.event
}

pub(super) fn is_stream_add(op: &Op) -> bool {
    matches!(op.op, RedisOp::XAdd { .. })
}

pub(super) fn text(reply: &Reply) -> Option<String> {
    match reply {
        Reply::Text(s) => Some(s.clone()),
        _ => None,
    }
}

pub(super) fn pairs(reply: &Reply) -> HashMap<String, String> {
    match reply {
        Reply::List(items) => items
            .chunks_exact(2)
            .filter_map(|kv| match kv {
                [k, v] => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect(),
        _ => HashMap::new(),
    }
}
