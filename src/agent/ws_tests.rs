use super::*;

#[test]
fn the_accept_value_matches_rfc_6455_section_1_3() {
    // RFC 6455 §1.3: the key "dGhlIHNhbXBsZSBub25jZQ==" is answered with
    // "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".
    assert_eq!(
        accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn the_handshake_request_and_a_good_response() {
    // The nonce of RFC 6455 §1.3 ("the sample nonce").
    let (hs, request) = Handshake::request(
        "agent.example:8443",
        "/media?x=1",
        *b"the sample nonce",
        &[("Authorization".into(), "Bearer t".into())],
    );
    let text = String::from_utf8(request).unwrap();
    assert!(text.starts_with("GET /media?x=1 HTTP/1.1\r\nHost: agent.example:8443\r\n"));
    assert!(text.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
    assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
    assert!(text.contains("Authorization: Bearer t\r\n"));
    assert!(text.ends_with("\r\n\r\n"));

    let response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x00";
    let partial = response.get(..20).unwrap();
    assert_eq!(hs.response(partial), Ok(None));
    assert_eq!(hs.response(response), Ok(Some(response.len() - 2)));
}

#[test]
fn bad_responses_are_refused_with_why() {
    let (hs, _) = Handshake::request("h", "/", [7; 16], &[]);
    assert_eq!(
        hs.response(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"),
        Err(WsError::Refused(403))
    );
    assert_eq!(
        hs.response(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        ),
        Err(WsError::Handshake("wrong Sec-WebSocket-Accept"))
    );
    assert_eq!(
        hs.response(b"HTTP/1.1 101 OK\r\n\r\n"),
        Err(WsError::Handshake("no Upgrade: websocket"))
    );
    assert_eq!(
        hs.response(b"SSH-2.0-OpenSSH\r\n\r\n"),
        Err(WsError::Handshake("no status line"))
    );
    let endless = vec![b'a'; MAX_HEAD + 1];
    assert!(hs.response(&endless).is_err());
}

#[test]
fn frames_from_rfc_6455_section_5_7() {
    // A single-frame masked text message "Hello" with the RFC's mask.
    let mut out = Vec::new();
    encode(Opcode::Text, b"Hello", [0x37, 0xfa, 0x21, 0x3d], &mut out);
    assert_eq!(
        out,
        [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
        ]
    );

    let mut d = Decoder::new(1 << 20);
    // Unmasked "Hello"; then a fragmented "Hel" + "lo"; then a ping.
    d.push(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    d.push(&[0x01, 0x03, 0x48, 0x65, 0x6c]);
    d.push(&[0x80, 0x02, 0x6c, 0x6f]);
    d.push(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    assert_eq!(d.next_message(), Ok(Some(Incoming::Text("Hello".into()))));
    assert_eq!(d.next_message(), Ok(Some(Incoming::Text("Hello".into()))));
    assert_eq!(
        d.next_message(),
        Ok(Some(Incoming::Ping(b"Hello".to_vec())))
    );
    assert_eq!(d.next_message(), Ok(None));

    // 256 bytes of binary (16-bit length) and 64 KiB (64-bit length).
    let mut frame = vec![0x82, 0x7E, 0x01, 0x00];
    frame.extend(std::iter::repeat_n(9u8, 256));
    d.push(&frame);
    assert_eq!(d.next_message(), Ok(Some(Incoming::Binary(vec![9; 256]))));
    let mut frame = vec![0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0];
    frame.extend(std::iter::repeat_n(3u8, 65536));
    // Byte by byte: nothing until the last one.
    let (head, last) = frame.split_at(frame.len() - 1);
    for b in head.chunks(1000) {
        d.push(b);
        assert_eq!(d.next_message(), Ok(None));
    }
    d.push(last);
    assert_eq!(d.next_message(), Ok(Some(Incoming::Binary(vec![3; 65536]))));
}

#[test]
fn encoded_lengths_use_the_three_forms() {
    for (len, header) in [(125, 2 + 4), (126, 4 + 4), (65535, 4 + 4), (65536, 10 + 4)] {
        let mut out = Vec::new();
        encode(Opcode::Binary, &vec![0; len], [1, 2, 3, 4], &mut out);
        assert_eq!(out.len(), header + len, "{len}");
    }
    let mut out = Vec::new();
    encode_close(1000, "bye", [0; 4], &mut out);
    assert_eq!(out, [0x88, 0x85, 0, 0, 0, 0, 0x03, 0xE8, b'b', b'y', b'e']);
}

#[test]
fn a_frame_over_the_limit_fails_at_its_header_before_its_payload() {
    let mut d = Decoder::new(1 << 20);
    // A 10 MB text frame: only its header has arrived.
    let len: u64 = 10 * 1024 * 1024;
    let mut header = vec![0x81, 0x7F];
    header.extend_from_slice(&len.to_be_bytes());
    d.push(&header);
    assert_eq!(d.next_message(), Err(WsError::TooBig(len)));
    assert_eq!(WsError::TooBig(len).close_code(), 1009);

    // Fragments that add up past the limit fail as well.
    let mut d = Decoder::new(100);
    d.push(&[0x01, 60]);
    d.push(&[0; 60]);
    d.push(&[0x80, 60]);
    assert_eq!(d.next_message(), Err(WsError::TooBig(120)));
}

#[test]
fn protocol_violations_are_errors_not_panics() {
    let cases: [&[u8]; 6] = [
        &[0x81, 0x85, 1, 2, 3, 4, 0, 0, 0, 0, 0], // masked by the server
        &[0xC1, 0x00],                            // reserved bit
        &[0x83, 0x00],                            // unknown opcode
        &[0x09, 0x00],                            // fragmented ping
        &[0x80, 0x00],                            // continuation of nothing
        &[0x81, 0x02, 0xC3, 0x28],                // text that is not UTF-8
    ];
    for bytes in cases {
        let mut d = Decoder::new(1024);
        d.push(bytes);
        assert!(d.next_message().is_err(), "{bytes:?}");
    }
    let mut d = Decoder::new(1024);
    d.push(&[0x88, 0x02, 0x03, 0xE8, 0x8A, 0x00]);
    assert_eq!(d.next_message(), Ok(Some(Incoming::Close(Some(1000)))));
    assert_eq!(d.next_message(), Ok(Some(Incoming::Pong)));
}

#[test]
fn arbitrary_bytes_never_panic_the_decoder() {
    let mut state = 0x1234_5678_9abc_def0_u64;
    for _ in 0..2000 {
        let mut d = Decoder::new(4096);
        let mut bytes = Vec::new();
        for _ in 0..(state % 64) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.push(state as u8);
        }
        d.push(&bytes);
        while let Ok(Some(_)) = d.next_message() {}
    }
}
