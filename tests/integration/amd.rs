//! Call progress analysis on real calls: dialerd places a call through a
//! SIPp PBX whose callee's media is the test's own UDP phone, which speaks
//! (espeak-ng speech, at 8 kHz by sox) or beeps into the call and listens
//! to what comes back; voice agents are the scripted test agent.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::agent::{Rig, TestAgent, agent_python_or_skip, count_toned, ended, seen_or_until};
use crate::media::{Events, command, command_ok, local_port};
use crate::srtp_calls::write_tone_wav;
use crate::support::scratch::Scratch;

/// `text` spoken by espeak-ng in `voice`, resampled to 8 kHz mono by sox;
/// `None` (the test is skipped) when the tools are missing.
fn speech(dir: &Scratch, text: &str, voice: &str) -> Option<Vec<i16>> {
    let raw = dir.path().join("espeak.wav");
    let wav = dir.path().join("speech.wav");
    let spoke = Command::new("espeak-ng")
        .args(["-v", voice, "-w"])
        .arg(&raw)
        .arg(text)
        .status()
        .is_ok_and(|s| s.success());
    let converted = spoke
        && Command::new("sox")
            .arg(&raw)
            .args(["-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer"])
            .arg(&wav)
            .status()
            .is_ok_and(|s| s.success());
    if !converted {
        eprintln!("skipped: espeak-ng and sox are needed (scripts/setup.sh installs them)");
        return None;
    }
    let bytes = std::fs::read(&wav).ok()?;
    let data = bytes.windows(4).position(|w| w == b"data")? + 8;
    Some(
        bytes[data..]
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect(),
    )
}

/// µ-law of a sample, by dialerd's encoder (the test's own searches all 256
/// codes: too slow to feed twenty calls in real time in a debug build).
fn mu(sample: i16) -> u8 {
    dialerd::media::g711::Law::Mu.encode(sample)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn silence(ms: usize) -> Vec<i16> {
    vec![0; ms * 8]
}

fn tone(hz: f64, ms: usize) -> Vec<i16> {
    (0..ms * 8)
        .map(|n| (8000.0 * (2.0 * std::f64::consts::PI * hz * n as f64 / 8000.0).sin()) as i16)
        .collect()
}

/// The samples of 20 ms frame `k` of `audio` (silence past its end).
fn frame_of(audio: &[i16], k: usize) -> impl Iterator<Item = i16> + '_ {
    (0..160).map(move |i| audio.get(k * 160 + i).copied().unwrap_or(0))
}

/// RTP packet `k` (PCMU, 20 ms, SSRC ending in `ssrc`) carrying frame `k`
/// of `audio`.
fn packet(k: usize, ssrc: u8, audio: &[i16]) -> Vec<u8> {
    let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, ssrc];
    packet[2..4].copy_from_slice(&(k as u16).to_be_bytes());
    packet[4..8].copy_from_slice(&((k * 160) as u32).to_be_bytes());
    packet.extend(frame_of(audio, k).map(mu));
    packet
}

/// What the phone did and heard.
struct Talk {
    /// When the end of its last voiced frame was sent.
    voice_end: Instant,
    /// The µ-law payloads it received, with their arrival times.
    heard: Vec<(Instant, Vec<u8>)>,
}

/// Sends `audio` from `phone` to `to` in 20 ms µ-law RTP packets, then
/// silence until `total` has passed, listening all along.
fn talk(phone: &UdpSocket, to: SocketAddr, audio: &[i16], total: Duration) -> Talk {
    phone
        .set_read_timeout(Some(Duration::from_millis(2)))
        .unwrap();
    let start = Instant::now();
    let mut heard = Vec::new();
    let mut voice_end = start;
    let mut buf = [0u8; 2048];
    let frames = (total.as_millis() / 20) as usize;
    for k in 0..frames {
        let level = frame_of(audio, k).map(|s| i32::from(s).abs()).sum::<i32>() / 160;
        phone.send_to(&packet(k, 0x0d, audio), to).unwrap();
        if level > 300 {
            voice_end = Instant::now() + Duration::from_millis(20);
        }
        let due = start + Duration::from_millis(20 * (k as u64 + 1));
        while Instant::now() < due {
            if let Ok((n, _)) = phone.recv_from(&mut buf)
                && n > 12
            {
                heard.push((Instant::now(), buf[12..n].to_vec()));
            }
        }
    }
    Talk { voice_end, heard }
}

