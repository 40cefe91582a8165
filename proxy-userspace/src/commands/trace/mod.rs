//! `kxdp trace`: what the datapath would do with one packet now, step by
//! step, computed by the load-balancing core over the pinned maps
//! (`walk`), printed for people or as JSON (`render`).

mod render;
pub mod request;
pub mod walk;

use anyhow::Context as _;

use crate::cli::{Output, TraceArgs};

pub fn run(args: &TraceArgs) -> anyhow::Result<()> {
    // Parsed here, not by clap, so a bad address is one line and exit code 1.
    let source = args.source.parse().map_err(anyhow::Error::msg)?;
    let destination = args.destination.parse().map_err(anyhow::Error::msg)?;
    let request =
        request::Request::new(source, destination, args.via).map_err(anyhow::Error::msg)?;
    let pin_path = &args.pin.pin_path;
    let maps = walk::TraceMaps::open(pin_path).with_context(|| {
        format!(
            "no kxdp maps under {} (is the agent loaded?)",
            pin_path.display()
        )
    })?;
    let traced = walk::walk(&maps, request, now_s())?;
    match args.output {
        Output::Table => print!("{}", render::text(&traced)),
        Output::Json => println!("{:#}", render::json(&traced)),
    }
    Ok(())
}

/// Now on the datapath's clock (`proxy_common::kernel::clock_s`).
pub fn now_s() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    proxy_common::kernel::clock_s(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}
