//! The `/init` binary: PID 1 of a line card's initramfs, or check mode otherwise. All
//! logic lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::process::id() == 1 {
        shelfboot_init::pid1::main(&mut shelfboot_init::provision::AgentProvisioner::default())
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    ExitCode::from(shelfboot_init::check::main(&args, &mut std::io::stdout()))
}
