//! Hostile input to the two restorers that act for others, root's rstrt and restartd: forged
//! ids, an image rewritten while root restores it, files out of the owner's reach, clients that
//! drip, lie or inject. Each attack is made as the user who would make it (nobody, via
//! setpriv), on images the test forges itself with consistent checksums; each test checks
//! what the restored process really is (/proc/PID/status), or that none was made.

mod support;
use crs::net::handshake::client_hello;
use crs::net::parse_pid;
use crs::net::{Conn, Kind, Side};
use crs::res::head::Header;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// A process of nobody's (the migrant, 1 MiB of memory), checkpointed by nobody with -k.
/// Returns the directory (anyone may write it) and the image, which nobody owns.
fn nobodys_image(name: &str) -> (TmpDir, String) {
    nobodys_image_with(name, &[])
}

/// [`nobodys_image`], the process started with `setpriv`'s further options `extra` (root's
/// setpriv applies them before it becomes nobody).
fn nobodys_image_with(name: &str, extra: &[&str]) -> (TmpDir, String) {
    let dir = open_dir(name);
    let log = dir.join("log");
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"]).args(extra).arg("--");
    c.args([target("migrant").to_str().unwrap(), log.to_str().unwrap(), "1"]);
    close_extra_fds(&mut c);
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut p = Reap(c.spawn().unwrap());
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().starts_with("ready") {
        assert!(t0.elapsed() < TIMEOUT, "the migrant never got ready");
        std::thread::sleep(Duration::from_millis(5));
    }
    let img = dir.join("own.crf").to_str().unwrap().to_string();
    let o = as_nobody(&[crs(), "ckpt", "-k", "-o", &img, &p.0.id().to_string()]).output().unwrap();
    assert!(o.status.success(), "nobody's ckpt: {}", stderr(&o));
    let _ = p.0.wait();
    (dir, img)
}

/// The image with its header changed by `edit`, checksums recomputed, as a forger would.
fn forge(img: &str, edit: impl Fn(&mut Header)) -> Vec<u8> {
    edit_section(img, crs::res::image::tags::HEAD, |payload| {
        let mut h = Header::decode(&payload, 0).unwrap();
        edit(&mut h);
        h.encode()
    })
}

/// The image with one section's payload changed by `edit`, checksums recomputed.
fn edit_section(img: &str, tag: crs::crf::Tag, edit: impl Fn(Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    rewrite(&std::fs::read(img).unwrap(), |t, payload| if t == tag { edit(payload) } else { payload })
}

/// Writes `bytes` to a file nobody owns, as nobody would have.
fn nobodys_file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    p.to_str().unwrap().to_string()
}

/// The Uid, Gid, Groups and CapEff lines of a process, and it is killed.
fn creds_of(pid: i32) -> String {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let keep = ["Uid:", "Gid:", "Groups:", "CapEff:"];
    st.lines()
        .filter(|l| keep.iter().any(|k| l.starts_with(k)))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("; ")
}

const NOBODYS_CREDS: &str =
    "Uid: 65534 65534 65534 65534; Gid: 65534 65534 65534 65534; Groups:; CapEff: 0000000000000000";

/// restartd on a free loopback port; killed on drop.
struct Daemon {
    _child: Reap,
    said: Said,
    port: u16,
}

impl Daemon {
    fn start(extra: &[&str]) -> Daemon {
        let (child, said, port) = on_free_port("listening on", "restartd", |port| {
            let mut c = Command::new(crs());
            c.args(["restartd", "-b", "127.0.0.1", "-p", &port.to_string()]).args(extra);
            c
        });
        Daemon { _child: child, said, port }
    }

    fn pid(&self) -> i32 {
        self._child.0.id() as i32
    }
}

/// What a client says after the handshake: no wishes, and no mapped files to ask about.
fn options(c: &mut Conn<TcpStream>) -> Result<(), String> {
    c.send(Kind::Options, &[]).map_err(|e| e.to_string())?;
    c.send(Kind::Files, &crs::migration::files::encode("", &[])).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    match c.recv(&mut buf).map_err(|e| e.to_string())? {
        Kind::Have => Ok(()),
        k => Err(format!("expected Have, got {k:?}: {}", String::from_utf8_lossy(&buf))),
    }
}

