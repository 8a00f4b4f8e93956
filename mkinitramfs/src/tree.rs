//! The image tree: what goes into the initramfs, normalised so that the archive is
//! byte-identical on every run.
//!
//! Paths are kept sorted (a `BTreeMap`), parents are created on demand and, because a
//! parent is a prefix of its children, always come before them. Every entry gets uid/gid
//! 0, a fixed mode (directories 0755, files 0755 if executable else 0644, symlinks 0777),
//! the one mtime the caller passes, and an inode number from its position. Host files that
//! are hard links of one another (same device and inode) become one cpio inode. What it
//! does not do: device nodes, ownership or permissions other than the above, sparse files.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::newc::{self, Header, NewcError, S_IFDIR, S_IFLNK, S_IFREG};

/// One node of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A regular file.
    File {
        /// Content.
        data: Vec<u8>,
        /// Mode 0755 instead of 0644.
        executable: bool,
        /// Host (device, inode) when the source had more than one link.
        link_key: Option<(u64, u64)>,
    },
    /// A symbolic link and its target.
    Symlink(String),
}

/// Errors while filling the tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A destination path is absolute-relative nonsense (`..`, empty).
    #[error("image path {path:?} is not a clean path (no `..`, not empty); use e.g. /usr/bin/tool")]
    BadPath {
        /// The destination as given.
        path: String,
    },
    /// Two sources want the same destination, or a file sits where a directory must be.
    #[error(
        "image path /{path} is given twice (or is both a file and a directory); remove one of the sources"
    )]
    Conflict {
        /// The normalised destination.
        path: String,
    },
    /// A host file or directory could not be read.
    #[error("cannot read {path} for the image; check that it exists and is readable")]
    Read {
        /// The host path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A host path is neither file, directory nor symlink.
    #[error(
        "{path} is not a regular file, directory or symlink; device nodes come from devtmpfs on the card"
    )]
    Unsupported {
        /// The host path.
        path: PathBuf,
    },
    /// A host name is not valid UTF-8.
    #[error("{path} has a name that is not UTF-8; rename it")]
    NotUtf8 {
        /// The host path.
        path: PathBuf,
    },
    /// The cpio writer refused an entry.
    #[error("cannot write the cpio archive")]
    Newc(#[source] NewcError),
}

/// The sorted set of everything the image will hold.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

