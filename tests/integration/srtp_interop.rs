//! dialerd's SRTP transform against libsrtp2 (Debian `libsrtp2-dev`), both
//! ways, for every suite: RTP across a rollover-counter wrap, and SRTCP.
//! The libsrtp side is `tests/srtp/libsrtp_peer.c`, built here with `cc`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

use dialerd::media::srtp::{MasterKey, SrtpKeys, Suite, Transform, provider};

/// The peer, compiled once per test run into cargo's scratch directory for
/// integration tests.
fn peer_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // Built under a name of its own, then renamed into place: test
        // processes running at once never run a half-written binary.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let out = dir.join("libsrtp_peer");
        let building = dir.join(format!("libsrtp_peer.{}", std::process::id()));
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/srtp/libsrtp_peer.c");
        let flags = Command::new("pkg-config")
            .args(["--cflags", "--libs", "libsrtp2"])
            .output()
            .expect("pkg-config (scripts/setup.sh installs it)");
        let flags = String::from_utf8(flags.stdout).unwrap();
        let status = Command::new("cc")
            .args(["-O2", "-Wall", "-Wextra", "-o"])
            .arg(&building)
            .arg(source)
            .args(flags.split_whitespace())
            .status()
            .expect("cc (scripts/setup.sh installs libsrtp2-dev and a compiler)");
        assert!(status.success(), "libsrtp_peer did not build");
        std::fs::rename(&building, &out).unwrap();
        out
    })
}

struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn start(suite: Suite, direction: &str, key: &MasterKey) -> Peer {
        let key_hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let mut child = Command::new(peer_binary())
            .args([suite.name(), direction, &key_hex])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Peer {
            child,
            stdin,
            stdout,
        }
    }

    /// One packet through libsrtp: `Ok(bytes)` or `Err(status)`.
    fn exchange(&mut self, kind: &str, packet: &[u8]) -> Result<Vec<u8>, String> {
        let hex: String = packet.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(self.stdin, "{kind} {hex}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let line = line.trim();
        match line.strip_prefix("ok ") {
            Some(hex) => Ok((0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect()),
            None => Err(line.to_owned()),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rtp(seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..160).map(|i| (i as u8).wrapping_mul(seq as u8 | 1)));
    p
}

fn rtcp(ssrc: u32, n: u8) -> Vec<u8> {
    let mut p = vec![0x81, 201, 0, 7];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..24).map(|i| i ^ n));
    p
}

const SUITES: [Suite; 3] = [
    Suite::AesCm128HmacSha1_80,
    Suite::AesCm128HmacSha1_32,
    Suite::AeadAes128Gcm,
];

fn key_for(suite: Suite) -> MasterKey {
    MasterKey::new(
        (0..(16 + suite.salt_len()) as u8)
            .map(|i| i * 7 + 3)
            .collect(),
    )
}

fn ours(suite: Suite, key: &MasterKey) -> Transform {
    let keys = SrtpKeys {
        suite,
        send: key.clone(),
        receive: key.clone(),
    };
    Transform::new(&keys, provider().unwrap().as_ref()).unwrap()
}

/// Sequence numbers across a wrap: 65500..65535 then 0..40 (ROC 0 then 1).
fn wrapping_seqs() -> impl Iterator<Item = u16> {
    (65500u32..65612).map(|n| n as u16)
}

#[test]
fn dialerd_protects_and_libsrtp_unprotects() {
    for suite in SUITES {
        let key = key_for(suite);
        let mut dialerd = ours(suite, &key);
        let mut libsrtp = Peer::start(suite, "unprotect", &key);
        for (n, seq) in wrapping_seqs().enumerate() {
            let plain = rtp(seq, n as u32 * 160, 0x1122_3344);
            let mut buf = [0u8; 1500];
            buf[..plain.len()].copy_from_slice(&plain);
            let len = dialerd.protect_rtp(&mut buf, plain.len()).unwrap();
            let back = libsrtp.exchange("rtp", &buf[..len]);
            assert_eq!(back.as_deref(), Ok(&plain[..]), "{suite:?} seq {seq}");
        }
        for n in 0..5 {
            let plain = rtcp(0x1122_3344, n);
            let mut buf = [0u8; 1500];
            buf[..plain.len()].copy_from_slice(&plain);
            let len = dialerd.protect_rtcp(&mut buf, plain.len()).unwrap();
            let back = libsrtp.exchange("rtcp", &buf[..len]);
            assert_eq!(back.as_deref(), Ok(&plain[..]), "{suite:?} SRTCP {n}");
            // A replayed SRTCP packet is refused by libsrtp too.
            if n == 4 {
                assert!(libsrtp.exchange("rtcp", &buf[..len]).is_err());
            }
        }
    }
}

#[test]
fn libsrtp_protects_and_dialerd_unprotects() {
    for suite in SUITES {
        let key = key_for(suite);
        let mut dialerd = ours(suite, &key);
        let mut libsrtp = Peer::start(suite, "protect", &key);
        for (n, seq) in wrapping_seqs().enumerate() {
            let plain = rtp(seq, n as u32 * 160, 0x5566_7788);
            let protected = libsrtp.exchange("rtp", &plain).unwrap();
            assert_eq!(protected.len(), plain.len() + suite.rtp_overhead());
            let mut buf = [0u8; 1500];
            buf[..protected.len()].copy_from_slice(&protected);
            let len = dialerd
                .unprotect_rtp(&mut buf, protected.len())
                .unwrap_or_else(|e| panic!("{suite:?} seq {seq}: {e}"));
            assert_eq!(&buf[..len], &plain[..], "{suite:?} seq {seq}");
            // Replays of what libsrtp protected are refused by us.
            if seq == 3 {
                buf[..protected.len()].copy_from_slice(&protected);
                assert!(dialerd.unprotect_rtp(&mut buf, protected.len()).is_err());
            }
        }
        for n in 0..5 {
            let plain = rtcp(0x5566_7788, n);
            let protected = libsrtp.exchange("rtcp", &plain).unwrap();
            assert_eq!(protected.len(), plain.len() + suite.rtcp_overhead());
            let mut buf = [0u8; 1500];
            buf[..protected.len()].copy_from_slice(&protected);
            let len = dialerd.unprotect_rtcp(&mut buf, protected.len()).unwrap();
            assert_eq!(&buf[..len], &plain[..], "{suite:?} SRTCP {n}");
        }
    }
}

#[test]
fn a_wrong_key_fails_authentication_on_both_sides() {
    let suite = Suite::AesCm128HmacSha1_80;
    let key = key_for(suite);
    let other = MasterKey::new(vec![0x42; 30]);
    let mut libsrtp = Peer::start(suite, "unprotect", &other);
    let mut dialerd = ours(suite, &key);
    let plain = rtp(1, 0, 9);
    let mut buf = [0u8; 1500];
    buf[..plain.len()].copy_from_slice(&plain);
    let len = dialerd.protect_rtp(&mut buf, plain.len()).unwrap();
    // srtp_err_status_auth_fail is 7.
    assert_eq!(
        libsrtp.exchange("rtp", &buf[..len]),
        Err("err 7".to_owned())
    );
    let mut protector = Peer::start(suite, "protect", &other);
    let protected = protector.exchange("rtp", &plain).unwrap();
    buf[..protected.len()].copy_from_slice(&protected);
    assert!(dialerd.unprotect_rtp(&mut buf, protected.len()).is_err());
}
