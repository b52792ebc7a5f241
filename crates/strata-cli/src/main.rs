//! `strata`: run llama-family models whose weights need not fit in GPU memory.
//!
//! Every command prints one clear line on error and exits with code 1 (2 for bad usage).

#[macro_use]
mod output;
mod args;
mod commands;
mod device;
mod progress;
mod stats;

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .format_target(false)
        .init();
    let cli = args::Cli::parse();
    if let Err(e) = commands::dispatch(cli) {
        eprintln!("error: {}", output::chain(&e));
        std::process::exit(1);
    }
}
