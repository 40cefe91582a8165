//! `healthCheckNodePort` listeners, as kube-proxy serves them: for each
//! Service with `externalTrafficPolicy: Local`, a load balancer asks this
//! node over HTTP whether it has a local endpoint (200) or not (503), and
//! sends traffic only to nodes that answer 200.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{plan::HealthCheck, source::ServiceName};

/// Bounds on a request: a health checker sends a few headers at once.
const MAX_REQUEST: usize = 4096;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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
            match bind(SocketAddr::new(self.bind, port)) {
                Ok(socket) => {
                    info!(port, service = %status.service, local_endpoints = status.local_endpoints, "health check serving");
                    let (sender, receiver) = watch::channel(status);
                    let task = tokio::spawn(serve(socket, receiver));
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

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = std::net::TcpListener::bind(addr)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket)
}

async fn serve(socket: TcpListener, status: watch::Receiver<Status>) {
    loop {
        match socket.accept().await {
            Ok((stream, _)) => {
                let status = status.borrow().clone();
                tokio::spawn(answer(stream, status));
            }
            // Out of file descriptors and the like: pause rather than spin.
            Err(e) => {
                warn!(error = %e, "health check accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads the request head (bounded in size and time) and answers it.
async fn answer(mut stream: TcpStream, status: Status) {
    let mut request = Vec::with_capacity(512);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 512];
        while request.len() < MAX_REQUEST && !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    // Whatever was asked, the answer is the same, as kube-proxy's.
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(&response(&status))).await;
    let _ = stream.shutdown().await;
}

/// The HTTP response kube-proxy gives, with its JSON body.
fn response(status: &Status) -> Vec<u8> {
    let body = serde_json::json!({
        "service": {
            "namespace": status.service.namespace,
            "name": status.service.name,
        },
        "localEndpoints": status.local_endpoints,
        "serviceProxyHealthy": true,
    })
    .to_string();
    let code = if status.local_endpoints > 0 {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    format!(
        "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn check(port: u16, local_endpoints: usize) -> HealthCheck {
        HealthCheck {
            port,
            service: ServiceName::new("shop", "web"),
            local_endpoints,
        }
    }

    /// A port free on 127.0.0.1 a moment ago.
    fn free_port() -> u16 {
        let socket = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        socket.local_addr().unwrap().port()
    }

    async fn get(port: u16, request: &[u8]) -> String {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        stream.write_all(request).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    const GET: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n";

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
