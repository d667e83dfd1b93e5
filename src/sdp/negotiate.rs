//! The offer/answer model (RFC 3264) for one audio stream.

use std::net::{IpAddr, SocketAddr};

use super::crypto::{
    Crypto, CryptoSuite, DtlsParams, Fingerprint, LocalKeys, SdesKeys, Setup, SrtpPolicy,
};
use super::{Attribute, Codec, Connection, Direction, Media, Origin, SessionDescription};

/// What dialerd can do with the audio of a call: the input of [`offer`] and [`answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMedia {
    /// Where we receive RTP.
    pub address: IpAddr,
    /// The RTP port.
    pub port: u16,
    /// Codecs in order of preference; include [`Codec::TelephoneEvent`] for RFC 4733 DTMF.
    pub codecs: Vec<Codec>,
    /// Our `a=ptime`, if any.
    pub ptime_ms: Option<u32>,
    /// What we want to do: sendrecv, or sendonly to hold.
    pub direction: Direction,
    /// Payload type of telephone-event in our offers.
    pub dtmf_pt: u8,
    /// Payload type of opus in our offers.
    pub opus_pt: u8,
    /// Whether the audio is encrypted (SDES-SRTP).
    pub srtp: SrtpPolicy,
    /// Our SDES keys, one per suite (the call keeps them across re-INVITEs).
    pub keys: LocalKeys,
    /// Our DTLS certificate's fingerprint; `None`: DTLS-SRTP is not offered
    /// or answered.
    pub fingerprint: Option<Fingerprint>,
}

impl LocalMedia {
    /// Payload type of telephone-event in our offers unless told otherwise.
    pub const DEFAULT_DTMF_PT: u8 = 101;
    /// Payload type of opus in our offers unless told otherwise.
    pub const DEFAULT_OPUS_PT: u8 = 111;

    /// Sendrecv media with no ptime and the default dynamic payload types.
    pub fn new(address: IpAddr, port: u16, codecs: Vec<Codec>) -> LocalMedia {
        LocalMedia {
            address,
            port,
            codecs,
            ptime_ms: None,
            direction: Direction::SendRecv,
            dtmf_pt: LocalMedia::DEFAULT_DTMF_PT,
            opus_pt: LocalMedia::DEFAULT_OPUS_PT,
            srtp: SrtpPolicy::Off,
            keys: LocalKeys::default(),
            fingerprint: None,
        }
    }

    /// The same media with SRTP `policy` and our `keys`.
    pub fn with_srtp(mut self, policy: SrtpPolicy, keys: LocalKeys) -> LocalMedia {
        self.srtp = policy;
        self.keys = keys;
        self
    }

    /// Our `a=crypto` lines for an offer: tags 1, 2, ... for the offered suites.
    fn offered_crypto(&self) -> impl Iterator<Item = Crypto> + '_ {
        CryptoSuite::OFFERED
            .into_iter()
            .filter_map(|suite| Some((suite, self.keys.key(suite)?.clone())))
            .zip(1..)
            .map(|((suite, key), tag)| Crypto { tag, suite, key })
    }

    /// The payload type we give `codec` in an offer.
    fn payload_type(&self, codec: Codec) -> u8 {
        match (codec, codec.static_payload_type()) {
            (_, Some(pt)) => pt,
            (Codec::Opus, None) => self.opus_pt,
            (_, None) => self.dtmf_pt,
        }
    }

    /// Our codecs in order, each once.
    fn preferences(&self) -> Vec<Codec> {
        let mut codecs: Vec<Codec> = Vec::with_capacity(self.codecs.len());
        for codec in &self.codecs {
            if !codecs.contains(codec) {
                codecs.push(*codec);
            }
        }
        codecs
    }
}

