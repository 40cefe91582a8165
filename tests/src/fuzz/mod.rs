//! Differential fuzzing of the datapath: frames for every program
//! (`frames`), run through the real object with BPF_PROG_TEST_RUN against
//! maps populated as the agent populates them (`world`) and by the flows
//! the frames open, and each verdict and output frame compared with a
//! reference model of the rules (`model`, `parse`, `checks`), written for
//! the tests and independently of the eBPF code; the counters the model
//! expects are compared with the datapath's every `CHECKPOINT` frames and
//! at the end. A mismatch is reported with the seed, the frame's number
//! and its bytes, to become a case of the packet tests.
//!
//! Run by `cargo xtask fuzz` (`kxdp-fuzz`: a million frames a program)
//! and, bounded, by the `packet_fuzz` suite.

mod checks;
mod frames;
pub mod model;
mod parse;
mod rng;
mod world;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use proxy_common::maps::DropReason;

use crate::{
    datapath::{datapath_now_s, Datapath},
    nic_netns,
};
use model::{Model, Program};

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Frames per program.
    pub frames: u64,
    /// Stop earlier once this much time has passed.
    pub time_limit: Option<Duration>,
    pub seed: u64,
}

/// A frame whose output the model did not allow.
#[derive(Debug, Clone)]
pub struct Mismatch {
    pub program: Program,
    /// Its number in the run (replaying the seed reaches it again).
    pub index: u64,
    pub frame: Vec<u8>,
    pub reason: String,
}

/// What a run did, per program.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub frames: u64,
    /// Frames the kernel refused to run (too short for their type); the
    /// model holds each to be no flow.
    pub refused: u64,
    pub elapsed: Duration,
}

#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub tallies: BTreeMap<&'static str, Tally>,
    pub mismatches: Vec<Mismatch>,
    /// Counter disagreements found at checkpoints.
    pub counter_errors: Vec<String>,
    /// Conntrack entries at the end: (model, datapath).
    pub conntrack: (usize, usize),
    /// How often each rule decided a frame.
    pub seen: BTreeMap<&'static str, u64>,
}

/// Mismatches kept (the first ones say the most; later ones often follow).
const KEEP: usize = 20;
/// Counters are compared every this many frames.
const CHECKPOINT: u64 = 20_000;

impl Report {
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
            && self.counter_errors.is_empty()
            && self.conntrack.0 == self.conntrack.1
    }

    pub fn summary(&self) -> String {
        let mut s = format!("seed {:#x}\n", self.seed);
        for (name, t) in &self.tallies {
            let secs = t.elapsed.as_secs_f64();
            let _ = writeln!(
                s,
                "{name:12} {:>9} frames in {secs:7.1} s ({:>7.0}/s), {} refused by the kernel",
                t.frames,
                t.frames as f64 / secs.max(1e-9),
                t.refused,
            );
        }
        let _ = writeln!(
            s,
            "conntrack entries: model {}, datapath {}",
            self.conntrack.0, self.conntrack.1
        );
        for (what, n) in &self.seen {
            let _ = writeln!(s, "  {n:>9}  {what}");
        }
        for m in &self.mismatches {
            let _ = writeln!(
                s,
                "MISMATCH {} frame #{} (seed {:#x}): {}\n  frame: {}",
                m.program.name(),
                m.index,
                self.seed,
                m.reason,
                hex(&m.frame)
            );
        }
        for e in &self.counter_errors {
            let _ = writeln!(s, "COUNTERS: {e}");
        }
        s
    }
}

/// A seed from the kernel's random numbers, for a run of its own.
pub fn fresh_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: a valid buffer of its length.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    assert_eq!(n, 8, "getrandom");
    u64::from_ne_bytes(seed)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the fuzzer in a private network namespace (on a thread of its
/// own, which it moves there).
pub fn run(config: Config) -> Report {
    std::thread::spawn(move || run_here(config))
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn run_here(config: Config) -> Report {
    let nic = nic_netns::enter();
    let pod_side = nic_netns::ifindex(nic_netns::POD_SIDE);
    let mut dp = Datapath::load();
    let world = world::World::new();
    world.install(&mut dp, nic);
    let mut model = Model::new(world);
    let mut rng = rng::Rng::new(config.seed);
    let mut tallies: BTreeMap<&'static str, Tally> = BTreeMap::new();
    let mut mismatches = Vec::new();
    let mut counter_errors = Vec::new();
    let started = Instant::now();
    let total = config.frames * Program::ALL.len() as u64;
    for index in 0..total {
        if config
            .time_limit
            .is_some_and(|limit| started.elapsed() > limit)
        {
            break;
        }
        let program = Program::ALL[(index % Program::ALL.len() as u64) as usize];
        let frame = frames::frame(&mut rng, &model, program);
        let began = Instant::now();
        let ran = match program {
            Program::NicIngress => dp.try_run_nic(&frame, nic),
            _ => dp.try_run_pod(program.name(), &frame, pod_side),
        };
        let tally = tallies.entry(program.name()).or_default();
        tally.elapsed += began.elapsed();
        tally.frames += 1;
        let outcome = match ran {
            Some((verdict, out)) => model.step(program, &frame, verdict, &out, datapath_now_s()),
            None => {
                tally.refused += 1;
                model.refused(&frame)
            }
        };
        if let Err(reason) = outcome {
            if mismatches.len() < KEEP {
                mismatches.push(Mismatch {
                    program,
                    index,
                    frame,
                    reason,
                });
            }
        }
        if (index + 1) % CHECKPOINT == 0 && counter_errors.len() < KEEP {
            counter_errors.extend(compare_counters(&mut dp, &model, index + 1));
        }
    }
    counter_errors.extend(compare_counters(&mut dp, &model, total));
    let conntrack = (model.conntrack_len(), dp.conntrack_len());
    Report {
        seed: config.seed,
        tallies,
        mismatches,
        counter_errors,
        conntrack,
        seen: model.seen,
    }
}

/// The datapath's per-frontend and drop counters against the model's.
fn compare_counters(dp: &mut Datapath, model: &Model, after: u64) -> Vec<String> {
    let mut errors = Vec::new();
    for s in &model.world.services {
        let want = model.counts.frontends.get(&s.id).copied().unwrap_or((0, 0));
        let stats = dp.stats(s.id);
        if (stats.packets, stats.bytes) != want {
            errors.push(format!(
                "after {after} frames, frontend {} ({}): packets/bytes {}/{}, model {}/{}",
                s.id, s.vip, stats.packets, stats.bytes, want.0, want.1
            ));
        }
    }
    for s in &model.world.services {
        let want = model.counts.rejects.get(&s.id).copied().unwrap_or(0);
        let got = dp.rejects(s.id);
        if got != want {
            errors.push(format!(
                "after {after} frames, frontend {} ({}): {got} refused, model {want}",
                s.id, s.vip
            ));
        }
    }
    for reason in DropReason::ALL {
        let want = model
            .counts
            .drops
            .get(&reason.index())
            .copied()
            .unwrap_or(0);
        let got = dp.drops(reason);
        if got != want {
            errors.push(format!(
                "after {after} frames, drops {reason:?}: {got}, model {want}"
            ));
        }
    }
    errors
}
