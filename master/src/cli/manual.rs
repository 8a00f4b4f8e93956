//! Shell completions and man pages, generated from the clap definitions in [`super`], so
//! that the help text, the completions and the manual cannot disagree.
//!
//! * `master completions SHELL` prints the completion script for bash, zsh, fish (or
//!   elvish, PowerShell) on stdout.
//! * `master man DIR` (hidden: packaging runs it) writes one page per command into DIR:
//!   `master.1`, `master-import.1`, `master-trust-add.1`, ... Hidden commands get none
//!   (the bash script still offers `man`: clap_complete's bash generator lists hidden
//!   subcommands).
//!
//! This module does not install anything: `./dev package` puts the files where Debian
//! looks for them (see docs/master.md, "Package").

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// The program name the completions and pages are written for.
const BIN: &str = "master";

/// Errors writing man pages.
#[derive(Debug, thiserror::Error)]
pub enum ManualError {
    #[error("cannot create the man page directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write man page {path}")]
    Page {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the {shell} completion script")]
    Completions {
        shell: Shell,
        #[source]
        source: io::Error,
    },
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: Shell, out: &mut dyn Write) -> Result<(), ManualError> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN, &mut buf);
    out.write_all(&buf)
        .map_err(|source| ManualError::Completions { shell, source })
}

/// Writes a section-1 man page for `master` and for every visible subcommand into `dir`
/// (created if missing); returns the files written, the top page first.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>, ManualError> {
    fs::create_dir_all(dir).map_err(|source| ManualError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Propagates global arguments and gives each subcommand its display name
    // (`master-trust-add`), which becomes the page's name.
    cmd.build();
    let source = format!("shelfboot {}", env!("CARGO_PKG_VERSION"));
    let mut written = Vec::new();
    let mut todo = vec![cmd];
    while let Some(cmd) = todo.pop() {
        let page = clap_mangen::Man::new(cmd.clone())
            .source(source.clone())
            .manual("shelfboot manual");
        let path = dir.join(page.get_filename());
        let mut text = Vec::new();
        let rendered = page.render(&mut text).and_then(|()| fs::write(&path, text));
        rendered.map_err(|source| ManualError::Page {
            path: path.clone(),
            source,
        })?;
        written.push(path);
        let mut subs: Vec<_> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .cloned()
            .collect();
        subs.reverse();
        todo.extend(subs);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_visible_command_gets_a_page_named_after_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let pages = write_man_pages(dir.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names[0], "master.1");
        for want in [
            "master-import.1",
            "master-trust-add.1",
            "master-node-class.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        // Hidden commands and clap's `help` get no page.
        assert!(
            !names
                .iter()
                .any(|n| n == "master-man.1" || n.contains("help"))
        );
        for sub in Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
        {
            let want = format!("master-{}.1", sub.get_name());
            assert!(names.contains(&want), "{want} missing: {names:?}");
        }
        let import = fs::read_to_string(dir.path().join("master-import.1")).unwrap();
        assert!(import.starts_with(".ie"), "not roff: {import:.80}");
        assert!(import.contains("no\\-activate"), "{import}");
        assert!(import.contains(env!("CARGO_PKG_VERSION")), "{import}");
    }

    #[test]
    fn completions_name_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(shell, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            // Subcommands and a global option (fish spells it `-l state`).
            for word in ["import", "warm-boot", "state", "completions"] {
                assert!(text.contains(word), "{shell}: {word} missing");
            }
        }
    }
}
