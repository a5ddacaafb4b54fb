//! Migration between two "nodes": network namespaces joined by a veth pair, restartd in one,
//! migrate in the other. Each test proves from the target's own log where it runs, and that a
//! failed migration leaves it running, intact, at the source.

mod support;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::nodes::*;
use support::*;

#[test]
fn a_process_moves_to_the_other_node_and_goes_on_there() {
    let Some(n) = Nodes::new() else { return };
    let dir = tmpdir("mig-basic");
    let key = keyfile(&dir, "key");
    let d = Daemon::start(&n, &["--key", &key, "--allow-root"]);
    let (mut src, log, pid) = migrant(&n, &dir, "8");
    assert!(check(pid, &log).contains(&n.ns_id(&n.a)));
    let o = migrate(&n, &["--key", &key, "-v", &pid.to_string(), &n.addr_b]);
    assert!(o.status.success(), "migrate: {}", stderr(&o));
    let new = pid_there(&o);
    assert!(gone(&mut src), "the source still runs");
    let v = check(new, &log);
    assert!(v.starts_with("ok") && v.contains(&n.ns_id(&n.b)), "after migration: {v}");
    assert!(v.contains("check=2"), "the counter of checks did not survive: {v}");
    assert!(stderr(&o).contains("frozen"), "-v: {}", stderr(&o));
    // Pipelined: restartd began restoring (created the process) when the image's header had
    // arrived, long before its 8 MiB of pages.
    let l = d.1.line(&format!("restored as pid {new}, "));
    let num = |after: &str| -> u64 {
        let rest = &l[l.find(after).unwrap_or_else(|| panic!("{l}")) + after.len()..];
        rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap()].parse().unwrap()
    };
    let (bytes, began) = (num(&format!("pid {new}, ")), num("began at "));
    assert!(began > 0 && began < bytes / 8, "restore began at {began} of {bytes} bytes: {l}");
    // The destination has the same libc, loader and program: their pages were not sent. An
    // image of the same process written here carries them (about 2 MB of libc alone).
    let img = dir.join("here.crf");
    let o = n.cmd(&n.b, crs(), &["ckpt", "-o", img.to_str().unwrap(), &new.to_string()]).output().unwrap();
    assert!(o.status.success(), "ckpt there: {}", stderr(&o));
    let here = std::fs::metadata(&img).unwrap().len();
    assert!(bytes + (1 << 20) < here, "the migration sent {bytes} bytes, an image with the files' pages is {here}");
}

/// A process with 8 threads, each counting, moves and goes on there, every thread counting on.
#[test]
fn a_threaded_process_moves_with_all_its_threads() {
    let Some(n) = Nodes::new() else { return };
    let dir = tmpdir("mig-threads");
    let key = keyfile(&dir, "key");
    let _d = Daemon::start(&n, &["--key", &key, "--allow-root"]);
    let (mut src, log, pid) = threaded_migrant(&n, &dir, "4", "8");
    let v = check(pid, &log);
    assert!(v.starts_with("ok") && v.contains("threads=8"), "before: {v}");
    let o = migrate(&n, &["--key", &key, &pid.to_string(), &n.addr_b]);
    assert!(o.status.success(), "migrate: {}", stderr(&o));
    let new = pid_there(&o);
    assert!(gone(&mut src), "the source still runs");
    std::thread::sleep(Duration::from_millis(50));
    let v = check(new, &log);
    assert!(v.starts_with("ok") && v.contains(&n.ns_id(&n.b)) && v.contains("threads=8"), "after migration: {v}");
    assert_eq!(std::fs::read_dir(format!("/proc/{new}/task")).unwrap().count(), 9, "not every thread came along");
}

#[test]
fn keep_copies_instead_of_moving() {
    let Some(n) = Nodes::new() else { return };
    let dir = tmpdir("mig-keep");
    let key = keyfile(&dir, "key");
    let _d = Daemon::start(&n, &["--key", &key, "--allow-root"]);
    let (mut src, log, pid) = migrant(&n, &dir, "4");
    let o = migrate(&n, &["--key", &key, "--keep", &pid.to_string(), &n.addr_b]);
    assert!(o.status.success(), "migrate: {}", stderr(&o));
    let new = pid_there(&o);
    assert!(!gone(&mut src));
    assert!(check(pid, &log).contains(&n.ns_id(&n.a)));
    assert!(check(new, &log).contains(&n.ns_id(&n.b)));
    let _ = src.kill();
}

/// Each refusal leaves the source running, intact, and says why in one line.
#[test]
fn refusals_leave_the_source_running() {
    let Some(n) = Nodes::new() else { return };
    let dir = tmpdir("mig-refuse");
    let key = keyfile(&dir, "key");
    let other = keyfile(&dir, "other");
    let (mut src, log, pid) = migrant(&n, &dir, "4");
    let p = pid.to_string();
    let cases: Vec<(Vec<&str>, Vec<&str>, &str)> = vec![
        (vec!["--key", &key, "--allow-root"], vec!["--key", &other], "wrong cluster key"),
        (vec!["--key", &key, "--allow-root"], vec![], "requires the cluster key"),
        (vec!["--key", &key], vec!["--key", &key], "uid is 0 (root)"),
        (vec!["--key", &key, "--allow-root", "--allow-uid", "1000-2000"], vec!["--key", &key], "not allowed"),
        (vec!["--key", &key, "--allow-root", "--max-image-size", "1M"], vec!["--key", &key], "exceeds the limit"),
    ];
    for (daemon, client, why) in cases {
        let d = Daemon::start(&n, &daemon);
        let mut args = client.clone();
        args.extend_from_slice(&[&p, &n.addr_b]);
        let o = migrate(&n, &args);
        assert_eq!(o.status.code(), Some(7), "{daemon:?} {client:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(why) && e.lines().count() == 1, "{daemon:?} {client:?}: {e:?} lacks {why:?}");
        still_runs_at_source(&n, &mut src, pid, &log, why);
        drop(d);
    }
    // Refused before anything is asked of anyone.
    let o = migrate(&n, &["--max-downtime", "10", &p, &n.addr_b]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--max-downtime is the budget of --live"), "{}", stderr(&o));
    still_runs_at_source(&n, &mut src, pid, &log, "--max-downtime");
    let _ = src.kill();
}

/// Nothing listening, or the restartd killed in the middle of the transfer: the source runs on.
#[test]
fn a_dead_destination_leaves_the_source_running() {
    let Some(n) = Nodes::new() else { return };
    let dir = tmpdir("mig-dead");
    let key = keyfile(&dir, "key");
    let (mut src, log, pid) = migrant(&n, &dir, "256");
    let o = migrate(&n, &["--key", &key, "--timeout", "3", &pid.to_string(), &n.addr_b]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot reach"), "{}", stderr(&o));
    assert!(check(pid, &log).starts_with("ok"));

    // Slow the link so the transfer takes long enough to be cut, then kill restartd once its
    // spool file shows the image is arriving.
    let spool = dir.join("spool");
    let d = Daemon::start(&n, &["--key", &key, "--allow-root", "--spool", spool.to_str().unwrap()]);
    let mut m = n.cmd(&n.a, crs(), &["migrate", "--key", &key, "--timeout", "5", &pid.to_string(), &n.addr_b]);
    m.stdout(Stdio::piped()).stderr(Stdio::piped());
    let m = m.spawn().unwrap();
    slow_link_and_wait_for_spool(&n, &spool);
    // Kill the daemon and its handler (the whole namespace's crs processes but the source).
    let pids = Command::new("ip").args(["netns", "pids", &n.b]).output().unwrap();
    for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-9", p]).status();
    }
    drop(d);
    let o = m.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stderr(&o).contains("runs on here"), "{}", stderr(&o));
    still_runs_at_source(&n, &mut src, pid, &log, "");
    let _ = src.kill();
}

/// Eight processes migrated at once to one restartd all arrive intact.
#[test]
fn eight_at_once() {
    let Some(n) = Nodes::new() else { return };
    let dir = tmpdir("mig-eight");
    let key = keyfile(&dir, "key");
    let _d = Daemon::start(&n, &["--key", &key, "--allow-root"]);
    let mut procs = Vec::new();
    for i in 0..8 {
        let sub = dir.join(format!("p{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        procs.push(migrant(&n, &sub, "16"));
    }
    let handles: Vec<_> = procs
        .iter()
        .map(|(_, _, pid)| {
            let mut c = n.cmd(&n.a, crs(), &["migrate", "--key", &key, &pid.to_string(), &n.addr_b]);
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    for (h, (src, log, _)) in handles.into_iter().zip(procs.iter_mut()) {
        let o = h.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let new = pid_there(&o);
        assert!(gone(src));
        let v = check(new, log);
        assert!(v.starts_with("ok") && v.contains(&n.ns_id(&n.b)), "{v}");
    }
}

/// Random and truncated byte streams: restartd answers or drops them, and still serves.
#[test]
fn garbage_does_not_stop_restartd() {
    let Some(n) = Nodes::new() else { return };
    let dir = tmpdir("mig-fuzz");
    let key = keyfile(&dir, "key");
    let _d = Daemon::start(&n, &["--key", &key, "--allow-root", "--timeout", "2"]);
    // From namespace a, through a small helper: the test itself lives in the root namespace.
    let mut seed = 0x1234_5678u64;
    for i in 0..40 {
        let len = (i * 37) % 300;
        let mut bytes = Vec::with_capacity(len);
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.push(seed as u8);
        }
        if i % 4 == 0 && len >= 4 {
            bytes[..4].copy_from_slice(&[1, 44, 0, 0]); // a Hello header, then junk
        }
        let f = dir.join("junk");
        std::fs::write(&f, &bytes).unwrap();
        let script =
            format!("exec 3<>/dev/tcp/{}/1023; cat {} >&3; timeout 3 cat <&3 >/dev/null; true", n.addr_b, f.display());
        let st = n.cmd(&n.a, "bash", &["-c", &script]).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
        assert!(st.success());
    }
    let (mut src, log, pid) = migrant(&n, &dir, "4");
    let o = migrate(&n, &["--key", &key, &pid.to_string(), &n.addr_b]);
    assert!(o.status.success(), "restartd stopped serving after garbage: {}", stderr(&o));
    assert!(gone(&mut src));
    let new = pid_there(&o);
    assert!(check(new, &log).starts_with("ok"));
}

/// A man in the middle on loopback: forwards a migration to restartd, recording what the client
/// sends and optionally flipping one byte of it at `flip`.
fn proxy(to: std::net::SocketAddr, flip: Option<usize>) -> (u16, std::sync::mpsc::Receiver<Vec<u8>>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut s = std::net::TcpStream::connect(to).unwrap();
        let (mut c2, mut s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut s2, &mut c2);
            let _ = c2.shutdown(std::net::Shutdown::Write);
        });
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(at) = flip
                && at >= seen.len()
                && at < seen.len() + n
            {
                buf[at - seen.len()] ^= 0x01;
            }
            seen.extend_from_slice(&buf[..n]);
            if s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        let _ = tx.send(seen);
    });
    (port, rx)
}

