//! dialerd against a real SIP server: Kamailio with our configuration
//! (`tests/kamailio/kamailio.cfg`) as TLS registrar and proxy. dialerd
//! registers over TLS with digest; a SIPp phone calls it through Kamailio
//! (proxy digest), and Kamailio reaches dialerd over the TLS connection
//! dialerd registered on (dialerd has no TLS listener here), with
//! Record-Route; dialerd answers, and the phone's BYE comes the same way.
//! And `dialerd call` calls a SIPp phone registered with Kamailio over UDP,
//! answering Kamailio's 407 on its INVITE. Every test skips, saying so, when Kamailio is not installed
//! (scripts/setup.sh installs it).

use std::time::Duration;

use crate::registration::{account, wait_state};
use crate::support::daemon::Daemon;
use crate::support::g711::{alaw_decode, ulaw_encode};
use crate::support::kamailio::{
    DIALER_PASSWORD, DIALER_USER, Kamailio, PHONE_PASSWORD, PHONE_USER, kamailio_available,
};
use crate::support::scratch::Scratch;
use crate::support::sipp::{Logged, Sipp, SippResult, logged, scenario};
use crate::support::{http, probe, text, wait_for};

/// dialerd's account name in these tests.
const ACCOUNT: &str = "kamailio";

/// Kamailio and a dialerd whose one account registers with it over TLS,
/// with SIP message logging on.
struct Setup {
    // Field order is drop order: dialerd goes before its registrar.
    dialerd: Daemon,
    kamailio: Kamailio,
    _dir: Scratch,
}

impl Setup {
    /// Starts both with dialerd using `password`; does not wait for the
    /// registration.
    fn start(password: &str) -> Self {
        let kamailio = Kamailio::start();
        let dir = Scratch::new("kamailio-dialerd");
        let config = dir.write(
            "dialerd.toml",
            &format!(
                "[[accounts]]\nname = \"{ACCOUNT}\"\nregistrar = \"{}\"\n\
                 username = \"{DIALER_USER}\"\npassword = \"{password}\"\ntransport = \"tls\"\n\
                 tls_ca_file = {:?}\n",
                kamailio.registrar_uri(),
                kamailio.ca_file().to_str().unwrap()
            ),
        );
        let dialerd = Daemon::start(
            &["--config", config.to_str().unwrap(), "--profile", "local"],
            &[
                ("DIALERD__LOG__SIP_TRACE", "true"),
                ("DIALERD__REGISTRATION__BACKOFF_INITIAL_MS", "200"),
                ("DIALERD__CALLS__INBOUND", "answer"),
            ],
        );
        Self {
            dialerd,
            kamailio,
            _dir: dir,
        }
    }

    /// Started, with the account registered.
    fn registered() -> Self {
        let s = Self::start(DIALER_PASSWORD);
        wait_state(&s.dialerd, "registered", Duration::from_secs(10));
        s
    }

    /// dialerd's messages so far, from its SIP trace.
    fn traced(&self) -> Vec<Traced> {
        traced(&self.dialerd.log())
    }

    /// The REGISTER that Kamailio accepted: the last REGISTER dialerd sent
    /// before a 200 to a REGISTER came in (waiting briefly for the log).
    fn accepted_register(&self) -> Traced {
        wait_for(Duration::from_secs(2), || {
            let traced = self.traced();
            let ok = traced.iter().position(|t| {
                t.incoming()
                    && t.first_line().starts_with("SIP/2.0 200")
                    && t.cseq_method() == "REGISTER"
            })?;
            traced[..ok]
                .iter()
                .rev()
                .find(|t| !t.incoming() && t.first_line().starts_with("REGISTER "))
                .cloned()
        })
        .unwrap_or_else(|| panic!("no accepted REGISTER traced:\n{}", self.dialerd.log()))
    }

