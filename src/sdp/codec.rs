//! The audio codecs dialerd knows and how an `m=` line's formats map to them (RFC 3551).

use std::fmt;

use super::{Media, number};

/// An audio codec dialerd can negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 µ-law, static payload type 0.
    Pcmu,
    /// G.711 A-law, static payload type 8.
    Pcma,
    /// G.722, static payload type 9 (RTP clock 8000 although it samples at 16 kHz).
    G722,
    /// Opus (RFC 7587), dynamic payload type, `opus/48000/2`.
    Opus,
    /// DTMF events (RFC 4733), dynamic payload type, `telephone-event/8000`.
    TelephoneEvent,
}

impl Codec {
    /// Every codec.
    pub const ALL: [Codec; 5] = [
        Codec::Pcmu,
        Codec::Pcma,
        Codec::G722,
        Codec::Opus,
        Codec::TelephoneEvent,
    ];

    /// The encoding name of `a=rtpmap` (matched in any case).
    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
            Codec::Opus => "opus",
            Codec::TelephoneEvent => "telephone-event",
        }
    }

    /// The codec an encoding name names (any case), as configuration
    /// writes it.
    pub fn from_name(name: &str) -> Option<Codec> {
        Codec::ALL
            .into_iter()
            .find(|c| c.encoding_name().eq_ignore_ascii_case(name))
    }

    /// The RTP clock rate.
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus => 48000,
            _ => 8000,
        }
    }

    /// The channel count written in `a=rtpmap`: 2 for opus, none for the others.
    pub fn channels(self) -> Option<u16> {
        match self {
            Codec::Opus => Some(2),
            _ => None,
        }
    }

    /// The static payload type (RFC 3551 §6), if the codec has one.
    pub fn static_payload_type(self) -> Option<u8> {
        match self {
            Codec::Pcmu => Some(0),
            Codec::Pcma => Some(8),
            Codec::G722 => Some(9),
            Codec::Opus | Codec::TelephoneEvent => None,
        }
    }

    /// The codec of a static payload type: 0, 8 or 9.
    pub fn from_static_payload_type(pt: u8) -> Option<Codec> {
        Codec::ALL
            .into_iter()
            .find(|c| c.static_payload_type() == Some(pt))
    }

    /// The codec an `a=rtpmap` names: same encoding name (any case) and clock rate, and one
    /// channel (none written) except for opus, whose channel count is not checked.
    pub fn from_rtpmap(map: &RtpMap<'_>) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| {
            c.encoding_name().eq_ignore_ascii_case(map.encoding)
                && c.clock_rate() == map.clock_rate
                && (*c == Codec::Opus || map.channels.unwrap_or(1) == 1)
        })
    }

    /// The `a=rtpmap` value for this codec as payload type `pt`: `96 opus/48000/2`.
    pub fn rtpmap_value(self, pt: u8) -> String {
        match self.channels() {
            Some(channels) => format!(
                "{pt} {}/{}/{channels}",
                self.encoding_name(),
                self.clock_rate()
            ),
            None => format!("{pt} {}/{}", self.encoding_name(), self.clock_rate()),
        }
    }
}

impl fmt::Display for Codec {
    /// The encoding name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encoding_name())
    }
}

/// The mapping of an `a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpMap<'a> {
    /// Encoding name as written.
    pub encoding: &'a str,
    /// Clock rate in Hz.
    pub clock_rate: u32,
    /// Encoding parameters: the channel count for audio.
    pub channels: Option<u16>,
}

impl<'a> RtpMap<'a> {
    /// Reads `<encoding>/<clock rate>[/<channels>]`.
    pub fn parse(text: &'a str) -> Option<RtpMap<'a>> {
        let mut parts = text.trim().split('/');
        let encoding = parts.next().filter(|e| !e.is_empty())?;
        let clock_rate = number(parts.next()?)?;
        let channels = match parts.next() {
            Some(channels) => Some(number(channels)?),
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(RtpMap {
            encoding,
            clock_rate,
            channels,
        })
    }
}

impl Media {
    /// The formats that are RTP payload type numbers, in order.
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats.iter().filter_map(|f| number(f))
    }

    /// The well-formed `a=rtpmap` of payload type `pt`, if any.
    pub fn rtpmap(&self, pt: u8) -> Option<RtpMap<'_>> {
        self.payload_attributes("rtpmap", pt)
            .find_map(RtpMap::parse)
    }

    /// The parameters of `a=fmtp:<pt> <parameters>`, if any.
    pub fn fmtp(&self, pt: u8) -> Option<&str> {
        self.payload_attributes("fmtp", pt).next()
    }

    /// The codec of payload type `pt`: by its `a=rtpmap` when it has a well-formed one, else by
    /// the static payload types (0 PCMU, 8 PCMA, 9 G722).
    pub fn codec(&self, pt: u8) -> Option<Codec> {
        match self.rtpmap(pt) {
            Some(map) => Codec::from_rtpmap(&map),
            None => Codec::from_static_payload_type(pt),
        }
    }

    /// The values after `<pt> ` of the attributes called `name` about payload type `pt`.
    fn payload_attributes<'a>(&'a self, name: &'a str, pt: u8) -> impl Iterator<Item = &'a str> {
        self.attributes
            .iter()
            .filter(move |a| a.name.eq_ignore_ascii_case(name))
            .filter_map(|a| a.value.as_deref())
            .filter_map(move |value| {
                let (format, rest) = value.trim_start().split_once([' ', '\t'])?;
                (number::<u8>(format)? == pt).then_some(rest.trim())
            })
    }
}