/// A byte changed in flight, or a whole recorded session played again, is refused before
/// anything of it runs; the source runs on.
#[test]
fn tampered_and_replayed_streams_are_refused() {
    if !is_root() {
        return;
    }
    let dir = tmpdir("mig-tamper");
    let key = keyfile(&dir, "key");
    let (_daemon, _, port) = on_free_port("listening", "restartd", |port| {
        let mut d = Command::new(crs());
        d.args(["restartd", "-b", "127.0.0.1", "-p", &port.to_string(), "--key", &key, "--allow-root"]);
        d
    });
    let to: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let log = dir.join("log");
    let mut src = local_migrant(&log, "4");
    let pid = src.0.id() as i32;

    // 1. One bit flipped in the middle of the image.
    let (pp, _) = proxy(to, Some(200_000));
    let o = run(&["migrate", "--key", &key, &pid.to_string(), &format!("127.0.0.1:{pp}")]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(!gone(&mut src.0));
    assert!(check(pid, &log).starts_with("ok"));

    // 2. A good session, recorded, then played again to restartd.
    let (pp, rec) = proxy(to, None);
    let o = run(&["migrate", "--key", &key, "--keep", &pid.to_string(), &format!("127.0.0.1:{pp}")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let copy = pid_there(&o);
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(copy, libc::SIGKILL) };
    let recorded = rec.recv_timeout(TIMEOUT).unwrap();
    let before = lines(&log);
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(&recorded);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("wrong cluster key"), "a replayed session got {text:?}");
    assert_eq!(lines(&log), before, "something of the replayed image ran");
}

/// restartd -i started by the real inetd (openbsd-inetd) for each connection.
#[test]
fn through_inetd() {
    if !require(is_root() && Path::new("/usr/sbin/inetd").exists(), "root and openbsd-inetd") {
        return;
    }
    let dir = tmpdir("mig-inetd");
    let key = keyfile(&dir, "key");
    let conf = dir.join("inetd.conf");
    let (inetd, _, port) = on_free_port("ADD", "inetd", |port| {
        let line = format!("127.0.0.1:{port} stream tcp nowait root {} restartd -i --key {key} --allow-root\n", crs());
        std::fs::write(&conf, line).unwrap();
        let mut i = Command::new("/usr/sbin/inetd");
        i.arg("-d").arg(&conf);
        i
    });

    let log = dir.join("log");
    let mut src = local_migrant(&log, "8");
    let pid = src.0.id() as i32;
    let o = run(&["migrate", "--key", &key, &pid.to_string(), &format!("127.0.0.1:{port}")]);
    drop(inetd);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(gone(&mut src.0));
    let new = pid_there(&o);
    let v = check(new, &log);
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(new, libc::SIGKILL) };
    assert!(v.starts_with("ok") && v.contains("check=1"), "{v}");
}

/// The destination lacks a file the process has open (its own mount namespace hides the log's
/// directory): the restore fails there, and the source runs on.
#[test]
fn a_restore_failing_at_the_destination_leaves_the_source_running() {
    let Some(n) = Nodes::new() else { return };
    let dir = tmpdir("mig-nofile");
    let key = keyfile(&dir, "key");
    let node = dir.join("node");
    std::fs::create_dir_all(&node).unwrap();
    let (mut src, log, pid) = migrant(&n, &node, "4");
    let script = format!(
        "mount -t tmpfs none {} && exec {} restartd -b {} -p 1023 --key {key} --allow-root",
        node.display(),
        crs(),
        n.addr_b
    );
    let mut c = n.cmd(&n.b, "unshare", &["-m", "--propagation", "private", "sh", "-c", &script]);
    c.stderr(Stdio::piped()).stdout(Stdio::null()).stdin(Stdio::null());
    let mut d = c.spawn().unwrap();
    watch(&mut d, "listening", "restartd");
    let o = migrate(&n, &["--key", &key, &pid.to_string(), &n.addr_b]);
    let _ = d.kill();
    let _ = d.wait();
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stderr(&o).contains("RestoreFailed") && stderr(&o).contains("log"), "{}", stderr(&o));
    still_runs_at_source(&n, &mut src, pid, &log, "");
    let _ = src.kill();
}

/// The link goes down in the middle of the transfer: migrate gives up after its timeout and the
/// source runs on; restartd drops its half-built copy.
#[test]
fn a_link_down_mid_transfer_leaves_the_source_running() {
    let Some(n) = Nodes::new() else { return };
    let dir = tmpdir("mig-linkdown");
    let key = keyfile(&dir, "key");
    let spool = dir.join("spool");
    let _d = Daemon::start(&n, &["--key", &key, "--allow-root", "--timeout", "3", "--spool", spool.to_str().unwrap()]);
    let (mut src, log, pid) = migrant(&n, &dir, "256");
    let mut m = n.cmd(&n.a, crs(), &["migrate", "--key", &key, "--timeout", "3", &pid.to_string(), &n.addr_b]);
    m.stdout(Stdio::piped()).stderr(Stdio::piped());
    let m = m.spawn().unwrap();
    slow_link_and_wait_for_spool(&n, &spool);
    ip(&["-n", &n.a, "link", "set", &n.veth_a, "down"]);
    let o = m.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    still_runs_at_source(&n, &mut src, pid, &log, "");
    let _ = src.kill();
}

