//! Best-effort removal of the initramfs contents before switch_root, so its RAM is freed.
//!
//! Walks from directory fds (`openat`/`fstatat`/`unlinkat`), never following symlinks and
//! never descending into another filesystem (st_dev differs: /dev, /proc, the new root,
//! ...). Every failure is a warning: a leftover file costs RAM, not correctness. Not here:
//! deciding when it is safe (only after every mount was moved out, see `crate::handoff`).

use std::ffi::CStr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

const MAX_DEPTH: usize = 64;

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Removes everything under `root` that lives on the same filesystem as `root`; returns
/// the number of entries that could not be removed.
pub fn remove_tree_same_dev(root: &Path) -> usize {
    let dir = match Dir::open(root, dir_flags(), Mode::empty()) {
        Ok(d) => d,
        Err(e) => {
            log::warn!("cannot open {} to clean it: {e}", root.display());
            return 1;
        }
    };
    let dev = match fstat(dir.as_raw_fd()) {
        Ok(st) => st.st_dev,
        Err(e) => {
            log::warn!("cannot stat {}: {e}", root.display());
            return 1;
        }
    };
    clean_dir(dir, dev, root, 0)
}

fn clean_dir(mut dir: Dir, dev: u64, path: &Path, depth: usize) -> usize {
    if depth > MAX_DEPTH {
        log::warn!(
            "not cleaning below {}: deeper than {MAX_DEPTH}",
            path.display()
        );
        return 1;
    }
    let raw = dir.as_raw_fd();
    let names: Vec<_> = dir
        .iter()
        .flatten()
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.to_bytes() != b"." && n.to_bytes() != b"..")
        .collect();
    let mut failed = 0;
    for name in &names {
        failed += clean_entry(raw, dev, path, name, depth);
    }
    failed
}

fn clean_entry(raw: i32, dev: u64, path: &Path, name: &CStr, depth: usize) -> usize {
    let child = path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
    let st = match fstatat(Some(raw), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(e) => {
            log::warn!("cannot stat {}: {e}", child.display());
            return 1;
        }
    };
    if st.st_dev != dev {
        return 0; // a mount point of another filesystem: not ours to delete
    }
    let mut failed = 0;
    let flag = if (st.st_mode & libc::S_IFMT) == libc::S_IFDIR {
        match Dir::openat(Some(raw), name, dir_flags(), Mode::empty()) {
            Ok(sub) => failed += clean_dir(sub, dev, &child, depth + 1),
            Err(e) => {
                log::warn!("cannot open {}: {e}", child.display());
                return 1;
            }
        }
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    if let Err(e) = unlinkat(Some(raw), name, flag) {
        log::warn!("cannot remove {}: {e}", child.display());
        failed += 1;
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_everything_including_symlinks_without_following_them() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let r = t.path().join("root");
        std::fs::create_dir_all(r.join("a/b/c")).unwrap();
        std::fs::write(r.join("a/b/c/f"), "x").unwrap();
        std::fs::write(r.join("init"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("link")).unwrap();
        assert_eq!(remove_tree_same_dev(&r), 0);
        assert_eq!(std::fs::read_dir(&r).unwrap().count(), 0);
        assert!(
            outside.path().join("keep").exists(),
            "symlink target untouched"
        );
    }
}
