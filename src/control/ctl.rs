//! `dialerd ctl`: sends one command over Redis and waits for its result,
//! or follows the events stream.

use std::time::Duration;

use redis::{PushKind, Value as RedisValue};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::channel::connect_one;
use crate::config::Settings;

/// Why `ctl` got no result.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Redis could not be reached.
    #[error("Redis: {0}")]
    Redis(String),
    /// No result in time.
    #[error("no result within {0:?} (is instance {1:?} running and connected?)")]
    Timeout(Duration, String),
}

/// Longest a blocking read of the events stream waits.
const FOLLOW_BLOCK_MS: u64 = 1000;

/// Prints every entry of `<p>:events:stream` after `after` (default: from
/// now) as one JSON line with its `stream_id`, for ever; a lost connection
/// is opened again and reading resumes after the last entry printed.
pub async fn follow(
    settings: &Settings,
    after: Option<&str>,
    mut print: impl FnMut(&str),
) -> Result<(), CtlError> {
    let stream = format!("{}:events:stream", settings.redis.prefix);
    let mut last = after.unwrap_or("$").to_owned();
    let timeout = Duration::from_secs(5) + Duration::from_millis(FOLLOW_BLOCK_MS);
    let mut conn = connect_one(&settings.redis, timeout, None)
        .await
        .map_err(CtlError::Redis)?;
    loop {
        let read = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(500)
            .arg("BLOCK")
            .arg(FOLLOW_BLOCK_MS)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&last)
            .query_async::<RedisValue>(&mut conn)
            .await;
        match read {
            Ok(v) => {
                for (id, event) in entries(&v) {
                    let mut value: Value = serde_json::from_str(&event).unwrap_or(Value::Null);
                    if let Value::Object(m) = &mut value {
                        m.insert("stream_id".into(), Value::String(id.clone()));
                    }
                    print(&value.to_string());
                    last = id;
                }
            }
            Err(e) => {
                eprintln!("events: {e}; reconnecting after {last}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                match connect_one(&settings.redis, timeout, None).await {
                    Ok(c) => conn = c,
                    Err(e) => eprintln!("events: {e}"),
                }
            }
        }
    }
}

/// `(id, event)` of an XREAD reply.
fn entries(v: &RedisValue) -> Vec<(String, String)> {
    let text = |v: &RedisValue| match v {
        RedisValue::BulkString(b) => String::from_utf8(b.clone()).ok(),
        RedisValue::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let lists: Vec<&RedisValue> = match v {
        RedisValue::Map(pairs) => pairs.iter().map(|(_, l)| l).collect(),
        RedisValue::Array(items) => items
            .iter()
            .filter_map(|i| match i {
                RedisValue::Array(p) => p.get(1),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for list in lists {
        let RedisValue::Array(items) = list else {
            continue;
        };
        for item in items {
            let RedisValue::Array(parts) = item else {
                continue;
            };
            let (Some(id), Some(RedisValue::Array(fields))) =
                (parts.first().and_then(text), parts.get(1))
            else {
                continue;
            };
            for kv in fields.chunks_exact(2) {
                if let [k, v] = kv
                    && text(k).as_deref() == Some("event")
                    && let Some(e) = text(v)
                {
                    out.push((id.clone(), e));
                }
            }
        }
    }
    out
}

/// Sends `{type, args}` to `instance` (or to every instance with `None`)
/// and returns the first `command.result`.
pub async fn send(
    settings: &Settings,
    instance: Option<&str>,
    kind: &str,
    args: Value,
    timeout: Duration,
) -> Result<Value, CtlError> {
    let redis = &settings.redis;
    let prefix = &redis.prefix;
    let id = format!("ctl-{}", crate::sip::ids::token());
    let reply_to = format!("{prefix}:reply:{id}");
    let (tx, mut pushes) = mpsc::unbounded_channel();
    let mut sub = connect_one(redis, timeout, Some(tx))
        .await
        .map_err(CtlError::Redis)?;
    sub.subscribe(&reply_to)
        .await
        .map_err(|e| CtlError::Redis(e.to_string()))?;
    let channel = match instance {
        Some(i) => format!("{prefix}:{i}:cmd"),
        None => format!("{prefix}:cmd"),
    };
    let command = json!({"v": 1, "id": id, "type": kind, "reply_to": reply_to, "args": args});
    redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(command.to_string())
        .query_async::<i64>(&mut sub)
        .await
        .map_err(|e| CtlError::Redis(e.to_string()))?;
    let wait = async {
        while let Some(p) = pushes.recv().await {
            if p.kind != PushKind::Message {
                continue;
            }
            if let Some(RedisValue::BulkString(b)) = p.data.get(1)
                && let Ok(v) = serde_json::from_slice::<Value>(b)
            {
                return Some(v);
            }
        }
        None
    };
    let target = instance.unwrap_or("any").to_owned();
    match tokio::time::timeout(timeout, wait).await {
        Ok(Some(v)) => Ok(v),
        _ => Err(CtlError::Timeout(timeout, target)),
    }
}
