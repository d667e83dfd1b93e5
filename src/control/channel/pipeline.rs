//! The control core's operations as Redis commands, run as one ordered
//! pipeline, and Redis replies as the core reads them.

use std::future::Future;
use std::pin::Pin;

use redis::Value as RedisValue;
use redis::aio::MultiplexedConnection;

use super::connect::describe;
use super::streams::string;
use crate::control::machine::{GROUP, Op, RedisOp, Reply};

/// A Redis reply as the machine reads it.
pub(super) fn reply_of(v: RedisValue) -> Reply {
    match v {
        RedisValue::Nil => Reply::Nil,
        RedisValue::Int(i) => Reply::Int(i),
        RedisValue::Okay => Reply::Text("OK".into()),
        RedisValue::ServerError(e) => Reply::Error(e.to_string()),
        RedisValue::Map(pairs) => Reply::List(
            pairs
                .iter()
                .flat_map(|(k, v)| [string(k).unwrap_or_default(), string(v).unwrap_or_default()])
                .collect(),
        ),
        RedisValue::Array(items) | RedisValue::Set(items) => {
            Reply::List(items.iter().filter_map(string).collect())
        }
        other => string(&other).map_or_else(
            || Reply::Error(format!("an unexpected reply: {other:?}")),
            Reply::Text,
        ),
    }
}

/// Adds `op` to `pipe`; the number of commands it took.
pub(super) fn encode(op: &RedisOp, pipe: &mut redis::Pipeline) -> usize {
    match op {
        RedisOp::Publish { channel, payload } => {
            pipe.cmd("PUBLISH").arg(channel).arg(&**payload);
            1
        }
        RedisOp::XAdd {
            stream,
            maxlen,
            field,
            payload,
        } => {
            let cmd = pipe.cmd("XADD").arg(stream);
            if *maxlen > 0 {
                cmd.arg("MAXLEN").arg("~").arg(*maxlen);
            }
            cmd.arg("*").arg(*field).arg(&**payload);
            1
        }
        RedisOp::SetNx { key, value, ms } => {
            pipe.cmd("SET")
                .arg(key)
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg((*ms).max(1));
            1
        }
        RedisOp::Set { key, value, ms } => {
            pipe.cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg((*ms).max(1));
            1
        }
        RedisOp::Get { key } => {
            pipe.cmd("GET").arg(key);
            1
        }
        RedisOp::Del { key } => {
            pipe.cmd("DEL").arg(key);
            1
        }
        RedisOp::HSetNx { key, field, value } => {
            pipe.cmd("HSETNX").arg(key).arg(*field).arg(value);
            1
        }
        RedisOp::HSet { key, fields, ms } => {
            let cmd = pipe.cmd("HSET").arg(key);
            for (f, v) in fields {
                cmd.arg(*f).arg(v);
            }
            match ms {
                Some(ms) => {
                    pipe.cmd("PEXPIRE").arg(key).arg((*ms).max(1));
                    2
                }
                None => 1,
            }
        }
        RedisOp::HGetAll { key } => {
            pipe.cmd("HGETALL").arg(key);
            1
        }
        RedisOp::SAdd { key, member } => {
            pipe.cmd("SADD").arg(key).arg(member);
            1
        }
        RedisOp::SRem { key, member } => {
            pipe.cmd("SREM").arg(key).arg(member);
            1
        }
        RedisOp::SMembers { key } => {
            pipe.cmd("SMEMBERS").arg(key);
            1
        }
        RedisOp::XAck { stream, entry } => {
            pipe.cmd("XACK").arg(stream).arg(GROUP).arg(entry);
            1
        }
        RedisOp::DelIfInstance { key, instance } => {
            pipe.cmd("EVAL")
                .arg(DEL_IF_INSTANCE)
                .arg(1)
                .arg(key)
                .arg(instance);
            1
        }
    }
}

/// Deletes a status snapshot only if this instance wrote it.
const DEL_IF_INSTANCE: &str = "local v = redis.call('GET', KEYS[1]) \
if v then local ok, s = pcall(cjson.decode, v) \
if ok and s.instance and s.instance.id == ARGV[1] then return redis.call('DEL', KEYS[1]) end end \
return 0";

pub(super) type Flight =
    Pin<Box<dyn Future<Output = (Vec<Op>, Result<Vec<RedisValue>, String>)> + Send>>;
pub(super) type Ping = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Runs `batch` as one pipeline.
pub(super) fn fly(mut conn: MultiplexedConnection, batch: Vec<Op>) -> Flight {
    Box::pin(async move {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut firsts = Vec::with_capacity(batch.len());
        let mut n = 0;
        for op in &batch {
            firsts.push(n);
            n += encode(&op.op, &mut pipe);
        }
        let result = pipe
            .query_async::<Vec<RedisValue>>(&mut conn)
            .await
            .map_err(describe)
            .and_then(|values| {
                // A reply missing from the pipeline fails the batch (it is
                // sent again), never reads as a nil: a nil can mean "no
                // flag", an open gate.
                firsts
                    .iter()
                    .map(|&i| values.get(i).cloned())
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| "a short pipeline reply".to_owned())
            });
        (batch, result)
    })
}
