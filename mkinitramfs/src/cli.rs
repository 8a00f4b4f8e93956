//! The `mkinitramfs` command line (clap) and what each subcommand does; `main.rs` only
//! parses, calls [`run`] and prints the error chain.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::build::{self, BuildSpec, ModuleSpec};
use crate::compress::{self, Compression};
use crate::{bootimage, newc};

/// Reproducible initramfs and boot images for shelfboot cards.
#[derive(Debug, Parser)]
#[command(name = "mkinitramfs", version)]
pub struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an initramfs.
    Build {
        /// Static init binary (becomes /init).
        #[arg(long)]
        init: PathBuf,
        /// Root of the module tree (holds lib/modules/KVER), as for `depmod -b`.
        #[arg(long, requires = "kver")]
        kernel_modules: Option<PathBuf>,
        /// Kernel version (directory name under lib/modules).
        #[arg(long)]
        kver: Option<String>,
        /// Module to include, with optional parameters: `NAME[:PARAMS]` (repeatable).
        #[arg(long = "module", value_name = "NAME[:PARAMS]")]
        modules: Vec<String>,
        /// Trust anchor (public key file) for /etc/shelfboot/trust/ (repeatable).
        #[arg(long)]
        trust: Vec<PathBuf>,
        /// Default configuration for /etc/shelfboot/config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Extra file or directory: SRC:/DST (repeatable).
        #[arg(long, value_name = "SRC:DST")]
        add: Vec<String>,
        /// Compression.
        #[arg(long, value_enum, default_value_t = Compression::Gzip)]
        compress: Compression,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// List an initramfs (gzip, zstd or plain newc).
    List {
        /// The archive.
        file: PathBuf,
    },
    /// Build a boot image (kernel + initramfs + command line) for the master.
    Bootimage {
        /// Kernel (bzImage, as kexec_file_load wants).
        #[arg(long)]
        kernel: PathBuf,
        /// Initramfs.
        #[arg(long)]
        initramfs: PathBuf,
        /// Kernel command line.
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Check and describe a boot image.
    Inspect {
        /// The boot image.
        file: PathBuf,
    },
}

/// Errors of the command line tool; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// Reading or writing a file failed.
    #[error("cannot {action} {path}")]
    Io {
        /// read or write.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Building the image failed.
    #[error("cannot build the initramfs")]
    Build(#[source] build::BuildError),
    /// An archive could not be read.
    #[error("cannot read archive {path}")]
    Archive {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A boot image is invalid.
    #[error("boot image {path} is invalid")]
    BootImage {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: bootimage::BootImageError,
    },
}

impl CliError {
    /// Exit code: 2 usage, 3 I/O, 4 content (build, archive, boot image).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Io { .. } => 3,
            _ => 4,
        }
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::Io {
        action: "read",
        path: path.clone(),
        source,
    })
}

/// Writes through a temporary file and a rename, so a failed run leaves no half file.
fn write_atomic(path: &PathBuf, data: &[u8]) -> Result<(), CliError> {
    let io = |source| CliError::Io {
        action: "write",
        path: path.clone(),
        source,
    };
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, data).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Runs one subcommand; output for humans goes to stdout.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Build {
            init,
            kernel_modules,
            kver,
            modules,
            trust,
            config,
            add,
            compress,
            output,
        } => {
            let mtime = build::mtime_from_epoch(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref())
                .map_err(CliError::Usage)?;
            let add = add
                .iter()
                .map(|a| {
                    build::parse_add(a).ok_or_else(|| {
                        CliError::Usage(format!(
                            "--add {a:?}: expected SRC:/DST with an absolute DST"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let modules = match (kernel_modules, kver) {
                (Some(root), Some(kver)) => Some(ModuleSpec {
                    root,
                    kver,
                    wanted: modules.iter().map(|m| build::parse_module(m)).collect(),
                }),
                (None, Some(_)) => {
                    return Err(CliError::Usage("--kver needs --kernel-modules DIR".into()));
                }
                (None, None) if !modules.is_empty() => {
                    return Err(CliError::Usage(
                        "--module needs --kernel-modules DIR and --kver VERSION".into(),
                    ));
                }
                _ => None,
            };
            let spec = BuildSpec {
                init: Some(init),
                modules,
                trust,
                config,
                add,
                mtime,
                compression: compress,
            };
            let started = std::time::Instant::now();
            let built = build::build(&spec).map_err(CliError::Build)?;
            write_atomic(&output, &built.archive)?;
            for m in &built.modules {
                log::info!("module {} ({}) {}", m.name, m.rel_path, m.params);
            }
            println!(
                "{}: {} entries, {} modules, {} bytes ({} uncompressed) in {:.2} s",
                output.display(),
                built.entries,
                built.modules.len(),
                built.archive.len(),
                built.raw_len,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::List { file } => {
            let data = read(&file)?;
            let archive_err =
                |source: Box<dyn std::error::Error + Send + Sync>| CliError::Archive {
                    path: file.clone(),
                    source,
                };
            let raw = compress::decompress_auto(&data).map_err(|e| archive_err(Box::new(e)))?;
            let entries = newc::read(&raw).map_err(|e| archive_err(Box::new(e)))?;
            for e in entries {
                let target = if e.header.mode & newc::S_IFMT == newc::S_IFLNK {
                    format!(" -> {}", String::from_utf8_lossy(&e.body))
                } else {
                    String::new()
                };
                println!(
                    "{} {:>4} {:>10} {}{}",
                    newc::mode_string(e.header.mode),
                    e.header.ino,
                    e.header.filesize,
                    e.name,
                    target
                );
            }
            Ok(())
        }
        Command::Bootimage {
            kernel,
            initramfs,
            cmdline,
            output,
        } => {
            let k = read(&kernel)?;
            let i = read(&initramfs)?;
            let img = bootimage::build(&k, &i, &cmdline).map_err(|source| CliError::BootImage {
                path: output.clone(),
                source,
            })?;
            write_atomic(&output, &img)?;
            println!(
                "{}: {} bytes (kernel {}, initramfs {}, cmdline {})",
                output.display(),
                img.len(),
                k.len(),
                i.len(),
                cmdline.len()
            );
            Ok(())
        }
        Command::Inspect { file } => {
            let data = read(&file)?;
            let img = bootimage::parse(&data).map_err(|source| CliError::BootImage {
                path: file.clone(),
                source,
            })?;
            println!(
                "boot image v{} ({} bytes), digests verified",
                bootimage::VERSION,
                data.len()
            );
            println!(
                "kernel    {:>10} bytes  sha256 {}",
                img.kernel.len(),
                img.header.kernel_sha256
            );
            println!(
                "initramfs {:>10} bytes  sha256 {}",
                img.initramfs.len(),
                img.header.initramfs_sha256
            );
            println!("cmdline   {:?}", img.cmdline);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses_the_documented_forms() {
        let cli = Cli::try_parse_from([
            "mkinitramfs",
            "build",
            "--init",
            "i",
            "--kernel-modules",
            "/k",
            "--kver",
            "6.1",
            "--module",
            "nandsim:id_bytes=0x20,0xf1,0x80,0x15",
            "--module",
            "ubi",
            "--add",
            "/bin/busybox:/bin/busybox",
            "--compress",
            "zstd",
            "-o",
            "out",
        ])
        .unwrap();
        match cli.command {
            Command::Build {
                modules, compress, ..
            } => {
                assert_eq!(modules.len(), 2);
                assert_eq!(compress, Compression::Zstd);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["mkinitramfs", "list", "f"]).is_ok());
        assert!(Cli::try_parse_from(["mkinitramfs", "build", "-o", "x"]).is_err());
    }

    #[test]
    fn build_then_list_and_bootimage_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        std::fs::write(p.join("init"), b"#!/bin/sh\n").unwrap();
        let out = p.join("i.cpio.gz");
        let cli = Cli::try_parse_from([
            "mkinitramfs".as_ref(),
            "build".as_ref(),
            "--init".as_ref(),
            p.join("init").as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ])
        .unwrap();
        run(cli).unwrap();
        run(
            Cli::try_parse_from(["mkinitramfs".as_ref(), "list".as_ref(), out.as_os_str()])
                .unwrap(),
        )
        .unwrap();
        let img = p.join("boot.img");
        run(Cli::try_parse_from([
            "mkinitramfs".as_ref(),
            "bootimage".as_ref(),
            "--kernel".as_ref(),
            p.join("init").as_os_str(),
            "--initramfs".as_ref(),
            out.as_os_str(),
            "--cmdline".as_ref(),
            "console=ttyS0".as_ref(),
            "-o".as_ref(),
            img.as_os_str(),
        ])
        .unwrap())
        .unwrap();
        let parsed_bytes = std::fs::read(&img).unwrap();
        let parsed = bootimage::parse(&parsed_bytes).unwrap();
        assert_eq!(parsed.cmdline, "console=ttyS0");
        assert_eq!(parsed.initramfs, std::fs::read(&out).unwrap().as_slice());
        let missing = Cli::try_parse_from(["mkinitramfs", "list", "/nonexistent/x"]).unwrap();
        let err = run(missing).unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("/nonexistent/x"));
    }
}
