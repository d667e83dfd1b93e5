//! `rediss://` against a real TLS-only redis-server: a CA file and an ACL
//! user (password from a file) connect, subscribe and answer commands, and
//! survive a restart on the same port; a wrong password or an untrusted CA
//! never connects, with a clear error that holds no password.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::control::{Listener, connected, numsub, reconnects};
use crate::support::daemon::Daemon;
use crate::support::redis::{ACL_PASSWORD, ACL_USER, RedisServer, Resp, RespClient};
use crate::support::scratch::Scratch;
use crate::support::{http, wait_for};

/// The instance id in the configurations below.
const INSTANCE: &str = "tls";
const WRONG_PASSWORD: &str = "not-the-acl-pw-4711";

/// A dialerd configured by file: `[redis]` with the server's `rediss://` URL,
/// `tls_ca_file` (when given), `username` and `password_file`; its files are
/// named after `tag`.
fn daemon(
    redis: &RedisServer,
    dir: &Scratch,
    tag: &str,
    ca: Option<&Path>,
    password: &str,
) -> Daemon {
    let password_file = dir.write(&format!("{tag}.pw"), &format!("{password}\n"));
    let ca_line = ca.map_or(String::new(), |ca| format!("tls_ca_file = {ca:?}\n"));
    let config = dir.write(
        &format!("{tag}.toml"),
        &format!(
            "[instance]\nid = \"{INSTANCE}\"\n\
             [redis]\nenabled = true\nurl = \"{}\"\nkeepalive_secs = 1\n{ca_line}\
             username = \"{ACL_USER}\"\npassword_file = {password_file:?}\n",
            redis.url()
        ),
    );
    let config = path_text(&config);
    Daemon::start(
        &["--config", &config],
        &[("DIALERD__REDIS__ENABLED", "true")],
    )
}

fn path_text(p: &Path) -> String {
    p.to_str().expect("scratch paths are UTF-8").to_owned()
}

/// The instance's command channel.
fn cmd_channel() -> String {
    format!("dialer:{INSTANCE}:cmd")
}

/// Publishes a `kind` command with a `reply_to` on the instance's channel
/// (over TLS, as the test's admin user) and returns its result.
fn ask(redis: &RedisServer, id: &str, kind: &str) -> Value {
    let reply_to = "dialer:reply:tls";
    let mut replies = Listener::new(redis, reply_to);
    let command = json!({"v": 1, "id": id, "type": kind, "reply_to": reply_to}).to_string();
    let receivers = redis
        .client()
        .unwrap()
        .command(&["PUBLISH", &cmd_channel(), &command])
        .unwrap();
    assert_eq!(receivers, Resp::Integer(1), "dialerd is subscribed");
    replies
        .until(Duration::from_secs(10), |r| r["id"] == id)
        .pop()
        .unwrap()
}

/// How many connections the server has for ACL user `user`.
fn clients_of(redis: &RedisServer, user: &str) -> usize {
    let list = redis
        .client()
        .unwrap()
        .command(&["CLIENT", "LIST"])
        .unwrap()
        .text()
        .unwrap_or_default();
    let field = format!(" user={user} ");
    list.lines().filter(|l| l.contains(&field)).count()
}

fn subscribed(redis: &RedisServer, limit: Duration) -> bool {
    wait_for(limit, || (numsub(redis, &cmd_channel()) == 1).then_some(())).is_some()
}

