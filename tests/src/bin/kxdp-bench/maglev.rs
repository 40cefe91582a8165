//! Part 4: Maglev tables. Building them in userspace for many frontends,
//! the kernel memory they hold once written, one frontend's rebuild (build
//! and swap), and how much of a table moves when one backend goes.

use kxdp_testbed::privileged::PrivateBpffs;
use proxy_userspace::{
    dataplane::{probe, Dataplane},
    maglev::{self, Member},
    sync::store::{MapStore, TableSpec},
};

use super::*;

pub(crate) struct MaglevReport {
    pub(crate) frontends: usize,
    pub(crate) backends_each: usize,
    pub(crate) table_size: u32,
    /// Building every table in userspace, ms (best of the runs).
    pub(crate) build_ms: f64,
    /// Writing every table into the arena (through `mmap`) and switching
    /// its frontend to it, ms.
    pub(crate) write_ms: f64,
    /// Kernel memory the arena and its index hold (slab + vmalloc growth
    /// across the load, the same whatever they contain), MiB.
    pub(crate) kernel_mib: f64,
    /// The arena's entries in use after the writes, MiB.
    pub(crate) used_mib: f64,
    /// The bytes the table layout itself needs, MiB.
    pub(crate) layout_mib: f64,
    /// One frontend's table rebuilt and made live, µs: (what, p50, p99).
    pub(crate) rebuilds: Vec<(String, f64, f64)>,
    /// Fraction of M = 16381 slots that change when one of N backends goes:
    /// (N, measured, 1/N).
    pub(crate) remaps: Vec<(usize, f64, f64)>,
}

fn members(frontend: usize, n: usize) -> Vec<Member> {
    (0..n)
        .map(|b| Member {
            identity: maglev::identity(
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (frontend * n + b) as u32)
                    .into(),
                8080,
            ),
            id: (frontend * n + b) as u32,
        })
        .collect()
}

/// Kernel memory in slab (unreclaimable) and vmalloc, KiB: where BPF arrays live.
fn kernel_kib() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/meminfo"))?;
        Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
    };
    Ok(field("SUnreclaim:")? + field("VmallocUsed:")?)
}