/// When the phone first heard `hz` (two frames running), if it did.
fn first_heard(heard: &[(Instant, Vec<u8>)], hz: f64) -> Option<Instant> {
    heard.windows(2).find_map(|w| {
        let frames = [w[0].1.clone(), w[1].1.clone()];
        (count_toned(&frames, hz) == 2).then_some(w[0].0)
    })
}

/// The rig with a prompt directory holding a 1 kHz "safe-harbor
/// recording" and a 1.4 kHz "message", and a capture directory.
fn rig(dir: &Scratch, rtp_base: u16) -> Rig {
    write_tone_wav(&dir.path().join("harbor.wav"), 1000.0, 2.0);
    write_tone_wav(&dir.path().join("message.wav"), 1400.0, 1.5);
    let captures = dir.path().join("captures");
    std::fs::create_dir_all(&captures).unwrap();
    let extra = format!(
        "[media]\nprompt_dir = {:?}\namd_capture_dir = {:?}\n",
        dir.path(),
        captures
    );
    Rig::start(dir, &extra, rtp_base)
}

/// Places `id` with `args` added, waits for its answer; returns where its
/// media goes at dialerd.
fn place(rig: &mut Rig, id: &str, args: Value) -> SocketAddr {
    let mut all = json!({"account": "acct-a", "to": rig.to, "max_duration_secs": 120});
    for (k, v) in args.as_object().unwrap() {
        all[k] = v.clone();
    }
    command_ok(&mut rig.events, &rig.redis, id, "originate", all);
    seen_or_until(&mut rig.events, Duration::from_secs(15), |e| {
        e["type"] == "call.answered" && e["call_id"] == id
    });
    SocketAddr::from(([127, 0, 0, 1], local_port(&mut rig.events, id)))
}

fn amd_event(events: &mut Events, id: &str, results: &[&str]) -> Value {
    seen_or_until(events, Duration::from_secs(40), |e| {
        e["type"] == "call.amd" && e["call_id"] == id && results.iter().any(|r| e["result"] == *r)
    })
}

fn hang_up(rig: &mut Rig, id: &str) {
    command_ok(
        &mut rig.events,
        &rig.redis,
        &format!("h-{id}"),
        "hangup",
        json!({"call_id": id}),
    );
}

#[test]
fn amd_async_streams_the_answer_at_once_and_tells_a_person_within_a_second() {
    let Some(python) = agent_python_or_skip() else {
        return;
    };
    let dir = Scratch::new("amd-async");
    let Some(hello) = speech(&dir, "Hello?", "en-us") else {
        return;
    };
    let mut rig = rig(&dir, 24500);
    let agent = TestAgent::start(&python, "silent", &dir);
    let to = place(
        &mut rig,
        "amd1",
        json!({"amd": {"mode": "async", "capture_ms": 3000},
               "media": {"type": "websocket", "url": agent.url()}}),
    );
    let mut audio = silence(300);
    audio.extend(&hello);
    let sent = Instant::now();
    let t = talk(&rig.phone, to, &audio, Duration::from_secs(3));
    let verdict = amd_event(&mut rig.events, "amd1", &["human", "machine", "unknown"]);
    assert_eq!(verdict["result"], "human", "{verdict}");
    // Decided within a second of the person's last word (the greeting's
    // end as the phone sent it, in the same Unix clock as the event).
    let unix_now = unix_ms();
    let voice_end_unix = unix_now - t.voice_end.elapsed().as_millis() as u64;
    let decided = verdict["decided_ms"].as_u64().unwrap();
    eprintln!(
        "human decided {} ms after the greeting's end",
        decided as i64 - voice_end_unix as i64
    );
    assert!(
        decided <= voice_end_unix + 1000,
        "decided {} ms after the greeting's end",
        decided as i64 - voice_end_unix as i64
    );
    // The agent had the callee's audio from the first packets on, while
    // the verdict was pending.
    let media: Vec<Value> = agent
        .messages()
        .into_iter()
        .filter(|m| m["event"] == "media")
        .collect();
    let first = media.first().expect("media reached the agent");
    let sent_unix = unix_now - sent.elapsed().as_millis() as u64;
    assert!(
        first["_t"].as_u64().unwrap() <= sent_unix + 300,
        "the first audio reached the agent {} ms after the phone's first packet",
        first["_t"].as_i64().unwrap() - sent_unix as i64
    );
    let before_verdict = media
        .iter()
        .filter(|m| m["_t"].as_u64().unwrap() < decided)
        .count();
    assert!(
        before_verdict >= 25,
        "{before_verdict} frames before the verdict"
    );
    hang_up(&mut rig, "amd1");
    let end = ended(&mut rig.events, "amd1", Duration::from_secs(10));
    assert_eq!(end["disposition"], "human", "{end}");
    // The first 3 s of the callee's audio, captured for tuning.
    let capture = amd_event(&mut rig.events, "amd1", &["capture"]);
    let file = capture["file"].as_str().unwrap();
    let len = std::fs::metadata(file).unwrap().len();
    assert_eq!(len, 44 + 3 * 8000 * 2, "{capture}");
    assert!(t.heard.len() > 100, "the phone heard the call");
}

