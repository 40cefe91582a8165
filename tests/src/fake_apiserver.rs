//! A stand-in for the Kubernetes API server, just enough for
//! `kxdp agent --kubeconfig`, over plain HTTP on 127.0.0.1 inside a network
//! namespace (where the agent runs):
//! - lists of Services and EndpointSlices, in pages when asked to
//!   (`limit`, `continue`), each list a snapshot at one resource version as
//!   the API server's pages are;
//! - watches from a resource version: the changes since then
//!   ([`FakeApiServer::apply`], [`FakeApiServer::delete`]), then each
//!   change as it happens, or 410 Gone when that version is older than the
//!   history kept ([`FakeApiServer::expire_watches`] ends every open watch
//!   that way);
//! - outages: [`FakeApiServer::stop`] closes the port and cuts every open
//!   connection, [`FakeApiServer::restart`] serves again on the same port
//!   without the watch history, as a restarted API server comes back with
//!   a fresh watch cache (its clients list again). The objects change on
//!   while it is down, as they would through another API server.
//!
//! Every request line is recorded for assertions.

use std::{
    collections::{BTreeMap, VecDeque},
    fs::File,
    io::{BufRead, BufReader, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

/// How long a watch is held open at most; the client then watches again.
const WATCH_HOLD: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(20);
/// Changes kept for watches to resume from; older versions get 410 Gone.
const HISTORY: usize = 200_000;
/// Lists whose pages can still be continued.
const LIST_SNAPSHOTS: usize = 8;

pub struct FakeApiServer {
    kubeconfig: PathBuf,
    netns: Option<String>,
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    shared: Arc<Shared>,
    /// The accept loop while the server is up.
    serving: Mutex<Option<Serving>>,
}

struct Serving {
    /// Set to take the server down: the loop and its connections end.
    down: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// What the server holds, shared by its connections.
struct Shared {
    store: Mutex<Store>,
    /// Notified on every change, for the open watches.
    changed: Condvar,
    /// Bumped by `expire_watches`: watches opened before end with 410 Gone.
    expired: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Resource {
    Services,
    Slices,
}

impl Resource {
    fn of_kind(kind: &str) -> anyhow::Result<Self> {
        match kind {
            "Service" => Ok(Self::Services),
            "EndpointSlice" => Ok(Self::Slices),
            _ => bail!("the fake API server holds Services and EndpointSlices, not {kind:?}"),
        }
    }
}

struct Store {
    /// The last resource version given out.
    version: u64,
    /// Each object's JSON by namespace/name, written once per change: a
    /// page is then a copy, as the API server's watch cache serves it.
    services: BTreeMap<String, Arc<str>>,
    slices: BTreeMap<String, Arc<str>>,
    /// Changes after version `history_from`, oldest first.
    history: VecDeque<Change>,
    history_from: u64,
    lists: VecDeque<ListSnapshot>,
    next_list: u64,
}

struct Change {
    version: u64,
    resource: Resource,
    /// The watch event's line.
    line: Arc<str>,
}

struct ListSnapshot {
    id: u64,
    version: u64,
    items: Arc<[Arc<str>]>,
}

impl Store {
    fn objects(&mut self, resource: Resource) -> &mut BTreeMap<String, Arc<str>> {
        match resource {
            Resource::Services => &mut self.services,
            Resource::Slices => &mut self.slices,
        }
    }

    /// Stores `object` at the next version and records the change.
    fn apply(&mut self, mut object: Value) -> anyhow::Result<()> {
        let resource = Resource::of_kind(object["kind"].as_str().unwrap_or_default())?;
        let key = object_key(&object)?;
        self.version += 1;
        object["metadata"]["resourceVersion"] = self.version.to_string().into();
        let text: Arc<str> = object.to_string().into();
        let kind = match self.objects(resource).insert(key, Arc::clone(&text)) {
            Some(_) => "MODIFIED",
            None => "ADDED",
        };
        self.record(resource, kind, &text);
        Ok(())
    }

    /// Removes an object, if there, recording its deletion.
    fn delete(&mut self, resource: Resource, key: &str) -> anyhow::Result<bool> {
        let Some(text) = self.objects(resource).remove(key) else {
            return Ok(false);
        };
        self.version += 1;
        let mut object: Value = serde_json::from_str(&text)?;
        object["metadata"]["resourceVersion"] = self.version.to_string().into();
        self.record(resource, "DELETED", &object.to_string());
        Ok(true)
    }

    fn record(&mut self, resource: Resource, kind: &str, object: &str) {
        if self.history.len() == HISTORY {
            if let Some(oldest) = self.history.pop_front() {
                self.history_from = oldest.version;
            }
        }
        self.history.push_back(Change {
            version: self.version,
            resource,
            line: format!("{{\"type\":\"{kind}\",\"object\":{object}}}\n").into(),
        });
    }

    /// Forgets every change so far: watches from before now get 410 Gone.
    fn forget_history(&mut self) {
        self.history.clear();
        self.history_from = self.version;
    }

    /// The lines of `resource`'s changes after version `after`, and the
    /// version they reach; `None` if changes after `after` are forgotten.
    fn changes_after(&self, resource: Resource, after: u64) -> Option<(Vec<Arc<str>>, u64)> {
        if after < self.history_from {
            return None;
        }
        let first = self.history.partition_point(|c| c.version <= after);
        let lines = self
            .history
            .range(first..)
            .filter(|c| c.resource == resource)
            .map(|c| Arc::clone(&c.line))
            .collect();
        Some((lines, self.version.max(after)))
    }

    /// A new list of `resource` at the current version.
    fn snapshot(&mut self, resource: Resource) -> (u64, u64, Arc<[Arc<str>]>) {
        let items: Arc<[Arc<str>]> = self.objects(resource).values().cloned().collect();
        let id = self.next_list;
        self.next_list += 1;
        if self.lists.len() == LIST_SNAPSHOTS {
            self.lists.pop_front();
        }
        self.lists.push_back(ListSnapshot {
            id,
            version: self.version,
            items: Arc::clone(&items),
        });
        (id, self.version, items)
    }

    fn continued(&self, id: u64) -> Option<(u64, Arc<[Arc<str>]>)> {
        self.lists
            .iter()
            .find(|l| l.id == id)
            .map(|l| (l.version, Arc::clone(&l.items)))
    }
}

/// `namespace/name` of an object.
fn object_key(object: &Value) -> anyhow::Result<String> {
    let metadata = &object["metadata"];
    let name = metadata["name"]
        .as_str()
        .context("an object without a name")?;
    let namespace = metadata["namespace"].as_str().unwrap_or("default");
    Ok(format!("{namespace}/{name}"))
}

impl FakeApiServer {
    /// Serves `services` and `slices` on a loopback port of `netns` (of the
    /// caller's namespace with `None`).
    pub fn start(
        netns: Option<&str>,
        services: Vec<Value>,
        slices: Vec<Value>,
    ) -> anyhow::Result<Self> {
        let listener = listen(netns, 0)?;
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
        let mut store = Store {
            version: 1,
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            history: VecDeque::new(),
            history_from: 1,
            lists: VecDeque::new(),
            next_list: 0,
        };
        // The first objects all come at version 1, as from one list.
        for (resource, objects) in [(Resource::Services, services), (Resource::Slices, slices)] {
            for mut object in objects {
                object["metadata"]["resourceVersion"] = "1".into();
                let key = object_key(&object)?;
                store
                    .objects(resource)
                    .insert(key, object.to_string().into());
            }
        }
        let server = Self {
            kubeconfig,
            netns: netns.map(str::to_string),
            port,
            requests: Arc::new(Mutex::new(Vec::new())),
            shared: Arc::new(Shared {
                store: Mutex::new(store),
                changed: Condvar::new(),
                expired: AtomicU64::new(0),
            }),
            serving: Mutex::new(None),
        };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&self, listener: TcpListener) {
        let down = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, shared, down) = (
                Arc::clone(&self.requests),
                Arc::clone(&self.shared),
                Arc::clone(&down),
            );
            std::thread::spawn(move || accept_loop(listener, &shared, &requests, &down))
        };
        *self.serving.lock().expect("serving lock") = Some(Serving { down, thread });
    }

    /// Creates or replaces `object` (a Service or an EndpointSlice) at the
    /// next resource version; open watches see it at once.
    pub fn apply(&self, object: Value) -> anyhow::Result<()> {
        self.store().apply(object)?;
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Deletes the object of `kind` ("Service", "EndpointSlice") named
    /// `namespace/name`; whether it was there.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> anyhow::Result<bool> {
        let deleted = self
            .store()
            .delete(Resource::of_kind(kind)?, &format!("{namespace}/{name}"))?;
        self.shared.changed.notify_all();
        Ok(deleted)
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.shared.store.lock().expect("store lock")
    }

    /// Takes the server down: its port refuses connections and every open
    /// one is cut, watches included. The objects can still change.
    pub fn stop(&self) {
        let serving = self.serving.lock().expect("serving lock").take();
        if let Some(serving) = serving {
            serving.down.store(true, Ordering::Relaxed);
            self.shared.changed.notify_all();
            let _ = serving.thread.join();
        }
    }

    /// Serves again on the same port, with the objects as they are now and
    /// no watch history: a watch resuming from before gets 410 Gone.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        self.store().forget_history();
        let listener = listen(self.netns.as_deref(), self.port)?;
        self.serve(listener);
        Ok(())
    }

    /// Ends every open watch with 410 Gone, as the API server does when the
    /// version a watch resumes from was compacted: the client lists again.
    pub fn expire_watches(&self) {
        self.shared.expired.fetch_add(1, Ordering::Relaxed);
        self.shared.changed.notify_all();
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
        self.stop();
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// A nonblocking listener on 127.0.0.1:`port` (0: any) inside `netns`
/// (bound from a short-lived thread that enters the namespace, so the test
/// process stays where it is) or in the caller's namespace.
fn listen(netns: Option<&str>, port: u16) -> anyhow::Result<TcpListener> {
    let listener = match netns {
        None => TcpListener::bind(("127.0.0.1", port))?,
        Some(netns) => {
            let path = format!("/var/run/netns/{netns}");
            std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
                        // SAFETY: setns on this thread only; the fd is valid while `ns` lives.
                        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                            bail!("setns {path}: {}", std::io::Error::last_os_error());
                        }
                        Ok(TcpListener::bind(("127.0.0.1", port))?)
                    })
                    .join()
                    .map_err(|_| anyhow::anyhow!("listener thread panicked"))?
            })?
        }
    };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn accept_loop(
    listener: TcpListener,
    shared: &Arc<Shared>,
    requests: &Arc<Mutex<Vec<String>>>,
    down: &Arc<AtomicBool>,
) {
    let mut connections = Vec::new();
    while !down.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (shared, requests, down) =
                    (Arc::clone(shared), Arc::clone(requests), Arc::clone(down));
                connections.push(std::thread::spawn(move || {
                    let _ = answer(stream, &shared, &requests, &down);
                }));
                connections.retain(|c: &JoinHandle<()>| !c.is_finished());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait_for_connection(&listener),
            Err(_) => break,
        }
    }
    // The port closes here; the connections see `down` and end.
    drop(listener);
    for connection in connections {
        let _ = connection.join();
    }
}

