//! SRTP and SRTCP (RFC 3711, RFC 7714): the per-leg transform slot of the
//! relay.
//!
//! A leg with keys decrypts and authenticates what its peer sends before
//! the relay looks at it, and encrypts what the relay sends to that peer.
//! Each direction has its own master key (SDES: each side's `a=crypto`;
//! DTLS-SRTP: the exported keying material), its own rollover counters and,
//! inbound, a replay window. The cryptography is webrtc-rs's sans-IO
//! `rtc-srtp` with the ring provider; BENCHMARKS.md says why.

use std::fmt;
use std::sync::Arc;

use rtc_srtp::context::Context;
use rtc_srtp::crypto::RTCCryptoProvider;
use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use rtc_srtp::protection_profile::ProtectionProfile;

/// Packets of the inbound replay window (libsrtp's default).
pub const REPLAY_WINDOW: usize = 128;

/// An SRTP crypto suite dialerd speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// `AES_CM_128_HMAC_SHA1_80`: AES-128 counter mode, 80-bit HMAC-SHA1 tag.
    AesCm128HmacSha1_80,
    /// `AES_CM_128_HMAC_SHA1_32`: the same with a 32-bit SRTP tag (SRTCP keeps 80).
    AesCm128HmacSha1_32,
    /// `AEAD_AES_128_GCM` (RFC 7714): AES-128 GCM with a 128-bit tag.
    AeadAes128Gcm,
}

impl Suite {
    /// The suite's SDES name.
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            Suite::AeadAes128Gcm => "AEAD_AES_128_GCM",
        }
    }

    /// Bytes of the master key.
    pub fn key_len(self) -> usize {
        16
    }

    /// Bytes of the master salt.
    pub fn salt_len(self) -> usize {
        match self {
            Suite::AeadAes128Gcm => 12,
            _ => 14,
        }
    }

    /// Bytes an SRTP packet grows by.
    pub fn rtp_overhead(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 => 4,
            Suite::AeadAes128Gcm => 16,
        }
    }

    /// Bytes an SRTCP packet grows by (tag and SRTCP index).
    pub fn rtcp_overhead(self) -> usize {
        match self {
            Suite::AeadAes128Gcm => 16 + 4,
            _ => 10 + 4,
        }
    }

    fn profile(self) -> ProtectionProfile {
        match self {
            Suite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            Suite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
            Suite::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        }
    }
}

/// A master key and salt, concatenated. Never printed; zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey(Vec<u8>);

impl MasterKey {
    /// Key and salt as one string of bytes (`key || salt`, as SDES carries them).
    pub fn new(key_and_salt: Vec<u8>) -> MasterKey {
        MasterKey(key_and_salt)
    }

    /// The bytes (`key || salt`).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(<{} bytes redacted>)", self.0.len())
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

/// The keys of a leg: the suite, what we encrypt with, what the peer encrypts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    /// The negotiated suite.
    pub suite: Suite,
    /// Our key: what we send is protected with it.
    pub send: MasterKey,
    /// The peer's key: what it sends is checked and decrypted with it.
    pub receive: MasterKey,
}

