//! ckpt: checkpoint a running process to a CRF image.

/// Checkpoint a running process and its descendants: freeze them without them noticing, write
/// their CRF image, then let them run on (default), leave them stopped (--stop) or kill them
/// (--kill).
#[derive(argh::FromArgs)]
struct Args {
    /// kill the process once the image is complete and flushed (the paper's CRS_KILL)
    #[argh(switch, short = 'k')]
    kill: bool,
    /// leave the process stopped (SIGSTOP) after the checkpoint
    #[argh(switch)]
    stop: bool,
    /// do not store unmodified pages of the executable; rstrt then needs the same file
    #[argh(switch)]
    no_binary: bool,
    /// do not store unmodified pages of shared libraries; rstrt then needs the same files
    #[argh(switch)]
    no_libs: bool,
    /// image file (default PID.crf); "-" writes the image to standard output
    #[argh(option, short = 'o')]
    output: Option<String>,
    /// print what was done (pages, bytes, freeze time) on stderr
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// carry this fd as a stub instead of refusing it (repeatable): FD, or "outside" for every
    /// pipe, FIFO, socket or terminal whose other end the checkpoint does not hold; said on stderr
    #[argh(option)]
    stub_fd: Vec<String>,
    /// what a stub is on restore: "null" (/dev/null, the default) or "pipe" (a pipe with no
    /// peer: reads see end of file, writes fail with EPIPE)
    #[argh(option, default = "String::from(\"null\")")]
    stub_as: String,
    /// the most MiB of files deleted while open or mapped that the image carries, all together
    /// (default 48, the most)
    #[argh(option, default = "48")]
    deleted_max: u64,
    /// checkpoint the process alone, not its descendants: they run on, and the restored
    /// process has no children
    #[argh(switch)]
    alone: bool,
    /// a job run from an interactive shell: carry its fds on its controlling terminal (any
    /// number, /dev/tty too) and the terminal's modes and size, for rstrt --shell-job
    #[argh(switch)]
    shell_job: bool,
    /// carry established TCP connections too (TCP_REPAIR, root), half-closed ones, and those
    /// a listener had not accepted yet (Linux 6.9+): their packets are blocked (nftables) from the freeze until
    /// the restored process runs, or the checkpointed one runs on; with --kill the block
    /// stays for rstrt to lift
    #[argh(switch)]
    tcp_established: bool,
    /// connect a unix socket whose peer is outside the checkpoint (a syslog, a database
    /// daemon) again to its peer's name on restore, for programs that tolerate a new
    /// connection; refused when something sent to it is unread
    #[argh(switch)]
    unix_reconnect: bool,
    /// only say whether the process can be checkpointed, and every reason it cannot, one a
    /// line (and a note for each file its user could not open again, which a restore would
    /// refuse); the process is not touched
    #[argh(switch)]
    check: bool,
    /// copy the memory with the process frozen throughout (as --kill and --stop do): by
    /// default a process that runs on, with 16 MiB or more of private memory (with its
    /// descendants), has it copied while it runs and is frozen only for what it wrote since
    /// (Linux 6.7+)
    #[argh(switch)]
    frozen: bool,
    /// the longest the process should be frozen when its memory is copied while it runs, in
    /// milliseconds (default 50): the copy goes round again until what is left fits a tenth
    /// of it (half, once rounds stop shrinking)
    #[argh(option)]
    max_frozen: Option<u64>,
    /// which engine checkpoints: "ptrace" (the userspace one), "crd" (the kernel module,
    /// /dev/crd, see crd(4)), or "auto" (the default: ptrace, and crd when ptrace is refused)
    #[argh(option, default = "String::from(\"auto\")")]
    backend: String,
    /// the process to checkpoint
    #[argh(positional)]
    pid: i32,
}

use crate::error::Error;
use crate::exit;
use nix::sys::signal::Signal;
use std::fs::{self, OpenOptions};

