//! Log lines of the `master` binary: env_logger's usual format on a terminal or in a file;
//! when stderr is the systemd journal, one `<N>`-prefixed line per message line and no
//! timestamp of our own (the journal stamps each line and reads the priority from the
//! prefix, see sd-daemon(3)).
//!
//! Stderr is the journal when `JOURNAL_STREAM` (set by systemd for a service whose output
//! goes there) names the device and inode of the file stderr is. A child that inherits the
//! variable but not the stream (output redirected) keeps the plain format.

use std::io::Write;

/// Whether stderr is the journal stream that `JOURNAL_STREAM` names.
pub fn stderr_is_journal() -> bool {
    let Ok(env) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    // fstat of fd 2 through procfs: stat follows the link to the open file (the socket the
    // journal gave us), so no unsafe fd handling is needed here.
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            journal_stream_matches(&env, m.dev(), m.ino())
        }
        Err(_) => false,
    }
}

/// Whether `JOURNAL_STREAM`'s value (`DEVICE:INODE`, both decimal) names `dev`/`ino`.
pub fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// The syslog priority of a log level (sd-daemon(3): 3 error, 4 warning, 6 info, 7 debug).
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// A message as journal lines: every line carries the prefix (the journal splits on
/// newlines and would log the continuation lines at the default priority).
pub fn journal_lines(level: log::Level, message: &str) -> String {
    let p = priority(level);
    let mut out = String::with_capacity(message.len() + 4);
    for line in message.split('\n') {
        out.push_str(&format!("<{p}>{line}\n"));
    }
    out
}

/// Sets up the logger: `verbose` 0 warn, 1 info, 2+ debug; `RUST_LOG` refines it.
pub fn init(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    let mut b = env_logger::Builder::new();
    b.filter_level(level)
        // The solver logs every decision at info level.
        .filter_module("pubgrub", log::LevelFilter::Warn)
        .parse_default_env();
    if stderr_is_journal() {
        b.format(|buf, record| {
            buf.write_all(journal_lines(record.level(), &record.args().to_string()).as_bytes())
        });
    }
    b.init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(journal_stream_matches("8:12345\n", 8, 12345));
        assert!(!journal_stream_matches("8:12346", 8, 12345));
        assert!(!journal_stream_matches("9:12345", 8, 12345));
        assert!(!journal_stream_matches("812345", 8, 12345));
        assert!(!journal_stream_matches("", 8, 12345));
        assert!(!journal_stream_matches("x:y", 8, 12345));
    }

    #[test]
    fn journal_lines_carry_the_priority_on_every_line_and_no_timestamp() {
        assert_eq!(
            journal_lines(log::Level::Error, "master: send failed"),
            "<3>master: send failed\n"
        );
        assert_eq!(journal_lines(log::Level::Warn, "a\nb"), "<4>a\n<4>b\n");
        assert_eq!(journal_lines(log::Level::Info, "serving"), "<6>serving\n");
        assert_eq!(journal_lines(log::Level::Debug, "x"), "<7>x\n");
        assert_eq!(journal_lines(log::Level::Trace, "x"), "<7>x\n");
    }

    #[test]
    fn our_stderr_is_not_a_journal_stream_named_for_another_file() {
        // The test's stderr is whatever cargo gave it; a JOURNAL_STREAM naming inode 0
        // cannot be it (no file has inode 0).
        let m = std::fs::metadata("/proc/self/fd/2").unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(!journal_stream_matches(
            &format!("{}:0", m.dev()),
            m.dev(),
            m.ino()
        ));
        assert!(journal_stream_matches(
            &format!("{}:{}", m.dev(), m.ino()),
            m.dev(),
            m.ino()
        ));
    }
}
