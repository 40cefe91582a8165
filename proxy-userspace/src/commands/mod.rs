//! One module per `kxdp` subcommand.

pub mod agent;
pub mod monitor;
pub mod services;
pub mod status;
pub mod trace;
pub mod unload;
