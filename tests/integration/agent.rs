//! The AI agent media bridge against real peers: a call placed through a
//! SIPp PBX whose audio dialerd streams to a Pipecat bot (its own
//! FastAPIWebsocketTransport and TwilioFrameSerializer, unchanged, an echo
//! pipeline with no cloud services), and agents that fail.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::media::{Events, command_ok, dialerd, local_port, media_pbx};
use crate::support::g711::{ulaw_decode, ulaw_encode};
use crate::support::redis::RedisServer;
use crate::support::repo_root;
use crate::support::scratch::Scratch;

/// The Python of the agent tools' virtualenv (scripts/setup.sh makes it).
fn agent_python() -> Option<PathBuf> {
    let venv = std::env::var_os("DIALERD_AGENT_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(cache.join("dialerd-agent"))
        })?;
    let python = venv.join("bin/python");
    python.exists().then_some(python)
}

/// [`agent_python`], or `None` after saying the test is skipped.
pub(crate) fn agent_python_or_skip() -> Option<PathBuf> {
    let python = agent_python();
    if python.is_none() {
        eprintln!(
            "skipped: the agent tools' virtualenv (pipecat-ai, websockets) is missing and \
             scripts/setup.sh could not install it"
        );
    }
    python
}

/// A running Pipecat bot and the port it listens on.
struct Bot {
    child: Child,
    port: u16,
}

