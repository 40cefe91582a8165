//! Faults in the control plane, with real connections through the mini
//! node: the API server lost for 30 s while its Services change at 100
//! changes a second, and then back (with a fresh watch cache, so the agent
//! lists everything again).
//!
//! Throughout, a sampler reads the pinned maps afresh and checks that
//! every Service the API never deleted is served whole; long-lived
//! connections through Services that change must never break; after the
//! API server is back, the maps must reach what the API held when it came
//! back, and once the changes stop, exactly what it holds.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::Receiver,
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use kxdp_testbed::{
    agent::Agent,
    api_objects::{self, count_from_env, nth_address},
    fake_apiserver::FakeApiServer,
    patience,
    scenario::EchoScenario,
    served::{read_served, Served},
};
use serde_json::Value;

const NAMESPACE: &str = "load";
/// Services whose backends are the scenario's real pods: `LIVE` carry the
/// long-lived connections (their slices change under them), the next one
/// takes new connections during the outage and never changes.
const LIVE: usize = 3;
const STEADY: usize = LIVE;
/// How long the API server is away.
const OUTAGE: Duration = Duration::from_secs(30);
/// Changes before the outage, and after the API server is back.
const BEFORE: Duration = Duration::from_secs(5);
const AFTER: Duration = Duration::from_secs(10);
/// The bound on convergence once the agent reaches the API server again.
const CONVERGE: Duration = Duration::from_secs(5);
const CHAT_INTERVAL_MS: u64 = 100;
/// The backends' ports: `kxdp-peer serve`'s HTTP, and the line echo the
/// chats talk to.
const HTTP: u16 = 8080;
const ECHO_LINES: u16 = 7007;

fn vip(i: usize) -> Ipv4Addr {
    nth_address(Ipv4Addr::new(10, 100, 0, 1), i)
}

fn churn_vip(k: u32) -> Ipv4Addr {
    nth_address(Ipv4Addr::new(10, 101, 0, 1), k as usize)
}

/// The made-up backend addresses of change `counter`: a Service's
/// endpoints say which change wrote them.
fn fake_backend(counter: u32) -> Ipv4Addr {
    nth_address(Ipv4Addr::new(10, 128, 0, 0), counter as usize)
}

fn counter_of(backend: IpAddr) -> Option<u32> {
    match backend {
        IpAddr::V4(v4) => u32::from(v4).checked_sub(u32::from(fake_backend(0))),
        IpAddr::V6(_) => None,
    }
}

fn service(name: &str, vip: Ipv4Addr) -> Value {
    api_objects::service(NAMESPACE, name, vip, &[80])
}

fn slice(service: &str, backends: &[Ipv4Addr], port: u16) -> Value {
    api_objects::slice(NAMESPACE, service, backends, &[80], port)
}

/// What the changer has done so far.
#[derive(Clone, Debug, Default)]
struct Ledger {
    /// The counter of each changed Service's last slice (past `STEADY`).
    counters: BTreeMap<usize, u32>,
    /// Whether each live Service has its extra made-up endpoint.
    live_extra: BTreeMap<usize, Ipv4Addr>,
    /// Created Services (`churn-K`) there now, and those deleted.
    churn_live: BTreeSet<u32>,
    churn_deleted: BTreeSet<u32>,
    changes: usize,
}

/// Changes a second: `$KXDP_FAULT_RATE`, else 100. Under emulation (the VM
/// suites: 20) the agent's syncs are ten to twenty times slower and 100 a
/// second outran it: the changes queued, and the maps could not settle
/// within the bounds once they stopped.
fn change_rate() -> u32 {
    count_from_env("KXDP_FAULT_RATE", 100).clamp(1, 1000) as u32
}

