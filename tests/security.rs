//! Who may checkpoint and restore what, tested as an unprivileged user (nobody, via setpriv).

mod support;
use std::os::unix::fs::PermissionsExt;
use support::*;

#[test]
fn nobody_may_not_checkpoint_roots_process() {
    if !require(is_root(), "root") {
        return;
    }
    let dir = open_dir("sec-ckpt");
    let d = dir.to_str().unwrap();
    let mut p = start("memory", &[d, "8"], &dir);
    let img = format!("{d}/x.crf");
    let o = as_nobody(&[crs(), "ckpt", "-o", &img, &p.pid().to_string()]).output().unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("may not checkpoint"), "{}", stderr(&o));
    assert!(!std::path::Path::new(&img).exists());
    // Untouched: it still answers.
    p.verdict("ok uid=0");
}

#[test]
fn nobody_may_not_restore_roots_image() {
    if !require(is_root(), "root") {
        return;
    }
    let dir = open_dir("sec-rstrt");
    let d = dir.to_str().unwrap();
    let mut p = start("memory", &[d, "8"], &dir);
    let img = format!("{d}/x.crf");
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = as_nobody(&[crs(), "rstrt", &img]).output().unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("only restore your own"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}

#[test]
fn nobody_checkpoints_and_restores_own_process_and_root_restores_it_as_nobody() {
    if !require(is_root(), "root") {
        return;
    }
    let dir = open_dir("sec-own");
    let d = dir.to_str().unwrap();
    // "exe": the process checks that /proc/self/exe names its program after each restore (an
    // unprivileged one, which cannot set the link, executes the program first).
    let mut c = as_nobody(&[support::target("memory").to_str().unwrap(), d, "8", "exe"]);
    // Its stderr must be something nobody can reopen on restore (the harness's may be a file
    // only root may write).
    c.current_dir(&dir).stderr(std::process::Stdio::null());
    let mut p = Proc::spawn(c);
    p.expect("ready");
    let pid = p.pid(); // setpriv execs the target: same pid
    let img = format!("{d}/own.crf");
    let o = as_nobody(&[crs(), "ckpt", "-k", "-o", &img, &pid.to_string()]).output().unwrap();
    assert!(o.status.success(), "nobody's ckpt: {}", stderr(&o));
    p.kill();

    let mut r = Proc::spawn(as_nobody(&[crs(), "rstrt", &img]));
    r.verdict("ok uid=65534 gid=65534");

    // Root restores nobody's image: the process runs as nobody, not as root.
    let mut r = rstrt(&[&img]);
    r.verdict("ok uid=65534 gid=65534");
}

/// An image file a user owns may not make root restore it as someone else.
#[test]
fn a_users_image_claiming_root_is_refused_by_root() {
    if !require(is_root(), "root") {
        return;
    }
    let dir = open_dir("sec-forge");
    let d = dir.to_str().unwrap();
    let mut c = as_nobody(&[support::target("memory").to_str().unwrap(), d, "8"]);
    c.current_dir(&dir).stderr(std::process::Stdio::null());
    let mut p = Proc::spawn(c);
    p.expect("ready");
    let img = format!("{d}/own.crf");
    let o = as_nobody(&[crs(), "ckpt", "-k", "-o", &img, &p.pid().to_string()]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    p.kill();
    let forged = rewrite(&std::fs::read(&img).unwrap(), |tag, payload| {
        if tag != crs::res::image::tags::HEAD {
            return payload;
        }
        let mut h = crs::res::head::Header::decode(&payload, 0).unwrap();
        h.uids = [0; 4];
        h.gids = [0; 4];
        h.encode()
    });
    let bad = format!("{d}/forged.crf");
    // Written by nobody, as the forger would.
    std::fs::write(&bad, forged).unwrap();
    std::os::unix::fs::chown(&bad, Some(65534), Some(65534)).unwrap();
    let o = run(&["rstrt", &bad]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("may not choose who it runs as"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}

/// Root restores a user's process whose file that user may no longer open: the restore names
/// the fd, the file and the uid, and exits with the permission status.
#[test]
fn a_file_the_user_may_no_longer_open_is_named_with_its_uid() {
    if !require(is_root(), "root") {
        return;
    }
    use std::os::unix::fs::{OpenOptionsExt, chown};
    let dir = open_dir("sec-reopen");
    let d = dir.to_str().unwrap();
    let log = dir.join("err.log");
    let f = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&log).unwrap();
    chown(&log, Some(65534), Some(65534)).unwrap();
    let mut c = as_nobody(&[support::target("memory").to_str().unwrap(), d, "8"]);
    c.current_dir(&dir).stderr(f);
    let mut p = Proc::spawn(c);
    p.expect("ready");
    let img = format!("{d}/own.crf");
    let o = as_nobody(&[crs(), "ckpt", "-k", "-o", &img, &p.pid().to_string()]).output().unwrap();
    assert!(o.status.success(), "nobody's ckpt: {}", stderr(&o));
    p.kill();
    // The file is root's now, and only root may open it.
    chown(&log, Some(0), Some(0)).unwrap();
    let o = run(&["rstrt", &img]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let want = format!("the image's fd 2 ({}) cannot be reopened as uid 65534", log.display());
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    assert!(stderr(&o).contains("give uid 65534 access to it"), "{}", stderr(&o));
}

/// A user's process holding a file its user may not open (root opened it for it: a daemon's
/// log before it dropped its privileges) can be checkpointed, but ckpt --check says the
/// restore would refuse it, naming the fd, the file and the uid; once the user may, it says
/// nothing.
#[test]
fn check_says_which_file_a_restore_could_not_reopen() {
    if !require(is_root(), "root") {
        return;
    }
    use std::os::unix::fs::{OpenOptionsExt, chown};
    let dir = open_dir("sec-check-reopen");
    let d = dir.to_str().unwrap();
    let log = dir.join("root.log");
    let f = std::fs::OpenOptions::new().create(true).append(true).mode(0o644).open(&log).unwrap();
    let mut c = as_nobody(&[support::target("memory").to_str().unwrap(), d, "8"]);
    c.current_dir(&dir).stderr(f);
    let mut p = Proc::spawn(c);
    p.expect("ready");
    let pid = p.pid().to_string();
    let o = run(&["ckpt", "--check", &pid]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success() && out.contains(&format!("pid {pid} can be checkpointed")), "{out}");
    let want =
        format!("note: pid {pid}'s fd 2 is {}, which its user (uid 65534) may not open for writing", log.display());
    assert!(out.contains(&want), "{out}");
    chown(&log, Some(65534), Some(65534)).unwrap();
    let o = run(&["ckpt", "--check", &pid]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success() && !out.contains("note:"), "{out}");
    p.kill();
}
