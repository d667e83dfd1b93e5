//! G.711 for the tests' own ends of a call: their own decoders (ITU-T
//! G.711, 16-bit scale) and encoders by nearest code, independent of
//! dialerd's tables.

/// G.711 A-law to linear (ITU-T G.711, 16-bit scale).
pub fn alaw_decode(code: u8) -> i32 {
    let a = code ^ 0x55;
    let mut t = i32::from(a & 0x0f) << 4;
    let seg = i32::from((a & 0x70) >> 4);
    t = match seg {
        0 => t + 8,
        1 => t + 0x108,
        _ => (t + 0x108) << (seg - 1),
    };
    if a & 0x80 != 0 { t } else { -t }
}

/// G.711 µ-law to linear (ITU-T G.711, 16-bit scale).
pub fn ulaw_decode(code: u8) -> i32 {
    let u = !code;
    let t = ((i32::from(u & 0x0f) << 3) + 0x84) << ((u & 0x70) >> 4);
    if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }
}

/// The A-law code nearest to `x` (by search: the test's own encoder).
pub fn alaw_encode(x: i32) -> u8 {
    (0..=255u8)
        .min_by_key(|c| (alaw_decode(*c) - x).abs())
        .unwrap()
}

/// The µ-law code nearest to `x` (by search).
pub fn ulaw_encode(x: i32) -> u8 {
    (0..=255u8)
        .min_by_key(|c| (ulaw_decode(*c) - x).abs())
        .unwrap()
}
