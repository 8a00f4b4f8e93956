//! `master`: the shelfboot master's CLI and daemon. All logic lives in the library.

use std::process::ExitCode;

use shelfboot_master::cli::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    shelfboot_master::logging::init(cli.verbose);
    run(cli)
}
