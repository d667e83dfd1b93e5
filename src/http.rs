//! The ops HTTP server: `/healthz`, `/readyz`, `/status`, `/metrics`,
//! `POST /drain`, `POST /sip-trace`.
//!
//! Access: the probes (`/healthz`, `/readyz`) are open to all. Loopback
//! callers may use everything. Other callers must send
//! `Authorization: Bearer <http.token>` when a token is configured; without
//! one, `/status` and `/metrics` are open and the state-changing `POST`s
//! are refused.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::config::Secret;
use crate::metrics::HttpLabels;
use crate::status::Shared;

/// Who may use the endpoints beyond the probes: loopback callers always,
/// others with the bearer token when one is configured.
#[derive(Clone, Default)]
pub struct Access {
    /// SHA-256 of the token; the token itself is not kept.
    token_digest: Option<[u8; 32]>,
}

impl Access {
    /// Access with `token` (`http.token`) as the bearer token, if any.
    pub fn new(token: Option<&Secret>) -> Self {
        Self {
            token_digest: token.map(|t| digest(t.expose().as_bytes())),
        }
    }

    /// Whether a bearer token is configured.
    pub fn has_token(&self) -> bool {
        self.token_digest.is_some()
    }

    /// What a request from `peer` (none when unknown) with these headers
    /// may do on a read (`/status`, `/metrics`) or a state-changing route.
    fn verdict(&self, peer: Option<IpAddr>, headers: &HeaderMap, write: bool) -> Verdict {
        if peer.is_some_and(|ip| ip.to_canonical().is_loopback()) {
            return Verdict::Allow;
        }
        let Some(expected) = &self.token_digest else {
            return if write {
                Verdict::LoopbackOnly
            } else {
                Verdict::Allow
            };
        };
        match bearer(headers.get(header::AUTHORIZATION)) {
            None => Verdict::Unauthorized { invalid: false },
            Some(token) if same_digest(&digest(token), expected) => Verdict::Allow,
            Some(_) => Verdict::Unauthorized { invalid: true },
        }
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("token", &if self.has_token() { "set" } else { "none" })
            .finish()
    }
}

/// The outcome of the access check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allow,
    /// No usable bearer token (`invalid`: one was sent but is wrong).
    Unauthorized {
        invalid: bool,
    },
    /// A state-changing route from elsewhere with no token configured.
    LoopbackOnly,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Compares two digests in constant time.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(value: Option<&HeaderValue>) -> Option<&[u8]> {
    let value = value?.as_bytes();
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value.get(7..)?.trim_ascii();
    Some(token)
}

/// Builds the router over the shared state; `access` guards every route
/// but the probes.
pub fn router(shared: Arc<Shared>, access: Access) -> Router {
    let access = Arc::new(access);
    let probes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let reads = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(access.clone(), guard_read));
    let writes = Router::new()
        .route("/drain", post(drain))
        .route("/sip-trace", post(sip_trace))
        .route(
            "/2010-04-01/Accounts/{account}/Calls/{call}",
            post(agent_hangup),
        )
        .route_layer(middleware::from_fn_with_state(access, guard_write));
    probes
        .merge(reads)
        .merge(writes)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            count_requests,
        ))
        .with_state(shared)
}

async fn guard_read(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    guard(&access, request, next, false).await
}

async fn guard_write(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    guard(&access, request, next, true).await
}

