//! `strata`: run llama-family models whose weights need not fit in GPU memory.
//!
//! Every command prints one clear line on error and exits with code 1 (2 for bad usage).

#![forbid(unsafe_code)]

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
    // The main thread joins rayon's global pool as worker 0 (RAYON_NUM_THREADS counts it). The
    // CPU forward pass runs a few hundred parallel ops per token, most of them tens of
    // microseconds long; from a thread outside the pool each is handed over and waited for (a
    // futex sleep and wake, several microseconds, and a third thread competing for the cores),
    // from inside the main thread does its share and the other workers steal the rest.
    if let Err(e) = rayon::ThreadPoolBuilder::new().use_current_thread().build_global() {
        log::warn!("could not set up the thread pool on the main thread ({e}); using rayon's default");
    }
    if let Err(e) = commands::dispatch(cli) {
        eprintln!("error: {}", output::chain(&e));
        std::process::exit(1);
    }
}