/// A restartd without a key serves only its own node, and restores only processes of the
/// local user at the other end of the connection: nobody may not send root's image.
#[test]
fn a_keyless_restartd_restores_only_the_connecting_users_processes() {
    if !require(is_root() && Path::new("/usr/bin/python3").exists(), "root and python3") {
        return;
    }
    let dir = tmpdir("mig-keyless");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // An image of root's process, readable by nobody.
    let log = dir.join("log");
    let mut src = local_migrant(&log, "4");
    let img = dir.join("root.crf");
    ckpt(&["-o", img.to_str().unwrap(), &src.0.id().to_string()]);
    std::fs::set_permissions(&img, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();

    let (_daemon, _, port) = on_free_port("listening", "restartd", |port| {
        let mut d = Command::new(crs());
        d.args(["restartd", "-b", "127.0.0.1", "-p", &port.to_string(), "--allow-root"]);
        d
    });

    // nobody sends root's image, by hand (support::NOBODY_CLIENT).
    let out = nobody_sends(port, img.to_str().unwrap());
    assert!(
        out.starts_with("error 3") && out.contains("uid 65534") && out.contains("connecting user's processes"),
        "{out}"
    );
    // Root's process runs on, untouched, and no copy of it was made.
    assert!(!gone(&mut src.0));
    assert_eq!(lines(&log), 1, "a copy ran: {}", std::fs::read_to_string(&log).unwrap());
}

/// restartd -i as systemd starts it for each connection of a socket unit with Accept=yes
/// (systemd-socket-activate --inetd does the same as the unit in contrib/).
#[test]
fn through_systemd_socket_activation() {
    let tool = "/usr/bin/systemd-socket-activate";
    if !require(is_root() && Path::new(tool).exists(), "root and systemd-socket-activate") {
        return;
    }
    let dir = tmpdir("mig-systemd");
    let key = keyfile(&dir, "key");
    let (_act, _, port) = on_free_port("Listening on", "socket-activate", |port| {
        let mut a = Command::new(tool);
        let at = format!("127.0.0.1:{port}");
        a.args(["-l", &at, "--inetd", "-a", crs(), "restartd", "-i", "--key", &key, "--allow-root"]);
        a
    });

    let log = dir.join("log");
    let mut src = local_migrant(&log, "8");
    let o = run(&["migrate", "--key", &key, &src.0.id().to_string(), &format!("127.0.0.1:{port}")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(gone(&mut src.0));
    let new = pid_there(&o);
    let v = check(new, &log);
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(new, libc::SIGKILL) };
    assert!(v.starts_with("ok") && v.contains("check=1"), "{v}");
}

/// Migration as library calls, as a balancer would make them: one thread serves a connection
/// with `serve_one`, another moves a process there with `migrate`; no applet is involved.
#[test]
fn the_library_migrates_without_the_command_line() {
    if !require(is_root(), "root") {
        return;
    }
    let dir = tmpdir("mig-library");
    let log = dir.join("log");
    let src = local_migrant(&log, "4");
    let key: [u8; 32] = crs::net::random().unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let cfg = crs::migration::ServeConfig {
        key: Some(key),
        spool: None,
        uids: None,
        allow_root: true,
        limit: 1 << 30,
        timeout: Duration::from_secs(10),
        handshake: Duration::from_secs(10),
        min_rate: 1,
        move_address: false,
        backend: Default::default(),
    };
    let server = std::thread::spawn(move || {
        let (s, peer) = l.accept().unwrap();
        crs::migration::serve_one(s, peer, &cfg)
    });
    let opts = crs::migration::Options {
        keep: false,
        key: Some(key),
        timeout: Duration::from_secs(10),
        stubs: Default::default(),
        no_binary: false,
        no_libs: false,
        tcp_established: false,
        unix_reconnect: false,
        move_address: None,
        live: None,
        post_copy: false,
        backend: Default::default(),
    };
    let moved = crs::migration::migrate(src.0.id() as i32, &[addr], &opts).expect("migrate");
    let served = server.join().unwrap().expect("serve_one");
    assert_eq!(moved.remote_pid, served.pid);
    assert_eq!(served.original_pid, src.0.id() as i32);
    // Killed at the source (and reaped already: this process was its tracer as well as its
    // parent).
    assert!(!Path::new(&format!("/proc/{}", src.0.id())).exists(), "the source still runs");
    let v = check(served.pid, &log);
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(served.pid, libc::SIGKILL) };
    assert!(v.starts_with("ok") && v.contains("check=1"), "{v}");

    // A failure is typed: where it left the process says the error, not its text.
    let mut src = local_migrant(&dir.join("log2"), "1");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let e = crs::migration::migrate(src.0.id() as i32, &[closed], &opts).unwrap_err();
    assert!(matches!(e, crs::Error::Migration { left: crs::error::Left::RunningHere, .. }), "{e:?}");
    assert!(!gone(&mut src.0));
}

/// The live migration target: 64 MiB written at 10 MB/s, pages dropped and an area mapped
/// afresh now and then (tests/targets/writer.c).
fn writer(n: &Nodes, dir: &Path) -> (std::process::Child, std::path::PathBuf, i32) {
    writer_as(n, dir, "churn")
}

/// The writer of 64 MiB at 10 MB/s, in `mode` (writer.c's argv[4]; "" for none). In the
/// "file" modes its file lies in a directory only root may look into, which restartd (that
/// looks at files as nobody) does not count as a file it holds.
fn writer_as(n: &Nodes, dir: &Path, mode: &str) -> (std::process::Child, std::path::PathBuf, i32) {
    use std::os::unix::fs::PermissionsExt;
    let log = dir.join("log");
    let private = dir.join("private");
    std::fs::create_dir_all(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = private.join("data");
    let mut args = vec![log.to_str().unwrap(), "64", "10", mode];
    if mode.starts_with("file") {
        args.push(data.to_str().unwrap());
    }
    let mut c = n.cmd(&n.a, target("writer").to_str().unwrap(), &args);
    c.stdin(Stdio::null()).stdout(Stdio::null());
    let child = c.spawn().unwrap();
    let l = log_line(&log, "ready", 0);
    let pid = l.split_whitespace().nth(1).unwrap().parse().unwrap();
    (child, log, pid)
}

/// The pid the process runs as at the destination, from migrate's "... it runs there as pid N".
fn pid_there(o: &std::process::Output) -> i32 {
    let out = String::from_utf8_lossy(&o.stdout);
    out.trim().rsplit(' ').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no pid in {out:?}"))
}

/// A writer of 64 MiB at 10 MB/s in `mode` (writer.c's argv[4]) on node a, moved after `ran`
/// with migrate --live -v to node b, where its verdict 300 ms later is ok and its own; None
/// when the kernel cannot track writes.
struct MovedLive {
    /// What migrate said (-v).
    err: String,
    /// Its check line there.
    after: String,
    /// Its pid there.
    pid: i32,
    /// Bytes of the image sent once it was frozen.
    image: u64,
    /// restartd, for its log.
    daemon: Daemon,
    _nodes: Nodes,
}

fn migrate_writer_live(name: &str, mode: &str, ran: Duration) -> Option<MovedLive> {
    migrate_writer_as(name, mode, ran, ("--live", false))
}

/// [`migrate_writer_live`] with migrate's `how` (--live or --post-copy), and with `hide`, to
/// a node b where the writer's private directory (its file) is not there at all.
fn migrate_writer_as(name: &str, mode: &str, ran: Duration, (how, hide): (&str, bool)) -> Option<MovedLive> {
    let n = Nodes::new()?;
    let dir = tmpdir(name);
    let key = keyfile(&dir, "key");
    let args = ["--key", &key, "--allow-root"];
    let daemon = match hide {
        true => {
            std::fs::create_dir_all(dir.join("private")).unwrap();
            Daemon::start_without(&n, &dir.join("private"), &args)
        }
        false => Daemon::start(&n, &args),
    };
    let (mut src, log, pid) = writer_as(&n, &dir, mode);
    std::thread::sleep(ran);
    let v = check(pid, &log);
    assert!(v.starts_with("ok"), "before: {v}");
    let o = migrate(&n, &["--key", &key, how, "-v", &pid.to_string(), &n.addr_b]);
    let err = stderr(&o);
    if !require(!err.contains("not live"), "write tracking (Linux 6.7+)") {
        return None;
    }
    assert!(o.status.success(), "migrate: {err}");
    let new = pid_there(&o);
    assert!(gone(&mut src), "the source still runs");
    // It writes on there; each page checks.
    std::thread::sleep(Duration::from_millis(300));
    let after = check(new, &log);
    assert!(after.starts_with("ok") && after.contains(&format!("pid {new}")), "after: {after}");
    assert!(!tracked(new), "the restored process is tracked");
    let image = err.split(" bytes in ").next().and_then(|s| s.rsplit(' ').next()).unwrap().parse().unwrap();
    Some(MovedLive { err, after, pid: new, image, daemon, _nodes: n })
}

/// --live: the memory of a process that keeps writing goes ahead while it runs; it moves with
/// every page as it last wrote it (pages it dropped read as zero, an area it mapped afresh
/// holds what it wrote there since), and the image sent once it was frozen carried only a
/// small part of its memory.
#[test]
fn a_live_migration_sends_the_memory_ahead_and_every_page_survives() {
    let Some(m) = migrate_writer_live("mig-live", "churn", Duration::from_millis(500)) else { return };
    let err = &m.err;
    assert!(err.contains("round 1:") && err.contains("sent ahead"), "-v says no round: {err}");
    let sent_ahead = m.daemon.1.line("bytes sent ahead");
    let ahead: u64 =
        sent_ahead.split_whitespace().rev().nth(3).unwrap().parse().unwrap_or_else(|_| panic!("{sent_ahead}"));
    assert!(ahead >= 64 << 20, "less than its memory went ahead: {sent_ahead}");
    // Its 512 MiB reserve, of which it touched one page, did not go. (Its 64 MiB may go
    // twice: a huge page khugepaged makes of them between two rounds counts as written. CI
    // saw 137 MB once.)
    assert!(ahead < 256 << 20, "untouched memory went ahead: {sent_ahead}");
    let image = m.image;
    assert!(image < 16 << 20, "the image after the freeze carried {image} bytes of a 64 MiB process: {err}");
}

/// --live of a process whose heap grows as it runs (malloc after malloc, brk after brk): the
/// kernel grows the heap under the registration of our write tracking, which stays ours, and
/// what went ahead of the heap stays held however far it grew since the last round. It moves
/// with every block it allocated, and the image sent once it was frozen carries a small part
/// of its memory.
#[test]
fn a_live_migration_follows_a_heap_that_grows() {
    // Some 10 MiB of heap by then, growing by as much a second.
    let Some(m) = migrate_writer_live("mig-live-grow", "grow", Duration::from_millis(1000)) else { return };
    let v = &m.after;
    let blocks: usize = v.split("blocks=").nth(1).and_then(|b| b.split(' ').next()?.parse().ok()).unwrap_or(0);
    assert!(blocks > 2500, "its heap grew by {blocks} blocks only: {v}");
    let (image, err) = (m.image, &m.err);
    assert!(image < 8 << 20, "the image after the freeze carried {image} bytes: {err}");
}

/// --live of a process that maps privately a file the destination does not have (32 MiB, of
/// which it keeps rewriting the first eighth): the file's pages go ahead with the rounds, and
/// the image sent once it was frozen carries none of those it left as they were; it moves
/// with every page of the file as it has it (its own and the file's), the mapping anonymous
/// memory there. Without them, the image would carry its 28 MiB of unmodified pages.
#[test]
fn a_live_migration_sends_ahead_a_file_the_destination_lacks() {
    let ran = Duration::from_millis(500);
    let Some(m) = migrate_writer_as("mig-live-file", "file", ran, ("--live", true)) else { return };
    let (image, err) = (m.image, &m.err);
    assert!(image < 8 << 20, "the image after the freeze carried {image} bytes: {err}");
    let sent_ahead = m.daemon.1.line("bytes sent ahead");
    let ahead: u64 =
        sent_ahead.split_whitespace().rev().nth(3).unwrap().parse().unwrap_or_else(|_| panic!("{sent_ahead}"));
    assert!(ahead >= (64 + 28) << 20, "the file's pages did not go ahead: {sent_ahead}");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", m.pid)).unwrap();
    assert!(!maps.contains("/private/data"), "the file is mapped there: {maps}");
}

/// The same to a node that has the file after all, where restartd, which looks at files as
/// nobody, does not see it (a directory of mode 700): its pages go ahead all the same, and the
/// restore, as the process's owner, maps the file, with the pages the process changed over
/// it; nothing went twice.
#[test]
fn a_file_sent_ahead_is_mapped_where_its_owner_finds_it() {
    let Some(m) = migrate_writer_live("mig-live-file-there", "file", Duration::from_millis(500)) else { return };
    let (image, err) = (m.image, &m.err);
    assert!(image < 8 << 20, "the image after the freeze carried {image} bytes: {err}");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", m.pid)).unwrap();
    assert!(maps.contains("/private/data"), "the file is not mapped there: {maps}");
}

/// The file sent ahead to a node without it, but the process sets the file's times to now
/// every 10 ms (its content as it was): the file is not found as it was when its pages began
/// to go, and the image carries them all, as without --live; it moves with every page right.
#[test]
fn a_file_that_changes_during_a_live_migration_goes_in_its_image() {
    let ran = Duration::from_millis(500);
    let Some(m) = migrate_writer_as("mig-live-touch", "file-touch", ran, ("--live", true)) else { return };
    let (image, err) = (m.image, &m.err);
    assert!(image > 28 << 20, "the image after the freeze carried {image} bytes, not the file's pages: {err}");
}

/// --post-copy alone of the same process: the file's pages go ahead all the same, before the
/// freeze (its other memory follows once it runs there), and the image carries none of those
/// it left as they were.
#[test]
fn a_post_copy_sends_ahead_a_file_the_destination_lacks() {
    let o = run(&["check"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let tracks = out.lines().any(|l| l.starts_with("ok") && l.contains("write tracking"));
    if !require(tracks, "write tracking (Linux 6.7+)") {
        return;
    }
    let ran = Duration::from_millis(500);
    let Some(m) = migrate_writer_as("mig-post-file", "file", ran, ("--post-copy", true)) else { return };
    let (image, err) = (m.image, &m.err);
    assert!(err.contains("round 1:"), "-v says no round: {err}");
    assert!(image < 8 << 20, "the image after the freeze carried {image} bytes: {err}");
}

/// restartd's limit (--max-image-size) counts the pages sent ahead, not the size of the
/// mappings they are sent for: the writer's 512 MiB reserve, of which it touched one page,
/// costs a page. It moves to a restartd that takes 160 MiB (refused before, by the reserve's
/// size); one that takes 32 MiB refuses it by name once more of its 64 MiB came, and it runs on
/// at the source.
#[test]
fn a_live_migration_counts_the_pages_sent_not_the_size_of_their_mappings() {
    let Some(n) = Nodes::new() else { return };
    let dir = tmpdir("mig-live-limit");
    let key = keyfile(&dir, "key");
    let (mut src, log, pid) = writer(&n, &dir);
    {
        let _d = Daemon::start(&n, &["--key", &key, "--allow-root", "--max-image-size", "32M"]);
        let o = migrate(&n, &["--key", &key, "--live", &pid.to_string(), &n.addr_b]);
        let e = stderr(&o);
        if !require(!e.contains("not live"), "write tracking (Linux 6.7+)") {
            return;
        }
        assert_eq!(o.status.code(), Some(7), "{e}");
        assert!(
            e.contains("the pages sent ahead (") && e.contains("exceed this restartd's limit (33554432 bytes)"),
            "{e}"
        );
        assert!(!gone(&mut src), "refused, the source is gone");
        let v = check(pid, &log);
        assert!(v.starts_with("ok") && v.contains(&format!("pid {pid}")), "refused, at the source: {v}");
        // A post-copy counts the pages that follow the image: cut once past the limit, its
        // copy killed there, and the process runs on here (it went through, and ran there).
        let o = migrate(&n, &["--key", &key, "--post-copy", &pid.to_string(), &n.addr_b]);
        assert!(!o.status.success(), "a post-copy past the limit moved: {}", stderr(&o));
        assert!(!gone(&mut src), "cut, the source is gone");
        let v = check(pid, &log);
        assert!(v.starts_with("ok") && v.contains(&format!("pid {pid}")), "cut, at the source: {v}");
        let cut = _d.1.line("then dropped");
        assert!(cut.contains("exceed this restartd's limit (33554432 bytes"), "{cut}");
        let copy: i32 =
            cut.split(" restored as pid ").nth(1).and_then(|r| r.split(',').next()).unwrap().parse().unwrap();
        let t0 = std::time::Instant::now();
        while std::path::Path::new(&format!("/proc/{copy}")).exists()
            && !std::fs::read_to_string(format!("/proc/{copy}/stat")).unwrap_or_default().contains(") Z")
        {
            assert!(t0.elapsed() < Duration::from_secs(10), "the copy {copy} still runs there");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _d = Daemon::start(&n, &["--key", &key, "--allow-root", "--max-image-size", "160M"]);
    let o = migrate(&n, &["--key", &key, "--live", &pid.to_string(), &n.addr_b]);
    assert!(o.status.success(), "migrate: {}", stderr(&o));
    let new = pid_there(&o);
    assert!(gone(&mut src), "the source still runs");
    let after = check(new, &log);
    assert!(after.starts_with("ok") && after.contains(&format!("pid {new}")), "after: {after}");
}

/// The pid, as this test sees it, of the process that is `inner` in a pid namespace below
/// ours (restartd's own).
fn outer_pid(inner: i32) -> i32 {
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else { continue };
        let ns: Vec<i32> = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .map(|v| v.split_whitespace().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default();
        if ns.len() == 2 && ns[1] == inner {
            return ns[0];
        }
    }
    panic!("no process is pid {inner} in a pid namespace below ours")
}

/// A tree moved by [`migrate_writer_tree`].
struct TreeMoved {
    /// "pids PID, KID", then what migrate said (-v).
    said: String,
    /// MiB of Pss of both processes before, and after at the destination.
    pss: (u64, u64),
}

/// restartd as the init of a pid namespace of its own: its handlers, and the processes they
/// restored once they end (orphans in that namespace), are all reaped, none left a zombie
/// (whose pid a later process of the same pid could not have).
#[test]
fn restartd_as_a_pid_namespaces_init_reaps_what_ends_there() {
    let Some(n) = Nodes::new() else { return };
    let dir = tmpdir("mig-reaps");
    let key = keyfile(&dir, "key");
    let d = Daemon::start_own_pids(&n, &["--key", &key, "--allow-root"]);
    // restartd: the one child of unshare (ip netns exec became unshare).
    let init = || -> i32 {
        let kids = std::fs::read_to_string(format!("/proc/{}/task/{}/children", d.0.id(), d.0.id())).unwrap();
        kids.split_whitespace().next().expect("restartd under unshare").parse().unwrap()
    };
    let restartd = init();
    let kids = |of: i32| -> Vec<(i32, char)> {
        let list = std::fs::read_to_string(format!("/proc/{of}/task/{of}/children")).unwrap_or_default();
        list.split_whitespace()
            .filter_map(|k| k.parse().ok())
            .filter_map(|k: i32| {
                let st = std::fs::read_to_string(format!("/proc/{k}/stat")).ok()?;
                Some((k, st.rsplit(')').next()?.split_whitespace().next()?.chars().next()?))
            })
            .collect()
    };
    let settled = |want: usize, why: &str| {
        let t0 = std::time::Instant::now();
        loop {
            let k = kids(restartd);
            let comm = |p: i32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            if k.iter().all(|&(p, s)| s != 'Z' && !comm(p).starts_with("crs")) && k.len() == want {
                return k;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "{why}: restartd's children {k:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut copies = Vec::new();
    for i in 0..2 {
        let d2 = dir.join(format!("m{i}"));
        std::fs::create_dir_all(&d2).unwrap();
        let (mut src, _log, pid) = migrant(&n, &d2, "4");
        let o = migrate(&n, &["--key", &key, &pid.to_string(), &n.addr_b]);
        assert!(o.status.success(), "migrate: {}", stderr(&o));
        assert!(gone(&mut src), "the source still runs");
        // Its handler gone and reaped, the copy is restartd's child.
        let k = settled(i + 1, "after a migration");
        let comm = |p: i32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        assert!(k.iter().all(|c| comm(c.0).starts_with("target-migrant")), "restartd's children {k:?}");
        let new: Vec<i32> = k.iter().map(|c| c.0).filter(|c| !copies.contains(c)).collect();
        copies.extend(new);
    }
    for c in copies {
        // SAFETY: kill has no memory effects.
        assert_eq!(unsafe { libc::kill(c, libc::SIGKILL) }, 0);
    }
    settled(0, "after the copies were killed");
}

/// A writer and its child (64 MiB each, each its own pages, both writing) on node a, moved
/// with `how` to node b (a pid namespace of its own there, where their pids are free); each
/// then checks every page there, the child still the parent's. None when the kernel cannot
/// track writes (`how` has --live). `writer`: writer.c's MiB, MB/s and mode, if not the above.
fn migrate_writer_tree(name: &str, how: &[&str], writer: Option<[&str; 3]>) -> Option<TreeMoved> {
    let n = Nodes::new()?;
    let dir = tmpdir(name);
    let key = keyfile(&dir, "key");
    let _d = Daemon::start_own_pids(&n, &["--key", &key, "--allow-root"]);
    let log = dir.join("log");
    let [mib, rate, mode] = writer.unwrap_or(["64", "10", "fork"]);
    let mut c = n.cmd(&n.a, target("writer").to_str().unwrap(), &[log.to_str().unwrap(), mib, rate, mode]);
    c.stdin(Stdio::null()).stdout(Stdio::null());
    let mut src = c.spawn().unwrap();
    let pid: i32 = log_line(&log, "ready", 0).split_whitespace().nth(1).unwrap().parse().unwrap();
    let kid: i32 = log_line(&log, "forked", 0).split_whitespace().nth(1).unwrap().parse().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for p in [pid, kid] {
        let v = check(p, &log);
        assert!(v.starts_with("ok") && v.ends_with(&format!("pid {p}")), "before: {v}");
    }
    let before = pss_mib(&[pid, kid]);
    let mut args = vec!["--key", &key, "-v"];
    args.extend_from_slice(how);
    let (p, b) = (pid.to_string(), n.addr_b.clone());
    args.extend([p.as_str(), b.as_str()]);
    let o = migrate(&n, &args);
    let err = stderr(&o);
    if !require(!err.contains("not live"), "write tracking (Linux 6.7+)") {
        let _ = src.kill();
        let _ = src.wait();
        return None;
    }
    assert!(o.status.success(), "migrate: {err}");
    let there = pid_there(&o);
    assert_eq!(there, pid, "restartd's pid namespace did not keep the pid");
    assert!(gone(&mut src), "the source still runs");
    let new = outer_pid(pid);
    let kids = std::fs::read_to_string(format!("/proc/{new}/task/{new}/children")).unwrap();
    let new_kid: i32 = kids.trim().parse().unwrap_or_else(|_| panic!("children of {new}: {kids:?}"));
    assert_eq!(outer_pid(kid), new_kid, "the child is not the restored parent's");
    let after = pss_mib(&[new, new_kid]);
    std::thread::sleep(Duration::from_millis(300));
    // Each answers with its pid there, the one it had here.
    for (p, was) in [(new, pid), (new_kid, kid)] {
        let v = check(p, &log);
        assert!(v.starts_with("ok") && v.ends_with(&format!("pid {was}")), "after: {v}");
        assert!(!tracked(p), "restored pid {p} is tracked");
    }
    Some(TreeMoved { said: format!("pids {pid}, {kid}\n{err}"), pss: (before, after) })
}

/// The bytes a "N bytes ..." figure of `text` says, N the word before `after`.
fn bytes_before(text: &str, after: &str) -> u64 {
    let at = text.find(after).unwrap_or_else(|| panic!("no {after:?} in {text}"));
    text[..at].rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("{text}"))
}

/// --live moves a tree: the memory of the process and of its child goes ahead while both
/// write it, and the image sent once they were frozen carries a small part of it.
#[test]
fn a_live_migration_sends_a_trees_memory_ahead() {
    let Some(m) = migrate_writer_tree("mig-live-tree", &["--live"], None) else { return };
    let (pids, err) = m.said.split_once('\n').unwrap();
    assert!(err.contains(&format!("the rounds sent ahead the memory of {pids}")), "{err}");
    let ahead: u64 = err.lines().filter(|l| l.contains("sent ahead in")).map(|l| bytes_before(l, " bytes sent")).sum();
    assert!(ahead >= 128 << 20, "less than the two processes' memory went ahead: {err}");
    let image = bytes_before(err, " bytes in ");
    assert!(image < 32 << 20, "the image after the freeze carried {image} bytes of two 64 MiB processes: {err}");
}

/// --live moves a tree whose processes write MAP_SHARED anonymous memory they both map
/// (writer.c "shm": 64 MiB, the parent writing its pages, the child its own, 10 MB/s): the
/// memory goes ahead while they write it, only what changed goes frozen, and each finds its
/// pages there as it wrote them, the other's writes in the same memory. So does a hybrid
/// migration (--live --post-copy).
#[test]
fn a_live_migration_sends_the_memory_a_tree_shares_ahead() {
    for how in [&["--live"][..], &["--live", "--post-copy"]] {
        let Some(m) = migrate_writer_tree("mig-live-shm", how, Some(["64", "10", "shm"])) else { return };
        let (_, err) = m.said.split_once('\n').unwrap();
        let shared = bytes_before(err, " bytes of memory the tree shares");
        assert!(shared >= 64 << 20, "{how:?}: the shared memory was not sent ahead: {err}");
        let image = bytes_before(err, " bytes in ");
        assert!(
            image < 32 << 20,
            "{how:?}: the image after the freeze carried {image} bytes of a tree sharing 64 MiB: {err}"
        );
    }
}

/// --live moves a tree whose processes share most of their memory since a fork (writer.c
/// "cow": the parent's 128 MiB, of which each writes 1 MB/s): what the child still shares
/// with its parent is not sent again, and the destination takes it as the parent's
/// (RUN_SHARED), so the restored tree shares it again and takes the memory it took here, not
/// twice as much; both then check every page of their own, still writing (copy-on-write holds).
/// So does a hybrid migration (--live --post-copy), whose pages not sent ahead follow.
#[test]
fn a_live_migration_keeps_what_a_tree_shares_since_a_fork_shared() {
    for how in [&["--live"][..], &["--live", "--post-copy"]] {
        let Some(m) = migrate_writer_tree("mig-live-cow", how, Some(["128", "1", "cow"])) else { return };
        let (before, after) = m.pss;
        println!("{how:?}: Pss of the tree: {before} MiB at the source, {after} MiB at the destination");
        assert!(before < 180, "the tree did not share its memory at the source: {before} MiB of Pss");
        assert!(
            after <= before + 24,
            "{how:?}: the restored tree takes {after} MiB where the original took {before}: {}",
            m.said
        );
        let not_sent = bytes_before(&m.said, " bytes of the descendants' memory were");
        assert!(not_sent >= 100 << 20, "{how:?}: the child's shared pages went again: {}", m.said);
        let sent: u64 =
            m.said.lines().filter(|l| l.contains("sent ahead in")).map(|l| bytes_before(l, " bytes sent")).sum();
        assert!(sent < 200 << 20, "{how:?}: {sent} bytes sent ahead of a tree of 128 MiB it shares: {}", m.said);
    }
}

/// A real program's tree: a Python pool, three workers forked from a parent holding 200 MiB
/// they only read (tests/targets/shared_pool.py), moved with --live. The workers' copies of
/// the parent's memory are not sent, the restored pool takes the memory it took here, and
/// every process goes on there with its pid: the parent finds its 200 MiB whole, each worker
/// hashes its slice to the same digest as before.
#[test]
fn a_python_pool_moves_live_and_still_shares_its_parents_memory() {
    pool_moves_live("mig-live-pool", false);
}

/// The same pool started by a shell, which is what is moved: the workers share their memory
/// with the pool's parent, not with the tree's root (the shell), and still go once.
#[test]
fn a_python_pool_under_a_shell_moves_live_and_still_shares() {
    pool_moves_live("mig-live-pool-sh", true);
}

fn pool_moves_live(name: &str, under_shell: bool) {
    if !require(Path::new("/usr/bin/python3").exists(), "python3 (apt install python3)") {
        return;
    }
    let Some(n) = Nodes::new() else { return };
    let dir = tmpdir(name);
    let key = keyfile(&dir, "key");
    let _d = Daemon::start_own_pids(&n, &["--key", &key, "--allow-root"]);
    let log = dir.join("log");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/shared_pool.py");
    let (script, l) = (script.to_str().unwrap(), log.to_str().unwrap());
    // (The shell waits for python and then runs ":", so that it does not exec it.)
    let line = format!("/usr/bin/python3 {script} {l}; :");
    let mut c = match under_shell {
        true => n.cmd(&n.a, "/bin/bash", &["-c", &line]),
        false => n.cmd(&n.a, "/usr/bin/python3", &[script, l]),
    };
    c.stdin(Stdio::null()).stdout(Stdio::null());
    let mut src = c.spawn().unwrap();
    let root = src.id() as i32;
    let pid: i32 = log_line(&log, "ready", 0).split_whitespace().nth(1).unwrap().parse().unwrap();
    // Each worker has hashed its slice once: its digest, as it was before the move.
    let digest = |w: usize, skip: usize| support::nodes::pool_worker(&log, w, skip);
    let before: Vec<(String, String)> = (0..3).map(|w| digest(w, 0)).collect();
    log_line(&log, "parent True", 0);
    let pss_here = pss_mib(&[vec![root], descendants(root)].concat());
    let r = root.to_string();
    let o = migrate(&n, &["--key", &key, "-v", "--live", &r, &n.addr_b]);
    let err = stderr(&o);
    if !require(!err.contains("not live"), "write tracking (Linux 6.7+)") {
        let _ = src.kill();
        let _ = src.wait();
        return;
    }
    assert!(o.status.success(), "migrate: {err}");
    assert!(gone(&mut src), "the source still runs");
    let not_sent = bytes_before(&err, " bytes of the descendants' memory were");
    assert!(not_sent >= 500 << 20, "the workers' copies of the parent's 200 MiB went: {err}");
    let new = outer_pid(root);
    let tree = [vec![new], descendants(new)].concat();
    assert_eq!(tree.len(), if under_shell { 5 } else { 4 }, "the pool there: {tree:?}");
    assert!(tree.contains(&outer_pid(pid)), "the pool's parent is not in the tree there: {tree:?}");
    let pss_there = pss_mib(&tree);
    println!("Pss of the pool: {pss_here} MiB here, {pss_there} MiB there");
    assert!(pss_there <= pss_here + 24, "the pool takes {pss_there} MiB there, {pss_here} MiB here: {err}");
    // Lines written there: every worker, as the same pid, with the same digest; the parent's
    // memory whole.
    let at = lines(&log);
    for (w, was) in before.iter().enumerate() {
        assert_eq!(&digest(w, at), was, "worker {w} after the move");
    }
    log_line(&log, "parent ", at);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("parent False"), "{text}");
    for p in tree {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

/// --post-copy moves a tree: both processes run there before their memory is there; the
/// memory of each follows (pages of the one, then the other: they hold different data at the
/// same addresses, and each checks its own).
#[test]
fn a_post_copy_migration_moves_a_tree() {
    let Some(m) = migrate_writer_tree("mig-post-tree", &["--post-copy"], None) else { return };
    let err = m.said.split_once('\n').unwrap().1;
    assert!(err.contains("post-copy: it ran there after"), "-v: {err}");
    let followed = bytes_before(err, " bytes followed");
    assert!(followed >= 128 << 20, "less than the two processes' memory followed: {err}");
    let image = bytes_before(err, " bytes in ");
    assert!(image < 32 << 20, "the image carried {image} bytes of two 64 MiB processes: {err}");
}

/// A live migration that fails once the pre-copy has begun (restartd refuses it: it spools)
/// leaves the process running at the source as it was: no userfaultfd, nothing registered.
#[test]
fn a_failed_live_migration_leaves_no_trace() {
    let Some(n) = Nodes::new() else { return };
    let dir = tmpdir("mig-live-fail");
    let key = keyfile(&dir, "key");
    let spool = dir.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let _d = Daemon::start(&n, &["--key", &key, "--allow-root", "--spool", spool.to_str().unwrap()]);
    let (mut src, log, pid) = writer(&n, &dir);
    let o = migrate(&n, &["--key", &key, "--live", &pid.to_string(), &n.addr_b]);
    let err = stderr(&o);
    if !require(!err.contains("not live"), "write tracking (Linux 6.7+)") {
        return;
    }
    assert!(!o.status.success(), "migrated to a spooling restartd");
    assert!(err.contains("--spool") && err.contains("runs on here"), "{err}");
    assert!(!gone(&mut src), "the source is gone");
    assert!(!tracked(pid), "the source is left tracked");
    std::thread::sleep(Duration::from_millis(200));
    let v = check(pid, &log);
    assert!(v.starts_with("ok"), "after: {v}");
}

/// --post-copy: the process runs at the destination before its memory is there, and keeps
/// writing it (dropping pages, mapping an area afresh) while its pages follow from the source,
/// those it waits for first; then every page checks, and the source is gone.
#[test]
fn a_post_copy_migration_runs_there_before_its_memory_arrives() {
    let Some(n) = Nodes::new() else { return };
    let dir = tmpdir("mig-post");
    let key = keyfile(&dir, "key");
    let d = Daemon::start(&n, &["--key", &key, "--allow-root"]);
    let (mut src, log, pid) = writer(&n, &dir);
    std::thread::sleep(Duration::from_millis(300));
    assert!(check(pid, &log).starts_with("ok"), "before");
    let o = migrate(&n, &["--key", &key, "--post-copy", "-v", &pid.to_string(), &n.addr_b]);
    let err = stderr(&o);
    assert!(o.status.success(), "migrate: {err}");
    let new = pid_there(&o);
    assert!(gone(&mut src), "the source still runs");
    assert!(err.contains("post-copy: it ran there after"), "-v: {err}");
    std::thread::sleep(Duration::from_millis(300));
    let v = check(new, &log);
    assert!(v.starts_with("ok") && v.contains(&format!("pid {new}")), "after: {v}");
    let l = d.1.line("post-copy: ");
    let num = |before: &str| -> u64 {
        let at = l.find(before).unwrap_or_else(|| panic!("{l}"));
        l[..at].rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("{l}"))
    };
    assert!(num(" pages in ") >= 16 << 8, "less than its 64 MiB followed: {l}");
    assert!(num(" asked for first") > 0, "it never waited for a page: {l}");
    assert!(!tracked(new), "the restored process is still registered with a userfaultfd");
    assert!(err.contains("asked for first (on a second connection)"), "-v: {err}");
    assert!(d.1.line("second connection from").contains("the pages asked for come on it"), "restartd");
}

/// A post-copy whose second connection cannot be made (the destination's node takes no
/// connection but restartd's): the pages asked for share the one connection, and the process
/// moves all the same.
#[test]
fn a_post_copy_without_its_second_connection_still_moves() {
    let Some(n) = Nodes::new() else { return };
    if !require(std::process::Command::new("nft").arg("-v").output().is_ok(), "nft (apt install nftables)") {
        return;
    }
    let dir = tmpdir("mig-post-one");
    let key = keyfile(&dir, "key");
    let d = Daemon::start(&n, &["--key", &key, "--allow-root"]);
    let rules = "table inet only1023 {\n chain input {\n  type filter hook input priority 0;\n  tcp dport != 1023 drop\n }\n}\n";
    let nft = n.cmd(&n.b, "nft", &["-f", "-"]).stdin(Stdio::piped()).spawn().map(|mut c| {
        use std::io::Write;
        c.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
        c.wait().unwrap()
    });
    assert!(nft.unwrap().success(), "nft");
    let (mut src, log, pid) = writer(&n, &dir);
    std::thread::sleep(Duration::from_millis(300));
    let o = migrate(&n, &["--key", &key, "--post-copy", "-v", &pid.to_string(), &n.addr_b]);
    let err = stderr(&o);
    assert!(o.status.success(), "migrate: {err}");
    let new = pid_there(&o);
    assert!(gone(&mut src), "the source still runs");
    assert!(err.contains("no second connection to") && err.contains("share the stream"), "-v: {err}");
    assert!(!err.contains("(on a second connection)"), "-v: {err}");
    assert!(d.1.line("no second connection").contains("none came within"), "restartd");
    std::thread::sleep(Duration::from_millis(300));
    let v = check(new, &log);
    assert!(v.starts_with("ok") && v.contains(&format!("pid {new}")), "after: {v}");
    assert!(d.1.line("post-copy: ").contains(" asked for first"), "restartd");
}

/// The link goes down while a post-copy's pages follow: the copy, which cannot have them all,
/// is killed at the destination, and the process runs on at the source as it was.
#[test]
fn a_post_copy_whose_link_fails_runs_on_at_the_source() {
    let Some(n) = Nodes::new() else { return };
    let dir = tmpdir("mig-post-fail");
    let key = keyfile(&dir, "key");
    let d = Daemon::start(&n, &["--key", &key, "--allow-root", "--timeout", "3"]);
    let (mut src, log, pid) = migrant(&n, &dir, "256");
    let tc = [
        "netns", "exec", &n.a, "tc", "qdisc", "add", "dev", &n.veth_a, "root", "tbf", "rate", "80mbit", "burst",
        "64kb", "latency", "50ms",
    ];
    assert!(std::process::Command::new("ip").args(tc).status().unwrap().success());
    let mut m =
        n.cmd(&n.a, crs(), &["migrate", "--key", &key, "--timeout", "3", "--post-copy", &pid.to_string(), &n.addr_b]);
    m.stdout(Stdio::piped()).stderr(Stdio::piped());
    let m = m.spawn().unwrap();
    let l = d.1.line("its pages follow (post-copy)");
    let copy: i32 = l.split(" runs as pid ").nth(1).and_then(|r| r.split(';').next()).unwrap().parse().unwrap();
    ip(&["-n", &n.a, "link", "set", &n.veth_a, "down"]);
    let o = m.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(7), "{err}");
    assert!(err.contains("post-copy stopped before every page was sent"), "{err}");
    still_runs_at_source(&n, &mut src, pid, &log, "");
    let k = d.1.line("were killed");
    assert!(k.contains(&copy.to_string()), "{k}");
    let t0 = std::time::Instant::now();
    while std::path::Path::new(&format!("/proc/{copy}")).exists() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the copy {copy} still runs at the destination");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = src.kill();
}

/// restartd's handler is killed (SIGKILL) while a post-copy's pages follow: the copy, which
/// would read zeros where its pages had not come (and a process that lives on with zeros is
/// moved here, with threads: where this once failed), dies with it, and the process runs on
/// at the source with its memory whole.
#[test]
fn a_post_copy_whose_handler_dies_kills_the_copy() {
    let Some(n) = Nodes::new() else { return };
    let dir = tmpdir("mig-post-handler");
    let key = keyfile(&dir, "key");
    let d = Daemon::start(&n, &["--key", &key, "--allow-root"]);
    let log = dir.join("log");
    let mut c = n.cmd(&n.a, target("zeros").to_str().unwrap(), &[log.to_str().unwrap(), "256", "3"]);
    c.stdin(Stdio::null()).stdout(Stdio::null());
    let mut src = c.spawn().unwrap();
    let pid: i32 = log_line(&log, "ready", 0).split_whitespace().nth(1).unwrap().parse().unwrap();
    let tc = [
        "netns", "exec", &n.a, "tc", "qdisc", "add", "dev", &n.veth_a, "root", "tbf", "rate", "80mbit", "burst",
        "64kb", "latency", "50ms",
    ];
    assert!(std::process::Command::new("ip").args(tc).status().unwrap().success());
    let mut m = n.cmd(&n.a, crs(), &["migrate", "--key", &key, "--post-copy", &pid.to_string(), &n.addr_b]);
    m.stdout(Stdio::piped()).stderr(Stdio::piped());
    let m = m.spawn().unwrap();
    let l = d.1.line("its pages follow (post-copy)");
    let copy: i32 = l.split(" runs as pid ").nth(1).and_then(|r| r.split(';').next()).unwrap().parse().unwrap();
    // Once it runs there on what it has (its pages come in address order meanwhile).
    log_line(&log, &format!("pid {copy} tick"), 0);
    let stat = std::fs::read_to_string(format!("/proc/{copy}/stat")).unwrap();
    let handler: i32 = stat.rsplit(')').next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: kill has no memory effects.
    assert_eq!(unsafe { libc::kill(handler, libc::SIGKILL) }, 0, "handler {handler}");
    let o = m.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(7), "{err}");
    assert!(err.contains("post-copy stopped before every page was sent"), "{err}");
    let t0 = std::time::Instant::now();
    while std::path::Path::new(&format!("/proc/{copy}")).exists() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the copy {copy} still runs at the destination");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!gone(&mut src), "the source is gone");
    let before = lines(&log);
    // SAFETY: kill has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0, "the source {pid} is gone");
    let v = log_line(&log, &format!("pid {pid} bad"), before);
    assert!(v.ends_with(" bad 0"), "the source: {v}");
    let _ = src.kill();
}

/// --live --post-copy (the hybrid mode): the memory goes ahead in a round or two while the
/// process runs, the process runs there after a short freeze, and what it wrote since the last
/// round follows; every page checks there.
#[test]
fn a_hybrid_migration_sends_most_ahead_and_the_rest_after() {
    let Some(n) = Nodes::new() else { return };
    let dir = tmpdir("mig-hybrid");
    let key = keyfile(&dir, "key");
    let d = Daemon::start(&n, &["--key", &key, "--allow-root"]);
    // Without churn: an area mapped afresh between the last round and the freeze changes the
    // shape of the one beside it, which then goes again whole (the destination holds areas as
    // they were sent), and this test is about how much goes ahead.
    let (mut src, log, pid) = writer_as(&n, &dir, "");
    std::thread::sleep(Duration::from_millis(300));
    let o = migrate(&n, &["--key", &key, "--live", "--post-copy", "-v", &pid.to_string(), &n.addr_b]);
    let err = stderr(&o);
    if !require(!err.contains("not live"), "write tracking (Linux 6.7+)") {
        return;
    }
    assert!(o.status.success(), "migrate: {err}");
    let new = pid_there(&o);
    assert!(gone(&mut src), "the source still runs");
    assert!(err.contains("round 1:") && err.contains("post-copy: it ran there after"), "-v: {err}");
    assert!(!err.contains("round 3:"), "more than two rounds: {err}");
    std::thread::sleep(Duration::from_millis(300));
    let v = check(new, &log);
    assert!(v.starts_with("ok") && v.contains(&format!("pid {new}")), "after: {v}");
    let ahead = d.1.line("bytes sent ahead");
    let ahead: u64 = ahead.split_whitespace().rev().nth(3).unwrap().parse().unwrap_or_else(|_| panic!("{ahead}"));
    assert!(ahead >= 64 << 20, "less than its memory went ahead: {ahead}");
    let l = d.1.line("post-copy: ");
    let after: u64 = l[..l.find(" pages in ").unwrap()].rsplit(' ').next().unwrap().parse().unwrap();
    assert!(after < 8 << 8, "{after} pages followed, of 64 MiB that went ahead: {l}");
    assert!(!tracked(new), "the restored process is still registered with a userfaultfd");
}

/// A Python process on node a that flips a mapping's flags (MADV_DONTDUMP, MADV_DODUMP) all
/// the time, once it said "ready" in `log`; and its pid.
fn flag_flipper(n: &Nodes, log: &Path) -> (std::process::Child, i32) {
    let script = support::nodes::flag_flipper_script(log, 0);
    let mut c = n.cmd(&n.a, "python3", &["-c", &script]);
    c.stdin(Stdio::null()).stdout(Stdio::null());
    let src = c.spawn().unwrap();
    let pid: i32 = log_line(log, "ready", 0).split_whitespace().nth(1).unwrap().parse().unwrap();
    (src, pid)
}

/// A migration takes the mappings' flags from a look just before the freeze, and checks them
/// against the frozen process's own while the image goes: a process that changes the flags of a
/// whole mapping (madvise) all the time is caught doing it between the two, and the migration
/// fails by name before the copy may run; the process runs on here.
#[test]
fn mapping_flags_that_change_as_the_process_is_frozen_fail_the_migration() {
    let Some(n) = Nodes::new() else { return };
    if !require(Path::new("/usr/bin/python3").exists(), "python3") {
        return;
    }
    let dir = tmpdir("mig-flags");
    let key = keyfile(&dir, "key");
    let d = Daemon::start(&n, &["--key", &key, "--allow-root"]);
    let (mut src, pid) = flag_flipper(&n, &dir.join("log"));
    // Half of the looks find the flags the freeze does not, when the process runs between the
    // two: on a loaded machine it often does not (twelve tries all missed, once, beside a CPU
    // hog), so up to forty.
    let mut caught = None;
    for _ in 0..40 {
        let o = migrate(&n, &["--key", &key, "--keep", &pid.to_string(), &n.addr_b]);
        let err = stderr(&o);
        if o.status.success() {
            let copy = pid_there(&o);
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(copy, libc::SIGKILL) };
            continue;
        }
        caught = Some(err);
        break;
    }
    let err = caught.expect("no migration saw the flags change");
    assert!(err.contains("changed as it was frozen") && err.contains("runs on here"), "{err}");
    assert!(!gone(&mut src), "the process is gone");
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert!(!state.contains(") T "), "left stopped: {state}");
    // Restored there, never let run: killed when the connection closed without Commit.
    let l = d.1.line("then dropped");
    let copy: i32 = l.split(" restored as pid ").nth(1).and_then(|r| r.split(',').next()).unwrap().parse().unwrap();
    let t0 = std::time::Instant::now();
    while Path::new(&format!("/proc/{copy}")).exists() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the copy {copy} is still there");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = src.kill();
}

/// The same for a post-copy, whose copy runs without waiting for the check (for a large
/// process it would be most of the freeze): the difference stops the post-copy before its last
/// page, the copy there is killed, and the process runs on here.
#[test]
fn mapping_flags_that_change_as_a_post_copied_process_is_frozen_stop_it() {
    let Some(n) = Nodes::new() else { return };
    if !require(Path::new("/usr/bin/python3").exists(), "python3") {
        return;
    }
    let dir = tmpdir("mig-flags-post");
    let key = keyfile(&dir, "key");
    let d = Daemon::start(&n, &["--key", &key, "--allow-root"]);
    let mut caught = None;
    // Each migration that does not catch it moves the process: a new one for the next try
    // (up to forty, as above).
    for i in 0..40 {
        let (mut src, pid) = flag_flipper(&n, &dir.join(format!("log{i}")));
        let o = migrate(&n, &["--key", &key, "--post-copy", &pid.to_string(), &n.addr_b]);
        if o.status.success() {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid_there(&o), libc::SIGKILL) };
            assert!(gone(&mut src), "moved, and still here");
            continue;
        }
        caught = Some((stderr(&o), src, pid));
        break;
    }
    let (err, mut src, pid) = caught.expect("no migration saw the flags change");
    assert!(
        err.contains("changed as it was frozen")
            && err.contains("post-copy stopped before every page was sent")
            && err.contains("runs on here"),
        "{err}"
    );
    assert!(!gone(&mut src), "the process is gone");
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert!(!state.contains(") T "), "left stopped: {state}");
    // The copy ran there; it is killed once the source gives up.
    let ran = d.1.all().into_iter().rfind(|l| l.contains("its pages follow (post-copy)")).unwrap();
    let copy: i32 = ran.split(" runs as pid ").nth(1).and_then(|r| r.split(';').next()).unwrap().parse().unwrap();
    let t0 = std::time::Instant::now();
    while Path::new(&format!("/proc/{copy}")).exists() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the copy {copy} still runs at the destination");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = src.kill();
}

/// PostgreSQL (Debian's, nobody here wrote it) started with su, as an admin does: su, the
/// postmaster and the processes it forks, its buffers in MAP_SHARED anonymous memory, a
/// System V segment, and a unix socket its clients of every user connect to. Moved with
/// --live to node b (a pid, IPC and mount namespace of its own there, with its own socket
/// directory: the paths are free as on another machine): the memory they share goes ahead,
/// the program's libraries under su are the destination's own (not in the image), and
/// there it answers with every row and takes more, for its user and for nobody.
#[test]
fn postgres_under_su_moves_live_and_serves_every_user_there() {
    let pg = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).filter(|b| b.join("postgres").exists()).max())
        .ok()
        .flatten();
    let ok = pg.is_some() && Path::new("/usr/bin/psql").exists() && is_root();
    if !require(ok, "root, postgres and psql (apt install postgresql)") {
        return;
    }
    let bin = pg.unwrap();
    let bin = bin.to_str().unwrap();
    let Some(n) = Nodes::new() else { return };
    let dir = tmpdir("mig-postgres");
    let d = dir.to_str().unwrap().to_string();
    let key = keyfile(&dir, "key");
    let (data, sock) = (format!("{d}/data"), format!("{d}/sock"));
    std::fs::create_dir(&sock).unwrap();
    assert!(Command::new("chown").args(["-R", "postgres", &d]).status().unwrap().success());
    // A shell command as a user, in this mount namespace or in that of process `at`.
    let sh = |user: &str, at: Option<i32>, cmd: &str| {
        let mut c = Command::new("nsenter");
        if let Some(p) = at {
            c.args(["-t", &p.to_string(), "-m"]);
        }
        c.args(["su", user, "-s", "/bin/sh", "-c", cmd]).stdin(Stdio::null());
        close_extra_fds(&mut c);
        let o = c.output().unwrap();
        (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout).trim(), stderr(&o)))
    };
    let (ok, said) = sh("postgres", None, &format!("{bin}/initdb -D {data} -A trust --no-sync"));
    assert!(ok, "initdb: {said}");
    let run = format!("exec {bin}/postgres -D {data} -k {sock} -c listen_addresses='' -c shared_buffers=64MB");
    let mut c = n.cmd(&n.a, "su", &["postgres", "-s", "/bin/sh", "-c", &run]);
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut src = c.spawn().unwrap();
    let su = src.id() as i32;
    let psql = |user: &str, at: Option<i32>, sql: &str| {
        sh(user, at, &format!("psql -h {sock} -U postgres -d postgres -Atc \"{sql}\""))
    };
    let t0 = std::time::Instant::now();
    while !psql("postgres", None, "SELECT 1").0 {
        assert!(t0.elapsed() < Duration::from_secs(30), "postgres did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let made = psql(
        "postgres",
        None,
        "CREATE TABLE t (n int, s text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 100000) g",
    );
    assert!(made.0, "{}", made.1);
    // The System V segment the source made, which it leaves when migrate kills it (the
    // destination's goes with its IPC namespace): removed at the end.
    let mut tree = descendants(su);
    tree.push(su);
    let table = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    // key shmid perms size cpid ...
    let ids = table.lines().skip(1).map(|l| l.split_whitespace().collect::<Vec<_>>());
    let ids = ids.filter(|w| w.len() > 4 && w[4].parse().is_ok_and(|p: i32| tree.contains(&p)));
    struct Segments(Vec<String>);
    impl Drop for Segments {
        fn drop(&mut self) {
            for id in &self.0 {
                let _ = Command::new("ipcrm").args(["-m", id]).stderr(Stdio::null()).status();
            }
        }
    }
    let segments = Segments(ids.map(|w| w[1].to_string()).collect());
    assert!(!segments.0.is_empty(), "postgres made no System V segment: {table}");
    let sum = "SELECT count(*), sum(n) FROM t";
    let before = psql("postgres", None, sum);
    assert_eq!(before, (true, "100000|5000050000".to_string()));
    let setup = format!(
        "mount -t tmpfs none {sock} && chown postgres {sock} && exec {} restartd -b {} -p 1023 --key {key} --allow-root",
        crs(),
        n.addr_b
    );
    let ns = ["--pid", "--ipc", "--mount", "--propagation", "private", "--fork", "--mount-proc", "sh", "-c", &setup];
    let mut c = n.cmd(&n.b, "unshare", &ns);
    c.stderr(Stdio::piped()).stdout(Stdio::null()).stdin(Stdio::null());
    let mut child = c.spawn().unwrap();
    let said = watch(&mut child, "listening on", "restartd");
    let _d = Daemon(child, said);
    let o = migrate(&n, &["--key", &key, "--live", "-v", &su.to_string(), &n.addr_b]);
    let err = stderr(&o);
    assert!(o.status.success(), "migrate: {err}");
    assert!(gone(&mut src), "the source still runs");
    assert!(bytes_before(&err, " bytes of memory the tree shares") >= 64 << 20, "{err}");
    // (With the program's and its libraries' pages, some 70 MB.)
    let image = bytes_before(&err, " bytes in ");
    assert!(image < 40 << 20, "the image after the freeze carried {image} bytes: {err}");
    let there = outer_pid(pid_there(&o));
    // Its POSIX shared memory files, which outlive it, removed at the end.
    struct Leftover(Vec<String>);
    impl Drop for Leftover {
        fn drop(&mut self) {
            self.0.iter().for_each(|f| drop(std::fs::remove_file(f)));
        }
    }
    let (mut files, mut tree) = (Vec::new(), vec![there]);
    while let Some(p) = tree.pop() {
        let kids = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        tree.extend(kids.split_whitespace().filter_map(|k| k.parse::<i32>().ok()));
        let maps = std::fs::read_to_string(format!("/proc/{p}/maps")).unwrap_or_default();
        files.extend(maps.split_whitespace().filter(|w| w.starts_with("/dev/shm/PostgreSQL.")).map(String::from));
    }
    files.sort_unstable();
    files.dedup();
    let _left = Leftover(files);
    assert_eq!(psql("postgres", Some(there), sum), before, "{err}");
    let more = psql("postgres", Some(there), "INSERT INTO t VALUES (100001, 'there')");
    assert!(more.0, "{}", more.1);
    // Its socket file as postgres made it, postgres's (not the tree's first process's, su's:
    // root's), open to every user.
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::metadata(format!("/proc/{there}/root{sock}/.s.PGSQL.5432")).unwrap();
    let postgres = std::fs::metadata(&data).unwrap();
    assert_eq!((file.uid(), file.gid()), (postgres.uid(), postgres.gid()), "the socket file's owner");
    assert_eq!(psql("nobody", Some(there), "SELECT count(*) FROM t"), (true, "100001".to_string()));
}
