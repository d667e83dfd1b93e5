//! The RTP fixed header (RFC 3550 §5.1), read and rewritten in place.
//!
//! Nothing here copies or allocates: [`parse`] returns the header fields
//! and where the payload lies in the packet, and the setters rewrite one
//! field of a packet the relay is about to forward.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |V=2|P|X|  CC   |M|     PT      |       sequence number         |
//! |                           timestamp                           |
//! |           synchronization source (SSRC) identifier            |
//! |            contributing source (CSRC) identifiers             |
//! |                             ....                              |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use std::ops::Range;

/// Length of the fixed RTP header, without CSRCs or extension.
pub const HEADER_LEN: usize = 12;

/// The only RTP version there is.
const VERSION: u8 = 2;

/// The fields of an RTP header and where its payload lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The marker bit (M).
    pub marker: bool,
    /// The payload type (PT), 0-127.
    pub payload_type: u8,
    /// The sequence number.
    pub sequence: u16,
    /// The RTP timestamp.
    pub timestamp: u32,
    /// The synchronization source.
    pub ssrc: u32,
    /// Offset of the payload: after the CSRCs and the header extension.
    pub payload_start: usize,
    /// End of the payload: before any padding.
    pub payload_end: usize,
}

impl Header {
    /// The payload's byte range in the packet.
    pub fn payload_range(&self) -> Range<usize> {
        self.payload_start..self.payload_end
    }
}

/// Why a datagram is not a valid RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// Shorter than the fixed header plus its CSRC list.
    #[error("RTP packet shorter than its header")]
    TooShort,
    /// A version other than 2.
    #[error("RTP version {0}, expected 2")]
    Version(u8),
    /// The padding count is zero or longer than the payload.
    #[error("RTP padding count is zero or longer than the payload")]
    Padding,
    /// The header extension runs past the end of the packet.
    #[error("RTP header extension runs past the end of the packet")]
    Extension,
}

/// Reads the RTP header of `packet`.
///
/// The version must be 2. The CSRC list and the header extension (its
/// 4-byte header, then `length` 32-bit words) are skipped; with the P
/// bit set, the last byte is the padding count, which counts itself, so
/// it must be at least 1 and fit in what follows the header.
pub fn parse(packet: &[u8]) -> Result<Header, RtpError> {
    let Some(&[b0, b1, s0, s1, t0, t1, t2, t3, i0, i1, i2, i3]) =
        packet.first_chunk::<HEADER_LEN>()
    else {
        return Err(RtpError::TooShort);
    };
    let version = b0 >> 6;
    if version != VERSION {
        return Err(RtpError::Version(version));
    }
    let padded = b0 & 0x20 != 0;
    let extended = b0 & 0x10 != 0;
    let csrcs = usize::from(b0 & 0x0F);

    let mut start = HEADER_LEN + 4 * csrcs;
    if start > packet.len() {
        return Err(RtpError::TooShort);
    }
    if extended {
        let words = packet
            .get(start + 2..start + 4)
            .and_then(|b| b.first_chunk::<2>())
            .map(|&b| usize::from(u16::from_be_bytes(b)))
            .ok_or(RtpError::Extension)?;
        start += 4 + 4 * words;
        if start > packet.len() {
            return Err(RtpError::Extension);
        }
    }
    let mut end = packet.len();
    if padded {
        let pad = packet.last().map_or(0, |&p| usize::from(p));
        if pad == 0 || pad > end - start {
            return Err(RtpError::Padding);
        }
        end -= pad;
    }
    Ok(Header {
        marker: b1 & 0x80 != 0,
        payload_type: b1 & 0x7F,
        sequence: u16::from_be_bytes([s0, s1]),
        timestamp: u32::from_be_bytes([t0, t1, t2, t3]),
        ssrc: u32::from_be_bytes([i0, i1, i2, i3]),
        payload_start: start,
        payload_end: end,
    })
}