/// The outcome of an offer/answer exchange for the audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Where to send RTP: the peer's connection address and port.
    pub remote: SocketAddr,
    /// The codec to send.
    pub codec: Codec,
    /// Its payload type, as the peer numbered it.
    pub payload_type: u8,
    /// The peer's telephone-event payload type, when both sides have it.
    pub dtmf_payload_type: Option<u8>,
    /// The peer's `a=ptime`, else ours.
    pub ptime_ms: Option<u32>,
    /// What we do: whether we send and receive.
    pub local_direction: Direction,
    /// What the peer does (an RFC 2543 hold address counts as not receiving).
    pub remote_direction: Direction,
    /// Index of the audio stream among the `m=` sections.
    pub stream_index: usize,
    /// RTCP shares the RTP port (RFC 5761: offered and answered).
    pub rtcp_mux: bool,
    /// The SDES keys when the stream is SDES-SRTP.
    pub srtp: Option<SdesKeys>,
    /// Our role and the peer's fingerprint when the stream is DTLS-SRTP.
    pub dtls: Option<DtlsParams>,
}

/// Why an offer/answer exchange produced no audio stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NegotiateError {
    /// The offer has no audio stream with a port (answer with 488).
    #[error("no audio stream offered")]
    NoAudio,
    /// No offered audio stream has plain RTP and a codec in common with us (488).
    #[error("no audio codec in common")]
    NoCommonCodec,
    /// The audio stream has no `c=`, neither its own nor the session's.
    #[error("no connection address for the audio stream")]
    NoConnection,
    /// The answer's `m=` sections do not match the offer's.
    #[error("the answer's media sections do not match the offer's")]
    MismatchedStreams,
    /// The answer rejected our audio stream (port 0).
    #[error("the audio stream was rejected")]
    Rejected,
    /// SRTP is required and the peer offered or answered plain RTP (488,
    /// cause `srtp_required`).
    #[error("SRTP is required and the peer offered or answered plain RTP")]
    SrtpRequired,
    /// The peer offered SRTP (`RTP/SAVP`) and the call's policy is off (488).
    #[error("the peer offered only SRTP and SRTP is off for this call")]
    SrtpOff,
    /// The peer's SDES offer has no `a=crypto` line we can use (488).
    #[error("no SDES crypto suite in common")]
    NoCommonCrypto,
    /// The peer offered DTLS-SRTP and we have no certificate, or answered
    /// our SDES or plain offer with DTLS-SRTP; it is never answered with
    /// SDES (488).
    #[error("DTLS-SRTP (UDP/TLS/RTP/SAVP) is not available for this stream")]
    DtlsUnsupported,
}

/// Our offer: one `RTP/AVP` audio stream with `local`'s codecs in order, an `a=rtpmap` for
/// each, `a=fmtp:<pt> 0-16` for telephone-event, `a=ptime` if set, the direction, and the
/// connection at session level.
///
/// With SRTP `required` the stream is `RTP/SAVP` with an `a=crypto` line per
/// offered suite; with `optional` it is `RTP/AVP` with the same lines (best
/// effort: a peer that knows SDES answers with a key, one that does not
/// ignores them).
pub fn offer(local: &LocalMedia, origin: Origin) -> SessionDescription {
    let dtls = local
        .fingerprint
        .as_ref()
        .filter(|_| local.srtp == SrtpPolicy::Dtls);
    let proto = match (local.srtp, dtls) {
        (_, Some(_)) => "UDP/TLS/RTP/SAVP",
        (SrtpPolicy::Required | SrtpPolicy::Dtls, None) => "RTP/SAVP",
        _ => "RTP/AVP",
    };
    let mut media = Media::new("audio", local.port, proto);
    for codec in local.preferences() {
        add_codec(&mut media, codec, local.payload_type(codec));
    }
    if let Some(fingerprint) = dtls {
        media
            .attributes
            .push(Attribute::new("fingerprint", fingerprint.to_string()));
        media
            .attributes
            .push(Attribute::new("setup", Setup::ActPass.as_str()));
    } else if local.srtp != SrtpPolicy::Off {
        for crypto in local.offered_crypto() {
            media
                .attributes
                .push(Attribute::new("crypto", crypto.value()));
        }
    }
    finish_audio(&mut media, local.ptime_ms, local.direction);
    description(origin, local.address, vec!["0 0".to_owned()], vec![media])
}

