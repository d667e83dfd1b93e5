//! The dialerd binary as a child process with its HTTP port on loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::scratch::Scratch;
use super::{dialerd_bin, http, ports, repo_root, wait_for};

/// A running `dialerd run`, killed on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    http: SocketAddr,
    dir: Scratch,
}

impl Daemon {
    /// Starts `dialerd run` with `args` (after `run`) and `env`, the HTTP
    /// server on a free port and the repository's sip-profiles. Does not wait.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_http_on(Ipv4Addr::LOCALHOST.into(), args, env)
    }

    /// Like [`Daemon::spawn`] with the HTTP server bound on `ip` (with
    /// `0.0.0.0`, [`Daemon::http`] is its loopback address).
    pub fn spawn_http_on(ip: IpAddr, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = Scratch::new("daemon");
        let port = ports::free_tcp_port();
        let bind = SocketAddr::new(ip, port);
        let http = if ip.is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], port))
        } else {
            bind
        };
        let stderr =
            std::fs::File::create(dir.path().join("stderr.log")).expect("create daemon log");
        let child = Command::new(dialerd_bin())
            .arg("run")
            .args(args)
            .arg("--profile-dir")
            .arg(repo_root().join("sip-profiles"))
            .env_remove("RUST_LOG")
            .env("DIALERD__HTTP__BIND", bind.to_string())
            .env("DIALERD__REDIS__ENABLED", "false")
            .env(
                "DIALERD__SIP__UDP_LISTEN",
                format!("127.0.0.1:{}", ports::free_udp_tcp_port()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn dialerd");
        Self {
            child: Some(child),
            http,
            dir,
        }
    }

    /// Like [`Daemon::spawn`], then waits until `/healthz` answers 200. If
    /// another process took the free HTTP port in the meantime, tries again
    /// on a new one.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_http_on(Ipv4Addr::LOCALHOST.into(), args, env)
    }

    /// Like [`Daemon::start`] with the HTTP server bound on `ip`.
    pub fn start_http_on(ip: IpAddr, args: &[&str], env: &[(&str, &str)]) -> Self {
        for _ in 0..3 {
            let mut d = Self::spawn_http_on(ip, args, env);
            let up = wait_for(Duration::from_secs(20), || {
                if d.has_exited() {
                    return Some(false);
                }
                http::get(d.http, "/healthz")
                    .ok()
                    .filter(|r| r.status == 200)
                    .map(|_| true)
            });
            if up == Some(true) {
                return d;
            }
            let log = d.log();
            assert!(
                log.contains("http.bind") && log.contains("in use"),
                "dialerd did not become healthy; log:\n{log}"
            );
        }
        panic!("dialerd found its HTTP port taken three times in a row");
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The HTTP status server's address.
    pub fn http(&self) -> SocketAddr {
        self.http
    }

    /// Waits until `/readyz` answers 200: health comes up with the HTTP
    /// server, readiness only once the SIP core runs.
    pub fn wait_ready(&self, within: Duration) {
        let ready = wait_for(within, || {
            http::get(self.http, "/readyz")
                .ok()
                .filter(|r| r.status == 200)
        });
        assert!(
            ready.is_some(),
            "dialerd never became ready; log:\n{}",
            self.log()
        );
    }

    /// Everything dialerd logged so far.
    pub fn log(&self) -> String {
        self.dir.read("stderr.log")
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("dialerd already reaped");
        let pid = child.id();
        let ok = Command::new("kill")
            .args(["-s", &signal.to_string(), &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -s {signal} {pid} failed");
    }

    fn has_exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Waits up to `limit` for the process to exit; returns its status and
    /// how long it took, or `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let start = Instant::now();
        let child = self.child.as_mut()?;
        let status = wait_for(limit, || child.try_wait().ok().flatten())?;
        self.child = None;
        Some((status, start.elapsed()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
