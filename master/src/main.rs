//! `master`: the shelfboot master's CLI and daemon. All logic lives in the library.

use std::process::ExitCode;

use clap::Parser;
use shelfboot_master::cli::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new()
        .filter_level(level)
        // The solver logs every decision at info level.
        .filter_module("pubgrub", log::LevelFilter::Warn)
        .parse_default_env()
        .init();
    run(cli)
}
