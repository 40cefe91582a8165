//! The `kxdp` binary.

use std::{io::IsTerminal as _, time::Duration};

use clap::Parser as _;
use proxy_userspace::{
    allocator,
    cli::{Cli, Command, LogFormat},
    commands,
};
use tracing_subscriber::EnvFilter;

/// mimalloc, tuned so the heap a full sync swells (decoding, Maglev builds)
/// goes back to the system as soon as it is freed (`TUNE_ALLOCATOR`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run among the program's constructors: see [`allocator::tune`].
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = allocator::tune;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cli.log_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        // Colours only on a terminal: log files and journald get plain text.
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // One object a line, fields flattened, for log collectors.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let result = match cli.command {
        Command::Agent(args) => run_agent(*args),
        Command::Services(args) => commands::services::run(&args),
        Command::Status(args) => commands::status::run(&args),
        Command::Trace(args) => commands::trace::run(&args),
        Command::Monitor(args) => commands::monitor::run(&args),
        Command::Unload(args) => commands::unload::run(&args.pin_path),
    };
    // One line with the whole cause chain; no backtrace for operator errors.
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kxdp: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The agent runs on this thread; the HTTP listeners on one worker, so they
/// answer while a long sync holds this one.
fn run_agent(args: proxy_userspace::cli::AgentArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let result = runtime.block_on(commands::agent::run(args));
    // Connections still being answered get a moment, not a hang: the stop
    // stays well within the 10 s the DaemonSet grants after SIGTERM.
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}
