//! `dialerd ctl`: sends one command over Redis, waits for its result.

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