/// Turns `/a/b/` or `a/b` into `a/b`; refuses `..`, `.` and empty results.
pub fn normalize(path: &str) -> Result<String, TreeError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty()
        || parts
            .iter()
            .any(|p| *p == ".." || *p == "." || p.contains('\0'))
    {
        return Err(TreeError::BadPath { path: path.into() });
    }
    Ok(parts.join("/"))
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries (directories included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node at a destination, if any.
    pub fn get(&self, path: &str) -> Option<&Node> {
        normalize(path).ok().and_then(|p| self.nodes.get(&p))
    }

    fn ensure_parents(&mut self, path: &str) -> Result<(), TreeError> {
        let mut end = 0;
        while let Some(pos) = path[end..].find('/') {
            let parent = &path[..end + pos];
            match self.nodes.get(parent) {
                None => {
                    self.nodes.insert(parent.to_string(), Node::Dir);
                }
                Some(Node::Dir) => {}
                Some(_) => {
                    return Err(TreeError::Conflict {
                        path: parent.to_string(),
                    });
                }
            }
            end += pos + 1;
        }
        Ok(())
    }

    fn insert(&mut self, dst: &str, node: Node) -> Result<(), TreeError> {
        let path = normalize(dst)?;
        self.ensure_parents(&path)?;
        match (self.nodes.get(&path), &node) {
            (None, _) => {
                self.nodes.insert(path, node);
                Ok(())
            }
            (Some(Node::Dir), Node::Dir) => Ok(()),
            (Some(_), _) => Err(TreeError::Conflict { path }),
        }
    }

    /// Adds a directory (and its parents).
    pub fn add_dir(&mut self, dst: &str) -> Result<(), TreeError> {
        self.insert(dst, Node::Dir)
    }

    /// Adds a file with the given content.
    pub fn add_file(
        &mut self,
        dst: &str,
        data: Vec<u8>,
        executable: bool,
    ) -> Result<(), TreeError> {
        self.insert(
            dst,
            Node::File {
                data,
                executable,
                link_key: None,
            },
        )
    }

    /// Adds a symbolic link.
    pub fn add_symlink(&mut self, dst: &str, target: &str) -> Result<(), TreeError> {
        self.insert(dst, Node::Symlink(target.to_string()))
    }

    /// Adds a host file (following a symlink given directly) or, recursively, a host
    /// directory (symlinks inside it stay symlinks). Entries are read in sorted order.
    pub fn add_host_path(&mut self, src: &Path, dst: &str) -> Result<(), TreeError> {
        let meta = fs::metadata(src).map_err(|source| TreeError::Read {
            path: src.to_path_buf(),
            source,
        })?;
        self.add_host_entry(src, dst, &meta)
    }

    fn add_host_entry(
        &mut self,
        src: &Path,
        dst: &str,
        meta: &fs::Metadata,
    ) -> Result<(), TreeError> {
        let read_err = |source| TreeError::Read {
            path: src.to_path_buf(),
            source,
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(src).map_err(read_err)?;
            let target = target.to_str().ok_or_else(|| TreeError::NotUtf8 {
                path: src.to_path_buf(),
            })?;
            self.add_symlink(dst, target)
        } else if ft.is_dir() {
            self.add_dir(dst)?;
            let mut children: Vec<_> = fs::read_dir(src)
                .map_err(read_err)?
                .collect::<Result<_, _>>()
                .map_err(read_err)?;
            children.sort_by_key(|e| e.file_name());
            for child in children {
                let name = child.file_name();
                let name = name
                    .to_str()
                    .ok_or_else(|| TreeError::NotUtf8 { path: child.path() })?;
                let child_meta =
                    fs::symlink_metadata(child.path()).map_err(|source| TreeError::Read {
                        path: child.path(),
                        source,
                    })?;
                self.add_host_entry(&child.path(), &format!("{dst}/{name}"), &child_meta)?;
            }
            Ok(())
        } else if ft.is_file() {
            let data = fs::read(src).map_err(read_err)?;
            let link_key = (meta.nlink() > 1).then(|| (meta.dev(), meta.ino()));
            self.insert(
                dst,
                Node::File {
                    data,
                    executable: meta.mode() & 0o111 != 0,
                    link_key,
                },
            )
        } else {
            Err(TreeError::Unsupported {
                path: src.to_path_buf(),
            })
        }
    }

    /// Writes the uncompressed newc archive. `mtime` is stamped on every entry.
    pub fn to_cpio(&self, mtime: u32) -> Result<Vec<u8>, TreeError> {
        // Hard-link groups: link key -> (inode, member count, first path).
        let mut groups: BTreeMap<(u64, u64), (u32, u32, &str)> = BTreeMap::new();
        let mut next_ino = 1u32;
        let mut inos: Vec<u32> = Vec::with_capacity(self.nodes.len());
        for (path, node) in &self.nodes {
            let key = match node {
                Node::File {
                    link_key: Some(k), ..
                } => Some(*k),
                _ => None,
            };
            let ino = match key {
                Some(k) => {
                    let g = groups.entry(k).or_insert_with(|| {
                        let ino = next_ino;
                        next_ino += 1;
                        (ino, 0, path.as_str())
                    });
                    g.1 += 1;
                    g.0
                }
                None => {
                    let ino = next_ino;
                    next_ino += 1;
                    ino
                }
            };
            inos.push(ino);
        }
        let mut w = newc::Writer::new();
        for ((path, node), ino) in self.nodes.iter().zip(inos) {
            let (mode, nlink, body): (u32, u32, &[u8]) = match node {
                Node::Dir => (S_IFDIR | 0o755, 2, &[]),
                Node::Symlink(t) => (S_IFLNK | 0o777, 1, t.as_bytes()),
                Node::File {
                    data,
                    executable,
                    link_key,
                } => {
                    let perm = if *executable { 0o755 } else { 0o644 };
                    match link_key.and_then(|k| groups.get(&k)) {
                        // Data travels with the first name of a hard-link group only.
                        Some((_, n, first)) if *first != path.as_str() => (S_IFREG | perm, *n, &[]),
                        Some((_, n, _)) => (S_IFREG | perm, *n, data.as_slice()),
                        None => (S_IFREG | perm, 1, data.as_slice()),
                    }
                }
            };
            let header = Header {
                ino,
                mode,
                uid: 0,
                gid: 0,
                nlink,
                mtime,
                filesize: 0, // set by the writer from the body length
            };
            w.push(path, &header, body).map_err(TreeError::Newc)?;
        }
        Ok(w.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::newc::read;

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize("/a//b/").unwrap(), "a/b");
        assert_eq!(normalize("init").unwrap(), "init");
        for bad in ["", "/", "a/../b", "./a"] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parents_come_first_and_sorted() {
        let mut t = Tree::new();
        t.add_file("/z/y/x", b"1".to_vec(), false).unwrap();
        t.add_file("/a-b", b"2".to_vec(), true).unwrap();
        t.add_file("/a/c", b"3".to_vec(), false).unwrap();
        let entries = read(&t.to_cpio(0).unwrap()).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "a-b", "a/c", "z", "z/y", "z/y/x"]);
        let inos: Vec<_> = entries.iter().map(|e| e.header.ino).collect();
        assert_eq!(inos, [1, 2, 3, 4, 5, 6]);
        assert_eq!(entries[1].header.mode, S_IFREG | 0o755);
        assert_eq!(entries[2].header.mode, S_IFREG | 0o644);
        assert_eq!(entries[0].header.mode, S_IFDIR | 0o755);
        assert!(
            entries
                .iter()
                .all(|e| e.header.uid == 0 && e.header.gid == 0)
        );
    }

    #[test]
    fn conflicts_are_named() {
        let mut t = Tree::new();
        t.add_file("/etc/a", vec![], false).unwrap();
        let err = t.add_file("etc/a", vec![1], false).unwrap_err();
        assert!(err.to_string().contains("/etc/a"), "{err}");
        assert!(t.add_file("/etc/a/b", vec![], false).is_err());
        t.add_dir("/etc").unwrap();
        assert!(t.add_file("/etc", vec![], false).is_err());
    }

    #[test]
    fn host_dirs_recursive_with_symlinks_and_hardlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("src");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("sub/f"), b"data").unwrap();
        fs::hard_link(root.join("sub/f"), root.join("g")).unwrap();
        std::os::unix::fs::symlink("sub/f", root.join("l")).unwrap();
        let mut t = Tree::new();
        t.add_host_path(&root, "/opt/x").unwrap();
        let entries = read(&t.to_cpio(7).unwrap()).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "opt",
                "opt/x",
                "opt/x/g",
                "opt/x/l",
                "opt/x/sub",
                "opt/x/sub/f"
            ]
        );
        let g = &entries[2];
        let f = &entries[5];
        assert_eq!(g.header.ino, f.header.ino);
        assert_eq!((g.header.nlink, f.header.nlink), (2, 2));
        assert_eq!(g.body, b"data");
        assert!(f.body.is_empty());
        assert_eq!(entries[3].body, b"sub/f");
        assert!(entries.iter().all(|e| e.header.mtime == 7));
        let missing = t.add_host_path(&dir.path().join("nope"), "/x").unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }
}
