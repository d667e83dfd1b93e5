//! Loader tests: layering order, environment parsing and the key named by
//! each error.

use std::collections::HashMap;
use std::path::PathBuf;

use super::*;
use crate::config::{AddressSource, PortRange, REDACTED, render_effective};

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "dialerd-cfg-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sources(
    dir: &Scratch,
    file: Option<PathBuf>,
    profile: Option<&str>,
    env: &[(&str, &str)],
) -> Sources {
    Sources {
        config_file: file,
        profile: profile.map(str::to_owned),
        profile_dirs: vec![dir.0.clone()],
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
    }
}

fn one_problem(err: ConfigError) -> String {
    let problems = err.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    problems[0].clone()
}

#[test]
fn defaults_alone_are_valid() {
    let dir = Scratch::new("defaults");
    let s = load(&sources(&dir, None, None, &[])).unwrap();
    assert_eq!(s.sip.t1_ms, 500);
    assert_eq!(
        s.media.rtp_port_range,
        PortRange {
            start: 10000,
            end: 20000
        }
    );
    assert_eq!(s.redis.prefix, "dialer");
}

#[test]
fn file_then_profile_then_env() {
    let dir = Scratch::new("layers");
    let file = dir.write(
        "main.toml",
        "[sip]\nt1_ms = 300\nt2_ms = 5000\n[redis]\nprefix = \"file\"\n",
    );
    dir.write(
        "pbx.toml",
        "[sip]\nt1_ms = 400\n[account_defaults]\nexpires_secs = 120\n",
    );
    let env = [("DIALERD__SIP__T1_MS", "450"), ("OTHER", "x")];
    let s = load(&sources(&dir, Some(file.clone()), Some("pbx"), &env)).unwrap();
    assert_eq!(s.sip.t1_ms, 450, "env wins over profile");
    assert_eq!(s.sip.t2_ms, 5000, "file value kept where nothing overrides");
    assert_eq!(s.redis.prefix, "file");
    let s = load(&sources(&dir, Some(file), Some("pbx"), &[])).unwrap();
    assert_eq!(s.sip.t1_ms, 400, "profile wins over file");
    assert_eq!(s.account_defaults.expires_secs, Some(120));
}

#[test]
fn env_lists_and_nested_tables() {
    let dir = Scratch::new("envlist");
    let env = [
        ("DIALERD__SIP__UDP_LISTEN", "127.0.0.1:5070,[::1]:5070"),
        ("DIALERD__SIP__ALLOWED_PEERS", "10.0.0.0/8"),
        ("DIALERD__MEDIA__RTP_PORT_RANGE__START", "30000"),
        ("DIALERD__MEDIA__RTP_PORT_RANGE__END", "30100"),
        ("DIALERD__INSTANCE__ID", "dialer-7"),
    ];
    let s = load(&sources(&dir, None, None, &env)).unwrap();
    assert_eq!(s.sip.udp_listen.len(), 2);
    assert_eq!(s.sip.udp_listen[1].to_string(), "[::1]:5070");
    assert_eq!(s.sip.allowed_peers[0].to_string(), "10.0.0.0/8");
    assert_eq!(
        s.media.rtp_port_range,
        PortRange {
            start: 30000,
            end: 30100
        }
    );
    assert_eq!(s.instance.id, "dialer-7");
}

#[test]
fn unknown_key_is_named() {
    let dir = Scratch::new("unknown");
    let file = dir.write(
        "c.toml",
        "[media]\nrtp_port_rnage = { start = 1, end = 2 }\n",
    );
    let msg = one_problem(load(&sources(&dir, Some(file), None, &[])).unwrap_err());
    assert!(msg.contains("rtp_port_rnage"), "{msg}");
    let msg =
        one_problem(load(&sources(&dir, None, None, &[("DIALERD__SIP__T9_MS", "1")])).unwrap_err());
    assert!(msg.contains("t9_ms"), "{msg}");
}