/// Why a packet was not protected or unprotected, or keys not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    /// The key and salt do not have the suite's lengths.
    #[error("SRTP master key of {got} bytes where {suite:?} needs {want}")]
    KeyLength {
        /// The suite.
        suite: Suite,
        /// Bytes it needs.
        want: usize,
        /// Bytes given.
        got: usize,
    },
    /// The crypto provider is missing or refused the suite.
    #[error("SRTP crypto unavailable: {0}")]
    Crypto(String),
    /// Authentication failed, a replay, or a malformed packet.
    #[error("SRTP packet rejected: {0}")]
    Rejected(String),
    /// The protected packet does not fit the buffer.
    #[error("no room for the SRTP packet ({need} bytes, buffer {have})")]
    NoRoom {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// The shared crypto provider (ring).
pub fn provider() -> Result<Arc<dyn RTCCryptoProvider>, SrtpError> {
    rtc_srtp::crypto::default_provider().map_err(|e| SrtpError::Crypto(e.to_string()))
}

/// One direction: a context and the key it was made from.
struct Direction {
    key: MasterKey,
    context: Context,
}

impl Direction {
    fn new(
        suite: Suite,
        key: &MasterKey,
        inbound: bool,
        provider: &dyn RTCCryptoProvider,
    ) -> Result<Direction, SrtpError> {
        let (k, s) = split(suite, key)?;
        let (rtp, rtcp) = if inbound {
            (
                Some(srtp_replay_protection(REPLAY_WINDOW)),
                Some(srtcp_replay_protection(REPLAY_WINDOW)),
            )
        } else {
            (None, None)
        };
        let context = Context::new(k, s, suite.profile(), rtp, rtcp, provider.crypto())
            .map_err(|e| SrtpError::Crypto(e.to_string()))?;
        Ok(Direction {
            key: key.clone(),
            context,
        })
    }
}

fn split(suite: Suite, key: &MasterKey) -> Result<(&[u8], &[u8]), SrtpError> {
    let want = suite.key_len() + suite.salt_len();
    let bytes = key.as_bytes();
    if bytes.len() != want {
        return Err(SrtpError::KeyLength {
            suite,
            want,
            got: bytes.len(),
        });
    }
    Ok(bytes.split_at(suite.key_len()))
}

/// The transform of one leg: an inbound and an outbound SRTP/SRTCP context.
pub struct Transform {
    suite: Suite,
    outbound: Direction,
    inbound: Direction,
}

impl fmt::Debug for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transform")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl Transform {
    /// Contexts for `keys`.
    pub fn new(keys: &SrtpKeys, provider: &dyn RTCCryptoProvider) -> Result<Transform, SrtpError> {
        Ok(Transform {
            suite: keys.suite,
            outbound: Direction::new(keys.suite, &keys.send, false, provider)?,
            inbound: Direction::new(keys.suite, &keys.receive, true, provider)?,
        })
    }

    /// The suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Takes new keys (a re-INVITE): a direction whose key is unchanged keeps
    /// its rollover counters and replay window; a changed one starts afresh.
    pub fn rekey(
        &mut self,
        keys: &SrtpKeys,
        provider: &dyn RTCCryptoProvider,
    ) -> Result<(), SrtpError> {
        if keys.suite != self.suite {
            *self = Transform::new(keys, provider)?;
            return Ok(());
        }
        if keys.send != self.outbound.key {
            self.outbound = Direction::new(keys.suite, &keys.send, false, provider)?;
        }
        if keys.receive != self.inbound.key {
            self.inbound = Direction::new(keys.suite, &keys.receive, true, provider)?;
        }
        Ok(())
    }

    /// Decrypts and checks the SRTP packet in `buf[..len]` in place; returns
    /// the RTP packet's length.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        apply(&mut self.inbound.context, buf, len, 0, Context::decrypt_rtp)
    }

    /// Encrypts the RTP packet in `buf[..len]` in place; returns the SRTP
    /// packet's length.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let grow = self.suite.rtp_overhead();
        apply(
            &mut self.outbound.context,
            buf,
            len,
            grow,
            Context::encrypt_rtp,
        )
    }

    /// Decrypts and checks the SRTCP packet in `buf[..len]`; returns the RTCP
    /// packet's length.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        apply(
            &mut self.inbound.context,
            buf,
            len,
            0,
            Context::decrypt_rtcp,
        )
    }

    /// Encrypts the RTCP packet in `buf[..len]`; returns the SRTCP packet's
    /// length.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let grow = self.suite.rtcp_overhead();
        apply(
            &mut self.outbound.context,
            buf,
            len,
            grow,
            Context::encrypt_rtcp,
        )
    }
}

/// Runs `op` on `buf[..len]` (which must leave room for `grow` more bytes)
/// and puts its result back into `buf`.
fn apply<E: fmt::Display>(
    context: &mut Context,
    buf: &mut [u8],
    len: usize,
    grow: usize,
    op: impl FnOnce(&mut Context, &[u8]) -> Result<bytes::BytesMut, E>,
) -> Result<usize, SrtpError> {
    let have = buf.len();
    if len + grow > have {
        return Err(SrtpError::NoRoom {
            need: len + grow,
            have,
        });
    }
    let packet = buf.get(..len).unwrap_or(&[]);
    let out = op(context, packet).map_err(|e| SrtpError::Rejected(e.to_string()))?;
    put(buf, &out)
}

fn put(buf: &mut [u8], out: &[u8]) -> Result<usize, SrtpError> {
    let have = buf.len();
    let dst = buf.get_mut(..out.len()).ok_or(SrtpError::NoRoom {
        need: out.len(),
        have,
    })?;
    dst.copy_from_slice(out);
    Ok(out.len())
}

#[cfg(test)]
#[path = "srtp_tests.rs"]
mod tests;
