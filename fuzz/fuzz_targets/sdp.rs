//! Arbitrary bytes (decoded lossily as UTF-8) into the SDP layer: parsing,
//! every accessor, writing, answering and accepting must never panic; a
//! description that parses is written back to one that parses to the same
//! value, and so is our answer to it.

#![no_main]

use dialerd::sdp::{
    Codec, Direction, LocalMedia, Origin, SessionDescription, accept_answer, answer, parse,
};
use libfuzzer_sys::fuzz_target;

fn exercise(sdp: &SessionDescription) {
    let _ = sdp.direction();
    for (i, m) in sdp.media.iter().enumerate() {
        let _ = (sdp.media_direction(i), sdp.media_connection(i));
        let _ = (m.direction(), m.ptime(), m.is_audio());
        for pt in m.payload_types() {
            let _ = (m.rtpmap(pt), m.fmtp(pt), m.codec(pt));
        }
    }
}

fn round_trip(sdp: &SessionDescription) {
    let written = sdp.to_string();
    let back = parse(&written).expect("a written description parses");
    assert_eq!(&back, sdp, "a written description parses to itself");
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(offer) = parse(&text) else {
        return;
    };
    exercise(&offer);
    round_trip(&offer);
    let held = offer.with_direction(Direction::SendOnly);
    round_trip(&held);

    let address = "192.0.2.10".parse().expect("address");
    let mut local = LocalMedia::new(
        address,
        40000,
        vec![
            Codec::Opus,
            Codec::G722,
            Codec::Pcmu,
            Codec::Pcma,
            Codec::TelephoneEvent,
        ],
    );
    local.ptime_ms = Some(20);
    if let Ok((ours, negotiated)) = answer(&offer, &local, Origin::new("-", 1, 1, address)) {
        round_trip(&ours);
        assert_eq!(ours.media.len(), offer.media.len());
        assert!(negotiated.stream_index < offer.media.len());
    }
    // The parsed description as the answer to an offer of ours.
    let ours = dialerd::sdp::offer(&local, Origin::new("-", 1, 1, address));
    let _ = accept_answer(&ours, &offer);
    let _ = accept_answer(&offer, &offer);
});
