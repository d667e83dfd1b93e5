//! Reading the command streams with a consumer group: this consumer's
//! pending entries after a restart, new entries, and entries a dead
//! consumer left pending (XAUTOCLAIM).

use std::time::{Duration, Instant};

use redis::Value as RedisValue;
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;

use super::STREAM_BLOCK;
use super::connect::describe;
use crate::control::machine::{GROUP, MachineConfig};

/// One command stream entry.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) stream: String,
    pub(super) id: String,
    pub(super) payload: Vec<u8>,
}

/// Reads the two command streams: this consumer's pending entries first
/// (a restart), then new ones, and now and then entries another consumer
/// left pending longer than `idle` (XAUTOCLAIM).
pub(super) async fn read_streams(
    mut conn: MultiplexedConnection,
    cfg: MachineConfig,
    idle: Duration,
    tx: mpsc::Sender<Result<Entry, String>>,
) {
    let streams = [cfg.shared_stream(), cfg.instance_stream()];
    let claim_every = (idle / 2).max(Duration::from_millis(500));
    let mut last_claim = Instant::now();
    let mut start = true;
    loop {
        let mut entries = Vec::new();
        if start || last_claim.elapsed() >= claim_every {
            for stream in &streams {
                let claimed: Result<RedisValue, _> = redis::cmd("XAUTOCLAIM")
                    .arg(stream)
                    .arg(GROUP)
                    .arg(&cfg.instance)
                    .arg(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX))
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(100)
                    .query_async(&mut conn)
                    .await;
                match claimed {
                    Ok(RedisValue::Array(parts)) => {
                        if let Some(list) = parts.get(1) {
                            entries.extend(stream_entries(stream, list));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(describe(e))).await;
                        return;
                    }
                }
            }
            last_claim = Instant::now();
        }
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(GROUP)
            .arg(&cfg.instance)
            .arg("COUNT")
            .arg(100);
        if !start {
            read.arg("BLOCK")
                .arg(u64::try_from(STREAM_BLOCK.as_millis()).unwrap_or(1000));
        }
        read.arg("STREAMS");
        for stream in &streams {
            read.arg(stream);
        }
        let from = if start { "0" } else { ">" };
        read.arg(from).arg(from);
        start = false;
        match read.query_async::<RedisValue>(&mut conn).await {
            Ok(v) => entries.extend(read_reply(&v)),
            Err(e) => {
                let _ = tx.send(Err(describe(e))).await;
                return;
            }
        }
        for entry in entries {
            if tx.send(Ok(entry)).await.is_err() {
                return;
            }
        }
    }
}

/// Entries of an XREADGROUP reply (a map, or pairs, of stream → entries).
pub(super) fn read_reply(v: &RedisValue) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut add = |name: &RedisValue, list: &RedisValue| {
        if let Some(stream) = string(name) {
            out.extend(stream_entries(&stream, list));
        }
    };
    match v {
        RedisValue::Map(pairs) => pairs.iter().for_each(|(k, l)| add(k, l)),
        RedisValue::Array(items) => {
            for item in items {
                if let RedisValue::Array(pair) = item
                    && let [name, list] = pair.as_slice()
                {
                    add(name, list);
                }
            }
        }
        _ => {}
    }
    out
}

/// `[[id, [field, value, ...]], ...]` → entries (a deleted entry's fields
/// are nil: its payload is empty and it is answered `bad_json`).
pub(super) fn stream_entries(stream: &str, list: &RedisValue) -> Vec<Entry> {
    let RedisValue::Array(items) = list else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let RedisValue::Array(parts) = item else {
                return None;
            };
            let id = string(parts.first()?)?;
            let mut payload = Vec::new();
            if let Some(RedisValue::Array(fields)) = parts.get(1) {
                for kv in fields.chunks_exact(2) {
                    if let [k, v] = kv
                        && string(k).as_deref() == Some("cmd")
                    {
                        payload = bytes(v).unwrap_or_default();
                    }
                }
            }
            Some(Entry {
                stream: stream.to_owned(),
                id,
                payload,
            })
        })
        .collect()
}

pub(super) fn bytes(v: &RedisValue) -> Option<Vec<u8>> {
    match v {
        RedisValue::BulkString(b) => Some(b.clone()),
        RedisValue::SimpleString(s) => Some(s.clone().into_bytes()),
        RedisValue::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        _ => None,
    }
}

pub(super) fn string(v: &RedisValue) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b).ok())
}

/// The time part of a stream entry id, Unix ms.
pub(super) fn entry_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}
