//! Kamailio (Debian packages `kamailio` and `kamailio-tls-modules`) as a
//! TLS registrar and proxy, running our own configuration
//! (`tests/kamailio/kamailio.cfg`) in the foreground on free loopback
//! ports, with its certificate, control socket, pid file and log in a
//! scratch directory. Stopped on drop; its log is printed when a test
//! panics while it runs.
//!
//! The configuration takes its ports, file paths and passwords as
//! pre-processor defines on the command line (`-A NAME=value`); nothing is
//! rendered from a template.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::scratch::Scratch;
use super::tls::TestPki;
use super::{ports, repo_root, wait_for};

/// The dialerd account's user name in the configuration.
pub const DIALER_USER: &str = "dialer";
/// Its password (a test value, given to Kamailio at start).
pub const DIALER_PASSWORD: &str = "dialer-test-only";
/// The SIPp phone's user name.
pub const PHONE_USER: &str = "phone";
/// Its password.
pub const PHONE_PASSWORD: &str = "phone-test-only";

/// How long Kamailio may take to answer its first OPTIONS.
const START_LIMIT: Duration = Duration::from_secs(10);

/// Directories searched for the `kamailio` and `kamcmd` binaries besides
/// `PATH` (Debian installs them in /usr/sbin, which a non-root `PATH` may
/// lack).
const SBIN: [&str; 2] = ["/usr/sbin", "/usr/local/sbin"];

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether the Kamailio binary is installed. Tests call this first and,
/// when it is missing, print why they skip and return.
pub fn kamailio_available() -> bool {
    if find_program("kamailio").is_some() {
        return true;
    }
    eprintln!(
        "SKIPPED: kamailio is not installed; run scripts/setup.sh (installs the Debian packages \
         kamailio and kamailio-tls-modules)"
    );
    false
}

/// The configuration file under `tests/kamailio/`.
pub fn config_file() -> PathBuf {
    repo_root().join("tests/kamailio/kamailio.cfg")
}

/// A running Kamailio, stopped on drop.
pub struct Kamailio {
    child: Option<Child>,
    sip_port: u16,
    tls_port: u16,
    pki: TestPki,
    dir: Scratch,
}

impl Kamailio {
    /// Generates a certificate for 127.0.0.1 (signed by a test CA), writes
    /// the TLS configuration, starts Kamailio on free ports and waits until
    /// it answers an OPTIONS over UDP and listens for TLS. If another
    /// process took a port in the meantime, tries again on new ones.
    pub fn start() -> Self {
        for _ in 0..3 {
            let mut k = Self::spawn(TestPki::generate());
            match k.wait_ready() {
                Ok(()) => return k,
                Err(why) => {
                    let log = k.log();
                    let taken = log.contains("Address already in use");
                    assert!(taken, "Kamailio did not start: {why}\nlog:\n{log}");
                }
            }
        }
        panic!("Kamailio found its ports taken three times in a row");
    }