/// Our answer to `offer` (RFC 3264 §6) and what it settles.
///
/// The first offered audio stream with a port, a transport the call's SRTP
/// policy takes and a codec in common is accepted; every other stream is
/// rejected with port 0. The answer lists the codecs in common in our order
/// of preference, numbered as the offer numbers them, telephone-event
/// included when both sides have it. Its direction is the reverse of the
/// offered one intersected with ours; an offered connection address of
/// `0.0.0.0` counts as sendonly (RFC 2543 hold).
///
/// SRTP: an `RTP/SAVP` offer is answered with the first offered `a=crypto`
/// suite we have (never with DTLS); an `RTP/AVP` offer carrying `a=crypto`
/// is answered with SRTP unless the policy is off; plain RTP is refused when
/// SRTP is required. DTLS-SRTP offers are refused, never answered with SDES.
pub fn answer(
    offer: &SessionDescription,
    local: &LocalMedia,
    origin: Origin,
) -> Result<(SessionDescription, Negotiated), NegotiateError> {
    let preferences = local.preferences();
    let mut any_audio = false;
    let mut refusal = None;
    let mut accepted = None;
    for (index, media) in offer.media.iter().enumerate() {
        if !media.is_audio() || media.is_rejected() {
            continue;
        }
        any_audio = true;
        let secure = match security_of(media, &offer.attributes, local) {
            Ok(secure) => secure,
            Err(why) => {
                refusal.get_or_insert(why);
                continue;
            }
        };
        let common = common_codecs(media, &preferences);
        if common.iter().any(|(c, _)| *c != Codec::TelephoneEvent) {
            accepted = Some((index, media, common, secure));
            break;
        }
    }
    let Some((index, offered, common, secure)) = accepted else {
        return Err(match refusal {
            Some(why) => why,
            None if any_audio => NegotiateError::NoCommonCodec,
            None => NegotiateError::NoAudio,
        });
    };
    let connection = offer
        .media_connection(index)
        .ok_or(NegotiateError::NoConnection)?;
    let remote_direction = effective(offer.media_direction(index).unwrap_or_default(), connection);
    let local_direction = remote_direction.reverse().intersect(local.direction);

    let mut audio = Media::new("audio", local.port, offered.proto.clone());
    for (codec, pt) in &common {
        add_codec(&mut audio, *codec, *pt);
    }
    let mut dtls = None;
    let srtp = match secure {
        Secure::Plain => None,
        Secure::Dtls(params, setup) => {
            let ours = local
                .fingerprint
                .as_ref()
                .ok_or(NegotiateError::DtlsUnsupported)?;
            audio
                .attributes
                .push(Attribute::new("fingerprint", ours.to_string()));
            audio
                .attributes
                .push(Attribute::new("setup", setup.as_str()));
            dtls = Some(params);
            None
        }
        Secure::Sdes(theirs) => {
            let ours = Crypto {
                tag: theirs.tag,
                suite: theirs.suite,
                key: local
                    .keys
                    .key(theirs.suite)
                    .ok_or(NegotiateError::NoCommonCrypto)?
                    .clone(),
            };
            audio
                .attributes
                .push(Attribute::new("crypto", ours.value()));
            Some(SdesKeys {
                suite: theirs.suite,
                local: ours.key,
                remote: theirs.key,
            })
        }
    };
    finish_audio(&mut audio, local.ptime_ms, local_direction);
    // RFC 5761: an offered rtcp-mux is accepted (RTCP is told apart from
    // RTP by its packet type); we do not offer it ourselves.
    let rtcp_mux = offered.has_attribute("rtcp-mux");
    if rtcp_mux {
        audio.attributes.push(Attribute::flag("rtcp-mux"));
    }
    let media = offer
        .media
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if i == index {
                audio.clone()
            } else {
                rejected(m)
            }
        })
        .collect();
    let mut timing = offer.timing.clone();
    if timing.is_empty() {
        timing.push("0 0".to_owned());
    }
    let sdp = description(origin, local.address, timing, media);

    let (codec, payload_type) = common
        .iter()
        .copied()
        .find(|(c, _)| *c != Codec::TelephoneEvent)
        .ok_or(NegotiateError::NoCommonCodec)?;
    let negotiated = Negotiated {
        remote: SocketAddr::new(connection.address, offered.port),
        codec,
        payload_type,
        dtmf_payload_type: dtmf_of(&common),
        ptime_ms: offered.ptime().or(local.ptime_ms),
        local_direction,
        remote_direction,
        stream_index: index,
        rtcp_mux,
        srtp,
        dtls,
    };
    Ok((sdp, negotiated))
}

