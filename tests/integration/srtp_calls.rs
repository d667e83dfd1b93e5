//! SRTP calls end to end with a real SRTP phone: baresip (Debian `baresip`,
//! its `srtp` module, `mediaenc=srtp-mand`) calls dialerd, which bridges the
//! call to a callee behind a SIPp PBX whose media is a socket this test
//! owns: plain RTP, or DTLS-SRTP with a peer built on dialerd's own DTLS and
//! SRTP machines. The audio is checked both ways by decoding it: baresip's
//! 440 Hz tone must reach the callee, and the callee's 1000 Hz tone must be
//! what baresip decrypted and recorded.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use dialerd::media::dtls::{DtlsSession, DtlsSetup, Identity, is_dtls};
use dialerd::media::srtp::{Transform, provider};
use dialerd::sdp::Fingerprint;

use crate::media::{Events, as_u64, command_ok, dialerd, local_port, media_pbx};
use crate::support::g711::{ulaw_decode, ulaw_encode};
use crate::support::redis::RedisServer;
use crate::support::scratch::Scratch;
use crate::support::sipp::{Sipp, SippRun, scenario};
use crate::support::{ports, wait_for};

const RATE: f64 = 8000.0;

/// `secs` of a `hz` sine at 8 kHz, 16-bit mono, as a WAV file.
pub(crate) fn write_tone_wav(path: &Path, hz: f64, secs: f64) {
    let samples: Vec<i16> = (0..(secs * RATE) as usize)
        .map(|n| (8000.0 * (2.0 * std::f64::consts::PI * hz * n as f64 / RATE).sin()) as i16)
        .collect();
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&16000u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
    wav.extend_from_slice(&data);
    std::fs::write(path, wav).unwrap();
}

/// The 16-bit samples of a WAV file's `data` chunk.
fn read_wav(path: &Path) -> Vec<i32> {
    let d = std::fs::read(path).unwrap();
    let mut at = 12;
    while at + 8 <= d.len() {
        let size = u32::from_le_bytes(d[at + 4..at + 8].try_into().unwrap()) as usize;
        if &d[at..at + 4] == b"data" {
            let end = (at + 8 + size).min(d.len());
            return d[at + 8..end]
                .chunks_exact(2)
                .map(|c| i32::from(i16::from_le_bytes([c[0], c[1]])))
                .collect();
        }
        at += 8 + size + (size & 1);
    }
    panic!("{}: no data chunk", path.display());
}

/// Frequency by zero crossings, and the RMS level, of the loud part of
/// `samples` (leading and trailing silence cut).
fn tone_of(samples: &[i32]) -> (f64, f64) {
    let first = samples.iter().position(|s| s.abs() > 1000).unwrap_or(0);
    let last = samples.iter().rposition(|s| s.abs() > 1000).unwrap_or(0);
    let loud = &samples[first..=last.max(first)];
    let crossings = loud.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    let secs = loud.len() as f64 / RATE;
    let rms = (loud.iter().map(|&s| (s * s) as f64).sum::<f64>() / loud.len().max(1) as f64).sqrt();
    (crossings as f64 / 2.0 / secs.max(1e-9), rms)
}

/// A UDP port and the next one, free on UDP and TCP (baresip takes SIP on
/// the port and SIP/TLS on the next).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let p = ports::free_udp_tcp_port();
        let next_free = std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
            && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok();
        if p < u16::MAX && next_free {
            return p;
        }
    }
    panic!("no free port pair");
}

/// A baresip that dials `target` at start-up with `mediaenc` (e.g.
/// `srtp-mand`), sends `wav`, records what it receives under `dir/rec`,
/// and hangs up after `secs`.
struct Baresip {
    child: Child,
    dir: PathBuf,
}