    /// Kamailio's connection id for the REGISTER from dialerd's `local`
    /// address (from the configuration's log line).
    fn register_conid(&self, local: &str) -> String {
        let line = self
            .kamailio
            .wait_script_line(
                Duration::from_secs(2),
                &["REGISTER dialer from ", &format!("tls:{local} ")],
            )
            .unwrap_or_else(|| panic!("Kamailio logged no REGISTER from {local}"));
        field(&line, "conid=").to_owned()
    }

    fn metrics(&self) -> String {
        http::get(self.dialerd.http(), "/metrics").unwrap().body
    }
}

/// One message from dialerd's SIP trace (`log.sip_trace`).
#[derive(Debug, Clone)]
struct Traced {
    /// The log line's fields: direction, transport, remote, local, flow.
    attrs: Vec<(String, String)>,
    /// The message.
    text: String,
}

impl Traced {
    fn attr(&self, name: &str) -> &str {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    fn incoming(&self) -> bool {
        self.attr("direction") == "in"
    }

    fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or_default()
    }

    fn headers(&self, name: &str) -> Vec<&str> {
        self.text
            .lines()
            .take_while(|l| !l.is_empty())
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
            .collect()
    }

    fn cseq_method(&self) -> &str {
        self.headers("CSeq")
            .first()
            .and_then(|v| v.split_whitespace().nth(1))
            .unwrap_or_default()
    }
}

/// Whether a log line starts a new record (`2026-01-01T...`).
fn is_log_line(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 11 && b[0].is_ascii_digit() && b[4] == b'-' && b[10] == b'T'
}

/// The SIP trace records in dialerd's text log: a record line
/// (`sip_trace: SIP message direction=".." transport=.. ... sip=`) followed
/// by the message's lines.
fn traced(log: &str) -> Vec<Traced> {
    let mut out: Vec<Traced> = Vec::new();
    let mut current: Option<Traced> = None;
    for line in log.lines() {
        if is_log_line(line) {
            out.extend(current.take());
            if let Some((_, fields)) = line.split_once("sip_trace: SIP message ") {
                let attrs = fields
                    .split_whitespace()
                    .filter_map(|f| f.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                    .collect();
                current = Some(Traced {
                    attrs,
                    text: String::new(),
                });
            }
        } else if let Some(t) = current.as_mut() {
            t.text.push_str(line.trim_end_matches('\r'));
            t.text.push('\n');
        }
    }
    out.extend(current);
    out
}

/// The value after `key` in a log line, up to the next space.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_once(key)
        .map(|(_, rest)| rest.split_whitespace().next().unwrap_or_default())
        .unwrap_or_default()
}

/// The value of a metric line `name value`, 0 when absent.
fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn dialerd_registers_over_tls_with_digest_and_kamailio_keeps_its_connection() {
    if !kamailio_available() {
        return;
    }
    let s = Setup::registered();
    let a = account(&s.dialerd);
    assert_eq!(a["transport"], "tls", "{a}");
    assert_eq!(a["registrar"], s.kamailio.registrar_uri().as_str(), "{a}");

    // Digest: the first REGISTER was challenged with 401, the answer taken.
    let traced = s.traced();
    let challenge = traced
        .iter()
        .find(|t| t.incoming() && t.first_line().starts_with("SIP/2.0 401"))
        .unwrap_or_else(|| panic!("no 401 traced:\n{}", s.dialerd.log()));
    let www = challenge.headers("WWW-Authenticate");
    assert!(
        www.first()
            .is_some_and(|v| v.contains("realm=\"dialerd-test\"") && v.contains("qop=\"auth\"")),
        "{www:?}"
    );
    let metrics = s.metrics();
    assert_eq!(
        metric(
            &metrics,
            &format!("dialerd_registration_requests_total{{account=\"{ACCOUNT}\"}}")
        ),
        2.0,
        "one REGISTER challenged, one accepted:\n{metrics}"
    );
    let register = s.accepted_register();
    assert_eq!(register.attr("transport"), "tls");
    assert!(
        register
            .headers("Authorization")
            .first()
            .is_some_and(|v| v.contains("redacted")),
        "the accepted REGISTER carried credentials: {}",
        register.text
    );

    // Kamailio's own view: the contact, reachable at the connection's far
    // end (dialerd's local address), on that very connection.
    let local = register.attr("local").to_owned();
    let port = local.rsplit_once(':').unwrap().1;
    let conid = s.register_conid(&local);
    let dump = s.kamailio.ul_dump();
    for expected in [
        "AoR: dialer".to_owned(),
        format!("Address: sip:dialer@127.0.0.1:{port};transport=tls"),
        format!("Received: sip:127.0.0.1:{port};transport=tls"),
        format!("Socket: tls:{}", s.kamailio.tls_addr()),
        format!("Tcpconn-Id: {conid}\n"),
    ] {
        assert!(
            dump.contains(&expected),
            "no {expected:?} in ul.dump:\n{dump}"
        );
    }
    assert_eq!(
        dump.matches("Contact: {").count(),
        1,
        "one contact:\n{dump}"
    );
}

