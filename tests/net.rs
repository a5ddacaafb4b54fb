//! TCP and UDP sockets a restore makes again by itself (listening, bound, new; UDP connected),
//! with a target of our own and with real servers nobody here wrote: redis and nginx.
//! Established connections are another matter (they are refused today; see blockers.rs).

mod support;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use support::*;

/// The first line a server sends on a new connection to `addr`.
fn greeting(addr: &str) -> String {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.trim().to_string()
}

/// The backlog `ss` shows for the TCP socket listening on `port` (its Send-Q).
fn backlog(port: &str) -> String {
    let o = Command::new("ss").args(["-Hltn", &format!("sport = :{port}")]).output().expect("ss");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    out.split_whitespace().nth(2).unwrap_or_default().to_string()
}

/// Waits until none of `pids` exists (a killed tree's members are reaped by init in its time).
fn gone(pids: &[i32]) {
    let t = std::time::Instant::now();
    while pids.iter().any(|p| std::path::Path::new(&format!("/proc/{p}")).exists()) {
        assert!(t.elapsed() < TIMEOUT, "pids {pids:?} are still in use");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn has_nft() -> bool {
    require(Command::new("nft").arg("-v").output().is_ok(), "nft (apt install nftables)")
}

/// The three nodes on one segment, a directory and the cluster key, for a migration test
/// (None, said, when root, iproute2 or nft is missing).
fn segment(name: &str) -> Option<(support::nodes::Segment, support::TmpDir, String)> {
    let seg = support::nodes::Segment::new()?;
    if !has_nft() {
        return None;
    }
    let dir = tmpdir(name);
    let key = support::nodes::keyfile(&dir, "key");
    Some((seg, dir, key))
}

/// migrate --tcp-established --move-address PREFIX of `pid` from node a to node b.
fn migrate_service(seg: &support::nodes::Segment, key: &str, prefix: &str, pid: i32, extra: &[&str]) -> Output {
    let n = &seg.nodes;
    let pid = pid.to_string();
    let mut args = vec!["--key", key, "--tcp-established", "--move-address", prefix];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[&pid, &n.addr_b]);
    support::nodes::migrate(n, &args)
}

/// The pid a migration's process runs as at b (migrate says "... it runs there as pid Q").
fn there(o: &Output) -> i32 {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    out.split_whitespace().last().and_then(|p| p.parse().ok()).expect(&out)
}

/// Kills the process a migration left running at b.
fn kill_there(o: &Output) {
    // SAFETY: kill takes integers; the restored process is no child of ours.
    unsafe { libc::kill(there(o), libc::SIGKILL) };
}

/// The echo server of the tests on `addr`:7000 of node a; its pid.
fn echo_server(seg: &support::nodes::Segment, addr: &str) -> (Proc, i32) {
    let n = &seg.nodes;
    let echo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/echo.py");
    let mut c = n.cmd(&n.a, "/usr/bin/python3", &[echo.to_str().unwrap(), addr, "7000"]);
    c.stdin(Stdio::null()).stderr(Stdio::null());
    let mut server = Proc::spawn(c);
    let pid = server.expect("ready").split_whitespace().nth(1).unwrap().parse().unwrap();
    (server, pid)
}

/// ECHO_CLIENT on node c against `addr`:7000 for `secs`, once connected.
fn echo_client(seg: &support::nodes::Segment, addr: &str, secs: &str) -> Proc {
    let mut c = seg.nodes.cmd(&seg.c, "/usr/bin/python3", &["-c", ECHO_CLIENT, addr, "7000", secs]);
    c.stdin(Stdio::null());
    let mut p = Proc::spawn(c);
    p.expect("connected");
    p
}

/// An nginx configuration: a master, 2 workers, everything under `d`, serving `d`/www on
/// `listen`.
fn nginx_conf(d: &str, listen: &str) -> String {
    format!(
        "daemon off; master_process on; worker_processes 2; pid {d}/nginx.pid; error_log {d}/logs/error.log;
events {{ worker_connections 64; }}
http {{ access_log {d}/logs/access.log; client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp;
  fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  server {{ listen {listen}; root {d}/www; }} }}\n"
    )
}

#[test]
fn listening_bound_and_udp_sockets_come_back_with_their_addresses_and_options() {
    let dir = tmpdir("inet");
    let d = dir.to_str().unwrap();
    let mut p = start("inet", &[], &dir);
    let ready = p.seen.last().cloned().unwrap_or_default();
    let ports: Vec<&str> = ready.split_whitespace().skip(1).collect();
    let (p4, p6, idle) = (ports[0], ports[1], ports[2]);
    // Connections closed here stay in TIME_WAIT for a minute, and keep a listener without
    // SO_REUSEADDR (the IPv6 one) from binding again: only the IPv4 one, with it, serves
    // before the checkpoint.
    assert_eq!(greeting(&format!("127.0.0.1:{p4}")), "n=1");
    assert!(TcpStream::connect(format!("[::1]:{p4}")).is_err(), "the IPv4 listener takes IPv6");
    p.send("state");
    let before = p.expect("state");
    assert!(before.contains("keepidle 77") && before.contains("nonblock 1"), "{before}");
    p.send("udp");
    let udp = p.expect("udp got");
    assert!(udp.starts_with("udp got ping"), "{udp}");
    assert_eq!(backlog(p4), "7");
    // A connection the server never accepts: the image leaves it out, and says so.
    let waiting = TcpStream::connect(format!("127.0.0.1:{idle}")).unwrap();
    let img = format!("{d}/inet.crf");
    let o = ckpt(&["--kill", "-o", &img, &p.pid().to_string()]);
    let said = stderr(&o);
    assert!(
        said.contains(&format!(
            "note: 1 connections waiting on the TCP socket listening on 127.0.0.1:{idle} are left out"
        )),
        "{said}"
    );
    p.kill();
    let mut r = rstrt(&[&img]);
    r.send("state");
    let after = r.expect("state");
    assert_eq!(after, before, "the sockets' addresses and options");
    assert_eq!(greeting(&format!("127.0.0.1:{p4}")), "n=2");
    assert_eq!(greeting(&format!("[::1]:{p6}")), "n=3");
    assert_eq!(greeting(&format!("127.0.0.1:{p6}")), "n=4", "the IPv6 listener takes IPv4");
    r.send("udp");
    assert_eq!(r.expect("udp got"), udp, "the connected UDP socket sends from the same port");
    assert_eq!(backlog(p4), "7");
    // The waiting client's connection went with the process that had not accepted it.
    let mut buf = [0u8; 8];
    waiting.set_read_timeout(Some(TIMEOUT)).unwrap();
    let lost = matches!((&waiting).read(&mut buf), Ok(0) | Err(_));
    assert!(lost, "the connection left out still answers");
    r.verdict("ok");
}

/// A listener without SO_REUSEADDR whose connections it closed just before the checkpoint,
/// their clients not yet: while they are closing, its port cannot be bound again here, and the
/// restore says so (restored elsewhere, it would bind).
#[test]
fn a_port_held_by_closed_connections_is_refused_saying_so() {
    let dir = tmpdir("inet-timewait");
    let mut p = start("inet", &[], &dir);
    let ready = p.seen.last().cloned().unwrap_or_default();
    let p6 = ready.split_whitespace().nth(2).unwrap().to_string();
    // Its clients keep their ends open: the server's ends, closed, wait for them.
    let mut held = Vec::new();
    for n in 1..=2 {
        let s = TcpStream::connect(format!("[::1]:{p6}")).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("n={n}"));
        held.push(r);
    }
    let img = format!("{}/tw.crf", dir.display());
    ckpt(&["--kill", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let o = run(&["rstrt", &img]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let said = stderr(&o);
    assert!(said.contains(&format!("[::]:{p6} is in use here (by 2 closed connections")), "{said}");
}

/// A socket a process outside the checkpoint holds too (here the child `ckpt --alone` leaves
/// out) is refused, naming that process; nothing is stopped or lost.
#[test]
fn a_socket_held_outside_the_checkpoint_is_refused_by_name() {
    let dir = tmpdir("inet-share");
    let mut p = start("inet", &["share"], &dir);
    let kid = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", p.pid())).unwrap();
    let kid = kid.trim().to_string();
    let o = run(&["ckpt", "--alone", "-o", &format!("{}/x.crf", dir.display()), &p.pid().to_string()]);
    assert!(!o.status.success());
    let said = stderr(&o);
    assert!(said.contains("fd 3 is a TCP socket listening on 127.0.0.1:"), "{said}");
    assert!(said.contains(&format!(", held also by pid {kid} (")), "{said}");
    p.send("state");
    assert!(p.expect("state").contains("listen 1"));
    p.verdict("ok");
}

/// Root restoring another user's image makes its sockets with no capability the user lacked:
/// an image edited to bind port 80 is refused, while the image as taken restores.
#[test]
fn root_restoring_a_users_image_binds_no_privileged_port() {
    if !require(is_root(), "root (to restore another user's image)") {
        return;
    }
    let dir = open_dir("inet-nobody");
    let d = dir.to_str().unwrap();
    let mut c = as_nobody(&[target("inet").to_str().unwrap()]);
    // Its stderr not ours, which may be a file nobody may open.
    c.current_dir(&dir).stderr(Stdio::null());
    let mut p = Proc::spawn(c);
    let ready = p.expect("ready");
    let p4 = ready.split_whitespace().nth(1).unwrap().to_string();
    let img = format!("{d}/nobody.crf");
    ckpt(&["--kill", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let bytes = std::fs::read(&img).unwrap();
    let forged = rewrite(&bytes, |tag, payload| {
        if tag != crs::res::image::tags::INETSOCKS {
            return payload;
        }
        let mut socks = crs::res::inet::decode(&payload, 0).unwrap();
        for s in socks.iter_mut().filter(|s| s.ty == libc::SOCK_STREAM as u32 && s.family == libc::AF_INET as u16) {
            let mut a = crs::res::inet::addr_of(&s.local).unwrap();
            if a.port().to_string() == p4 {
                a.set_port(80);
                s.local = crs::res::inet::sockaddr(a);
            }
        }
        crs::res::inet::encode(&socks)
    });
    let forged_img = format!("{d}/forged.crf");
    std::fs::write(&forged_img, forged).unwrap();
    let mut r = Command::new(crs());
    r.args(["rstrt", &forged_img]).stdin(Stdio::null());
    close_extra_fds(&mut r);
    let o = r.output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("binding 127.0.0.1:80 takes a capability (CAP_NET_BIND_SERVICE)"), "{}", stderr(&o));
    let mut r = rstrt(&[&img]);
    r.send("state");
    assert!(r.expect("state").contains(&format!("l4 {p4} ")));
    r.verdict("ok");
}

/// One request of redis's protocol on `s`; its one-line answer.
fn redis(s: &mut BufReader<TcpStream>, args: &[&str]) -> String {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req += &format!("${}\r\n{a}\r\n", a.len());
    }
    s.get_mut().write_all(req.as_bytes()).unwrap();
    let mut line = String::new();
    s.read_line(&mut line).unwrap();
    if line.starts_with('$') && !line.starts_with("$-1") {
        line.clear();
        s.read_line(&mut line).unwrap();
    }
    line.trim().to_string()
}

fn has_redis() -> bool {
    require(std::path::Path::new("/usr/bin/redis-server").exists(), "redis-server (apt install redis-server)")
}

/// Debian's redis-server on 127.0.0.1's `port` (and ::1's), no persistence, its files in `d`.
/// redis-server on a free port, listening: the server and its port.
fn redis_server(d: &str) -> (Reap, u16) {
    serving_on("redis-server", |port| {
        let mut c = Command::new("/usr/bin/redis-server");
        c.args(["--port", &port.to_string(), "--save", "", "--appendonly", "no", "--dir", d]);
        c.stdout(Stdio::null()).stdin(Stdio::null());
        c
    })
}

fn redis_at(port: u16) -> BufReader<TcpStream> {
    let t = std::time::Instant::now();
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                return BufReader::new(s);
            }
            Err(e) => assert!(t.elapsed() < TIMEOUT, "redis on {port}: {e}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// redis-server (Debian's: threads, epoll, listening on IPv4 and IPv6): its keys survive a
/// checkpoint (killed) and restore, and it serves new clients on the same port.
#[test]
fn redis_keeps_its_keys_and_serves_on_after_restore() {
    if !has_redis() {
        return;
    }
    let dir = tmpdir("redis");
    let d = dir.to_str().unwrap();
    let (mut server, port) = redis_server(d);
    let pid = server.0.id() as i32;
    let mut s = redis_at(port);
    assert_eq!(redis(&mut s, &["SET", "k", "kept across the restore"]), "+OK");
    for n in 1..=3 {
        assert_eq!(redis(&mut s, &["INCR", "n"]), format!(":{n}"));
    }
    drop(s);
    let img = format!("{d}/redis.crf");
    ckpt(&["--kill", "-o", &img, &pid.to_string()]);
    let _ = server.0.wait();
    gone(&[pid]);
    let o = run(&["rstrt", "-d", &img]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut s = redis_at(port);
    assert_eq!(redis(&mut s, &["GET", "k"]), "kept across the restore");
    assert_eq!(redis(&mut s, &["INCR", "n"]), ":4");
    let _ = s.get_mut().write_all(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n");
    gone(&[pid]);
}

/// redis-server in the middle of a background save: its child writes the dump (slowed by
/// rdb-key-save-delay) and holds its parent's epoll instance, whose registrations name fds it
/// closed. Checkpointed (killed) and restored, the child finishes the save, the parent sees
/// it succeed, and the dump holds every key.
#[test]
fn redis_finishes_a_background_save_checkpointed_midway() {
    if !has_redis() || !require(std::path::Path::new("/usr/bin/redis-check-rdb").exists(), "redis-check-rdb") {
        return;
    }
    if !require(is_root(), "root (to restore the pid redis knows its saving child by)") {
        return;
    }
    let dir = tmpdir("redis-bgsave");
    let d = dir.to_str().unwrap();
    // A save 3 s after the start, once a key changed: our client is gone by then (a child
    // forked while it is connected would hold its connection, closing, which crs refuses).
    let (mut server, port) = serving_on("redis-server", |port| {
        let mut c = Command::new("/usr/bin/redis-server");
        let port = port.to_string();
        c.args(["--port", &port, "--bind", "127.0.0.1", "--save", "3 1", "--appendonly", "no", "--dir", d]);
        c.args(["--rdb-key-save-delay", "200", "--enable-debug-command", "yes"]);
        c.stdout(Stdio::null()).stdin(Stdio::null());
        c
    });
    let pid = server.0.id() as i32;
    let mut s = redis_at(port);
    assert_eq!(redis(&mut s, &["DEBUG", "POPULATE", "20000"]), "+OK");
    assert_eq!(redis(&mut s, &["SET", "marker", "saved midway"]), "+OK");
    drop(s);
    let t0 = std::time::Instant::now();
    let saver = loop {
        let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(k) = kids.split_whitespace().next() {
            break k.parse::<i32>().unwrap();
        }
        assert!(t0.elapsed() < TIMEOUT, "redis did not begin its background save");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // Some keys saved, not all (20000 at 200 us each: 4 s).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let info = |s: &mut BufReader<TcpStream>, key: &str| {
        s.get_mut().write_all(b"*2\r\n$4\r\nINFO\r\n$11\r\npersistence\r\n").unwrap();
        let mut head = String::new();
        s.read_line(&mut head).unwrap();
        let mut body = vec![0u8; head.trim_start_matches('$').trim().parse::<usize>().unwrap() + 2];
        s.read_exact(&mut body).unwrap();
        let text = String::from_utf8_lossy(&body).to_string();
        text.lines().find_map(|l| l.strip_prefix(&format!("{key}:"))).unwrap_or_default().trim().to_string()
    };
    let mut s = redis_at(port);
    assert_eq!(info(&mut s, "rdb_bgsave_in_progress"), "1");
    drop(s);
    let img = format!("{d}/redis.crf");
    ckpt(&["--kill", "-o", &img, &pid.to_string()]);
    let _ = server.0.wait();
    gone(&[pid, saver]);
    let crfinfo = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert!(crfinfo.contains("anon_inode:[eventpoll]") && crfinfo.contains(&format!("pid {saver} fd")), "{crfinfo}");
    let o = run(&["rstrt", "-d", &img]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut s = redis_at(port);
    assert_eq!(redis(&mut s, &["GET", "marker"]), "saved midway");
    let t0 = std::time::Instant::now();
    while info(&mut s, "rdb_bgsave_in_progress") != "0" {
        assert!(t0.elapsed() < 4 * TIMEOUT, "the background save did not end");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(info(&mut s, "rdb_last_bgsave_status"), "ok");
    let o = Command::new("/usr/bin/redis-check-rdb").arg(format!("{d}/dump.rdb")).output().unwrap();
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(said.contains("RDB looks OK") && said.contains("20001 keys read"), "{said}");
    let _ = s.get_mut().write_all(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n");
    gone(&[pid]);
}

/// The body of an HTTP/1.0 GET of `path` from 127.0.0.1:`port`.
fn http_body(port: u16, path: &str) -> Vec<u8> {
    let mut s = redis_at(port).into_inner();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer") + 4;
    all.split_off(at)
}

/// nginx (Debian's nginx-light: a master and 2 workers sharing a listening socket, with unix
/// socket pairs between them): checkpointed (killed) and restored as a tree, it serves a
/// 5 MB file again, byte for byte.
#[test]
fn nginx_master_and_workers_serve_again_after_restore() {
    if !require(std::path::Path::new("/usr/sbin/nginx").exists(), "nginx (apt install nginx-light)") {
        return;
    }
    if !require(is_root(), "root (to restore the pids nginx's master knows its workers by)") {
        return;
    }
    let dir = tmpdir("nginx");
    let d = dir.to_str().unwrap();
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let body: Vec<u8> = (0..5_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(dir.join("www/big"), &body).unwrap();
    let (mut master, port) = serving_on("nginx", |port| {
        let conf = nginx_conf(d, &format!("127.0.0.1:{port}"));
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut c = Command::new("/usr/sbin/nginx");
        c.args(["-c", &format!("{d}/nginx.conf"), "-p", d]).stdin(Stdio::null()).stdout(Stdio::null());
        c
    });
    let pid = master.0.id() as i32;
    let get = || http_body(port, "/big");
    assert!(get() == body, "nginx serves the file before");
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let mut all: Vec<i32> = kids.split_whitespace().map(|k| k.parse().unwrap()).collect();
    assert_eq!(all.len(), 2, "two workers");
    all.push(pid);
    let img = format!("{d}/nginx.crf");
    ckpt(&["--kill", "-o", &img, &pid.to_string()]);
    let _ = master.0.wait();
    gone(&all);
    let o = run(&["rstrt", "-d", &img]);
    assert!(o.status.success(), "{}", stderr(&o));
    for _ in 0..4 {
        assert!(get() == body, "nginx serves the file, whole, after the restore");
    }
    // SAFETY: kill takes integers; the master is ours again (same pid), told to quit.
    unsafe { libc::kill(pid, libc::SIGQUIT) };
    gone(&all);
}

/// haproxy (Debian's, 2 threads): each thread has a POSIX timer on its own CPU clock (its
/// watchdog) and the stick table counts requests. Checkpointed (killed) and restored, it counts
/// on from where it was, each watchdog timer on its restored thread's clock.
#[test]
fn haproxy_counts_on_with_its_watchdog_timers_after_restore() {
    if !require(std::path::Path::new("/usr/sbin/haproxy").exists(), "haproxy (apt install haproxy)") {
        return;
    }
    let dir = tmpdir("haproxy");
    let d = dir.to_str().unwrap();
    let (mut server, port) = serving_on("haproxy", |port| {
        let conf = format!(
            "global\n nbthread 2\ndefaults\n mode http\n timeout connect 1s\n timeout client 5s\n timeout server 5s\n\
             frontend f\n bind 127.0.0.1:{port}\n stick-table type ip size 10 store http_req_cnt\n\
             http-request track-sc0 src\n\
             http-request return status 200 content-type text/plain lf-string \"requests %[sc0_http_req_cnt]\\n\"\n"
        );
        std::fs::write(dir.join("haproxy.cfg"), conf).unwrap();
        let mut c = Command::new("/usr/sbin/haproxy");
        c.args(["-f", &format!("{d}/haproxy.cfg"), "-db"]).stdin(Stdio::null()).stdout(Stdio::null());
        c
    });
    let pid = server.0.id() as i32;
    let get = || String::from_utf8_lossy(&http_body(port, "/")).trim_end().to_string();
    for n in 1..=3 {
        assert_eq!(get(), format!("requests {n}"));
    }
    // Its threads, the threads whose CPU clocks its timers are on (the tid's complement,
    // shifted, and 6: a thread's scheduler time), and whether every clock is such a one.
    let of_threads = |pid: i32| {
        let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect();
        tids.sort_unstable();
        let t = std::fs::read_to_string(format!("/proc/{pid}/timers")).unwrap();
        let clocks: Vec<i32> = t.lines().filter_map(|l| l.strip_prefix("ClockID: ")?.parse().ok()).collect();
        let mut of: Vec<i32> = clocks.iter().map(|c| !(c >> 3)).collect();
        of.sort_unstable();
        (tids, of, clocks.iter().all(|c| c & 7 == 6))
    };
    let (tids, of, sched) = of_threads(pid);
    assert!(tids.len() == 2 && of == tids && sched, "haproxy's watchdog timers: {tids:?} {of:?}");
    let img = format!("{d}/haproxy.crf");
    ckpt(&["--kill", "-o", &img, &pid.to_string()]);
    let _ = server.0.wait();
    gone(&[pid]);
    let o = run(&["rstrt", "-d", "-v", &img]);
    assert!(o.status.success(), "{}", stderr(&o));
    // "rstrt: restored pid N (haproxy) as pid M"
    let err = stderr(&o);
    let now = err.lines().find_map(|l| l.strip_prefix("rstrt: restored pid ")?.rsplit(' ').next()?.parse().ok());
    let now: i32 = now.unwrap_or_else(|| panic!("rstrt -v names no pid: {err}"));
    for n in 4..=6 {
        assert_eq!(get(), format!("requests {n}"));
    }
    let (tids, of, sched) = of_threads(now);
    assert!(tids.len() == 2 && of == tids && sched, "haproxy's watchdog timers after: {tids:?} {of:?}");
    // SAFETY: kill takes integers; the restored haproxy, told to stop.
    unsafe { libc::kill(now, libc::SIGTERM) };
    gone(&[now]);
}

/// The nftables tables crs left in this network namespace for the connections of `pid` (its
/// packet blocks).
fn crs_tables(pid: i32) -> Vec<String> {
    let o = Command::new("nft").args(["list", "tables"]).output().expect("nft");
    let mine = format!(" crs_{pid}_");
    String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains(&mine)).map(str::to_string).collect()
}

/// Reads `n` bytes of the pump's pattern from `s`, asserting each is the stream's next.
fn pattern(s: &mut TcpStream, from: &mut u64, n: u64) {
    let mut buf = vec![0u8; 1 << 16];
    let mut left = n;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let got = s.read(&mut buf[..want]).expect("the connection carries on");
        assert!(got > 0, "the connection ended with {left} bytes to come");
        for (i, b) in buf[..got].iter().enumerate() {
            assert_eq!(*b as u64, (*from + i as u64) % 251, "byte {} of the stream", *from + i as u64);
        }
        *from += got as u64;
        left -= got as u64;
    }
}

fn connected(p: &mut Proc, port: &str) -> TcpStream {
    let c = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    p.send("hold");
    assert_eq!(p.expect("holding"), "holding 1");
    c
}

/// An established connection with bytes in flight both ways (the server's unread input, its
/// output the client has not read: in the client's buffer and in the server's send queue),
/// checkpointed with --tcp-established and killed, then restored: the client sees neither a
/// reset nor a lost, doubled or reordered byte, and the restored server reads what it had
/// not. No packet block is left behind.
#[test]
fn an_established_connection_carries_on_with_its_bytes_in_flight() {
    if !require(is_root(), "root (TCP_REPAIR)") || !has_nft() {
        return;
    }
    let dir = tmpdir("tcp-established");
    let d = dir.to_str().unwrap();
    let mut p = start("inet", &[], &dir);
    let ready = p.seen.last().cloned().unwrap_or_default();
    let idle = ready.split_whitespace().nth(3).unwrap().to_string();
    let mut c = connected(&mut p, &idle);
    c.write_all(b"written before the checkpoint\n").unwrap();
    p.send("pump 8000000");
    let pumped: u64 = p.expect("pumped").split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(pumped > 100_000, "{pumped}");
    // Without the option: refused, naming it, and the connection is untouched.
    let o = run(&["ckpt", "--check", &p.pid().to_string()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("which only ckpt --tcp-established carries"), "{o:?}");
    let img = format!("{d}/tcp.crf");
    ckpt(&["--tcp-established", "--kill", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let pid = p.pid();
    assert_eq!(crs_tables(pid).len(), 1, "the block stays until the restore");
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert!(info.contains("30 bytes received unread"), "{info}");
    let mut r = rstrt(&[&img]);
    r.send("read");
    assert_eq!(r.expect("read"), "read 30 written before the checkpoint");
    let mut at = 0;
    pattern(&mut c, &mut at, pumped);
    c.write_all(b"after the restore\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    r.send("read");
    assert_eq!(r.expect("read"), "read 18 after the restore");
    r.send("pump 1000");
    assert_eq!(r.expect("pumped"), "pumped 1000");
    pattern(&mut c, &mut at, 1000);
    assert!(crs_tables(pid).is_empty(), "a block was left: {:?}", crs_tables(pid));
    r.verdict("ok");
}

/// Connections closed one way, with bytes in flight: one whose client shut its side after a
/// last line the server has not read (CLOSE_WAIT), one the server shut after writing (its
/// FIN acknowledged: FIN_WAIT2), one it shut behind bytes it could not send yet (FIN_WAIT1).
/// Without --tcp-established the first is refused by name; with it, checkpointed and killed,
/// then restored, the server reads the last line and then the end of file, and writes on;
/// the others' clients read every byte, then the end, while the server still reads what the
/// client writes.
#[test]
fn connections_closed_one_way_come_back_half_closed() {
    if !require(is_root(), "root (TCP_REPAIR)") || !has_nft() {
        return;
    }
    let dir = tmpdir("tcp-half");
    let d = dir.to_str().unwrap();
    let idle = |p: &Proc| p.seen.last().cloned().unwrap_or_default().split_whitespace().nth(3).unwrap().to_string();

    // Its peer closed (CLOSE_WAIT).
    let mut p = start("inet", &[], &dir);
    let port = idle(&p);
    let mut c = connected(&mut p, &port);
    c.write_all(b"last words\n").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    p.send("pump 8000000");
    let pumped: u64 = p.expect("pumped").split_whitespace().nth(1).unwrap().parse().unwrap();
    let o = run(&["ckpt", "--check", &p.pid().to_string()]);
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        said.contains("its peer closed, the process not yet (CLOSE_WAIT), which only ckpt --tcp-established"),
        "{said}"
    );
    let img = format!("{d}/close-wait.crf");
    ckpt(&["--tcp-established", "--kill", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert!(info.contains("11 bytes received unread") && info.contains("its peer closed its side"), "{info}");
    let mut r = rstrt(&[&img]);
    r.send("read");
    assert_eq!(r.expect("read"), "read 11 last words");
    r.send("read");
    assert_eq!(r.expect("read"), "read 0 ", "the end of file, after the last line");
    let mut at = 0;
    pattern(&mut c, &mut at, pumped);
    r.send("pump 1000");
    assert_eq!(r.expect("pumped"), "pumped 1000");
    pattern(&mut c, &mut at, 1000);
    r.send("shut");
    assert_eq!(r.expect("shut"), "shut 0");
    assert_eq!(c.read(&mut [0u8; 16]).unwrap(), 0, "the end of file after the server's bytes");
    assert!(crs_tables(r.pid()).is_empty() && crs_tables(p.pid()).is_empty(), "a block was left");
    r.verdict("ok");

    // It closed its side (FIN_WAIT2), its bytes not all read.
    let mut p = start("inet", &[], &dir);
    let port = idle(&p);
    let mut c = connected(&mut p, &port);
    p.send("pump 5000");
    assert_eq!(p.expect("pumped"), "pumped 5000");
    p.send("shut");
    assert_eq!(p.expect("shut"), "shut 0");
    let t0 = std::time::Instant::now();
    while !String::from_utf8_lossy(&Command::new("ss").args(["-tan", "state", "fin-wait-2"]).output().unwrap().stdout)
        .contains(&format!(":{port} "))
    {
        assert!(t0.elapsed() < TIMEOUT, "the server's FIN was not acknowledged");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let img = format!("{d}/fin-wait.crf");
    ckpt(&["--tcp-established", "--kill", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert!(info.contains("it closed its side"), "{info}");
    let mut r = rstrt(&[&img]);
    c.write_all(b"still heard\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    r.send("read");
    assert_eq!(r.expect("read"), "read 12 still heard");
    let mut at = 0;
    pattern(&mut c, &mut at, 5000);
    assert_eq!(c.read(&mut [0u8; 16]).unwrap(), 0, "the end of file after the server's bytes");
    drop(c);
    std::thread::sleep(std::time::Duration::from_millis(100));
    r.send("read");
    assert_eq!(r.expect("read"), "read 0 ");
    assert!(crs_tables(r.pid()).is_empty() && crs_tables(p.pid()).is_empty(), "a block was left");
    r.verdict("ok");

    // It closed its side behind bytes not sent yet (its FIN queued: FIN_WAIT1).
    let mut p = start("inet", &[], &dir);
    let port = idle(&p);
    let mut c = connected(&mut p, &port);
    p.send("pump 8000000");
    let pumped: u64 = p.expect("pumped").split_whitespace().nth(1).unwrap().parse().unwrap();
    p.send("shut");
    assert_eq!(p.expect("shut"), "shut 0");
    let img = format!("{d}/fin-wait1.crf");
    ckpt(&["--tcp-established", "--kill", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    let line = info.lines().find(|l| l.starts_with("tcpconn:")).unwrap_or_default();
    assert!(line.contains("it closed its side") && !line.contains(" 0 unsent"), "{info}");
    let mut r = rstrt(&[&img]);
    let mut at = 0;
    pattern(&mut c, &mut at, pumped);
    assert_eq!(c.read(&mut [0u8; 16]).unwrap(), 0, "the end of file after the server's bytes");
    r.verdict("ok");
}

/// Checkpointed with --tcp-established and left running, a server's connection carries on
/// there, and the block is lifted.
#[test]
fn an_established_connection_of_a_process_that_runs_on_is_untouched() {
    if !require(is_root(), "root (TCP_REPAIR)") || !has_nft() {
        return;
    }
    let dir = tmpdir("tcp-runs-on");
    let mut p = start("inet", &[], &dir);
    let ready = p.seen.last().cloned().unwrap_or_default();
    let idle = ready.split_whitespace().nth(3).unwrap().to_string();
    let mut c = connected(&mut p, &idle);
    p.send("pump 100000");
    p.expect("pumped");
    ckpt(&["--tcp-established", "-o", &format!("{}/x.crf", dir.display()), &p.pid().to_string()]);
    assert!(crs_tables(p.pid()).is_empty(), "a block was left: {:?}", crs_tables(p.pid()));
    c.write_all(b"still there\n").unwrap();
    let mut at = 0;
    pattern(&mut c, &mut at, 100_000);
    p.send("read");
    assert_eq!(p.expect("read"), "read 12 still there");
    p.verdict("ok");
}

/// Whether this kernel puts connections back in a listener's queue (`crs check` says).
fn queues_come_back() -> bool {
    let o = run(&["check"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let ok = out.lines().any(|l| l.starts_with("ok") && l.contains("waiting connections"));
    require(ok, "BPF SYN cookies (bpf_sk_assign_tcp_reqsk: Linux 6.9+ with BTF)")
}

/// Two connections a listener had not accepted yet, one with bytes sent, one its client
/// closed after sending: a checkpoint of the process that runs on leaves them waiting as they
/// were (the next checkpoint finds them whole); one with --kill carries them, and the
/// restored server accepts each, reads its bytes (and the end of the closed one), and talks
/// on the first both ways. No packet block is left behind.
#[test]
fn connections_waiting_to_be_accepted_wait_again_after_restore() {
    if !require(is_root(), "root (TCP_REPAIR)") || !has_nft() || !queues_come_back() {
        return;
    }
    let dir = tmpdir("tcp-waiting");
    let d = dir.to_str().unwrap();
    let mut p = start("inet", &[], &dir);
    let ready = p.seen.last().cloned().unwrap_or_default();
    let idle = ready.split_whitespace().nth(3).unwrap().to_string();
    let mut c1 = TcpStream::connect(format!("127.0.0.1:{idle}")).unwrap();
    c1.set_read_timeout(Some(TIMEOUT)).unwrap();
    c1.write_all(b"sent while it waited\n").unwrap();
    let mut c2 = TcpStream::connect(format!("127.0.0.1:{idle}")).unwrap();
    c2.set_read_timeout(Some(TIMEOUT)).unwrap();
    c2.write_all(b"bye\n").unwrap();
    c2.shutdown(std::net::Shutdown::Write).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let pid = p.pid();
    ckpt(&["--tcp-established", "-o", &format!("{d}/runs-on.crf"), &pid.to_string()]);
    assert!(crs_tables(pid).is_empty(), "a block was left: {:?}", crs_tables(pid));
    let img = format!("{d}/waiting.crf");
    ckpt(&["--tcp-established", "--kill", "-o", &img, &pid.to_string()]);
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert!(info.contains("21 bytes received; mss"), "{info}");
    assert!(info.contains("4 bytes received, then its peer's FIN"), "{info}");
    let mut r = rstrt(&[&img]);
    r.send("hold");
    assert_eq!(r.expect("holding"), "holding 1");
    r.send("read");
    assert_eq!(r.expect("read"), "read 21 sent while it waited");
    r.send("pump 1000");
    assert_eq!(r.expect("pumped"), "pumped 1000");
    let mut at = 0;
    pattern(&mut c1, &mut at, 1000);
    c1.write_all(b"after the restore\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    r.send("read");
    assert_eq!(r.expect("read"), "read 18 after the restore");
    r.send("hold");
    assert_eq!(r.expect("holding"), "holding 1");
    r.send("read");
    assert_eq!(r.expect("read"), "read 4 bye");
    r.send("read");
    assert!(r.expect("read").starts_with("read 0"), "the closed connection's end is lost");
    assert!(crs_tables(pid).is_empty(), "a block was left: {:?}", crs_tables(pid));
    r.verdict("ok");
}

/// redis-server with a client connected: checkpointed with --tcp-established and killed, then
/// restored, it answers the same client on the same connection, its counter intact.
#[test]
fn redis_answers_the_same_connection_after_restore() {
    if !has_redis() || !require(is_root(), "root (TCP_REPAIR)") || !has_nft() {
        return;
    }
    let dir = tmpdir("redis-conn");
    let d = dir.to_str().unwrap();
    let (mut server, port) = redis_server(d);
    let pid = server.0.id() as i32;
    let mut s = redis_at(port);
    for n in 1..=100 {
        assert_eq!(redis(&mut s, &["INCR", "n"]), format!(":{n}"));
    }
    let img = format!("{d}/redis.crf");
    ckpt(&["--tcp-established", "--kill", "-o", &img, &pid.to_string()]);
    let _ = server.0.wait();
    gone(&[pid]);
    let o = run(&["rstrt", "-d", &img]);
    assert!(o.status.success(), "{}", stderr(&o));
    for n in 101..=200 {
        assert_eq!(redis(&mut s, &["INCR", "n"]), format!(":{n}"), "on the connection opened before");
    }
    let _ = s.get_mut().write_all(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n");
    gone(&[pid]);
}

/// A client of the test's own: one connection to ADDR:PORT, a numbered line every 5 ms for
/// SECONDS, each echo checked in order; prints "ok N lines, longest wait M ms" or what broke.
const ECHO_CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
print("connected", flush=True)
f = s.makefile("rb")
end = time.time() + float(sys.argv[3])
n, worst = 0, 0.0
try:
    while time.time() < end:
        t = time.time()
        s.sendall(b"%d\n" % n)
        got = f.readline()
        if got != b"%d\n" % n:
            print("bad: sent %d, got %r" % (n, got), flush=True); sys.exit(1)
        worst = max(worst, time.time() - t)
        n += 1
        time.sleep(0.005)
except OSError as e:
    print("bad: %s after %d lines" % (e, n), flush=True); sys.exit(1)
print("ok %d lines, longest wait %d ms" % (n, worst * 1000), flush=True)
"#;

/// Three nodes on one segment: a TCP echo server of the test's own with its service address
/// on node a, a client on node c streaming numbered lines over one connection. `migrate
/// --tcp-established --move-address` moves the server to node b: the client sees no reset,
/// no loss, no reordering, only a pause (printed); the address is on b and no packet block is
/// left on either node. Refused first by a restartd that moves no address, then by one where
/// the address is already (after the whole image), then with the link to b cut during the
/// transfer, the service stays at a each time, with its address and its client's
/// connection, and no block is left.
#[test]
fn a_service_migrates_with_its_address_and_its_clients_connection() {
    use support::nodes::Daemon;
    let Some((seg, _dir, key)) = segment("service") else { return };
    let n = &seg.nodes;
    let (server, pid) = echo_server(&seg, &seg.service);
    let client = |secs: &str| echo_client(&seg, &seg.service, secs);
    // Refused by a restartd that moves no address: the service stays, and serves.
    {
        let _d = Daemon::start(n, &["--key", &key, "--allow-root"]);
        let mut cl = client("2");
        let o = migrate_service(&seg, &key, &seg.prefix, pid, &[]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("moves no address"), "{}", stderr(&o));
        let said = cl.expect("");
        assert!(said.starts_with("ok"), "{said}");
        assert!(seg.has_service(&n.a) && !seg.has_service(&n.b));
        assert_eq!(seg.crs_tables(&n.a), "");
    }
    let _d = Daemon::start(n, &["--key", &key, "--allow-root", "--move-address", "--timeout", "2"]);
    // Refused at b once the image is in (b has the address already): the address is back at
    // a before the service runs on there.
    {
        let mut cl = client("2");
        support::nodes::ip(&["-n", &n.b, "addr", "add", &format!("{}/32", seg.service), "dev", "lo"]);
        let o = migrate_service(&seg, &key, &seg.prefix, pid, &[]);
        support::nodes::ip(&["-n", &n.b, "addr", "del", &format!("{}/32", seg.service), "dev", "lo"]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("is already on this node"), "{}", stderr(&o));
        let said = cl.expect("");
        assert!(said.starts_with("ok"), "{said}");
        assert!(seg.has_service(&n.a) && !seg.has_service(&n.b));
        assert_eq!(seg.crs_tables(&n.a), "");
    }
    // The link to b cut in the middle of the transfer (slowed for that): the service stays
    // at a, its address and connection with it.
    {
        let mut cl = client("6");
        let tc =
            ["qdisc", "add", "dev", &n.veth_a, "root", "tbf", "rate", "40mbit", "burst", "64kb", "latency", "50ms"];
        let o = Command::new("ip").args(["netns", "exec", &n.a, "tc"]).args(tc).output().unwrap();
        assert!(o.status.success(), "tc: {}", stderr(&o));
        let mut m = n.cmd(
            &n.a,
            crs(),
            &[
                "migrate",
                "--timeout",
                "2",
                "--key",
                &key,
                "--tcp-established",
                "--move-address",
                &seg.prefix,
                &pid.to_string(),
                &n.addr_b,
            ],
        );
        let m = m.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(800));
        let veth_b = n.veth_a.replacen("crsa", "crsb", 1);
        support::nodes::ip(&["-n", &n.b, "link", "set", &veth_b, "down"]);
        let o = m.wait_with_output().unwrap();
        support::nodes::ip(&["-n", &n.b, "link", "set", &veth_b, "up"]);
        let _ =
            Command::new("ip").args(["netns", "exec", &n.a, "tc", "qdisc", "del", "dev", &n.veth_a, "root"]).status();
        assert!(!o.status.success(), "the migration went through a cut link");
        assert!(stderr(&o).contains("runs on here"), "{}", stderr(&o));
        let said = cl.expect("");
        assert!(said.starts_with("ok"), "{said}");
        assert!(seg.has_service(&n.a) && !seg.has_service(&n.b));
        assert_eq!(seg.crs_tables(&n.a), "");
        assert_eq!(seg.crs_tables(&n.b), "");
        // The restore the cut left half done at b holds its sockets until restartd's
        // --timeout drops it.
        let t = std::time::Instant::now();
        loop {
            let o = Command::new("ip").args(["netns", "exec", &n.b, "ss", "-Hltn", "sport = :7000"]).output().unwrap();
            if o.stdout.is_empty() {
                break;
            }
            assert!(t.elapsed() < TIMEOUT, "restartd still holds the half-restored service");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let mut cl = client("3");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let o = migrate_service(&seg, &key, &seg.prefix, pid, &["-v"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The client's node is sent to b, and nothing sends it back to a afterwards (a's
    // announcing the address it gave away sent clients to a for 13 s, until their
    // neighbour entries went stale).
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let mac = |ns: &str, what: &[&str]| {
        let o = Command::new("ip").args([&["-n", ns][..], what].concat()).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let at = text.split_whitespace().skip_while(|w| *w != "lladdr" && *w != "link/ether").nth(1);
        at.unwrap_or_default().to_string()
    };
    let veth_b = n.veth_a.replacen("crsa", "crsb", 1);
    let b_mac = mac(&n.b, &["link", "show", &veth_b]);
    assert!(!b_mac.is_empty());
    assert_eq!(mac(&seg.c, &["neigh", "show", &seg.service]), b_mac, "the client's node sends to another node than b");
    let said = cl.expect("");
    eprintln!("the client, through the migration: {said}");
    assert!(said.starts_with("ok"), "{said}");
    assert!(seg.has_service(&n.b) && !seg.has_service(&n.a), "the address did not move");
    assert_eq!(seg.crs_tables(&n.a), "");
    assert_eq!(seg.crs_tables(&n.b), "");
    // "moved pid P to HOST: it runs there as pid Q"
    let ns = std::fs::read_link(format!("/proc/{}/ns/net", there(&o))).unwrap();
    assert_eq!(ns.to_string_lossy(), n.ns_id(&n.b), "the server does not run at b");
    drop(server);
    kill_there(&o);
}

/// A connection waiting to be accepted whose client sent more than crs can put back in the
/// queue: the checkpoint is refused, saying so, before it takes any, and the process finds
/// the connection with its bytes.
#[test]
fn a_waiting_connection_with_too_many_bytes_is_refused_and_left_alone() {
    if !require(is_root(), "root (TCP_REPAIR)") || !has_nft() || !queues_come_back() {
        return;
    }
    let dir = tmpdir("tcp-waiting-big");
    let mut p = start("inet", &[], &dir);
    let ready = p.seen.last().cloned().unwrap_or_default();
    let idle = ready.split_whitespace().nth(3).unwrap().to_string();
    let mut c = TcpStream::connect(format!("127.0.0.1:{idle}")).unwrap();
    c.write_all(&[b'x'; 100_000]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let img = format!("{}/big.crf", dir.display());
    let o = run(&["ckpt", "--tcp-established", "-o", &img, &p.pid().to_string()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("more than the 65536 crs can put back"), "{}", stderr(&o));
    assert!(crs_tables(p.pid()).is_empty(), "a block was left: {:?}", crs_tables(p.pid()));
    p.send("hold");
    assert_eq!(p.expect("holding"), "holding 1");
    p.send("read");
    assert!(p.expect("read").starts_with("read 255 xxxx"), "{:?}", p.seen);
    p.verdict("ok");
}

/// A client whose connection the echo server had not accepted yet (it waits until told, the
/// client's first line in the listener's queue) when it migrated with --tcp-established and
/// its address: a migration refused at b leaves it waiting at a, whole; at b, after the next
/// one, the server accepts it, echoes that first line and the rest; the client sees no
/// reset, only a pause. No packet block is left on either node.
#[test]
fn a_connection_waiting_to_be_accepted_migrates_with_its_service() {
    use support::nodes::Daemon;
    let Some((seg, dir, key)) = segment("waiting") else { return };
    if !queues_come_back() {
        return;
    }
    let n = &seg.nodes;
    let go = dir.join("accept");
    let echo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/echo.py");
    let args = [echo.to_str().unwrap(), &seg.service, "7000", "late", go.to_str().unwrap()];
    let mut c = n.cmd(&n.a, "/usr/bin/python3", &args);
    c.stdin(Stdio::null()).stderr(Stdio::null());
    let mut server = Proc::spawn(c);
    let pid: i32 = server.expect("ready").split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut cl = echo_client(&seg, &seg.service, "3");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let _d = Daemon::start(n, &["--key", &key, "--allow-root", "--move-address"]);
    // Refused at b once the image is in (b has the address already): the connection is back
    // in the queue at a, whole, for the migration after.
    support::nodes::ip(&["-n", &n.b, "addr", "add", &format!("{}/32", seg.service), "dev", "lo"]);
    let o = migrate_service(&seg, &key, &seg.prefix, pid, &[]);
    support::nodes::ip(&["-n", &n.b, "addr", "del", &format!("{}/32", seg.service), "dev", "lo"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is already on this node"), "{}", stderr(&o));
    assert_eq!(seg.crs_tables(&n.a), "");
    let o = migrate_service(&seg, &key, &seg.prefix, pid, &["-v"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(seg.crs_tables(&n.a), "");
    assert_eq!(seg.crs_tables(&n.b), "");
    std::fs::write(&go, "").unwrap();
    let said = cl.expect("");
    eprintln!("the waiting client, through the migration: {said}");
    assert!(said.starts_with("ok"), "{said}");
    let ns = std::fs::read_link(format!("/proc/{}/ns/net", there(&o))).unwrap();
    assert_eq!(ns.to_string_lossy(), n.ns_id(&n.b), "the server does not run at b");
    drop(server);
    kill_there(&o);
}

/// A redis client of the test's own: one connection to ADDR:PORT, INCR n for SECONDS, then
/// GET n on the same connection; prints "ok ACKED VALUE" or what broke.
const INCR_CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
f = s.makefile("rb")
print("connected", flush=True)
end = time.time() + float(sys.argv[3])
acked = 0
try:
    while time.time() < end:
        s.sendall(b"*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n")
        got = f.readline()
        if got != b":%d\r\n" % (acked + 1):
            print("bad: INCR %d answered %r" % (acked + 1, got), flush=True); sys.exit(1)
        acked += 1
        time.sleep(0.002)
    s.sendall(b"*2\r\n$3\r\nGET\r\n$1\r\nn\r\n")
    f.readline()
    value = int(f.readline())
except OSError as e:
    print("bad: %s after %d INCRs" % (e, acked), flush=True); sys.exit(1)
print("ok %d %d" % (acked, value), flush=True)
"#;

/// redis-server (Debian's: threads, epoll, a listening socket, clients) serving on the
/// service address of node a, a client on node c running INCR in a loop on one connection:
/// migrated to node b with its address and connections, the final counter equals the number
/// of INCRs acknowledged, and the key set before is there.
#[test]
fn redis_migrates_with_its_client_counting_on() {
    use support::nodes::Daemon;
    if !has_redis() {
        return;
    }
    let Some((seg, dir, key)) = segment("redis-migrate") else { return };
    let n = &seg.nodes;
    let d = dir.to_str().unwrap();
    let _daemon = Daemon::start(n, &["--key", &key, "--allow-root", "--move-address"]);
    let mut c = n.cmd(
        &n.a,
        "/usr/bin/redis-server",
        &[
            "--bind",
            &seg.service,
            "--port",
            "6379",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            d,
        ],
    );
    c.stdin(Stdio::null()).stdout(Stdio::null());
    let mut server = Reap(c.spawn().unwrap());
    let pid = server.0.id() as i32;
    // Set a key, through node c.
    let setter = |cmd: &str| {
        let script = format!(
            "import socket,sys,time\nfor i in range(500):\n  try: s=socket.create_connection(('{}',6379),timeout=5); break\n  except OSError: time.sleep(0.02)\ns.sendall(b'{cmd}'); print(s.recv(100))",
            seg.service
        );
        let o = n.cmd(&seg.c, "/usr/bin/python3", &["-c", &script]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o))
    };
    let said = setter("*3\\r\\n$3\\r\\nSET\\r\\n$1\\r\\nk\\r\\n$4\\r\\nkept\\r\\n");
    assert!(said.contains("OK"), "{said}");
    let mut cl = n.cmd(&seg.c, "/usr/bin/python3", &["-c", INCR_CLIENT, &seg.service, "6379", "3"]);
    cl.stdin(Stdio::null());
    let mut cl = Proc::spawn(cl);
    cl.expect("connected");
    std::thread::sleep(std::time::Duration::from_millis(700));
    let o = migrate_service(&seg, &key, &seg.prefix, pid, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let _ = server.0.wait();
    let said = cl.expect("");
    eprintln!("the INCR client, through the migration: {said}");
    let f: Vec<&str> = said.split_whitespace().collect();
    assert_eq!(f[0], "ok", "{said}");
    assert_eq!(f[1], f[2], "acknowledged INCRs and the final counter differ: {said}");
    assert!(setter("*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n").contains("kept"), "the key set before is gone");
    kill_there(&o);
}

/// nginx (Debian's nginx-light: a master and 2 workers sharing a listening socket) on the
/// service address of node a, serving an 8 MB file to a slow client on node c (about
/// 3 MB/s): migrated live to node b (a pid namespace of its own there, as on another machine)
/// with its address and connections, the download completes, byte for byte.
#[test]
fn nginx_migrates_while_a_slow_client_downloads() {
    use support::nodes::Daemon;
    if !require(std::path::Path::new("/usr/sbin/nginx").exists(), "nginx (apt install nginx-light)") {
        return;
    }
    let Some((seg, dir, key)) = segment("nginx-migrate") else { return };
    let n = &seg.nodes;
    let d = dir.to_str().unwrap();
    let _daemon = Daemon::start_own_pids(n, &["--key", &key, "--allow-root", "--move-address"]);
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let body: Vec<u8> = (0..8_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    std::fs::write(dir.join("www/big"), &body).unwrap();
    let conf = nginx_conf(d, &format!("{}:8080", seg.service));
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut c = n.cmd(&n.a, "/usr/sbin/nginx", &["-c", &format!("{d}/nginx.conf"), "-p", d]);
    c.stdin(Stdio::null()).stdout(Stdio::null());
    let mut master = Reap(c.spawn().unwrap());
    let pid = master.0.id() as i32;
    // A slow client of the test's own: 64 KiB every 20 ms, with a small receive buffer, so
    // that most of the file waits in nginx's send queue. A connection that stalls for 30 s
    // fails it (socket.timeout) rather than hanging the test.
    let slow = format!(
        "import socket,sys,time\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)\n\
         s.settimeout(30)\n\
         s.connect(('{}',8080)); s.sendall(b'GET /big HTTP/1.0\\r\\n\\r\\n')\nout=open(sys.argv[1],'wb')\n\
         while True:\n  b=s.recv(65536)\n  if not b: break\n  out.write(b); out.flush(); time.sleep(0.02)\n",
        seg.service
    );
    let got = dir.join("got");
    let mut curl = n.cmd(&seg.c, "/usr/bin/python3", &["-c", &slow, got.to_str().unwrap()]);
    curl.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let curl = curl.spawn().unwrap();
    let t = std::time::Instant::now();
    while std::fs::metadata(&got).map_or(0, |m| m.len()) < 1_000_000 {
        assert!(t.elapsed() < TIMEOUT, "the download does not begin");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Live: the master's and the workers' memory goes ahead while they serve.
    let o = migrate_service(&seg, &key, &seg.prefix, pid, &["--live", "-v"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = stderr(&o);
    assert!(said.contains("not live") || said.contains("the rounds sent ahead the memory of pids"), "{said}");
    let _ = master.0.wait();
    let done = curl.wait_with_output().unwrap();
    if !done.status.success() {
        // What each node holds, should the connection stall after the migration (it did in
        // one run in eight while a segment could leave the frozen connection after its queue
        // was read: see tcpconn::Lock): its sockets, addresses, rules and counters.
        let mut seen = String::new();
        for (node, prog, args) in [
            (&n.b, "ss", &["-tnpi"][..]),
            (&seg.c, "ss", &["-tni"][..]),
            (&seg.c, "ip", &["neigh"][..]),
            (&seg.c, "nstat", &["-az", "TcpExtPAWSEstab", "TcpExtTCPACKSkippedPAWS", "TcpExtTCPOFODrop"][..]),
            (&n.b, "ip", &["neigh"][..]),
            (&n.b, "nstat", &["-a"][..]),
            (&seg.c, "nstat", &["-a"][..]),
            (&n.b, "ip", &["-s", "link"][..]),
            (&n.a, "ip", &["-br", "addr"][..]),
            (&n.b, "ip", &["-br", "addr"][..]),
            (&n.a, "nft", &["list", "ruleset"][..]),
            (&n.b, "nft", &["list", "ruleset"][..]),
        ] {
            let o = n.cmd(node, prog, args).output().map(|o| String::from_utf8_lossy(&o.stdout).to_string());
            seen.push_str(&format!("--- {node}: {prog} {}\n{}\n", args.join(" "), o.unwrap_or_default()));
        }
        let ps = std::process::Command::new("sh").args(["-c", "ps -eo pid,ppid,stat,cmd | grep [n]ginx"]).output();
        let ps = ps.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
        seen.push_str(&format!("--- nginx processes\n{ps}"));
        panic!("the client: {}\nmigrate said: {}\n{seen}", stderr(&done), stderr(&o));
    }
    let all = std::fs::read(&got).unwrap();
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer") + 4;
    eprintln!("the download took {:?}, the migration in its middle", t.elapsed());
    assert!(all[at..] == body[..], "the file downloaded through the migration differs ({} bytes)", all.len() - at);
}

/// A program of the test's own talking to daemons outside the checkpoint over unix sockets:
/// a datagram socket connected to a log socket, a stream connected to a listener. Prints
/// "ready"; on "send" it sends "dgram N" and "stream N" on them, N a count in memory.
const UNIX_CLIENT: &str = r#"
import socket, sys
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.connect(sys.argv[1])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(sys.argv[2])
n = 0
print("ready", flush=True)
for line in sys.stdin:
    if line.startswith("send"):
        n += 1
        d.send(b"dgram %d" % n); s.sendall(b"stream %d\n" % n)
        print("sent", n, flush=True)
"#;

/// Unix sockets to daemons outside the checkpoint are refused, naming the option; with
/// `ckpt --unix-reconnect` they are connected again to the same names on restore (refused,
/// saying so, while the daemon is not there), and the program carries on talking to them.
#[test]
fn unix_sockets_to_daemons_outside_connect_again_with_unix_reconnect() {
    use std::os::unix::net::{UnixDatagram, UnixListener};
    let dir = tmpdir("unix-reconnect");
    let (log, db) = (dir.join("log"), dir.join("db"));
    let logd = UnixDatagram::bind(&log).unwrap();
    logd.set_read_timeout(Some(TIMEOUT)).unwrap();
    let dbd = UnixListener::bind(&db).unwrap();
    let mut c = Command::new("/usr/bin/python3");
    c.args(["-c", UNIX_CLIENT, log.to_str().unwrap(), db.to_str().unwrap()]);
    close_extra_fds(&mut c);
    let mut p = Proc::spawn(c);
    p.expect("ready");
    let (conn, _) = dbd.accept().unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut conn = BufReader::new(conn);
    let got = |logd: &UnixDatagram, conn: &mut BufReader<std::os::unix::net::UnixStream>| {
        let mut b = [0u8; 64];
        let n = logd.recv(&mut b).unwrap();
        let mut line = String::new();
        conn.read_line(&mut line).unwrap();
        (String::from_utf8_lossy(&b[..n]).to_string(), line.trim().to_string())
    };
    p.send("send");
    p.expect("sent 1");
    assert_eq!(got(&logd, &mut conn), ("dgram 1".into(), "stream 1".into()));
    let pid = p.pid().to_string();
    let o = run(&["ckpt", "--check", &pid]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("which ckpt --unix-reconnect would connect again to its peer's name"), "{out}");
    let img = format!("{}/u.crf", dir.display());
    ckpt(&["--unix-reconnect", "--kill", "-o", &img, &pid]);
    p.kill();
    // The database daemon is away: the restore is refused, saying so.
    drop(dbd);
    std::fs::remove_file(&db).unwrap();
    let mut r = Command::new(crs());
    r.args(["rstrt", &img]).stdin(Stdio::null());
    close_extra_fds(&mut r);
    let o = r.output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("could not connect again to"), "{}", stderr(&o));
    let dbd = UnixListener::bind(&db).unwrap();
    let mut r = rstrt(&[&img]);
    let (conn, _) = dbd.accept().unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut conn = BufReader::new(conn);
    r.send("send");
    r.expect("sent 2");
    assert_eq!(got(&logd, &mut conn), ("dgram 2".into(), "stream 2".into()));
}

/// A program of the test's own listening to address changes on a NETLINK_ROUTE socket
/// (RTMGRP_IPV4_IFADDR). Prints "ready PORT"; on "wait" it says "waiting", reads one message
/// and prints "newaddr" for an RTM_NEWADDR.
const NETLINK_CLIENT: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
s.bind((0, 0x10))
print("ready", s.getsockname()[0], flush=True)
for line in sys.stdin:
    if line.startswith("wait"):
        print("waiting", flush=True)
        m = s.recv(65536)
        print("newaddr" if struct.unpack("=IHH", m[:8])[1] == 20 else "other", flush=True)
"#;

/// A NETLINK_ROUTE socket with nothing waiting is made again with its port and groups: the
/// restored program hears of an address added after the restore.
#[test]
fn a_netlink_route_socket_listens_to_its_groups_again() {
    let Some(n) = support::nodes::Nodes::new() else { return };
    let dir = tmpdir("netlink");
    let mut p = Proc::spawn(n.cmd(&n.a, "/usr/bin/python3", &["-c", NETLINK_CLIENT]));
    let ready = p.expect("ready");
    let img = format!("{}/nl.crf", dir.display());
    let o = n.cmd(&n.a, crs(), &["ckpt", "--kill", "-o", &img, &p.pid().to_string()]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert!(info.contains("netlink route"), "{info}");
    let mut c = n.cmd(&n.a, crs(), &["rstrt", &img]);
    c.stdin(Stdio::piped());
    let mut r = Proc::spawn(c);
    r.send("wait");
    // Once it runs (its socket was made before), an address comes.
    r.expect("waiting");
    support::nodes::ip(&["-n", &n.a, "addr", "add", "10.99.0.9/32", "dev", "lo"]);
    assert_eq!(r.expect(""), "newaddr", "before the restore it said {ready}");
}

/// The same over IPv6: the echo server on the service address fd00:57:N::100 of node a, a
/// client on node c; migrated with it to node b, which announces it with an unsolicited
/// neighbour advertisement, the client sees no reset, no loss, no reordering.
#[test]
fn a_service_on_ipv6_migrates_with_its_address() {
    use support::nodes::Daemon;
    let Some((seg, _dir, key)) = segment("service6") else { return };
    let n = &seg.nodes;
    let _d = Daemon::start(n, &["--key", &key, "--allow-root", "--move-address"]);
    let (server, pid) = echo_server(&seg, &seg.service6);
    let mut cl = echo_client(&seg, &seg.service6, "3");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let o = migrate_service(&seg, &key, &seg.prefix6, pid, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = cl.expect("");
    eprintln!("the IPv6 client, through the migration: {said}");
    assert!(said.starts_with("ok"), "{said}");
    assert!(seg.has(&n.b, &seg.service6) && !seg.has(&n.a, &seg.service6), "the address did not move");
    assert_eq!(seg.crs_tables(&n.a), "");
    drop(server);
    kill_there(&o);
}

/// PostgreSQL's server binaries (Debian's postgresql), the newest version installed.
fn postgres_bin() -> Option<std::path::PathBuf> {
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).filter(|b| b.join("postgres").exists()).collect())
        .unwrap_or_default();
    found.sort();
    let ok = found.last().is_some() && std::path::Path::new("/usr/bin/psql").exists();
    require(ok && is_root(), "root, postgres and psql (apt install postgresql)").then(|| found.pop()).flatten()
}

/// One SQL command through psql as the postgres user, on loopback; its output, or the failure.
fn psql(port: u16, sql: &str) -> Result<String, String> {
    let o = Command::new("/usr/bin/psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", "postgres", "-Atc", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    match o.status.success() {
        true => Ok(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        false => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
    }
}

/// PostgreSQL (Debian's): its postmaster and the five processes it forks (checkpointer, writers,
/// launchers), System V shared memory, anonymous shared memory for its buffers, POSIX shared
/// memory, a TCP and a unix listener, the pipe that tells its children it died. Checkpointed
/// (killed) with rows just committed, restored in its own pid and IPC namespaces (its System V
/// segment outlives it, with its id in use: see system_v_objects_come_back_with_their_ids), it
/// answers with every row and takes more.
#[test]
fn postgres_serves_its_rows_after_restore() {
    let Some(bin) = postgres_bin() else { return };
    let dir = tmpdir("postgres");
    let d = dir.to_str().unwrap().to_string();
    let as_postgres = |prog: &std::path::Path| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "postgres", "--regid", "postgres", "--init-groups", "--"]).arg(prog);
        c.stdin(Stdio::null()).stdout(Stdio::null());
        c
    };
    let st = Command::new("chown").args(["postgres", &d]).status().unwrap();
    assert!(st.success());
    let data = format!("{d}/data");
    let mut init = as_postgres(&bin.join("initdb"));
    init.args(["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"]).stderr(Stdio::null());
    close_extra_fds(&mut init);
    assert!(init.status().unwrap().success(), "initdb");
    let (mut server, port) = serving_on("postgres", |port| {
        let mut c = as_postgres(&bin.join("postgres"));
        c.args(["-D", &data, "-k", &d, "-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"]);
        c.args(["-c", "shared_buffers=16MB", "-c", "fsync=off"]).stderr(Stdio::null());
        c
    });
    let pid = server.0.id() as i32;
    let sql = "CREATE TABLE t (n int, s text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g";
    let made = (|| {
        let t0 = std::time::Instant::now();
        loop {
            match psql(port, sql) {
                Ok(_) => return Ok(()),
                // Listening already, but still starting up.
                Err(e) if e.contains("starting up") && t0.elapsed() < TIMEOUT => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                Err(e) => return Err(e),
            }
        }
    })();
    made.unwrap();
    let sum = "SELECT count(*), sum(n), max(s) FROM t";
    let before = psql(port, sum).unwrap();
    let img = format!("{d}/pg.crf");
    ckpt(&["-k", "-o", &img, &pid.to_string()]);
    let _ = server.0.wait();
    // What a killed postgres leaves, removed at the end: its System V segment (its key names
    // the data directory) and its POSIX shared memory files.
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    let shm: Vec<String> = info
        .lines()
        .filter_map(|l| Some(l.strip_prefix("sysv shm:  id ")?.split_whitespace().next()?.to_string()))
        .collect();
    let mut files: Vec<String> =
        info.split_whitespace().filter(|w| w.starts_with("/dev/shm/PostgreSQL.")).map(String::from).collect();
    files.dedup();
    struct Leftover(Vec<String>, Vec<String>);
    impl Drop for Leftover {
        fn drop(&mut self) {
            for id in &self.0 {
                let _ = Command::new("ipcrm").args(["-m", id]).stderr(Stdio::null()).status();
            }
            for f in &self.1 {
                let _ = std::fs::remove_file(f);
            }
        }
    }
    let _left = Leftover(shm, files);
    // The postmaster and the processes it forked (a backend may have ended, or be ending).
    assert!(info.lines().filter(|l| l.starts_with("process:")).count() >= 5, "{info}");
    let o = run(&["rstrt", "-d", "--pidns", "--ipcns", &img]);
    assert!(o.status.success(), "{}", stderr(&o));
    let new: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    struct Gone(i32);
    impl Drop for Gone {
        fn drop(&mut self) {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _gone = Gone(new);
    assert_eq!(psql(port, sum).unwrap(), before, "the rows after the restore");
    psql(port, "INSERT INTO t VALUES (5001, 'after')").unwrap();
    assert_eq!(psql(port, "SELECT count(*) FROM t").unwrap(), "5001");
}

/// MariaDB (Debian's mariadbd: some twenty threads, InnoDB's files, O_TMPFILE scratch files,
/// an 8 TiB PROT_NONE reservation, a unix socket). With its default asynchronous I/O, an
/// io_uring, the checkpoint is refused by name and the server runs on; with
/// --innodb-use-native-aio=0 it is checkpointed (killed) and restored, its rows there, and it
/// takes more.
#[test]
fn mariadb_keeps_its_rows_and_takes_more_after_restore() {
    let have = ["/usr/sbin/mariadbd", "/usr/bin/mariadb-install-db", "/usr/bin/mariadb"]
        .iter()
        .all(|p| std::path::Path::new(p).exists());
    if !require(have && is_root(), "root, mariadbd and its client (apt install mariadb-server)") {
        return;
    }
    let dir = tmpdir("mariadb");
    let d = dir.to_str().unwrap();
    let (data, sock) = (format!("{d}/data"), format!("{d}/sock"));
    let mut c = Command::new("/usr/bin/mariadb-install-db");
    c.args(["--no-defaults", &format!("--datadir={data}"), "--user=root"]).stdout(Stdio::null());
    close_extra_fds(&mut c);
    let o = c.output().unwrap();
    assert!(o.status.success(), "mariadb-install-db: {}", stderr(&o));
    let sql = |q: &str| {
        let mut c = Command::new("/usr/bin/mariadb");
        c.args([&format!("--socket={sock}"), "-N", "-B", "-e", q]).stdin(Stdio::null());
        close_extra_fds(&mut c);
        let o = c.output().unwrap();
        (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout).trim(), stderr(&o).trim()))
    };
    let server = |args: &[&str]| {
        let mut c = Command::new("/usr/sbin/mariadbd");
        c.args(["--no-defaults", &format!("--datadir={data}"), "--user=root", &format!("--socket={sock}")])
            .args(["--skip-networking", &format!("--log-error={d}/err.log")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        close_extra_fds(&mut c);
        let s = Reap(c.spawn().unwrap());
        let t = std::time::Instant::now();
        while !sql("SELECT 1").0 {
            assert!(
                t.elapsed() < TIMEOUT,
                "mariadbd did not start: {}",
                std::fs::read_to_string(dir.join("err.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        s
    };
    let mut s = server(&[]);
    let pid = s.0.id() as i32;
    let o = run(&["ckpt", "-o", &format!("{d}/u.crf"), &pid.to_string()]);
    assert!(!o.status.success() && stderr(&o).contains("io_uring"), "{}", stderr(&o));
    assert_eq!(sql("SELECT 6 * 7"), (true, "42".to_string()), "after the refused checkpoint");
    assert!(sql("SHUTDOWN").0);
    let _ = s.0.wait();

    let mut s = server(&["--innodb-use-native-aio=0"]);
    let pid = s.0.id() as i32;
    let made = sql(
        "CREATE DATABASE t; USE t; CREATE TABLE a (n INT) ENGINE=InnoDB; INSERT INTO a SELECT seq FROM seq_1_to_10000",
    );
    assert!(made.0, "{}", made.1);
    let img = format!("{d}/m.crf");
    ckpt(&["--kill", "-o", &img, &pid.to_string()]);
    let _ = s.0.wait();
    gone(&[pid]);
    let o = run(&["rstrt", "-d", &img]);
    assert!(o.status.success(), "{}", stderr(&o));
    let _restored = KillOnDrop(pid);
    assert_eq!(sql("SELECT COUNT(*), SUM(n) FROM t.a"), (true, "10000\t50005000".to_string()));
    let more = sql("INSERT INTO t.a VALUES (10001); SELECT SUM(n) FROM t.a");
    assert_eq!(more, (true, "50015001".to_string()));
    assert!(sql("SHUTDOWN").0);
    gone(&[pid]);
}

/// TCP sockets whose connection ended, still open: one a server accepted and its client
/// reset, and a client's whose connect was refused (it tries again on the same socket, as
/// clients that wait for their server do). Both keep the address of what they were, which
/// the restore once bound again (beside the server's listener: refused) with the MSS of the
/// old connection (32768 over loopback, past what setsockopt takes: refused). They come back
/// as new sockets, unbound: the client connects on the same fd, and the server serves.
#[test]
fn tcp_sockets_whose_connection_ended_come_back_as_new_ones() {
    let dir = tmpdir("tcp-ended");
    let script = "import socket, struct, sys, time\n\
                  l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()\n\
                  c = socket.create_connection(l.getsockname()); a, _ = l.accept()\n\
                  c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); c.close()\n\
                  gone = socket.socket(); gone.bind(('127.0.0.1', 0)); port = gone.getsockname()[1]; gone.close()\n\
                  r = socket.socket(); refused = r.connect_ex(('127.0.0.1', port))\n\
                  time.sleep(0.1)\n\
                  print('ready', refused, flush=True)\n\
                  for line in sys.stdin:\n\
                  \x20   try: a.recv(10); said = 'read'\n\
                  \x20   except OSError as e: said = e.errno\n\
                  \x20   again = r.connect_ex(l.getsockname()); b, _ = l.accept(); r.sendall(b'hi')\n\
                  \x20   print('ended', said, again, b.recv(2).decode(), flush=True)\n";
    let mut c = Command::new("python3");
    c.args(["-c", script]);
    let mut p = Proc::spawn(c);
    assert_eq!(p.expect("ready"), format!("ready {}", libc::ECONNREFUSED));
    let d = dir.to_str().unwrap();
    let img = format!("{d}/e.crf");
    let o = ckpt(&["-k", "-v", "-o", &img, &p.pid().to_string()]);
    let said = stderr(&o);
    assert_eq!(said.matches("a TCP connection that ended").count(), 2, "{said}");
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert!(!info.contains("TCP_MAXSEG"), "{info}");
    let mut r = rstrt(&[&img]);
    r.send("check");
    assert_eq!(r.expect("ended"), format!("ended {} 0 hi", libc::ENOTCONN), "saw {:?}", r.seen);
    r.kill();
}
