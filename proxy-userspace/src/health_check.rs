//! `healthCheckNodePort` listeners, as kube-proxy serves them: for each
//! Service with `externalTrafficPolicy: Local`, a load balancer asks this
//! node over HTTP whether it has a local endpoint (200) or not (503), and
//! sends traffic only to nodes that answer 200.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use hyper::StatusCode;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use crate::{
    http::{self, Handler, Request, Response},
    plan::HealthCheck,
    source::ServiceName,
};

/// What one listener reports.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Status {
    service: ServiceName,
    local_endpoints: usize,
}

/// One port being served; the task stops when this is dropped.
struct Listener {
    status: watch::Sender<Status>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The listeners for the plan's health checks.
pub struct HealthCheckServer {
    bind: IpAddr,
    listeners: BTreeMap<u16, Listener>,
}

impl HealthCheckServer {
    pub fn new(bind: IpAddr) -> Self {
        Self {
            bind,
            listeners: BTreeMap::new(),
        }
    }

    /// Ports being served now.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.listeners.keys().copied()
    }

    /// Serves exactly `checks`: starts listeners for new ports, stops those
    /// no longer wanted and updates the counts of the rest. A port that
    /// cannot be bound is logged and tried again at the next call. Must run
    /// inside a tokio runtime.
    pub fn update(&mut self, checks: &[HealthCheck]) {
        let wanted: BTreeMap<u16, &HealthCheck> = checks.iter().map(|c| (c.port, c)).collect();
        self.listeners.retain(|port, listener| {
            let keep = wanted.contains_key(port);
            if !keep {
                info!(port, service = %listener.status.borrow().service, "health check stopped");
            }
            keep
        });
        for (port, check) in wanted {
            let status = Status {
                service: check.service.clone(),
                local_endpoints: check.local_endpoints,
            };
            if let Some(listener) = self.listeners.get(&port) {
                listener.status.send_if_modified(|current| {
                    let changed = *current != status;
                    *current = status;
                    changed
                });
                continue;
            }
            // The unspecified address of either family: every address of both.
            let bound = if self.bind.is_unspecified() {
                http::bind_all_families(port)
            } else {
                http::bind(SocketAddr::new(self.bind, port))
            };
            match bound {
                Ok(socket) => {
                    info!(port, service = %status.service, local_endpoints = status.local_endpoints, "health check serving");
                    let (sender, receiver) = watch::channel(status);
                    let task = tokio::spawn(http::serve(socket, Answer(receiver)));
                    self.listeners.insert(
                        port,
                        Listener {
                            status: sender,
                            task,
                        },
                    );
                }
                Err(e) => {
                    warn!(port, service = %status.service, error = %e, "cannot bind health check port; will retry")
                }
            }
        }
    }
}

/// Answers every request with the Service's current status.
#[derive(Clone)]
struct Answer(watch::Receiver<Status>);

impl Handler for Answer {
    async fn handle(&self, _: Request) -> Response {
        // Whatever was asked, the answer is the same, as kube-proxy's.
        let status = self.0.borrow().clone();
        response(&status)
    }
}

/// The HTTP response kube-proxy gives, with its JSON body.
fn response(status: &Status) -> Response {
    let body = serde_json::json!({
        "service": {
            "namespace": &*status.service.namespace,
            "name": &*status.service.name,
        },
        "localEndpoints": status.local_endpoints,
        "serviceProxyHealthy": true,
    });
    let code = if status.local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    http::json(code, &body)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::http::testing::{exchange as get, exchange_at, free_port};

    fn check(port: u16, local_endpoints: usize) -> HealthCheck {
        HealthCheck {
            port,
            service: ServiceName::new("shop", "web"),
            local_endpoints,
        }
    }

    const GET: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n";

    #[tokio::test]
    async fn the_unspecified_address_serves_both_families() {
        let port = free_port();
        let mut server = HealthCheckServer::new(Ipv4Addr::UNSPECIFIED.into());
        server.update(&[check(port, 1)]);
        for addr in [
            IpAddr::from(Ipv4Addr::LOCALHOST),
            Ipv6Addr::LOCALHOST.into(),
        ] {
            let answer = exchange_at(addr, port, GET).await;
            assert!(
                answer.starts_with("HTTP/1.1 200 OK\r\n"),
                "{addr}: {answer}"
            );
        }
    }

    #[tokio::test]
    async fn answers_200_with_local_endpoints_and_503_without() {
        let port = free_port();
        let mut server = HealthCheckServer::new(Ipv4Addr::LOCALHOST.into());
        server.update(&[check(port, 2)]);
        let ok = get(port, GET).await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("\r\nContent-Type: application/json\r\n"),
            "{ok}"
        );
        assert!(
            ok.contains("\r\nX-Content-Type-Options: nosniff\r\n"),
            "{ok}"
        );
        let body = ok.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"service": {"namespace": "shop", "name": "web"}, "localEndpoints": 2, "serviceProxyHealthy": true})
        );
        server.update(&[check(port, 0)]);
        let unavailable = get(port, GET).await;
        assert!(
            unavailable.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{unavailable}"
        );
        assert!(
            unavailable.contains("\"localEndpoints\":0"),
            "{unavailable}"
        );
    }

    #[tokio::test]
    async fn listeners_follow_the_plan_and_a_busy_port_is_retried() {
        let busy = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = busy.local_addr().unwrap().port();
        let mut server = HealthCheckServer::new(Ipv4Addr::LOCALHOST.into());
        server.update(&[check(port, 1)]);
        assert_eq!(server.ports().count(), 0, "the port is taken");
        drop(busy);
        server.update(&[check(port, 1)]);
        assert_eq!(server.ports().collect::<Vec<_>>(), [port]);
        server.update(&[]);
        assert_eq!(server.ports().count(), 0);
        // The aborted listener closes its socket once the runtime drops it.
        let mut rebound = false;
        for _ in 0..100 {
            tokio::task::yield_now().await;
            rebound = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
            if rebound {
                break;
            }
        }
        assert!(rebound, "the port is released");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_never_ends_is_dropped_unanswered() {
        let port = free_port();
        let mut server = HealthCheckServer::new(Ipv4Addr::LOCALHOST.into());
        server.update(&[check(port, 1)]);
        // No end of headers: the answer never comes; the timeout closes it.
        let response = get(port, b"GET / HTTP/1.1\r\nHost: node\r\n").await;
        assert_eq!(response, "");
    }
}