/// Whether `packet` is RTCP rather than RTP on a shared port (RFC 5761
/// §4): version 2 and a second byte in 192..=223, the RTCP packet types
/// (SR 200, RR 201, SDES 202, BYE 203, APP 204, feedback 205-206 …).
/// RTP with the marker bit and a payload type of 64-95 would look the
/// same, which is why RFC 5761 keeps those payload types out of use.
pub fn is_rtcp(packet: &[u8]) -> bool {
    matches!(packet, [b0, 192..=223, ..] if b0 >> 6 == VERSION)
}

/// The sender SSRC of an RTCP packet (bytes 4..8), if it is that long.
pub fn rtcp_ssrc(packet: &[u8]) -> Option<u32> {
    packet
        .get(4..8)
        .and_then(|b| b.first_chunk::<4>())
        .map(|&b| u32::from_be_bytes(b))
}

/// The fixed header of `packet`, or `None` if it is shorter than that.
fn fixed_mut(packet: &mut [u8]) -> Option<&mut [u8; HEADER_LEN]> {
    packet.first_chunk_mut::<HEADER_LEN>()
}

/// Rewrites the payload type (its low 7 bits), keeping the marker bit.
/// A packet shorter than the fixed header is left alone.
pub fn set_payload_type(packet: &mut [u8], pt: u8) {
    if let Some([_, b1, ..]) = fixed_mut(packet) {
        *b1 = (*b1 & 0x80) | (pt & 0x7F);
    }
}

/// Sets or clears the marker bit, keeping the payload type. A packet
/// shorter than the fixed header is left alone.
pub fn set_marker(packet: &mut [u8], marker: bool) {
    if let Some([_, b1, ..]) = fixed_mut(packet) {
        *b1 = (*b1 & 0x7F) | (u8::from(marker) << 7);
    }
}

/// Rewrites the sequence number. A packet shorter than the fixed header
/// is left alone.
pub fn set_sequence(packet: &mut [u8], seq: u16) {
    if let Some([_, _, s0, s1, ..]) = fixed_mut(packet) {
        [*s0, *s1] = seq.to_be_bytes();
    }
}

/// Rewrites the timestamp. A packet shorter than the fixed header is
/// left alone.
pub fn set_timestamp(packet: &mut [u8], ts: u32) {
    if let Some([_, _, _, _, t0, t1, t2, t3, ..]) = fixed_mut(packet) {
        [*t0, *t1, *t2, *t3] = ts.to_be_bytes();
    }
}

/// Rewrites the SSRC. A packet shorter than the fixed header is left
/// alone.
pub fn set_ssrc(packet: &mut [u8], ssrc: u32) {
    if let Some([.., i0, i1, i2, i3]) = fixed_mut(packet) {
        [*i0, *i1, *i2, *i3] = ssrc.to_be_bytes();
    }
}