/// Runs the request when `access` lets its caller in; otherwise answers
/// 401 (with `WWW-Authenticate: Bearer`) or 403. Never logs the token.
async fn guard(access: &Access, request: Request, next: Next, write: bool) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let verdict = access.verdict(peer.map(|p| p.ip()), request.headers(), write);
    let path = request.uri().path().to_owned();
    let peer = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    match verdict {
        Verdict::Allow => next.run(request).await,
        Verdict::Unauthorized { invalid } => {
            if write || invalid {
                tracing::warn!(%peer, %path, invalid, "refused an HTTP request without a valid bearer token");
            } else {
                tracing::debug!(%peer, %path, "refused an HTTP request without a bearer token");
            }
            let (challenge, message) = if invalid {
                (
                    "Bearer realm=\"dialerd\", error=\"invalid_token\"",
                    "the bearer token is not valid",
                )
            } else {
                (
                    "Bearer realm=\"dialerd\"",
                    "send Authorization: Bearer <http.token> from a non-loopback address",
                )
            };
            let body = json!({"error": "unauthorized", "message": message});
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, challenge)],
                Json(body),
            )
                .into_response()
        }
        Verdict::LoopbackOnly => {
            tracing::warn!(%peer, %path, "refused a state-changing HTTP request from a non-loopback address");
            let body = json!({
                "error": "forbidden",
                "message": format!("POST {path} is accepted from loopback only (no http.token is set)"),
            });
            (StatusCode::FORBIDDEN, Json(body)).into_response()
        }
    }
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
/// connection gives way to the new one. Warns once when the listener is
/// reachable from other than loopback and no token is set.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    access: Access,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(local) = listener.local_addr()
        && !local.ip().to_canonical().is_loopback()
        && !access.has_token()
    {
        tracing::warn!(
            bind = %local,
            "http.bind is not a loopback address and no http.token is set: /status and /metrics \
             are open to every caller that can reach it (POST /drain and /sip-trace stay loopback-only)"
        );
    }
    let app = router(shared, access);
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
            drop(stream); // no connection can give way yet: refuse this one
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
    let mut connection = std::pin::pin!(
        builder.serve_connection(hyper_util::rt::TokioIo::new(stream), hyper_service)
    );
    // One poll before the connection can be evicted: a request already
    // sent (a probe's) is read and marks it busy. Without it, a flood of
    // new connections could evict a probe before its task ever ran.
    let first = std::future::poll_fn(|cx| Poll::Ready(connection.as_mut().poll(cx))).await;
    slot.started.store(true, Ordering::Relaxed);
    let result = match first {
        Poll::Ready(result) => Some(result),
        Poll::Pending => tokio::select! {
            result = &mut connection => Some(result),
            () = slot.evict.notified() => None,
        },
    };
    if let Some(Err(e)) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
    slot.done.store(true, Ordering::Relaxed);
}

/// One connection's state as the accept loop sees it.
#[derive(Debug, Default)]
struct Slot {
    /// The connection has been polled once (it read what was sent).
    started: AtomicBool,
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

    /// Closes the oldest connection that has been polled and is not in a
    /// request; false when there is none.
    fn evict_idle(&mut self) -> bool {
        let Some(i) = self.list.iter().position(|s| {
            s.started.load(Ordering::Relaxed) && !s.in_request.load(Ordering::Relaxed)
        }) else {
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

/// Starts draining: readiness turns false and new work is refused. Guarded:
/// a pod's preStop hook (loopback) can call it, the network only with the
/// token.
async fn drain(State(shared): State<Arc<Shared>>) -> Response {
    let phase = shared.lifecycle.drain();
    tracing::info!(?phase, "drain requested over HTTP");
    (StatusCode::ACCEPTED, Json(json!({ "phase": phase }))).into_response()
}

/// Switches SIP message logging (`log.sip_trace`) at run time; guarded
/// like `drain` (the log then holds message contents).
async fn sip_trace(State(shared): State<Arc<Shared>>, uri: axum::http::Uri) -> Response {
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

/// The Twilio REST call update (`Status=completed`) that voice agent
/// frameworks end a call with (Pipecat's auto hang-up with its `base_url`
/// pointed here): hangs up the live call whose callSid is `{call}` (without
/// `.json`). Served only with `http.agent_hangup_api`; guarded like `drain`.
async fn agent_hangup(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path((_account, call)): axum::extract::Path<(String, String)>,
    body: String,
) -> Response {
    let error = |status: StatusCode, code: u32, message: &str| {
        (
            status,
            Json(json!({"code": code, "message": message, "status": status.as_u16()})),
        )
            .into_response()
    };
    if !shared.agent_hangup_api.load(Ordering::Relaxed) {
        return error(
            StatusCode::NOT_FOUND,
            20404,
            "not served (http.agent_hangup_api is off)",
        );
    }
    let completed = body.split('&').any(|pair| {
        pair.split_once('=')
            .is_some_and(|(k, v)| k == "Status" && v.eq_ignore_ascii_case("completed"))
    });
    if !completed {
        return error(
            StatusCode::BAD_REQUEST,
            21218,
            "only Status=completed is supported",
        );
    }
    let call_sid = call.strip_suffix(".json").unwrap_or(&call);
    let Some(sip) = shared.sip.get() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            20503,
            "the SIP core is not running",
        );
    };
    let Some((_, calls)) = sip.calls(0, usize::MAX).await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            20503,
            "the SIP core stopped",
        );
    };
    let Some(name) = calls
        .iter()
        .map(|c| c.name.to_string())
        .find(|name| crate::control::channel::agent::call_sid(name) == call_sid)
    else {
        return error(
            StatusCode::NOT_FOUND,
            20404,
            "no live call with that callSid",
        );
    };
    match sip.act(&name, crate::engine::CallAction::Hangup).await {
        Some(Ok(_)) => {
            tracing::info!(call = %name, call_sid, "hang-up requested over the agent REST API");
            (
                StatusCode::OK,
                Json(json!({"sid": call_sid, "status": "completed"})),
            )
                .into_response()
        }
        Some(Err(e)) => error(StatusCode::CONFLICT, 21220, &e.to_string()),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            20503,
            "the SIP core stopped",
        ),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use hyper::service::Service as _;

