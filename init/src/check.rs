//! Check mode: what the binary does when it is *not* PID 1 (tests, operators, CI).
//!
//! `shelfboot-init [check] [--cmdline FILE] [--sys DIR] [--proc DIR] [--modules LIST]
//! [--root DIR]` parses a command line file (default /proc/cmdline) with the same code PID
//! 1 uses, prints the resulting configuration, and, with `--modules`, the module load
//! plan (checking that every listed file exists under `--root`). Exit status 0 when
//! everything parses, 1 with the error chain otherwise, 2 for bad usage. It never mounts,
//! loads, attaches or reboots anything.

use std::io::Write;
use std::path::PathBuf;

use crate::config::Config;
use crate::modules;

const USAGE: &str = "usage: shelfboot-init [check] [--cmdline FILE] [--sys DIR] [--proc DIR] [--modules LIST] [--root DIR]\n\
(as PID 1 it boots the card; otherwise it only checks its configuration)";

/// Runs check mode with `args` (without argv[0]); returns the exit status.
pub fn main(args: &[String], out: &mut dyn Write) -> u8 {
    let mut cmdline = PathBuf::from("/proc/cmdline");
    let mut sys = PathBuf::from("/sys");
    let mut proc = PathBuf::from("/proc");
    let mut root = PathBuf::from("/");
    let mut list: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let target = match a.as_str() {
            "check" => continue,
            "--cmdline" => &mut cmdline,
            "--sys" => &mut sys,
            "--proc" => &mut proc,
            "--root" => &mut root,
            "--modules" => list.get_or_insert_with(PathBuf::new),
            "-h" | "--help" => {
                let _ = writeln!(out, "{USAGE}");
                return 0;
            }
            other => {
                let _ = writeln!(out, "unknown argument {other:?}\n{USAGE}");
                return 2;
            }
        };
        match it.next() {
            Some(v) => *target = PathBuf::from(v),
            None => {
                let _ = writeln!(out, "{a} needs a value\n{USAGE}");
                return 2;
            }
        }
    }
    let cfg = match Config::load(&cmdline, &sys, &proc) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(out, "error: {}", shelfboot_proto::report::error_chain(&e));
            return 1;
        }
    };
    let _ = write!(out, "{cfg}");
    if let Some(list) = list {
        let text = match std::fs::read_to_string(&list) {
            Ok(t) => t,
            Err(e) => {
                let _ = writeln!(out, "error: cannot read {}: {e}", list.display());
                return 1;
            }
        };
        match modules::parse_list(&text, &list, &root) {
            Ok(entries) => {
                let mut missing = 0;
                for e in &entries {
                    let mark = if e.path.exists() { "ok" } else { "MISSING" };
                    missing += usize::from(!e.path.exists());
                    let _ = writeln!(out, "module {:<8} {} {}", mark, e.path.display(), e.params);
                }
                if missing > 0 {
                    let _ = writeln!(
                        out,
                        "error: {missing} listed modules are missing under {}",
                        root.display()
                    );
                    return 1;
                }
            }
            Err(e) => {
                let _ = writeln!(out, "error: {}", shelfboot_proto::report::error_chain(&e));
                return 1;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> (u8, String) {
        let mut out = Vec::new();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let code = main(&args, &mut out);
        (code, String::from_utf8(out).unwrap())
    }

    #[test]
    fn prints_config_and_module_plan() {
        let t = tempfile::tempdir().unwrap();
        let p = |s: &str| t.path().join(s).to_str().unwrap().to_string();
        std::fs::write(
            t.path().join("cmdline"),
            "console=ttyS0 shelfboot.card=lc8 shelfboot.slot=4\n",
        )
        .unwrap();
        std::fs::create_dir_all(t.path().join("lib/modules/k")).unwrap();
        std::fs::write(t.path().join("lib/modules/k/a.ko"), "").unwrap();
        std::fs::write(t.path().join("list"), "lib/modules/k/a.ko x=1\n").unwrap();
        let (code, out) = run(&[
            "check",
            "--cmdline",
            &p("cmdline"),
            "--sys",
            &p("no"),
            "--proc",
            &p("no"),
            "--modules",
            &p("list"),
            "--root",
            &p(""),
        ]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("lc8") && out.contains("/4"), "{out}");
        assert!(out.contains("module ok") && out.contains("x=1"), "{out}");
        std::fs::write(t.path().join("list"), "lib/modules/k/b.ko\n").unwrap();
        let (code, out) = run(&[
            "--cmdline",
            &p("cmdline"),
            "--modules",
            &p("list"),
            "--root",
            &p(""),
        ]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("MISSING"), "{out}");
    }

    #[test]
    fn errors_and_usage() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("c"), "shelfboot.maxtries=lots").unwrap();
        let (code, out) = run(&["--cmdline", t.path().join("c").to_str().unwrap()]);
        assert_eq!(code, 1);
        assert!(out.contains("shelfboot.maxtries"), "{out}");
        assert_eq!(run(&["--bogus"]).0, 2);
        assert_eq!(run(&["--cmdline"]).0, 2);
    }
}
