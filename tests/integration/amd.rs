//! Call progress analysis on real calls: dialerd places a call through a
//! SIPp PBX whose callee's media is the test's own UDP phone, which speaks
//! (espeak-ng speech, at 8 kHz by sox) or beeps into the call and listens
//! to what comes back; voice agents are the scripted test agent.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::agent::{Rig, TestAgent, agent_python_or_skip, count_toned, ended, seen_or_until};
use crate::media::{command_ok, local_port};
use crate::srtp_calls::write_tone_wav;
use crate::support::g711::ulaw_encode;
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
        let frame: Vec<i16> = (0..160)
            .map(|i| audio.get(k * 160 + i).copied().unwrap_or(0))
            .collect();
        let level = frame.iter().map(|&s| i32::from(s).abs()).sum::<i32>() / 160;
        let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0x0b, 0x0c, 0x0d];
        packet[2..4].copy_from_slice(&(k as u16).to_be_bytes());
        packet[4..8].copy_from_slice(&((k * 160) as u32).to_be_bytes());
        packet.extend(frame.iter().map(|&s| ulaw_encode(i32::from(s))));
        phone.send_to(&packet, to).unwrap();
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

fn amd_event(rig: &mut Rig, id: &str, results: &[&str]) -> Value {
    seen_or_until(&mut rig.events, Duration::from_secs(40), |e| {
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
    let verdict = amd_event(&mut rig, "amd1", &["human", "machine", "unknown"]);
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
    let capture = amd_event(&mut rig, "amd1", &["capture"]);
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
    let verdict = amd_event(&mut rig, "vm1", &["human", "machine", "unknown"]);
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
        &mut rig,
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
