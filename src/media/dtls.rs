//! DTLS-SRTP (RFC 5763, RFC 5764) for one leg: the handshake on the leg's
//! RTP port, the peer's certificate checked against the fingerprint its SDP
//! gave, and the SRTP keys exported from the handshake.
//!
//! Sans-IO like the relay around it, on webrtc-rs's `rtc-dtls` endpoint:
//! datagrams in with the time, datagrams out, deadlines. A handshake that
//! has not completed by its deadline fails (the call ends `dtls_failed`);
//! retransmissions within it are the DTLS machine's own.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc_dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType};
use rtc_dtls::crypto::Certificate;
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc_srtp::crypto::RTCCryptoProvider;
use sha2::{Digest, Sha256};

use super::srtp::{MasterKey, SrtpKeys, Suite};

/// How long a handshake may take before the leg gives up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// RFC 5764 §4.2's exporter label.
const EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";

/// Whether a datagram is a DTLS record (RFC 7983: first byte 20 to 63).
pub fn is_dtls(packet: &[u8]) -> bool {
    packet.first().is_some_and(|b| (20..=63).contains(b))
}

/// Why DTLS failed on a leg.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtlsError {
    /// The certificate could not be made, or the configuration was refused.
    #[error("DTLS set-up failed: {0}")]
    Setup(String),
    /// The handshake failed (a bad certificate, an alert, a protocol error).
    #[error("DTLS handshake failed: {0}")]
    Handshake(String),
    /// The handshake did not complete in time.
    #[error("DTLS handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The handshake settled an SRTP profile we do not speak.
    #[error("DTLS settled no SRTP profile dialerd speaks")]
    NoProfile,
}

/// Our certificate: self-signed, made once per process; its SHA-256
/// fingerprint goes into our SDP.
#[derive(Clone)]
pub struct Identity {
    certificate: Certificate,
    fingerprint: Vec<u8>,
    crypto: Arc<dyn RTCCryptoProvider>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &hex(&self.fingerprint))
            .finish_non_exhaustive()
    }
}

impl PartialEq for Identity {
    fn eq(&self, other: &Identity) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Identity {
    /// A fresh self-signed certificate (ECDSA P-256).
    pub fn generate() -> Result<Identity, DtlsError> {
        let crypto = super::srtp::provider().map_err(|e| DtlsError::Setup(e.to_string()))?;
        let certificate =
            Certificate::generate_self_signed(vec!["dialerd".to_owned()], crypto.crypto())
                .map_err(|e| DtlsError::Setup(e.to_string()))?;
        let der = certificate
            .certificate
            .first()
            .ok_or_else(|| DtlsError::Setup("no certificate".into()))?;
        let fingerprint = Sha256::digest(der.as_ref()).to_vec();
        Ok(Identity {
            certificate,
            fingerprint,
            crypto,
        })
    }

    /// The SHA-256 digest of our certificate.
    pub fn fingerprint(&self) -> &[u8] {
        &self.fingerprint
    }
}

/// What the SDP settled for a DTLS leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DtlsSetup {
    /// We start the handshake.
    pub client: bool,
    /// The SHA-256 digest the peer's certificate must have.
    pub fingerprint: Vec<u8>,
}

/// One leg's DTLS association.
pub struct DtlsSession {
    endpoint: Endpoint,
    /// The association's key in the endpoint: the peer's signalled address
    /// (its packets may come from elsewhere; they are the same peer).
    peer: SocketAddr,
    setup: DtlsSetup,
    deadline: Instant,
    outgoing: VecDeque<BytesMut>,
    done: bool,
}

