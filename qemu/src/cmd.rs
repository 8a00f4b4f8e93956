//! Running host tools (apt-get, dpkg-deb, depmod, ip, nft, xz, ldd) with errors that name
//! the command line and show its stderr. Nothing here is specific to one tool.

use std::process::{Command, Stdio};

/// A host command failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The program could not be started.
    #[error("cannot run `{cmd}`; is it installed (see docs/lab.md, Debian packages)?")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// Last lines of its stderr.
        stderr: String,
    },
}

/// The command line as a string, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs to completion; returns stdout (lossy UTF-8) when the exit status is 0.
pub fn run(cmd: &mut Command) -> Result<String, CmdError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CmdError::Spawn {
            cmd: describe(cmd),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(CmdError::Failed {
            cmd: describe(cmd),
            status: out.status,
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_command() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sh -c") && msg.contains("boom"), "{msg}");
        let err = run(&mut Command::new("/nonexistent/tool")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tool"));
        assert_eq!(run(Command::new("echo").arg("hi")).unwrap(), "hi\n");
    }
}
