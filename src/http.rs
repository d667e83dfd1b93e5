//! The ops HTTP server: `/healthz`, `/readyz`, `/status`, `/metrics`,
//! `POST /drain`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;

use crate::metrics::HttpLabels;
use crate::status::Shared;

/// Builds the router over the shared state.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/drain", post(drain))
        .route("/sip-trace", post(sip_trace))
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            count_requests,
        ))
        .with_state(shared)
}

/// Most HTTP connections at once; past it, a new connection closes the
/// oldest one that is not in the middle of a request.
pub const MAX_CONNECTIONS: usize = 256;
/// Longest a client may take to send a request head (also the idle limit
/// of a kept-alive connection between requests).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the router on `listener` until `stop` completes, then finishes
/// in-flight requests (for at most a second). Idle and slow clients cannot
/// use up the file limit or keep the probes out: connections are capped,
/// request heads and idle time are bounded, and at the cap the oldest idle
/// connection gives way to the new one.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(shared);
    let mut slots = Slots::default();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        slots.prune();
        if slots.live() >= MAX_CONNECTIONS && !slots.evict_idle() {
            drop(stream); // every slot is in a request: refuse this one
            continue;
        }
        let slot = slots.add();
        let service = app.clone().layer(axum::Extension(ConnectInfo(peer)));
        tokio::spawn(serve_connection(stream, service, slot));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while slots.live() > 0 && tokio::time::Instant::now() < deadline {
        slots.evict_all_idle();
        tokio::time::sleep(Duration::from_millis(20)).await;
        slots.prune();
    }
    Ok(())
}

async fn serve_connection(stream: tokio::net::TcpStream, service: Router, slot: Arc<Slot>) {
    let busy = slot.clone();
    let service = service.layer(middleware::from_fn(move |request: Request, next: Next| {
        let busy = busy.clone();
        async move {
            busy.in_request.store(true, Ordering::Relaxed);
            let response = next.run(request).await;
            busy.in_request.store(false, Ordering::Relaxed);
            response
        }
    }));
    let hyper_service = hyper_util::service::TowerToHyperService::new(service);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), hyper_service);
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        () = slot.evict.notified() => {}
    }
    slot.done.store(true, Ordering::Relaxed);
}

/// One connection's state as the accept loop sees it.
#[derive(Debug, Default)]
struct Slot {
    in_request: AtomicBool,
    done: AtomicBool,
    evict: tokio::sync::Notify,
}

/// Connections in accept order.
#[derive(Debug, Default)]
struct Slots {
    list: VecDeque<Arc<Slot>>,
}

impl Slots {
    fn prune(&mut self) {
        self.list.retain(|s| !s.done.load(Ordering::Relaxed));
    }

    fn live(&self) -> usize {
        self.list.len()
    }

    fn add(&mut self) -> Arc<Slot> {
        let slot = Arc::new(Slot::default());
        self.list.push_back(slot.clone());
        slot
    }

    /// Closes the oldest connection not in a request; false when there is
    /// none.
    fn evict_idle(&mut self) -> bool {
        let Some(i) = self
            .list
            .iter()
            .position(|s| !s.in_request.load(Ordering::Relaxed))
        else {
            return false;
        };
        if let Some(slot) = self.list.remove(i) {
            slot.evict.notify_one();
        }
        true
    }

    fn evict_all_idle(&mut self) {
        for slot in &self.list {
            if !slot.in_request.load(Ordering::Relaxed) {
                slot.evict.notify_one();
            }
        }
    }
}

async fn count_requests(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    shared
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let age = shared.heartbeat.age(Instant::now());
    let alive = shared.heartbeat.is_alive(Instant::now());
    let code = if alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if alive { "ok" } else { "stalled" },
        "heartbeat_age_ms": u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
    });
    (code, Json(body)).into_response()
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let ready = shared.is_ready();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "phase": shared.lifecycle.phase(),
        "checks": shared.checks(),
    });
    (code, Json(body)).into_response()
}

/// Most calls one `/status` page lists.
const CALLS_PAGE_MAX: usize = 1000;
/// How long `/status` and `/metrics` wait for the SIP core's call table.
const CALL_TABLE_WAIT: Duration = Duration::from_secs(1);

/// `offset` and `limit` from a query string (`?offset=100&limit=50`).
fn paging(query: Option<&str>) -> (usize, usize) {
    let mut offset = 0;
    let mut limit = 100;
    for pair in query.unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("offset", v)) => offset = v.parse().unwrap_or(0),
            Some(("limit", v)) => limit = v.parse().unwrap_or(100),
            _ => {}
        }
    }
    (offset, limit.min(CALLS_PAGE_MAX))
}

