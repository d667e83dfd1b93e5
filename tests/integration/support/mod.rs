//! Test support: real peers (redis-server, SIPp, Kamailio, the dialerd
//! binary) started on free loopback ports in scratch directories, and
//! stopped on drop.

pub mod daemon;
pub mod g711;
pub mod http;
pub mod kamailio;
pub mod live;
pub mod ports;
pub mod proxy;
pub mod redis;
pub mod relay;
pub mod scratch;
pub mod sipp;
pub mod tls;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The dialerd binary built for this test run.
pub fn dialerd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dialerd"))
}

/// Runs `dialerd probe` with `args`.
pub fn probe(args: &[&str]) -> std::process::Output {
    std::process::Command::new(dialerd_bin())
        .arg("probe")
        .args(args)
        .output()
        .expect("run dialerd probe")
}

/// Process output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `probe` every 50 ms until it returns `Some`, or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fails the test with a clear message when a required program is missing.
pub fn require_program(name: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: run scripts/setup.sh (installs the Debian package {package})"
    );
}
