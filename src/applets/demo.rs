//! demo: show a checkpoint and a restart on a sample counting process.

/// Start a sample process that counts, checkpoint it to a file and kill it, then restart it
/// from the image and watch it continue counting where it stopped.
#[derive(argh::FromArgs)]
struct Args {
    /// where to write the image (default: a file in /tmp)
    #[argh(option, short = 'o')]
    output: Option<String>,
}

use crate::exit;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use std::io::Write;
use std::time::Duration;

pub fn main(name: &str, argv: &[String]) -> i32 {
    let a: Args = match super::parse(name, argv) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let keep = a.output.is_some();
    let path = a.output.unwrap_or_else(|| format!("/tmp/crs-demo.{}.crf", std::process::id()));
    let _ = std::io::stdout().flush();
    // SAFETY: single-threaded here; the child only counts and sleeps.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        count();
    }
    if pid < 0 {
        eprintln!("{name}: fork failed");
        return exit::FAILURE;
    }
    std::thread::sleep(Duration::from_millis(1100));
    println!("{name}: checkpointing pid {pid} to {path} and killing it");
    let f = match std::fs::File::create(&path) {
        Ok(f) => f,
        Err(e) => return exit::report(name, &crate::Error::io(path.as_str(), e)),
    };
    let flags = crate::Flags { kill: true, ..Default::default() };
    let r = crate::checkpoint(&f, pid, &flags);
    let _ = waitpid(Pid::from_raw(pid), None);
    match r {
        Ok(r) => println!(
            "{name}: image of {} pages, {} bytes, process frozen {:.1} ms; it is gone now",
            r.pages,
            r.image_bytes,
            r.frozen.as_secs_f64() * 1e3
        ),
        Err(e) => return exit::report(name, &e),
    }
    std::thread::sleep(Duration::from_millis(600));
    println!("{name}: restarting it from {path}");
    let r = match crate::restart_path(&path, &crate::RestartFlags::default(), None) {
        Ok(r) => r,
        Err(e) => return exit::report(name, &e),
    };
    println!("{name}: restored as pid {}; it continues:", r.pid);
    std::thread::sleep(Duration::from_millis(1100));
    let _ = kill(Pid::from_raw(r.pid), Signal::SIGKILL);
    let _ = waitpid(Pid::from_raw(r.pid), None);
    if !keep {
        let _ = std::fs::remove_file(&path);
    }
    println!("{name}: done (the count went on from where it was checkpointed)");
    exit::OK
}

/// The sample process: counts on stdout, five times a second.
fn count() -> ! {
    // SAFETY: close_range on our own fd table; fds above stderr are not ours to keep.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let mut n = 0u64;
    loop {
        n += 1;
        println!("  counter: {n}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
