//! migrate: move a running process to another node's restartd.

/// Move a running process to the restartd on HOST: its image streams over TCP as it is made,
/// with no temporary file; the process stays frozen meanwhile and is killed only once it runs at
/// the destination. On any failure it runs on here, where it was.
#[derive(argh::FromArgs)]
struct Args {
    /// port of restartd on HOST (default 1023, or the :PORT of HOST)
    #[argh(option, short = 'p')]
    port: Option<u16>,
    /// leave the process running here too: copy it rather than move it
    #[argh(switch)]
    keep: bool,
    /// cluster key file (default /etc/crs/key when it exists; see crs keygen)
    #[argh(option)]
    key: Option<String>,
    /// seconds to wait for the destination at each step (default 30)
    #[argh(option, default = "30")]
    timeout: u64,
    /// carry this fd as a stub instead of refusing the process (repeatable): FD, or "outside";
    /// as ckpt(1) does
    #[argh(option)]
    stub_fd: Vec<String>,
    /// what a stub is at the destination: "null" (default) or "pipe"; as ckpt(1) does
    #[argh(option, default = "String::from(\"null\")")]
    stub_as: String,
    /// do not carry the unmodified pages of the executable, as ckpt(1) does: the
    /// destination needs the very same file
    #[argh(switch)]
    no_binary: bool,
    /// do not carry the unmodified pages of shared libraries, as ckpt(1) does: the
    /// destination needs the very same files
    #[argh(switch)]
    no_libs: bool,
    /// carry established TCP connections too (half-closed ones too), and those waiting to be
    /// accepted, as ckpt(1)
    /// does (root); with --move-address they carry on at the destination
    #[argh(switch)]
    tcp_established: bool,
    /// connect unix sockets to peers outside again by name at the destination, as ckpt(1)
    /// does
    #[argh(switch)]
    unix_reconnect: bool,
    /// move this address (ADDR/PREFIX, IPv4 or IPv6) with the process: taken off here once its
    /// image is sent, put on the destination's interface in that subnet (announced to its
    /// neighbours) before it runs there, put back here on any failure; restartd must allow it
    #[argh(option)]
    move_address: Option<String>,
    /// live migration: send the memory of the process and its descendants ahead while they
    /// run, in rounds, and freeze them only for what they wrote since (needs Linux 6.7+;
    /// otherwise stop-and-copy, said)
    #[argh(switch)]
    live: bool,
    /// the longest the process should be frozen with --live, in milliseconds (default 50);
    /// the rounds go on until what is left fits a tenth of it (half, once they stop shrinking)
    #[argh(option)]
    max_downtime: Option<u64>,
    /// post-copy: run the process (and its descendants) at the destination at once, frozen
    /// here only for its state without its private anonymous memory, which follows from here
    /// (first the pages it waits for); it is killed here once every page is there, and runs on
    /// here if the link fails before that (the copy is then killed); the files the destination
    /// lacks go ahead first, while it runs
    #[argh(switch)]
    post_copy: bool,
    /// which engine checkpoints here: "ptrace", "crd" (the kernel module, /dev/crd, see
    /// crd(4): the process is stopped, not killed, until the destination runs it), or "auto"
    /// (the default: ptrace, and crd when Yama forbids ptrace)
    #[argh(option, default = "String::from(\"auto\")")]
    backend: String,
    /// print the freeze time and the transfer rate
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// the process to move
    #[argh(positional)]
    pid: i32,
    /// destination node, HOST or HOST:PORT ([ADDR]:PORT for IPv6)
    #[argh(positional)]
    host: String,
}

use crate::error::{Error, Result};
use crate::exit;
use crate::migration::{Options, migrate, resolve};
use crate::net::key;
use std::time::Duration;

pub fn main(name: &str, argv: &[String]) -> i32 {
    let a: Args = match super::parse(name, argv) {
        Ok(a) => a,
        Err(code) => return code,
    };
    super::verbose(a.verbose);
    match run(&a) {
        Ok(()) => exit::OK,
        Err(e) => exit::report(name, &e),
    }
}

