//! The agent's tiny HTTP/1.1 responder, for health checkers, probes and
//! scrapers: one request per connection, its head bounded in size and time,
//! answered and closed. Enough for `GET /path`; no bodies, no keep-alive.

use std::{future::Future, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tracing::warn;

/// Bounds on a request: a checker sends a few headers at once.
const MAX_REQUEST: usize = 4096;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a handler sees of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Without the query string.
    pub path: String,
}

pub struct Response {
    /// e.g. "200 OK".
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: &'static str, body: &impl serde::Serialize) -> Self {
        Self {
            status,
            content_type: "application/json",
            // Serializing plain structs and json! values cannot fail.
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }

    pub fn text(status: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nX-Content-Type-Options: nosniff\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Answers requests; cloned into each connection's task.
pub trait Handler: Clone + Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl Future<Output = Response> + Send;
}

/// A listening socket on `addr` (bound and listening when this returns).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = std::net::TcpListener::bind(addr)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket)
}

/// Accepts connections until the task is aborted, each answered by its own task.
pub async fn serve(socket: TcpListener, handler: impl Handler) {
    loop {
        match socket.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, handler.clone()));
            }
            // Out of file descriptors and the like: pause rather than spin.
            Err(e) => {
                warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads the request head (bounded in size and time) and answers it; a
/// request that never ends is dropped unanswered.
async fn answer(mut stream: TcpStream, handler: impl Handler) {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 512];
        while head.len() < MAX_REQUEST && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    let response = match parse(&head) {
        Some(request) => handler.handle(request).await,
        None => Response::text("400 Bad Request", "bad request\n"),
    };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(&response.into_bytes())).await;
    let _ = stream.shutdown().await;
}

/// The request line of `head`: `METHOD TARGET HTTP/x`.
fn parse(head: &[u8]) -> Option<Request> {
    let line = head.split(|b| *b == b'\r').next()?;
    let mut parts = std::str::from_utf8(line).ok()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/") || parts.next().is_some() {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    Some(Request {
        method: method.to_string(),
        path: path.to_string(),
    })
}

#[cfg(test)]
pub(crate) mod testing {
    //! A client for the listeners' tests.

    use std::net::Ipv4Addr;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    /// A port free on 127.0.0.1 a moment ago.
    pub fn free_port() -> u16 {
        let socket = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        socket.local_addr().unwrap().port()
    }

    /// Sends `request` raw; the whole response.
    pub async fn exchange(port: u16, request: &[u8]) -> String {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        stream.write_all(request).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    /// `GET path`; (status line, body).
    pub async fn get(port: u16, path: &str) -> (String, String) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: node\r\n\r\n");
        let response = exchange(port, request.as_bytes()).await;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head.lines().next().unwrap_or_default().to_string();
        (status, body.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_line_gives_method_and_path() {
        let request = parse(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/metrics");
        assert_eq!(parse(b"GET /\r\n\r\n"), None, "no version");
        assert_eq!(parse(b"\xff\xfe HTTP/1.1\r\n\r\n"), None);
    }
}