#[test]
fn wrong_type_is_named_with_its_path() {
    let dir = Scratch::new("type");
    let file = dir.write("c.toml", "[[accounts]]\nname = \"a\"\nregistrar = \"sip:h\"\nusername = \"u\"\nexpires_secs = \"soon\"\n");
    let msg = one_problem(load(&sources(&dir, Some(file), None, &[])).unwrap_err());
    assert!(msg.starts_with("accounts[0].expires_secs"), "{msg}");
}

#[test]
fn validation_collects_every_problem() {
    let dir = Scratch::new("many");
    let file = dir.write(
        "c.toml",
        "[media]\nrtp_port_range = { start = 20000, end = 10000 }\n[redis]\nurl = \"http://x\"\n[[accounts]]\nname = \"a\"\nusername = \"u\"\n",
    );
    let problems = load(&sources(&dir, Some(file), None, &[]))
        .unwrap_err()
        .problems();
    assert!(
        problems.contains(&"media.rtp_port_range: start 20000 is above end 10000".to_owned()),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("redis.url: ")),
        "{problems:?}"
    );
    assert!(
        problems.contains(&"accounts[0].registrar: is missing".to_owned()),
        "{problems:?}"
    );
}

#[test]
fn account_profile_and_password_file() {
    let dir = Scratch::new("acct");
    dir.write(
        "ucm.toml",
        "[account_defaults]\ntransport = \"tls\"\nexpires_secs = 600\n",
    );
    let pw = dir.write("pw", "s3cret-value\n");
    let file = dir.write(
        "c.toml",
        &format!(
            "[account_defaults]\nexpires_secs = 900\nkeepalive_secs = 10\n\
             [[accounts]]\nname = \"a\"\nregistrar = \"sip:pbx\"\nusername = \"1001\"\nprofile = \"ucm\"\npassword_file = {:?}\n\
             [[accounts]]\nname = \"b\"\nregistrar = \"sips:pbx\"\nusername = \"1002\"\npassword = \"inline\"\n",
            pw.display().to_string()
        ),
    );
    let s = load(&sources(&dir, Some(file), None, &[])).unwrap();
    let a = &s.accounts[0];
    assert_eq!(a.transport, Some(Transport::Tls), "from its profile");
    assert_eq!(a.expires_secs, Some(600), "profile beats global defaults");
    assert_eq!(a.keepalive_secs, Some(10), "global default fills the rest");
    assert_eq!(
        a.password.as_ref().map(Secret::expose),
        Some("s3cret-value")
    );
    let b = &s.accounts[1];
    assert_eq!(b.transport, Some(Transport::Tls), "sips: implies tls");
    assert_eq!(b.expires_secs, Some(900));
    let shown = render_effective(&s).unwrap();
    assert!(
        !shown.contains("s3cret-value") && !shown.contains("inline"),
        "{shown}"
    );
    assert!(shown.contains(REDACTED));
}

#[test]
fn unreadable_password_file_names_key_not_secret() {
    let dir = Scratch::new("pwmissing");
    let file = dir.write(
        "c.toml",
        "[[accounts]]\nname = \"a\"\nregistrar = \"sip:pbx\"\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\n",
    );
    let msg = one_problem(load(&sources(&dir, Some(file), None, &[])).unwrap_err());
    assert!(
        msg.starts_with("accounts[0].password_file: cannot read /nonexistent/pw"),
        "{msg}"
    );
}

#[test]
fn public_address_from_env() {
    let dir = Scratch::new("pubenv");
    let file = dir.write(
        "c.toml",
        "[instance.public_address]\nsource = \"env\"\nvar = \"HOST_IP\"\n",
    );
    let msg = one_problem(load(&sources(&dir, Some(file.clone()), None, &[])).unwrap_err());
    assert_eq!(
        msg,
        "instance.public_address.var: environment variable HOST_IP is not set"
    );
    let s = load(&sources(
        &dir,
        Some(file),
        None,
        &[("HOST_IP", "203.0.113.5")],
    ))
    .unwrap();
    assert_eq!(s.instance.public_address.source, AddressSource::Env);
    assert_eq!(s.instance.public_address.var.as_deref(), Some("HOST_IP"));
}

