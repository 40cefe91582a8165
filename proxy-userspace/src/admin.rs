//! The agent's admin endpoints, as kube-proxy serves them: `/healthz` and
//! `/readyz` on `--health-addr`, `/metrics` on `--metrics-addr`. They listen
//! from the agent's start, before the first sync, so readiness can say no.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use hyper::StatusCode;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::http::{self, Handler, Request, Response};

/// Syncs failing for longer than this make `/healthz` answer 503 (the
/// DaemonSet's liveness probe then restarts the agent).
pub const UNHEALTHY_AFTER: Duration = Duration::from_secs(60);
/// The agent's loop passing no more for this long (it passes at least every
/// `--rescan-ms`; a full sync of 30,000 Services takes seconds) makes
/// `/healthz` answer 503 too: the loop is stuck.
pub const STALLED_AFTER: Duration = Duration::from_secs(120);
/// A port that cannot be bound (kube-proxy still holding it) is tried again
/// this often, as kube-proxy does.
const BIND_RETRY: Duration = Duration::from_secs(5);
/// Longest a scrape waits for the agent's loop, which may be in a long sync.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes waiting at once; more are refused (503) rather than queued.
const SCRAPES_QUEUED: usize = 4;

/// What the agent tells the health endpoints.
#[derive(Debug, Default)]
struct SyncHealth {
    /// Programs attached and the first full sync applied.
    ready: bool,
    last_success: Option<SystemTime>,
    /// When the current run of failed syncs began (monotonic: a clock step
    /// must not flip health).
    failing_since: Option<Instant>,
    /// When the agent's loop last went round; `None` before it starts.
    last_pass: Option<Instant>,
}

impl SyncHealth {
    fn healthy(&self, now: Instant) -> bool {
        let within = |since: Instant, limit| now.saturating_duration_since(since) <= limit;
        self.failing_since
            .is_none_or(|since| within(since, UNHEALTHY_AFTER))
            && self.last_pass.is_none_or(|at| within(at, STALLED_AFTER))
    }
}

/// The body of `/healthz` and `/readyz`: kube-proxy's fields (RFC 3339
/// times), plus the agent's view; `kxdp status` reads it.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    /// The last successful sync; null before the first.
    pub last_updated: Option<String>,
    pub current_time: String,
    pub ready: bool,
    pub healthy: bool,
    pub version: String,
}

fn rfc3339(time: SystemTime) -> String {
    jiff::Timestamp::try_from(time).map_or_else(|_| String::new(), |t| t.to_string())
}

/// Shared between the agent's loop (writer) and the health listener.
#[derive(Clone, Debug, Default)]
pub struct HealthState(Arc<Mutex<SyncHealth>>);

impl HealthState {
    fn with<T>(&self, f: impl FnOnce(&mut SyncHealth) -> T) -> T {
        // A panic while holding this lock cannot leave it half-written.
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    /// Programs attached and the first full sync applied.
    pub fn set_ready(&self) {
        self.with(|h| h.ready = true);
    }

    /// The agent's loop went round at `now`.
    pub fn record_pass(&self, now: Instant) {
        self.with(|h| h.last_pass = Some(now));
    }

    /// After a sync: `failed` when it left entries unwritten.
    pub fn record_sync(&self, failed: bool, last_success: Option<SystemTime>, now: Instant) {
        self.with(|h| {
            h.last_success = last_success;
            h.failing_since = match (failed, h.failing_since) {
                (false, _) => None,
                (true, None) => Some(now),
                (true, since) => since,
            };
        });
    }

    /// The report at wall-clock `wall`, monotonic `now`.
    pub fn report(&self, wall: SystemTime, now: Instant) -> HealthReport {
        self.with(|h| {
            let healthy = h.healthy(now);
            HealthReport {
                last_updated: h.last_success.map(rfc3339),
                current_time: rfc3339(wall),
                ready: h.ready && healthy,
                healthy,
                version: env!("CARGO_PKG_VERSION").to_string(),
            }
        })
    }
}

#[derive(Clone)]
struct HealthEndpoints(HealthState);

impl Handler for HealthEndpoints {
    async fn handle(&self, request: Request) -> Response {
        let report = self.0.report(SystemTime::now(), Instant::now());
        let ok = match request.uri().path() {
            "/healthz" => report.healthy,
            "/readyz" => report.ready,
            _ => return http::text(StatusCode::NOT_FOUND, "try /healthz or /readyz\n"),
        };
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        http::json(status, &report)
    }
}

/// A scrape waiting for the agent's loop to render the metrics.
pub type Scrape = oneshot::Sender<String>;

#[derive(Clone)]
struct MetricsEndpoint(mpsc::Sender<Scrape>);

impl Handler for MetricsEndpoint {
    async fn handle(&self, request: Request) -> Response {
        if request.uri().path() != "/metrics" {
            return http::text(StatusCode::NOT_FOUND, "try /metrics\n");
        }
        let (reply, rendered) = oneshot::channel();
        if self.0.try_send(reply).is_err() {
            return http::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many scrapes at once\n",
            );
        }
        match tokio::time::timeout(SCRAPE_TIMEOUT, rendered).await {
            Ok(Ok(text)) => http::response(
                StatusCode::OK,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                text,
            ),
            _ => http::text(StatusCode::SERVICE_UNAVAILABLE, "the agent is busy\n"),
        }
    }
}

