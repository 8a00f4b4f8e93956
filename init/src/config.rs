//! Configuration from the kernel command line, parsed once into [`Config`].
//!
//! Keys are `shelfboot.<name>=<value>`; the command line file and the sysfs/procfs roots
//! are parameters so tests (and check mode) can use any file. A key that is missing falls
//! back to what the hardware says: the card type from DMI (`/sys/class/dmi/id/product_name`,
//! `board_name`) or the device tree (`/proc/device-tree/compatible`, `model`). A bad value
//! is an error naming the key, the value and what was expected; an unknown `shelfboot.*`
//! key is reported as a warning (a newer master may hand a newer command line to an older
//! init). Not here: argv (PID 1 gets no useful argv), config files.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default EtherType of the backplane protocol (IEEE local experimental 1).
pub const DEFAULT_ETHERTYPE: u16 = 0x88B5;

/// Which MTD device holds the card's UBI flash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MtdSelector {
    /// `/dev/mtdN`.
    Number(u32),
    /// The MTD device whose `/sys/class/mtd/mtdN/name` equals this.
    Name(String),
}

impl fmt::Display for MtdSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MtdSelector::Number(n) => write!(f, "mtd{n}"),
            MtdSelector::Name(n) => write!(f, "mtd named {n:?}"),
        }
    }
}

/// Where a value came from (printed in check mode and in the boot log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The kernel command line.
    Cmdline,
    /// `/sys/class/dmi/id/*`.
    Dmi,
    /// `/proc/device-tree/*`.
    DeviceTree,
    /// Built-in default.
    Default,
}

/// The parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Backplane interface name; `None`: first non-loopback link with carrier.
    pub iface: Option<String>,
    /// Card type reported to the master.
    pub card: String,
    /// Where `card` came from.
    pub card_source: Source,
    /// Slot number in the shelf.
    pub slot: Option<u16>,
    /// Shelf number.
    pub shelf: Option<u16>,
    /// Features the card asks for.
    pub features: Vec<String>,
    /// The flash device.
    pub mtd: MtdSelector,
    /// EtherType of the backplane protocol.
    pub ethertype: u16,
    /// MTU set on the backplane link when it is brought up (`shelfboot.mtu=`, for a
    /// jumbo-frame backplane); `None` leaves the link's own (1500 on most NICs).
    pub mtu: Option<u16>,
    /// How long to wait for a master before booting the committed set alone.
    pub master_timeout: Duration,
    /// How long to wait for carrier on the backplane link.
    pub carrier_timeout: Duration,
    /// After a master's BurnNow ("prepare"): longest wait for its warm boot, with the set
    /// committed and Ready sent, before handing off alone (`shelfboot.hold=SECONDS`).
    pub hold: Duration,
    /// We run a kexec'd stored image: validate only.
    pub stored: bool,
    /// We run a RAM set's boot image kexec'd from RAM (`shelfboot.test=1`; test mode, a
    /// RAM-first plan or a card without usable flash): use the RAM store carried in the
    /// initramfs, validate only, never kexec again, never count.
    pub test: bool,
    /// Boots of a new set that may fail to reach Ready before rolling back.
    pub maxtries: u32,
    /// Erase an MTD device that carries no UBI header at all before attaching.
    pub format_pristine: bool,
    /// Arm the hardware watchdog (`/dev/watchdog`) with this timeout in seconds
    /// (`shelfboot.watchdog=SECONDS`; absent or 0: not armed). init feeds it while it
    /// runs, the resident agent after the hand-off; it must outlast a kexec.
    pub watchdog: Option<u32>,
    /// Interval of the resident agent's Alive messages (`shelfboot.alive=`).
    pub alive: Duration,
    /// The health command of a set (`shelfboot.health=PATH`, in the release's command
    /// line): run by the resident agent in the package root until it exits 0. A set that
    /// names one is marked good only then; without one, at Ready, as before.
    pub health: Option<String>,
    /// How long the health command may take to succeed after the hand-off
    /// (`shelfboot.health_deadline=`) before the card rolls back on its own.
    pub health_deadline: Duration,
    /// Unknown `shelfboot.*` keys (warned about, otherwise ignored).
    pub unknown_keys: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            iface: None,
            card: "unknown".to_string(),
            card_source: Source::Default,
            slot: None,
            shelf: None,
            features: Vec::new(),
            mtd: MtdSelector::Number(0),
            ethertype: DEFAULT_ETHERTYPE,
            mtu: None,
            master_timeout: Duration::from_secs(30),
            carrier_timeout: Duration::from_secs(10),
            hold: Duration::from_secs(600),
            stored: false,
            test: false,
            maxtries: 3,
            format_pristine: true,
            watchdog: None,
            alive: Duration::from_secs(2),
            health: None,
            health_deadline: Duration::from_secs(60),
            unknown_keys: Vec::new(),
        }
    }
}

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The command line file could not be read.
    #[error("cannot read the kernel command line from {path}")]
    Read {
        /// The file (normally /proc/cmdline).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A quote was opened and never closed.
    #[error("kernel command line has an unterminated quote starting at byte {at}")]
    Unterminated {
        /// Byte offset of the opening quote.
        at: usize,
    },
    /// A value does not parse.
    #[error("bad value {value:?} for {key}: expected {expected}")]
    BadValue {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
}

/// Splits a command line into `(key, value)` pairs the way the kernel does: whitespace
/// separates parameters, double quotes protect spaces (and are removed).
pub fn split_cmdline(text: &str) -> Result<Vec<(String, Option<String>)>, ConfigError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quote: Option<usize> = None;
    let mut has_token = false;
    for (i, ch) in text.char_indices() {
        match ch {
            '"' => {
                in_quote = if in_quote.is_some() { None } else { Some(i) };
                has_token = true;
            }
            c if c.is_whitespace() && in_quote.is_none() => {
                if has_token {
                    out.push(split_kv(&cur));
                    cur.clear();
                    has_token = false;
                }
            }
            c => {
                cur.push(c);
                has_token = true;
            }
        }
    }
    if let Some(at) = in_quote {
        return Err(ConfigError::Unterminated { at });
    }
    if has_token {
        out.push(split_kv(&cur));
    }
    Ok(out)
}