#[test]
fn bad_toml_and_missing_profile_name_their_source() {
    let dir = Scratch::new("syntax");
    let file = dir.write("c.toml", "[sip\nt1_ms = 1\n");
    let msg = one_problem(load(&sources(&dir, Some(file), None, &[])).unwrap_err());
    assert!(msg.contains("c.toml: invalid TOML"), "{msg}");
    let msg = one_problem(load(&sources(&dir, None, Some("nope"), &[])).unwrap_err());
    assert!(
        msg.contains("profile \"nope\"") && msg.contains("nope.toml"),
        "{msg}"
    );
}

#[test]
fn redis_url_error_hides_password() {
    let dir = Scratch::new("redisurl");
    let env = [("DIALERD__REDIS__URL", "redis:/ /user:pa55word@")];
    let err = load(&sources(&dir, None, None, &env)).unwrap_err();
    let msg = one_problem(err);
    assert!(msg.starts_with("redis.url: "), "{msg}");
    assert!(!msg.contains("pa55word"), "{msg}");
}

#[test]
fn a_later_layer_switches_the_public_address_source() {
    let dir = Scratch::new("pubswitch");
    let file = dir.write(
        "c.toml",
        "[instance.public_address]\nsource = \"static\"\naddress = \"192.0.2.1\"\n",
    );
    let env = [("DIALERD__INSTANCE__PUBLIC_ADDRESS__SOURCE", "do_metadata")];
    let s = load(&sources(&dir, Some(file.clone()), None, &env)).unwrap();
    assert_eq!(s.instance.public_address.source, AddressSource::DoMetadata);
    let env = [("DIALERD__INSTANCE__PUBLIC_ADDRESS__SOURCE", "env")];
    let msg = one_problem(load(&sources(&dir, Some(file), None, &env)).unwrap_err());
    assert_eq!(
        msg,
        "instance.public_address.var: required when source is env"
    );
}

#[test]
fn media_settings_out_of_range_are_named() {
    let dir = Scratch::new("media-settings");
    let file = dir.write(
        "c.toml",
        "[media]\nfill_after_ms = 5\nquiet_report_ms = 10\nshards = 5000\nprompt_dir = \"/nonexistent/prompts\"\n",
    );
    let problems = load(&sources(&dir, Some(file), None, &[]))
        .unwrap_err()
        .problems();
    for expected in [
        "media.fill_after_ms: must be 20 to 10000",
        "media.quiet_report_ms: must be 100 to 600000",
        "media.shards: must be 0 (one per core) to 1024",
        "media.prompt_dir: /nonexistent/prompts is not a directory",
    ] {
        assert!(
            problems.contains(&expected.to_owned()),
            "{expected}: {problems:?}"
        );
    }
}