/// Both listeners; dropping this closes them.
pub struct AdminServer {
    tasks: Vec<JoinHandle<()>>,
}

impl AdminServer {
    /// Starts listening on both addresses now (a busy port is logged and
    /// retried); metrics requests arrive on the returned receiver, for the
    /// agent's loop to answer. Must run inside a tokio runtime.
    pub fn start(
        health_addr: SocketAddr,
        metrics_addr: SocketAddr,
        health: HealthState,
    ) -> (Self, mpsc::Receiver<Scrape>) {
        let (scrapes, requests) = mpsc::channel(SCRAPES_QUEUED);
        let tasks = vec![
            listen(health_addr, "/healthz, /readyz", HealthEndpoints(health)),
            listen(metrics_addr, "/metrics", MetricsEndpoint(scrapes)),
        ];
        (Self { tasks }, requests)
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Binds `addr` at once (so the port is open when this returns) and serves
/// it, retrying the bind in the background when the port is busy.
fn listen(addr: SocketAddr, what: &'static str, handler: impl Handler) -> JoinHandle<()> {
    let mut bound = http::bind(addr);
    tokio::spawn(async move {
        loop {
            match bound {
                Ok(socket) => {
                    let local = socket.local_addr().unwrap_or(addr);
                    info!(addr = %local, endpoints = what, "listening");
                    return http::serve(socket, handler).await;
                }
                Err(e) => {
                    warn!(addr = %addr, endpoints = what, error = %e, "cannot listen; will retry");
                    tokio::time::sleep(BIND_RETRY).await;
                    bound = http::bind(addr);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::http::testing::{free_port, get};

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    /// Wall-clock and monotonic time `secs` into a test.
    fn times(start: Instant) -> impl Fn(u64) -> (SystemTime, Instant) {
        move |secs| (at(secs), start + Duration::from_secs(secs))
    }

    #[test]
    fn ready_after_the_first_sync_and_unhealthy_after_a_minute_of_failures() {
        let t = times(Instant::now());
        let health = HealthState::default();
        let report = health.report(t(0).0, t(0).1);
        assert!(!report.ready && report.healthy);
        assert_eq!(report.last_updated, None);
        assert_eq!(report.current_time, "2023-11-14T22:13:20Z");
        health.record_sync(false, Some(at(1)), t(1).1);
        health.set_ready();
        assert!(health.report(t(2).0, t(2).1).ready);
        // Failing from t=10 on: healthy for a minute, then not, and not ready.
        health.record_sync(true, Some(at(1)), t(10).1);
        health.record_sync(true, Some(at(1)), t(40).1);
        assert!(health.report(t(70).0, t(70).1).healthy, "60 s exactly");
        let report = health.report(t(71).0, t(71).1);
        assert!(!report.healthy && !report.ready);
        assert_eq!(
            report.last_updated.as_deref(),
            Some("2023-11-14T22:13:21Z"),
            "the last success is kept"
        );
        health.record_sync(false, Some(at(72)), t(72).1);
        let report = health.report(t(73).0, t(73).1);
        assert!(report.healthy && report.ready);
    }

    #[test]
    fn a_loop_that_stops_going_round_is_unhealthy() {
        let t = times(Instant::now());
        let health = HealthState::default();
        health.set_ready();
        health.record_pass(t(0).1);
        assert!(health.report(t(120).0, t(120).1).healthy);
        let report = health.report(t(121).0, t(121).1);
        assert!(
            !report.healthy && !report.ready,
            "stuck for over two minutes"
        );
        health.record_pass(t(122).1);
        assert!(health.report(t(122).0, t(122).1).healthy);
    }

    #[tokio::test]
    async fn endpoints_answer_with_the_state_and_json_bodies() {
        let health_port = free_port();
        // Two free ports, never the same one twice.
        let metrics_port = std::iter::repeat_with(free_port)
            .find(|p| *p != health_port)
            .unwrap();
        let health = HealthState::default();
        let (server, mut scrapes) = AdminServer::start(
            (Ipv4Addr::LOCALHOST, health_port).into(),
            (Ipv4Addr::LOCALHOST, metrics_port).into(),
            health.clone(),
        );
        let (status, body) = get(health_port, "/readyz").await;
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
        let report: HealthReport = serde_json::from_str(&body).unwrap();
        assert!(!report.ready && report.healthy);
        assert_eq!(report.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(get(health_port, "/healthz").await.0, "HTTP/1.1 200 OK");
        health.set_ready();
        assert_eq!(get(health_port, "/readyz").await.0, "HTTP/1.1 200 OK");
        assert_eq!(get(health_port, "/nope").await.0, "HTTP/1.1 404 Not Found");

        // The loop's side of a scrape.
        tokio::spawn(async move {
            while let Some(reply) = scrapes.recv().await {
                let _ = reply.send("kxdp_syncs_total 1\n".to_string());
            }
        });
        let (status, body) = get(metrics_port, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, "kxdp_syncs_total 1\n");
        drop(server);
    }
}