fn split_kv(tok: &str) -> (String, Option<String>) {
    match tok.split_once('=') {
        Some((k, v)) => (k.to_string(), Some(v.to_string())),
        None => (tok.to_string(), None),
    }
}

fn bad(key: &str, value: &str, expected: &'static str) -> ConfigError {
    ConfigError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        expected,
    }
}

/// Parses `30`, `30s`, `500ms`, `2m` (a bare number is seconds).
pub fn parse_duration(key: &str, v: &str) -> Result<Duration, ConfigError> {
    const EXPECTED: &str = "a duration like 30, 30s, 500ms or 2m";
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad(key, v, EXPECTED))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| bad(key, v, EXPECTED)),
        _ => Err(bad(key, v, EXPECTED)),
    }
}

fn parse_u16(key: &str, v: &str, expected: &'static str) -> Result<u16, ConfigError> {
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.map_err(|_| bad(key, v, expected))
}

fn parse_bool(key: &str, v: Option<&str>) -> Result<bool, ConfigError> {
    match v {
        None | Some("1") | Some("y") | Some("yes") | Some("true") => Ok(true),
        Some("0") | Some("n") | Some("no") | Some("false") => Ok(false),
        Some(other) => Err(bad(key, other, "1 or 0")),
    }
}

fn need<'a>(key: &str, v: Option<&'a str>, expected: &'static str) -> Result<&'a str, ConfigError> {
    match v {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(bad(key, v.unwrap_or(""), expected)),
    }
}

/// What the hardware says about itself (fallbacks for missing keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hardware {
    /// DMI product name or board name.
    pub dmi: Option<String>,
    /// First device-tree `compatible` string, else `model`.
    pub device_tree: Option<String>,
}

fn read_attr(path: &Path) -> Option<String> {
    let raw = fs::read(path).ok()?;
    // Device-tree strings are NUL-separated lists; DMI attributes end in '\n'.
    let first = raw.split(|&b| b == 0).next()?;
    let s = String::from_utf8_lossy(first).trim().to_string();
    // Placeholders firmware vendors leave in DMI.
    let placeholder = [
        "",
        "To Be Filled By O.E.M.",
        "Default string",
        "Not Specified",
    ];
    (!placeholder.contains(&s.as_str())).then_some(s)
}