/// Rebuilds the table of frontend 0 over `set(r)` for each run `r` and
/// makes it live (build, write, switch): p50 and p99 in µs.
fn time_rebuilds(
    plan: &Plan,
    maps: &mut impl MapStore,
    set: impl Fn(usize) -> Vec<Member>,
) -> anyhow::Result<(f64, f64)> {
    let mut times = Vec::with_capacity(plan.maglev_rebuilds);
    for r in 0..plan.maglev_rebuilds {
        let set = set(r);
        let started = Instant::now();
        let size = maglev::table_size(set.len(), maglev::DEFAULT_MAX_TABLE_SIZE);
        let spec = TableSpec::new(size, set.iter().map(|m| m.id).collect());
        maps.put_table(0, &spec, || maglev::build(&set, size).into())?;
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    Ok((times[times.len() / 2], p99))
}

/// The arena's and index's kernel memory: their sizes as created (the
/// growth across the load also holds every other map of the object).
fn arena_kernel_mib(before_kib: u64, after_kib: u64) -> anyhow::Result<f64> {
    let arena = f64::from(proxy_common::sizes::MAGLEV_ARENA_ENTRIES) * 8.0;
    let index = f64::from(proxy_common::sizes::MAX_FRONTENDS) * 8.0;
    let grown = after_kib.saturating_sub(before_kib) as f64 * 1024.0;
    ensure!(
        grown >= arena,
        "kernel memory grew by {grown} bytes across the load, less than the arena's {arena}"
    );
    Ok((arena + index) / (1024.0 * 1024.0))
}

fn remap_fraction(n: usize) -> f64 {
    let all = members(0, n);
    let before = maglev::build(&all, 16_381);
    let after = maglev::build(&all[1..], 16_381);
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    moved as f64 / before.len() as f64
}

pub(crate) fn measure_maglev(plan: &Plan) -> anyhow::Result<MaglevReport> {
    let (frontends, backends_each) = (30_000, 10);
    let table_size = maglev::table_size(backends_each, maglev::DEFAULT_MAX_TABLE_SIZE);
    let sets: Vec<Vec<Member>> = (0..frontends).map(|f| members(f, backends_each)).collect();
    let mut build_ms = f64::INFINITY;
    let mut tables = Vec::new();
    for _ in 0..plan.maglev_runs {
        let started = Instant::now();
        tables = sets
            .iter()
            .map(|set| maglev::build(set, table_size))
            .collect();
        build_ms = build_ms.min(started.elapsed().as_secs_f64() * 1e3);
    }

    let mount = PrivateBpffs::new("kxdp-bench-maglev")?;
    let kernel_before = kernel_kib()?;
    let mut dataplane = Dataplane::load(
        &mount.path().join("kxdp"),
        &probe::this_kernel(false)?.1,
        proxy_common::sizes::MAGLEV_ARENA_ENTRIES,
        false,
    )?;
    let mut maps = dataplane.take_maps()?;
    let specs: Vec<TableSpec> = sets
        .iter()
        .map(|set| TableSpec::new(table_size, set.iter().map(|m| m.id).collect()))
        .collect();
    let started = Instant::now();
    for (id, (spec, slots)) in specs.iter().zip(&tables).enumerate() {
        maps.put_table(id as u32, spec, || slots.as_slice().into())?;
    }
    let write_ms = started.elapsed().as_secs_f64() * 1e3;
    // The other maps of the object: their sizes as created, arena aside.
    let kernel_mib = arena_kernel_mib(kernel_before, kernel_kib()?)?;
    let used_mib = maps.tables().usage().0 as f64 * 8.0 / (1024.0 * 1024.0);
    let entries = proxy_common::maps::maglev_layout::entries(table_size, backends_each as u32);
    let layout_mib = (frontends as f64 * f64::from(entries) * 8.0) / (1024.0 * 1024.0);

    let mut rebuilds = Vec::new();
    // In place: the backend set changes, its size class does not.
    for n in [10, 1000] {
        let size = maglev::table_size(n, maglev::DEFAULT_MAX_TABLE_SIZE);
        let times = time_rebuilds(plan, &mut maps, |r| members(r % 2, n))?;
        rebuilds.push((
            format!("{n} backends, in place (M = {size})"),
            times.0,
            times.1,
        ));
    }
    // Swapped: 10 ↔ 11 backends moves between M = 1021 and M = 2039.
    let times = time_rebuilds(plan, &mut maps, |r| members(0, 10 + r % 2))?;
    rebuilds.push((
        "10 ↔ 11 backends, new table swapped in (M = 1021 ↔ 2039)".into(),
        times.0,
        times.1,
    ));
    drop(maps);
    drop(dataplane);

    let remaps = [10, 100, 1000]
        .into_iter()
        .map(|n| (n, remap_fraction(n), 1.0 / n as f64))
        .collect();
    Ok(MaglevReport {
        frontends,
        backends_each,
        table_size,
        build_ms,
        write_ms,
        kernel_mib,
        used_mib,
        layout_mib,
        rebuilds,
        remaps,
    })
}

pub(crate) fn maglev_table(r: &MaglevReport) -> String {
    let mut out = format!(
        "| Maglev, {} frontends × {} backends (M = {}) | value |\n|---|---:|\n\
         | built in userspace | {:.0} ms |\n\
         | written into the arena through `mmap`, each frontend switched to its block | {:.0} ms |\n\
         | kernel memory of the arena and its index (fixed at load) | {:.1} MiB |\n\
         | arena in use | {:.1} MiB |\n\
         | bytes the layout needs | {:.1} MiB |\n",
        r.frontends,
        r.backends_each,
        r.table_size,
        r.build_ms,
        r.write_ms,
        r.kernel_mib,
        r.used_mib,
        r.layout_mib
    );
    for (what, p50, p99) in &r.rebuilds {
        let _ = writeln!(
            out,
            "| one frontend's table rebuilt and live, {what}, p50 / p99 | {p50:.0} / {p99:.0} µs |"
        );
    }
    for (n, measured, minimum) in &r.remaps {
        let _ = writeln!(
            out,
            "| slots moved when 1 of {n} backends goes (M = 16381) | {measured:.4} (1/N = {minimum:.4}) |"
        );
    }
    out
}
