//! Account leases across replicas, against a real redis-server and Kamailio
//! as the TLS registrar: two dialerd processes share two accounts; the
//! bindings Kamailio holds (`ul.dump`, sampled every 100 ms throughout)
//! never show an account registered twice, whether a holder is killed with
//! SIGKILL, drained, or Redis stops answering or loses its data. Skips,
//! saying so, when Kamailio is not installed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::kamailio::{DIALER_PASSWORD, Kamailio, kamailio_available};
use crate::support::redis::RedisServer;
use crate::support::scratch::Scratch;
use crate::support::{http, wait_for};

/// The lease TTL of these tests, seconds.
const TTL: u64 = 6;
/// Account names and their Kamailio users.
const ACCOUNTS: [(&str, &str); 2] = [("one", "dialer"), ("two", "dialer2")];

/// Kamailio's bindings, by AoR.
type Bindings = HashMap<String, Vec<String>>;

fn bindings(dump: &str) -> Bindings {
    let mut out = Bindings::new();
    let mut aor = None;
    for line in dump.lines().map(str::trim) {
        if let Some(a) = line.strip_prefix("AoR: ") {
            aor = Some(a.to_owned());
            out.entry(a.to_owned()).or_default();
        } else if let (Some(addr), Some(a)) = (line.strip_prefix("Address: "), &aor) {
            out.entry(a.clone()).or_default().push(addr.to_owned());
        }
    }
    out
}

/// Stops the monitor when the test body ends, panicking or not.
struct StopOnDrop<'a>(&'a Monitor);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// Samples Kamailio's bindings every 100 ms while the test runs.
struct Monitor {
    samples: Mutex<Vec<(Instant, Bindings)>>,
    stop: AtomicBool,
}

impl Monitor {
    fn new() -> Self {
        Self {
            samples: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        }
    }