impl Hardware {
    /// Reads DMI under `sys` (normally `/sys`) and the device tree under `proc`.
    pub fn probe(sys: &Path, proc: &Path) -> Self {
        let dmi = read_attr(&sys.join("class/dmi/id/product_name"))
            .or_else(|| read_attr(&sys.join("class/dmi/id/board_name")));
        let device_tree = read_attr(&proc.join("device-tree/compatible"))
            .or_else(|| read_attr(&proc.join("device-tree/model")));
        Hardware { dmi, device_tree }
    }
}

impl Config {
    /// The command line a stored image is kexec'd with: the plan's, plus this card's own
    /// keys the plan cannot know (type from the command line, shelf, slot, features,
    /// interface, master timeout, prepare hold), each unless the plan sets it already.
    pub fn carried_cmdline(&self, plan: &str) -> String {
        let cfg = self;
        let mut keys: Vec<(&str, String)> = Vec::new();
        if cfg.card_source == Source::Cmdline {
            keys.push(("card", cfg.card.clone()));
        }
        if let Some(s) = cfg.shelf {
            keys.push(("shelf", s.to_string()));
        }
        if let Some(s) = cfg.slot {
            keys.push(("slot", s.to_string()));
        }
        if !cfg.features.is_empty() {
            keys.push(("features", cfg.features.join(",")));
        }
        if let Some(i) = &cfg.iface {
            keys.push(("iface", i.clone()));
        }
        if let Some(m) = cfg.mtu {
            keys.push(("mtu", m.to_string()));
        }
        if cfg.master_timeout != Config::default().master_timeout {
            keys.push((
                "master_timeout",
                format!("{}ms", cfg.master_timeout.as_millis()),
            ));
        }
        if cfg.hold != Config::default().hold {
            keys.push(("hold", format!("{}ms", cfg.hold.as_millis())));
        }
        if let Some(w) = cfg.watchdog {
            keys.push(("watchdog", w.to_string()));
        }
        if cfg.alive != Config::default().alive {
            keys.push(("alive", format!("{}ms", cfg.alive.as_millis())));
        }
        let mut out = plan.trim().to_string();
        for (k, v) in keys {
            let prefix = format!("shelfboot.{k}=");
            if !plan.split_whitespace().any(|w| w.starts_with(&prefix)) {
                out.push_str(&format!(" {prefix}{v}"));
            }
        }
        out
    }