    use super::*;
    use crate::lifecycle::Phase;

    const TOKEN: &str = "s3cret-token-0123456789";
    const OUTSIDE: [u8; 4] = [203, 0, 113, 7];

    fn shared() -> Arc<Shared> {
        Arc::new(Shared::new("test".into(), None, "local"))
    }

    /// Sends one request to the router as if it came from `peer`.
    async fn send(
        shared: &Arc<Shared>,
        access: &Access,
        peer: impl Into<IpAddr>,
        method: &str,
        path: &str,
        authorization: Option<&str>,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let peer = SocketAddr::new(peer.into(), 40000);
        let app = router(shared.clone(), access.clone()).layer(axum::Extension(ConnectInfo(peer)));
        let mut request = axum::http::Request::builder().method(method).uri(path);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request.body(Body::empty()).unwrap();
        let service = hyper_util::service::TowerToHyperService::new(app);
        let response = service.call(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, headers, body)
    }

    #[test]
    fn eviction_spares_connections_not_yet_polled_and_those_in_a_request() {
        let mut slots = Slots::default();
        let fresh = slots.add();
        let busy = slots.add();
        busy.started.store(true, Ordering::Relaxed);
        busy.in_request.store(true, Ordering::Relaxed);
        assert!(!slots.evict_idle(), "nothing can give way yet");
        assert_eq!(slots.live(), 2);

        let idle = slots.add();
        idle.started.store(true, Ordering::Relaxed);
        fresh.started.store(true, Ordering::Relaxed);
        fresh.in_request.store(true, Ordering::Relaxed);
        assert!(slots.evict_idle());
        assert_eq!(slots.live(), 2);
        assert!(
            slots.list.iter().all(|s| !Arc::ptr_eq(s, &idle)),
            "the polled idle connection gave way"
        );
        assert!(!slots.evict_idle());
    }

    #[tokio::test]
    async fn the_agent_hangup_api_is_off_by_default_and_guarded_like_drain() {
        let shared = shared();
        let path = "/2010-04-01/Accounts/AC1/Calls/CA1.json";
        let (status, _, body) = send(
            &shared,
            &Access::default(),
            [127, 0, 0, 1],
            "POST",
            path,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        shared.agent_hangup_api.store(true, Ordering::Relaxed);
        let (status, _, _) = send(&shared, &Access::default(), OUTSIDE, "POST", path, None).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "loopback only without a token"
        );
        let (status, _, body) = send(
            &shared,
            &Access::default(),
            [127, 0, 0, 1],
            "POST",
            path,
            None,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "no Status=completed: {body}"
        );
    }