#[test]
fn rediss_with_a_ca_file_and_an_acl_user_connects_answers_and_survives_a_restart() {
    let mut redis = RedisServer::start_secure(&[]);
    let ca = redis.secure().unwrap().ca_file().to_owned();
    let dir = Scratch::new("redis-tls");
    let d = daemon(&redis, &dir, "good", Some(&ca), ACL_PASSWORD);
    // Generous bounds: a loaded 2-core machine.
    wait_for(Duration::from_secs(20), || connected(&d).then_some(()))
        .unwrap_or_else(|| panic!("connected over TLS as the ACL user:\n{}", d.log()));
    let ready = wait_for(Duration::from_secs(10), || {
        http::get(d.http(), "/readyz")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert!(ready.is_some(), "ready:\n{}", d.log());
    // The server speaks only TLS, and dialerd's connections are the ACL user's
    // (writer, subscriber, stream reader).
    let plain = RespClient::connect(redis.port()).and_then(|mut c| c.command(&["PING"]));
    assert!(
        !matches!(plain, Ok(Resp::Simple(ref s)) if s == "PONG"),
        "plain TCP is refused: {plain:?}"
    );
    assert!(clients_of(&redis, ACL_USER) >= 3, "{}", d.log());
    assert!(subscribed(&redis, Duration::from_secs(20)), "{}", d.log());
    let pong = ask(&redis, "tls-ping-1", "ping");
    assert_eq!(pong["ok"], true, "{pong}");
    assert_eq!(pong["result"]["pong"], true, "{pong}");
    let status = ask(&redis, "tls-status-1", "status");
    assert_eq!(status["ok"], true, "{status}");
    assert_eq!(status["result"]["redis"]["connected"], true, "{status}");
    // Results are stored under the prefix the ACL user may write.
    let stored = redis
        .client()
        .unwrap()
        .command(&["EXISTS", &format!("dialer:{INSTANCE}:cmd:tls-ping-1")])
        .unwrap();
    assert_eq!(stored, Resp::Integer(1));

    redis.restart(&[]);
    let recovered = wait_for(Duration::from_secs(30), || {
        (reconnects(&d) >= 1 && connected(&d)).then_some(())
    });
    assert!(
        recovered.is_some(),
        "reconnected after a restart:\n{}",
        d.log()
    );
    assert!(subscribed(&redis, Duration::from_secs(20)), "{}", d.log());
    let pong = ask(&redis, "tls-ping-2", "ping");
    assert_eq!(pong["ok"], true, "{pong}");
    assert_eq!(pong["result"]["pong"], true, "{pong}");
    assert!(clients_of(&redis, ACL_USER) >= 3, "{}", d.log());

    let status = http::get(d.http(), "/status").unwrap().body;
    assert!(
        !status.contains(ACL_PASSWORD) && !d.log().contains(ACL_PASSWORD),
        "the password never shows"
    );
}

/// Waits for the daemon's first connection error; returns `/status`'s
/// `redis.last_error`.
fn first_error(d: &Daemon) -> String {
    wait_for(Duration::from_secs(20), || {
        let status = http::get(d.http(), "/status").ok()?.json();
        status["redis"]["last_error"].as_str().map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("a connection error:\n{}", d.log()))
}

#[test]
fn rediss_with_a_wrong_password_or_an_untrusted_ca_never_connects_and_says_why() {
    let redis = RedisServer::start_secure(&[]);
    let secure = redis.secure().unwrap();
    let ca = secure.ca_file().to_owned();
    let other_ca = secure.other_ca_file().to_owned();
    let dir = Scratch::new("redis-tls-refused");
    let wrong_password = daemon(&redis, &dir, "wrong-password", Some(&ca), WRONG_PASSWORD);
    let system_roots = daemon(&redis, &dir, "system-roots", None, ACL_PASSWORD);
    let other_root = daemon(&redis, &dir, "other-ca", Some(&other_ca), ACL_PASSWORD);

    let error = first_error(&wrong_password);
    assert!(
        error.contains("WRONGPASS") || error.contains("invalid username-password pair"),
        "{error}"
    );
    for (d, name) in [(&system_roots, "no CA file"), (&other_root, "another CA")] {
        let error = first_error(d);
        assert!(
            error.contains("invalid peer certificate"),
            "{name}: {error}"
        );
    }
    // Several attempts later (backoff 200 ms doubling to 2 s), still down.
    let daemons = [&wrong_password, &system_roots, &other_root];
    let connected_once = wait_for(Duration::from_secs(5), || {
        daemons.iter().find(|d| connected(d)).copied()
    });
    if let Some(d) = connected_once {
        panic!("connected:\n{}", d.log());
    }
    assert_eq!(
        clients_of(&redis, ACL_USER),
        0,
        "no connection authenticated"
    );
    for d in daemons {
        let ready = http::get(d.http(), "/readyz").unwrap();
        assert_eq!(ready.status, 503, "{}", ready.body);
        assert!(
            ready.body.contains("control channel not connected"),
            "{}",
            ready.body
        );
        let status = http::get(d.http(), "/status").unwrap().body;
        let log = d.log();
        assert!(
            log.contains("cannot connect to Redis"),
            "the log says it:\n{log}"
        );
        for secret in [ACL_PASSWORD, WRONG_PASSWORD] {
            assert!(
                !status.contains(secret) && !log.contains(secret),
                "no password in /status or the log:\n{status}\n{log}"
            );
        }
    }
}