#[test]
fn wrong_password_is_refused_by_kamailio() {
    if !kamailio_available() {
        return;
    }
    let s = Setup::start("not-the-password");
    let a = wait_state(&s.dialerd, "failed", Duration::from_secs(10));
    assert_eq!(a["code"], 401, "{a}");
    assert!(
        s.kamailio
            .wait_script_line(Duration::from_secs(2), &["credentials of 'dialer' refused"])
            .is_some(),
        "{:?}",
        s.kamailio.script_log()
    );
    assert!(
        !s.kamailio.ul_dump().contains("AoR: dialer"),
        "nothing registered"
    );
}

/// A registered dialerd called by a SIPp phone through Kamailio.
struct Call {
    setup: Setup,
    sipp: SippResult,
    /// dialerd's metrics just before the call.
    metrics_before: String,
}

fn call_dialerd_through_kamailio() -> Call {
    let setup = Setup::registered();
    let metrics_before = setup.metrics();
    let sipp = Sipp::client(
        &scenario("kamailio_phone_invite.xml"),
        setup.kamailio.sip_addr(),
    )
    .key("callee", DIALER_USER)
    .args(&["-au", PHONE_USER, "-ap", PHONE_PASSWORD])
    .timeout(Duration::from_secs(10))
    .spawn()
    .wait();
    assert_eq!(
        sipp.exit_code,
        Some(0),
        "SIPp failed: {}\nmessages:\n{}\ndialerd log:\n{}\nKamailio:\n{}",
        sipp.errors,
        sipp.messages,
        setup.dialerd.log(),
        setup.kamailio.script_log().join("\n")
    );
    Call {
        setup,
        sipp,
        metrics_before,
    }
}

impl Call {
    /// The INVITE dialerd received (waiting briefly for the log).
    fn invite(&self) -> Traced {
        wait_for(Duration::from_secs(2), || {
            self.setup
                .traced()
                .into_iter()
                .find(|t| t.incoming() && t.first_line().starts_with("INVITE "))
        })
        .unwrap_or_else(|| panic!("dialerd traced no INVITE:\n{}", self.setup.dialerd.log()))
    }
}

