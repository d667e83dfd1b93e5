//! Arbitrary bytes as a control command, from every source, into the
//! control core, whose Redis operations get replies chosen by the same
//! bytes and whose jobs complete: parsing and the machine must never
//! panic, and every queue drains.

#![no_main]

use dialerd::control::machine::{Machine, MachineConfig, Reply, Source};
use dialerd::control::{CommandError, ErrorCode};
use libfuzzer_sys::fuzz_target;

fn config() -> MachineConfig {
    MachineConfig {
        prefix: "dialer".into(),
        instance: "a".into(),
        boot: "b00t".into(),
        dedup_window_ms: 86_400_000,
        lease_ms: 30_000,
        stream_max_age_ms: 60_000,
        destination_window_ms: 60_000,
        record_ttl_ms: 86_400_000,
        max_duration_ms: 14_400_000,
        events_maxlen: 1000,
        event_buffer: 64,
        accounts: ["acct".to_owned()].into_iter().collect(),
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = dialerd::control::parse(data, "dialer");
    let mut m = Machine::new(config());
    m.connected(1_000, 0, 0);
    let sources = [
        Source::Broadcast,
        Source::Instance,
        Source::Stream {
            stream: "dialer:cmdq".into(),
            entry: "1-0".into(),
            shared: true,
        },
        Source::Stream {
            stream: "dialer:a:cmdq".into(),
            entry: "1-1".into(),
            shared: false,
        },
    ];
    for source in sources {
        m.receive(2_000, source, data, Some(1_500));
    }
    let pick = |i: usize| data.get(i % data.len().max(1)).copied().unwrap_or(0);
    let mut i = 0;
    for _ in 0..32 {
        let batch = m.take_batch(64);
        if batch.is_empty() {
            break;
        }
        for op in &batch {
            i += 1;
            let reply = match pick(i) % 5 {
                0 => Reply::Nil,
                1 => Reply::Text("OK".into()),
                2 => Reply::Int(i64::from(pick(i + 1) % 2)),
                3 => Reply::List(vec![
                    "instance".into(),
                    "b".into(),
                    "state".into(),
                    "ended".into(),
                ]),
                _ => Reply::Text(String::from_utf8_lossy(data).into_owned()),
            };
            m.on_reply(3_000, op, reply);
        }
        while let Some(job) = m.poll_job() {
            let failed = CommandError::new(ErrorCode::Capacity, "fuzz");
            m.completed(3_000, job.token, Err(failed));
        }
    }
});
