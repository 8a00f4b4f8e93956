//! `mkinitramfs`: parses the command line, runs it, prints the error chain on failure.

use std::process::ExitCode;

use clap::Parser;
use shelfboot_mkinitramfs::cli::{Cli, run};
use shelfboot_proto::report::causes;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mkinitramfs: error: {err}");
            for cause in causes(&err).skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(err.exit_code())
        }
    }
}
