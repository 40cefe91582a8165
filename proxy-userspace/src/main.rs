//! The `kxdp` binary.

use std::io::IsTerminal as _;

use clap::Parser as _;
use proxy_userspace::{
    cli::{Cli, Command},
    commands,
};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cli.log_level));
    // Colours only on a terminal: log files and journald get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Agent(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(commands::agent::run(*args))),
        Command::Services(args) => commands::services::run(&args.pin_path),
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
