//! `dialerd check-config`: every shipped profile passes; broken
//! configurations fail and name the key; secrets never appear.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::scratch::Scratch;
use crate::support::{dialerd_bin, repo_root, text};

fn check_config(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(dialerd_bin())
        .arg("check-config")
        .args(args)
        .arg("--profile-dir")
        .arg(repo_root().join("sip-profiles"))
        .env_remove("DIALERD_CONFIG")
        .env_remove("DIALERD_PROFILE")
        .envs(env.iter().copied())
        .output()
        .expect("run dialerd check-config")
}

/// The profiles shipped in sip-profiles/, exactly.
const SHIPPED_PROFILES: [&str; 5] = [
    "asterisk-pjsip",
    "freeswitch",
    "generic-trunk",
    "grandstream-ucm",
    "local",
];

#[test]
fn every_shipped_profile_is_valid() {
    // Every file is checked, so a new profile is covered without a change
    // here; the set itself is pinned so that a rename is noticed.
    let mut names: Vec<String> = std::fs::read_dir(repo_root().join("sip-profiles"))
        .expect("read sip-profiles")
        .map(|e| {
            let path = e.expect("read sip-profiles entry").path();
            assert_eq!(
                path.extension().and_then(|x| x.to_str()),
                Some("toml"),
                "only profiles belong in sip-profiles/: {}",
                path.display()
            );
            path.file_stem()
                .expect("file name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, SHIPPED_PROFILES, "the shipped profiles");
    for name in &names {
        let contents =
            std::fs::read_to_string(repo_root().join(format!("sip-profiles/{name}.toml")))
                .expect("read profile");
        assert!(
            contents.starts_with("# "),
            "profile {name} starts with a comment saying what it is for"
        );
        let out = check_config(&["--profile", name], &[]);
        assert!(
            out.status.success(),
            "profile {name}: {}",
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("[account_defaults]"),
            "profile {name}: {stdout}"
        );
        assert!(
            stdout.contains(&format!("profile {name}")),
            "sources line names the profile: {stdout}"
        );
    }
}

#[test]
fn every_pbx_profile_serves_an_account_with_a_sip_and_a_sips_registrar() {
    let dir = Scratch::new("cfg-pbx-accounts");
    for name in SHIPPED_PROFILES {
        for registrar in ["sip:pbx.example.com", "sips:pbx.example.com:5061"] {
            let config = dir.write(
                &format!("{name}.toml"),
                &format!(
                    "[[accounts]]\nname = \"a\"\nregistrar = \"{registrar}\"\nusername = \"1001\"\n\
                     password = \"pw\"\nprofile = \"{name}\"\n"
                ),
            );
            let out = check_config(&["--config", config.to_str().unwrap()], &[]);
            let stderr = text(&out.stderr);
            // local pins udp for its SIPp peer: a sips: registrar is refused.
            if name == "local" && registrar.starts_with("sips:") {
                assert!(stderr.contains("accounts[0].transport"), "{stderr}");
            } else {
                assert!(out.status.success(), "{name} {registrar}: {stderr}");
            }
        }
    }
}

/// Runs check-config in `cwd` without --profile-dir (nor its variable).
fn check_config_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(dialerd_bin())
        .arg("check-config")
        .args(args)
        .current_dir(cwd)
        .env_remove("DIALERD_CONFIG")
        .env_remove("DIALERD_PROFILE")
        .env_remove("DIALERD_PROFILE_DIR")
        .envs(env.iter().copied())
        .output()
        .expect("run dialerd check-config")
}

#[test]
fn without_a_profile_dir_a_profile_is_found_beside_the_config_file() {
    let dir = Scratch::new("cfg-beside");
    std::fs::create_dir_all(dir.path().join("sip-profiles")).unwrap();
    dir.write(
        "sip-profiles/local.toml",
        "[instance]\nid = \"beside-the-config\"\n",
    );
    let config = dir.write("dialerd.toml", "[limits]\nmax_concurrent_calls = 3\n");
    let config = config.to_str().unwrap();
    let elsewhere = Scratch::new("cfg-cwd");

    let out = check_config_in(
        elsewhere.path(),
        &["--config", config, "--profile", "local"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("id = \"beside-the-config\""), "{stdout}");
    assert!(stdout.contains("max_concurrent_calls = 3"), "{stdout}");

    // An explicit directory (here through the variable) is the only one.
    let shipped = repo_root().join("sip-profiles");
    let out = check_config_in(
        elsewhere.path(),
        &["--config", config, "--profile", "local"],
        &[("DIALERD_PROFILE_DIR", shipped.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("id = \"local\""),
        "the shipped profile"
    );

    // An unknown name lists every directory searched, in order.
    let out = check_config_in(
        elsewhere.path(),
        &["--config", config, "--profile", "no-such-pbx"],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let beside = dir.path().join("sip-profiles");
    let beside = beside.display().to_string();
    let exe_share = dialerd_bin()
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("share/dialerd/sip-profiles").display().to_string())
        .unwrap();
    let expected = format!(
        "no profile file no-such-pbx.toml in {beside}, /usr/share/dialerd/sip-profiles, {exe_share}, ./sip-profiles"
    );
    assert!(stderr.contains(&expected), "{expected:?} in:\n{stderr}");
}

#[test]
fn without_a_profile_dir_the_working_directory_is_searched_last() {
    if Path::new("/usr/share/dialerd/sip-profiles/local.toml").exists() {
        eprintln!("skipped: an installed local profile would be found first");
        return;
    }
    // A config file with no sip-profiles beside it, run from the repository.
    let dir = Scratch::new("cfg-cwd-last");
    let config = dir.write("dialerd.toml", "");
    let out = check_config_in(
        &repo_root(),
        &["--config", config.to_str().unwrap(), "--profile", "local"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("id = \"local\""));
}

#[test]
fn example_configuration_is_valid_with_and_without_a_profile() {
    let example = repo_root().join("docs/dialerd.example.toml");
    let example = example.to_str().expect("utf-8 path");
    let out = check_config(&["--config", example], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = check_config(&["--config", example, "--profile", "grandstream-ucm"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn kubernetes_configuration_is_valid() {
    let k8s = repo_root().join("k8s/base/dialerd.toml");
    // The pod's mounted secret, here a stand-in.
    let dir = Scratch::new("cfg-k8s");
    let token = dir.write("http-token", "stand-in-token-0123456789abcdef\n");
    let out = check_config(
        &["--config", k8s.to_str().unwrap()],
        &[
            ("DIALERD__INSTANCE__ID", "node-1"),
            ("DIALERD__HTTP__TOKEN_FILE", token.to_str().unwrap()),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("source = \"do_metadata\""), "{stdout}");
    assert!(!stdout.contains("stand-in-token"), "{stdout}");
}

#[test]
fn secrets_are_redacted_in_the_effective_configuration() {
    let dir = Scratch::new("cfg-secret");
    let pw = dir.write("sip-password", "file-secret-42\n");
    let config = dir.write(
        "c.toml",
        &format!(
            "[http]\ntoken = \"http-token-secret-2468\"\n\
             [redis]\nurl = \"redis://app:redis-secret-17@127.0.0.1:6379/0\"\npassword = \"acl-secret-9\"\n\
             [[accounts]]\nname = \"a\"\nregistrar = \"sip:pbx.example.com\"\nusername = \"1001\"\npassword_file = {:?}\n\
             [[accounts]]\nname = \"b\"\nregistrar = \"sip:pbx.example.com\"\nusername = \"1002\"\npassword = \"inline-secret-3\"\n",
            pw.display().to_string()
        ),
    );
    let out = check_config(&["--config", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for secret in [
        "file-secret-42",
        "redis-secret-17",
        "acl-secret-9",
        "inline-secret-3",
        "http-token-secret-2468",
    ] {
        assert!(!stdout.contains(secret), "{secret} leaked:\n{stdout}");
    }
    assert!(stdout.contains("token = \"<redacted>\""), "{stdout}");
    assert!(
        stdout.contains("url = \"redis://app:%3Credacted%3E@127.0.0.1:6379/0\""),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("password = \"<redacted>\"").count(),
        3,
        "{stdout}"
    );

    let quickstart = repo_root().join("scripts/quickstart.toml");
    let out = check_config(
        &[
            "--config",
            quickstart.to_str().unwrap(),
            "--profile",
            "local",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("local-test-only"), "{stdout}");
    assert!(stdout.contains("password = \"<redacted>\""), "{stdout}");
}

#[test]
fn environment_overrides_profile_and_file() {
    let dir = Scratch::new("cfg-env");
    let config = dir.write(
        "c.toml",
        "[limits]\nmax_concurrent_calls = 5\n[sip]\nt1_ms = 250\n",
    );
    let out = check_config(
        &["--config", config.to_str().unwrap(), "--profile", "local"],
        &[
            ("DIALERD__LIMITS__MAX_CONCURRENT_CALLS", "7"),
            ("DIALERD__INSTANCE__ID", "from-env"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("max_concurrent_calls = 7"), "{stdout}");
    assert!(
        stdout.contains("id = \"from-env\""),
        "env beats the profile's id: {stdout}"
    );
    assert!(stdout.contains("t1_ms = 250"), "file value kept: {stdout}");
}

/// One broken configuration and the line its error must contain.
struct Broken {
    what: &'static str,
    file: &'static str,
    env: &'static [(&'static str, &'static str)],
    expect: &'static str,
}

const BROKEN: &[Broken] = &[
    Broken {
        what: "bad port range",
        file: "[media]\nrtp_port_range = { start = 20000, end = 10000 }\n",
        env: &[],
        expect: "media.rtp_port_range: start 20000 is above end 10000",
    },
    Broken {
        what: "missing registrar",
        file: "[[accounts]]\nname = \"a\"\nusername = \"1001\"\n",
        env: &[],
        expect: "accounts[0].registrar: is missing",
    },
    Broken {
        what: "unknown key in a file",
        file: "[sip]\nt5_ms = 100\n",
        env: &[],
        expect: "sip.t5_ms: unknown field `t5_ms`",
    },
    Broken {
        what: "unknown key in the environment",
        file: "",
        env: &[("DIALERD__HTTP__PORT", "8080")],
        expect: "http.port: unknown field `port`",
    },
    Broken {
        what: "malformed Redis URL",
        file: "[redis]\nurl = \"redis//user:url-secret-5@host:6379\"\n",
        env: &[],
        expect: "redis.url: not a valid URL",
    },
    Broken {
        what: "Redis URL with another scheme",
        file: "[redis]\nurl = \"http://127.0.0.1:6379\"\n",
        env: &[],
        expect: "redis.url: scheme \"http\" is not one of redis, rediss, unix, redis+unix",
    },
    Broken {
        what: "unreadable password_file",
        file: "[[accounts]]\nname = \"a\"\nregistrar = \"sip:pbx\"\nusername = \"1001\"\npassword_file = \"/\"\n",
        env: &[],
        expect: "accounts[0].password_file: cannot read /:",
    },
    Broken {
        what: "wrong type",
        file: "[limits]\nmax_concurrent_calls = \"many\"\n",
        env: &[],
        expect: "limits.max_concurrent_calls: invalid type: string \"many\"",
    },
    Broken {
        what: "TLS listener without certificate",
        file: "[sip]\ntls_listen = [\"127.0.0.1:5061\"]\n",
        env: &[],
        expect: "sip.tls.cert_file: required by sip.tls_listen",
    },
    Broken {
        what: "sips registrar over udp",
        file: "[[accounts]]\nname = \"a\"\nregistrar = \"sips:pbx:5061\"\nusername = \"1\"\ntransport = \"udp\"\n",
        env: &[],
        expect: "accounts[0].transport: udp cannot carry a sips: registrar; use tls",
    },
    Broken {
        what: "bad pinned fingerprint",
        file: "[[accounts]]\nname = \"a\"\nregistrar = \"sips:pbx\"\nusername = \"1\"\ntls_fingerprint_sha256 = \"AB:CD\"\n",
        env: &[],
        expect: "accounts[0].tls_fingerprint_sha256: must be 32 bytes in hex",
    },
    Broken {
        what: "unknown account profile",
        file: "[[accounts]]\nname = \"a\"\nregistrar = \"sip:pbx\"\nusername = \"1\"\nprofile = \"no-such-pbx\"\n",
        env: &[],
        expect: "accounts[0].profile: no profile file",
    },
    Broken {
        what: "TOML syntax error",
        file: "[sip\nt1_ms = 1\n",
        env: &[],
        expect: "invalid TOML",
    },
    Broken {
        what: "short HTTP token",
        file: "[http]\ntoken = \"short-url-secret-5\"\n",
        env: &[("DIALERD__HTTP__TOKEN", "url-secret-5")],
        expect: "http.token: the token must be at least 16 characters",
    },
    Broken {
        what: "HTTP token and token file",
        file: "[http]\ntoken = \"url-secret-5-long-enough\"\ntoken_file = \"/nonexistent/token\"\n",
        env: &[],
        expect: "http.token_file: set either token or token_file, not both",
    },
    Broken {
        what: "unreadable HTTP token file",
        file: "[http]\ntoken_file = \"/nonexistent/token\"\n",
        env: &[],
        expect: "http.token_file: cannot read /nonexistent/token:",
    },
    Broken {
        what: "T2 below T1",
        file: "[sip]\nt1_ms = 800\nt2_ms = 400\n",
        env: &[],
        expect: "sip.t2_ms: 400 is below sip.t1_ms 800",
    },
    Broken {
        what: "bad listen address from the environment",
        file: "",
        env: &[("DIALERD__SIP__UDP_LISTEN", "127.0.0.1:5060,nowhere")],
        expect: "sip.udp_listen[1]: invalid socket address syntax",
    },
    Broken {
        what: "backoff cap below the first step",
        file: "[registration]\nbackoff_initial_ms = 5000\nbackoff_max_ms = 1000\n",
        env: &[],
        expect: "registration.backoff_max_ms: must not be below registration.backoff_initial_ms",
    },
    Broken {
        what: "bad failover registrar",
        file: "[[accounts]]\nname = \"a\"\nregistrar = \"sip:pbx\"\nusername = \"1\"\nfailover_registrars = [\"pbx2\"]\n",
        env: &[],
        expect: "accounts[0].failover_registrars[0]: \"pbx2\" is not a sip: or sips: URI",
    },
    Broken {
        what: "public address variable not set",
        file: "[instance.public_address]\nsource = \"env\"\nvar = \"DIALERD_TEST_UNSET_IP\"\n",
        env: &[],
        expect: "instance.public_address.var: environment variable DIALERD_TEST_UNSET_IP is not set",
    },
];

#[test]
fn broken_configurations_name_the_key() {
    let dir = Scratch::new("cfg-broken");
    for (i, case) in BROKEN.iter().enumerate() {
        let config = dir.write(&format!("broken-{i}.toml"), case.file);
        let out = check_config(&["--config", config.to_str().unwrap()], case.env);
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: exit code; stderr: {stderr}",
            case.what
        );
        assert!(out.stdout.is_empty(), "{}: nothing on stdout", case.what);
        assert!(
            stderr.starts_with("error: invalid configuration"),
            "{}: {stderr}",
            case.what
        );
        assert!(
            stderr.contains(case.expect),
            "{}: expected {:?} in:\n{stderr}",
            case.what,
            case.expect
        );
        assert!(
            !stderr.contains("url-secret-5"),
            "{}: secret leaked: {stderr}",
            case.what
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = Scratch::new("cfg-many");
    let config = dir.write(
        "c.toml",
        "[media]\nrtp_port_range = { start = 20000, end = 10000 }\n[limits]\nmax_concurrent_calls = 0\n[[accounts]]\nname = \"a\"\n",
    );
    let out = check_config(&["--config", config.to_str().unwrap()], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: invalid configuration (4 problems):"),
        "{stderr}"
    );
    for key in [
        "media.rtp_port_range",
        "limits.max_concurrent_calls",
        "accounts[0].registrar",
        "accounts[0].username",
    ] {
        assert!(stderr.contains(&format!("  {key}: ")), "{key} in {stderr}");
    }
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = check_config(&["--config", "/nonexistent/dialerd.toml"], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("/nonexistent/dialerd.toml: cannot read"),
        "{stderr}"
    );
}

#[test]
fn version_prints_the_crate_version_and_revision() {
    let out = Command::new(dialerd_bin())
        .arg("version")
        .output()
        .expect("run dialerd version");
    assert!(out.status.success());
    let printed = text(&out.stdout);
    let rest = printed
        .trim()
        .strip_prefix(&format!("dialerd {} (", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not `dialerd VERSION (REVISION)`: {printed}"));
    assert!(
        rest == "unknown" || rest.chars().all(|c| c.is_ascii_hexdigit()),
        "a git revision or `unknown`: {rest}"
    );
}