/// What the answer to our offer settles, for the offerer: the answer must have as many `m=`
/// sections as the offer and keep our audio stream (the first with a port); the codec is the
/// first one in the answer that we offered, numbered as the answer numbers it.
pub fn accept_answer(
    offer_we_sent: &SessionDescription,
    answer: &SessionDescription,
) -> Result<Negotiated, NegotiateError> {
    if offer_we_sent.media.len() != answer.media.len() {
        return Err(NegotiateError::MismatchedStreams);
    }
    let (index, ours) = offer_we_sent
        .media
        .iter()
        .enumerate()
        .find(|(_, m)| m.is_audio() && !m.is_rejected())
        .ok_or(NegotiateError::NoAudio)?;
    let theirs = answer
        .media
        .get(index)
        .ok_or(NegotiateError::MismatchedStreams)?;
    if !theirs.kind.eq_ignore_ascii_case(&ours.kind) {
        return Err(NegotiateError::MismatchedStreams);
    }
    if theirs.is_rejected() {
        return Err(NegotiateError::Rejected);
    }
    let (srtp, dtls) = match (transport(&ours.proto), transport(&theirs.proto)) {
        (Transport::Dtls, Transport::Dtls) => {
            (None, Some(answered_dtls(theirs, &answer.attributes)?))
        }
        (Transport::Dtls, _) => return Err(NegotiateError::SrtpRequired),
        // A DTLS answer to an SDES or plain offer is never taken.
        (_, Transport::Dtls) => return Err(NegotiateError::DtlsUnsupported),
        _ => (answered_keys(ours, theirs)?, None),
    };
    let offered: Vec<Codec> = ours
        .payload_types()
        .filter_map(|pt| ours.codec(pt))
        .collect();
    let common: Vec<(Codec, u8)> = theirs
        .payload_types()
        .filter_map(|pt| Some((theirs.codec(pt)?, pt)))
        .filter(|(c, _)| offered.contains(c))
        .collect();
    let (codec, payload_type) = common
        .iter()
        .copied()
        .find(|(c, _)| *c != Codec::TelephoneEvent)
        .ok_or(NegotiateError::NoCommonCodec)?;
    let connection = answer
        .media_connection(index)
        .ok_or(NegotiateError::NoConnection)?;
    let remote_direction = effective(
        answer.media_direction(index).unwrap_or_default(),
        connection,
    );
    let local_direction = offer_we_sent
        .media_direction(index)
        .unwrap_or_default()
        .intersect(remote_direction.reverse());
    Ok(Negotiated {
        remote: SocketAddr::new(connection.address, theirs.port),
        codec,
        payload_type,
        dtmf_payload_type: dtmf_of(&common),
        ptime_ms: theirs.ptime().or(ours.ptime()),
        local_direction,
        remote_direction,
        stream_index: index,
        rtcp_mux: ours.has_attribute("rtcp-mux") && theirs.has_attribute("rtcp-mux"),
        srtp,
        dtls,
    })
}

