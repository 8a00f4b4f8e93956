//! Package blobs between the masters. Blobs (up to hundreds of MB) never go through the
//! log: an import copies each one, by digest, to the other members before the operation
//! that references it is proposed ([`push`]), and every member looks for referenced blobs
//! it lacks and fetches them from the others ([`keep`]: a member that was down during an
//! import, or joined later). A member that lacks a referenced blob is not complete and
//! never serves. Received bytes land in `blobs/tmp/` and enter the blob directory only
//! through [`BlobDir::put`], which checks them against the digest.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::net::{Peer, Request, Response};
use super::{Member, NodeId, Raft};
use crate::blobs::BlobDir;
use crate::store::sqlite::SqliteStore;
use shelfboot_proto::id::Digest;

/// Bytes per copy message.
pub const CHUNK: usize = 1 << 20;
/// How often a member looks for blobs it lacks.
pub const KEEP_EVERY: Duration = Duration::from_millis(500);
/// Time allowed for one chunk's round trip.
const CHUNK_TTL: Duration = Duration::from_secs(10);

/// A blob request between masters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobRequest {
    /// Is this blob stored?
    Has(Digest),
    /// Bytes of a blob being copied to the receiver, in order from offset 0; the last
    /// chunk (`offset + data.len() == size`) stores it after checking its digest.
    Put {
        sha: Digest,
        size: u64,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Up to `len` bytes of a stored blob from `offset`.
    Get { sha: Digest, offset: u64, len: u32 },
}

/// The answer to a [`BlobRequest`]; `Err` says why, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobResponse {
    Has(bool),
    Put(Result<(), String>),
    Get(Result<serde_bytes::ByteBuf, String>),
}

fn temp_path(dir: &BlobDir, sha: &Digest) -> std::path::PathBuf {
    dir.root().join("tmp").join(format!("{sha}.cluster"))
}

/// Answers one blob request on this member (blocking file I/O: run it off the runtime's
/// worker).
pub fn answer(dir: &BlobDir, req: BlobRequest) -> BlobResponse {
    match req {
        BlobRequest::Has(sha) => BlobResponse::Has(dir.contains(&sha)),
        BlobRequest::Put {
            sha,
            size,
            offset,
            data,
        } => BlobResponse::Put(receive(dir, &sha, size, offset, &data).map_err(|e| e.to_string())),
        BlobRequest::Get { sha, offset, len } => BlobResponse::Get(
            read_chunk(dir, &sha, offset, len as usize)
                .map(serde_bytes::ByteBuf::from)
                .map_err(|e| format!("blob {sha}: {e}")),
        ),
    }
}

fn receive(dir: &BlobDir, sha: &Digest, size: u64, offset: u64, data: &[u8]) -> io::Result<()> {
    if dir.contains(sha) {
        return Ok(());
    }
    let tmp = temp_path(dir, sha);
    let mut f = if offset == 0 {
        File::create(&tmp)?
    } else {
        OpenOptions::new().append(true).open(&tmp)?
    };
    let have = f.metadata()?.len();
    if have != offset {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("blob {sha}: chunk at {offset}, but {have} bytes received so far"),
        ));
    }
    f.write_all(data)?;
    let end = offset + data.len() as u64;
    if end > size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("blob {sha}: {end} bytes exceed its size {size}"),
        ));
    }
    if end == size {
        drop(f);
        let mut src = File::open(&tmp)?;
        let r = dir.put(sha, size, &mut src, &mut |_| {});
        let _ = std::fs::remove_file(&tmp);
        r.map_err(io::Error::other)?;
    }
    Ok(())
}