    #[tokio::test]
    async fn with_a_token_others_must_send_it() {
        let shared = shared();
        let access = Access::new(Some(&Secret::new(TOKEN)));
        let good = format!("Bearer {TOKEN}");
        let routes = [
            ("GET", "/status", StatusCode::OK),
            ("GET", "/metrics", StatusCode::OK),
            // No SIP core here: past the guard, sip-trace is unavailable.
            (
                "POST",
                "/sip-trace?on=true",
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            ("POST", "/drain", StatusCode::ACCEPTED),
        ];
        for (method, path, allowed) in routes {
            for auth in [
                None,
                Some("Bearer wrong-token-0123456789"),
                Some("Basic abc"),
            ] {
                let (status, headers, body) =
                    send(&shared, &access, OUTSIDE, method, path, auth).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} {auth:?}");
                let challenge = headers[header::WWW_AUTHENTICATE].to_str().unwrap();
                assert!(challenge.starts_with("Bearer"), "{challenge}");
                assert_eq!(body["error"], "unauthorized", "{body}");
                assert!(!body.to_string().contains(TOKEN));
            }
            assert_eq!(
                shared.lifecycle.phase(),
                Phase::Starting,
                "nothing drained yet"
            );
            let (status, ..) = send(&shared, &access, OUTSIDE, method, path, Some(&good)).await;
            assert_eq!(status, allowed, "{method} {path} with the token");
            let lower = format!("bearer  {TOKEN}");
            let (status, ..) = send(&shared, &access, OUTSIDE, method, path, Some(&lower)).await;
            assert_eq!(
                status, allowed,
                "{method} {path}: scheme is case-insensitive"
            );
            // Loopback, v4, v6 and v4-mapped, needs no token.
            for local in [
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                IpAddr::from([0, 0, 0, 0, 0, 0xffff, 0x7f00, 1]),
            ] {
                let (status, ..) = send(&shared, &access, local, method, path, None).await;
                assert_eq!(status, allowed, "{method} {path} from {local}");
            }
        }
        assert_eq!(shared.lifecycle.phase(), Phase::Draining);
    }

    #[tokio::test]
    async fn a_wrong_token_is_told_apart_from_a_missing_one() {
        let shared = shared();
        let access = Access::new(Some(&Secret::new(TOKEN)));
        let (_, headers, _) = send(&shared, &access, OUTSIDE, "GET", "/status", None).await;
        assert_eq!(
            headers[header::WWW_AUTHENTICATE],
            "Bearer realm=\"dialerd\""
        );
        let wrong = format!("Bearer {TOKEN}x");
        let (_, headers, body) =
            send(&shared, &access, OUTSIDE, "GET", "/status", Some(&wrong)).await;
        assert_eq!(
            headers[header::WWW_AUTHENTICATE],
            "Bearer realm=\"dialerd\", error=\"invalid_token\""
        );
        assert_eq!(body["message"], "the bearer token is not valid");
    }

    #[tokio::test]
    async fn without_a_token_reads_are_open_and_writes_loopback_only() {
        let shared = shared();
        let access = Access::default();
        for path in ["/status", "/metrics"] {
            let (status, ..) = send(&shared, &access, OUTSIDE, "GET", path, None).await;
            assert_eq!(status, StatusCode::OK, "{path}");
        }
        for path in ["/drain", "/sip-trace?on=true"] {
            let any = Some("Bearer anything-at-all-12345");
            let (status, _, body) = send(&shared, &access, OUTSIDE, "POST", path, any).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
            assert_eq!(body["error"], "forbidden");
        }
        let (status, ..) = send(&shared, &access, [127, 0, 0, 1], "POST", "/drain", None).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }

    #[tokio::test]
    async fn probes_are_always_open() {
        let shared = shared();
        let access = Access::new(Some(&Secret::new(TOKEN)));
        for path in ["/healthz", "/readyz"] {
            let (status, ..) = send(&shared, &access, OUTSIDE, "GET", path, None).await;
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{path}");
            assert!(status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE);
        }
    }

    #[test]
    fn the_token_never_shows() {
        let access = Access::new(Some(&Secret::new(TOKEN)));
        let shown = format!("{access:?}");
        assert!(!shown.contains(TOKEN), "{shown}");
        assert_eq!(shown, "Access { token: \"set\" }");
        assert_eq!(
            format!("{:?}", Access::default()),
            "Access { token: \"none\" }"
        );
    }

    #[test]
    fn digests_compare_equal_only_when_equal() {
        let a = digest(b"one");
        let mut b = a;
        assert!(same_digest(&a, &b));
        if let Some(last) = b.last_mut() {
            *last ^= 1;
        }
        assert!(!same_digest(&a, &b));
    }
}
