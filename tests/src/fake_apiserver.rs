//! A stand-in for the Kubernetes API server, just enough for
//! `kxdp agent --kubeconfig`: it answers the list requests for Services and
//! EndpointSlices with fixed objects, in pages when asked to (`limit`,
//! `continue`, as the API server pages), and holds watch requests open
//! without events until [`FakeApiServer::expire_watches`] ends them with
//! 410 Gone, over plain HTTP on 127.0.0.1 inside a network namespace (where
//! the agent runs). Every request line is recorded for assertions.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

/// How long a watch is held open at most; the tests end well before.
const WATCH_HOLD: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(20);

pub struct FakeApiServer {
    kubeconfig: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the server answers, and what its connections watch for.
struct Shared {
    /// Each object's JSON, written once: a page is then a copy, as the API
    /// server's watch cache serves it, not a serialization.
    services: Vec<String>,
    slices: Vec<String>,
    stop: AtomicBool,
    /// Bumped by `expire_watches`: watches opened before end with 410 Gone.
    expired: AtomicU64,
}

impl FakeApiServer {
    /// Serves `services` and `slices` on a loopback port of `netns` (of the
    /// caller's namespace with `None`).
    pub fn start(
        netns: Option<&str>,
        services: Vec<Value>,
        slices: Vec<Value>,
    ) -> anyhow::Result<Self> {
        let listener = match netns {
            Some(netns) => listen_in(netns)?,
            None => TcpListener::bind("127.0.0.1:0")?,
        };
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let kubeconfig = std::env::temp_dir().join(format!(
            "kxdp-fake-apiserver-{}-{port}.yaml",
            std::process::id()
        ));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
                 clusters: [{{name: fake, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n\
                 users: [{{name: fake, user: {{}}}}]\n\
                 contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: default}}}}]\n"
            ),
        )?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            services: services.iter().map(Value::to_string).collect(),
            slices: slices.iter().map(Value::to_string).collect(),
            stop: AtomicBool::new(false),
            expired: AtomicU64::new(0),
        });
        let thread = {
            let (requests, shared) = (Arc::clone(&requests), Arc::clone(&shared));
            std::thread::spawn(move || accept_loop(listener, &shared, &requests))
        };
        Ok(Self {
            kubeconfig,
            requests,
            shared,
            thread: Some(thread),
        })
    }

    /// Ends every open watch with 410 Gone, as the API server does when the
    /// version a watch resumes from was compacted: the client lists again.
    pub fn expire_watches(&self) {
        self.shared.expired.fetch_add(1, Ordering::Relaxed);
    }

    pub fn kubeconfig(&self) -> &PathBuf {
        &self.kubeconfig
    }

    /// Request lines (`GET /path?query HTTP/1.1`) seen so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests lock").clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// A listener on 127.0.0.1 inside `netns`: bound from a short-lived thread
/// that enters the namespace, so the test process stays where it is.
fn listen_in(netns: &str) -> anyhow::Result<TcpListener> {
    let path = format!("/var/run/netns/{netns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
                // SAFETY: setns on this thread only; the fd is valid while `ns` lives.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns {path}: {}", std::io::Error::last_os_error());
                }
                Ok(TcpListener::bind("127.0.0.1:0")?)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("listener thread panicked"))?
    })
}

fn accept_loop(listener: TcpListener, shared: &Arc<Shared>, requests: &Arc<Mutex<Vec<String>>>) {
    let mut connections = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (shared, requests) = (Arc::clone(shared), Arc::clone(requests));
                connections.push(std::thread::spawn(move || {
                    let _ = answer(stream, &shared, &requests);
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait_for_connection(&listener),
            Err(_) => break,
        }
    }
    for connection in connections {
        let _ = connection.join();
    }
}

/// Returns when a connection is waiting or `POLL` has passed (to look at
/// `stop` again): a client's request is taken at once, as the API server
/// takes it, not after a sleep (a list in 60 pages waited up to 20 ms a page).
fn wait_for_connection(listener: &TcpListener) {
    let mut waiting = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call. An error or
    // a timeout only sends the caller round its loop again.
    unsafe { libc::poll(&mut waiting, 1, POLL.as_millis() as libc::c_int) };
}

/// Answers one request on `stream`, then closes it.
fn answer(
    stream: TcpStream,
    shared: &Shared,
    requests: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers: every request is a bodiless GET.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let request_line = request_line.trim().to_string();
    requests
        .lock()
        .expect("requests lock")
        .push(request_line.clone());
    let target = request_line.split_whitespace().nth(1).unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let items = match path {
        "/api/v1/services" => Some(("ServiceList", "v1", &shared.services)),
        "/apis/discovery.k8s.io/v1/endpointslices" => {
            Some(("EndpointSliceList", "discovery.k8s.io/v1", &shared.slices))
        }
        _ => None,
    };
    let mut stream = stream;
    let Some((kind, api_version, items)) = items else {
        let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":404}"#;
        return respond(&mut stream, 404, body);
    };
    let param = |key: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(key)?.strip_prefix('='))
    };
    if param("watch") == Some("true") {
        // An open watch with no events: the agent keeps what it listed.
        stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        )?;
        let expired = shared.expired.load(Ordering::Relaxed);
        let until = Instant::now() + WATCH_HOLD;
        while !shared.stop.load(Ordering::Relaxed) && Instant::now() < until {
            if shared.expired.load(Ordering::Relaxed) != expired {
                let gone = json!({"type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "too old resource version", "reason": "Expired", "code": 410,
                }});
                let line = format!("{gone}\n");
                write!(stream, "{:x}\r\n{line}\r\n", line.len())?;
                break;
            }
            std::thread::sleep(POLL);
        }
        return stream.write_all(b"0\r\n\r\n");
    }
    // Pages as the API server pages: `limit` items from the offset the
    // `continue` token names.
    let from: usize = param("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
    let limit = param("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let to = from.saturating_add(limit).min(items.len());
    let mut metadata = json!({"resourceVersion": "1"});
    if to < items.len() {
        metadata["continue"] = to.to_string().into();
    }
    let head = json!({"kind": kind, "apiVersion": api_version, "metadata": metadata}).to_string();
    let page = &items[from.min(to)..to];
    let mut list =
        String::with_capacity(head.len() + 12 + page.iter().map(|i| i.len() + 1).sum::<usize>());
    // The head's closing brace gives way to the items.
    list.push_str(&head[..head.len() - 1]);
    list.push_str(",\"items\":[");
    for (n, item) in page.iter().enumerate() {
        if n > 0 {
            list.push(',');
        }
        list.push_str(item);
    }
    list.push_str("]}");
    respond(&mut stream, 200, &list)
}

fn respond(stream: &mut TcpStream, code: u16, body: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        if code == 200 { "OK" } else { "Not Found" },
        body.len()
    )
}