#[test]
fn profile_search_order_without_a_profile_dir() {
    let dirs = profile_search_dirs(
        Some(Path::new("/etc/dialerd/dialerd.toml")),
        Some(Path::new("/opt/dialerd/bin/dialerd")),
    );
    let expected: Vec<PathBuf> = [
        "/etc/dialerd/sip-profiles",
        INSTALLED_PROFILE_DIR,
        "/opt/dialerd/share/dialerd/sip-profiles",
        "./sip-profiles",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    assert_eq!(dirs, expected);

    // A bare config file name is in the working directory; an executable in
    // /usr/bin finds the installed directory; duplicates are dropped.
    let dirs = profile_search_dirs(
        Some(Path::new("dialerd.toml")),
        Some(Path::new("/usr/bin/dialerd")),
    );
    assert_eq!(
        dirs,
        [
            PathBuf::from("./sip-profiles"),
            INSTALLED_PROFILE_DIR.into()
        ]
    );
    assert_eq!(
        profile_search_dirs(None, None),
        [
            PathBuf::from(INSTALLED_PROFILE_DIR),
            "./sip-profiles".into()
        ]
    );
}

#[test]
fn the_first_directory_holding_the_profile_wins() {
    let dir = Scratch::new("search");
    let (first, second, third) = (dir.0.join("a"), dir.0.join("b"), dir.0.join("c"));
    for d in [&first, &second, &third] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(second.join("pbx.toml"), "").unwrap();
    std::fs::write(third.join("pbx.toml"), "").unwrap();
    std::fs::write(third.join("only-c.toml"), "").unwrap();
    let dirs = [first.clone(), second.clone(), third.clone()];
    assert_eq!(profile_path(&dirs, "pbx").unwrap(), second.join("pbx.toml"));
    assert_eq!(
        profile_path(&dirs, "only-c").unwrap(),
        third.join("only-c.toml")
    );
    // A directory, not a file, named like a profile does not count.
    std::fs::create_dir_all(first.join("pbx.toml")).unwrap();
    assert_eq!(profile_path(&dirs, "pbx").unwrap(), second.join("pbx.toml"));

    let err = profile_path(&dirs, "unknown").unwrap_err();
    assert!(err.starts_with("no profile file unknown.toml in "), "{err}");
    for d in &dirs {
        assert!(err.contains(&d.display().to_string()), "{err}");
    }
    // Paths are taken as they are, whatever the directories.
    assert_eq!(
        profile_path(&dirs, "x/y.toml").unwrap(),
        PathBuf::from("x/y.toml")
    );
    assert!(profile_path(&dirs, "bad name").is_err());
}

#[test]
fn an_account_profile_is_searched_like_the_global_one() {
    let dir = Scratch::new("acct-search");
    let (first, second) = (dir.0.join("a"), dir.0.join("b"));
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    std::fs::write(
        second.join("pbx.toml"),
        "[account_defaults]\nexpires_secs = 120\n",
    )
    .unwrap();
    let file = dir.write(
        "c.toml",
        "[[accounts]]\nname = \"a\"\nregistrar = \"sip:pbx\"\nusername = \"1\"\nprofile = \"pbx\"\n",
    );
    let mut src = sources(&dir, Some(file), None, &[]);
    src.profile_dirs = vec![first, second];
    let s = load(&src).unwrap();
    assert_eq!(s.accounts[0].expires_secs, Some(120));
}

#[test]
fn http_token_from_a_file_is_read_at_load_and_never_shown() {
    let dir = Scratch::new("http-token");
    let token = dir.write("token", "file-token-0123456789abcdef\n");
    let file = dir.write(
        "c.toml",
        &format!("[http]\ntoken_file = {:?}\n", token.display().to_string()),
    );
    let s = load(&sources(&dir, Some(file), None, &[])).unwrap();
    assert_eq!(
        s.http.token.as_ref().map(Secret::expose),
        Some("file-token-0123456789abcdef")
    );
    let shown = render_effective(&s).unwrap();
    assert!(!shown.contains("file-token"), "{shown}");
    assert!(
        shown.contains(&format!("token = \"{REDACTED}\"")),
        "{shown}"
    );

    let env = [("DIALERD__HTTP__TOKEN", "has space in-it-0123456789")];
    let msg = one_problem(load(&sources(&dir, None, None, &env)).unwrap_err());
    assert_eq!(
        msg,
        "http.token: the token must be printable ASCII without spaces"
    );
    let env = [("DIALERD__HTTP__TOKEN", "short-tok")];
    let msg = one_problem(load(&sources(&dir, None, None, &env)).unwrap_err());
    assert!(!msg.contains("short-tok"), "{msg}");
}
