//! SDES (RFC 4568): `a=crypto` attributes, the keys they carry, and the
//! SRTP policy an offer or answer follows.

use std::fmt;

/// Whether a call's audio is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SrtpPolicy {
    /// Plain RTP: we offer `RTP/AVP` without keys, and refuse `RTP/SAVP` offers.
    #[default]
    Off,
    /// SRTP when the peer takes it: we offer `RTP/AVP` with `a=crypto` (best
    /// effort) and answer either kind of offer.
    Optional,
    /// SRTP or no call: we offer `RTP/SAVP` and refuse plain RTP
    /// (`srtp_required`).
    Required,
    /// As `Required`, but our offers are DTLS-SRTP (`UDP/TLS/RTP/SAVP` with
    /// our certificate's fingerprint) instead of SDES.
    Dtls,
}

impl SrtpPolicy {
    /// `off`, `optional` or `required`.
    pub fn as_str(self) -> &'static str {
        match self {
            SrtpPolicy::Off => "off",
            SrtpPolicy::Optional => "optional",
            SrtpPolicy::Required => "required",
            SrtpPolicy::Dtls => "dtls",
        }
    }

    /// Reads `off`, `optional` or `required`.
    pub fn from_name(name: &str) -> Option<SrtpPolicy> {
        [
            SrtpPolicy::Off,
            SrtpPolicy::Optional,
            SrtpPolicy::Required,
            SrtpPolicy::Dtls,
        ]
        .into_iter()
        .find(|p| p.as_str() == name)
    }
}

/// An SDES crypto suite dialerd speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CryptoSuite {
    /// `AES_CM_128_HMAC_SHA1_80`.
    AesCm128HmacSha1_80,
    /// `AES_CM_128_HMAC_SHA1_32`.
    AesCm128HmacSha1_32,
    /// `AEAD_AES_128_GCM` (RFC 7714).
    AeadAes128Gcm,
}

impl CryptoSuite {
    /// Every suite, in our order of preference.
    pub const ALL: [CryptoSuite; 3] = [
        CryptoSuite::AeadAes128Gcm,
        CryptoSuite::AesCm128HmacSha1_80,
        CryptoSuite::AesCm128HmacSha1_32,
    ];

    /// The suites we offer, in order: the two every SDES peer knows.
    pub const OFFERED: [CryptoSuite; 2] = [
        CryptoSuite::AesCm128HmacSha1_80,
        CryptoSuite::AesCm128HmacSha1_32,
    ];

    /// The name in `a=crypto`.
    pub fn as_str(self) -> &'static str {
        match self {
            CryptoSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            CryptoSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            CryptoSuite::AeadAes128Gcm => "AEAD_AES_128_GCM",
        }
    }

    /// The suite named `name` (any case).
    pub fn from_name(name: &str) -> Option<CryptoSuite> {
        CryptoSuite::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(name))
    }

    /// Bytes of master key and salt together: 30, or 28 for GCM.
    pub fn key_salt_len(self) -> usize {
        match self {
            CryptoSuite::AeadAes128Gcm => 16 + 12,
            _ => 16 + 14,
        }
    }
}

/// A master key and salt (`key || salt`). Never printed; zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct SdesKey(Vec<u8>);

impl SdesKey {
    /// Key and salt, concatenated.
    pub fn new(key_and_salt: Vec<u8>) -> SdesKey {
        SdesKey(key_and_salt)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SdesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SdesKey(<{} bytes redacted>)", self.0.len())
    }
}

impl Drop for SdesKey {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

/// One `a=crypto` line we can use: `<tag> <suite> inline:<key||salt>[|lifetime]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crypto {
    /// The tag that the answer echoes.
    pub tag: u32,
    /// The suite.
    pub suite: CryptoSuite,
    /// The key.
    pub key: SdesKey,
}

impl Crypto {
    /// Reads an `a=crypto` value; `None` for a line we cannot use: an
    /// unknown suite, a key of the wrong length, several keys, an MKI, or
    /// session parameters (`UNENCRYPTED_SRTP`, `KDR`, ...).
    pub fn parse(value: &str) -> Option<Crypto> {
        let mut fields = value.split_ascii_whitespace();
        let tag = fields.next()?;
        if tag.is_empty() || tag.len() > 9 || !tag.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let tag: u32 = tag.parse().ok()?;
        let suite = CryptoSuite::from_name(fields.next()?)?;
        let params = fields.next()?;
        if fields.next().is_some() || params.contains(';') {
            return None;
        }
        let inline = params
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("inline:"))
            .and(params.get(7..))?;
        let mut parts = inline.split('|');
        let key = base64_decode(parts.next()?)?;
        // A lifetime is allowed; an MKI (`n:len`) is not.
        if let Some(lifetime) = parts.next()
            && (lifetime.contains(':') || !valid_lifetime(lifetime))
        {
            return None;
        }
        if parts.next().is_some() || key.len() != suite.key_salt_len() {
            return None;
        }
        Some(Crypto {
            tag,
            suite,
            key: SdesKey(key),
        })
    }

    /// The `a=crypto` value.
    pub fn value(&self) -> String {
        format!(
            "{} {} inline:{}",
            self.tag,
            self.suite.as_str(),
            base64_encode(self.key.as_bytes())
        )
    }
}