/// A stream's (else the session's) `a=fingerprint` and `a=setup`.
fn dtls_attributes(media: &Media, session: &[Attribute]) -> (Option<Fingerprint>, Option<Setup>) {
    let find = |name: &str| {
        media
            .attribute(name)
            .or_else(|| super::attribute_value(session, name))
    };
    (
        find("fingerprint").and_then(Fingerprint::parse),
        find("setup").and_then(Setup::from_name),
    )
}

/// The DTLS role an answer to our `actpass` offer gives us: it is `active`
/// (the client; also when it says nothing, RFC 4145's default) or `passive`.
fn answered_dtls(theirs: &Media, session: &[Attribute]) -> Result<DtlsParams, NegotiateError> {
    let (fingerprint, setup) = dtls_attributes(theirs, session);
    let remote = fingerprint.ok_or(NegotiateError::NoCommonCrypto)?;
    let client = match setup.unwrap_or(Setup::Active) {
        Setup::Passive => true,
        Setup::Active => false,
        Setup::ActPass | Setup::HoldConn => return Err(NegotiateError::NoCommonCrypto),
    };
    Ok(DtlsParams { client, remote })
}

/// The keys an answer settles for our offered stream: its `a=crypto` must
/// echo one of our tags with the same suite. An `RTP/SAVP` offer (SRTP
/// required) answered without one fails; a best-effort offer falls back to
/// plain RTP.
fn answered_keys(ours: &Media, theirs: &Media) -> Result<Option<SdesKeys>, NegotiateError> {
    let offered: Vec<Crypto> = cryptos(ours).collect();
    let chosen = cryptos(theirs).find_map(|c| {
        let mine = offered
            .iter()
            .find(|o| o.tag == c.tag && o.suite == c.suite)?;
        Some(SdesKeys {
            suite: c.suite,
            local: mine.key.clone(),
            remote: c.key,
        })
    });
    match chosen {
        Some(keys) if !offered.is_empty() => Ok(Some(keys)),
        _ if transport(&ours.proto) == Transport::Sdes => Err(NegotiateError::SrtpRequired),
        _ => Ok(None),
    }
}

/// How a stream is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// `RTP/AVP`, `RTP/AVPF`.
    Plain,
    /// `RTP/SAVP`, `RTP/SAVPF`: SRTP keyed in the SDP.
    Sdes,
    /// `UDP/TLS/RTP/SAVP(F)`: SRTP keyed by DTLS.
    Dtls,
    /// Anything else.
    Other,
}

fn transport(proto: &str) -> Transport {
    let is = |p: &str| proto.eq_ignore_ascii_case(p);
    if is("RTP/AVP") || is("RTP/AVPF") {
        Transport::Plain
    } else if is("RTP/SAVP") || is("RTP/SAVPF") {
        Transport::Sdes
    } else if is("UDP/TLS/RTP/SAVP") || is("UDP/TLS/RTP/SAVPF") {
        Transport::Dtls
    } else {
        Transport::Other
    }
}

/// The usable `a=crypto` lines of a stream, in order.
fn cryptos(media: &Media) -> impl Iterator<Item = Crypto> + '_ {
    media
        .attributes
        .iter()
        .filter(|a| a.name.eq_ignore_ascii_case("crypto"))
        .filter_map(|a| Crypto::parse(a.value.as_deref()?))
}

/// How an offered stream is secured, if `local`'s policy takes it.
enum Secure {
    /// Plain RTP.
    Plain,
    /// SDES with this offered `a=crypto` line.
    Sdes(Crypto),
    /// DTLS-SRTP with our role, and the `a=setup` that answers it.
    Dtls(DtlsParams, Setup),
}

