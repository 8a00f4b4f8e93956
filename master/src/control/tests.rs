//! Control socket tests: a daemon thread and a client on a temporary state directory.

use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::master::fixture;

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
    assert!(!daemon.poll_once(&mut master).unwrap());
    let client = std::thread::spawn(move || {
        Client::connect(&state)
            .unwrap()
            .call(&Request::Ping, &mut |_, _| {})
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !daemon.poll_once(&mut master).unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "client never connected"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(client.join().unwrap().unwrap(), Reply::Pong);
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