    /// Parses the command line text, filling gaps from `hw`.
    pub fn parse(cmdline: &str, hw: &Hardware) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let mut card_given = false;
        for (key, value) in split_cmdline(cmdline)? {
            let Some(name) = key.strip_prefix("shelfboot.") else {
                continue;
            };
            let v = value.as_deref();
            match name {
                "iface" => c.iface = Some(need(&key, v, "an interface name")?.to_string()),
                "card" => {
                    c.card = need(&key, v, "a card type")?.to_string();
                    card_given = true;
                }
                "slot" => {
                    c.slot = Some(parse_u16(
                        &key,
                        need(&key, v, "a slot number")?,
                        "a slot number 0-65535",
                    )?)
                }
                "shelf" => {
                    c.shelf = Some(parse_u16(
                        &key,
                        need(&key, v, "a shelf number")?,
                        "a shelf number 0-65535",
                    )?)
                }
                "features" => {
                    c.features = v
                        .unwrap_or("")
                        .split(',')
                        .filter(|f| !f.is_empty())
                        .map(str::to_string)
                        .collect();
                }
                "mtd" => {
                    let s = need(&key, v, "an MTD number or name")?;
                    c.mtd = match s.strip_prefix("mtd").unwrap_or(s).parse() {
                        Ok(n) => MtdSelector::Number(n),
                        Err(_) => MtdSelector::Name(s.to_string()),
                    };
                }
                "ethertype" => {
                    const EXPECTED: &str = "an EtherType from 0x0600 to 0xffff";
                    let e = parse_u16(&key, need(&key, v, EXPECTED)?, EXPECTED)?;
                    if e < 0x0600 {
                        return Err(bad(&key, v.unwrap_or(""), EXPECTED));
                    }
                    c.ethertype = e;
                }
                "mtu" => {
                    const EXPECTED: &str = "an MTU from 1280 to 9000";
                    let s = need(&key, v, EXPECTED)?;
                    c.mtu = Some(
                        s.parse()
                            .ok()
                            .filter(|m| {
                                (shelfboot_proto::MIN_MTU..=shelfboot_proto::MAX_MTU).contains(m)
                            })
                            .ok_or_else(|| bad(&key, s, EXPECTED))?,
                    );
                }
                "master_timeout" => {
                    c.master_timeout = parse_duration(&key, need(&key, v, "a duration")?)?;
                }
                "carrier_timeout" => {
                    c.carrier_timeout = parse_duration(&key, need(&key, v, "a duration")?)?;
                }
                "hold" => c.hold = parse_duration(&key, need(&key, v, "a duration")?)?,
                "stored" => c.stored = parse_bool(&key, v)?,
                "test" => c.test = parse_bool(&key, v)?,
                "format" => c.format_pristine = parse_bool(&key, v)?,
                "maxtries" => {
                    const EXPECTED: &str = "a number of tries from 1 to 100";
                    let s = need(&key, v, EXPECTED)?;
                    c.maxtries = s
                        .parse()
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or_else(|| bad(&key, s, EXPECTED))?;
                }
                "watchdog" => {
                    // Fed once a second; shorter than 10 s it could not outlast a boot.
                    const EXPECTED: &str = "a watchdog timeout in seconds: 0 (off) or 10 to 2000";
                    let s = need(&key, v, EXPECTED)?;
                    let t: u32 = s
                        .parse()
                        .ok()
                        .filter(|n| *n == 0 || (10..=2000).contains(n))
                        .ok_or_else(|| bad(&key, s, EXPECTED))?;
                    c.watchdog = (t > 0).then_some(t);
                }
                "alive" => {
                    let d = parse_duration(&key, need(&key, v, "a duration")?)?;
                    if d < Duration::from_millis(100) {
                        return Err(bad(&key, v.unwrap_or(""), "an interval of at least 100ms"));
                    }
                    c.alive = d;
                }
                "health" => {
                    let p = need(&key, v, "an absolute path of a health command")?;
                    if !p.starts_with('/') {
                        return Err(bad(&key, p, "an absolute path of a health command"));
                    }
                    c.health = Some(p.to_string());
                }
                "health_deadline" => {
                    c.health_deadline = parse_duration(&key, need(&key, v, "a duration")?)?;
                }
                _ => c.unknown_keys.push(key.clone()),
            }
        }
        if !card_given {
            if let Some(d) = &hw.dmi {
                c.card = d.clone();
                c.card_source = Source::Dmi;
            } else if let Some(d) = &hw.device_tree {
                c.card = d.clone();
                c.card_source = Source::DeviceTree;
            }
        } else {
            c.card_source = Source::Cmdline;
        }
        Ok(c)
    }

    /// Reads `cmdline_path` (normally `/proc/cmdline`) and the hardware under `sys` and
    /// `proc`, and parses.
    pub fn load(cmdline_path: &Path, sys: &Path, proc: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(cmdline_path).map_err(|source| ConfigError::Read {
            path: cmdline_path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, &Hardware::probe(sys, proc))
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |o: Option<u16>| o.map_or_else(|| "unset".to_string(), |n| n.to_string());
        writeln!(
            f,
            "iface           {}",
            self.iface.as_deref().unwrap_or("(first link with carrier)")
        )?;
        writeln!(
            f,
            "card            {} (from {:?})",
            self.card, self.card_source
        )?;
        writeln!(f, "shelf/slot      {}/{}", opt(self.shelf), opt(self.slot))?;
        writeln!(f, "features        {}", self.features.join(","))?;
        writeln!(f, "flash           {}", self.mtd)?;
        writeln!(f, "ethertype       {:#06x}", self.ethertype)?;
        writeln!(
            f,
            "mtu             {}",
            self.mtu
                .map_or_else(|| "(the link's own)".to_string(), |m| m.to_string())
        )?;
        writeln!(f, "master_timeout  {:?}", self.master_timeout)?;
        writeln!(f, "carrier_timeout {:?}", self.carrier_timeout)?;
        writeln!(f, "hold            {:?}", self.hold)?;
        writeln!(f, "stored          {}", self.stored)?;
        writeln!(f, "test            {}", self.test)?;
        writeln!(f, "maxtries        {}", self.maxtries)?;
        writeln!(f, "format pristine {}", self.format_pristine)?;
        writeln!(
            f,
            "watchdog        {}",
            self.watchdog
                .map_or_else(|| "off".to_string(), |t| format!("{t} s"))
        )?;
        writeln!(f, "alive every     {:?}", self.alive)?;
        if let Some(h) = &self.health {
            writeln!(
                f,
                "health          {h} (deadline {:?})",
                self.health_deadline
            )?;
        }
        if !self.unknown_keys.is_empty() {
            writeln!(
                f,
                "unknown keys    {} (ignored)",
                self.unknown_keys.join(" ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_alive_and_health_keys_parse_and_bad_values_name_the_key() {
        let hw = Hardware::default();
        let c = Config::parse(
            "shelfboot.watchdog=90 shelfboot.alive=500ms shelfboot.health=/usr/bin/ok shelfboot.health_deadline=20",
            &hw,
        )
        .unwrap();
        assert_eq!(c.watchdog, Some(90));
        assert_eq!(c.alive, Duration::from_millis(500));
        assert_eq!(c.health.as_deref(), Some("/usr/bin/ok"));
        assert_eq!(c.health_deadline, Duration::from_secs(20));
        assert!(c.unknown_keys.is_empty());
        assert_eq!(
            Config::parse("shelfboot.watchdog=0", &hw).unwrap().watchdog,
            None
        );
        // The card's own keys go along to a kexec'd image; the release's health does not.
        let carried = c.carried_cmdline("");
        assert!(carried.contains("shelfboot.watchdog=90"), "{carried}");
        assert!(carried.contains("shelfboot.alive=500ms"), "{carried}");
        assert!(!carried.contains("health"), "{carried}");
        for bad in [
            "shelfboot.watchdog=5000",
            "shelfboot.watchdog=3",
            "shelfboot.watchdog=x",
            "shelfboot.alive=10ms",
            "shelfboot.health=relative/path",
            "shelfboot.health_deadline=soon",
        ] {
            let e = Config::parse(bad, &hw).unwrap_err().to_string();
            let key = bad.split('=').next().unwrap();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn stored_cmdline_carries_the_card_identity_but_not_over_the_plan() {
        let cfg = Config {
            card: "lc100".into(),
            card_source: Source::Cmdline,
            slot: Some(3),
            features: vec!["diag".into(), "x".into()],
            ..Config::default()
        };
        let t = Config {
            master_timeout: Duration::from_secs(60),
            ..cfg.clone()
        };
        assert!(
            t.carried_cmdline("")
                .ends_with(" shelfboot.master_timeout=60000ms")
        );
        let h = Config {
            hold: Duration::from_secs(90),
            ..cfg.clone()
        };
        assert!(h.carried_cmdline("").ends_with(" shelfboot.hold=90000ms"));
        assert!(!h.carried_cmdline("shelfboot.hold=5").contains("90000ms"));
        let j = Config {
            mtu: Some(9000),
            ..cfg.clone()
        };
        assert!(j.carried_cmdline("").contains(" shelfboot.mtu=9000"));
        let c = cfg.carried_cmdline("console=ttyS0 shelfboot.slot=9");
        assert_eq!(
            c,
            "console=ttyS0 shelfboot.slot=9 shelfboot.card=lc100 shelfboot.features=diag,x"
        );
        let dmi = Config {
            card_source: Source::Dmi,
            ..cfg
        };
        assert!(!dmi.carried_cmdline("").contains("shelfboot.card="));
    }

    #[test]
    fn full_cmdline_parses_into_typed_fields() {
        let c = Config::parse(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 quiet shelfboot.iface=eth1 shelfboot.card=lc-48x10g \
             shelfboot.slot=7 shelfboot.shelf=0x2 shelfboot.features=bgp,mpls shelfboot.mtd=3 \
             shelfboot.ethertype=0x88b6 shelfboot.master_timeout=500ms shelfboot.stored=1 \
             shelfboot.hold=90 shelfboot.maxtries=5 shelfboot.test=1 shelfboot.mtu=9000 \
             shelfboot.future=x",
            &Hardware::default(),
        )
        .unwrap();
        assert!(c.test);
        assert_eq!(c.iface.as_deref(), Some("eth1"));
        assert_eq!(
            (c.card.as_str(), c.card_source),
            ("lc-48x10g", Source::Cmdline)
        );
        assert_eq!((c.slot, c.shelf), (Some(7), Some(2)));
        assert_eq!(c.features, ["bgp", "mpls"]);
        assert_eq!(c.mtd, MtdSelector::Number(3));
        assert_eq!(c.ethertype, 0x88b6);
        assert_eq!(c.mtu, Some(9000));
        assert_eq!(c.master_timeout, Duration::from_millis(500));
        assert_eq!(c.hold, Duration::from_secs(90));
        assert!(c.stored);
        assert_eq!(c.maxtries, 5);
        assert_eq!(c.unknown_keys, ["shelfboot.future"]);
    }

    #[test]
    fn defaults_and_hardware_fallback() {
        let hw = Hardware {
            dmi: None,
            device_tree: Some("acme,lc-8".into()),
        };
        let c = Config::parse("console=ttyS0", &hw).unwrap();
        assert_eq!(
            (c.card.as_str(), c.card_source),
            ("acme,lc-8", Source::DeviceTree)
        );
        assert_eq!(c.ethertype, DEFAULT_ETHERTYPE);
        assert_eq!(c.mtd, MtdSelector::Number(0));
        assert!(!c.test);
        assert!(!c.stored);
        let hw = Hardware {
            dmi: Some("Standard PC (i440FX + PIIX, 1996)".into()),
            device_tree: Some("x".into()),
        };
        assert_eq!(Config::parse("", &hw).unwrap().card_source, Source::Dmi);
    }

    #[test]
    fn quoted_values_and_mtd_names() {
        let c = Config::parse(
            r#"shelfboot.card="lc 2" shelfboot.mtd=flash-a"#,
            &Hardware::default(),
        )
        .unwrap();
        assert_eq!(c.card, "lc 2");
        assert_eq!(c.mtd, MtdSelector::Name("flash-a".into()));
        assert!(matches!(
            Config::parse(r#"shelfboot.card="lc 2"#, &Hardware::default()),
            Err(ConfigError::Unterminated { at: 15 })
        ));
    }

    #[test]
    fn bad_values_name_key_value_and_expectation() {
        for (line, key) in [
            ("shelfboot.slot=seven", "shelfboot.slot"),
            ("shelfboot.ethertype=0x0800x", "shelfboot.ethertype"),
            ("shelfboot.ethertype=0x0100", "shelfboot.ethertype"),
            ("shelfboot.mtu=9001", "shelfboot.mtu"),
            ("shelfboot.mtu=1279", "shelfboot.mtu"),
            ("shelfboot.mtu=jumbo", "shelfboot.mtu"),
            ("shelfboot.master_timeout=5h", "shelfboot.master_timeout"),
            ("shelfboot.maxtries=0", "shelfboot.maxtries"),
            ("shelfboot.stored=maybe", "shelfboot.stored"),
            ("shelfboot.test=2", "shelfboot.test"),
            ("shelfboot.iface=", "shelfboot.iface"),
        ] {
            let err = Config::parse(line, &Hardware::default()).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(key) && msg.contains("expected"),
                "{line}: {msg}"
            );
        }
    }

    #[test]
    fn hardware_probe_reads_dmi_and_device_tree_and_skips_placeholders() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        let proc = t.path().join("proc");
        fs::create_dir_all(sys.join("class/dmi/id")).unwrap();
        fs::create_dir_all(proc.join("device-tree")).unwrap();
        fs::write(
            sys.join("class/dmi/id/product_name"),
            "To Be Filled By O.E.M.\n",
        )
        .unwrap();
        fs::write(sys.join("class/dmi/id/board_name"), "LC-48\n").unwrap();
        fs::write(proc.join("device-tree/compatible"), b"acme,lc48\0acme,lc\0").unwrap();
        let hw = Hardware::probe(&sys, &proc);
        assert_eq!(hw.dmi.as_deref(), Some("LC-48"));
        assert_eq!(hw.device_tree.as_deref(), Some("acme,lc48"));
        fs::write(t.path().join("cmdline"), "shelfboot.slot=3\n").unwrap();
        let c = Config::load(&t.path().join("cmdline"), &sys, &proc).unwrap();
        assert_eq!((c.card.as_str(), c.slot), ("LC-48", Some(3)));
        let err = Config::load(&t.path().join("nope"), &sys, &proc).unwrap_err();
        assert!(err.to_string().contains("nope"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("k", "30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("k", "2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("k", "").is_err());
        assert!(parse_duration("k", "ms").is_err());
    }
}