/// A migration client written against the library: sends `img` to restartd as its image and
/// commits. Returns the restored pid, or what went wrong (restartd's Error text included).
fn send_image(port: u16, key: Option<&[u8; 32]>, img: &[u8]) -> Result<i32, String> {
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let mut c = Conn::new(s, Side::Client);
    client_hello(&mut c, key).map_err(|e| e.to_string())?;
    options(&mut c)?;
    for chunk in img.chunks(1 << 20) {
        if c.send(Kind::Data, chunk).is_err() {
            break; // refused early: the Error frame says why
        }
    }
    let _ = c.send(Kind::End, &[]);
    let mut buf = Vec::new();
    match c.recv(&mut buf).map_err(|e| e.to_string())? {
        Kind::Restored => {
            let pid = parse_pid(&buf).map_err(|e| e.to_string())?;
            c.send(Kind::Commit, &[]).map_err(|e| e.to_string())?;
            c.expect(Kind::Running, &mut buf).map_err(|e| e.to_string())?;
            Ok(pid)
        }
        k => Err(format!("answered {k:?}")),
    }
}

fn prerequisites() -> bool {
    require(is_root() && Path::new("/usr/bin/python3").exists(), "root and python3")
}

/// D1: (uid_t)-1 is "leave unchanged" to setresuid. An image saying it, anywhere among its
/// ids, must never keep restartd's root ids: it is refused as a corrupt image, before any
/// process exists. A genuine image comes back as exactly nobody.
#[test]
fn an_id_of_minus_one_never_keeps_the_restorers_ids() {
    if !prerequisites() {
        return;
    }
    let (dir, img) = nobodys_image("hostile-minus-one");
    let key_path = dir.join("key");
    assert!(run(&["keygen", key_path.to_str().unwrap()]).status.success());
    let key = crs::net::key::load(key_path.to_str().unwrap()).unwrap();
    let d = Daemon::start(&["--key", key_path.to_str().unwrap()]);

    let pid = send_image(d.port, Some(&key), &std::fs::read(&img).unwrap()).expect("the genuine image");
    assert_eq!(creds_of(pid), NOBODYS_CREDS);

    const M: u32 = u32::MAX;
    type Edit = fn(&mut Header);
    let cases: [(&str, Edit); 5] = [
        ("uid", |h| h.uids = [M; 4]),
        ("saved uid", |h| h.uids[2] = M),
        ("filesystem uid", |h| h.uids[3] = M),
        ("gid", |h| h.gids = [M; 4]),
        ("supplementary group", |h| h.groups = vec![M]),
    ];
    for (name, edit) in cases {
        let r = send_image(d.port, Some(&key), &forge(&img, edit));
        let e = r.expect_err(&format!("{name} -1 was restored"));
        assert!(
            e.contains("BadImage") && e.contains(&format!("{name} 4294967295 (-1) is not a valid id")),
            "{name}: {e}"
        );
    }
    // The same through a keyless restartd, sent by nobody.
    let d = Daemon::start(&[]);
    let bad = nobodys_file(&dir, "gid-minus-one.crf", &forge(&img, |h| h.gids = [M; 4]));
    let out = nobody_sends(d.port, &bad);
    assert!(out.starts_with("error 5") && out.contains("gid 4294967295 (-1)"), "{out}");
    // And rstrt, as root, on nobody's file.
    let o = run(&["rstrt", "-d", &bad]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
}

/// D2: a keyless restartd restores a local user's image only with that user's own gids and
/// groups: nobody may not come back in group shadow (or root's group).
#[test]
fn a_keyless_restartd_refuses_groups_the_user_does_not_have() {
    if !prerequisites() {
        return;
    }
    let (dir, img) = nobodys_image("hostile-groups");
    let d = Daemon::start(&[]);
    // It says how it is set up.
    let start = d.said.line("listening on");
    assert!(start.contains("without a key") && start.contains("root's processes refused"), "{start}");
    let shadow = 42;
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("gid-shadow.crf", forge(&img, |h| h.gids = [42; 4]), "gid is 42"),
        ("groups-shadow.crf", forge(&img, |h| h.groups = vec![42]), "supplementary group is 42"),
        ("egid-root.crf", forge(&img, |h| h.gids[1] = 0), "effective gid is 0"),
    ];
    let _ = shadow;
    for (name, bytes, why) in cases {
        let f = nobodys_file(&dir, name, &bytes);
        let out = nobody_sends(d.port, &f);
        assert!(out.starts_with("error 3") && out.contains(why), "{name}: {out}");
    }
    // nobody's own image, as it is, comes back as nobody.
    let out = nobody_sends(d.port, &img);
    let pid: i32 = out.strip_prefix("restored ").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(creds_of(pid), NOBODYS_CREDS);
}