/// Changes the API's objects at [`change_rate`] until told to stop:
/// new endpoints for a Service, an extra endpoint added to or taken from a
/// live Service (under its connections), a Service created or deleted.
struct Changer {
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Changer {
    fn start(server: Arc<FakeApiServer>, services: usize, real: [Ipv4Addr; 2]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let thread = {
            let (stop, ledger) = (Arc::clone(&stop), Arc::clone(&ledger));
            std::thread::spawn(move || {
                let mut counter = 0u32;
                let mut next_churn = 0u32;
                let mut next_due = Instant::now();
                // A fixed stride over the Services visits each in turn.
                let mut pick = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let change = ledger.lock().unwrap().changes;
                    counter += 2;
                    match change % 10 {
                        // A Service created, or the oldest created one deleted.
                        0 => {
                            let mut ledger = ledger.lock().unwrap();
                            if ledger.churn_live.len() < 50 || change % 20 == 0 {
                                let name = format!("churn-{next_churn}");
                                server.apply(service(&name, churn_vip(next_churn)))?;
                                server.apply(slice(&name, &[fake_backend(counter)], HTTP))?;
                                ledger.churn_live.insert(next_churn);
                                next_churn += 1;
                            } else if let Some(k) = ledger.churn_live.pop_first() {
                                let name = format!("churn-{k}");
                                server.delete("EndpointSlice", NAMESPACE, &format!("{name}-1"))?;
                                server.delete("Service", NAMESPACE, &name)?;
                                ledger.churn_deleted.insert(k);
                            }
                        }
                        // A live Service's extra endpoint comes or goes.
                        5 => {
                            let i = change / 10 % LIVE;
                            let mut ledger = ledger.lock().unwrap();
                            let mut backends = real.to_vec();
                            if ledger.live_extra.remove(&i).is_none() {
                                backends.push(fake_backend(counter));
                                ledger.live_extra.insert(i, fake_backend(counter));
                            }
                            server.apply(slice(&format!("svc-{i}"), &backends, ECHO_LINES))?;
                        }
                        _ => {
                            pick = (pick + 7919) % (services - STEADY - 1);
                            let i = STEADY + 1 + pick;
                            let backends = [fake_backend(counter), fake_backend(counter + 1)];
                            server.apply(slice(&format!("svc-{i}"), &backends, HTTP))?;
                            ledger.lock().unwrap().counters.insert(i, counter);
                        }
                    }
                    ledger.lock().unwrap().changes += 1;
                    next_due += Duration::from_secs(1) / change_rate();
                    std::thread::sleep(next_due.saturating_duration_since(Instant::now()));
                }
                Ok(())
            })
        };
        Self {
            stop,
            ledger,
            thread: Some(thread),
        }
    }

    fn ledger(&self) -> Ledger {
        self.ledger.lock().unwrap().clone()
    }

    /// Stops the changes; what was done.
    fn finish(&mut self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("changer").expect("a change");
        }
        self.ledger()
    }
}

impl Drop for Changer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads the maps over and over until stopped, checking each time that
/// every Service the API never deletes (`svc-*`) is served whole.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(usize, Vec<String>)>>,
}

