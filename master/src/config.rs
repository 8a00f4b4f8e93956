//! The master's configuration file, `/etc/shelfboot/master.toml` by default (`--config PATH`
//! names another): the state directory and the settings of `master serve`. Flags (and
//! `SHELFBOOT_STATE`) override the file; the file overrides the built-in defaults.
//!
//! ```toml
//! state = "/var/lib/shelfboot/master"
//! iface = "bp0"
//! max_rate_mbs = 125
//! join_window_ms = 300
//! absence_secs = 10
//! control_group = "shelfboot"
//! metrics = "127.0.0.1:9464"
//! ```
//!
//! Every key is optional; an unknown key, a value of the wrong type or out of range is an
//! error that names the file, the line and the key. The default file may be absent; a file
//! named with `--config` must exist.
//!
//! This module reads and checks the file only; [`crate::serve::cli`] applies it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

/// Where the master looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/shelfboot/master.toml";

/// The keys a configuration file may set, with what each means (for the error of an
/// unknown key and for the documentation).
pub const KEYS: [(&str, &str); 9] = [
    ("state", "state directory (absolute path)"),
    ("iface", "backplane interface served by `master serve`"),
    ("key", "plan-signing key file (absolute path)"),
    ("max_rate_mbs", "rate ceiling per transfer session, MB/s"),
    (
        "join_window_ms",
        "join window of a new transfer session, ms",
    ),
    (
        "absence_secs",
        "a card not heard for this long is recorded absent, s",
    ),
    ("control_group", "group also allowed on the control socket"),
    ("metrics", "ADDR:PORT of the Prometheus endpoint"),
    (
        "metrics_allow_remote",
        "serve metrics on a non-loopback address",
    ),
];

/// The settings a configuration file gave (`None`: the key is absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileConfig {
    /// The file these came from (`None`: no file was read).
    pub path: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub iface: Option<String>,
    pub key: Option<PathBuf>,
    pub max_rate_mbs: Option<u64>,
    pub join_window_ms: Option<u64>,
    pub absence_secs: Option<u64>,
    pub control_group: Option<String>,
    pub metrics: Option<SocketAddr>,
    pub metrics_allow_remote: Option<bool>,
}

/// Failures reading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: not valid TOML: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}:{line}: unknown key `{key}` (known keys: {known})")]
    UnknownKey {
        path: PathBuf,
        line: usize,
        key: String,
        known: String,
    },
    #[error("{path}:{line}: key `{key}`: {problem}")]
    BadValue {
        path: PathBuf,
        line: usize,
        key: String,
        problem: String,
    },
}

/// Reads the configuration: `explicit` if given (it must exist), else [`DEFAULT_PATH`] if
/// it exists, else nothing.
pub fn load(explicit: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let (path, must_exist) = match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_PATH), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&path, &text),
        Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => {
            Ok(FileConfig::default())
        }
        Err(source) => Err(ConfigError::Read { path, source }),
    }
}