#[test]
fn a_phone_reaches_dialerd_through_kamailio_over_the_tls_connection_it_registered_on() {
    if !kamailio_available() {
        return;
    }
    let call = call_dialerd_through_kamailio();
    let s = &call.setup;

    // The phone: challenged with 407, answered the challenge, and got its
    // final answer from dialerd itself (Kamailio's own answers carry
    // "Server: kamailio-dialerd-test").
    let log = logged(&call.sipp.messages);
    let received: Vec<&Logged> = log.iter().filter(|m| m.received).collect();
    assert!(
        received
            .iter()
            .any(|m| m.first_line().starts_with("SIP/2.0 407")
                && m.header("Proxy-Authenticate")
                    .is_some_and(|v| v.contains("dialerd-test"))),
        "{}",
        call.sipp.messages
    );
    let sent_invites: Vec<&Logged> = log
        .iter()
        .filter(|m| !m.received && m.first_line().starts_with("INVITE "))
        .collect();
    assert_eq!(sent_invites.len(), 2, "{}", call.sipp.messages);
    assert!(
        sent_invites[1]
            .header("Proxy-Authorization")
            .is_some_and(|v| v.contains("username=\"phone\"")),
        "{}",
        call.sipp.messages
    );
    let finals: Vec<&&Logged> = received
        .iter()
        .filter(|m| m.first_line().starts_with("SIP/2.0 200"))
        .collect();
    assert_eq!(
        finals.len(),
        2,
        "200 to the INVITE and to the BYE: {}",
        call.sipp.messages
    );
    for answer in finals {
        assert!(
            answer
                .header("Server")
                .is_some_and(|v| v.starts_with("dialerd")),
            "the answer comes from dialerd: {}",
            answer.text
        );
    }
    let ended = wait_for(Duration::from_secs(5), || {
        let m = s.metrics();
        (metric(&m, "dialerd_calls_ended_total{cause=\"normal\"}") >= 1.0).then_some(())
    });
    assert!(ended.is_some(), "{}", s.dialerd.log());

    // dialerd: the INVITE came over TLS on the flow its REGISTER used.
    let register = s.accepted_register();
    let invite = call.invite();
    assert_eq!(invite.attr("transport"), "tls", "{:?}", invite.attrs);
    assert_eq!(
        invite.attr("flow"),
        register.attr("flow"),
        "INVITE {:?}, REGISTER {:?}",
        invite.attrs,
        register.attrs
    );
    assert_eq!(invite.attr("local"), register.attr("local"));
    assert!(
        invite.first_line().starts_with(&format!(
            "INVITE sip:dialer@{};transport=tls ",
            register.attr("local")
        )),
        "the request URI is the registered contact: {}",
        invite.first_line()
    );

    // Kamailio: relayed on the connection the REGISTER came in on.
    let conid = s.register_conid(register.attr("local"));
    let relay = s
        .kamailio
        .wait_script_line(Duration::from_secs(2), &["relay INVITE to sip:dialer@"])
        .unwrap_or_else(|| panic!("no relay logged: {:?}", s.kamailio.script_log()));
    assert_eq!(field(&relay, "conid="), conid, "{relay}");
    assert!(
        relay.contains(&format!(
            " via sip:{};transport=tls ",
            register.attr("local")
        )),
        "sent to the registration's received address: {relay}"
    );
    // ... and that connection is the only one it has, from dialerd's port.
    let connections = s.kamailio.kamcmd(&["core.tcp_list"]);
    let port = register.attr("local").rsplit_once(':').unwrap().1;
    assert_eq!(connections.matches("id: ").count(), 1, "{connections}");
    for expected in [
        format!("id: {conid}\n"),
        "type: TLS\n".to_owned(),
        format!("src_port: {port}\n"),
        format!("dst_port: {}\n", s.kamailio.tls_addr().port()),
    ] {
        assert!(
            connections.contains(&expected),
            "no {expected:?} in core.tcp_list:\n{connections}"
        );
    }

    // dialerd's metrics: still one connection, and TLS requests came in
    // (the INVITE, and the ACK of its final answer).
    let after = s.metrics();
    assert_eq!(metric(&after, "dialerd_sip_flows"), 1.0, "{after}");
    let requests = "dialerd_sip_received_total{transport=\"tls\",kind=\"request\"}";
    let grew = metric(&after, requests) - metric(&call.metrics_before, requests);
    assert!(grew >= 1.0, "TLS requests grew by {grew}:\n{after}");
    let udp = "dialerd_sip_received_total{transport=\"udp\",kind=\"request\"}";
    assert_eq!(metric(&after, udp), 0.0, "nothing came over UDP: {after}");
}

