//! The masters' own network: Raft's RPCs and forwarded writes over TCP, between the
//! masters' management addresses (never the backplane, and never to a card). One request
//! per round trip on a kept connection: a 4-byte big-endian length, then CBOR.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::blobs::{BlobRequest, BlobResponse};
use super::machine::Applied;
use super::op::Op;
use super::{Member, NodeId, Raft, TypeConfig};
use crate::blobs::BlobDir;

/// Largest message accepted (a snapshot chunk, or an append of many imports).
pub const MAX_MESSAGE: u32 = 64 << 20;
/// How long a connection attempt to another master may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// A request from one master to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A write a member that is not the leader passes on to the leader.
    Write(Op),
    /// Package blobs between members ([`super::blobs`]).
    Blob(BlobRequest),
    /// The member's view of the cluster.
    Status,
    /// Do not stand for election for a while, and if leading, stop the heartbeats, so
    /// that the member a handover names is elected ([`super::hold`]).
    Hold,
    /// Add a member (as a learner, then a voter) or remove one; only the leader takes it.
    Members(MemberChange),
}

/// A change of the cluster's members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    Add { id: NodeId, addr: String },
    Remove { id: NodeId },
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// The write's result once committed and applied on the leader, or why it was not
    /// taken.
    Write(Result<Applied, WriteRefused>),
    Blob(BlobResponse),
    Status(super::ClusterStatus),
    /// `Err`: why not (in words).
    Done(Result<(), String>),
}

/// Why a member did not take a forwarded write. Either way nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteRefused {
    /// It is not (or no longer) the leader.
    NotLeader,
    /// Raft failed (the member is stopping).
    Failed(String),
}

async fn send_msg<T: Serialize>(s: &mut TcpStream, msg: &T) -> io::Result<()> {
    let mut buf = vec![0u8; 4];
    ciborium::into_writer(msg, &mut buf).map_err(io::Error::other)?;
    let len = u32::try_from(buf.len() - 4)
        .ok()
        .filter(|&n| n <= MAX_MESSAGE)
        .ok_or_else(|| io::Error::other("message too large"))?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&buf).await
}

async fn recv_msg<T: DeserializeOwned>(s: &mut TcpStream) -> io::Result<T> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {len} bytes exceeds {MAX_MESSAGE}"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    s.read_exact(&mut buf).await?;
    ciborium::from_reader(&buf[..]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// What a member's request handler needs besides Raft.
#[derive(Debug, Clone)]
pub struct Local {
    pub cfg: super::ClusterConfig,
    /// `None` on a witness, which holds no blobs.
    pub blobs: Option<BlobDir>,
    pub local_view: Arc<super::blobs::LocalView>,
}

/// Serves other masters' requests on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, raft: Raft, local: Local) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let raft = raft.clone();
                let local = local.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, raft, local).await
                        && e.kind() != io::ErrorKind::UnexpectedEof
                    {
                        log::debug!("cluster: connection from {peer}: {e}");
                    }
                });
            }
            Err(e) => {
                log::warn!("cluster: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(mut stream: TcpStream, raft: Raft, local: Local) -> io::Result<()> {
    stream.set_nodelay(true)?;
    loop {
        let req: Request = recv_msg(&mut stream).await?;
        let resp = match req {
            Request::Append(r) => Response::Append(raft.append_entries(r).await),
            Request::Vote(r) => Response::Vote(raft.vote(r).await),
            Request::Snapshot(r) => Response::Snapshot(raft.install_snapshot(r).await),
            Request::Write(op) => Response::Write(match raft.client_write(op).await {
                Ok(r) => Ok(r.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    Err(WriteRefused::NotLeader)
                }
                Err(e) => Err(WriteRefused::Failed(e.to_string())),
            }),
            Request::Status => {
                Response::Status(super::status_of(&raft, &local.cfg, &local.local_view))
            }
            Request::Hold => {
                super::hold(&raft, &local.local_view);
                Response::Done(Ok(()))
            }
            Request::Members(change) => Response::Done(super::change_members(&raft, change).await),
            Request::Blob(r) => Response::Blob(match &local.blobs {
                // File I/O (and a whole blob's digest check) off the runtime's worker,
                // which must keep answering heartbeats.
                Some(dir) => {
                    let dir = dir.clone();
                    tokio::task::spawn_blocking(move || super::blobs::answer(&dir, r))
                        .await
                        .unwrap_or_else(|e| match_blob_panic(&e))
                }
                None => refuse_blob(&r),
            }),
        };
        send_msg(&mut stream, &resp).await?;
    }
}

/// A witness holds no blobs.
fn refuse_blob(r: &BlobRequest) -> BlobResponse {
    let why = "a witness holds no blobs".to_owned();
    match r {
        BlobRequest::Has(_) => BlobResponse::Has(false),
        BlobRequest::Put { .. } => BlobResponse::Put(Err(why)),
        BlobRequest::Get { .. } => BlobResponse::Get(Err(why)),
    }
}

fn match_blob_panic(e: &tokio::task::JoinError) -> BlobResponse {
    BlobResponse::Put(Err(format!("blob request failed: {e}")))
}

/// One kept connection to another master.
#[derive(Debug)]
pub struct Peer {
    target: NodeId,
    addr: String,
    stream: Option<TcpStream>,
}

/// Why a call to another master failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect to master {target} at {addr}")]
    Connect {
        target: NodeId,
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("master {target} at {addr}")]
    Io {
        target: NodeId,
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("master {target} at {addr} did not answer within {ttl:?}")]
    Timeout {
        target: NodeId,
        addr: String,
        ttl: Duration,
    },
    #[error("master {target} at {addr} answered another request kind (a bug)")]
    Mismatch { target: NodeId, addr: String },
}