pub fn main(name: &str, argv: &[String]) -> i32 {
    let a: Args = match super::parse(name, argv) {
        Ok(a) => a,
        Err(code) => return code,
    };
    super::verbose(a.verbose);
    if a.kill && a.stop {
        eprintln!("{name}: --kill and --stop exclude each other: choose one");
        return exit::USAGE;
    }
    if a.max_frozen.is_some() && (a.frozen || a.kill || a.stop) {
        eprintln!(
            "{name}: --max-frozen is the budget of a checkpoint that copies memory while the process runs: not with --frozen, --kill or --stop"
        );
        return exit::USAGE;
    }
    if a.deleted_max > 48 {
        eprintln!("{name}: --deleted-max {}: an image carries at most 48 MiB of deleted files", a.deleted_max);
        return exit::USAGE;
    }
    if a.pid <= 0 {
        eprintln!("{name}: {} is not a process id", a.pid);
        return exit::USAGE;
    }
    let backend: crate::dev::Backend = match a.backend.parse() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{name}: {e}");
            return exit::USAGE;
        }
    };
    let stubs = match crate::res::files::Stubs::parse(&a.stub_fd, &a.stub_as) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{name}: {e}");
            return exit::USAGE;
        }
    };
    if a.check {
        let flags = crate::Flags {
            no_binary: a.no_binary,
            no_libs: a.no_libs,
            stubs,
            alone: a.alone,
            shell_job: a.shell_job,
            deleted_max: Some(a.deleted_max << 20),
            ..Default::default()
        };
        return match crate::check(a.pid, &flags) {
            Ok(()) => {
                println!("pid {} can be checkpointed", a.pid);
                for n in unreopenable(a.pid, a.alone) {
                    println!("note: {}", crate::text::printable(&n));
                }
                exit::OK
            }
            Err(Error::Blocked { pid, reasons }) => {
                for r in &reasons {
                    println!("pid {pid}: {}", crate::text::printable(r));
                }
                exit::REFUSED
            }
            Err(e) => exit::report(name, &e),
        };
    }
    // While the process is frozen we must not die half-way (it would resume with the registers
    // of a syscall we run in it): signals that would end ckpt wait until it is done.
    let mut hold = nix::sys::signal::SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT] {
        hold.add(s);
    }
    let _ = hold.thread_block();
    // With -k, a parent that is not init will see its child die.
    let parent = crate::ptrace::procfs::read_stat(a.pid).map(|s| s.ppid).unwrap_or(0);
    let flags = crate::Flags {
        kill: a.kill,
        stop: a.stop,
        no_binary: a.no_binary,
        no_libs: a.no_libs,
        stubs,
        alone: a.alone,
        shell_job: a.shell_job,
        tcp_established: a.tcp_established,
        unix_reconnect: a.unix_reconnect,
        deleted_max: Some(a.deleted_max << 20),
        precopied: None,
        postcopy: None,
        backend,
        held_there: Vec::new(),
        flags_later: None,
        running: (!a.frozen).then(|| std::time::Duration::from_millis(a.max_frozen.unwrap_or(50).max(1))),
    };
    // Said before the checkpoint: the image is made anyway (the file may be fixed by then).
    for n in unreopenable(a.pid, a.alone) {
        eprintln!("{name}: note: {n}");
    }
    let path = a.output.unwrap_or_else(|| format!("{}.crf", a.pid));
    // An existing device or FIFO (/dev/null, a named pipe) is written in place; only regular
    // files get the temporary name and the rename.
    let special = fs::metadata(&path).is_ok_and(|m| !m.is_file() && !m.is_dir());
    let result = if path == "-" {
        crate::checkpoint(std::io::stdout(), a.pid, &flags)
    } else if special {
        match OpenOptions::new().write(true).open(&path) {
            Ok(f) => crate::checkpoint(&f, a.pid, &flags),
            Err(e) => Err(Error::io(path.as_str(), e)),
        }
    } else {
        crate::checkpoint_to_file(a.pid, &path, &flags)
    };
    match result {
        Ok(r) => {
            for s in &r.stubs {
                eprintln!("{name}: {s} (--stub-fd)");
            }
            for n in super::unused_stubs(&a.stub_fd, &r.stubs) {
                eprintln!(
                    "{name}: --stub-fd {n}: nothing was stubbed for it (no process of the image has fd {n} as a pipe, FIFO, socket or terminal)"
                );
            }
            for n in &r.notes {
                eprintln!("{name}: note: {n}");
            }
            if a.kill && parent > 1 {
                eprintln!(
                    "{name}: pid {} was killed; its parent, {}, sees it die (ckpt cannot hide that yet)",
                    a.pid,
                    crate::res::endpoints::who(parent)
                );
            }
            if a.verbose {
                let ms = r.frozen.as_secs_f64() * 1e3;
                let tree = match (r.processes, r.zombies) {
                    (1, 0) => String::new(),
                    (n, 0) => format!(" and {} descendants", n - 1),
                    (n, z) => format!(" and {} descendants ({z} zombies)", n - 1 + z),
                };
                if let Some(ahead) = &r.ahead {
                    if let Some(why) = &ahead.not_live {
                        eprintln!("{name}: {why}");
                    }
                    let rounds: Vec<String> = ahead
                        .rounds
                        .iter()
                        .map(|(p, took)| format!("{} KiB in {:.1} ms", p * 4, took.as_secs_f64() * 1e3))
                        .collect();
                    if ahead.tracked.len() > 1 {
                        let pids: Vec<String> = ahead.tracked.iter().map(|p| p.to_string()).collect();
                        eprintln!("{name}: copied while they ran: the memory of pids {}", pids.join(", "));
                    }
                    for why in &ahead.frozen_throughout {
                        eprintln!("{name}: {why}: its memory was copied frozen");
                    }
                    if !rounds.is_empty() {
                        eprintln!("{name}: copied while it ran, {} rounds: {}", rounds.len(), rounds.join(", "));
                    }
                    if ahead.shm.0 > 0 {
                        eprintln!(
                            "{name}: copied while they ran: {} KiB of memory the tree shares ({} objects of MAP_SHARED anonymous memory), compared again once frozen",
                            ahead.shm.1 / 1024,
                            ahead.shm.0
                        );
                    }
                    if ahead.same > 0 {
                        eprintln!(
                            "{name}: {} KiB of the descendants' memory were the very pages of an earlier process of the tree, shared since a fork: stored once",
                            ahead.same * 4
                        );
                    }
                    if let Some(why) = &ahead.gave_up {
                        eprintln!("{name}: {why}");
                    }
                }
                eprintln!(
                    "{name}: pid {}{tree}: {} pages, image {} bytes, frozen {ms:.1} ms",
                    r.pid, r.pages, r.image_bytes
                );
            }
            exit::OK
        }
        Err(e) => exit::report(name, &e),
    }
}

/// [`crate::res::files::unreopenable`] of `pid`, and of its descendants unless `alone`.
fn unreopenable(pid: i32, alone: bool) -> Vec<String> {
    let pids = if alone { vec![pid] } else { crate::res::tree::walk(pid) };
    crate::res::files::unreopenable(&pids)
}