fn run(a: &Args) -> Result<()> {
    if a.pid <= 0 {
        return Err(Error::Usage(format!("{} is not a process id", a.pid)));
    }
    let key_path =
        a.key.clone().or_else(|| std::path::Path::new(key::DEFAULT_KEY).exists().then(|| key::DEFAULT_KEY.to_string()));
    let key = match &key_path {
        Some(p) => Some(key::load(p).map_err(Error::Usage)?),
        None => None,
    };
    if a.max_downtime.is_some() && !a.live {
        return Err(Error::Usage("--max-downtime is the budget of --live: give --live too".into()));
    }
    let budget = a.max_downtime.unwrap_or(50);
    let addrs = resolve(&a.host, a.port)?;
    let stubs = crate::res::files::Stubs::parse(&a.stub_fd, &a.stub_as).map_err(Error::Usage)?;
    let move_address =
        a.move_address.as_deref().map(crate::net::address::Address::parse).transpose().map_err(Error::Usage)?;
    let opts = Options {
        keep: a.keep,
        key,
        timeout: Duration::from_secs(a.timeout.max(1)),
        stubs,
        no_binary: a.no_binary,
        no_libs: a.no_libs,
        tcp_established: a.tcp_established,
        unix_reconnect: a.unix_reconnect,
        move_address,
        live: a.live.then(|| Duration::from_millis(budget.max(1))),
        post_copy: a.post_copy,
        backend: a.backend.parse().map_err(Error::Usage)?,
    };
    // (The destination reopens them as the process's user, and would refuse the image.)
    for n in crate::res::files::unreopenable(&crate::res::tree::walk(a.pid)) {
        eprintln!("migrate: note: {n}");
    }
    let m = migrate(a.pid, &addrs, &opts)?;
    if let Some(why) = &m.ahead.not_live {
        eprintln!("migrate: not live: {why}; the process was frozen for the whole copy");
    }
    if let Some(why) = &m.ahead.gave_up {
        eprintln!("migrate: {why}");
    }
    for s in &m.report.stubs {
        eprintln!("migrate: {s} (--stub-fd)");
    }
    for n in super::unused_stubs(&a.stub_fd, &m.report.stubs) {
        eprintln!(
            "migrate: --stub-fd {n}: nothing was stubbed for it (no process of the image has fd {n} as a pipe, FIFO, socket or terminal)"
        );
    }
    for n in &m.report.notes {
        eprintln!("migrate: note: {n}");
    }
    // Frozen longer than the budget, and not said why already: the user asked for less.
    let frozen = m.report.frozen.saturating_sub(m.post.as_ref().map_or(Duration::ZERO, |p| p.took));
    if a.live && m.ahead.not_live.is_none() && m.ahead.gave_up.is_none() && frozen > Duration::from_millis(budget) {
        eprintln!(
            "migrate: frozen {:.1} ms, over --max-downtime {budget} ms: what is not sent ahead (its other state, memory not tracked while it ran; -v says which) took longer",
            frozen.as_secs_f64() * 1e3
        );
    }
    let verb = if a.keep { "copied" } else { "moved" };
    println!("{verb} pid {} to {}: it runs there as pid {}", a.pid, m.peer, m.remote_pid);
    if a.verbose {
        if m.ahead.tracked.len() > 1 {
            let pids: Vec<String> = m.ahead.tracked.iter().map(|p| p.to_string()).collect();
            eprintln!("migrate: the rounds sent ahead the memory of pids {}", pids.join(", "));
        }
        for why in &m.ahead.frozen_throughout {
            eprintln!("migrate: {why}: its memory went while it was frozen");
        }
        for (i, (pages, took)) in m.ahead.rounds.iter().enumerate() {
            eprintln!(
                "migrate: round {}: {} bytes sent ahead in {:.1} ms",
                i + 1,
                pages * crate::crf::PAGE_SIZE as u64,
                took.as_secs_f64() * 1e3
            );
        }
        if m.ahead.shm.0 > 0 {
            eprintln!(
                "migrate: the rounds sent ahead {} bytes of memory the tree shares ({} objects of MAP_SHARED anonymous memory): the freeze compared it, and carried what changed",
                m.ahead.shm.1, m.ahead.shm.0
            );
        }
        if m.ahead.same > 0 {
            eprintln!(
                "migrate: {} bytes of the descendants' memory were the very pages of an earlier process of the tree, shared since a fork: the last round left them out",
                m.ahead.same * crate::crf::PAGE_SIZE as u64
            );
        }
        if let Some(p) = &m.post {
            // Frozen here until it ran there: the freeze, but for the pages sent after.
            let ran = m.report.frozen.saturating_sub(p.took);
            eprintln!(
                "migrate: post-copy: it ran there after {:.1} ms frozen; then {} bytes followed in {:.1} ms, {} of them asked for first{}",
                ran.as_secs_f64() * 1e3,
                p.pages * crate::crf::PAGE_SIZE as u64,
                p.took.as_secs_f64() * 1e3,
                p.wanted * crate::crf::PAGE_SIZE as u64,
                if p.second { " (on a second connection)" } else { "" }
            );
        }
        let secs = m.elapsed.as_secs_f64();
        // After rounds sent ahead the image is what was left: a rate of it over the whole time
        // would mean nothing.
        let rate = if m.ahead.rounds.is_empty() {
            format!("({:.0} MB/s)", m.bytes as f64 / secs / 1e6)
        } else {
            "(with the rounds before the freeze)".into()
        };
        eprintln!(
            "migrate: frozen {:.1} ms, {} bytes in {:.1} ms {rate}",
            m.report.frozen.as_secs_f64() * 1e3,
            m.bytes,
            secs * 1e3
        );
    }
    Ok(())
}