#[test]
fn the_invite_dialerd_receives_is_record_routed_by_kamailio() {
    if !kamailio_available() {
        return;
    }
    let call = call_dialerd_through_kamailio();
    let invite = call.invite();
    let routes = invite.headers("Record-Route");
    // Double record-routing (UDP in, TLS out): the top entry is Kamailio's
    // TLS side, dialerd's next hop for requests in the dialog.
    let tls = call.setup.kamailio.tls_addr();
    let udp = call.setup.kamailio.sip_addr();
    assert_eq!(routes.len(), 2, "{}", invite.text);
    assert!(
        routes[0].starts_with(&format!("<sip:{tls};transport=tls;")) && routes[0].contains(";lr"),
        "{}",
        invite.text
    );
    assert!(
        routes[1].starts_with(&format!("<sip:{udp};")) && routes[1].contains(";lr"),
        "{}",
        invite.text
    );
    let vias = invite.headers("Via");
    assert!(
        vias.first()
            .is_some_and(|v| v.starts_with(&format!("SIP/2.0/TLS {tls};"))),
        "{vias:?}"
    );
}

#[test]
fn kamailio_answers_options_over_udp_and_tls() {
    if !kamailio_available() {
        return;
    }
    let kamailio = Kamailio::start();
    let udp = probe(&[
        &format!("sip:{}", kamailio.sip_addr()),
        "--timeout-secs",
        "5",
    ]);
    assert!(
        udp.status.success() && text(&udp.stdout).contains("answered 200"),
        "{}{}",
        text(&udp.stdout),
        text(&udp.stderr)
    );
    let tls = probe(&[
        &format!("sips:{}", kamailio.tls_addr()),
        "--tls-ca",
        kamailio.ca_file().to_str().unwrap(),
        "--timeout-secs",
        "5",
    ]);
    assert!(
        tls.status.success() && text(&tls.stdout).contains("answered 200"),
        "{}{}",
        text(&tls.stdout),
        text(&tls.stderr)
    );
}

#[test]
fn dialerd_calls_a_phone_registered_with_kamailio_answering_the_proxy_challenge() {
    if !kamailio_available() {
        return;
    }
    let kamailio = Kamailio::start();
    let phone = Sipp::server(&scenario("kamailio_phone_answer.xml"))
        .timeout(Duration::from_secs(30))
        .spawn();
    let phone_port = phone.local_addr().port().to_string();
    let registered = Sipp::client(
        &scenario("kamailio_phone_register.xml"),
        kamailio.sip_addr(),
    )
    .key("phone_port", &phone_port)
    .args(&["-au", PHONE_USER, "-ap", PHONE_PASSWORD])
    .timeout(Duration::from_secs(10))
    .spawn()
    .wait();
    assert_eq!(registered.exit_code, Some(0), "{}", registered.errors);

    let dir = Scratch::new("kamailio-call");
    let config = dir.write(
        "dialerd.toml",
        &format!(
            "[[accounts]]\nname = \"{ACCOUNT}\"\nregistrar = \"{}\"\n\
             username = \"{DIALER_USER}\"\npassword = \"{DIALER_PASSWORD}\"\ntransport = \"tls\"\n\
             tls_ca_file = {:?}\n",
            kamailio.registrar_uri(),
            kamailio.ca_file().to_str().unwrap()
        ),
    );
    let out = std::process::Command::new(crate::support::dialerd_bin())
        .args([
            "call",
            "--config",
            config.to_str().unwrap(),
            "--profile",
            "local",
        ])
        .arg("--profile-dir")
        .arg(crate::support::repo_root().join("sip-profiles"))
        .args(["--account", ACCOUNT, "--hold-secs", "1"])
        .arg(format!("sip:{PHONE_USER}@{}", kamailio.sip_addr()))
        .env_remove("RUST_LOG")
        .output()
        .expect("run dialerd call");
    let stdout = text(&out.stdout);
    let outcome: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_default();
    assert_eq!(
        outcome["answered"],
        true,
        "{stdout}\n{}\nKamailio:\n{}",
        text(&out.stderr),
        kamailio.script_log().join("\n")
    );
    assert_eq!(outcome["cause"], "normal");
    let phone = phone.wait();
    assert_eq!(phone.exit_code, Some(0), "{}", phone.errors);
    // The INVITE reached the phone through Kamailio, which recorded its
    // route; the BYE followed it.
    let log = logged(&phone.messages);
    let invite = log
        .iter()
        .find(|m| m.received && m.first_line().starts_with("INVITE "))
        .expect("the phone got the INVITE");
    assert!(invite.header("Record-Route").is_some(), "{}", invite.text);
    assert!(
        log.iter()
            .any(|m| m.received && m.first_line().starts_with("BYE ")),
        "{}",
        phone.messages
    );
    // Kamailio challenged dialerd's INVITE and relayed the answered one.
    let relayed = kamailio
        .wait_script_line(Duration::from_secs(2), &["relay INVITE to sip:phone@"])
        .unwrap_or_else(|| panic!("no relay logged: {:?}", kamailio.script_log()));
    assert!(!relayed.is_empty());
}

