//! Control socket tests: a daemon thread and a client on a temporary state directory.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use nix::unistd::{Gid, Uid};

use super::*;
use crate::state::Master;
use crate::state::fixture;

#[test]
fn lock_is_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let lock = StateLock::acquire(dir.path()).unwrap();
    let err = StateLock::acquire(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("in use by another master process"),
        "{err}"
    );
    drop(lock);
    StateLock::acquire(dir.path()).unwrap();
}

#[test]
fn daemon_serves_requests_with_progress() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture::image(dir.path(), "1.0.0", "", &fixture::vendor_key());
    let img_path = dir.path().join("release-1.0.0.img");
    std::fs::write(&img_path, &img).unwrap();
    let state = dir.path().join("state");
    let mut master = fixture::master(dir.path());
    let _lock = StateLock::acquire(&state).unwrap();
    let daemon = Daemon::bind(&state, None).unwrap();
    let mode = std::fs::metadata(daemon.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let server = std::thread::spawn(move || {
        for _ in 0..4 {
            daemon.serve_one(&mut master).unwrap();
        }
    });
    let call = |req: Request, progress: &mut dyn FnMut(u64, u64)| {
        Client::connect(&state).unwrap().call(&req, progress)
    };
    assert_eq!(call(Request::Ping, &mut |_, _| {}).unwrap(), Reply::Pong);
    let mut last = (0, 0);
    let reply = call(
        Request::Import {
            path: img_path,
            activate: true,
        },
        &mut |d, t| last = (d, t),
    )
    .unwrap();
    assert!(matches!(reply, Reply::Imported(_)), "{reply:?}");
    assert!(last.1 > 0 && last.0 == last.1, "progress {last:?}");
    // An operation error comes back as the error chain.
    let err = call(
        Request::Explain {
            mac: fixture::N1.parse().unwrap(),
        },
        &mut |_, _| {},
    )
    .unwrap_err();
    let ControlError::Remote(chain) = err else {
        panic!("{err:?}")
    };
    assert!(
        chain.join(": ").contains("unknown node 02:00:00:00:00:01"),
        "{chain:?}"
    );
    let reply = call(Request::Releases, &mut |_, _| {}).unwrap();
    let Reply::Releases(r) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(r[0].release.to_string(), "shelf-os@1.0.0");
    server.join().unwrap();
}

#[test]
fn poll_once_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut master = fixture::master(dir.path());
    let daemon = Daemon::bind(&state, None).unwrap();
    daemon.set_nonblocking().unwrap();
    assert_eq!(
        daemon
            .poll_once(&mut master, Backplane::Unserved)
            .unwrap()
            .executed,
        0
    );
    let client = std::thread::spawn(move || {
        Client::connect(&state)
            .unwrap()
            .call(&Request::Ping, &mut |_, _| {})
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while daemon
        .poll_once(&mut master, Backplane::Unserved)
        .unwrap()
        .executed
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "client never connected"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(client.join().unwrap().unwrap(), Reply::Pong);
}

/// Polls the daemon until `done` or 10 s pass.
fn poll_until(daemon: &Daemon, master: &mut Master, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "daemon never got there");
        daemon.poll_once(master, Backplane::Unserved).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn read_reply(mut stream: &UnixStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn a_silent_client_does_not_hold_up_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut master = fixture::master(dir.path());
    let daemon = Daemon::bind(&state, None)
        .unwrap()
        .with_client_timeout(Duration::from_millis(300));
    daemon.set_nonblocking().unwrap();
    // Connects and sends half a request, then nothing.
    let silent = UnixStream::connect(daemon.path()).unwrap();
    (&silent).write_all(b"{\"pi").unwrap();
    poll_until(&daemon, &mut master, || daemon.pending() == 1);
    // A whole request sent in two pieces from another client is served meanwhile.
    let st = state.clone();
    let client = std::thread::spawn(move || {
        Client::connect(&st)
            .unwrap()
            .call(&Request::Ping, &mut |_, _| {})
    });
    let mut served = false;
    poll_until(&daemon, &mut master, || {
        served |= client.is_finished();
        served
    });
    assert_eq!(client.join().unwrap().unwrap(), Reply::Pong);
    assert_eq!(daemon.pending(), 1, "the silent client is still waiting");
    // Past its timeout the silent one is told why and dropped.
    std::thread::sleep(Duration::from_millis(350));
    daemon.poll_once(&mut master, Backplane::Unserved).unwrap();
    assert_eq!(daemon.pending(), 0);
    let reply = read_reply(&silent);
    assert!(reply.contains("no request line within 300 ms"), "{reply}");
}

#[test]
fn pending_clients_are_bounded_and_bad_lines_answered() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut master = fixture::master(dir.path());
    let daemon = Daemon::bind(&state, None).unwrap();
    daemon.set_nonblocking().unwrap();
    let mut waiting: Vec<UnixStream> = (0..MAX_PENDING)
        .map(|_| UnixStream::connect(daemon.path()).unwrap())
        .collect();
    poll_until(&daemon, &mut master, || daemon.pending() == MAX_PENDING);
    let extra = UnixStream::connect(daemon.path()).unwrap();
    daemon.poll_once(&mut master, Backplane::Unserved).unwrap();
    let reply = read_reply(&extra);
    assert!(reply.contains("busy"), "{reply}");
    // A client that closes before a whole line is dropped quietly; a malformed line
    // gets an error line.
    drop(waiting.remove(0));
    poll_until(&daemon, &mut master, || daemon.pending() == MAX_PENDING - 1);
    let bad = UnixStream::connect(daemon.path()).unwrap();
    (&bad).write_all(b"not json\n").unwrap();
    daemon.poll_once(&mut master, Backplane::Unserved).unwrap();
    assert_eq!(daemon.pending(), MAX_PENDING - 1);
    let reply = read_reply(&bad);
    assert!(reply.contains("malformed control request"), "{reply}");
}

#[test]
fn group_socket_is_0660_and_owned_by_the_group() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let gid = nix::unistd::getegid();
    let group = nix::unistd::Group::from_gid(gid).unwrap().unwrap();
    let daemon = Daemon::bind(dir.path(), Some(&group.name)).unwrap();
    let meta = std::fs::metadata(daemon.path()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid.as_raw());
    let err = Daemon::bind(dir.path(), Some("no-such-group-shelfboot")).unwrap_err();
    assert!(err.to_string().contains("unknown group"), "{err}");
}

#[test]
fn peer_policy() {
    let p = Policy {
        uid: Uid::from_raw(1000),
        group: Some(Gid::from_raw(50)),
    };
    assert!(p.allows(0, 0));
    assert!(p.allows(1000, 1000));
    assert!(p.allows(1001, 50));
    assert!(!p.allows(1001, 51));
    let p = Policy {
        uid: Uid::from_raw(0),
        group: None,
    };
    assert!(!p.allows(1001, 50));
}
