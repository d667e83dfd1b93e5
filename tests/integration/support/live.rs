//! The sans-IO endpoint over the real driver (sockets, TCP, TLS) inside a
//! test: the same loop the SIP core runs, with the events kept for the test
//! to inspect.

use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dialerd::sip::driver::{Driver, DriverConfig};
use dialerd::sip::endpoint::{
    Endpoint, EndpointConfig, Event, Failure, Input, OutRequest, Output, OwnerId, PeerOptions,
};
use dialerd::sip::ids::SeededEntropy;
use dialerd::sip::message::Message;
use dialerd::sip::target::Target;
use dialerd::sip::transaction::TxnId;
use dialerd::sip::transport::{Gate, Inbound, TransportLimits};
use tokio::sync::mpsc;

/// An endpoint with real sockets.
pub struct Live {
    /// The endpoint.
    pub ep: Endpoint,
    driver: Driver,
    inbound: mpsc::Receiver<Inbound>,
    /// Events not yet taken.
    pub events: VecDeque<Event>,
}

impl Live {
    /// An endpoint with one UDP socket on loopback and no listeners.
    pub async fn start() -> Self {
        let config = DriverConfig {
            udp: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            tcp: Vec::new(),
            tls: Vec::new(),
            tls_server: None,
            limits: TransportLimits::default(),
            gate: Gate::open(1 << 20),
        };
        let (driver, inbound) = Driver::bind(config).await.expect("bind");
        let mut ep = Endpoint::new(
            EndpointConfig::default(),
            RandomState::new(),
            Box::new(SeededEntropy::new(7)),
        );
        for (flow, local) in driver.udp() {
            ep.add_udp(*flow, *local);
        }
        Self {
            ep,
            driver,
            inbound,
            events: VecDeque::new(),
        }
    }

    /// Sends a request for `owner`, with `options` for its peer.
    pub fn send(
        &mut self,
        owner: OwnerId,
        request: OutRequest,
        target: Target,
        options: Option<PeerOptions>,
    ) -> TxnId {
        if let Some(options) = options {
            self.ep
                .configure_peer((target.transport, target.addr), options);
        }
        let txn = self
            .ep
            .send_request(Instant::now(), owner, request, target)
            .expect("send");
        self.flush();
        txn
    }

    fn flush(&mut self) {
        while let Some(out) = self.ep.poll_output() {
            match out {
                Output::Transmit(t) => {
                    if let Err(e) = self.driver.transmit(&t) {
                        let input = Input::SendFailed {
                            txn: t.txn,
                            error: e.to_string(),
                        };
                        self.ep.handle_input(Instant::now(), input);
                    }
                }
                Output::Connect {
                    transport,
                    remote,
                    options,
                } => self.driver.connect(transport, remote, options),
                Output::Event(e) => self.events.push_back(e),
            }
        }
    }

    /// Runs I/O and timers until an event comes or `within` passes.
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        let end = tokio::time::Instant::now() + within;
        loop {
            self.flush();
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            let timer = self
                .ep
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or(end)
                .min(end);
            tokio::select! {
                item = self.inbound.recv() => {
                    let item = item?;
                    if let Ok(input) = self.driver.input(item) {
                        self.ep.handle_input(Instant::now(), input);
                    }
                }
                () = tokio::time::sleep_until(timer) => {
                    if tokio::time::Instant::now() >= end {
                        return None;
                    }
                    self.ep.handle_timeout(Instant::now());
                }
            }
        }
    }

    /// The final response of `txn` (other events stay queued in order).
    pub async fn final_response(
        &mut self,
        txn: TxnId,
        within: Duration,
    ) -> Result<Message, Failure> {
        let end = Instant::now() + within;
        let mut others = VecDeque::new();
        let result = loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Some(Event::Response {
                    txn: t, response, ..
                }) if t == txn && response.status().unwrap_or(0) >= 200 => {
                    break Ok(response);
                }
                Some(Event::RequestFailed {
                    txn: t, failure, ..
                }) if t == txn => {
                    break Err(failure);
                }
                Some(other) => others.push_back(other),
                None => break Err(Failure::Timeout),
            }
        };
        others.extend(self.events.drain(..));
        self.events = others;
        result
    }
}
