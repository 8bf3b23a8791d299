//! The metrics and health server of `orrery controller`: `/metrics` (OpenMetrics text),
//! `/healthz` (liveness) and `/readyz` (readiness: the apiserver was reached).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use kube::Client;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tracing::{info, warn};

/// Liveness and readiness of the process, as `/healthz` and `/readyz` report them.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    failed: AtomicBool,
}

impl Health {
    /// The kube client has reached the apiserver.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// A controller task, or leadership, was lost: the process is no longer live.
    pub fn set_failed(&self) {
        self.failed.store(true, Ordering::Release);
    }

    pub fn is_live(&self) -> bool {
        !self.failed.load(Ordering::Acquire)
    }
}

/// Sets `health` ready once the apiserver answered; tries every 2 s until then.
pub async fn probe_apiserver(client: Client, health: Arc<Health>) {
    loop {
        match timeout(Duration::from_secs(10), client.apiserver_version()).await {
            Ok(Ok(info)) => {
                info!(version = %info.git_version, "reached the apiserver");
                health.set_ready();
                return;
            }
            Ok(Err(e)) => warn!(error = %e, "cannot reach the apiserver yet"),
            Err(_) => warn!("cannot reach the apiserver yet: timed out"),
        }
        sleep(Duration::from_secs(2)).await;
    }
}

#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

/// The routes of the metrics and health server: `/metrics`, `/healthz`, `/readyz`.
pub fn router(registry: Arc<Registry>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(serve_healthz))
        .route("/readyz", get(serve_readyz))
        .with_state(HttpState { registry, health })
}

async fn serve_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::encode(&state.registry),
    )
}

async fn serve_healthz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.health.is_live() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "controllers stopped\n")
    }
}

async fn serve_readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.health.is_ready() && state.health.is_live() {
        (StatusCode::OK, "ok\n")
    } else if !state.health.is_live() {
        (StatusCode::SERVICE_UNAVAILABLE, "controllers stopped\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "apiserver not reached yet\n",
        )
    }
}

/// The metrics and health server, running until stopped.
pub struct HttpServer {
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    /// Serves `router` on `listener` in a task.
    pub fn spawn(listener: tokio::net::TcpListener, router: Router) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .into_future(),
        );
        Self { stop, task }
    }

    /// Stops accepting connections and waits (at most 5 s) for the open ones to finish.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        match timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "metrics server failed"),
            Ok(Err(e)) => warn!(error = %e, "metrics server task failed"),
            Err(_) => warn!("metrics server did not stop in time"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_owned(), body.to_owned())
    }

    #[tokio::test]
    async fn http_serves_metrics_health_and_readiness() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let health = Arc::new(Health::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = HttpServer::spawn(listener, router(Arc::new(registry), health.clone()));

        drop(metrics.reconcile_started("tenantcontrolplane"));
        let (status, head, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        assert!(
            body.contains("orrery_reconcile_total{controller=\"tenantcontrolplane\"} 1"),
            "{body}"
        );

        assert_eq!(http_get(addr, "/healthz").await.0, 200);
        assert_eq!(
            http_get(addr, "/readyz").await.0,
            503,
            "not ready before the apiserver was reached"
        );
        health.set_ready();
        assert_eq!(http_get(addr, "/readyz").await.0, 200);
        health.set_failed();
        assert_eq!(http_get(addr, "/healthz").await.0, 503);
        assert_eq!(http_get(addr, "/readyz").await.0, 503);
        assert_eq!(http_get(addr, "/nope").await.0, 404);

        timeout(Duration::from_secs(5), server.stop())
            .await
            .unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "still listening after stop"
        );
    }
}
