//! `kxdp-fuzz [--packets N] [--seconds S] [--seed X]`: the datapath's
//! differential fuzzing (`kxdp_testbed::fuzz`), N frames a program (a
//! million by default), within S seconds if given, from seed X (a fresh
//! one by default, printed). Exits 1 on any mismatch. Needs root.

use std::time::Duration;

use kxdp_testbed::fuzz::{self, Config};

fn parse_number(flag: &str, value: Option<String>) -> u64 {
    let value = value.unwrap_or_else(|| usage(&format!("{flag} needs a value")));
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.replace('_', "").parse(),
    };
    parsed.unwrap_or_else(|e| usage(&format!("{flag} {value}: {e}")))
}

fn usage(problem: &str) -> ! {
    eprintln!("kxdp-fuzz: {problem}\nusage: kxdp-fuzz [--packets N] [--seconds S] [--seed X]");
    std::process::exit(2)
}

fn main() {
    let mut config = Config {
        frames: 1_000_000,
        time_limit: None,
        seed: fuzz::fresh_seed(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--packets" => config.frames = parse_number(&flag, args.next()),
            "--seconds" => {
                config.time_limit = Some(Duration::from_secs(parse_number(&flag, args.next())))
            }
            "--seed" => config.seed = parse_number(&flag, args.next()),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    println!(
        "fuzzing the datapath: {} frames a program, seed {:#x}",
        config.frames, config.seed
    );
    let started = std::time::Instant::now();
    let report = fuzz::run(config);
    print!("{}", report.summary());
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    if !report.passed() {
        std::process::exit(1);
    }
}
