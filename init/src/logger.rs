//! A `log::Log` for a system with no userspace: `<level>`-prefixed lines to `/dev/kmsg`
//! and plain lines to the console.
//!
//! The kernel prints kmsg lines on the console itself when their level is below the
//! console loglevel (`/proc/sys/kernel/printk`, first field), so the logger only writes to
//! the console what the kernel would *not* print: no duplicates, nothing lost. That needs
//! kmsg's rate limit off (`/proc/sys/kernel/printk_devkmsg` = on, set at attach); when it
//! cannot be turned off, every line also goes to the console. Before
//! devtmpfs is mounted (or when `/dev/kmsg` cannot be opened, e.g. in check mode) every
//! line goes to the console. Not here: log files, rate limiting, remote logging.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The syslog priority of a `log` level (kmsg `<N>` prefix).
pub fn syslog_level(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Formats one kmsg record: `<N>shelfboot-init: message`. kmsg takes one record per
/// write; embedded newlines would be split by the kernel, so they are replaced.
pub fn kmsg_line(level: Level, msg: &str) -> String {
    format!(
        "<{}>shelfboot-init: {}\n",
        syslog_level(level),
        msg.replace('\n', " | ")
    )
}

/// Formats one console line.
pub fn console_line(level: Level, msg: &str) -> String {
    format!("shelfboot-init: {:<5} {}\n", level, msg)
}

/// The logger; install with [`install`].
#[derive(Debug)]
pub struct KmsgLogger {
    kmsg: Mutex<Option<File>>,
    /// Kernel console loglevel; 0 means "the kernel prints none of our lines".
    console_level: AtomicU8,
}

static LOGGER: KmsgLogger = KmsgLogger::new();

impl Default for KmsgLogger {
    fn default() -> Self {
        Self::new()
    }
}

/// Installs the logger as the global `log` logger at `Debug`. Safe to call once; a second
/// call is ignored.
pub fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Debug);
    }
}

/// (Re)opens `/dev/kmsg` under `dev` and reads the console loglevel from `proc`, once the
/// bring-up mounted them.
pub fn attach_kernel(dev: &Path, proc: &Path) {
    LOGGER.attach(dev, proc);
}

impl KmsgLogger {
    /// A logger writing to the console only, until [`attach_kernel`].
    pub const fn new() -> Self {
        KmsgLogger {
            kmsg: Mutex::new(None),
            console_level: AtomicU8::new(0),
        }
    }

    fn attach(&self, dev: &Path, proc: &Path) {
        let file = OpenOptions::new().write(true).open(dev.join("kmsg")).ok();
        // /dev/kmsg rate-limits userspace writers by default (10 lines per 5 s) and drops
        // the rest *while reporting success*: turn that off (as systemd does). If the
        // command line locked it (printk.devkmsg=), print everything on the console.
        let devkmsg = proc.join("sys/kernel/printk_devkmsg");
        let unlimited = std::fs::write(&devkmsg, "on\n").is_ok()
            || std::fs::read_to_string(&devkmsg).is_ok_and(|s| s.trim() == "on");
        let opened = file.is_some() && unlimited;
        if let Ok(mut k) = self.kmsg.lock() {
            *k = file;
        }
        let level = std::fs::read_to_string(proc.join("sys/kernel/printk"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|f| f.parse().ok()))
            .unwrap_or(0);
        self.console_level
            .store(if opened { level } else { 0 }, Ordering::Relaxed);
    }
}

impl Log for KmsgLogger {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        let msg = record.args().to_string();
        let level = record.level();
        let mut to_kmsg = false;
        if let Ok(mut guard) = self.kmsg.lock()
            && let Some(f) = guard.as_mut()
        {
            to_kmsg = f.write_all(kmsg_line(level, &msg).as_bytes()).is_ok();
        }
        let kernel_prints =
            to_kmsg && syslog_level(level) < self.console_level.load(Ordering::Relaxed);
        if !kernel_prints {
            let mut out = std::io::stdout().lock();
            // Nowhere left to report a failed console write.
            let _ = out.write_all(console_line(level, &msg).as_bytes());
            let _ = out.flush();
        }
    }

    fn flush(&self) {
        let _ = std::io::stdout().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmsg_records_carry_the_syslog_level_and_stay_one_line() {
        assert_eq!(kmsg_line(Level::Error, "x"), "<3>shelfboot-init: x\n");
        assert_eq!(kmsg_line(Level::Info, "a\nb"), "<6>shelfboot-init: a | b\n");
        assert_eq!(syslog_level(Level::Warn), 4);
        assert_eq!(console_line(Level::Warn, "m"), "shelfboot-init: WARN  m\n");
    }

    #[test]
    fn attach_lifts_the_rate_limit_and_writes_records_to_kmsg() {
        let t = tempfile::tempdir().unwrap();
        let (dev, proc) = (t.path().join("dev"), t.path().join("proc"));
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::create_dir_all(proc.join("sys/kernel")).unwrap();
        std::fs::write(dev.join("kmsg"), "").unwrap();
        std::fs::write(proc.join("sys/kernel/printk"), "4\t4\t1\t7\n").unwrap();
        std::fs::write(proc.join("sys/kernel/printk_devkmsg"), "ratelimit\n").unwrap();
        let l = KmsgLogger::new();
        l.attach(&dev, &proc);
        assert_eq!(
            std::fs::read_to_string(proc.join("sys/kernel/printk_devkmsg")).unwrap(),
            "on\n"
        );
        assert_eq!(l.console_level.load(Ordering::Relaxed), 4);
        l.log(
            &Record::builder()
                .level(Level::Error)
                .args(format_args!("boom"))
                .build(),
        );
        l.log(
            &Record::builder()
                .level(Level::Info)
                .args(format_args!("fine"))
                .build(),
        );
        assert_eq!(
            std::fs::read_to_string(dev.join("kmsg")).unwrap(),
            "<3>shelfboot-init: boom\n<6>shelfboot-init: fine\n"
        );
        // Without a kmsg device everything goes to the console: level 0 means "kernel
        // prints nothing of ours".
        let l = KmsgLogger::new();
        l.attach(&t.path().join("nodev"), &proc);
        assert_eq!(l.console_level.load(Ordering::Relaxed), 0);
    }
}
