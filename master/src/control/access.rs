//! Who may use a master, said plainly when the operating system or the daemon refuses.
//!
//! A CLI command reaches the state through the control socket or, with no master
//! running, by taking the state lock itself (see [`super::reach`]). When either is
//! refused for lack of permission, the error names the user, who may use this master
//! (root, the user owning it, and the group the socket or state directory lets in), the
//! owners and modes it read that from, and what to do: join the group (`usermod -aG`,
//! effective at the next login), log in again when the group database already lists the
//! user, or use sudo.
//!
//! [`Facts::probe`] reads the file system and the user and group databases;
//! [`Refusal`]'s `Display` is pure, so the wording is tested without root. This module
//! does not change permissions and never decides access: the kernel (file modes) and the
//! daemon's peer check ([`super::daemon`]) do.

use std::ffi::CString;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User, getegid, geteuid, getgrouplist, getgroups};

/// A user, by uid and (when the user database knows it) name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub uid: u32,
    pub name: Option<String>,
}

impl Person {
    /// Looks `uid` up in the user database.
    pub fn lookup(uid: u32) -> Self {
        let name = User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        Self { uid, name }
    }

    /// The name for a command line (`usermod -aG G NAME`); the uid when unnamed.
    fn handle(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.uid.to_string())
    }
}

impl fmt::Display for Person {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "user {n} (uid {})", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// Owner, group and mode of a file, with the names the databases give them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub owner: Person,
    pub gid: u32,
    pub group: Option<String>,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
}

impl Owned {
    fn read(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            owner: Person::lookup(meta.uid()),
            gid: meta.gid(),
            group: group_name(meta.gid()),
            mode: meta.mode() & 0o7777,
        })
    }

    fn group_handle(&self) -> String {
        self.group.clone().unwrap_or_else(|| self.gid.to_string())
    }
}

impl fmt::Display for Owned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} mode {:04o}",
            self.owner.handle(),
            self.group_handle(),
            self.mode
        )
    }
}

/// The name of group `gid`, if the group database knows it.
pub fn group_name(gid: u32) -> Option<String> {
    Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
}

/// Whether the group database makes `user` (primary group `primary`) a member of `gid`.
/// This is what `usermod -aG` changes; a process started before that does not have the
/// group yet.
pub fn listed_in_group(user: &Person, primary: u32, gid: u32) -> bool {
    if primary == gid {
        return true;
    }
    let Some(name) = user.name.as_deref().and_then(|n| CString::new(n).ok()) else {
        return false;
    };
    getgrouplist(&name, Gid::from_raw(primary))
        .is_ok_and(|groups| groups.contains(&Gid::from_raw(gid)))
}

/// The supplementary groups of process `pid`, from the `Groups:` line of
/// `/proc/PID/status`; empty when it cannot be read.
pub fn process_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| parse_status_groups(&s))
        .unwrap_or_default()
}

/// The gids on the `Groups:` line of a `/proc/PID/status` text.
fn parse_status_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What refused the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The state directory does not exist and the caller may not create it.
    NoStateDir,
    /// Connecting to the control socket was denied (its mode or the directory's).
    Socket,
    /// The socket refused (or there is none) and the state lock could not be opened.
    Lock,
}

/// What [`Refusal`] says, read from this machine by [`Facts::probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub state: PathBuf,
    /// The calling process's effective user.
    pub you: Person,
    /// The state directory; `None` when it does not exist.
    pub dir: Option<Owned>,
    /// The control socket; `None` when there is none (no master running) or the caller
    /// cannot see into the state directory ([`Facts::socket_hidden`]).
    pub socket: Option<Owned>,
    /// The state directory does not let the caller look for the socket.
    pub socket_hidden: bool,
    /// The group database lists the caller in the group that may use the master.
    pub listed: bool,
    /// This process has that group (false after `usermod -aG` until the next login).
    pub has_group: bool,
}

impl Facts {
    /// Reads the state directory's and the socket's owners and modes, and the caller's
    /// groups.
    pub fn probe(state: &Path) -> Self {
        let mut facts = Self {
            state: state.to_path_buf(),
            you: Person::lookup(geteuid().as_raw()),
            dir: Owned::read(state),
            socket: Owned::read(&super::socket_path(state)),
            socket_hidden: matches!(
                std::fs::symlink_metadata(super::socket_path(state)),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied
            ),
            listed: false,
            has_group: false,
        };
        if let Some(gid) = facts.group().map(|(gid, _)| gid) {
            let egid = getegid();
            facts.listed = listed_in_group(&facts.you, egid.as_raw(), gid);
            facts.has_group =
                egid.as_raw() == gid || getgroups().is_ok_and(|g| g.contains(&Gid::from_raw(gid)));
        }
        facts
    }

