//! The ops HTTP server: `/healthz`, `/readyz`, `/status`, `/metrics`,
//! `POST /drain`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

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
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            count_requests,
        ))
        .with_state(shared)
}

/// Serves the router on `listener` until `stop` completes, then finishes
/// in-flight requests.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(shared).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
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

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.snapshot()).into_response()
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