/// D3: root restores nobody's image file while nobody keeps rewriting its header between a
/// genuine one and one that claims root. Whatever root's rstrt reads, it must never restore a
/// process with an id of root's.
#[test]
fn rewriting_an_image_while_root_restores_it_never_gives_root() {
    if !prerequisites() {
        return;
    }
    let (_dir, img) = nobodys_image("hostile-race");
    let genuine = std::fs::read(&img).unwrap();
    let forged = forge(&img, |h| {
        h.uids = [0; 4];
        h.gids = [0; 4];
    });
    assert_eq!(genuine.len(), forged.len());
    let from = genuine.iter().zip(&forged).position(|(a, b)| a != b).unwrap();
    let to = genuine.len() - genuine.iter().rev().zip(forged.iter().rev()).position(|(a, b)| a != b).unwrap();
    assert!(to - from < 4096, "the header differs over {} bytes", to - from);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (stop, img) = (stop.clone(), img.clone());
        let (g, f) = (genuine[from..to].to_vec(), forged[from..to].to_vec());
        std::thread::spawn(move || {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                file.write_all_at(&f, from as u64).unwrap();
                file.write_all_at(&g, from as u64).unwrap();
            }
        })
    };
    let (mut restored, mut refused) = (0, 0);
    for _ in 0..120 {
        let o = run(&["rstrt", "-d", "--stop", &img]);
        if o.status.success() {
            let pid: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
            let creds = creds_of(pid);
            assert_eq!(creds, NOBODYS_CREDS, "round {}", restored + refused);
            restored += 1;
        } else {
            // Refused as claiming root (5), or torn mid-rewrite and failing a checksum (4).
            assert!(matches!(o.status.code(), Some(4) | Some(5)), "{}", stderr(&o));
            refused += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    eprintln!("{restored} restored as nobody, {refused} refused");
    assert!(restored > 0 && refused > 0, "the race never went both ways: {restored} restored, {refused} refused");
}

/// D4: the files an image names are checked with its owner's rights, never root's: nobody
/// learns nothing of a directory it cannot search, a FIFO it names is never opened, and the
/// client is not told what differs on the destination.
#[test]
fn files_are_checked_as_their_owner_and_kept_from_the_client() {
    if !prerequisites() {
        return;
    }
    let (dir, img) = nobodys_image("hostile-files");
    // Root's directory, which nobody cannot search, with a file of 1234 bytes.
    let private = tmpdir("hostile-files-private");
    std::fs::set_permissions(&private, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::write(private.join("exists"), vec![b'x'; 1234]).unwrap();
    let with_fd = |path: PathBuf| {
        let path = path.to_str().unwrap().to_string();
        edit_section(&img, crs::res::image::tags::FILES, move |payload| {
            let mut fds = crs::res::files::decode(&payload, 0).unwrap();
            let id = crs::res::fileid::FileId {
                path: path.clone(),
                mode: libc::S_IFREG | 0o644,
                size: 99_999,
                ..Default::default()
            };
            fds.push(crs::res::files::Fd {
                fd: 99,
                kind: crs::res::files::KIND_FILE,
                flags: 0,
                cloexec: false,
                pos: 0,
                id,
            });
            crs::res::files::encode(&fds)
        })
    };
    let d = Daemon::start(&[]);
    let a = nobody_sends(d.port, &nobodys_file(&dir, "exists.crf", &with_fd(private.join("exists"))));
    let b = nobody_sends(d.port, &nobodys_file(&dir, "missing.crf", &with_fd(private.join("missing"))));
    for out in [&a, &b] {
        assert!(out.starts_with("error 6") && out.contains("fd 99:"), "{out}");
        assert!(!out.contains("1234") && !out.contains("No such file") && !out.contains("shrank"), "{out}");
    }
    // Exists or not, nobody hears the same.
    assert_eq!(a.replace("exists", "NAME"), b.replace("missing", "NAME"));
    // The whole story is in restartd's log: as nobody sees it (permission denied).
    assert!(d.said.line("/missing cannot be used here").contains("Permission denied"));

    // A mapping that names a FIFO: looked at, never opened.
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    // SAFETY: inotify_init1 and inotify_add_watch take a flag and a NUL-terminated path.
    let ino = unsafe { libc::inotify_init1(libc::IN_NONBLOCK) };
    let cpath = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: as above.
    assert!(unsafe { libc::inotify_add_watch(ino, cpath.as_ptr(), libc::IN_OPEN) } >= 0);
    let fifo_path = fifo.to_str().unwrap().to_string();
    let mapped = edit_section(&img, crs::res::image::tags::VMAS, move |payload| {
        let mut v = crs::res::memory::decode_vmas(&payload, 0).unwrap();
        let id = crs::res::fileid::FileId {
            path: fifo_path.clone(),
            mode: libc::S_IFREG | 0o644,
            size: 4096,
            ..Default::default()
        };
        let at = 0x1000_0000;
        let i = v.partition_point(|x| x.end <= at);
        assert!(v.get(i).is_none_or(|x| x.start >= at + 4096));
        let m = crs::res::memory::Vma {
            start: at,
            end: at + 4096,
            prot: libc::PROT_READ as u32,
            flags: crs::res::memory::VMA_FILE_COPY,
            kind: crs::res::memory::KIND_FILE,
            name: fifo_path.clone(),
            file: Some(id),
            ..Default::default()
        };
        v.insert(i, m);
        crs::res::memory::encode_vmas(&v)
    });
    let out = nobody_sends(d.port, &nobodys_file(&dir, "fifo.crf", &mapped));
    if let Some(pid) = out.strip_prefix("restored ").and_then(|p| p.parse().ok()) {
        creds_of(pid);
    }
    let mut ev = [0u8; 256];
    // SAFETY: read into our own buffer of that length.
    let n = unsafe { libc::read(ino, ev.as_mut_ptr().cast(), ev.len()) };
    // SAFETY: closing our own fd.
    unsafe { libc::close(ino) };
    assert!(n < 0, "the FIFO the image names was opened ({out})");

    // An executable that is a FIFO by the time the process opens it (as nobody, to set its
    // exe link): the open does not block, and the restore goes on without the link.
    let fifo_path = fifo.to_str().unwrap().to_string();
    let exe_fifo = edit_section(&img, crs::res::image::tags::MMSTRUCT, move |payload| {
        let mut m = crs::res::memory::MmStruct::decode(&payload, 0).unwrap();
        let x = m.exe.as_mut().unwrap();
        x.path = fifo_path.clone();
        m.encode()
    });
    let out = nobody_sends(d.port, &nobodys_file(&dir, "exe-fifo.crf", &exe_fifo));
    let pid: i32 = out.strip_prefix("restored ").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(creds_of(pid), NOBODYS_CREDS);
}

/// D5: a client that drips bytes cannot hold a handler: the handshake has a deadline of its
/// own and the image a minimum rate, however short each silence. Meanwhile a real client is
/// served.
#[test]
fn dripping_clients_are_cut_and_do_not_hold_restartd() {
    if !require(is_root(), "root") {
        return;
    }
    let d = Daemon::start(&[
        "--max-clients",
        "2",
        "--handshake-timeout",
        "2",
        "--min-rate",
        "1M",
        "--timeout",
        "3",
        "--allow-root",
    ]);
    // Four drips before the handshake, one byte every 300 ms (no single silence is long), and
    // one after it, inside an image frame.
    let drip = |handshake_first: bool| {
        let port = d.port;
        std::thread::spawn(move || -> Duration {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            // Before the handshake, a genuine Hello, a byte at a time; after it, the payload of
            // a 1 MiB Data frame.
            let mut bytes = vec![Kind::Hello as u8, 44, 0, 0, 0];
            bytes.extend_from_slice(&crs::net::hello(0, &[7; 32]));
            if handshake_first {
                let mut c = Conn::new(s.try_clone().unwrap(), Side::Client);
                client_hello(&mut c, None).unwrap();
                options(&mut c).unwrap();
                s.write_all(&[Kind::Data as u8, 0, 0, 16, 0]).unwrap();
                bytes = vec![b'x'; 1 << 20];
            }
            let t0 = Instant::now();
            for b in bytes {
                if s.write_all(&[b]).is_err() || t0.elapsed() > Duration::from_secs(60) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            t0.elapsed()
        })
    };
    let drips: Vec<_> = (0..4).map(|_| drip(false)).chain([drip(true)]).collect();
    // A real migration gets through meanwhile.
    let dir = tmpdir("hostile-drip");
    let log = dir.join("log");
    let mut c = Command::new(target("migrant"));
    c.args([log.to_str().unwrap(), "1"]).stdin(Stdio::null()).stdout(Stdio::null());
    close_extra_fds(&mut c);
    let mut src = Reap(c.spawn().unwrap());
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().starts_with("ready") {
        assert!(t0.elapsed() < TIMEOUT);
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = run(&["migrate", &src.0.id().to_string(), &format!("127.0.0.1:{}", d.port)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let _ = src.0.wait();
    for (i, t) in drips.into_iter().enumerate() {
        let held = t.join().unwrap();
        // Cut at the deadline (2 s), or at the rate's allowance (3 s): well before a minute.
        assert!(held < Duration::from_secs(15), "drip {i} held its handler for {held:?}");
    }
    let log = d.said.all().join("\n");
    assert!(log.contains("did not complete the handshake within 2 s"), "{log}");
    assert!(log.contains("under the minimum rate"), "{log}");
    let pid: i32 = d.said.line("running").split("as pid ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
    creds_of(pid);
}

/// D6: text a client sends is never written to the log as it is: a client's Error frame is a
/// protocol error, its text unread, and a command name with a newline is escaped.
#[test]
fn a_client_cannot_write_lines_into_the_log() {
    if !require(is_root(), "root") {
        return;
    }
    let d = Daemon::start(&[]);
    let forged_line = "restartd: 192.0.2.1:1: pid 1 (init, uid 0) restored as pid 1, 0 bytes (began at 0), running";
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    let mut p = 6u32.to_le_bytes().to_vec();
    p.extend_from_slice(format!("x\n{forged_line}\n").as_bytes());
    let mut frame = vec![Kind::Error as u8];
    frame.extend_from_slice(&(p.len() as u32).to_le_bytes());
    frame.extend_from_slice(&p);
    s.write_all(&frame).unwrap();
    d.said.line("sent an Error frame");
    // An image whose command name holds a newline.
    let (_dir, img) = nobodys_image("hostile-log");
    let bytes = forge(&img, |h| h.comm = format!("a\n{forged_line}"));
    let pid = send_image(d.port, None, &bytes).expect("restored");
    creds_of(pid);
    d.said.line(&format!("restored as pid {pid}"));
    let lines = d.said.all();
    assert!(!lines.iter().any(|l| l.starts_with("restartd: 192.0.2.1")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("(a\\nrestartd: 192.0.2.1:1")), "{lines:#?}");
}

/// D7: a finished handler is reaped at once, not when the next client connects.
#[test]
fn finished_handlers_do_not_stay_zombies() {
    if !require(is_root(), "root") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    d.said.line("refused");
    drop(s);
    let zombies = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
            .filter_map(|st| crs::ptrace::procfs::stat_from_text(&st))
            .filter(|st| st.ppid == d.pid() && st.state == 'Z')
            .count()
    };
    let t0 = Instant::now();
    while zombies() > 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "a finished handler stays a zombie");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An open file keeps the credentials it was opened with, and a forked child keeps its
/// parent's session keyring: a process root restores for nobody must open all it holds as
/// nobody, and hold nothing of root's session. (Found by a second probe: the process read
/// kernel addresses through its /proc/kallsyms fd, and a key of root's session.)
#[test]
fn a_restored_process_holds_nothing_of_its_restorers() {
    if !require(is_root(), "root") {
        return;
    }
    let dir = open_dir("hostile-held");
    let mut c = as_nobody(&[target("creds").to_str().unwrap(), "/proc/kallsyms"]);
    c.current_dir(&dir).stderr(Stdio::null());
    let mut p = Proc::spawn(c);
    p.expect("ready");
    let img = dir.join("own.crf").to_str().unwrap().to_string();
    let o = as_nobody(&[crs(), "ckpt", "-k", "-o", &img, &p.pid().to_string()]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    p.kill();
    // This thread, and the rstrt it starts, get a session keyring with a secret in it.
    let (desc, payload) = (c"crs-test-secret", b"42");
    // SAFETY: keyctl and add_key take integers and NUL-terminated strings that outlive the calls.
    unsafe {
        assert!(libc::syscall(libc::SYS_keyctl, 1, c"crs-test-session".as_ptr()) > 0, "keyctl(JOIN_SESSION_KEYRING)");
        let k = libc::syscall(libc::SYS_add_key, c"user".as_ptr(), desc.as_ptr(), payload.as_ptr(), payload.len(), -3);
        assert!(k > 0, "add_key");
    }
    let mut r = rstrt(&[&img]);
    r.verdict("ok uid=65534 gid=65534 key=none fd3=0000000000000000");
}

/// The exe link may name only a program the process runs: an image cannot make its process
/// pose, in /proc/PID/exe, as another program.
#[test]
fn the_exe_link_names_only_a_program_the_image_runs() {
    if !prerequisites() {
        return;
    }
    let (dir, img) = nobodys_image("hostile-exe");
    let posing = "/usr/bin/setpriv";
    let bytes = edit_section(&img, crs::res::image::tags::MMSTRUCT, |payload| {
        let mut m = crs::res::memory::MmStruct::decode(&payload, 0).unwrap();
        m.exe = Some(crs::res::fileid::FileId::of(posing, posing, true).unwrap());
        m.encode()
    });
    let forged = nobodys_file(&dir, "posing.crf", &bytes);
    let o = run(&["rstrt", "-d", "--stop", &forged]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pid: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    creds_of(pid);
    assert_ne!(exe.to_str().unwrap(), posing);
    assert!(stderr(&o).contains("exe still names crs"), "{}", stderr(&o));
}

/// Root restores an image file only if nobody but its owner could have written it, and only
/// from a file or a pipe: a device is not even opened.
#[test]
fn root_restores_only_image_files_their_owner_alone_could_write() {
    if !prerequisites() {
        return;
    }
    let (_dir, img) = nobodys_image("hostile-writable");
    std::fs::set_permissions(&img, std::os::unix::fs::PermissionsExt::from_mode(0o664)).unwrap();
    let o = run(&["rstrt", "-d", &img]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("may be written by group or others"), "{}", stderr(&o));
    let o = run(&["rstrt", "-d", "/dev/null"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not an image file"), "{}", stderr(&o));
}

/// A client that sends empty Data frames, however fast, never makes the image grow: it is a
/// protocol error, not a way to hold a handler.
#[test]
fn empty_data_frames_end_the_connection() {
    if !require(is_root(), "root") {
        return;
    }
    let d = Daemon::start(&["--timeout", "2", "--min-rate", "1K"]);
    let s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    let mut c = Conn::new(s, Side::Client);
    client_hello(&mut c, None).unwrap();
    options(&mut c).unwrap();
    let t0 = Instant::now();
    while c.send(Kind::Data, &[]).is_ok() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(4));
    }
    assert!(t0.elapsed() < Duration::from_secs(10), "empty frames held the handler for {:?}", t0.elapsed());
    d.said.line("an empty Data frame");
}

/// The vdso goes where the image says, but not below vm.mmap_min_addr when root restores
/// another user's process: root could map there, the user could not, and a user's process
/// with memory at address 0 makes kernel NULL dereferences exploitable.
#[test]
fn a_users_image_cannot_place_memory_below_mmap_min_addr() {
    if !prerequisites() {
        return;
    }
    let (dir, img) = nobodys_image("hostile-low");
    let bytes = edit_section(&img, crs::res::image::tags::VMAS, |payload| {
        let mut v = crs::res::memory::decode_vmas(&payload, 0).unwrap();
        // The vdso and vvar areas, in their order, from address 0 up.
        let mut at = 0;
        for m in v.iter_mut().filter(|m| m.is_special()) {
            let len = m.len();
            (m.start, m.end) = (at, at + len);
            at += len;
        }
        v.sort_by_key(|m| m.start);
        crs::res::memory::encode_vmas(&v)
    });
    let forged = nobodys_file(&dir, "low.crf", &bytes);
    let o = run(&["rstrt", "-d", "--stop", &forged]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("below vm.mmap_min_addr"), "{}", stderr(&o));
}

/// nobody's process restored by root from root's terminal gets none of it: its fds on the
/// terminal are /dev/null, and it is in a session of its own (no controlling terminal of
/// root's to open, read or push input into).
#[test]
fn another_users_process_gets_none_of_roots_terminal() {
    if !prerequisites() {
        return;
    }
    let dir = open_dir("hostile-tty");
    let mut c = as_nobody(&["sleep", "1000"]);
    c.current_dir(&dir).stderr(Stdio::piped());
    let mut p = Proc::spawn(c);
    let t0 = Instant::now();
    while !std::fs::read_to_string(format!("/proc/{}/wchan", p.pid())).is_ok_and(|w| w.contains("nanosleep")) {
        assert!(t0.elapsed() < TIMEOUT, "sleep never slept");
        std::thread::sleep(Duration::from_millis(5));
    }
    let img = dir.join("sleep.crf").to_str().unwrap().to_string();
    let o = as_nobody(&[crs(), "ckpt", "-k", "-o", &img, &p.pid().to_string()]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    p.kill();
    // rstrt on a terminal of its own (a pty), asked to hand its stdio over.
    // (pty.spawn returns once nothing holds the terminal: a process that kept it would hang it.)
    let (tx, rx) = std::sync::mpsc::channel();
    let i = img.clone();
    std::thread::spawn(move || {
        let mut c = Command::new("/usr/bin/python3");
        c.args(["-c", "import pty, sys; pty.spawn(sys.argv[1:])", crs(), "rstrt", "-d", "--inherit-stdio", &i]);
        close_extra_fds(&mut c);
        tx.send(c.output())
    });
    let o = rx.recv_timeout(Duration::from_secs(20)).expect("the restored process holds root's terminal").unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let pid: i32 =
        out.lines().find_map(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("no pid in {out:?} {}", stderr(&o)));
    assert!(out.contains("now use /dev/null (another user's process gets none of root's terminal)"), "{out}");
    let fd0 = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let st = crs::ptrace::procfs::stat_from_text(&stat).unwrap();
    creds_of(pid);
    assert_eq!(fd0.to_str(), Some("/dev/null"));
    assert_eq!(st.sid, pid, "not in a session of its own");
}

/// A restorer started with inheritable or ambient capabilities (a service unit with
/// AmbientCapabilities=) must pass none of them on: the restore clears them before the ids
/// change, rather than fail (or, without the read-back, leave them to the process).
#[test]
fn a_restorer_with_ambient_capabilities_passes_none_on() {
    if !prerequisites() {
        return;
    }
    let (_dir, img) = nobodys_image("hostile-ambient");
    let o = Command::new("setpriv")
        .args(["--inh-caps", "+net_raw", "--ambient-caps", "+net_raw", "--", crs(), "rstrt", "-d", "--stop", &img])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let pid: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let creds = creds_of(pid);
    assert_eq!(creds, NOBODYS_CREDS);
    for k in ["CapInh:", "CapAmb:"] {
        let line = st.lines().find(|l| l.starts_with(k)).unwrap();
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
}

/// A user's image cannot raise its hard resource limits through root: they are set once the
/// process has its user's ids, and one above what that user may have refuses the restore.
#[test]
fn a_users_image_cannot_raise_its_hard_limits() {
    if !prerequisites() {
        return;
    }
    let (dir, img) = nobodys_image("hostile-rlimits");
    let bytes = edit_section(&img, crs::res::image::tags::RLIMITS, |payload| {
        let mut l = crs::res::rlimits::decode(&payload, 0).unwrap();
        l[libc::RLIMIT_NOFILE as usize] = (u64::MAX, u64::MAX);
        crs::res::rlimits::encode(&l)
    });
    let forged = nobodys_file(&dir, "nofile.crf", &bytes);
    let o = run(&["rstrt", "-d", "--stop", &forged]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("RLIMIT_NOFILE hard limit unlimited"), "{}", stderr(&o));
}

/// A user's image that says its process had capabilities (ckpt never writes that: it refuses
/// such a process) is refused by root, which never grants a capability on an image's word.
/// Nobody's process is given a narrower bounding set, so that its image has a CAPS section to
/// forge.
#[test]
fn a_users_image_never_gets_a_capability() {
    if !prerequisites() {
        return;
    }
    let (dir, img) = nobodys_image_with("hostile-caps", &["--bounding-set", "-net_raw"]);
    let bytes = edit_section(&img, crs::res::image::tags::CAPS, |payload| {
        // 13 is CAP_NET_RAW, 21 CAP_SYS_ADMIN.
        let mut caps = crs::res::caps::decode(&payload, 0).unwrap().unwrap();
        assert_eq!(caps.bnd & (1 << 13), 0, "the bounding set was not narrowed");
        (caps.prm, caps.eff) = (1 << 21, 1 << 21);
        crs::res::caps::encode(&caps)
    });
    let forged = nobodys_file(&dir, "caps.crf", &bytes);
    let o = run(&["rstrt", "-d", "--stop", &forged]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("had capabilities or securebits"), "{}", stderr(&o));
}
