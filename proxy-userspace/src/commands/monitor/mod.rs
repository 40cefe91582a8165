//! `kxdp monitor`: the datapath's events as they happen, one line (or JSON
//! object) each: drops and rejects with their reason, frontend and
//! Service, and with --new-flows each new flow's backend. The programs send
//! events only while `MONITOR` asks for them, which this command sets for
//! as long as it runs; they come through the `EVENTS` ring buffer.

mod event;

use std::{
    collections::HashMap,
    os::fd::AsRawFd,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use aya::maps::{Array, Map, MapData, RingBuf};
use proxy_common::maps::{MonitorEvent, MONITOR_DROPS, MONITOR_NEW_FLOWS};

use self::event::{Event, Filter};
use crate::{
    cli::{MonitorArgs, Output},
    dataplane::maps::{BpfMaps, EVENTS, MONITOR},
    frontend_text::frontend_text,
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// `MONITOR`, set while this lives and cleared when it goes, however the
/// command ends.
struct Listening(Array<MapData, u32>);

impl Listening {
    fn start(pin_path: &Path, bits: u32) -> anyhow::Result<Self> {
        let map = MapData::from_pin(pin_path.join(MONITOR)).context(MONITOR)?;
        let mut array: Array<MapData, u32> = Map::from_map_data(map)
            .and_then(Array::try_from)
            .context(MONITOR)?;
        array
            .set(0, bits, 0)
            .context("asking the datapath for events")?;
        Ok(Self(array))
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.0.set(0, 0, 0);
    }
}

/// Frontend ids' keys and Services, read again when an id is new to it
/// (at most once a second).
struct Names {
    frontends: HashMap<u32, String>,
    read_at: Option<Instant>,
}

impl Names {
    fn name(&mut self, maps: &BpfMaps, event: &mut Event) {
        let stale = self
            .read_at
            .is_none_or(|at| at.elapsed() > Duration::from_secs(1));
        if !self.frontends.contains_key(&event.frontend_id) && stale {
            if let Ok(contents) = maps.read_contents() {
                self.frontends = contents
                    .frontends
                    .iter()
                    .map(|(key, value)| (value.id, frontend_text(key)))
                    .collect();
            }
            self.read_at = Some(Instant::now());
        }
        event.frontend = self.frontends.get(&event.frontend_id).cloned();
        event.service = maps
            .frontend_label(event.frontend_id)
            .ok()
            .flatten()
            .map(|label| {
                let text = |bytes: &[u8]| {
                    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
                    String::from_utf8_lossy(&bytes[..end]).into_owned()
                };
                format!("{}/{}", text(&label.namespace), text(&label.name))
            });
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn run(args: &MonitorArgs) -> anyhow::Result<()> {
    let filter = Filter::new(
        args.service.clone(),
        args.reason.clone(),
        args.address.clone(),
    )?;
    let pin_path = &args.pin.pin_path;
    let maps = BpfMaps::open_pinned(pin_path).with_context(|| {
        format!(
            "no kxdp maps under {} (is the agent loaded?)",
            pin_path.display()
        )
    })?;
    let events = MapData::from_pin(pin_path.join(EVENTS))
        .and_then(Map::from_map_data)
        .and_then(RingBuf::try_from)
        .with_context(|| {
            format!(
                "no {EVENTS} ring buffer under {} (an agent before kxdp monitor?)",
                pin_path.display()
            )
        })?;
    let mut events = events;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(
                signal,
                stop as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
    let bits = MONITOR_DROPS | if args.new_flows { MONITOR_NEW_FLOWS } else { 0 };
    let _listening = Listening::start(pin_path, bits)?;
    eprintln!("kxdp: monitoring (Ctrl-C to stop)");
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut names = Names {
        frontends: HashMap::new(),
        read_at: None,
    };
    let mut shown = 0u64;
    let enough = |shown: u64| args.count.is_some_and(|count| shown >= count);
    while !STOP.load(Ordering::Relaxed)
        && deadline.is_none_or(|d| Instant::now() < d)
        && !enough(shown)
    {
        let mut poll = libc::pollfd {
            fd: events.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a signal ends the wait early (EINTR).
        unsafe { libc::poll(&mut poll, 1, 200) };
        while let Some(record) = events.next() {
            let Some(record) = record.get(..size_of::<MonitorEvent>()) else {
                continue;
            };
            let record: MonitorEvent = bytemuck::pod_read_unaligned(record);
            let Some(mut event) = Event::decode(&record) else {
                continue;
            };
            names.name(&maps, &mut event);
            if !filter.passes(&event) {
                continue;
            }
            let now = unix_ms();
            if event.suppressed > 0 && args.output == Output::Table {
                println!("… {} events left out by the rate limit", event.suppressed);
            }
            match args.output {
                Output::Table => println!("{}", event.line(now)),
                Output::Json => println!("{}", event.json(now)),
            }
            shown += 1;
            if enough(shown) {
                break;
            }
        }
    }
    Ok(())
}
