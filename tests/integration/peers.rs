//! The test harness's own peers work: a command round trip to a spawned
//! redis-server, and a SIPp client/server pair on loopback.

use crate::support::redis::{RedisServer, Resp};
use crate::support::sipp::{Sipp, SippTransport, scenario};

#[test]
fn redis_server_answers_commands_and_pubsub() {
    let redis = RedisServer::start(&[]);
    let mut c = redis.client().unwrap();
    assert_eq!(c.command(&["PING"]).unwrap(), Resp::Simple("PONG".into()));
    assert_eq!(
        c.command(&["SET", "dialer:test", "v1", "PX", "60000"])
            .unwrap(),
        Resp::Simple("OK".into())
    );
    assert_eq!(
        c.command(&["GET", "dialer:test"])
            .unwrap()
            .text()
            .as_deref(),
        Some("v1")
    );
    assert_eq!(
        c.command(&["SET", "dialer:test", "v2", "NX"]).unwrap(),
        Resp::Bulk(None),
        "NX refuses an existing key"
    );

    let mut sub = redis.client().unwrap();
    let ack = sub.command(&["SUBSCRIBE", "dialer:events"]).unwrap();
    assert_eq!(
        ack,
        Resp::Array(Some(vec![
            Resp::Bulk(Some(b"subscribe".to_vec())),
            Resp::Bulk(Some(b"dialer:events".to_vec())),
            Resp::Integer(1),
        ]))
    );
    assert_eq!(
        c.command(&["PUBLISH", "dialer:events", "{\"v\":1}"])
            .unwrap(),
        Resp::Integer(1)
    );
    let pushed = sub.read().unwrap();
    assert_eq!(
        pushed,
        Resp::Array(Some(vec![
            Resp::Bulk(Some(b"message".to_vec())),
            Resp::Bulk(Some(b"dialer:events".to_vec())),
            Resp::Bulk(Some(b"{\"v\":1}".to_vec())),
        ]))
    );
    assert!(
        redis.log().contains("Ready to accept connections"),
        "{}",
        redis.log()
    );
}

fn options_pair(transport: SippTransport, calls: u32) {
    let server = Sipp::server(&scenario("options_uas.xml"))
        .transport(transport)
        .calls(calls)
        .spawn();
    let client = Sipp::client(&scenario("options_uac.xml"), server.local_addr())
        .transport(transport)
        .calls(calls)
        .spawn()
        .wait();
    let server = server.wait();
    assert_eq!(
        client.exit_code,
        Some(0),
        "client errors: {}",
        client.errors
    );
    assert_eq!(client.successful(), u64::from(calls), "{:?}", client.stats);
    assert_eq!(client.failed(), 0);
    assert_eq!(
        server.exit_code,
        Some(0),
        "server errors: {}",
        server.errors
    );
    assert_eq!(server.successful(), u64::from(calls), "{:?}", server.stats);
    assert!(
        client.messages.contains("OPTIONS sip:127.0.0.1:"),
        "{}",
        client.messages
    );
    assert!(
        client.messages.contains("SIP/2.0 200 OK"),
        "{}",
        client.messages
    );
}

#[test]
fn sipp_client_and_server_exchange_options_over_udp() {
    options_pair(SippTransport::Udp, 3);
}

#[test]
fn sipp_client_and_server_exchange_options_over_tcp() {
    options_pair(SippTransport::Tcp, 1);
}

#[test]
fn sipp_reports_a_failed_call_when_nobody_answers() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let client = Sipp::client(&scenario("options_uac.xml"), silent.local_addr().unwrap())
        .timeout(std::time::Duration::from_secs(2))
        .spawn()
        .wait();
    assert_ne!(
        client.exit_code,
        Some(0),
        "a call with no answer is not a success"
    );
    assert_eq!(client.successful(), 0);
}
