//! Writes the seed corpus of the `frame_decode` fuzz target: every sample frame, and every
//! sample control body prefixed with its type byte (the target's second input shape).
//!
//! `cargo run -p shelfboot-proto --example fuzz_seeds -- fuzz/corpus-seed/frame_decode`

use std::path::PathBuf;
use std::process::ExitCode;

use shelfboot_proto::frame::PAYLOAD_OFF;
use shelfboot_proto::samples;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fuzz_seeds DIR");
        return ExitCode::from(2);
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("creating {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, frame) in samples::every_frame().into_iter().enumerate() {
        let t = frame.get(15).copied().unwrap_or(0);
        let len = usize::from(u16::from_be_bytes([frame[26], frame[27]]));
        let mut typed = vec![t];
        typed.extend_from_slice(&frame[PAYLOAD_OFF..PAYLOAD_OFF + len]);
        seeds.push((format!("frame-{i:02}-type-{t:02x}"), frame));
        seeds.push((format!("body-{i:02}-type-{t:02x}"), typed));
    }
    for (name, bytes) in seeds {
        let path = dir.join(name);
        if let Err(e) = std::fs::write(&path, bytes) {
            eprintln!("writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
