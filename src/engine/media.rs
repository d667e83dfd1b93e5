//! The SIP core's side of media: the call table's requests carried to the
//! media shards, and the shards' reports turned into call actions (a
//! `media_timeout` ends the call) and events.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Core;
use super::progress::Action;
use crate::call::{CallError, CallId, EndCause, MediaOp};
use crate::events::CoreEvent;
use crate::media::agent_conn::AgentSpec;
use crate::media::dtls::DtlsSetup;
use crate::media::srtp::{MasterKey, SrtpKeys, Suite};
use crate::media::{AudioCodec, ENDPOINT_BIT, LegSpec, MediaEvent, MediaEventKind};
use crate::sdp::{Codec, CryptoSuite, LocalMedia, Negotiated};

/// Duration of each DTMF digit sent as telephone-events.
pub const DTMF_DIGIT: Duration = Duration::from_millis(160);

/// An external RTP endpoint a call's audio is relayed to (an AI agent that
/// speaks RTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpEndpoint {
    /// Where it receives RTP (and sends from).
    pub address: SocketAddr,
    /// Its codec: PCMU or PCMA.
    pub codec: Codec,
}

/// What a media endpoint attached to a call was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    /// Where the endpoint must send its RTP.
    pub local: SocketAddr,
}

/// What the relay needs of a negotiated stream.
pub fn leg_spec(n: &Negotiated, sending: bool, answered: bool) -> LegSpec {
    let codec = match n.codec {
        Codec::Pcmu => AudioCodec::Pcmu,
        Codec::Pcma => AudioCodec::Pcma,
        _ => AudioCodec::Other,
    };
    LegSpec {
        remote: n.remote,
        rtcp: (!n.rtcp_mux)
            .then(|| SocketAddr::new(n.remote.ip(), n.remote.port().saturating_add(1))),
        codec,
        payload_type: n.payload_type,
        dtmf_payload_type: n.dtmf_payload_type,
        local_dtmf_payload_type: n.dtmf_payload_type.map(|_| LocalMedia::DEFAULT_DTMF_PT),
        ptime_ms: n.ptime_ms.unwrap_or(20),
        peer_sends: n.remote_direction.sends() && n.local_direction.receives(),
        peer_receives: sending && n.remote_direction.receives() && n.local_direction.sends(),
        watched: answered,
    }
}

/// The relay's SRTP keys for a negotiated stream, if it is encrypted.
pub fn srtp_keys(n: &Negotiated) -> Option<SrtpKeys> {
    let keys = n.srtp.as_ref()?;
    let suite = match keys.suite {
        CryptoSuite::AesCm128HmacSha1_80 => Suite::AesCm128HmacSha1_80,
        CryptoSuite::AesCm128HmacSha1_32 => Suite::AesCm128HmacSha1_32,
        CryptoSuite::AeadAes128Gcm => Suite::AeadAes128Gcm,
    };
    Some(SrtpKeys {
        suite,
        send: MasterKey::new(keys.local.as_bytes().to_vec()),
        receive: MasterKey::new(keys.remote.as_bytes().to_vec()),
    })
}

/// The spec of a voice agent's leg: µ-law at 20 ms, its packets "from" the
/// agent's address (they come from its stream, not a socket).
pub fn agent_spec(address: SocketAddr) -> LegSpec {
    endpoint_spec(&RtpEndpoint {
        address,
        codec: Codec::Pcmu,
    })
}

/// The spec of an external RTP endpoint.
pub fn endpoint_spec(e: &RtpEndpoint) -> LegSpec {
    let (codec, payload_type) = match e.codec {
        Codec::Pcma => (AudioCodec::Pcma, 8),
        _ => (AudioCodec::Pcmu, 0),
    };
    LegSpec {
        remote: e.address,
        rtcp: None,
        codec,
        payload_type,
        dtmf_payload_type: None,
        local_dtmf_payload_type: None,
        ptime_ms: 20,
        peer_sends: true,
        peer_receives: true,
        watched: false,
    }
}

