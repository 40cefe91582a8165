//! The agent's HTTP listeners' shared server, on hyper: for health
//! checkers, probes and scrapers. HTTP/1 only, one request per connection
//! (answered with `Connection: close`), its head bounded in size and time.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use hyper::{
    header::{HeaderValue, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS},
    server::conn::http1,
    service::service_fn,
    StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::warn;

/// Bounds on a request's head: a checker sends a few headers at once. A
/// bigger head is answered 431, a slower one dropped unanswered.
const MAX_REQUEST: usize = 4096;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection lives: its head, the handler (a scrape waits up to
/// 10 s for the agent's loop) and writing the answer to a slow reader.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

pub type Request = hyper::Request<hyper::body::Incoming>;
pub type Response = hyper::Response<String>;

/// A response with `body` of type `content_type`.
pub fn response(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// `body` as JSON.
pub fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    // Serializing plain structs and json! values cannot fail.
    let body = serde_json::to_string(body).unwrap_or_default();
    response(status, "application/json", body)
}

pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
    response(status, "text/plain; charset=utf-8", body.into())
}

/// Answers requests; cloned into each connection's task.
pub trait Handler: Clone + Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl Future<Output = Response> + Send;
}

/// A listening socket on `addr` (bound and listening when this returns).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = std::net::TcpListener::bind(addr)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket)
}

/// A listening socket on `port` of every address of both families: one
/// IPv6 socket that takes IPv4 too (IPV6_V6ONLY off, whatever the host's
/// `bindv6only` says), as Go's `:port` listens for kube-proxy; IPv4 alone
/// where the host has no IPv6.
pub fn bind_all_families(port: u16) -> io::Result<TcpListener> {
    match bind_dual_stack(port) {
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))
        }
        other => other,
    }
}

fn bind_dual_stack(port: u16) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port).into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Accepts connections until the task is aborted, each answered by its own task.
pub async fn serve(socket: TcpListener, handler: impl Handler) {
    let mut http = http1::Builder::new();
    http.keep_alive(false)
        // Header names as they were written before hyper: `Content-Type`.
        .title_case_headers(true)
        .max_header_size(MAX_REQUEST)
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT);
    loop {
        match socket.accept().await {
            Ok((stream, _)) => {
                let handler = handler.clone();
                let service = service_fn(move |request| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler.handle(request).await) }
                });
                let connection = http.serve_connection(TokioIo::new(stream), service);
                // Errors are the client's (it left, or sent no valid head in
                // time) and hyper has answered what can be answered.
                tokio::spawn(tokio::time::timeout(CONNECTION_TIMEOUT, connection));
            }
            // Out of file descriptors and the like: pause rather than spin.
            Err(e) => {
                warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
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
        exchange_at(Ipv4Addr::LOCALHOST.into(), port, request).await
    }

    /// [`exchange`] with a listener on `addr`.
    pub async fn exchange_at(addr: std::net::IpAddr, port: u16, request: &[u8]) -> String {
        let mut stream = TcpStream::connect((addr, port)).await.unwrap();
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
    use std::net::Ipv4Addr;

    use super::{testing::*, *};

    /// Answers with the method and path it was asked.
    #[derive(Clone)]
    struct Echo;

    impl Handler for Echo {
        async fn handle(&self, request: Request) -> Response {
            let asked = format!("{} {}", request.method(), request.uri().path());
            text(StatusCode::OK, asked)
        }
    }

    #[tokio::test]
    async fn the_request_line_gives_method_and_path() {
        let port = free_port();
        let socket = bind((Ipv4Addr::LOCALHOST, port).into()).unwrap();
        let server = tokio::spawn(serve(socket, Echo));
        let answer = exchange(port, b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
        assert!(
            answer.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n"),
            "{answer}"
        );
        assert!(answer.ends_with("\r\n\r\nGET /metrics"), "{answer}");
        let answer = exchange(port, b"GET /\r\n\r\n").await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "no version: {answer}"
        );
        let answer = exchange(port, b"\xff\xfe HTTP/1.1\r\n\r\n").await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_head_too_big_is_refused() {
        let port = free_port();
        let socket = bind((Ipv4Addr::LOCALHOST, port).into()).unwrap();
        let server = tokio::spawn(serve(socket, Echo));
        let request = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n",
            "x".repeat(MAX_REQUEST)
        );
        let answer = exchange(port, request.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{answer}"
        );
        server.abort();
    }
}
