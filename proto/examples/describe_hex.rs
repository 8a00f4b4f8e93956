//! Prints `describe_frame` for each sample frame (or for hex frames given as arguments):
//! `cargo run -p shelfboot-proto --example describe_hex [HEX...]`. The master's
//! `decode` subcommand is the real user of `describe_frame`; this is for protocol work.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let frames: Vec<Vec<u8>> = if args.is_empty() {
        shelfboot_proto::samples::every_frame()
    } else {
        args.iter().filter_map(|h| decode_hex(h)).collect()
    };
    for f in frames {
        println!("{}", shelfboot_proto::describe_frame(&f));
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    if !s.len().is_multiple_of(2) {
        eprintln!("odd number of hex digits: {s}");
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