impl Sampler {
    fn start(pin_path: std::path::PathBuf, services: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let (mut samples, mut faults) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) && faults.len() < 20 {
                    match read_served(&pin_path) {
                        Ok(served) => {
                            faults.extend(served.broken.values().cloned());
                            faults.extend((0..services).filter_map(|i| {
                                let f = served.frontends.get(&(vip(i).into(), 80, "pod"));
                                match f {
                                    Some(f) if f.table_size > 0 => None,
                                    Some(_) => Some(format!("svc-{i} had no backend")),
                                    None => Some(format!("svc-{i} was missing")),
                                }
                            }));
                            samples += 1;
                        }
                        Err(e) => faults.push(format!("reading the maps: {e:#}")),
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                (samples, faults)
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("sampler")
    }
}

/// Whether the maps hold at least what the API held at `then` (the changes
/// made since may or may not be in yet), judged by what is known `now`.
fn caught_up(served: &Served, then: &Ledger, now: &Ledger) -> Result<(), String> {
    let backends = |address: Ipv4Addr| {
        served
            .frontends
            .get(&(address.into(), 80, "pod"))
            .map(|f| &f.backends)
    };
    let mut behind = Vec::new();
    for (i, counter) in &then.counters {
        let oldest =
            backends(vip(*i)).and_then(|found| found.iter().filter_map(|b| counter_of(*b)).min());
        if oldest.is_none_or(|c| c < *counter) {
            behind.push(format!("svc-{i} at change {oldest:?}, not {counter}"));
        }
    }
    for k in &then.churn_live {
        if backends(churn_vip(*k)).is_none() && !now.churn_deleted.contains(k) {
            behind.push(format!("churn-{k} missing"));
        }
    }
    for k in &then.churn_deleted {
        if backends(churn_vip(*k)).is_some() {
            behind.push(format!("churn-{k} still served after its deletion"));
        }
    }
    match behind.len() {
        0 => Ok(()),
        n => Err(format!("{n} behind, e.g. {:?}", &behind[..n.min(5)])),
    }
}

/// Whether the maps hold exactly what the API holds after `done`.
fn exactly(
    served: &Served,
    done: &Ledger,
    services: usize,
    real: [Ipv4Addr; 2],
) -> Result<(), String> {
    let mut wanted: BTreeMap<Ipv4Addr, BTreeSet<IpAddr>> = BTreeMap::new();
    for i in 0..services {
        let backends: Vec<Ipv4Addr> = match done.counters.get(&i) {
            Some(c) => vec![fake_backend(*c), fake_backend(c + 1)],
            None if i <= STEADY => real
                .into_iter()
                .chain(done.live_extra.get(&i).copied())
                .collect(),
            None => vec![fake_backend(0), fake_backend(1)],
        };
        wanted.insert(vip(i), backends.into_iter().map(IpAddr::from).collect());
    }
    for k in &done.churn_live {
        // A created Service keeps the endpoint it was created with.
        wanted.insert(churn_vip(*k), BTreeSet::new());
    }
    let held: BTreeMap<Ipv4Addr, &BTreeSet<IpAddr>> = served
        .frontends
        .iter()
        .filter(|((_, _, scope), _)| *scope == "pod")
        .filter_map(|((address, _, _), f)| match address {
            IpAddr::V4(v4) => Some((*v4, &f.backends)),
            IpAddr::V6(_) => None,
        })
        .collect();
    let wanted_addresses: BTreeSet<_> = wanted.keys().collect();
    let held_addresses: BTreeSet<_> = held.keys().collect();
    if wanted_addresses != held_addresses {
        let missing: Vec<_> = wanted_addresses
            .difference(&held_addresses)
            .take(5)
            .collect();
        let extra: Vec<_> = held_addresses
            .difference(&wanted_addresses)
            .take(5)
            .collect();
        return Err(format!("frontends missing {missing:?}, extra {extra:?}"));
    }
    for (address, backends) in &wanted {
        if !backends.is_empty() && held[address] != backends {
            return Err(format!(
                "{address} serves {:?}, not {backends:?}",
                held[address]
            ));
        }
    }
    Ok(())
}

/// Polls the maps until `done` says they are as wanted, within `bound`;
/// how long that took.
fn converge(
    pin_path: &std::path::Path,
    bound: Duration,
    mut done: impl FnMut(&Served) -> Result<(), String>,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < bound {
        let served = read_served(pin_path).map_err(|e| format!("{e:#}"))?;
        match done(&served) {
            Ok(()) => return Ok(start.elapsed()),
            Err(why) => last = why,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("not converged within {bound:?}: {last}"))
}

/// Waits for a chat's last line, its `first` taken; every answer must have
/// come, each from the backend of the first.
fn chat_kept(lines: &Receiver<String>, first: &str, exchanges: usize) -> Result<String, String> {
    let mut backend = first.strip_prefix("1 ").map(str::to_string);
    if backend.is_none() {
        return Err(format!("the first answer came as {first:?}"));
    }
    for n in 2..=exchanges {
        let line = lines
            .recv_timeout(patience(Duration::from_secs(10)))
            .map_err(|_| format!("the chat went silent or ended after {} answers", n - 1))?;
        let (number, answered_by) = line.split_once(' ').unwrap_or_default();
        if number != n.to_string() {
            return Err(format!("answer {n} came as {line:?}"));
        }
        if *backend.get_or_insert_with(|| answered_by.to_string()) != answered_by {
            return Err(format!(
                "answer {n} came from {answered_by}, not {backend:?}"
            ));
        }
    }
    let done = lines
        .recv_timeout(patience(Duration::from_secs(10)))
        .map_err(|_| "no end line".to_string())?;
    (done == format!("done {exchanges}"))
        .then(|| backend.unwrap_or_default())
        .ok_or(format!("ended with {done:?}"))
}

#[test]
fn an_api_server_outage_under_changes_loses_no_connection_and_converges() {
    // `$KXDP_FAULT_SERVICES`: the VM suites' smaller count.
    let services = count_from_env("KXDP_FAULT_SERVICES", 10_000);
    let mut s = EchoScenario::new(2, env!("CARGO_BIN_EXE_kxdp-peer").into()).expect("scenario");
    let real = [s.backends[0], s.backends[1]];
    for backend in ["b1", "b2"] {
        let netns = s.node.pod(backend).netns.clone();
        s.start_peer(
            &netns,
            &[
                "echo-lines",
                "--name",
                backend,
                "--tcp",
                &ECHO_LINES.to_string(),
            ],
        )
        .expect("echo-lines server");
    }
    let mut first_services = Vec::with_capacity(services);
    let mut first_slices = Vec::with_capacity(services);
    for i in 0..services {
        let name = format!("svc-{i}");
        first_services.push(service(&name, vip(i)));
        first_slices.push(match i {
            0..LIVE => slice(&name, &real, ECHO_LINES),
            STEADY => slice(&name, &real, HTTP),
            _ => slice(&name, &[fake_backend(0), fake_backend(1)], HTTP),
        });
    }
    let server =
        FakeApiServer::start(Some(&s.node.node_netns), first_services, first_slices).expect("API");
    let mut agent = Agent::start_with_api(&s.node, &server).expect("agent");
    agent
        .wait_for(&["synced", "full=true"], 1, Duration::from_secs(30))
        .unwrap();
    agent
        .wait_attached(&s.node, Duration::from_secs(10))
        .unwrap();

    // Long-lived connections through the live Services, one line a 100 ms
    // for longer than the whole run.
    let run = BEFORE + OUTAGE + AFTER + Duration::from_secs(10);
    let exchanges = (run.as_millis() as u64 / CHAT_INTERVAL_MS) as usize;
    let chats: Vec<Receiver<String>> = (0..LIVE)
        .map(|i| s.start_chat(&format!("{}:80", vip(i)), exchanges))
        .collect();
    // Each chat's first answer: connected before anything changes.
    let first: Vec<String> = chats
        .iter()
        .map(|chat| {
            chat.recv_timeout(patience(Duration::from_secs(10)))
                .expect("a chat's first answer")
        })
        .collect();

    let pin_path = s.node.pin_path();
    let sampler = Sampler::start(pin_path.clone(), services);
    // The changer changes the objects while the server is down too.
    let server = Arc::new(server);
    let mut changer = Changer::start(Arc::clone(&server), services, real);
    std::thread::sleep(BEFORE);

    // The outage: the agent keeps serving what it knew.
    server.stop();
    let down_at = Instant::now();
    agent
        .wait_for(
            &["watch failed; keeping the last known state"],
            1,
            Duration::from_secs(10),
        )
        .unwrap();
    s.http_backend(&format!("{}:80", vip(STEADY)))
        .expect("a new connection while the API server is away");
    std::thread::sleep(OUTAGE.saturating_sub(down_at.elapsed()));

    // Back, with a fresh watch cache: the agent lists everything again.
    let then = changer.ledger();
    let full_syncs = agent.count(&["synced", "full=true"]);
    let asked_before = server.requests().len();
    server.restart().expect("restarting the API server");
    let restarted = Instant::now();
    // Reconnected once both watchers have asked again, each after its
    // retry delay (at most twice `RETRY_MAX`, 4 s).
    let deadline = restarted + patience(Duration::from_secs(10));
    let asked_again = |path: &str| {
        server.requests()[asked_before..]
            .iter()
            .any(|r| r.contains(path))
    };
    while !(asked_again("/api/v1/services?") && asked_again("/endpointslices?"))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let reconnected = restarted.elapsed();
    assert!(
        asked_again("/api/v1/services?") && asked_again("/endpointslices?"),
        "the agent never came back: {:?}",
        &server.requests()[asked_before..]
    );
    let caught_up_in = converge(&pin_path, patience(CONVERGE), |served| {
        caught_up(served, &then, &changer.ledger())
    })
    .expect("the maps reach what the API held when it came back");
    agent
        .wait_for(
            &["synced", "full=true"],
            full_syncs + 1,
            Duration::from_secs(10),
        )
        .expect("a full sync after the relist");

    // The changes go on, then stop: the maps hold exactly the API's state.
    std::thread::sleep(AFTER);
    let done = changer.finish();
    let settled_in = converge(&pin_path, patience(CONVERGE), |served| {
        exactly(served, &done, services, real)
    })
    .expect("the maps hold exactly what the API holds");
    let (samples, faults) = sampler.finish();
    let kept: Vec<Result<String, String>> = chats
        .iter()
        .zip(&first)
        .map(|(chat, first)| chat_kept(chat, first, exchanges))
        .collect();
    eprintln!(
        "{services} Services, {} changes at {}/s, API server away {OUTAGE:?}: the agent \
         back {reconnected:?} after the restart, caught up {caught_up_in:?} later; \
         exact {settled_in:?} after the last change; {samples} samples of the maps; \
         chats: {kept:?}",
        done.changes,
        change_rate(),
    );
    assert!(faults.is_empty(), "while sampling the maps: {faults:#?}");
    assert!(samples >= 20, "only {samples} samples of the maps");
    assert!(kept.iter().all(Result::is_ok), "connections lost: {kept:?}");
    assert!(
        done.changes as u128 >= run_changes(),
        "the changer fell behind: {done:?}"
    );
    agent.stop().unwrap();
}

/// The fewest changes a run makes: its time at the changer's rate, less
/// a fifth for the machine's hiccups.
fn run_changes() -> u128 {
    (BEFORE + OUTAGE + AFTER).as_millis() * u128::from(change_rate()) / 1000 * 4 / 5
}