#[test]
fn amd_abandon_guard_plays_the_safe_harbor_recording_when_the_agent_is_late() {
    let Some(python) = agent_python_or_skip() else {
        return;
    };
    let dir = Scratch::new("amd-guard");
    let Some(hello) = speech(&dir, "Hello, this is Ann.", "en-us") else {
        return;
    };
    let mut rig = rig(&dir, 24600);
    let mut audio = silence(400);
    audio.extend(&hello);
    // An agent that takes 3 s to connect: the person hears the recording
    // within 2 s of the greeting's end and the call is dropped.
    let slow = TestAgent::start_slow(&python, "silent", &dir, 3000);
    let to = place(
        &mut rig,
        "late",
        json!({"amd": {"mode": "sync"}, "safe_harbor": "harbor.wav",
               "media": {"type": "websocket", "url": slow.url()}}),
    );
    let t = talk(&rig.phone, to, &audio, Duration::from_secs(7));
    let heard = first_heard(&t.heard, 1000.0).expect("the safe-harbor recording was heard");
    let after = heard.saturating_duration_since(t.voice_end);
    eprintln!("safe-harbor recording heard {after:?} after the greeting's end");
    assert!(
        after <= Duration::from_millis(2000),
        "recording heard {after:?} after the greeting's end"
    );
    let dropped = seen_or_until(&mut rig.events, Duration::from_secs(5), |e| {
        e["type"] == "call.dropped" && e["call_id"] == "late"
    });
    for field in ["answered_ms", "greeting_end_ms", "recording_ms"] {
        assert!(dropped[field].is_u64(), "{field}: {dropped}");
    }
    assert!(dropped["connected_ms"].is_null(), "{dropped}");
    let end = ended(&mut rig.events, "late", Duration::from_secs(10));
    assert_eq!(end["cause"], "dropped", "{end}");
    assert_eq!(end["disposition"], "dropped", "{end}");

    // One that connects in 1 s: nothing is played; the call goes on.
    let quick = TestAgent::start_slow(&python, "silent", &dir, 1000);
    let to = place(
        &mut rig,
        "quick",
        json!({"amd": {"mode": "sync"}, "safe_harbor": "harbor.wav",
               "media": {"type": "websocket", "url": quick.url()}}),
    );
    let t = talk(&rig.phone, to, &audio, Duration::from_secs(7));
    assert_eq!(
        first_heard(&t.heard, 1000.0),
        None,
        "a recording was played"
    );
    let started = seen_or_until(&mut rig.events, Duration::from_secs(5), |e| {
        e["call_id"] == "quick" && e["report"] == "agent_started"
    });
    assert_eq!(started["type"], "call.media");
    assert!(
        !rig.events
            .all
            .iter()
            .any(|e| e["type"] == "call.dropped" && e["call_id"] == "quick")
    );
    hang_up(&mut rig, "quick");
    let end = ended(&mut rig.events, "quick", Duration::from_secs(10));
    assert_eq!(end["disposition"], "human", "{end}");
}