/// Parses and checks the text of the configuration file `path`.
pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let line_of = |span: Range<usize>| line_col(text, span.start);
    // Keys and values with their spans, so that every error below can name a line.
    let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), line_of);
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim().replace('\n', "; "),
            }
        })?;
    let mut cfg = FileConfig {
        path: Some(path.to_path_buf()),
        ..FileConfig::default()
    };
    for (key, value) in table {
        let (line, _) = line_of(key.span());
        let bad = |problem: String| ConfigError::BadValue {
            path: path.to_path_buf(),
            line,
            key: key.get_ref().clone(),
            problem,
        };
        let v = value.into_inner();
        match key.get_ref().as_str() {
            "state" => cfg.state = Some(absolute_path(&v).map_err(bad)?),
            "key" => cfg.key = Some(absolute_path(&v).map_err(bad)?),
            "iface" => {
                let s = string(&v).map_err(bad)?;
                // IFNAMSIZ is 16 with the terminating NUL.
                if s.is_empty() || s.len() > 15 || s.contains(['/', ' ']) {
                    return Err(bad(format!(
                        "`{s}` is not an interface name (1 to 15 characters, no '/' or space)"
                    )));
                }
                cfg.iface = Some(s);
            }
            "max_rate_mbs" => {
                let n = integer(&v).map_err(bad)?;
                if n == 0 {
                    return Err(bad("the rate must be at least 1 MB/s".into()));
                }
                cfg.max_rate_mbs = Some(n);
            }
            "join_window_ms" => cfg.join_window_ms = Some(integer(&v).map_err(bad)?),
            "absence_secs" => {
                let n = integer(&v).map_err(bad)?;
                if n == 0 {
                    return Err(bad(
                        "the absence interval must be at least 1 s; give several of the cards' Alive intervals (2 s by default), e.g. 10".into(),
                    ));
                }
                cfg.absence_secs = Some(n);
            }
            "control_group" => {
                let s = string(&v).map_err(bad)?;
                if s.is_empty() {
                    return Err(bad("the group name is empty".into()));
                }
                cfg.control_group = Some(s);
            }
            "metrics" => {
                let s = string(&v).map_err(bad)?;
                let addr = s.parse::<SocketAddr>().map_err(|e| {
                    bad(format!(
                        "`{s}` is not ADDR:PORT (e.g. \"127.0.0.1:9464\" or \"[::1]:9464\"): {e}"
                    ))
                })?;
                cfg.metrics = Some(addr);
            }
            "metrics_allow_remote" => match v {
                toml::Value::Boolean(b) => cfg.metrics_allow_remote = Some(b),
                other => return Err(bad(expected("true or false", &other))),
            },
            other => {
                return Err(ConfigError::UnknownKey {
                    path: path.to_path_buf(),
                    line,
                    key: other.to_owned(),
                    known: KEYS.map(|(k, _)| k).join(", "),
                });
            }
        }
    }
    Ok(cfg)
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn expected(what: &str, found: &toml::Value) -> String {
    format!("expected {what}, found {} {found}", found.type_str())
}

fn string(v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        other => Err(expected("a string", other)),
    }
}

fn integer(v: &toml::Value) -> Result<u64, String> {
    match v {
        toml::Value::Integer(i) => {
            u64::try_from(*i).map_err(|_| format!("expected a non-negative integer, found {i}"))
        }
        other => Err(expected("an integer", other)),
    }
}

