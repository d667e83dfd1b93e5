//! `dialerd check-config`: every shipped profile passes; broken
//! configurations fail and name the key; secrets never appear.

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

#[test]
fn every_shipped_profile_is_valid() {
    let mut names: Vec<String> = std::fs::read_dir(repo_root().join("sip-profiles"))
        .expect("read sip-profiles")
        .filter_map(|e| {
            let path = e.ok()?.path();
            if path.extension()? != "toml" {
                return None;
            }
            Some(path.file_stem()?.to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    for required in [
        "asterisk",
        "freeswitch",
        "generic-trunk",
        "grandstream-ucm",
        "local",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "profile {required} missing: {names:?}"
        );
    }
    for name in &names {
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
    let out = check_config(
        &["--config", k8s.to_str().unwrap()],
        &[("DIALERD__INSTANCE__ID", "node-1")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("source = \"do_metadata\""));
}

#[test]
fn secrets_are_redacted_in_the_effective_configuration() {
    let dir = Scratch::new("cfg-secret");
    let pw = dir.write("sip-password", "file-secret-42\n");
    let config = dir.write(
        "c.toml",
        &format!(
            "[redis]\nurl = \"redis://app:redis-secret-17@127.0.0.1:6379/0\"\npassword = \"acl-secret-9\"\n\
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
    ] {
        assert!(!stdout.contains(secret), "{secret} leaked:\n{stdout}");
    }
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
fn version_prints_the_crate_version() {
    let out = Command::new(dialerd_bin())
        .arg("version")
        .output()
        .expect("run dialerd version");
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("dialerd {}", env!("CARGO_PKG_VERSION"))
    );
}