#[test]
fn amd_a_voicemail_is_hung_up_on_or_gets_its_message_after_the_beep() {
    let dir = Scratch::new("amd-machine");
    let Some(greeting) = speech(
        &dir,
        "Hi, you have reached the voicemail of John Smith. I am not available to take your \
         call right now. Please leave your name, number and a short message after the tone.",
        "en-gb",
    ) else {
        return;
    };
    let mut rig = rig(&dir, 24700);
    let mut audio = silence(300);
    audio.extend(&greeting);
    let greeting_ms = audio.len() / 8;

    let to = place(&mut rig, "vm1", json!({"amd": {}}));
    let hung_up = std::thread::scope(|s| {
        let phone = &rig.phone;
        let talking = s.spawn(move || talk(phone, to, &audio, Duration::from_secs(5)));
        let end = ended(&mut rig.events, "vm1", Duration::from_secs(15));
        talking.join().unwrap();
        end
    });
    let verdict = amd_event(&mut rig.events, "vm1", &["human", "machine", "unknown"]);
    assert_eq!(verdict["result"], "machine", "{verdict}");
    assert_eq!(hung_up["cause"], "machine", "{hung_up}");
    assert_eq!(hung_up["disposition"], "machine", "{hung_up}");

    // With a message: it plays after the beep, then the call ends.
    let mut audio = silence(300);
    audio.extend(&greeting);
    audio.extend(silence(300));
    audio.extend(tone(850.0, 500));
    let beep_end = Duration::from_millis((greeting_ms + 300 + 500) as u64);
    let to = place(
        &mut rig,
        "vm2",
        json!({"amd": {"on_machine": "prompt", "machine_prompt": "message.wav"}}),
    );
    let t = talk(&rig.phone, to, &audio, beep_end + Duration::from_secs(4));
    let end_event = amd_event(
        &mut rig.events,
        "vm2",
        &[
            "machine_end_beep",
            "machine_end_silence",
            "machine_end_other",
        ],
    );
    assert_eq!(end_event["result"], "machine_end_beep", "{end_event}");
    let hz = end_event["beep_hz"].as_f64().unwrap();
    assert!((hz - 850.0).abs() < 20.0, "{end_event}");
    let heard = first_heard(&t.heard, 1400.0).expect("the message was played");
    let start = t.heard.first().map(|h| h.0).unwrap();
    assert!(
        heard.duration_since(start) + Duration::from_millis(100) >= beep_end,
        "the message began before the beep ended"
    );
    let end = ended(&mut rig.events, "vm2", Duration::from_secs(10));
    assert_eq!(end["cause"], "machine", "{end}");
    assert_eq!(end["disposition"], "machine", "{end}");
}

/// Calls played at once in [`amd_the_labelled_corpus_played_into_real_calls_meets_the_goals`].
const LIVE_BATCH: usize = 20;
/// How long each corpus file is played (every verdict comes within it).
const LIVE_PLAY: Duration = Duration::from_secs(7);