/// Whether `local`'s policy takes an offered stream, and how: the first
/// `a=crypto` line whose suite we have, or DTLS with our certificate.
fn security_of(
    media: &Media,
    session: &[Attribute],
    local: &LocalMedia,
) -> Result<Secure, NegotiateError> {
    let usable = || cryptos(media).find(|c| local.keys.key(c.suite).is_some());
    let sdes = || {
        usable()
            .map(Secure::Sdes)
            .ok_or(NegotiateError::NoCommonCrypto)
    };
    match (transport(&media.proto), local.srtp) {
        (Transport::Other, _) => Err(NegotiateError::NoCommonCodec),
        (Transport::Dtls, SrtpPolicy::Off) => Err(NegotiateError::SrtpOff),
        (Transport::Dtls, _) => {
            if local.fingerprint.is_none() {
                return Err(NegotiateError::DtlsUnsupported);
            }
            let (fingerprint, setup) = dtls_attributes(media, session);
            let remote = fingerprint.ok_or(NegotiateError::NoCommonCrypto)?;
            // RFC 5763 §5: the answerer is active unless the offerer must be.
            let (client, answer) = match setup.unwrap_or(Setup::ActPass) {
                Setup::ActPass | Setup::Passive => (true, Setup::Active),
                Setup::Active => (false, Setup::Passive),
                Setup::HoldConn => return Err(NegotiateError::NoCommonCrypto),
            };
            Ok(Secure::Dtls(DtlsParams { client, remote }, answer))
        }
        (Transport::Sdes, SrtpPolicy::Off) => Err(NegotiateError::SrtpOff),
        (Transport::Sdes, _) => sdes(),
        (Transport::Plain, SrtpPolicy::Off) => Ok(Secure::Plain),
        (Transport::Plain, SrtpPolicy::Optional) => {
            Ok(usable().map_or(Secure::Plain, Secure::Sdes))
        }
        (Transport::Plain, SrtpPolicy::Required | SrtpPolicy::Dtls) => usable()
            .map(Secure::Sdes)
            .ok_or(NegotiateError::SrtpRequired),
    }
}

/// For each of our codecs in order, the first offered payload type that maps to it.
fn common_codecs(offered: &Media, preferences: &[Codec]) -> Vec<(Codec, u8)> {
    preferences
        .iter()
        .filter_map(|codec| {
            let pt = offered
                .payload_types()
                .find(|pt| offered.codec(*pt) == Some(*codec))?;
            Some((*codec, pt))
        })
        .collect()
}

fn dtmf_of(common: &[(Codec, u8)]) -> Option<u8> {
    common
        .iter()
        .find(|(c, _)| *c == Codec::TelephoneEvent)
        .map(|(_, pt)| *pt)
}

/// A peer's direction as it acts: a hold address (`0.0.0.0`) means it receives nothing.
fn effective(direction: Direction, connection: Connection) -> Direction {
    if connection.is_hold() {
        direction.intersect(Direction::SendOnly)
    } else {
        direction
    }
}

fn add_codec(media: &mut Media, codec: Codec, pt: u8) {
    media.formats.push(pt.to_string());
    media
        .attributes
        .push(Attribute::new("rtpmap", codec.rtpmap_value(pt)));
    if codec == Codec::TelephoneEvent {
        media
            .attributes
            .push(Attribute::new("fmtp", format!("{pt} 0-16")));
    }
}

fn finish_audio(media: &mut Media, ptime_ms: Option<u32>, direction: Direction) {
    if let Some(ptime) = ptime_ms {
        media
            .attributes
            .push(Attribute::new("ptime", ptime.to_string()));
    }
    media.set_direction(direction);
}

/// An offered stream, rejected: port 0, same media, proto and formats, nothing else.
fn rejected(offered: &Media) -> Media {
    let mut media = Media::new(offered.kind.clone(), 0, offered.proto.clone());
    media.formats = offered.formats.clone();
    media
}

fn description(
    origin: Origin,
    address: IpAddr,
    timing: Vec<String>,
    media: Vec<Media>,
) -> SessionDescription {
    SessionDescription {
        origin,
        session_name: "-".to_owned(),
        connection: Some(Connection::new(address)),
        bandwidths: Vec::new(),
        timing,
        other_lines: Vec::new(),
        attributes: Vec::new(),
        media,
    }
}
