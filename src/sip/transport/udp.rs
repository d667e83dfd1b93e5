//! The receive loop of one UDP socket.

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::{Admission, Gate, Inbound};
use crate::sip::target::{FlowId, Target, Transport};

/// Reads datagrams and hands them to the core; sources outside the
/// allow-list are dropped (or passed on to be refused) here, before any
/// parsing; a full core queue drops the datagram (UDP peers retransmit)
/// and reports the drop.
pub async fn receive_loop(
    socket: Arc<UdpSocket>,
    flow: FlowId,
    inbound: mpsc::Sender<Inbound>,
    max_message: usize,
    gate: Gate,
) {
    let mut buf = vec![0u8; max_message.max(1500) + 1];
    loop {
        let (n, addr) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP port unreachable and the like surface here on some
                // systems; the socket itself stays usable.
                tracing::debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        let data = buf.get(..n).unwrap_or_default();
        if data.iter().all(|b| matches!(b, b'\r' | b'\n' | b' ' | 0)) {
            continue; // keepalive datagram
        }
        let source = Target {
            transport: Transport::Udp,
            addr,
            flow: Some(flow),
        };
        let report = match gate.admit(addr.ip()) {
            Admission::Drop => Inbound::Dropped {
                reason: "untrusted_source",
            },
            Admission::Refuse => Inbound::Refused {
                data: Bytes::copy_from_slice(data),
                source,
            },
            Admission::Allowed if n > max_message => Inbound::Dropped {
                reason: "too_large",
            },
            Admission::Allowed => match gate.try_reserve(n) {
                Some(permit) => Inbound::Message {
                    data: Bytes::copy_from_slice(data),
                    source,
                    permit: Some(permit),
                },
                None => Inbound::Dropped {
                    reason: "queue_full",
                },
            },
        };
        match inbound.try_send(report) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let _ = inbound.try_send(Inbound::Dropped {
                    reason: "queue_full",
                });
            }
            Err(TrySendError::Closed(_)) => return,
        }
    }
}