#[test]
fn amd_the_labelled_corpus_played_into_real_calls_meets_the_goals() {
    use crate::amd_corpus::{corpus, on_path, parse_labels, read_wav};
    if let Some(missing) = ["espeak-ng", "sox", "soxi"]
        .into_iter()
        .find(|p| !on_path(p))
    {
        eprintln!("skipped: {missing} is missing (scripts/setup.sh installs espeak-ng and sox)");
        return;
    }
    let (dir, _) = corpus();
    let labels = parse_labels(&std::fs::read_to_string(dir.join("labels.tsv")).unwrap());
    // The noisy variant of every person, machine, fax and SIT, with 3% of
    // its packets lost on the way.
    let cases: Vec<_> = labels
        .iter()
        .filter(|l| l.variant == "noise" && ["human", "machine", "fax", "sit"].contains(&&*l.class))
        .collect();
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let scratch = Scratch::new("amd-live-corpus");
    let mut rig = Rig::start(&scratch, "[limits]\ncalls_per_second = 1000.0\n", 24800);
    let mut verdicts: Vec<(String, String, Option<i64>)> = Vec::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for (b, batch) in cases.chunks(LIVE_BATCH).enumerate() {
        let ids: Vec<String> = batch.iter().map(|l| format!("live-{}", l.name)).collect();
        for id in &ids {
            command(
                &rig.redis,
                &format!("o-{id}"),
                "originate",
                json!({"account": "acct-a", "to": rig.to, "call_id": id, "amd": {}}),
            );
        }
        // Each call is played from its answer on, all from one sender
        // thread, 20 ms apart, a packet in 33 lost.
        let (tx, rx) = std::sync::mpsc::channel::<(SocketAddr, Vec<i16>, u64)>();
        let Rig { phone, events, .. } = &mut rig;
        let started = std::thread::scope(|s| {
            let phone = &*phone;
            let sender = s.spawn(move || play_all(phone, rx));
            for (id, label) in ids.iter().zip(batch.iter()) {
                seen_or_until(events, Duration::from_secs(30), |e| {
                    e["type"] == "call.answered" && e["call_id"] == *id
                });
                let to = SocketAddr::from(([127, 0, 0, 1], local_port(events, id)));
                let audio = read_wav(&dir.join(format!("{}.wav", label.name)));
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                tx.send((to, audio, state)).unwrap();
            }
            drop(tx);
            for id in &ids {
                amd_event(events, id, &["human", "machine", "unknown", "fax", "sit"]);
            }
            sender.join().unwrap()
        });
        for ((id, label), start_unix) in ids.iter().zip(batch).zip(started) {
            let v = amd_event(
                &mut rig.events,
                id,
                &["human", "machine", "unknown", "fax", "sit"],
            );
            let result = v["result"].as_str().unwrap().to_owned();

            let latency = label
                .greeting_end_ms
                .filter(|_| result == "human")
                .map(|end| {
                    v["decided_ms"].as_i64().unwrap() - (start_unix + u64::from(end)) as i64
                });
            verdicts.push((label.class.clone(), result, latency));
            let up = !rig
                .events
                .all
                .iter()
                .any(|e| e["type"] == "call.ended" && e["call_id"] == *id);
            if up {
                command(
                    &rig.redis,
                    &format!("h-{id}"),
                    "hangup",
                    json!({"call_id": id}),
                );
            }
        }
        for id in &ids {
            let end = ended(&mut rig.events, id, Duration::from_secs(15));
            assert!(end["disposition"].is_string(), "{end}");
        }
        eprintln!("batch {b}: {} calls", ids.len());
    }
    report_live(&verdicts);
}