fn read_chunk(dir: &BlobDir, sha: &Digest, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut f = File::open(dir.path(sha))?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len.min(CHUNK));
    f.take(len.min(CHUNK) as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

async fn call(peer: &mut Peer, req: BlobRequest) -> Result<BlobResponse, String> {
    match peer.call(&Request::Blob(req), CHUNK_TTL).await {
        Ok(Response::Blob(r)) => Ok(r),
        Ok(_) => Err("answered another request kind".into()),
        Err(e) => Err(shelfboot_proto::report::error_chain(&e)),
    }
}

/// Copies `sha` (of `size` bytes, stored here) to `peer` unless it has it already.
pub async fn push(dir: &BlobDir, peer: &mut Peer, sha: &Digest, size: u64) -> Result<(), String> {
    if call(peer, BlobRequest::Has(*sha)).await? == BlobResponse::Has(true) {
        return Ok(());
    }
    let mut f = File::open(dir.path(sha)).map_err(|e| format!("blob {sha} here: {e}"))?;
    let mut offset = 0u64;
    loop {
        let mut data = Vec::with_capacity(CHUNK);
        (&mut f)
            .take(CHUNK as u64)
            .read_to_end(&mut data)
            .map_err(|e| format!("blob {sha} here: {e}"))?;
        let n = data.len() as u64;
        if n == 0 && offset < size {
            return Err(format!("blob {sha} here is shorter than its {size} bytes"));
        }
        match call(
            peer,
            BlobRequest::Put {
                sha: *sha,
                size,
                offset,
                data,
            },
        )
        .await?
        {
            BlobResponse::Put(Ok(())) => {}
            BlobResponse::Put(Err(e)) => return Err(e),
            other => return Err(format!("answered {other:?}")),
        }
        offset += n;
        if offset >= size {
            return Ok(());
        }
    }
}

/// Fetches `sha` (of `size` bytes) from `peer` into this member's blob directory.
async fn fetch(dir: &BlobDir, peer: &mut Peer, sha: &Digest, size: u64) -> Result<(), String> {
    let tmp = temp_path(dir, sha);
    let mut f = File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut offset = 0u64;
    while offset < size {
        let len = u32::try_from(CHUNK).unwrap_or(u32::MAX);
        let data = match call(
            peer,
            BlobRequest::Get {
                sha: *sha,
                offset,
                len,
            },
        )
        .await?
        {
            BlobResponse::Get(Ok(d)) => d.into_vec(),
            BlobResponse::Get(Err(e)) => return Err(e),
            other => return Err(format!("answered {other:?}")),
        };
        if data.is_empty() {
            return Err(format!("blob {sha} ends at {offset} of {size} bytes there"));
        }
        f.write_all(&data)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        offset += data.len() as u64;
    }
    drop(f);
    let mut src = File::open(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let r = dir.put(sha, size, &mut src, &mut |_| {});
    let _ = std::fs::remove_file(&tmp);
    r.map(|_| ())
        .map_err(|e| shelfboot_proto::report::error_chain(&e))
}

/// What the keeper learns of this member's databases: whether it holds every blob they
/// reference, how many it lacks, and the order of succession they hold.
#[derive(Debug, Default)]
pub struct LocalView {
    pub complete: AtomicBool,
    pub missing: AtomicUsize,
    pub succession: std::sync::Mutex<Vec<NodeId>>,
    /// Until then this member does not stand for election (a handover to another member
    /// is under way, [`super::hold`]).
    pub hold_until: std::sync::Mutex<Option<std::time::Instant>>,
    /// The applied log index of the databases `complete` was judged on.
    pub checked_at: std::sync::atomic::AtomicU64,
    /// The log index of the last import this member applied ([`super::machine`] sets
    /// it): until `checked_at` reaches it, the blobs of that import were not looked for
    /// and the member is not known complete.
    pub import_at: std::sync::atomic::AtomicU64,
}

/// Looks, every [`KEEP_EVERY`], for blobs the databases reference that this member lacks,
/// and fetches each from another member that has it. Runs for the member's life.
pub async fn keep(
    raft: Raft,
    id: NodeId,
    db: std::path::PathBuf,
    dir: BlobDir,
    state: Arc<LocalView>,
) {
    let mut store: Option<SqliteStore> = None;
    let mut peers: std::collections::BTreeMap<NodeId, Peer> = Default::default();
    loop {
        let dir2 = dir.clone();
        let db2 = db.clone();
        let taken = store.take();
        let r = tokio::task::spawn_blocking(move || {
            let s = match taken {
                Some(s) => s,
                None => {
                    SqliteStore::open(&db2).map_err(|e| shelfboot_proto::report::error_chain(&e))?
                }
            };
            // The log index first: what is missing is then judged on databases at least
            // that far along.
            let at = super::applied_index(&s);
            let missing = missing(&s, &dir2).map_err(|e| shelfboot_proto::report::error_chain(&e));
            let order = super::succession(&s);
            Ok::<_, String>((s, missing.map(|m| (m, order, at))))
        })
        .await;
        let missing = match r {
            Ok(Ok((s, m))) => {
                store = Some(s);
                m
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.to_string()),
        };
        let missing = missing.map(|(list, order, at)| {
            if let Ok(order) = order {
                *state.succession.lock().unwrap_or_else(|p| p.into_inner()) = order;
            }
            (list, at)
        });
        match missing {
            Ok((list, at)) => {
                state.missing.store(list.len(), Ordering::Relaxed);
                state.complete.store(list.is_empty(), Ordering::Relaxed);
                state.checked_at.store(at, Ordering::Relaxed);
                if !list.is_empty() {
                    let members: Vec<(NodeId, Member)> = {
                        let m = raft.metrics().borrow().clone();
                        let leader = m.current_leader;
                        let mut v: Vec<(NodeId, Member)> = m
                            .membership_config
                            .membership()
                            .nodes()
                            .filter(|(n, _)| **n != id)
                            .map(|(n, node)| (*n, node.clone()))
                            .collect();
                        // The leader first: it has what it imported.
                        v.sort_by_key(|(n, _)| Some(*n) != leader);
                        v
                    };
                    for (sha, size) in list {
                        let mut done = false;
                        for (n, node) in &members {
                            let peer = peers.entry(*n).or_insert_with(|| Peer::new(*n, &node.addr));
                            if call(peer, BlobRequest::Has(sha)).await
                                != Ok(BlobResponse::Has(true))
                            {
                                continue;
                            }
                            match fetch(&dir, peer, &sha, size).await {
                                Ok(()) => {
                                    ::log::info!(
                                        "cluster: fetched blob {sha} ({size} bytes) from master {n}"
                                    );
                                    done = true;
                                    break;
                                }
                                Err(e) => ::log::warn!(
                                    "cluster: fetching blob {sha} from master {n}: {e}"
                                ),
                            }
                        }
                        if !done {
                            ::log::warn!(
                                "cluster: blob {sha} is on no reachable master yet; this master cannot serve until it has it"
                            );
                        }
                    }
                    continue;
                }
            }
            Err(e) => ::log::warn!("cluster: looking for missing blobs: {e}"),
        }
        tokio::time::sleep(KEEP_EVERY).await;
    }
}

/// Referenced blobs not in `dir`, with their sizes.
fn missing(s: &SqliteStore, dir: &BlobDir) -> crate::store::Result<Vec<(Digest, u64)>> {
    let wanted = s.referenced_blob_sizes()?;
    Ok(wanted
        .into_iter()
        .filter(|(sha, _)| !dir.contains(sha))
        .collect())
}
