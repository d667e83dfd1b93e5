//! The SIP core's handle on the media shards: which shard holds each leg,
//! and the commands to it. Owned by the SIP core task alone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::dtls::{DtlsSetup, Identity};
use super::leg::{LegId, LegSpec, LegStats};
use super::player::Source;
use super::relay::{MediaEvent, RelayConfig};
use super::shard::{self, ShardCommand, ShardCounters, ShardSender, Sockets};
use super::srtp::SrtpKeys;
use crate::call::PortClaim;

/// How the media shards run.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaConfig {
    /// The address RTP sockets bind.
    pub bind: IpAddr,
    /// Shard threads; one per core when 0.
    pub shards: usize,
    /// The relay's timing and latching.
    pub relay: RelayConfig,
    /// Reports the SIP core can fall behind by before they are dropped.
    pub event_depth: usize,
    /// While packets flow, a shard sleeps this long between polls to read
    /// them in batches instead of waking for each; zero wakes per packet.
    pub batch_wait: Duration,
    /// The certificate of DTLS-SRTP legs; `None`: no DTLS-SRTP.
    pub identity: Option<Identity>,
}

/// The shards and where each leg lives.
#[derive(Debug)]
pub struct Media {
    shards: Vec<ShardSender>,
    placement: HashMap<LegId, usize>,
    next: usize,
    bind: IpAddr,
    reserve: PortReserve,
    fingerprint: Option<Vec<u8>>,
}

/// Binds a port's sockets when the call table claims it, before the port
/// is advertised; they wait here until the leg opens on a shard. Only the
/// SIP core task uses it (the lock is never contended).
#[derive(Debug, Clone)]
pub struct PortReserve {
    bind: IpAddr,
    held: Arc<Mutex<HashMap<u16, Sockets>>>,
}

impl PortReserve {
    fn take(&self, port: u16) -> Option<Sockets> {
        self.held.lock().ok()?.remove(&port)
    }
}

impl PortClaim for PortReserve {
    fn claim(&mut self, port: u16) -> bool {
        let Ok(mut held) = self.held.lock() else {
            return false;
        };
        if held.contains_key(&port) {
            return true;
        }
        match shard::bind(self.bind, port) {
            Ok(sockets) => {
                held.insert(port, sockets);
                true
            }
            Err(e) => {
                tracing::debug!(port, error = %e, "media port taken elsewhere; skipped");
                false
            }
        }
    }
}

/// Reads the legs' totals from every shard (for `/status`).
#[derive(Debug, Clone, Default)]
pub struct MediaReader {
    shards: Vec<ShardSender>,
}

impl MediaReader {
    /// The totals of every leg, from each shard that answers within `wait`.
    pub async fn stats(&self, wait: Duration) -> Vec<LegStats> {
        let mut replies = Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if shard.send(ShardCommand::Stats { reply: tx }) {
                replies.push(rx);
            }
        }
        let mut all = Vec::new();
        for rx in replies {
            if let Ok(Ok(mut stats)) = tokio::time::timeout(wait, rx).await {
                all.append(&mut stats);
            }
        }
        all
    }
}

impl Media {
    /// A handle with no shards: every command is ignored (tools such as
    /// `dialerd call --no-media`, tests of the SIP core alone).
    pub fn none() -> Media {
        let bind = IpAddr::from([127, 0, 0, 1]);
        Media {
            shards: Vec::new(),
            placement: HashMap::new(),
            next: 0,
            bind,
            reserve: PortReserve {
                bind,
                held: Arc::default(),
            },
            fingerprint: None,
        }
    }

    /// What the call table claims ports with (binding them now), when
    /// shards run.
    pub fn port_claim(&self) -> Option<Box<dyn PortClaim>> {
        self.is_running()
            .then(|| Box::new(self.reserve.clone()) as Box<dyn PortClaim>)
    }