impl Peer {
    pub fn new(target: NodeId, addr: &str) -> Self {
        Self {
            target,
            addr: addr.to_owned(),
            stream: None,
        }
    }

    /// One request and its response within `ttl`; the connection is dropped on any error
    /// and made again on the next call.
    pub async fn call(&mut self, req: &Request, ttl: Duration) -> Result<Response, CallError> {
        let r = tokio::time::timeout(ttl, self.round_trip(req)).await;
        match r {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(CallError::Timeout {
                    target: self.target,
                    addr: self.addr.clone(),
                    ttl,
                })
            }
        }
    }

    async fn round_trip(&mut self, req: &Request) -> Result<Response, CallError> {
        if self.stream.is_none() {
            let connect = async {
                let addr: SocketAddr = self
                    .addr
                    .parse()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Ok::<_, io::Error>(s)
            };
            let s = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .unwrap_or_else(|_| Err(io::Error::from(io::ErrorKind::TimedOut)))
                .map_err(|source| CallError::Connect {
                    target: self.target,
                    addr: self.addr.clone(),
                    source,
                })?;
            self.stream = Some(s);
        }
        let io_err = |source| CallError::Io {
            target: self.target,
            addr: self.addr.clone(),
            source,
        };
        let Some(s) = self.stream.as_mut() else {
            unreachable!("connected above")
        };
        send_msg(s, req).await.map_err(io_err)?;
        recv_msg(s).await.map_err(io_err)
    }

    fn mismatch(&self) -> CallError {
        CallError::Mismatch {
            target: self.target,
            addr: self.addr.clone(),
        }
    }
}

/// Makes Raft's clients, one [`Peer`] per target.
#[derive(Debug, Clone, Default)]
pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        Peer::new(target, &node.addr)
    }
}

fn rpc_err<E: std::error::Error>(e: CallError) -> RPCError<NodeId, Member, E> {
    match e {
        e @ CallError::Connect { .. } => RPCError::Unreachable(Unreachable::new(&e)),
        e => RPCError::Network(NetworkError::new(&e)),
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.call(&Request::Append(rpc), option.hard_ttl()).await {
            Ok(Response::Append(r)) => r.map_err(|e| RemoteError::new(self.target, e).into()),
            Ok(_) => Err(rpc_err(self.mismatch())),
            Err(e) => Err(rpc_err(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(&Request::Snapshot(rpc), option.hard_ttl()).await {
            Ok(Response::Snapshot(r)) => r.map_err(|e| RemoteError::new(self.target, e).into()),
            Ok(_) => Err(rpc_err(self.mismatch())),
            Err(e) => Err(rpc_err(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.call(&Request::Vote(rpc), option.hard_ttl()).await {
            Ok(Response::Vote(r)) => r.map_err(|e| RemoteError::new(self.target, e).into()),
            Ok(_) => Err(rpc_err(self.mismatch())),
            Err(e) => Err(rpc_err(e)),
        }
    }
}

/// The peers a member forwards writes to, by id (kept connections).
pub type Forwarders = Arc<tokio::sync::Mutex<BTreeMap<NodeId, Peer>>>;