/// Returns when a connection is waiting or `POLL` has passed (to look at
/// `down` again): a client's request is taken at once, as the API server
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
    down: &AtomicBool,
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
    let listed = match path {
        "/api/v1/services" => Some((Resource::Services, "ServiceList", "v1")),
        "/apis/discovery.k8s.io/v1/endpointslices" => {
            Some((Resource::Slices, "EndpointSliceList", "discovery.k8s.io/v1"))
        }
        _ => None,
    };
    let mut stream = stream;
    let Some((resource, kind, api_version)) = listed else {
        return respond(
            &mut stream,
            404,
            &status(404, "NotFound", "no such resource"),
        );
    };
    let param = |key: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(key)?.strip_prefix('='))
    };
    if param("watch") == Some("true") {
        let from = param("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        return watch(stream, shared, resource, from, down);
    }
    // A first page snapshots the list; the next ones continue it.
    let (id, version, items, from): (u64, u64, _, usize) = match param("continue") {
        None => {
            let (id, version, items) = shared.store.lock().expect("store lock").snapshot(resource);
            (id, version, items, 0)
        }
        Some(token) => {
            let parsed = token
                .split_once('-')
                .and_then(|(id, from)| Some((id.parse().ok()?, from.parse().ok()?)));
            let continued = parsed.and_then(|(id, from)| {
                let store = shared.store.lock().expect("store lock");
                store
                    .continued(id)
                    .map(|(version, items)| (id, version, items, from))
            });
            match continued {
                Some(found) => found,
                None => {
                    let body = status(410, "Expired", "the list's continue token is too old");
                    return respond(&mut stream, 410, &body);
                }
            }
        }
    };
    let limit = param("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let to = from.saturating_add(limit).min(items.len());
    let mut metadata = json!({"resourceVersion": version.to_string()});
    if to < items.len() {
        metadata["continue"] = format!("{id}-{to}").into();
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

/// A watch of `resource` from version `from`: the changes since, then each
/// as it comes, until the hold ends (a clean end: the client watches on),
/// the watches expire or the history lacks `from` (410 Gone: the client
/// lists again), or the server goes down (the connection is cut).
fn watch(
    mut stream: TcpStream,
    shared: &Shared,
    resource: Resource,
    from: u64,
    down: &AtomicBool,
) -> std::io::Result<()> {
    stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )?;
    let expired = shared.expired.load(Ordering::Relaxed);
    let until = Instant::now() + WATCH_HOLD;
    let mut seen = from;
    loop {
        if down.load(Ordering::Relaxed) {
            return stream.shutdown(Shutdown::Both);
        }
        if shared.expired.load(Ordering::Relaxed) != expired {
            return gone(&mut stream);
        }
        if Instant::now() >= until {
            return stream.write_all(b"0\r\n\r\n");
        }
        let store = shared.store.lock().expect("store lock");
        let Some((lines, reached)) = store.changes_after(resource, seen) else {
            drop(store);
            return gone(&mut stream);
        };
        if reached == seen {
            // Nothing new: wait for a change, or look at the flags again.
            drop(shared.changed.wait_timeout(store, POLL));
            continue;
        }
        drop(store);
        seen = reached;
        for line in lines {
            write!(stream, "{:x}\r\n{line}\r\n", line.len())?;
        }
    }
}

/// The watch event that sends a client back to listing, and the stream's end.
fn gone(stream: &mut TcpStream) -> std::io::Result<()> {
    let event = json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410,
    }});
    let line = format!("{event}\n");
    write!(stream, "{:x}\r\n{line}\r\n0\r\n\r\n", line.len())
}

fn status(code: u16, reason: &str, message: &str) -> String {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
    .to_string()
}

fn respond(stream: &mut TcpStream, code: u16, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        _ => "Gone",
    };
    write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