impl Baresip {
    fn dial(
        dir: &Path,
        target: &str,
        mediaenc: &str,
        wav: &Path,
        rtp_ports: (u16, u16),
        secs: u32,
    ) -> Baresip {
        let port = free_port_pair();
        std::fs::create_dir_all(dir.join("rec")).unwrap();
        let config = format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{port}\nnet_interface 127.0.0.1\n\
             audio_source aufile,{wav}\naudio_player none,none\naudio_alert none,none\n\
             ausrc_format s16\nauplay_format s16\nauenc_format s16\naudec_format s16\n\
             rtp_ports {}-{}\nrtcp_mux no\nmodule_path /usr/lib/baresip/modules\n\
             module g711.so\nmodule aufile.so\nmodule sndfile.so\nmodule srtp.so\n\
             module_tmp account.so\nmodule_app menu.so\nsnd_path {rec}\n\
             ringback_disabled yes\nstatmode_default off\n",
            rtp_ports.0,
            rtp_ports.1,
            wav = wav.display(),
            rec = dir.join("rec").display(),
        );
        std::fs::write(dir.join("config"), config).unwrap();
        let enc = if mediaenc.is_empty() {
            String::new()
        } else {
            format!(";mediaenc={mediaenc}")
        };
        std::fs::write(
            dir.join("accounts"),
            format!("<sip:caller@127.0.0.1:{port}>;regint=0{enc};audio_codecs=PCMU/8000/1\n"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("baresip.log")).unwrap();
        let child = Command::new("timeout")
            .args(["-k", "2", &(secs + 30).to_string(), "baresip", "-f"])
            .arg(dir)
            .args([
                "-s",
                "-t",
                &secs.to_string(),
                "-e",
                &format!("/dial {target}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("baresip (scripts/setup.sh installs it)");
        Baresip {
            child,
            dir: dir.to_owned(),
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("baresip.log")).unwrap_or_default()
    }

    /// Waits for it to exit; its log.
    fn wait(mut self) -> String {
        let status = self.child.wait().unwrap();
        let log = self.log();
        assert!(status.success(), "baresip exited with {status}:\n{log}");
        log
    }

    /// What it received and decoded, as recorded by its sndfile module.
    fn received(&self) -> Vec<i32> {
        let rec = std::fs::read_dir(self.dir.join("rec"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .unwrap_or_else(|| panic!("baresip recorded nothing:\n{}", self.log()));
        read_wav(&rec)
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The plain callee's media: a socket that records what reaches it and,
/// once told where, sends a 1000 Hz µ-law tone every 20 ms.
struct PlainPeer {
    socket: UdpSocket,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Vec<u8>>>>,
}

impl PlainPeer {
    fn bind() -> PlainPeer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        PlainPeer {
            socket,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    fn port(&self) -> u16 {
        self.socket.local_addr().unwrap().port()
    }

    fn talk_to(&mut self, to: SocketAddr) {
        let socket = self.socket.try_clone().unwrap();
        let stop = Arc::clone(&self.stop);
        self.thread = Some(std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            let mut next = Instant::now();
            let (mut seq, mut ts, mut n) = (1u16, 0u32, 0usize);
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    let mut p = vec![0x80, 0];
                    p.extend_from_slice(&seq.to_be_bytes());
                    p.extend_from_slice(&ts.to_be_bytes());
                    p.extend_from_slice(&0x0BAD_CAFEu32.to_be_bytes());
                    for _ in 0..160 {
                        let x =
                            8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * n as f64 / RATE).sin();
                        p.push(ulaw_encode(x as i32));
                        n += 1;
                    }
                    let _ = socket.send_to(&p, to);
                    (seq, ts) = (seq.wrapping_add(1), ts.wrapping_add(160));
                    next += Duration::from_millis(20);
                }
                if let Ok((len, _)) = socket.recv_from(&mut buf) {
                    got.push(buf[..len].to_vec());
                }
            }
            got
        }));
    }

    /// The datagrams received.
    fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default()
    }
}

impl Drop for PlainPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What a bridged call from baresip left: the phone (hung up), the totals
/// of its leg and of the callee's, and dialerd's log.
struct Bridged {
    phone: Baresip,
    rx: serde_json::Value,
    tx: serde_json::Value,
    log: String,
}

/// baresip (`srtp-mand`, sending 440 Hz for 8 s) calls a dialerd on `redis`
/// (SRTP optional, inbound `ring`, RTP from `rtp_base`) registered with
/// `pbx`, whose call is bridged to an outbound call `out` to the PBX's
/// callee with SRTP policy `srtp` (the account's when `None`). `ready`
/// runs once dialerd is up, `answered` once the callee answered with the
/// callee leg's local port.
#[allow(clippy::too_many_arguments)]
fn bridged_call(
    redis: &RedisServer,
    pbx: &SippRun,
    dir: &Scratch,
    rtp_base: u16,
    out: &str,
    srtp: Option<&str>,
    ready: impl FnOnce(&str),
    answered: impl FnOnce(u16),
) -> Bridged {
    let (d, sip) = dialerd(
        redis,
        pbx,
        "ring",
        "[media]\nsrtp = \"optional\"",
        rtp_base,
        dir,
    );
    ready(&d.log());
    let mut events = Events::new(redis);
    let wav = dir.path().join("tone440.wav");
    write_tone_wav(&wav, 440.0, 30.0);
    let mut phone = Baresip::dial(
        &dir.path().join("baresip"),
        &format!("sip:1001@{sip}"),
        "srtp-mand",
        &wav,
        (rtp_base + 200, rtp_base + 219),
        8,
    );
    let created = events
        .try_until(Duration::from_secs(15), |e| e["type"] == "call.created")
        .unwrap_or_else(|| panic!("no call from baresip:\n{}\n{}", phone.log(), d.log()));
    let inbound = created["call_id"].as_str().unwrap().to_owned();
    let mut args = json!({"account": "acct-a", "to": format!("sip:bob@{}", pbx.local_addr()),
        "max_duration_secs": 60, "bridge_to": inbound});
    if let Some(policy) = srtp {
        args["srtp"] = json!(policy);
    }
    command_ok(&mut events, redis, out, "originate", args);
    events.until(Duration::from_secs(10), |e| {
        e["type"] == "call.answered" && e["call_id"] == out
    });
    answered(local_port(&mut events, out));
    let hung_up = wait_for(Duration::from_secs(30), || (!phone.running()).then_some(()));
    assert!(
        hung_up.is_some(),
        "baresip did not hang up:\n{}",
        phone.log()
    );
    let rx = events.totals(&inbound, Duration::from_secs(15));
    let tx = events.totals(out, Duration::from_secs(15));
    Bridged {
        phone,
        rx,
        tx,
        log: d.log(),
    }
}

/// The 440 Hz tone in decoded PCMU `packets` (RTP, payload type 0).
fn assert_phone_tone(packets: &[Vec<u8>], context: &str) {
    let samples: Vec<i32> = packets
        .iter()
        .filter(|p| p.len() == 172 && p[1] & 0x7f == 0)
        .flat_map(|p| p[12..].iter().map(|&b| ulaw_decode(b)))
        .collect();
    assert!(
        samples.len() > 150 * 160,
        "{} samples from the phone; {context}",
        samples.len()
    );
    let (hz, rms) = tone_of(&samples);
    assert!(
        (hz - 440.0).abs() < 10.0 && rms > 2000.0,
        "phone's tone at the callee: {hz:.1} Hz, rms {rms:.0}"
    );
}

/// The callee's 1000 Hz tone in what baresip decrypted and recorded.
fn assert_callee_tone(phone: &Baresip) {
    let (hz, rms) = tone_of(&phone.received());
    assert!(
        (hz - 1000.0).abs() < 20.0 && rms > 2000.0,
        "callee's tone at the phone: {hz:.1} Hz, rms {rms:.0}"
    );
}

#[test]
fn srtp_an_sdes_call_from_baresip_is_bridged_to_a_plain_leg_with_audio_both_ways() {
    let redis = RedisServer::start(&[]);
    let mut peer = PlainPeer::bind();
    let pbx = media_pbx(peer.port(), "0", "PCMU");
    let dir = Scratch::new("srtp-baresip");
    // SRTP optional: baresip's RTP/SAVP offer is taken with SDES, the plain
    // callee's answer without keys falls back to RTP.
    let call = bridged_call(
        &redis,
        &pbx,
        &dir,
        22600,
        "srtp-out-1",
        None,
        |_| {},
        |port| {
            peer.talk_to(SocketAddr::from(([127, 0, 0, 1], port)));
        },
    );
    let from_phone = peer.finish();
    let (rx, tx) = (&call.rx, &call.tx);
    // The phone's leg is SDES-SRTP, the callee's plain RTP.
    assert_eq!(rx["srtp"], "AES_CM_128_HMAC_SHA1_80", "phone leg {rx}");
    assert!(tx["srtp"].is_null(), "plain leg {tx}");
    assert!(as_u64(rx, "rx_packets") > 150, "phone leg {rx}");
    // baresip sends one plain RTCP packet before its SRTP starts; nothing
    // else may fail authentication.
    assert!(as_u64(rx, "srtp_rejected") <= 2, "phone leg {rx}");
    let phone_log = call.phone.log();
    assert!(
        phone_log.contains("SRTP") || phone_log.contains("srtp"),
        "baresip used SRTP:\n{phone_log}"
    );
    // Phone to callee decrypted by dialerd; callee to phone encrypted by it.
    assert_phone_tone(&from_phone, &call.log);
    assert_callee_tone(&call.phone);
}

#[test]
fn srtp_required_refuses_a_plain_rtp_call_with_488_and_cause_srtp_required() {
    const RTP_BASE: u16 = 23000;
    let redis = RedisServer::start(&[]);
    let peer = PlainPeer::bind();
    let pbx = media_pbx(peer.port(), "0", "PCMU");
    let dir = Scratch::new("srtp-required");
    let (d, sip) = dialerd(
        &redis,
        &pbx,
        "answer",
        "[media]\nsrtp = \"required\"",
        RTP_BASE,
        &dir,
    );
    let mut events = Events::new(&redis);
    let wav = dir.path().join("tone440.wav");
    write_tone_wav(&wav, 440.0, 10.0);
    let phone = Baresip::dial(
        &dir.path().join("baresip"),
        &format!("sip:1001@{sip}"),
        "",
        &wav,
        (RTP_BASE + 200, RTP_BASE + 219),
        3,
    );
    let ended = events
        .try_until(Duration::from_secs(15), |e| e["type"] == "call.ended")
        .unwrap_or_else(|| panic!("no call from baresip:\n{}\n{}", phone.log(), d.log()));
    assert_eq!(ended["cause"], "srtp_required", "{ended}");
    assert_eq!(ended["code"], 488, "{ended}");
    let log = phone.wait();
    assert!(log.contains("488"), "baresip saw the 488:\n{log}");
}

/// The 1000 Hz µ-law tone, frame `n` of 160 samples.
fn tone_frame(n: usize) -> Vec<u8> {
    (0..160)
        .map(|i| {
            let t = (n * 160 + i) as f64 / RATE;
            ulaw_encode((8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i32)
        })
        .collect()
}

/// A DTLS-SRTP callee's media: a socket whose DTLS server (passive, as its
/// SDP says) expects dialerd's certificate, then sends the 1000 Hz tone as
/// SRTP every 20 ms and decrypts what it receives.
struct DtlsPeer {
    socket: UdpSocket,
    identity: Identity,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(bool, Vec<Vec<u8>>)>>,
}

impl DtlsPeer {
    fn bind() -> DtlsPeer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        DtlsPeer {
            socket,
            identity: Identity::generate().unwrap(),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    fn port(&self) -> u16 {
        self.socket.local_addr().unwrap().port()
    }

    /// Our fingerprint as SDP writes it, without the hash name.
    fn fingerprint(&self) -> String {
        let f = Fingerprint::sha256(self.identity.fingerprint().to_vec()).to_string();
        f.trim_start_matches("sha-256 ").to_owned()
    }

    /// Serves the handshake from dialerd, whose certificate has `theirs`.
    fn serve(&mut self, theirs: Vec<u8>) {
        let socket = self.socket.try_clone().unwrap();
        let stop = Arc::clone(&self.stop);
        let setup = DtlsSetup {
            client: false,
            fingerprint: theirs,
        };
        let mut session = DtlsSession::new(
            Instant::now(),
            &self.identity,
            setup,
            "127.0.0.1:9".parse().unwrap(),
        )
        .unwrap();
        self.thread = Some(std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            let mut srtp: Option<Transform> = None;
            let mut dialerd: Option<SocketAddr> = None;
            let (mut next, mut seq, mut n) = (Instant::now(), 1u16, 0usize);
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if let Ok((len, from)) = socket.recv_from(&mut buf) {
                    dialerd = Some(from);
                    if is_dtls(&buf[..len]) {
                        if let Ok(Some(keys)) = session.handle(now, &buf[..len]) {
                            srtp =
                                Some(Transform::new(&keys, provider().unwrap().as_ref()).unwrap());
                        }
                    } else if let Some(t) = srtp.as_mut()
                        && let Ok(n) = t.unprotect_rtp(&mut buf, len)
                    {
                        got.push(buf[..n].to_vec());
                    }
                }
                if session.poll_timeout().is_some_and(|at| at <= now) {
                    let _ = session.handle_timeout(now);
                }
                while let Some(p) = session.poll_transmit() {
                    if let Some(to) = dialerd {
                        let _ = socket.send_to(&p, to);
                    }
                }
                if let (Some(t), Some(to)) = (srtp.as_mut(), dialerd)
                    && now >= next
                {
                    let mut p = vec![0x80, 0];
                    p.extend_from_slice(&seq.to_be_bytes());
                    p.extend_from_slice(&((n * 160) as u32).to_be_bytes());
                    p.extend_from_slice(&0x0D71_5C0Du32.to_be_bytes());
                    p.extend_from_slice(&tone_frame(n));
                    p.resize(2048, 0);
                    if let Ok(len) = t.protect_rtp(&mut p, 172) {
                        let _ = socket.send_to(&p[..len], to);
                    }
                    (seq, n) = (seq.wrapping_add(1), n + 1);
                    next += Duration::from_millis(20);
                }
            }
            (session.is_done(), got)
        }));
    }

    /// Whether the handshake completed, and the RTP packets decrypted.
    fn finish(mut self) -> (bool, Vec<Vec<u8>>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default()
    }
}

impl Drop for DtlsPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The PBX of `media_pbx`, its callee answering with DTLS-SRTP as `peer`.
fn dtls_pbx(peer: &DtlsPeer) -> SippRun {
    Sipp::server(&scenario("media_pbx_dtls.xml"))
        .key("expires", "60")
        .key("rtp_port", &peer.port().to_string())
        .key("pt", "0")
        .key("codec", "PCMU")
        .key("fp", &peer.fingerprint())
        .calls(100_000)
        .timeout(Duration::from_secs(600))
        .args(&["-deadcall_wait", "0"])
        .spawn()
}

/// dialerd's DTLS certificate fingerprint, from its start-up log.
fn dialerd_fingerprint(log: &str) -> Vec<u8> {
    let line = log
        .lines()
        .find(|l| l.contains("DTLS-SRTP certificate made"))
        .unwrap_or_else(|| panic!("no certificate logged:\n{log}"));
    let at = line.find("sha-256 ").expect("a sha-256 fingerprint") + 8;
    let hex: String = line[at..].chars().take(32 * 3 - 1).collect();
    Fingerprint::parse(&format!("sha-256 {hex}"))
        .unwrap()
        .digest
}

#[test]
fn srtp_an_sdes_call_from_baresip_is_bridged_to_a_dtls_srtp_callee_with_audio_both_ways() {
    let redis = RedisServer::start(&[]);
    let mut peer = DtlsPeer::bind();
    let pbx = dtls_pbx(&peer);
    let dir = Scratch::new("srtp-dtls");
    let call = bridged_call(
        &redis,
        &pbx,
        &dir,
        23200,
        "dtls-out-1",
        Some("dtls"),
        |log| peer.serve(dialerd_fingerprint(log)),
        |_| {},
    );
    let (handshaken, from_phone) = peer.finish();
    let (rx, tx) = (&call.rx, &call.tx);
    let context = format!("phone leg {rx}\ncallee leg {tx}\n{}", call.log);
    assert!(handshaken, "DTLS handshake with dialerd: {context}");
    assert_eq!(rx["srtp"], "AES_CM_128_HMAC_SHA1_80", "{context}");
    assert!(
        tx["srtp"].is_string(),
        "the callee leg is keyed by DTLS: {context}"
    );
    assert_eq!(as_u64(tx, "srtp_rejected"), 0, "{context}");
    // Phone to callee: SDES-decrypted, DTLS-SRTP-encrypted by dialerd; and back.
    assert_phone_tone(&from_phone, &context);
    assert_callee_tone(&call.phone);
}

#[test]
fn srtp_a_dtls_callee_that_never_completes_the_handshake_ends_the_call_dtls_failed() {
    const RTP_BASE: u16 = 23400;
    let redis = RedisServer::start(&[]);
    // Its socket is bound but nobody answers the ClientHello.
    let silent = DtlsPeer::bind();
    let pbx = dtls_pbx(&silent);
    let dir = Scratch::new("srtp-dtls-timeout");
    let (d, _sip) = dialerd(&redis, &pbx, "reject", "", RTP_BASE, &dir);
    let mut events = Events::new(&redis);
    let to = format!("sip:bob@{}", pbx.local_addr());
    command_ok(
        &mut events,
        &redis,
        "dtls-lost-1",
        "originate",
        json!({"account": "acct-a", "to": to, "max_duration_secs": 120, "srtp": "dtls"}),
    );
    events.until(Duration::from_secs(10), |e| {
        e["type"] == "call.answered" && e["call_id"] == "dtls-lost-1"
    });
    let ended = events
        .try_until(Duration::from_secs(45), |e| {
            e["type"] == "call.ended" && e["call_id"] == "dtls-lost-1"
        })
        .unwrap_or_else(|| panic!("the call did not end:\n{}", d.log()));
    assert_eq!(ended["cause"], "dtls_failed", "{ended}");
    assert_eq!(ended["side"], "local", "{ended}");
    let failed = events.of("dtls-lost-1", "call.media");
    assert!(
        failed.iter().any(|e| e["report"] == "dtls_failed"),
        "{failed:#?}"
    );
    // The ClientHello was sent, and sent again.
    let mut buf = [0u8; 2048];
    silent.socket.set_nonblocking(true).unwrap();
    let mut hellos = 0;
    while let Ok((n, _)) = silent.socket.recv_from(&mut buf) {
        hellos += usize::from(is_dtls(&buf[..n]));
    }
    assert!(hellos >= 2, "{hellos} DTLS datagrams reached the callee");
}
