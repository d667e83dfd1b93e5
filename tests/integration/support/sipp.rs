//! Runs SIPp (Debian package `sip-tester`) with a scenario file and collects
//! its exit status and statistics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::scratch::Scratch;
use super::{ports, repo_root, require_program, wait_for};

/// SIPp's transport modes used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SippTransport {
    /// UDP, one socket.
    Udp,
    /// TCP, one connection.
    Tcp,
}

/// A scenario file under `tests/sipp/`.
pub fn scenario(name: &str) -> PathBuf {
    repo_root().join("tests/sipp").join(name)
}

/// A SIPp invocation being built.
#[derive(Debug)]
pub struct Sipp {
    scenario: PathBuf,
    remote: Option<SocketAddr>,
    port: u16,
    transport: SippTransport,
    calls: u32,
    timeout: Duration,
    keys: Vec<(String, String)>,
    extra: Vec<String>,
}

impl Sipp {
    /// A client that sends to `remote`.
    pub fn client(scenario: &Path, remote: SocketAddr) -> Self {
        Self::new(scenario, Some(remote))
    }

    /// A server that waits for requests on its port.
    pub fn server(scenario: &Path) -> Self {
        Self::new(scenario, None)
    }

    fn new(scenario: &Path, remote: Option<SocketAddr>) -> Self {
        Self {
            scenario: scenario.to_owned(),
            remote,
            port: ports::free_udp_tcp_port(),
            transport: SippTransport::Udp,
            calls: 1,
            timeout: Duration::from_secs(20),
            keys: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// Transport (default UDP).
    pub fn transport(mut self, transport: SippTransport) -> Self {
        self.transport = transport;
        self
    }

    /// Calls to run before exiting (default 1).
    pub fn calls(mut self, calls: u32) -> Self {
        self.calls = calls;
        self
    }

    /// SIPp's global timeout, after which it fails (default 20 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A `-key name value` substitution for `[name]` in the scenario.
    pub fn key(mut self, name: &str, value: &str) -> Self {
        self.keys.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Further command-line options, e.g. `["-au", "user", "-ap", "secret"]`
    /// (the credentials of a scenario's `[authentication]`).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Local address SIPp listens on.
    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts SIPp; for a server, returns once its socket is bound.
    pub fn spawn(self) -> SippRun {
        require_program("sipp", "sip-tester");
        let dir = Scratch::new("sipp");
        let mut cmd = Command::new("sipp");
        cmd.arg("-sf")
            .arg(&self.scenario)
            .args(["-i", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.calls.to_string()])
            .args([
                "-t",
                if self.transport == SippTransport::Udp {
                    "u1"
                } else {
                    "t1"
                },
            ])
            .arg("-timeout")
            .arg(format!("{}s", self.timeout.as_secs().max(1)))
            .args(["-timeout_error", "-nostdin"])
            .args(["-trace_stat", "-stf"])
            .arg(dir.path().join("stats.csv"))
            .args(["-trace_err", "-error_file"])
            .arg(dir.path().join("errors.log"))
            .args(["-trace_msg", "-message_file"])
            .arg(dir.path().join("messages.log"))
            .current_dir(dir.path())
            .args(
                self.keys
                    .iter()
                    .flat_map(|(k, v)| ["-key", k.as_str(), v.as_str()]),
            )
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("stderr.log"))
                    .expect("create SIPp stderr log"),
            ));
        if let Some(remote) = self.remote {
            cmd.arg(remote.to_string());
        }
        let child = cmd.spawn().expect("spawn sipp");
        let run = SippRun {
            child: Some(child),
            dir,
            local: self.local_addr(),
            limit: self.timeout + Duration::from_secs(10),
        };
        if self.remote.is_none() {
            let udp = self.transport == SippTransport::Udp;
            let bound = wait_for(Duration::from_secs(5), || {
                ports::is_bound(self.port, udp).then_some(())
            });
            assert!(
                bound.is_some(),
                "SIPp server did not bind port {}: {}",
                self.port,
                run.diagnostics()
            );
        }
        run
    }
}

/// A running SIPp.
#[derive(Debug)]
pub struct SippRun {
    child: Option<Child>,
    dir: Scratch,
    local: SocketAddr,
    limit: Duration,
}

/// What a finished SIPp reported.
#[derive(Debug, Clone)]
pub struct SippResult {
    /// Exit status: 0 all calls succeeded, 1 some failed, 97 internal
    /// command, 99 no call processed, 255 fatal; `None` when killed.
    pub exit_code: Option<i32>,
    /// Final statistics row, by column name (e.g. `SuccessfulCall(C)`).
    pub stats: HashMap<String, String>,
    /// SIPp's error log.
    pub errors: String,
    /// Every message SIPp sent and received.
    pub messages: String,
}

impl SippResult {
    /// A cumulative counter from the statistics, 0 when absent.
    pub fn count(&self, column: &str) -> u64 {
        self.stats
            .get(column)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Calls that ended successfully.
    pub fn successful(&self) -> u64 {
        self.count("SuccessfulCall(C)")
    }

    /// Calls that failed.
    pub fn failed(&self) -> u64 {
        self.count("FailedCall(C)")
    }
}

impl SippRun {
    /// Where SIPp listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Waits for SIPp to exit (killing it past its timeout plus a margin)
    /// and collects the result.
    pub fn wait(mut self) -> SippResult {
        let status = self.wait_status();
        SippResult {
            exit_code: status.and_then(|s| s.code()),
            stats: parse_stats(&self.dir.read("stats.csv")),
            errors: self.dir.read("errors.log"),
            messages: self.dir.read("messages.log"),
        }
    }

    fn wait_status(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let end = Instant::now() + self.limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= end {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops SIPp now (for scenarios that never end) and collects the result.
    pub fn stop(mut self) -> SippResult {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
        }
        self.wait()
    }

    /// Logs for a failure message.
    pub fn diagnostics(&self) -> String {
        format!(
            "stderr: {}\nerrors: {}",
            self.dir.read("stderr.log"),
            self.dir.read("errors.log")
        )
    }
}

impl Drop for SippRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One message in SIPp's message log.
#[derive(Debug, Clone)]
pub struct Logged {
    /// Seconds since midnight (the log's clock).
    pub at: f64,
    /// Whether SIPp received it (else sent it).
    pub received: bool,
    /// The message text.
    pub text: String,
}

impl Logged {
    /// The first line.
    pub fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or_default()
    }

    /// A header's value, matched case-insensitively on the name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.text.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Parses SIPp's `-trace_msg` log.
pub fn logged(messages: &str) -> Vec<Logged> {
    let mut out = Vec::new();
    for block in messages
        .split("----------------------------------------------- ")
        .skip(1)
    {
        let mut lines = block.splitn(3, '\n');
        let stamp = lines.next().unwrap_or_default();
        let kind = lines.next().unwrap_or_default();
        let text = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches('\n')
            .to_owned();
        let time = stamp.split_whitespace().nth(1).unwrap_or("0:0:0");
        let at = time.split(':').fold(0.0, |acc, part| {
            acc * 60.0 + part.parse::<f64>().unwrap_or(0.0)
        });
        out.push(Logged {
            at,
            received: kind.contains("received"),
            text,
        });
    }
    out
}

/// The last row of SIPp's `;`-separated statistics file, keyed by header.
fn parse_stats(csv: &str) -> HashMap<String, String> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return HashMap::new();
    };
    let Some(last) = lines.next_back() else {
        return HashMap::new();
    };
    header
        .split(';')
        .map(str::to_owned)
        .zip(last.split(';').map(str::to_owned))
        .collect()
}