/// A pcap (Ethernet, IPv4, UDP) of `packets` 20 ms RTP packets, PCMU
/// payload type 0, carrying a 1 kHz tone at about -10 dBm0: what SIPp's
/// `play_pcap_audio` sends.
pub(crate) fn tone_pcap(packets: u16) -> Vec<u8> {
    let mut out = Vec::new();
    // Global header: magic, version 2.4, zone, sigfigs, snaplen, Ethernet.
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for n in 0..packets {
        let mut rtp = vec![0x80, 0x00];
        rtp.extend_from_slice(&n.to_be_bytes());
        rtp.extend_from_slice(&(u32::from(n) * 160).to_be_bytes());
        rtp.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        for i in 0..160u32 {
            let t = f64::from(u32::from(n) * 160 + i) / 8000.0;
            let sample = (t * 1000.0 * std::f64::consts::TAU).sin() * 8000.0;
            rtp.push(ulaw_encode(sample as i32));
        }
        let udp_len = 8 + rtp.len();
        let ip_len = 20 + udp_len;
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&[0x45, 0x00]);
        frame.extend_from_slice(&(ip_len as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        frame.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
        frame.extend_from_slice(&4000u16.to_be_bytes());
        frame.extend_from_slice(&4002u16.to_be_bytes());
        frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&rtp);
        let usecs = u32::from(n) * 20_000;
        out.extend_from_slice(&(usecs / 1_000_000).to_le_bytes());
        out.extend_from_slice(&(usecs % 1_000_000).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    out
}

#[test]
fn an_outbound_call_through_kamailio_delivers_the_phones_tone_to_an_external_rtp_endpoint() {
    if !kamailio_available() {
        return;
    }
    use crate::support::redis::{RedisServer, Resp};
    let kamailio = Kamailio::start();
    let dir = Scratch::new("kamailio-media");
    let pcap = dir.path().join("tone.pcap");
    std::fs::write(&pcap, tone_pcap(150)).unwrap();
    // The phone of the calls test, playing the tone once the call is up.
    let answer = std::fs::read_to_string(scenario("kamailio_phone_answer.xml")).unwrap();
    let playing = answer.replace(
        "<recv request=\"ACK\"/>",
        &format!(
            "<recv request=\"ACK\"/>\n  <nop><action><exec play_pcap_audio=\"{}\"/></action></nop>",
            pcap.display()
        ),
    );
    assert_ne!(answer, playing, "the phone scenario has its ACK step");
    let phone_scenario = dir.write("phone_tone.xml", &playing);
    let phone = Sipp::server(&phone_scenario)
        .timeout(Duration::from_secs(40))
        .spawn();
    let registered = Sipp::client(
        &scenario("kamailio_phone_register.xml"),
        kamailio.sip_addr(),
    )
    .key("phone_port", &phone.local_addr().port().to_string())
    .args(&["-au", PHONE_USER, "-ap", PHONE_PASSWORD])
    .timeout(Duration::from_secs(10))
    .spawn()
    .wait();
    assert_eq!(registered.exit_code, Some(0), "{}", registered.errors);

    let redis = RedisServer::start(&[]);
    let config = dir.write(
        "dialerd.toml",
        &format!(
            "[instance]\nid = \"k\"\n[redis]\nenabled = true\nurl = \"{}\"\n\
             [[accounts]]\nname = \"{ACCOUNT}\"\nregistrar = \"{}\"\n\
             username = \"{DIALER_USER}\"\npassword = \"{DIALER_PASSWORD}\"\ntransport = \"tls\"\n\
             tls_ca_file = {:?}\n",
            redis.url(),
            kamailio.registrar_uri(),
            kamailio.ca_file().to_str().unwrap()
        ),
    );
    let dialerd = Daemon::start(
        &["--config", config.to_str().unwrap(), "--profile", "local"],
        &[
            ("DIALERD__REDIS__ENABLED", "true"),
            ("DIALERD__REDIS__URL", &redis.url()),
            ("DIALERD__INSTANCE__ID", "k"),
        ],
    );
    wait_state(&dialerd, "registered", Duration::from_secs(15));

    // The agent: a plain RTP receiver that wants A-law.
    let agent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    agent
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut replies = redis.client().unwrap();
    assert!(matches!(
        replies.command(&["SUBSCRIBE", "dialer:reply:km"]).unwrap(),
        Resp::Array(Some(_))
    ));
    replies
        .set_read_timeout(Duration::from_millis(200))
        .unwrap();
    let originate = serde_json::json!({
        "v": 1, "id": "km-1", "type": "originate", "reply_to": "dialer:reply:km",
        "args": {
            "account": ACCOUNT, "to": format!("sip:{PHONE_USER}@{}", kamailio.sip_addr()),
            "max_duration_secs": 6,
            "media": {"type": "rtp", "host": "127.0.0.1", "port": agent.local_addr().unwrap().port(), "codec": "PCMA"},
        },
    });
    let mut publisher = redis.client().unwrap();
    publisher
        .command(&["PUBLISH", "dialer:k:cmd", &originate.to_string()])
        .unwrap();
    let result = wait_for(Duration::from_secs(15), || match replies.read() {
        Ok(Resp::Array(Some(parts))) if parts.len() == 3 => {
            serde_json::from_str::<serde_json::Value>(&parts[2].text()?).ok()
        }
        _ => None,
    })
    .unwrap_or_else(|| panic!("no originate result\n{}", dialerd.log()));
    assert_eq!(result["ok"], true, "{result}");
    let port = result["result"]["media"]["port"].as_u64().unwrap_or(0);
    assert!(port > 0, "the result names the endpoint's port: {result}");

    // What reaches the agent: A-law RTP whose frames carry the 1 kHz tone.
    let mut buf = [0u8; 1500];
    let mut packets = 0;
    let mut tone_frames = 0;
    let mut seen = Vec::new();
    let end = std::time::Instant::now() + Duration::from_secs(12);
    while std::time::Instant::now() < end {
        let Ok((len, from)) = agent.recv_from(&mut buf) else {
            continue;
        };
        assert_eq!(from.port() as u64, port, "sent from the endpoint's port");
        if len != 172 || buf[1] & 0x7f != 8 {
            continue;
        }
        packets += 1;
        let samples: Vec<i32> = buf[12..len].iter().map(|b| alaw_decode(*b)).collect();
        let crossings = samples
            .windows(2)
            .filter(|w| (w[0] < 0) != (w[1] < 0))
            .count();
        let loud = samples.iter().map(|s| s.abs()).max().unwrap_or(0);
        if (38..=42).contains(&crossings) && loud > 4000 {
            tone_frames += 1;
        }
        if packets % 25 == 0 {
            seen.push((crossings, loud));
        }
    }
    let phone = phone.wait();
    assert!(
        tone_frames >= 100,
        "{tone_frames} of {packets} A-law packets carried the 1 kHz tone (zero crossings, peak of some: {seen:?})\nphone: {} {}\n{}",
        phone.errors,
        phone.messages.len(),
        dialerd.log()
    );
    assert_eq!(phone.exit_code, Some(0), "{}", phone.errors);
}