fn absolute_path(v: &toml::Value) -> Result<PathBuf, String> {
    let s = string(v)?;
    let p = PathBuf::from(&s);
    if !p.is_absolute() {
        return Err(format!(
            "`{s}` is a relative path; write it from / (the master's working directory is not fixed)"
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<FileConfig, ConfigError> {
        parse(Path::new("/etc/shelfboot/master.toml"), text)
    }

    #[test]
    fn every_key_is_read() {
        let c = p(r#"
# the lab master
state = "/srv/shelfboot"
iface = "bp0"
key = "/etc/shelfboot/plan.key"
max_rate_mbs = 40
join_window_ms = 500
absence_secs = 30
control_group = "shelfboot"
metrics = "[::1]:9464"
metrics_allow_remote = false
"#)
        .unwrap();
        assert_eq!(
            c,
            FileConfig {
                path: Some("/etc/shelfboot/master.toml".into()),
                state: Some("/srv/shelfboot".into()),
                iface: Some("bp0".into()),
                key: Some("/etc/shelfboot/plan.key".into()),
                max_rate_mbs: Some(40),
                join_window_ms: Some(500),
                absence_secs: Some(30),
                control_group: Some("shelfboot".into()),
                metrics: Some("[::1]:9464".parse().unwrap()),
                metrics_allow_remote: Some(false),
            }
        );
        assert_eq!(KEYS.len(), 9, "KEYS lists every key parse accepts");
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../systemd/master.toml");
        let c = parse(Path::new("master/systemd/master.toml"), text).unwrap();
        assert_eq!(c.iface.as_deref(), Some("bp0"));
        assert_eq!(
            c.state.as_deref(),
            Some(Path::new("/var/lib/shelfboot/master"))
        );
        // Its commented keys are valid too.
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| r.contains(" = "))
                    .unwrap_or(l)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(Path::new("uncommented"), &uncommented).unwrap();
        assert_eq!(c.control_group.as_deref(), Some("shelfboot"));
        assert_eq!(c.metrics, Some("127.0.0.1:9464".parse().unwrap()));
    }

    #[test]
    fn an_empty_file_sets_nothing() {
        let c = p("# nothing yet\n").unwrap();
        assert_eq!(c.state, None);
        assert_eq!(c.iface, None);
        assert_eq!(c.metrics, None);
    }

    #[test]
    fn an_unknown_key_names_file_line_and_key() {
        let e = p("iface = \"bp0\"\n\nmax_rate = 40\n").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("/etc/shelfboot/master.toml:3: unknown key `max_rate`"),
            "{msg}"
        );
        assert!(msg.contains("max_rate_mbs"), "lists the known keys: {msg}");
        // A table is a key too.
        let e = p("[serve]\niface = \"bp0\"\n").unwrap_err();
        assert!(
            matches!(&e, ConfigError::UnknownKey { line: 1, key, .. } if key == "serve"),
            "{e}"
        );
    }

    #[test]
    fn each_bad_value_names_file_line_and_key() {
        let cases: [(&str, usize, &str, &str); 12] = [
            (
                "max_rate_mbs = \"fast\"",
                1,
                "max_rate_mbs",
                "expected an integer",
            ),
            ("max_rate_mbs = 0", 1, "max_rate_mbs", "at least 1 MB/s"),
            ("\njoin_window_ms = -5", 2, "join_window_ms", "non-negative"),
            ("join_window_ms = 1.5", 1, "join_window_ms", "found float"),
            ("state = \"var/lib\"", 1, "state", "relative path"),
            ("state = 7", 1, "state", "expected a string"),
            ("key = \"plan.key\"", 1, "key", "relative path"),
            ("iface = \"\"", 1, "iface", "not an interface name"),
            (
                "iface = \"a-very-long-name0\"",
                1,
                "iface",
                "not an interface name",
            ),
            ("control_group = \"\"", 1, "control_group", "empty"),
            ("\n\nmetrics = \"localhost\"", 3, "metrics", "not ADDR:PORT"),
            (
                "metrics_allow_remote = \"yes\"",
                1,
                "metrics_allow_remote",
                "true or false",
            ),
        ];
        for (text, line_want, key_want, problem_want) in cases {
            match p(text) {
                Err(ConfigError::BadValue {
                    path,
                    line,
                    key,
                    problem,
                }) => {
                    assert_eq!(path, Path::new("/etc/shelfboot/master.toml"), "{text}");
                    assert_eq!((line, key.as_str()), (line_want, key_want), "{text}");
                    assert!(problem.contains(problem_want), "{text}: {problem}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_syntax_error_names_file_line_and_column() {
        let e = p("iface = \"bp0\"\nmax_rate_mbs = = 3\n").unwrap_err();
        match &e {
            ConfigError::Syntax { line, column, .. } => {
                assert_eq!((*line, *column), (2, 16), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            e.to_string(),
            "/etc/shelfboot/master.toml:2:16: not valid TOML: invalid string; expected `\"`, `'`"
        );
        // The same key twice is a TOML error too.
        let e = p("iface = \"a\"\niface = \"b\"\n").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { line: 2, .. }), "{e}");
    }

    #[test]
    fn a_missing_default_file_is_no_configuration_but_a_named_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("master.toml");
        let e = load(Some(&missing)).unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "cannot read configuration file {}",
                missing.display()
            )),
            "{e}"
        );
        std::fs::write(&missing, "iface = \"bp1\"\n").unwrap();
        let c = load(Some(&missing)).unwrap();
        assert_eq!(c.iface.as_deref(), Some("bp1"));
        assert_eq!(c.path.as_deref(), Some(missing.as_path()));
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 99), (1, 3));
    }
}