async fn call_table(
    shared: &Shared,
    offset: usize,
    limit: usize,
) -> Option<(crate::call::Live, Vec<crate::call::CallSummary>)> {
    let sip = shared.sip.get()?;
    tokio::time::timeout(CALL_TABLE_WAIT, sip.calls(offset, limit))
        .await
        .ok()
        .flatten()
}

/// The status snapshot with one page of live calls (`?offset=&limit=`,
/// oldest first).
async fn status(State(shared): State<Arc<Shared>>, uri: axum::http::Uri) -> Response {
    let (offset, limit) = paging(uri.query());
    let mut body = serde_json::to_value(shared.snapshot()).unwrap_or_default();
    let legs = match shared.media.get() {
        Some(reader) => reader.stats(CALL_TABLE_WAIT).await,
        None => Vec::new(),
    };
    let calls = match call_table(&shared, offset, limit).await {
        Some((live, page)) => {
            let mut by_call: std::collections::HashMap<&str, Vec<&crate::media::LegStats>> =
                std::collections::HashMap::new();
            for leg in &legs {
                by_call.entry(&leg.name).or_default().push(leg);
            }
            let mut items = serde_json::to_value(&page).unwrap_or_default();
            if let Some(items) = items.as_array_mut() {
                for item in items {
                    let name = item
                        .get("name")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default();
                    let media = by_call.get(name).cloned().unwrap_or_default();
                    if let Some(map) = item.as_object_mut() {
                        map.insert("media".into(), json!(media));
                    }
                }
            }
            json!({
                "live": live.total,
                "by_state": live.by_state.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "offset": offset,
                "items": items,
                "media_legs": legs.len(),
            })
        }
        None => json!({"error": "the SIP core did not answer"}),
    };
    if let Some(map) = body.as_object_mut() {
        map.insert("calls".into(), calls);
    }
    Json(body).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    shared.metrics.ready.set(i64::from(shared.is_ready()));
    {
        let redis = shared.redis.borrow();
        let m = &shared.metrics;
        m.redis_connected.set(i64::from(redis.connected));
        m.redis_reconnects
            .set(i64::try_from(redis.reconnects).unwrap_or(i64::MAX));
        m.events_dropped
            .set(i64::try_from(redis.events_dropped).unwrap_or(i64::MAX));
    }
    {
        let accounts = shared.accounts.borrow();
        shared
            .metrics
            .registration
            .set_states(accounts.iter().map(|a| a.state));
    }
    if let Some((live, _)) = call_table(&shared, 0, 0).await {
        shared.metrics.sip.set_calls(&live.by_state);
    }
    if let Some(reader) = shared.media.get() {
        let legs = reader.stats(CALL_TABLE_WAIT).await.len();
        shared
            .metrics
            .media_legs
            .set(i64::try_from(legs).unwrap_or(i64::MAX));
    }
    shared
        .metrics
        .heartbeat_age
        .set(shared.heartbeat.age(Instant::now()).as_secs_f64());
    match shared.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics encoding failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Starts draining: readiness turns false and new work is refused. Only
/// accepted from loopback, so that a pod's preStop hook can call it but the
/// network cannot.
async fn drain(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if !peer.ip().is_loopback() {
        tracing::warn!(%peer, "refused /drain from a non-loopback address");
        let body =
            json!({"error": "forbidden", "message": "POST /drain is accepted from loopback only"});
        return (StatusCode::FORBIDDEN, Json(body)).into_response();
    }
    let phase = shared.lifecycle.drain();
    tracing::info!(?phase, "drain requested over HTTP");
    (StatusCode::ACCEPTED, Json(json!({ "phase": phase }))).into_response()
}

/// Switches SIP message logging (`log.sip_trace`) at run time; loopback
/// callers only (the log then holds message contents).
async fn sip_trace(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: axum::http::Uri,
) -> Response {
    if !peer.ip().is_loopback() {
        tracing::warn!(%peer, "refused /sip-trace from a non-loopback address");
        let body = json!({"error": "forbidden", "message": "POST /sip-trace is accepted from loopback only"});
        return (StatusCode::FORBIDDEN, Json(body)).into_response();
    }
    let on = match uri.query() {
        Some("on=true") => Some(true),
        Some("on=false") => Some(false),
        _ => None,
    };
    let Some(on) = on else {
        let body = json!({"error": "bad_request", "message": "give ?on=true or ?on=false"});
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    };
    let Some(sip) = shared.sip.get() else {
        let body = json!({"error": "unavailable", "message": "the SIP core is not running"});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    };
    if !sip.set_trace(on).await {
        let body = json!({"error": "unavailable", "message": "the SIP core stopped"});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    (StatusCode::OK, Json(json!({ "sip_trace": on }))).into_response()
}
