//! Writes the seed corpus of the `reassemble` fuzz target: the fragments of a large sample
//! plan as records `src ‖ type ‖ len:u16 ‖ payload`, in order, reversed, and with
//! duplicates.
//!
//! `cargo run -p shelfboot-proto --example reassemble_seeds -- fuzz/corpus-seed/reassemble`

use std::path::PathBuf;
use std::process::ExitCode;

use shelfboot_proto::frag::encode_frames;
use shelfboot_proto::frame::{Header, PAYLOAD_OFF};
use shelfboot_proto::msg::{ArtifactKind, Message, Plan, PlanBody, Signature, Verdict, set_digest};
use shelfboot_proto::samples;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: reassemble_seeds DIR");
        return ExitCode::from(2);
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("creating {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let artifacts: Vec<_> = (0..40u8)
        .map(|i| samples::artifact(ArtifactKind::Package, &format!("{i:0>64}"), i))
        .collect();
    let plan = Message::Plan(Plan {
        body: PlanBody {
            digest: set_digest(&artifacts, "quiet"),
            artifacts,
            cmdline: "quiet".into(),
            persist: true,
            verdict: Verdict::Fetch,
            nonce: [1; 16],
            epoch: 1,
            artifacts_omitted: false,
            report_inventory: false,
        },
        signature: Signature([7; 64]),
        cert: None,
    });
    let frames = match encode_frames(&samples::link(), &Header::new(plan.msg_type(), 1, 1), &plan) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("encoding the sample plan: {e}");
            return ExitCode::FAILURE;
        }
    };
    let record = |f: &Vec<u8>| {
        let len = usize::from(u16::from_be_bytes([f[26], f[27]]));
        let mut r = vec![7, f[15]];
        r.extend_from_slice(&f[26..28]);
        r.extend_from_slice(&f[PAYLOAD_OFF..PAYLOAD_OFF + len]);
        r
    };
    let in_order: Vec<u8> = frames.iter().flat_map(record).collect();
    let reversed: Vec<u8> = frames.iter().rev().flat_map(record).collect();
    let twice: Vec<u8> = frames
        .iter()
        .flat_map(|f| [record(f), record(f)].concat())
        .collect();
    for (name, bytes) in [
        ("in-order", in_order),
        ("reversed", reversed),
        ("twice", twice),
    ] {
        let path = dir.join(name);
        if let Err(e) = std::fs::write(&path, bytes) {
            eprintln!("writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