/// `2^31` or a decimal number of packets.
fn valid_lifetime(s: &str) -> bool {
    match s.strip_prefix("2^") {
        Some(exp) => exp.parse::<u8>().is_ok_and(|e| e <= 48),
        None => !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// The keys a call offers or answers with, one per suite.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalKeys(Vec<(CryptoSuite, SdesKey)>);

impl LocalKeys {
    /// Keys made by `fill`, which must fill a buffer with random bytes from
    /// a CSPRNG or return false.
    pub fn generate(mut fill: impl FnMut(&mut [u8]) -> bool) -> Option<LocalKeys> {
        CryptoSuite::ALL
            .into_iter()
            .map(|suite| {
                let mut key = SdesKey(vec![0; suite.key_salt_len()]);
                fill(&mut key.0).then_some((suite, key))
            })
            .collect::<Option<Vec<_>>>()
            .map(LocalKeys)
    }

    /// Our key for `suite`.
    pub fn key(&self, suite: CryptoSuite) -> Option<&SdesKey> {
        self.0.iter().find(|(s, _)| *s == suite).map(|(_, k)| k)
    }
}

/// The SDES keys an exchange settled for the audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdesKeys {
    /// The suite.
    pub suite: CryptoSuite,
    /// Ours: we encrypt with it.
    pub local: SdesKey,
    /// The peer's: it encrypts with it.
    pub remote: SdesKey,
}

/// Base64 (RFC 4648 §4) with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    crate::base64::encode(bytes)
}

/// Base64 with or without padding; `None` if anything else is in it.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    crate::base64::decode(text)
}

/// A certificate fingerprint (RFC 8122 `a=fingerprint`): `sha-256 AB:CD:...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    /// The hash function, lower case (`sha-256`).
    pub hash: String,
    /// The digest.
    pub digest: Vec<u8>,
}

impl Fingerprint {
    /// A SHA-256 fingerprint of `digest`.
    pub fn sha256(digest: Vec<u8>) -> Fingerprint {
        Fingerprint {
            hash: "sha-256".to_owned(),
            digest,
        }
    }

    /// Reads `<hash> <HH:HH:...>`; `None` when malformed.
    pub fn parse(value: &str) -> Option<Fingerprint> {
        let (hash, hex) = value.trim().split_once(' ')?;
        let digest = hex
            .trim()
            .split(':')
            .map(|h| {
                (h.len() == 2)
                    .then(|| u8::from_str_radix(h, 16).ok())
                    .flatten()
            })
            .collect::<Option<Vec<u8>>>()?;
        if hash.is_empty() || digest.len() < 16 {
            return None;
        }
        Some(Fingerprint {
            hash: hash.to_ascii_lowercase(),
            digest,
        })
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hash)?;
        for (i, b) in self.digest.iter().enumerate() {
            write!(f, "{}{b:02X}", if i == 0 { ' ' } else { ':' })?;
        }
        Ok(())
    }
}

/// Which side of a DTLS association an endpoint takes (RFC 4145 `a=setup`,
/// RFC 5763 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setup {
    /// `active`: it starts the handshake (the DTLS client).
    Active,
    /// `passive`: it waits for the handshake (the DTLS server).
    Passive,
    /// `actpass`: either; offers say this, answers choose.
    ActPass,
    /// `holdconn`: no association yet.
    HoldConn,
}

impl Setup {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Setup::Active => "active",
            Setup::Passive => "passive",
            Setup::ActPass => "actpass",
            Setup::HoldConn => "holdconn",
        }
    }

    /// Reads an `a=setup` value (any case).
    pub fn from_name(name: &str) -> Option<Setup> {
        [
            Setup::Active,
            Setup::Passive,
            Setup::ActPass,
            Setup::HoldConn,
        ]
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(name.trim()))
    }
}

/// Our DTLS role on a stream, and the certificate the peer must present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DtlsParams {
    /// We start the handshake (DTLS client) or wait for it (server).
    pub client: bool,
    /// The fingerprint the peer's certificate must have.
    pub remote: Fingerprint,
}