/// Plays each stream that comes on `streams` (where, what, a seed for its
/// losses) from `phone` for [`LIVE_PLAY`] from when it comes, 20 ms apart,
/// skipping a packet in 33; returns when each began (Unix ms), in order.
fn play_all(
    phone: &UdpSocket,
    streams: std::sync::mpsc::Receiver<(SocketAddr, Vec<i16>, u64)>,
) -> Vec<u64> {
    struct Playing {
        to: SocketAddr,
        audio: Vec<i16>,
        seed: u64,
        sent: usize,
        ssrc: u8,
    }
    let frames = (LIVE_PLAY.as_millis() / 20) as usize;
    let mut playing: Vec<Playing> = Vec::new();
    let mut began = Vec::new();
    let mut open = true;
    let start = Instant::now();
    for tick in 0u64.. {
        while open {
            match streams.try_recv() {
                Ok((to, audio, seed)) => {
                    began.push(unix_ms());
                    let ssrc = playing.len() as u8;
                    playing.push(Playing {
                        to,
                        audio,
                        seed,
                        sent: 0,
                        ssrc,
                    });
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => open = false,
            }
        }
        for p in playing.iter_mut().filter(|p| p.sent < frames) {
            let k = p.sent;
            p.sent += 1;
            p.seed ^= p.seed << 13;
            p.seed ^= p.seed >> 7;
            p.seed ^= p.seed << 17;
            if p.seed % 1000 < 30 {
                continue;
            }
            let _ = phone.send_to(&packet(k, p.ssrc, &p.audio), p.to);
        }
        if !open && playing.iter().all(|p| p.sent >= frames) {
            break;
        }

        let due = start + Duration::from_millis(20 * (tick + 1));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    began
}

/// Prints the live run's confusion matrix and figures; asserts the goals.
fn report_live(verdicts: &[(String, String, Option<i64>)]) {
    let count = |truth: &str, verdict: &str| {
        verdicts
            .iter()
            .filter(|(t, v, _)| t == truth && v == verdict)
            .count()
    };
    let total = |truth: &str| verdicts.iter().filter(|(t, _, _)| t == truth).count();
    let mut table = String::from(
        "| truth \\ verdict | human | machine | fax | sit | unknown |\n|---|---|---|---|---|---|\n",
    );
    for truth in ["human", "machine", "fax", "sit"] {
        table.push_str(&format!("| {truth} |"));
        for verdict in ["human", "machine", "fax", "sit", "unknown"] {
            table.push_str(&format!(" {} |", count(truth, verdict)));
        }
        table.push('\n');
    }
    let people = total("human");
    let correct = count("human", "human") + count("machine", "machine");
    let accuracy = correct as f64 / (people + total("machine")) as f64;
    let false_machine = count("human", "machine") as f64 / people as f64;
    let mut latencies: Vec<i64> = verdicts.iter().filter_map(|v| v.2).collect();
    latencies.sort_unstable();
    let at = |p: f64| {
        let last = latencies.len().saturating_sub(1);
        latencies
            .get((last as f64 * p).round() as usize)
            .copied()
            .unwrap_or(i64::MAX)
    };
    eprintln!(
        "live corpus, {} calls:\n{table}\nhuman+machine correct {:.1}%, people called machine {:.1}%, \
         person's verdict after the greeting p50 {} ms, p95 {} ms",
        verdicts.len(),
        accuracy * 100.0,
        false_machine * 100.0,
        at(0.5),
        at(0.95)
    );
    assert!(accuracy >= 0.95, "accuracy {accuracy}\n{table}");
    assert!(
        false_machine <= 0.02,
        "people called machine {false_machine}\n{table}"
    );
    assert!(at(0.95) <= 1000, "p95 {} ms", at(0.95));
}

#[test]
fn amd_a_sit_in_early_media_is_reported_and_makes_the_call_an_invalid_number() {
    let dir = Scratch::new("amd-early-sit");
    let mut rig = Rig::start_on("media_pbx_sit.xml", &dir, "", 24900);
    let to = rig.to.clone();
    command_ok(
        &mut rig.events,
        &rig.redis,
        "sit1",
        "originate",
        json!({"account": "acct-a", "to": to, "call_id": "sit1", "amd": {}}),
    );
    seen_or_until(&mut rig.events, Duration::from_secs(15), |e| {
        e["type"] == "call.early_media" && e["call_id"] == "sit1"
    });
    // Where the call's early media goes: the live call's media port.
    command(&rig.redis, "calls1", "calls", json!({}));
    let calls = seen_or_until(&mut rig.events, Duration::from_secs(10), |e| {
        e["type"] == "command.result" && e["id"] == "calls1"
    });
    let port = calls["result"]["calls"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "sit1"))
        .and_then(|c| c["media_port"].as_u64())
        .unwrap_or_else(|| panic!("no media port for sit1: {calls}"));
    let to = SocketAddr::from(([127, 0, 0, 1], port as u16));
    // The carrier's announcement: the three SIT segments, then a voice.
    let mut audio = silence(300);
    audio.extend(tone(913.8, 274));
    audio.extend(tone(1370.6, 274));
    audio.extend(tone(1776.7, 380));
    audio.extend(silence(2000));
    talk(&rig.phone, to, &audio, Duration::from_millis(3300));
    let tone_event = amd_event(&mut rig.events, "sit1", &["early_tone"]);
    assert_eq!(tone_event["tone"], "sit", "{tone_event}");
    let end = ended(&mut rig.events, "sit1", Duration::from_secs(10));
    assert_eq!(end["code"], 404, "{end}");
    assert_eq!(end["disposition"], "invalid_number", "{end}");
    assert!(
        !rig.events
            .all
            .iter()
            .any(|e| e["call_id"] == "sit1" && e["type"] == "call.answered"),
        "never answered"
    );
}