    fn run(&self, kamailio: &Kamailio) {
        while !self.stop.load(Ordering::Relaxed) {
            let b = bindings(&kamailio.ul_dump());
            self.samples.lock().unwrap().push((Instant::now(), b));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn latest(&self) -> Bindings {
        self.samples
            .lock()
            .unwrap()
            .last()
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    }

    /// Waits until `f` holds for the latest sample.
    fn wait(&self, limit: Duration, what: &str, f: impl Fn(&Bindings) -> bool) -> Instant {
        wait_for(limit, || {
            let samples = self.samples.lock().unwrap();
            samples.last().filter(|(_, b)| f(b)).map(|(t, _)| *t)
        })
        .unwrap_or_else(|| {
            panic!(
                "{what} not seen within {limit:?}; last: {:?}",
                self.latest()
            )
        })
    }

    /// When `aor` was last seen bound to exactly `addrs`.
    fn last_with(&self, aor: &str, addrs: &[String]) -> Option<Instant> {
        let samples = self.samples.lock().unwrap();
        samples
            .iter()
            .rev()
            .find(|(_, b)| b.get(aor).map(Vec::as_slice) == Some(addrs))
            .map(|(t, _)| *t)
    }

    /// No AoR ever had two bindings.
    fn assert_never_doubled(&self) {
        let samples = self.samples.lock().unwrap();
        assert!(!samples.is_empty());
        for (_, b) in samples.iter() {
            for (aor, addrs) in b {
                assert!(addrs.len() <= 1, "{aor} registered twice: {addrs:?}");
            }
        }
    }
}

fn count(b: &Bindings, aor: &str) -> usize {
    b.get(aor).map_or(0, Vec::len)
}

fn all_registered_once(b: &Bindings) -> bool {
    ACCOUNTS.iter().all(|(_, user)| count(b, user) == 1)
}

/// A dialerd replica `id` with both accounts under leases.
fn replica(redis: &RedisServer, kamailio: &Kamailio, dir: &Scratch, id: &str) -> Daemon {
    let mut toml = format!(
        "[instance]\nid = \"{id}\"\n[redis]\nenabled = true\nurl = \"{}\"\nkeepalive_secs = 1\n\
         response_timeout_secs = 1\n[lease]\nenabled = true\nttl_secs = {TTL}\n\
         [shutdown]\ndeadline_secs = 5\n",
        redis.url()
    );
    for (name, user) in ACCOUNTS {
        toml.push_str(&format!(
            "[[accounts]]\nname = \"{name}\"\nregistrar = \"{}\"\nusername = \"{user}\"\n\
             password = \"{DIALER_PASSWORD}\"\ntransport = \"tls\"\ntls_ca_file = {:?}\n\
             expires_secs = 300\n",
            kamailio.registrar_uri(),
            kamailio.ca_file().to_str().unwrap()
        ));
    }
    let config = dir.write(&format!("{id}.toml"), &toml);
    Daemon::start(
        &["--config", config.to_str().unwrap()],
        &[
            ("DIALERD__REDIS__ENABLED", "true"),
            ("DIALERD__REGISTRATION__BACKOFF_INITIAL_MS", "200"),
        ],
    )
}

fn status(d: &Daemon) -> Value {
    http::get(d.http(), "/status")
        .map(|r| r.json())
        .unwrap_or(Value::Null)
}

/// Accounts active on `d`, by its /status leases.
fn active(d: &Daemon) -> Vec<String> {
    status(d)["leases"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|x| x["role"] == "active")
                .filter_map(|x| x["account"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Both replicas up, each account registered once, one account each.
fn spread(
    redis: &RedisServer,
    kamailio: &Kamailio,
    dir: &Scratch,
    monitor: &Monitor,
) -> [Daemon; 2] {
    let a = replica(redis, kamailio, dir, "a");
    let b = replica(redis, kamailio, dir, "b");
    // The first acquisition waits a TTL (no fence counters yet).
    monitor.wait(
        Duration::from_secs(TTL * 4),
        "both accounts registered",
        all_registered_once,
    );
    let spread = wait_for(Duration::from_secs(TTL * 4), || {
        (active(&a).len() == 1 && active(&b).len() == 1).then_some(())
    });
    assert!(
        spread.is_some(),
        "one account each: a {:?}, b {:?}\n{}\n{}",
        status(&a)["leases"],
        status(&b)["leases"],
        a.log(),
        b.log()
    );
    // The standby side names the holder (once it has looked again).
    let named = wait_for(Duration::from_secs(TTL), || {
        let leases = status(&a)["leases"].clone();
        let standby = leases
            .as_array()
            .and_then(|l| l.iter().find(|x| x["role"] == "standby"))
            .cloned()?;
        (standby["holder"] == "b").then_some(())
    });
    assert!(named.is_some(), "{}", status(&a)["leases"]);
    [a, b]
}

/// Kamailio, Redis and two replicas sharing the accounts, one each, with
/// the bindings sampled throughout `body` and never doubled; skips without
/// Kamailio.
fn with_two_replicas(name: &str, body: impl FnOnce(&mut RedisServer, &Monitor, [Daemon; 2])) {
    if !kamailio_available() {
        eprintln!("SKIP: kamailio is not installed (scripts/setup.sh installs it)");
        return;
    }
    let kamailio = Kamailio::start();
    let mut redis = RedisServer::start(&[]);
    let dir = Scratch::new(name);
    let monitor = Monitor::new();
    std::thread::scope(|s| {
        s.spawn(|| monitor.run(&kamailio));
        let _stop = StopOnDrop(&monitor);
        let replicas = spread(&redis, &kamailio, &dir, &monitor);
        body(&mut redis, &monitor, replicas);
    });
    monitor.assert_never_doubled();
}

fn user_of(account: &str) -> &'static str {
    ACCOUNTS
        .iter()
        .find(|(n, _)| *n == account)
        .map_or("", |(_, u)| u)
}

#[test]
fn a_killed_holder_is_replaced_within_the_ttl_and_no_account_is_ever_registered_twice() {
    with_two_replicas("leases-kill", |_redis, monitor, [a, b]| {
        let account = active(&a).pop().unwrap();
        let user = user_of(&account);
        let before = monitor.latest().get(user).cloned().unwrap_or_default();
        a.signal(libc::SIGKILL);
        let killed = Instant::now();
        // b registers it: a different Contact, and still one binding.
        let taken = monitor.wait(
            Duration::from_secs(TTL + 15),
            "the account registered by b",
            |bn| count(bn, user) == 1 && bn.get(user) != Some(&before),
        );
        let took = taken.saturating_duration_since(killed);
        assert!(
            took <= Duration::from_secs(TTL + 5),
            "b took {account} over {took:?} after the kill (TTL {TTL} s)\n{}",
            b.log()
        );
        assert_eq!(active(&b).len(), 2, "{}", status(&b));
        assert!(
            b.log()
                .contains("removed the binding the previous holder left"),
            "{}",
            b.log()
        );
        drop(a);
    });
}

#[test]
fn a_drained_holder_hands_over_at_once_and_exits_0() {
    with_two_replicas("leases-drain", |_redis, monitor, [mut a, b]| {
        let account = active(&a).pop().unwrap();
        let user = user_of(&account);
        let before = monitor.latest().get(user).cloned().unwrap_or_default();
        let r = http::post(a.http(), "/drain").unwrap();
        assert_eq!(r.status, 202, "{}", r.body);
        // b's binding replaces a's; the hand-over may be quicker than the
        // sampling, so the gap is bounded by the last sample showing a's
        // binding and the first showing b's.
        let back = monitor.wait(Duration::from_secs(15), "b's registration", |bn| {
            count(bn, user) == 1 && bn.get(user) != Some(&before)
        });
        let gone = monitor
            .last_with(user, &before)
            .expect("a's binding was sampled");
        let gap = back.saturating_duration_since(gone);
        assert!(
            gap <= Duration::from_secs(5),
            "the hand-over left {account} unregistered for up to {gap:?}"
        );
        let (exit, _) = a
            .wait_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("a did not exit:\n{}", a.log()));
        assert_eq!(exit.code(), Some(0), "{}", a.log());
        assert_eq!(active(&b).len(), 2, "{}", status(&b));
        assert!(
            !b.log()
                .contains("removed the binding the previous holder left"),
            "a clean hand-over leaves no binding behind"
        );
    });
}

#[test]
fn with_redis_paused_or_emptied_no_account_is_ever_registered_twice() {
    with_two_replicas("leases-redis", |redis, monitor, [a, b]| {
        // Redis answers nobody for 4 TTLs: the leases cannot be renewed,
        // so both replicas give their accounts up.
        let pause = (TTL * 4 * 1000).to_string();
        let mut c = redis.client().unwrap();
        c.command(&["CLIENT", "PAUSE", &pause, "ALL"]).unwrap();
        monitor.wait(
            Duration::from_secs(TTL * 3),
            "every account unregistered",
            |bn| ACCOUNTS.iter().all(|(_, u)| count(bn, u) == 0),
        );
        // Back: every account registered again, once.
        monitor.wait(
            Duration::from_secs(TTL * 8),
            "re-registered after the pause",
            all_registered_once,
        );
        // Redis loses its data: the leases and fence counters are gone; a
        // free lease waits a TTL before anyone takes it.
        redis.restart(&[]);
        std::thread::sleep(Duration::from_secs(TTL * 2));
        let again = wait_for(Duration::from_secs(TTL * 8), || {
            all_registered_once(&monitor.latest()).then_some(())
        });
        assert!(
            again.is_some(),
            "re-registered after the restart; last {:?}\na:\n{}\nb:\n{}",
            monitor.latest(),
            a.log(),
            b.log()
        );
        let held = active(&a).len() + active(&b).len();
        assert_eq!(held, 2, "{}\n{}", status(&a), status(&b));
    });
}