impl Core {
    /// Carries the call table's media requests to the shards.
    pub(super) fn apply_media_ops(&mut self) {
        let ops: Vec<MediaOp> = self.calls.take_media_ops().collect();
        for op in ops {
            let media = &mut self.publish.media;
            match op {
                MediaOp::Open { call, name, port } => media.open(call.0, name, port, None),
                MediaOp::Negotiated {
                    call,
                    media: n,
                    sending,
                    answered,
                } => media.spec(
                    call.0,
                    leg_spec(&n, sending, answered),
                    srtp_keys(&n),
                    n.dtls.as_ref().map(|d| DtlsSetup {
                        client: d.client,
                        fingerprint: d.remote.digest.clone(),
                    }),
                ),
                MediaOp::Connect { a, b } => media.connect(a.0, b.0),
                MediaOp::Disconnect { call } => media.disconnect(call.0),
                MediaOp::Close { call } => {
                    media.close(call.0);
                    media.close(call.0 | ENDPOINT_BIT);
                }
            }
        }
    }

    /// Carries out what call progress asks.
    pub(super) fn apply_progress(&mut self, now: Instant, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Analyse { call, analysis } => {
                    self.publish.media.analyse(call.0, Some(analysis));
                }
                Action::Attach { call, agent } => {
                    if let Err(e) = self.attach_agent(call, agent) {
                        tracing::warn!(call = %call, error = %e, "the agent could not be connected");
                    }
                }
                Action::StopAgent { call } => self.publish.media.close(call.0 | ENDPOINT_BIT),
                Action::Play { call, source } => self.publish.media.play(call.0, Some(*source)),
                Action::End { call, cause } => {
                    let _ = self.calls.end_with(now, &mut self.ep, call, cause);
                }
                Action::Event(event) => {
                    let (kind, name, fields) = event.wire(now, crate::events::unix_ms());
                    self.publish
                        .events
                        .emit(CoreEvent::Progress { kind, name, fields });
                }
            }
        }
    }

    /// Writes the callee audio an analysis captured, off the core.
    fn write_capture(&self, name: Arc<str>, samples: Arc<[i16]>) {
        let Some(dir) = self.capture_dir.clone() else {
            return;
        };
        let mut events = self.publish.events.clone();
        let file: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{file}.wav"));
        tokio::task::spawn_blocking(move || {
            match std::fs::write(&path, crate::media::player::wav_bytes(&samples)) {
                Ok(()) => events.emit(CoreEvent::Progress {
                    kind: "call.amd",
                    name,
                    fields: serde_json::json!({"result": "capture", "file": path.display().to_string(),
                        "ms": samples.len() / 8}),
                }),
                Err(e) => tracing::warn!(call = %name, error = %e, "captured audio not written"),
            }
        });
    }

    /// A report from a media shard.
    pub(super) fn on_media(&mut self, now: Instant, event: MediaEvent) {
        let call = CallId(event.leg & !ENDPOINT_BIT);
        let endpoint = event.leg & ENDPOINT_BIT != 0;
        match &event.kind {
            MediaEventKind::Progress { report, .. } if !endpoint => {
                let actions = self.progress.report(now, call, *report);
                self.apply_progress(now, actions);
                return;
            }
            MediaEventKind::ProgressCapture { samples } => {
                self.write_capture(event.name.clone(), samples.clone());
                return;
            }
            MediaEventKind::AgentStarted { .. } if endpoint => {
                self.progress.agent_started(now, call);
            }
            MediaEventKind::PlayDone if !endpoint => {
                let actions = self.progress.play_done(call);
                self.apply_progress(now, actions);
            }
            _ => {}
        }
        match &event.kind {
            MediaEventKind::AgentStarted { .. } => {
                self.publish.sip.agent_streams_started_total.inc();
            }
            MediaEventKind::AgentEnded { reason, .. } => {
                self.publish.sip.agent_stream_ended(reason)
            }
            MediaEventKind::AgentBadMessage { .. } => {
                self.publish.sip.agent_bad_messages_total.inc();
            }
            _ => {}
        }
        match &event.kind {
            MediaEventKind::Timeout if !endpoint => {
                tracing::info!(call = %call, name = %event.name, "no RTP from the peer; the call ends");
                let _ = self
                    .calls
                    .end_with(now, &mut self.ep, call, EndCause::MediaTimeout);
            }
            MediaEventKind::SrtpFailed { reason } if !endpoint => {
                tracing::warn!(call = %call, reason = %reason, "SRTP keys not usable; the call ends");
                let _ = self
                    .calls
                    .end_with(now, &mut self.ep, call, EndCause::MediaError);
            }
            MediaEventKind::DtlsFailed { reason } if !endpoint => {
                tracing::warn!(call = %call, reason = %reason, "DTLS-SRTP failed; the call ends");
                let _ = self
                    .calls
                    .end_with(now, &mut self.ep, call, EndCause::DtlsFailed);
            }
            MediaEventKind::AgentEnded {
                reason,
                detail,
                hang_up: true,
            } => {
                let cause = if *reason == "closed" {
                    EndCause::AgentHangup
                } else {
                    EndCause::AgentFailed
                };
                tracing::info!(call = %call, reason, detail = %detail, "the agent stream ended; the call ends");
                let _ = self.calls.end_with(now, &mut self.ep, call, cause);
            }
            MediaEventKind::BindFailed { port } => {
                tracing::warn!(call = %call, port, "media port not bound; the call ends");
                let _ = self
                    .calls
                    .end_with(now, &mut self.ep, call, EndCause::MediaError);
            }
            _ => {}
        }
        self.publish.events.emit(CoreEvent::Media(event));
    }

    /// Attaches an external RTP endpoint to `call`: a leg of its own,
    /// relayed with the call's leg.
    pub(super) fn attach_endpoint(
        &mut self,
        call: CallId,
        endpoint: RtpEndpoint,
    ) -> Result<Attached, CallError> {
        let name: Arc<str> = self.calls.name_of(call).ok_or(CallError::Unknown(call))?;
        let port = self.calls.endpoint_port(Instant::now(), call)?;
        // The call's own leg must be placed first (its Open may still be
        // queued from this turn).
        self.apply_media_ops();
        let leg = call.0 | ENDPOINT_BIT;
        let media = &mut self.publish.media;
        media.open(leg, name, port, Some(call.0));
        media.spec(leg, endpoint_spec(&endpoint), None, None);
        media.connect(call.0, leg);
        Ok(Attached {
            local: SocketAddr::new(self.calls.media_address(), port),
        })
    }

    /// Streams `call`'s audio to a voice agent: a leg of its own on the
    /// call's shard, relayed with the call's leg.
    pub(super) fn attach_agent(
        &mut self,
        call: CallId,
        agent: Box<AgentSpec>,
    ) -> Result<(), CallError> {
        let name: Arc<str> = self.calls.name_of(call).ok_or(CallError::Unknown(call))?;
        if !self.publish.media.is_running() {
            return Err(CallError::NoMedia);
        }
        // The call's own leg must be placed first.
        self.apply_media_ops();
        let leg = call.0 | ENDPOINT_BIT;
        let media = &mut self.publish.media;
        media.close(leg);
        media.open_agent(leg, name, call.0, agent_spec(agent.address), agent);
        media.connect(call.0, leg);
        Ok(())
    }

    /// Sends DTMF: as telephone-events when the call negotiated them and
    /// media runs, else as SIP INFO.
    pub(super) fn dtmf(
        &mut self,
        now: Instant,
        call: CallId,
        digits: &str,
    ) -> Result<(), CallError> {
        let rtp = self.publish.media.is_running()
            && self
                .calls
                .negotiated(call)
                .is_some_and(|n| n.dtmf_payload_type.is_some());
        if !rtp {
            return self.calls.send_dtmf(now, &mut self.ep, call, digits);
        }
        self.calls.check_answered(call, "send DTMF")?;
        self.publish.media.dtmf(call.0, digits, DTMF_DIGIT);
        Ok(())
    }
}