/// Writes a 12-byte header (V=2, no padding, extension or CSRCs) at the
/// start of `out`; `Some(HEADER_LEN)`, or `None` if `out` is too short.
pub fn write_header(
    out: &mut [u8],
    marker: bool,
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
) -> Option<usize> {
    let header = fixed_mut(out)?;
    let [s0, s1] = seq.to_be_bytes();
    let [t0, t1, t2, t3] = ts.to_be_bytes();
    let [i0, i1, i2, i3] = ssrc.to_be_bytes();
    *header = [
        VERSION << 6,
        (u8::from(marker) << 7) | (pt & 0x7F),
        s0,
        s1,
        t0,
        t1,
        t2,
        t3,
        i0,
        i1,
        i2,
        i3,
    ];
    Some(HEADER_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet with the given first byte, the fixed fields below, and
    /// `rest` after the fixed header.
    fn packet(b0: u8, rest: &[u8]) -> Vec<u8> {
        let mut p = vec![
            b0,
            0x80 | 8,
            0x12,
            0x34,
            0xDE,
            0xAD,
            0xBE,
            0xEF,
            0x01,
            0x02,
            0x03,
            0x04,
        ];
        p.extend_from_slice(rest);
        p
    }

    #[test]
    fn a_plain_header_parses() {
        let p = packet(0x80, &[1, 2, 3, 4, 5]);
        let h = parse(&p).unwrap();
        assert_eq!(
            h,
            Header {
                marker: true,
                payload_type: 8,
                sequence: 0x1234,
                timestamp: 0xDEAD_BEEF,
                ssrc: 0x0102_0304,
                payload_start: 12,
                payload_end: 17,
            }
        );
        assert_eq!(&p[h.payload_range()], &[1, 2, 3, 4, 5]);
    }

    #[test]
    fn an_empty_payload_is_valid() {
        let h = parse(&packet(0x80, &[])).unwrap();
        assert_eq!((h.payload_start, h.payload_end), (12, 12));
    }

    #[test]
    fn short_packets_are_refused() {
        let p = packet(0x80, &[]);
        for len in 0..HEADER_LEN {
            assert_eq!(parse(&p[..len]), Err(RtpError::TooShort), "{len}");
        }
    }

    #[test]
    fn other_versions_are_refused() {
        for v in [0u8, 1, 3] {
            let p = packet(v << 6, &[0; 4]);
            assert_eq!(parse(&p), Err(RtpError::Version(v)));
        }
    }

    #[test]
    fn csrcs_are_skipped() {
        let p = packet(0x82, &[0, 0, 0, 1, 0, 0, 0, 2, 0xAA]);
        let h = parse(&p).unwrap();
        assert_eq!(h.payload_start, 20);
        assert_eq!(&p[h.payload_range()], &[0xAA]);
    }

    #[test]
    fn a_csrc_list_past_the_end_is_too_short() {
        let p = packet(0x83, &[0, 0, 0, 1, 0, 0, 0, 2]);
        assert_eq!(parse(&p), Err(RtpError::TooShort));
    }

    #[test]
    fn the_header_extension_is_skipped() {
        // Profile 0xBEDE, 2 words, then the payload.
        let p = packet(
            0x90,
            &[0xBE, 0xDE, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8, 0x55, 0x66],
        );
        let h = parse(&p).unwrap();
        assert_eq!(h.payload_start, 24);
        assert_eq!(&p[h.payload_range()], &[0x55, 0x66]);
    }

    #[test]
    fn csrcs_and_extension_together() {
        let p = packet(0x91, &[0, 0, 0, 9, 0x10, 0x00, 0, 1, 1, 2, 3, 4, 0x77]);
        let h = parse(&p).unwrap();
        assert_eq!(h.payload_start, 24);
        assert_eq!(&p[h.payload_range()], &[0x77]);
    }

    #[test]
    fn an_extension_past_the_end_is_refused() {
        // Header of the extension cut short.
        assert_eq!(
            parse(&packet(0x90, &[0xBE, 0xDE])),
            Err(RtpError::Extension)
        );
        // Length claims more words than there are.
        assert_eq!(
            parse(&packet(0x90, &[0xBE, 0xDE, 0, 2, 1, 2, 3, 4])),
            Err(RtpError::Extension)
        );
        // An extension that ends exactly at the end is fine.
        let h = parse(&packet(0x90, &[0xBE, 0xDE, 0, 1, 1, 2, 3, 4])).unwrap();
        assert_eq!((h.payload_start, h.payload_end), (20, 20));
    }

    #[test]
    fn padding_is_removed() {
        let p = packet(0xA0, &[9, 9, 9, 0, 0, 3]);
        let h = parse(&p).unwrap();
        assert_eq!(&p[h.payload_range()], &[9, 9, 9]);
        // Padding that is the whole payload.
        let p = packet(0xA0, &[0, 0, 0, 4]);
        let h = parse(&p).unwrap();
        assert_eq!((h.payload_start, h.payload_end), (12, 12));
    }

    #[test]
    fn bad_padding_is_refused() {
        // Longer than what follows the header.
        assert_eq!(parse(&packet(0xA0, &[0, 0, 5])), Err(RtpError::Padding));
        // Zero: the count includes itself.
        assert_eq!(parse(&packet(0xA0, &[1, 2, 0])), Err(RtpError::Padding));
        // No room at all: the last byte is in the header.
        assert_eq!(parse(&packet(0xA0, &[])), Err(RtpError::Padding));
        // Padding may not eat into the extension.
        assert_eq!(
            parse(&packet(0xB0, &[0xBE, 0xDE, 0, 0, 0, 3])),
            Err(RtpError::Padding)
        );
    }

    #[test]
    fn rtcp_is_told_from_rtp() {
        // Sender report, receiver report, SDES, BYE, APP: 200-204.
        for pt in 200u8..=204 {
            assert!(is_rtcp(&[0x80, pt, 0, 6]), "{pt}");
        }
        // The whole reserved range, both ends.
        assert!(is_rtcp(&[0x81, 192]));
        assert!(is_rtcp(&[0x81, 223]));
        // RTP: PCMU, PCMA with marker, dynamic 96 and 101, 127 with marker.
        for b1 in [0u8, 0x88, 96, 101, 0x80 | 101, 0xFF, 191, 224] {
            assert!(!is_rtcp(&[0x80, b1, 0, 1]), "{b1}");
        }
        // Wrong version or too short.
        assert!(!is_rtcp(&[0x40, 200, 0, 6]));
        assert!(!is_rtcp(&[0x80]));
        assert!(!is_rtcp(&[]));
    }

    #[test]
    fn the_rtcp_sender_ssrc_is_read() {
        let rr = [0x80, 201, 0, 1, 0xCA, 0xFE, 0xBA, 0xBE];
        assert_eq!(rtcp_ssrc(&rr), Some(0xCAFE_BABE));
        assert_eq!(rtcp_ssrc(&rr[..7]), None);
    }

    #[test]
    fn setters_rewrite_one_field_each() {
        let mut p = packet(0x80, &[1, 2, 3]);
        let before = parse(&p).unwrap();

        set_payload_type(&mut p, 0xFF);
        let h = parse(&p).unwrap();
        assert_eq!((h.payload_type, h.marker), (127, true));
        set_payload_type(&mut p, 0);
        let h = parse(&p).unwrap();
        assert_eq!((h.payload_type, h.marker), (0, true));

        set_marker(&mut p, false);
        let h = parse(&p).unwrap();
        assert_eq!((h.payload_type, h.marker), (0, false));
        set_marker(&mut p, true);
        assert!(parse(&p).unwrap().marker);

        set_sequence(&mut p, 0xFFFE);
        set_timestamp(&mut p, 0x0BAD_F00D);
        set_ssrc(&mut p, 0x1122_3344);
        let h = parse(&p).unwrap();
        assert_eq!(h.sequence, 0xFFFE);
        assert_eq!(h.timestamp, 0x0BAD_F00D);
        assert_eq!(h.ssrc, 0x1122_3344);
        assert_eq!(h.payload_range(), before.payload_range());
        assert_eq!(p[0], 0x80);
        assert_eq!(&p[12..], &[1, 2, 3]);
    }

    #[test]
    fn setters_leave_short_packets_alone() {
        let mut p = [0x80u8, 0, 0, 0, 0, 0];
        set_payload_type(&mut p, 8);
        set_marker(&mut p, true);
        set_sequence(&mut p, 7);
        set_timestamp(&mut p, 7);
        set_ssrc(&mut p, 7);
        assert_eq!(p, [0x80, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn a_written_header_parses_back() {
        let mut out = [0xEEu8; 20];
        assert_eq!(
            write_header(&mut out, true, 101, 65535, u32::MAX, 42),
            Some(HEADER_LEN)
        );
        let h = parse(&out).unwrap();
        assert_eq!(
            (h.marker, h.payload_type, h.sequence, h.timestamp, h.ssrc),
            (true, 101, 65535, u32::MAX, 42)
        );
        assert_eq!(h.payload_start, HEADER_LEN);
        assert_eq!(&out[12..], &[0xEE; 8]);

        write_header(&mut out, false, 0xFF, 1, 2, 3).unwrap();
        let h = parse(&out).unwrap();
        assert_eq!((h.marker, h.payload_type), (false, 127));
        assert_eq!(out[0], 0x80);
    }

    #[test]
    fn a_short_buffer_gets_no_header() {
        let mut out = [0u8; 11];
        assert_eq!(write_header(&mut out, false, 0, 0, 0, 0), None);
        assert_eq!(out, [0; 11]);
    }
}