impl fmt::Debug for DtlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtlsSession")
            .field("client", &self.setup.client)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl DtlsSession {
    /// A session with `peer` as `setup` says; a client sends its first
    /// flight at once.
    pub fn new(
        now: Instant,
        identity: &Identity,
        setup: DtlsSetup,
        peer: SocketAddr,
    ) -> Result<DtlsSession, DtlsError> {
        let expected = setup.fingerprint.clone();
        let verify: rtc_dtls::config::VerifyPeerCertificateFn = Arc::new(move |certs, _| {
            let matches = certs
                .first()
                .is_some_and(|der| Sha256::digest(der).as_slice() == expected.as_slice());
            if matches {
                Ok(())
            } else {
                Err(rtc_shared::error::Error::Other(
                    "the peer's certificate does not match its SDP fingerprint".into(),
                ))
            }
        });
        let config = ConfigBuilder::default()
            .with_crypto_provider(identity.crypto.clone())
            .with_certificates(vec![identity.certificate.clone()])
            .with_srtp_protection_profiles(vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32,
            ])
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            .with_client_auth(ClientAuthType::RequireAnyClientCert)
            .with_insecure_skip_verify(true)
            .with_verify_peer_certificate(Some(verify))
            .build(setup.client, Some(peer))
            .map_err(|e| DtlsError::Setup(e.to_string()))?;
        let config = Arc::new(config);
        let local = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut endpoint = Endpoint::new(
            local,
            rtc_shared::TransportProtocol::UDP,
            (!setup.client).then(|| config.clone()),
        );
        if setup.client {
            endpoint
                .connect(now, peer, config, None)
                .map_err(|e| DtlsError::Handshake(e.to_string()))?;
        }
        let mut session = DtlsSession {
            endpoint,
            peer,
            setup,
            deadline: now + HANDSHAKE_TIMEOUT,
            outgoing: VecDeque::new(),
            done: false,
        };
        session.collect();
        Ok(session)
    }

    /// Whether the handshake completed.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// What the SDP settled for it.
    pub fn setup(&self) -> &DtlsSetup {
        &self.setup
    }

    /// Whether datagrams wait to be sent.
    pub fn has_outgoing(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// A DTLS datagram from the peer; the SRTP keys once the handshake
    /// completes with it.
    pub fn handle(&mut self, now: Instant, packet: &[u8]) -> Result<Option<SrtpKeys>, DtlsError> {
        let events = self
            .endpoint
            .read(now, self.peer, None, BytesMut::from(packet));
        self.collect();
        let events = events.map_err(|e| DtlsError::Handshake(e.to_string()))?;
        let completed = events
            .iter()
            .any(|e| matches!(e, EndpointEvent::HandshakeComplete));
        if completed && !self.done {
            self.done = true;
            return self.keys().map(Some);
        }
        Ok(None)
    }

    /// The next datagram to send to the peer.
    pub fn poll_transmit(&mut self) -> Option<BytesMut> {
        self.outgoing.pop_front()
    }

    /// When [`DtlsSession::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let retransmit = self.endpoint.poll_timeout(&self.peer);
        Some(retransmit.map_or(self.deadline, |r| r.min(self.deadline)))
    }

    /// Retransmits a flight that was not answered; fails past the deadline.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsError> {
        if self.done {
            return Ok(());
        }
        if now >= self.deadline {
            return Err(DtlsError::Timeout(HANDSHAKE_TIMEOUT));
        }
        // No association yet (a server waiting for the first flight) is not
        // an error.
        if self.endpoint.poll_timeout(&self.peer).is_some() {
            self.endpoint
                .handle_timeout(self.peer, now)
                .map_err(|e| DtlsError::Handshake(e.to_string()))?;
            self.collect();
        }
        Ok(())
    }

    fn collect(&mut self) {
        while let Some(t) = self.endpoint.poll_transmit() {
            self.outgoing.push_back(t.message);
        }
    }

    /// RFC 5764 §4.2: client key, server key, client salt, server salt; the
    /// client sends with the client's.
    fn keys(&self) -> Result<SrtpKeys, DtlsError> {
        let state = self
            .endpoint
            .get_connection_state(self.peer)
            .ok_or_else(|| DtlsError::Handshake("no association".into()))?;
        let suite = match state.srtp_protection_profile() {
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => Suite::AesCm128HmacSha1_80,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32 => Suite::AesCm128HmacSha1_32,
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => Suite::AeadAes128Gcm,
            _ => return Err(DtlsError::NoProfile),
        };
        let (key_len, salt_len) = (suite.key_len(), suite.salt_len());
        let material = state
            .export_keying_material(EXPORTER_LABEL, &[], 2 * (key_len + salt_len))
            .map_err(|e| DtlsError::Handshake(e.to_string()))?;
        let m: &[u8] = material.as_ref();
        let part = |from: usize, len: usize| m.get(from..from + len).unwrap_or(&[]).to_vec();
        let client = [part(0, key_len), part(2 * key_len, salt_len)].concat();
        let server = [
            part(key_len, key_len),
            part(2 * key_len + salt_len, salt_len),
        ]
        .concat();
        let (send, receive) = if self.setup.client {
            (client, server)
        } else {
            (server, client)
        };
        Ok(SrtpKeys {
            suite,
            send: MasterKey::new(send),
            receive: MasterKey::new(receive),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
#[path = "dtls_tests.rs"]
mod tests;