impl Bot {
    fn start(python: &PathBuf, extra: &[&str]) -> Bot {
        let mut child = Command::new(python)
            .arg(repo_root().join("tests/agent/pipecat_bot.py"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--sample-rate",
                "8000",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the Pipecat bot");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let port = lines
            .find_map(|l| l.ok()?.strip_prefix("listening ")?.trim().parse().ok())
            .expect("the bot says where it listens");
        // Keep draining its stdout so it never blocks.
        std::thread::spawn(move || for _ in lines {});
        Bot { child, port }
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 20 ms of a 1 kHz tone at about -10 dBm0, µ-law, starting at sample `n`.
fn tone_frame(n: usize) -> Vec<u8> {
    (0..160)
        .map(|i| {
            let t = (n + i) as f64 / 8000.0;
            ulaw_encode((8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i32)
        })
        .collect()
}

/// The power of `samples` at `hz` relative to their whole power (0..1).
fn share_at(samples: &[i32], hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / 8000.0;
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s = f64::from(x) + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let at_tone = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
    let total: f64 = samples.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    if total == 0.0 {
        0.0
    } else {
        2.0 * at_tone / (samples.len() as f64 * total)
    }
}

/// How many of `frames` (µ-law payloads) carry the tone of `hz`.
pub(crate) fn count_toned(frames: &[Vec<u8>], hz: f64) -> usize {
    frames
        .iter()
        .filter(|p| share_at(&p.iter().map(|&b| ulaw_decode(b)).collect::<Vec<_>>(), hz) > 0.8)
        .count()
}

/// A dialerd (instance `a`, account `acct-a`, inbound calls ringing, RTP
/// ports from `rtp_base`) registered with a SIPp PBX whose callee answers
/// with PCMU at `phone`, the test's own UDP socket.
pub(crate) struct Rig {
    pub(crate) redis: RedisServer,
    pub(crate) phone: UdpSocket,
    pub(crate) pbx: crate::support::sipp::SippRun,
    pub(crate) d: crate::support::daemon::Daemon,
    pub(crate) events: Events,
    /// A URI the PBX answers.
    pub(crate) to: String,
}

impl Rig {
    pub(crate) fn start(dir: &Scratch, extra_toml: &str, rtp_base: u16) -> Rig {
        Self::start_on("media_pbx.xml", dir, extra_toml, rtp_base)
    }

    /// [`Rig::start`] with the PBX running scenario `file`.
    pub(crate) fn start_on(file: &str, dir: &Scratch, extra_toml: &str, rtp_base: u16) -> Rig {
        let redis = RedisServer::start(&[]);
        let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
        let pbx = crate::media::media_pbx_of(file, phone.local_addr().unwrap().port(), "0", "PCMU");
        let (d, _sip) = dialerd(&redis, &pbx, "ring", extra_toml, rtp_base, dir);
        let events = Events::new(&redis);
        let to = format!("sip:bob@{}", pbx.local_addr());
        Rig {
            redis,
            phone,
            pbx,
            d,
            events,
            to,
        }
    }
}

/// Plays `seconds` of tone at 20 ms from `phone` to `to`; returns the µ-law
/// payloads that came back meanwhile.
fn play_and_listen(phone: &UdpSocket, to: std::net::SocketAddr, seconds: u64) -> Vec<Vec<u8>> {
    phone
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let start = Instant::now();
    let mut back = Vec::new();
    let mut buf = [0u8; 2048];
    let frames = (seconds * 50) as usize;
    for k in 0..frames {
        let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
        packet[2..4].copy_from_slice(&(k as u16).to_be_bytes());
        packet[4..8].copy_from_slice(&((k * 160) as u32).to_be_bytes());
        packet.extend(tone_frame(k * 160));
        phone.send_to(&packet, to).unwrap();
        let due = start + Duration::from_millis(20 * (k as u64 + 1));
        while Instant::now() < due {
            if let Ok((n, _)) = phone.recv_from(&mut buf)
                && n > 12
            {
                back.push(buf[12..n].to_vec());
            }
        }
    }
    back
}

/// Waits for `call`'s `call.ended`; returns it.
pub(crate) fn ended(events: &mut Events, call: &str, within: Duration) -> Value {
    seen_or_until(events, within, |e| {
        e["type"] == "call.ended" && e["call_id"] == call
    })
}

/// The first event matching `matches`, whether it was read already (while
/// waiting for another) or comes `within`.
pub(crate) fn seen_or_until(
    events: &mut Events,
    within: Duration,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    match events.all.iter().find(|e| matches(e)) {
        Some(e) => e.clone(),
        None => events.until(within, matches),
    }
}

#[test]
fn agent_pipecat_echoes_a_real_calls_audio_and_its_end_of_call_hangs_up() {
    let Some(python) = agent_python_or_skip() else {
        return;
    };
    let bot = Bot::start(&python, &["--end-after", "6", "--end-silence-secs", "0"]);
    let dir = Scratch::new("agent-pipecat");
    let Rig {
        redis,
        phone,
        d,
        mut events,
        to,
        pbx: _pbx,
    } = Rig::start(&dir, "", 23600);
    let url = format!("ws://127.0.0.1:{}/ws", bot.port);
    command_ok(
        &mut events,
        &redis,
        "agent-1",
        "originate",
        json!({"account": "acct-a", "to": to, "max_duration_secs": 60,
               "media": {"type": "websocket", "url": url,
                         "custom_parameters": {"campaign": "spring"}}}),
    );
    seen_or_until(&mut events, Duration::from_secs(15), |e| {
        e["type"] == "call.answered" && e["call_id"] == "agent-1"
    });
    let started = media_report(
        &mut events,
        "agent-1",
        "agent_started",
        Duration::from_secs(15),
    );
    assert!(
        started["stream_sid"]
            .as_str()
            .is_some_and(|s| s.len() == 34 && s.starts_with("MZ")),
        "{started}"
    );
    let port = local_port(&mut events, "agent-1");
    let back = play_and_listen(&phone, ([127, 0, 0, 1], port).into(), 3);
    let toned = count_toned(&back, 1000.0);
    assert!(
        back.len() >= 100,
        "a frame every 20 ms came back: {} in 3 s\n{}",
        back.len(),
        d.log()
    );
    assert!(
        toned >= 75,
        "the bot's echo of the tone reached the phone: {toned} of {} frames carry it\n{}",
        back.len(),
        d.log()
    );
    // The bot ends the call the Pipecat way (EndFrame closes its socket).
    let end = ended(&mut events, "agent-1", Duration::from_secs(20));
    assert_eq!(end["cause"], "agent_hangup", "{end}\n{}", d.log());
    drop(bot);
}

#[test]
fn agent_refused_ends_the_call_by_default_and_continue_keeps_it_on_silence() {
    let dir = Scratch::new("agent-refused");
    crate::srtp_calls::write_tone_wav(&dir.path().join("sorry.wav"), 1000.0, 1.0);
    let media = format!("[media]\nprompt_dir = {:?}\n", dir.path());
    let Rig {
        redis,
        phone,
        d,
        mut events,
        to,
        pbx: _pbx,
    } = Rig::start(&dir, &media, 23700);
    // Nobody listens on this port.
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://127.0.0.1:{}/ws", closed.local_addr().unwrap().port());
    // Answered first, then streamed (the `stream` command).
    let answered = |events: &mut Events, id: &str| {
        seen_or_until(events, Duration::from_secs(15), |e| {
            e["type"] == "call.answered" && e["call_id"] == id
        });
    };
    command_ok(
        &mut events,
        &redis,
        "agent-2",
        "originate",
        json!({"account": "acct-a", "to": to, "max_duration_secs": 60}),
    );
    answered(&mut events, "agent-2");
    command_ok(
        &mut events,
        &redis,
        "stream-2",
        "stream",
        json!({"call_id": "agent-2", "media": {"type": "websocket", "url": url}}),
    );
    let failed = media_report(
        &mut events,
        "agent-2",
        "agent_ended",
        Duration::from_secs(15),
    );
    assert_eq!(failed["reason"], "connect_failed", "{failed}");
    let end = ended(&mut events, "agent-2", Duration::from_secs(15));
    assert_eq!(end["cause"], "agent_failed", "{end}\n{}", d.log());

    command_ok(
        &mut events,
        &redis,
        "agent-3",
        "originate",
        json!({"account": "acct-a", "to": to, "max_duration_secs": 60}),
    );
    answered(&mut events, "agent-3");
    command_ok(
        &mut events,
        &redis,
        "stream-3",
        "stream",
        json!({"call_id": "agent-3",
               "media": {"type": "websocket", "url": url, "on_end": "continue"}}),
    );
    media_report(
        &mut events,
        "agent-3",
        "agent_ended",
        Duration::from_secs(15),
    );
    let port = local_port(&mut events, "agent-3");
    let back = play_and_listen(&phone, ([127, 0, 0, 1], port).into(), 2);
    assert!(
        back.len() >= 60,
        "the phone stays fed with silence: {} frames in 2 s",
        back.len()
    );
    assert!(
        back.iter().flatten().all(|&b| ulaw_decode(b).abs() < 64),
        "silence"
    );
    command_ok(
        &mut events,
        &redis,
        "hu-3",
        "hangup",
        json!({"call_id": "agent-3"}),
    );
    let end = ended(&mut events, "agent-3", Duration::from_secs(15));
    assert_ne!(end["cause"], "agent_failed", "{end}");

    // continue with a prompt: the caller hears it instead of silence.
    command_ok(
        &mut events,
        &redis,
        "agent-4",
        "originate",
        json!({"account": "acct-a", "to": to, "max_duration_secs": 60}),
    );
    answered(&mut events, "agent-4");
    command_ok(
        &mut events,
        &redis,
        "stream-4",
        "stream",
        json!({"call_id": "agent-4",
               "media": {"type": "websocket", "url": url, "on_end": "continue",
                         "on_end_prompt": "sorry.wav"}}),
    );
    let port = local_port(&mut events, "agent-4");
    let back = play_and_listen(&phone, ([127, 0, 0, 1], port).into(), 2);
    let toned = count_toned(&back, 1000.0);
    assert!(toned >= 40, "the 1 s prompt played: {toned} tone frames");
    command_ok(
        &mut events,
        &redis,
        "hu-4",
        "hangup",
        json!({"call_id": "agent-4"}),
    );
    ended(&mut events, "agent-4", Duration::from_secs(15));
    assert!(
        crate::support::http::get(d.http(), "/healthz")
            .unwrap()
            .status
            == 200,
        "dialerd stays healthy"
    );
}

/// A SIPp caller scenario offering PCMU and telephone-event that, once
/// answered, plays `tone` (a pcap), then the digits 1 and 2 (RFC 4733),
/// waits `hold_ms` and hangs up.
fn agent_caller_scenario(
    dir: &Scratch,
    tone: &std::path::Path,
    tone_ms: u64,
    hold_ms: u64,
) -> PathBuf {
    let xml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="agent_caller">
  <send retrans="500"><![CDATA[
      INVITE sip:[callee]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "SIPp caller" <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[callee]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:caller@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=sipp 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [rtp_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-16
    ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rrs="true"/>
  <send><![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "SIPp caller" <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]></send>
  <nop><action><exec play_pcap_audio="{tone}"/></action></nop>
  <pause milliseconds="{tone_ms}"/>
  <nop><action><exec play_pcap_audio="/usr/share/sip-tester/dtmf_2833_1.pcap"/></action></nop>
  <pause milliseconds="600"/>
  <nop><action><exec play_pcap_audio="/usr/share/sip-tester/dtmf_2833_2.pcap"/></action></nop>
  <pause milliseconds="{hold_ms}"/>
  <send retrans="500"><![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "SIPp caller" <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0
    ]]></send>
  <recv response="200"/>
</scenario>
"#,
        tone = tone.display(),
    );
    dir.write("agent_caller.xml", &xml)
}

/// The Python test agent (`tests/agent/test_agent.py`) in one `mode`,
/// logging every message it receives (one JSON line each, `_t` its arrival
/// in Unix ms) and checking them against the Twilio schema.
pub(crate) struct TestAgent {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl TestAgent {
    pub(crate) fn start(python: &PathBuf, mode: &str, dir: &Scratch) -> TestAgent {
        Self::start_with(python, mode, dir, true)
    }

    /// `schema`: check what it receives against Twilio's schema.
    fn start_with(python: &PathBuf, mode: &str, dir: &Scratch, schema: bool) -> TestAgent {
        Self::start_tls(python, mode, dir, schema, None)
    }

    /// An agent that answers each WebSocket upgrade only after `delay_ms`.
    pub(crate) fn start_slow(
        python: &PathBuf,
        mode: &str,
        dir: &Scratch,
        delay_ms: u64,
    ) -> TestAgent {
        Self::start_args(
            python,
            mode,
            dir,
            true,
            None,
            &["--accept-delay-ms", &delay_ms.to_string()],
        )
    }

    /// Over TLS with `tls` (certificate and key PEM files), if given.
    fn start_tls(
        python: &PathBuf,
        mode: &str,
        dir: &Scratch,
        schema: bool,
        tls: Option<(&PathBuf, &PathBuf)>,
    ) -> TestAgent {
        Self::start_args(python, mode, dir, schema, tls, &[])
    }

    fn start_args(
        python: &PathBuf,
        mode: &str,
        dir: &Scratch,
        schema: bool,
        tls: Option<(&PathBuf, &PathBuf)>,
        extra: &[&str],
    ) -> TestAgent {
        let log = dir.path().join(format!(
            "agent-{mode}-{schema}-{}-{}.jsonl",
            tls.is_some(),
            extra.join("")
        ));
        let mut command = Command::new(python);
        command
            .arg(repo_root().join("tests/agent/test_agent.py"))
            .args(["--host", "127.0.0.1", "--port", "0", "--mode", mode])
            .args(extra)
            .arg("--log")
            .arg(&log);
        if let Some((cert, key)) = tls {
            command
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
        }
        if schema {
            command
                .arg("--schema")
                .arg(repo_root().join("tests/agent/twilio-media-streams.schema.json"));
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the test agent");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let port = lines
            .find_map(|l| l.ok()?.strip_prefix("listening ")?.trim().parse().ok())
            .expect("the test agent says where it listens");
        std::thread::spawn(move || for _ in lines {});
        TestAgent { child, port, log }
    }

    pub(crate) fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/media", self.port)
    }

    /// Every line logged so far.
    pub(crate) fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The Twilio messages received (not the agent's own notes).
    pub(crate) fn messages(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|m| m.get("event").is_some())
            .collect()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stream_cmd(events: &mut Events, redis: &RedisServer, id: &str, call: &str, media: Value) {
    command_ok(
        events,
        redis,
        id,
        "stream",
        json!({"call_id": call, "media": media}),
    );
}

/// `call`'s first `call.media` report of kind `report`, whether it came
/// already (an agent may start while the call rings) or comes `within`.
fn media_report(events: &mut Events, call: &str, report: &str, within: Duration) -> Value {
    seen_or_until(events, within, |e| {
        e["type"] == "call.media" && e["call_id"] == call && e["report"] == report
    })
}

#[test]
fn agent_a_sipp_callers_tone_and_digits_reach_the_agent_in_twilios_schema() {
    let Some(python) = agent_python_or_skip() else {
        return;
    };
    let dir = Scratch::new("agent-sipp");
    let agent = TestAgent::start(&python, "echo", &dir);
    let redis = RedisServer::start(&[]);
    let pbx = media_pbx(9, "0", "PCMU");
    let (d, sip) = dialerd(&redis, &pbx, "ring", "", 23800, &dir);
    let mut events = Events::new(&redis);
    let tone = dir.path().join("tone.pcap");
    std::fs::write(&tone, crate::kamailio::tone_pcap(100)).unwrap();
    let scenario = agent_caller_scenario(&dir, &tone, 2200, 1500);
    let media_port = 23800 + 150;
    let uac = crate::support::sipp::Sipp::client(&scenario, sip)
        .key("callee", "1001")
        .key("rtp_port", &media_port.to_string())
        .args(&["-mp", &media_port.to_string()])
        .timeout(Duration::from_secs(60))
        .spawn();
    let call = crate::media::next_created(&mut events, &uac, &d);
    events.until(Duration::from_secs(10), |e| {
        e["type"] == "call.ringing" && e["call_id"] == call.as_str()
    });
    command_ok(
        &mut events,
        &redis,
        "answer-agent",
        "answer",
        json!({"call_id": call, "media": {"type": "websocket", "url": agent.url(),
               "custom_parameters": {"lead": "42", "campaign": "spring"}}}),
    );
    let result = uac.wait();
    assert_eq!(result.exit_code, Some(0), "{}\n{}", result.errors, d.log());
    ended(&mut events, &call, Duration::from_secs(15));
    // The stream's stop goes out as the call ends; give the agent a moment.
    let messages = crate::support::wait_for(Duration::from_secs(5), || {
        let m = agent.messages();
        m.iter().any(|m| m["event"] == "stop").then_some(m)
    })
    .unwrap_or_else(|| panic!("no stop: {:#?}\n{}", agent.lines(), d.log()));
    let invalid: Vec<Value> = agent
        .lines()
        .into_iter()
        .filter(|l| l.get("_invalid").is_some())
        .collect();
    assert!(invalid.is_empty(), "not Twilio's schema: {invalid:#?}");
    let kinds: Vec<&str> = messages
        .iter()
        .map(|m| m["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[..2], ["connected", "start"], "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"stop"));
    assert_eq!(kinds.iter().filter(|k| **k == "start").count(), 1);
    let start = &messages[1]["start"];
    assert_eq!(
        start["customParameters"],
        json!({"lead": "42", "campaign": "spring"})
    );
    assert_eq!(start["mediaFormat"]["encoding"], "audio/x-mulaw");
    // sequenceNumber counts every message after connected, as strings.
    for (i, m) in messages.iter().skip(1).enumerate() {
        assert_eq!(m["sequenceNumber"], (i + 1).to_string(), "{m}");
    }
    let media: Vec<&Value> = messages.iter().filter(|m| m["event"] == "media").collect();
    for (i, m) in media.iter().enumerate() {
        assert_eq!(m["media"]["chunk"], (i + 1).to_string(), "{m}");
    }
    let payloads: Vec<Vec<u8>> = media
        .iter()
        .map(|m| decode_b64(m["media"]["payload"].as_str().unwrap()))
        .collect();
    let toned = count_toned(&payloads, 1000.0);
    assert!(
        toned >= 80,
        "the caller's tone reached the agent: {toned} of 100 frames"
    );
    let digits: Vec<&str> = messages
        .iter()
        .filter(|m| m["event"] == "dtmf")
        .map(|m| m["dtmf"]["digit"].as_str().unwrap())
        .collect();
    assert_eq!(
        digits,
        ["1", "2"],
        "the caller's digits, once each, in order"
    );
    // Audio went back to the caller all along (the agent echoes it).
    let totals = events.totals(&call, Duration::from_secs(10));
    assert!(
        crate::media::as_u64(&totals, "tx_packets") >= 150,
        "the caller got a frame every 20 ms: {totals}"
    );
}

/// Base64 (standard alphabet) for the tests' own checks.
fn decode_b64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    bytes
        .chunks(4)
        .flat_map(|c| {
            let n = c.iter().fold(0u32, |acc, &v| acc << 6 | u32::from(v)) << (6 * (4 - c.len()));
            let all = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            all.into_iter().take(c.len().saturating_sub(1))
        })
        .collect()
}

/// An answered call to the media PBX with `phone` as its media, streamed to
/// `agent`; returns the call's RTP port at dialerd.
fn streamed_call(
    events: &mut Events,
    redis: &RedisServer,
    to: &str,
    id: &str,
    media: Value,
) -> u16 {
    command_ok(
        events,
        redis,
        id,
        "originate",
        json!({"account": "acct-a", "to": to, "max_duration_secs": 120}),
    );
    seen_or_until(events, Duration::from_secs(15), |e| {
        e["type"] == "call.answered" && e["call_id"] == id
    });
    stream_cmd(events, redis, &format!("s-{id}"), id, media);
    local_port(events, id)
}

#[test]
fn agent_marks_come_back_in_order_after_their_audio_and_clear_cuts_the_queue() {
    let Some(python) = agent_python_or_skip() else {
        return;
    };
    let dir = Scratch::new("agent-marks");
    let Rig {
        redis,
        phone,
        d,
        mut events,
        to,
        pbx: _pbx,
    } = Rig::start(&dir, "", 23900);

    // marks: five 200 ms chunks of tone, each followed by a mark.
    let agent = TestAgent::start(&python, "marks", &dir);
    let port = streamed_call(
        &mut events,
        &redis,
        &to,
        "marks-1",
        json!({"type": "websocket", "url": agent.url()}),
    );
    let back = play_and_listen(&phone, ([127, 0, 0, 1], port).into(), 3);
    let marks: Vec<(String, f64)> = agent
        .messages()
        .iter()
        .filter(|m| m["event"] == "mark")
        .map(|m| {
            (
                m["mark"]["name"].as_str().unwrap().to_owned(),
                m["_t"].as_f64().unwrap(),
            )
        })
        .collect();
    let names: Vec<&str> = marks.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["m1", "m2", "m3", "m4", "m5"], "{}", d.log());
    let span = marks[4].1 - marks[0].1;
    assert!(
        (600.0..=1600.0).contains(&span),
        "each mark echoed as its 200 ms of audio played: m1 to m5 took {span} ms"
    );
    let toned = count_toned(&back, 440.0);
    assert!(
        (40..=60).contains(&toned),
        "1 s of tone reached the phone: {toned} frames"
    );
    command_ok(
        &mut events,
        &redis,
        "hu-m",
        "hangup",
        json!({"call_id": "marks-1"}),
    );
    ended(&mut events, "marks-1", Duration::from_secs(15));

    // clear: 10 s of tone and a mark, then clear 500 ms later.
    let agent = TestAgent::start(&python, "clear", &dir);
    let port = streamed_call(
        &mut events,
        &redis,
        &to,
        "clear-1",
        json!({"type": "websocket", "url": agent.url()}),
    );
    let back = play_and_listen(&phone, ([127, 0, 0, 1], port).into(), 3);
    let toned = count_toned(&back, 440.0);
    assert!(
        (15..=45).contains(&toned),
        "the clear cut 10 s of queued tone after about 0.5 s: {toned} tone frames"
    );
    let echoed: Vec<String> = agent
        .messages()
        .iter()
        .filter(|m| m["event"] == "mark")
        .map(|m| m["mark"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(echoed, ["before_clear"], "clear echoes the pending mark");
    command_ok(
        &mut events,
        &redis,
        "hu-c",
        "hangup",
        json!({"call_id": "clear-1"}),
    );
    ended(&mut events, "clear-1", Duration::from_secs(15));
}

#[test]
fn agent_faults_end_the_call_with_a_cause_or_leave_it_on_silence_and_dialerd_healthy() {
    let Some(python) = agent_python_or_skip() else {
        return;
    };
    let dir = Scratch::new("agent-faults");
    let Rig {
        redis,
        phone,
        d,
        mut events,
        to,
        pbx: _pbx,
    } = Rig::start(&dir, "", 24000);
    // (mode, how the stream ends or None if it stays up, the call's cause)
    let cases = [
        ("refuse", Some("refused"), "agent_failed"),
        ("vanish", Some("lost"), "agent_failed"),
        ("huge", Some("message_too_big"), "agent_failed"),
        ("hangup", Some("closed"), "agent_hangup"),
        ("silent", None, ""),
        ("malformed", None, ""),
        ("burst", None, ""),
    ];
    for (n, (mode, ends, cause)) in cases.into_iter().enumerate() {
        let agent = TestAgent::start(&python, mode, &dir);
        let id = format!("fault-{mode}");
        let port = streamed_call(
            &mut events,
            &redis,
            &to,
            &id,
            json!({"type": "websocket", "url": agent.url()}),
        );
        let back = play_and_listen(&phone, ([127, 0, 0, 1], port).into(), 3);
        match ends {
            Some(reason) => {
                let end = media_report(&mut events, &id, "agent_ended", Duration::from_secs(15));
                assert_eq!(end["reason"], reason, "{mode}: {end}");
                let e = ended(&mut events, &id, Duration::from_secs(15));
                assert_eq!(e["cause"], cause, "{mode}: {e}");
            }
            None => {
                assert!(
                    back.len() >= 120,
                    "{mode}: the phone is fed every 20 ms: {} frames in 3 s",
                    back.len()
                );
                assert!(
                    events.of(&id, "call.ended").is_empty(),
                    "{mode}: the call stays up"
                );
                if mode == "malformed" {
                    let bad = media_report(
                        &mut events,
                        &id,
                        "agent_bad_message",
                        Duration::from_secs(5),
                    );
                    assert!(bad["reason"].is_string(), "{bad}");
                }
                if mode == "burst" {
                    let toned = count_toned(&back, 440.0);
                    assert!(toned >= 120, "{mode}: the burst plays at its pace: {toned}");
                }
                command_ok(
                    &mut events,
                    &redis,
                    &format!("hu-{n}"),
                    "hangup",
                    json!({"call_id": id}),
                );
                ended(&mut events, &id, Duration::from_secs(15));
            }
        }
        assert_eq!(
            crate::support::http::get(d.http(), "/healthz")
                .unwrap()
                .status,
            200,
            "{mode}: dialerd stays healthy"
        );
    }
    let metrics = crate::support::http::get(d.http(), "/metrics")
        .unwrap()
        .body;
    for reason in ["refused", "lost", "message_too_big", "closed"] {
        let line = format!("dialerd_agent_streams_ended_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    assert!(
        metrics.contains("dialerd_agent_streams_started_total 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dialerd_agent_bad_messages_total 3"),
        "{metrics}"
    );
}

#[test]
fn agent_pipecat_auto_hang_up_ends_the_call_through_the_twilio_shaped_api() {
    let Some(python) = agent_python_or_skip() else {
        return;
    };
    let dir = Scratch::new("agent-rest");
    let Rig {
        redis,
        phone: _phone,
        pbx: _pbx,
        d,
        mut events,
        to,
    } = Rig::start(&dir, "[http]\nagent_hangup_api = true\n", 24100);
    let bot = Bot::start(
        &python,
        &[
            "--end-after",
            "3",
            "--end-silence-secs",
            "0",
            "--hangup-api",
            &format!("http://{}", d.http()),
        ],
    );
    // on_end continue: the socket's close does not end the call; only the
    // bot's REST call can.
    command_ok(
        &mut events,
        &redis,
        "agent-rest",
        "originate",
        json!({"account": "acct-a", "to": to, "max_duration_secs": 60,
               "media": {"type": "websocket", "url": format!("ws://127.0.0.1:{}/ws", bot.port),
                         "on_end": "continue"}}),
    );
    seen_or_until(&mut events, Duration::from_secs(15), |e| {
        e["type"] == "call.answered" && e["call_id"] == "agent-rest"
    });
    let end = ended(&mut events, "agent-rest", Duration::from_secs(20));
    assert_eq!(end["cause"], "normal", "{end}\n{}", d.log());
    assert!(
        d.log()
            .contains("hang-up requested over the agent REST API"),
        "{}",
        d.log()
    );
    // Anything but Status=completed is refused.
    let off = crate::support::http::post(d.http(), "/2010-04-01/Accounts/AC1/Calls/CA1.json");
    assert_eq!(off.unwrap().status, 400, "Status=completed is required");
}

#[test]
fn agent_raw_l16_at_16_khz_carries_the_calls_tone_there_and_back() {
    let Some(python) = agent_python_or_skip() else {
        return;
    };
    let dir = Scratch::new("agent-l16");
    let Rig {
        redis,
        phone,
        d,
        mut events,
        to,
        pbx: _pbx,
    } = Rig::start(&dir, "", 24200);
    let agent = TestAgent::start_with(&python, "echo", &dir, false);
    let port = streamed_call(
        &mut events,
        &redis,
        &to,
        "l16-1",
        json!({"type": "websocket", "url": agent.url(), "protocol": "l16", "sample_rate": 16000}),
    );
    let back = play_and_listen(&phone, ([127, 0, 0, 1], port).into(), 3);
    let start = agent
        .messages()
        .into_iter()
        .find(|m| m["event"] == "start")
        .expect("a start message");
    assert_eq!(start["encoding"], "L16", "{start}");
    assert_eq!(start["sample_rate"], 16000, "{start}");
    let frames: Vec<u64> = agent
        .lines()
        .iter()
        .filter_map(|l| l["_binary"].as_u64())
        .collect();
    assert!(frames.len() >= 100, "binary audio frames: {}", frames.len());
    assert!(
        frames.iter().all(|&n| n == 640),
        "20 ms at 16 kHz, 16 bits: {frames:?}"
    );
    let toned = count_toned(&back, 1000.0);
    assert!(
        toned >= 75,
        "the tone came back through L16: {toned} of {}\n{}",
        back.len(),
        d.log()
    );
    command_ok(
        &mut events,
        &redis,
        "hu-l16",
        "hangup",
        json!({"call_id": "l16-1"}),
    );
    ended(&mut events, "l16-1", Duration::from_secs(15));
}

#[test]
fn agent_over_wss_trusts_a_ca_file_or_a_pinned_certificate_and_refuses_others() {
    let Some(python) = agent_python_or_skip() else {
        return;
    };
    let pki = crate::support::tls::TestPki::generate();
    let dir = Scratch::new("agent-wss");
    let Rig {
        redis,
        phone,
        d,
        mut events,
        to,
        pbx: _pbx,
    } = Rig::start(&dir, "", 24300);
    let signed = TestAgent::start_tls(&python, "echo", &dir, true, Some((&pki.cert, &pki.key)));
    let url = format!("wss://localhost:{}/media", signed.port);
    let port = streamed_call(
        &mut events,
        &redis,
        &to,
        "wss-ca",
        json!({"type": "websocket", "url": url, "tls_ca_file": pki.ca}),
    );
    let back = play_and_listen(&phone, ([127, 0, 0, 1], port).into(), 2);
    let toned = count_toned(&back, 1000.0);
    assert!(
        toned >= 50,
        "the echo came back over wss: {toned}\n{}",
        d.log()
    );
    command_ok(
        &mut events,
        &redis,
        "hu-ca",
        "hangup",
        json!({"call_id": "wss-ca"}),
    );
    ended(&mut events, "wss-ca", Duration::from_secs(15));

    // A pinned self-signed certificate.
    let pinned = TestAgent::start_tls(
        &python,
        "echo",
        &dir,
        true,
        Some((&pki.self_signed, &pki.self_signed_key)),
    );
    let url = format!("wss://127.0.0.1:{}/media", pinned.port);
    streamed_call(
        &mut events,
        &redis,
        &to,
        "wss-pin",
        json!({"type": "websocket", "url": url, "tls_fingerprint": pki.self_signed_fingerprint}),
    );
    media_report(
        &mut events,
        "wss-pin",
        "agent_started",
        Duration::from_secs(10),
    );
    command_ok(
        &mut events,
        &redis,
        "hu-pin",
        "hangup",
        json!({"call_id": "wss-pin"}),
    );
    ended(&mut events, "wss-pin", Duration::from_secs(15));

    // The CA-signed agent under another CA: refused, the call ends.
    let url = format!("wss://localhost:{}/media", signed.port);
    streamed_call(
        &mut events,
        &redis,
        &to,
        "wss-bad",
        json!({"type": "websocket", "url": url, "tls_ca_file": pki.other_ca}),
    );
    let end = media_report(
        &mut events,
        "wss-bad",
        "agent_ended",
        Duration::from_secs(10),
    );
    assert!(
        end["detail"].as_str().is_some_and(|d| d.contains("TLS")),
        "{end}"
    );
    let e = ended(&mut events, "wss-bad", Duration::from_secs(15));
    assert_eq!(e["cause"], "agent_failed", "{e}");
}
