//! Host binaries for test initramfs images: a dynamically linked tool (mtd-utils'
//! `ubiattach`, say) plus the shared libraries `ldd` reports, as `--add` pairs with the
//! same paths inside the image. Files are copied dereferenced (the loader is a symlink).
//! What it does not do: dlopen'ed plugins, or anything for the card's real init (static).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{self, CmdError};

/// Library paths from `ldd` output; empty for a static binary.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            out.push(PathBuf::from(p));
        }
    }
    out
}

/// `(host path, image path)` pairs for `binary` and its libraries.
pub fn with_libraries(binary: &Path) -> Result<Vec<(PathBuf, String)>, CmdError> {
    let mut pairs = vec![(binary.to_path_buf(), binary.to_string_lossy().into_owned())];
    // ldd exits 1 for static binaries ("not a dynamic executable").
    let text = match cmd::run(Command::new("ldd").arg(binary)) {
        Ok(t) => t,
        Err(CmdError::Failed { .. }) => String::new(),
        Err(e) => return Err(e),
    };
    for lib in parse_ldd(&text) {
        let dst = lib.to_string_lossy().into_owned();
        pairs.push((lib, dst));
    }
    Ok(pairs)
}

/// [`with_libraries`] for several binaries, each file once (shared libraries repeat).
pub fn all_with_libraries(binaries: &[&Path]) -> Result<Vec<(PathBuf, String)>, CmdError> {
    let mut out: Vec<(PathBuf, String)> = Vec::new();
    for b in binaries {
        for pair in with_libraries(b)? {
            if !out.iter().any(|(_, dst)| *dst == pair.1) {
                out.push(pair);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_parses() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }
}