    /// The group that may use this master, with its name: the socket's group when the
    /// socket lets its group write, otherwise the state directory's group when the
    /// directory lets its group in (read and search).
    fn group(&self) -> Option<(u32, String)> {
        let pick = |o: &Owned| (o.gid, o.group_handle());
        match (&self.socket, &self.dir) {
            (Some(s), _) if s.mode & 0o020 != 0 => Some(pick(s)),
            (_, Some(d)) if d.mode & 0o050 == 0o050 && d.gid != 0 => Some(pick(d)),
            _ => None,
        }
    }

    /// The user a master runs as: the socket's owner, otherwise the directory's.
    fn owner(&self) -> Option<&Person> {
        self.socket.as_ref().or(self.dir.as_ref()).map(|o| &o.owner)
    }
}

/// A refusal in words: who was refused, who may use this master, and how to get access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub refused: Refused,
    pub facts: Facts,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let facts = &self.facts;
        let you = &facts.you;
        let state = facts.state.display();
        if self.refused == Refused::NoStateDir {
            return write!(
                f,
                "there is no master state directory {state}, and {you} may not create it; \
                 create it as root (e.g. `sudo master nodes`), or give a directory of your \
                 own with --state DIR or SHELFBOOT_STATE"
            );
        }
        let mut may = vec!["root".to_owned()];
        if let Some(owner) = facts.owner().filter(|o| o.uid != 0) {
            may.push(owner.to_string());
        }
        let group = facts.group();
        if let Some((_, g)) = &group {
            may.push(format!("members of group {g}"));
        }
        let last = may.pop().unwrap_or_default();
        let list = if may.is_empty() {
            last
        } else {
            format!("{} and {last}", may.join(", "))
        };
        write!(f, "{you} may not use the master at {state}: only {list}")?;
        write!(f, " may (")?;
        if let Some(d) = &facts.dir {
            write!(f, "state directory {d}")?;
        }
        match &facts.socket {
            Some(s) => write!(f, ", control socket {s})")?,
            None if facts.socket_hidden => write!(f, ")")?,
            None => write!(f, "; no master is serving its control socket)")?,
        }
        let user = you.handle();
        match group {
            Some((_, g)) if facts.listed && !facts.has_group => write!(
                f,
                "; {user} is in group {g}, but this login session started before that: \
                 log in again (or run `newgrp {g}`), or use sudo"
            ),
            Some((_, g)) if facts.listed && facts.socket.is_none() && !facts.socket_hidden => {
                write!(
                    f,
                    "; members of group {g} use it through `master serve --group {g}` or \
                 `master daemon --group {g}`: start one (as root), or use sudo"
                )
            }
            Some((_, g)) => write!(
                f,
                "; to get access, an administrator runs `usermod -aG {g} {user}` (effective \
                 at {user}'s next login), or run the command with sudo"
            ),
            None => write!(
                f,
                "; run the command with sudo, or let a group in: start the master with \
                 `--group GROUP` on a state directory that group may enter \
                 (`chgrp GROUP {state}; chmod 0750 {state}`), then `usermod -aG GROUP {user}`"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(uid: u32, name: &str) -> Person {
        Person {
            uid,
            name: Some(name.to_owned()),
        }
    }

    fn owned(uid: u32, user: &str, gid: u32, group: &str, mode: u32) -> Owned {
        Owned {
            owner: person(uid, user),
            gid,
            group: Some(group.to_owned()),
            mode,
        }
    }

    fn facts(dir: Option<Owned>, socket: Option<Owned>) -> Facts {
        Facts {
            state: PathBuf::from("/var/lib/shelfboot/master"),
            you: person(1000, "alice"),
            dir,
            socket,
            socket_hidden: false,
            listed: false,
            has_group: false,
        }
    }

    fn say(refused: Refused, facts: Facts) -> String {
        Refusal { refused, facts }.to_string()
    }

    #[test]
    fn a_group_socket_names_the_group_and_usermod() {
        let f = facts(
            Some(owned(0, "root", 120, "shelfboot", 0o750)),
            Some(owned(0, "root", 120, "shelfboot", 0o660)),
        );
        let s = say(Refused::Socket, f);
        assert_eq!(
            s,
            "user alice (uid 1000) may not use the master at /var/lib/shelfboot/master: \
             only root and members of group shelfboot may (state directory \
             root:shelfboot mode 0750, control socket root:shelfboot mode 0660); to get \
             access, an administrator runs `usermod -aG shelfboot alice` (effective at \
             alice's next login), or run the command with sudo"
        );
    }

    #[test]
    fn a_directory_the_caller_cannot_enter_claims_nothing_about_the_socket() {
        let mut f = facts(Some(owned(0, "root", 120, "shelfboot", 0o750)), None);
        f.socket_hidden = true;
        let s = say(Refused::Socket, f);
        assert!(
            s.contains("members of group shelfboot may (state directory root:shelfboot mode 0750); to get access"),
            "{s}"
        );
    }

    #[test]
    fn listed_but_not_in_this_session_says_log_in_again() {
        let mut f = facts(
            Some(owned(0, "root", 120, "shelfboot", 0o750)),
            Some(owned(0, "root", 120, "shelfboot", 0o660)),
        );
        f.listed = true;
        let s = say(Refused::Socket, f);
        assert!(s.contains("alice is in group shelfboot"), "{s}");
        assert!(
            s.contains("log in again (or run `newgrp shelfboot`)"),
            "{s}"
        );
    }

    #[test]
    fn a_member_without_a_running_master_is_told_to_start_one() {
        let mut f = facts(Some(owned(0, "root", 120, "shelfboot", 0o750)), None);
        f.listed = true;
        f.has_group = true;
        let s = say(Refused::Lock, f);
        assert!(s.contains("no master is serving its control socket"), "{s}");
        assert!(s.contains("`master serve --group shelfboot`"), "{s}");
    }

    #[test]
    fn no_group_lets_in_says_sudo_and_how_to_let_one_in() {
        let f = facts(
            Some(owned(0, "root", 0, "root", 0o700)),
            Some(owned(0, "root", 0, "root", 0o600)),
        );
        let s = say(Refused::Lock, f);
        assert!(
            s.contains("only root may (state directory root:root mode 0700"),
            "{s}"
        );
        assert!(s.contains("run the command with sudo"), "{s}");
        assert!(s.contains("`usermod -aG GROUP alice`"), "{s}");
        // A directory whose group is root with group access lets no ordinary group in.
        let f = facts(Some(owned(0, "root", 0, "root", 0o750)), None);
        assert!(!say(Refused::Lock, f).contains("members of group"));
    }

    #[test]
    fn a_master_run_by_another_user_names_that_user() {
        let f = facts(
            Some(owned(998, "shelfboot", 998, "shelfboot", 0o700)),
            Some(owned(998, "shelfboot", 998, "shelfboot", 0o600)),
        );
        let s = say(Refused::Socket, f);
        assert!(
            s.contains("only root and user shelfboot (uid 998) may (state directory"),
            "{s}"
        );
    }

    #[test]
    fn a_missing_state_directory_says_so() {
        let s = say(Refused::NoStateDir, facts(None, None));
        assert!(
            s.starts_with("there is no master state directory /var/lib/shelfboot/master"),
            "{s}"
        );
        assert!(s.contains("--state DIR or SHELFBOOT_STATE"), "{s}");
    }

    #[test]
    fn status_groups_are_parsed() {
        let status = "Name:\tcat\nUid:\t1000\t1000\t1000\t1000\nGroups:\t24 100 120 \nNSpid:\t7\n";
        assert_eq!(parse_status_groups(status), [24, 100, 120]);
        assert!(parse_status_groups("Groups:\t\n").is_empty());
        assert!(parse_status_groups("Name:\tx\n").is_empty());
        let mine = process_groups(i32::try_from(std::process::id()).unwrap());
        let want: Vec<u32> = getgroups().unwrap().iter().map(|g| g.as_raw()).collect();
        assert_eq!(mine, want);
    }

    #[test]
    fn probe_reads_this_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let f = Facts::probe(dir.path());
        assert_eq!(f.you.uid, geteuid().as_raw());
        let d = f.dir.unwrap();
        assert_eq!(d.owner.uid, geteuid().as_raw());
        assert_eq!(d.mode, 0o750);
        assert!(f.socket.is_none());
        assert!(Facts::probe(&dir.path().join("missing")).dir.is_none());
    }
}