    fn spawn(pki: TestPki) -> Self {
        let dir = Scratch::new("kamailio");
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).expect("create Kamailio runtime dir");
        let sip_port = ports::free_udp_tcp_port();
        let tls_port = loop {
            let p = ports::free_tcp_port();
            if p != sip_port {
                break p;
            }
        };
        let tls_cfg = dir.write(
            "tls.cfg",
            &format!(
                "# Written by tests/integration/support/kamailio.rs.\n\
                 [server:default]\nmethod = TLSv1.2+\nverify_certificate = no\n\
                 require_certificate = no\ncertificate = {}\nprivate_key = {}\n\n\
                 # Requests to clients reuse their connections; a new one (not\n\
                 # expected) would not check the far end.\n\
                 [client:default]\nmethod = TLSv1.2+\nverify_certificate = no\n\
                 require_certificate = no\n",
                pki.cert.display(),
                pki.key.display()
            ),
        );
        let ctl = format!("unix:{}", run.join("kamailio_ctl").display());
        let log =
            std::fs::File::create(dir.path().join("kamailio.log")).expect("create Kamailio log");
        let out = log.try_clone().expect("clone Kamailio log handle");
        let bin = find_program("kamailio").expect("kamailio installed");
        let mut cmd = Command::new(bin);
        cmd.arg("-f")
            .arg(config_file())
            // Foreground (no daemon), log to stderr, SCTP off.
            .args(["-DD", "-E", "-S"])
            // Shared and private memory, MB.
            .args(["-m", "64", "-M", "8"])
            .arg("-Y")
            .arg(&run)
            .arg("-P")
            .arg(run.join("kamailio.pid"))
            .arg("-w")
            .arg(dir.path())
            .arg("-A")
            .arg(format!("SIP_PORT={sip_port}"))
            .arg("-A")
            .arg(format!("TLS_PORT={tls_port}"))
            .arg("-A")
            .arg(format!("TLS_CONFIG=\"{}\"", tls_cfg.display()))
            .arg("-A")
            .arg(format!("CTL_SOCKET=\"{ctl}\""))
            .arg("-A")
            .arg(format!("DIALER_PASSWORD=\"{DIALER_PASSWORD}\""))
            .arg("-A")
            .arg(format!("PHONE_PASSWORD=\"{PHONE_PASSWORD}\""))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(log));
        // Its own process group: the main process forks its workers, and
        // drop ends the whole group (no orphaned workers if the main process
        // dies first).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("spawn kamailio");
        Self {
            child: Some(child),
            sip_port,
            tls_port,
            pki,
            dir,
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| e.to_string())?;
        let end = Instant::now() + START_LIMIT;
        let mut n = 0u32;
        while Instant::now() < end {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("kamailio exited: {status}"));
            }
            n += 1;
            if options_answered(&socket, self.sip_addr(), n)
                && ports::is_bound(self.tls_port, false)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("no 200 to OPTIONS within {START_LIMIT:?}"))
    }

    /// UDP and TCP address (127.0.0.1).
    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sip_port))
    }

    /// TLS address (127.0.0.1).
    pub fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tls_port))
    }

    /// The registrar URI for dialerd: `sips:127.0.0.1:<tls port>`.
    pub fn registrar_uri(&self) -> String {
        format!("sips:{}", self.tls_addr())
    }

    /// The CA that signed Kamailio's certificate (for dialerd's
    /// `tls_ca_file`).
    pub fn ca_file(&self) -> &Path {
        &self.pki.ca
    }

    /// Everything Kamailio logged so far.
    pub fn log(&self) -> String {
        self.dir.read("kamailio.log")
    }

    /// The lines of the log written by the configuration's `xlog` calls
    /// (the start-up chatter of the modules left out).
    pub fn script_log(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("<script>:"))
            .map(str::to_owned)
            .collect()
    }

    /// Runs `kamcmd` over the private control socket with `args` (e.g.
    /// `["ul.dump"]`) and returns its output.
    pub fn kamcmd(&self, args: &[&str]) -> String {
        let bin = find_program("kamcmd").expect("kamcmd (Debian package kamailio) installed");
        let socket = format!(
            "unix:{}",
            self.dir.path().join("run/kamailio_ctl").display()
        );
        let out = Command::new(bin)
            .arg("-s")
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run kamcmd");
        assert!(
            out.status.success(),
            "kamcmd {args:?} failed: {}{}",
            super::text(&out.stdout),
            super::text(&out.stderr)
        );
        super::text(&out.stdout)
    }

    /// The location table (`kamcmd ul.dump`).
    pub fn ul_dump(&self) -> String {
        self.kamcmd(&["ul.dump"])
    }

    /// Waits up to `limit` for a line of the script log containing all of
    /// `parts`.
    pub fn wait_script_line(&self, limit: Duration, parts: &[&str]) -> Option<String> {
        wait_for(limit, || {
            self.script_log()
                .into_iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
        })
    }

    /// Stops the process group: SIGTERM to the main process (it stops its
    /// workers), then, once it has exited but before it is reaped (so its
    /// id cannot have been reused), SIGKILL to whatever is left of its
    /// group (spawned as a group leader, the group id is its process id).
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill")
            .args(["-s", "TERM", &pid])
            .stderr(Stdio::null())
            .status();
        let stat = format!("/proc/{pid}/stat");
        let exited = || {
            std::fs::read_to_string(&stat)
                .ok()
                .and_then(|s| Some(s.rsplit_once(") ")?.1.starts_with('Z')))
                .unwrap_or(true)
        };
        let _ = wait_for(Duration::from_secs(3), || exited().then_some(()));
        let group = format!("-{pid}");
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "----- Kamailio log ({}) -----\n{}\n----- end of Kamailio log -----",
                config_file().display(),
                self.log()
            );
        }
    }
}

/// Sends one OPTIONS to `to` and waits briefly for its 200.
fn options_answered(socket: &UdpSocket, to: SocketAddr, n: u32) -> bool {
    let Ok(local) = socket.local_addr() else {
        return false;
    };
    let request = format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKready{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:harness@{local}>;tag=ready\r\nTo: <sip:{to}>\r\n\
         Call-ID: kamailio-ready-{n}\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    if socket.send_to(request.as_bytes(), to).is_err() {
        return false;
    }
    let mut buf = [0u8; 4096];
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end {
        let Ok((len, _)) = socket.recv_from(&mut buf) else {
            return false;
        };
        let answer = String::from_utf8_lossy(buf.get(..len).unwrap_or_default());
        if answer.starts_with("SIP/2.0 200 ") && answer.contains(&format!("kamailio-ready-{n}")) {
            return true;
        }
    }
    false
}