    /// Starts the shard threads; reports arrive on the returned receiver.
    pub fn start(
        config: &MediaConfig,
        counters: ShardCounters,
        seed: u64,
    ) -> std::io::Result<(
        Media,
        tokio::sync::mpsc::Receiver<MediaEvent>,
        Vec<std::thread::JoinHandle<()>>,
    )> {
        let count = match config.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(config.event_depth.max(1));
        let mut shards = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let seed = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let (sender, thread) = shard::spawn(
                index,
                config.relay,
                config.identity.clone(),
                config.batch_wait,
                seed,
                tx.clone(),
                counters.clone(),
            )?;
            shards.push(sender);
            threads.push(thread);
        }
        Ok((
            Media {
                shards,
                placement: HashMap::new(),
                next: 0,
                bind: config.bind,
                reserve: PortReserve {
                    bind: config.bind,
                    held: Arc::default(),
                },
                fingerprint: config.identity.as_ref().map(|i| i.fingerprint().to_vec()),
            },
            rx,
            threads,
        ))
    }

    /// Whether shards run (else every command is ignored).
    pub fn is_running(&self) -> bool {
        !self.shards.is_empty()
    }

    /// A reader of the legs' totals.
    pub fn reader(&self) -> MediaReader {
        MediaReader {
            shards: self.shards.clone(),
        }
    }

    fn send(&self, leg: LegId, command: ShardCommand) {
        if let Some(shard) = self.placement.get(&leg).and_then(|s| self.shards.get(*s)) {
            shard.send(command);
        }
    }

    /// Binds `port` for `leg`, on the shard of `near` if given (the other
    /// leg of a bridge), else on the next shard in turn.
    pub fn open(&mut self, leg: LegId, name: Arc<str>, port: u16, near: Option<LegId>) {
        if self.shards.is_empty() {
            return;
        }
        let index = match near.and_then(|n| self.placement.get(&n)) {
            Some(i) => *i,
            None => {
                self.next = (self.next + 1) % self.shards.len();
                self.next
            }
        };
        self.placement.insert(leg, index);
        if let Some(shard) = self.shards.get(index) {
            shard.send(ShardCommand::Open {
                leg,
                name,
                ip: self.bind,
                port,
                sockets: self.reserve.take(port),
            });
        }
    }

    /// Opens `leg` as a voice agent's stream on the shard of `near` (the
    /// call's leg it will relay with).
    pub fn open_agent(
        &mut self,
        leg: LegId,
        name: Arc<str>,
        near: LegId,
        spec: LegSpec,
        agent: Box<super::agent_conn::AgentSpec>,
    ) {
        let Some(&index) = self.placement.get(&near) else {
            return;
        };
        self.placement.insert(leg, index);
        if let Some(shard) = self.shards.get(index) {
            shard.send(ShardCommand::OpenAgent {
                leg,
                name,
                spec,
                agent,
            });
        }
    }

    /// What was negotiated for `leg`, with its SRTP keys if encrypted with
    /// SDES, or its DTLS-SRTP setup.
    pub fn spec(&self, leg: LegId, spec: LegSpec, keys: Option<SrtpKeys>, dtls: Option<DtlsSetup>) {
        let keys = keys.map(Box::new);
        let dtls = dtls.map(Box::new);
        self.send(
            leg,
            ShardCommand::Spec {
                leg,
                spec,
                keys,
                dtls,
            },
        );
    }

    /// The SHA-256 digest of the DTLS-SRTP certificate, when shards run with one.
    pub fn dtls_fingerprint(&self) -> Option<&[u8]> {
        self.fingerprint.as_deref()
    }

    /// Relays between `a` and `b`; `b` moves to `a`'s shard if elsewhere.
    pub fn connect(&mut self, a: LegId, b: LegId) {
        let (Some(sa), Some(sb)) = (
            self.placement.get(&a).copied(),
            self.placement.get(&b).copied(),
        ) else {
            return;
        };
        if sa == sb {
            self.send(a, ShardCommand::Connect { a, b });
            return;
        }
        let Some(to) = self.shards.get(sa).cloned() else {
            return;
        };
        self.send(
            b,
            ShardCommand::Detach {
                leg: b,
                to,
                connect: a,
            },
        );
        self.placement.insert(b, sa);
    }

    /// Stops relaying for `leg`.
    pub fn disconnect(&self, leg: LegId) {
        self.send(leg, ShardCommand::Disconnect { leg });
    }

    /// Plays `source` toward `leg`'s peer; `None` stops it.
    pub fn play(&self, leg: LegId, source: Option<Source>) {
        self.send(
            leg,
            ShardCommand::Play {
                leg,
                source: source.map(Box::new),
            },
        );
    }

    /// Analyses what `leg`'s peer sends: early media's tones, or the
    /// answer; `None` stops.
    pub fn analyse(
        &self,
        leg: LegId,
        analysis: Option<(crate::cpa::analyzer::AnalysisConfig, bool, u32)>,
    ) {
        self.send(leg, ShardCommand::Analyse { leg, analysis });
    }

    /// Sends `digits` as telephone-events toward `leg`'s peer.
    pub fn dtmf(&self, leg: LegId, digits: &str, duration: Duration) {
        self.send(
            leg,
            ShardCommand::Dtmf {
                leg,
                digits: digits.to_owned(),
                duration,
            },
        );
    }

    /// Closes `leg`; its totals are reported.
    pub fn close(&mut self, leg: LegId) {
        self.send(leg, ShardCommand::Close { leg });
        self.placement.remove(&leg);
    }
}

impl Drop for Media {
    fn drop(&mut self) {
        for shard in &self.shards {
            shard.send(ShardCommand::Stop);
        }
    }
}
