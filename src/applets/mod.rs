//! The applet table: name, one-line summary, entry function. Nothing else lives here but the
//! two helpers every applet uses (argument parsing, logging).

mod check;
mod ckpt;
mod crfinfo;
mod demo;
mod keygen;
mod migrate;
mod restartd;
mod rstrt;

pub struct Applet {
    pub name: &'static str,
    pub summary: &'static str,
    /// Gets a symlink from `crs --install`.
    pub link: bool,
    pub main: fn(&str, &[String]) -> i32,
}

/// Sorted by name.
pub const APPLETS: &[Applet] = &[
    Applet {
        name: "check",
        summary: "say whether this kernel and these privileges support crs",
        link: false,
        main: check::main,
    },
    Applet { name: "ckpt", summary: "checkpoint a running process to a CRF image", link: true, main: ckpt::main },
    Applet { name: "crfinfo", summary: "describe and verify a CRF image", link: true, main: crfinfo::main },
    Applet {
        name: "demo",
        summary: "checkpoint a sample counting process, kill it, restart it",
        link: false,
        main: demo::main,
    },
    Applet {
        name: "keygen",
        summary: "make the cluster key for migrate and restartd",
        link: false,
        main: keygen::main,
    },
    Applet { name: "migrate", summary: "move a running process to another node", link: true, main: migrate::main },
    Applet { name: "restartd", summary: "receive and restart migrated processes", link: true, main: restartd::main },
    Applet { name: "rstrt", summary: "restart a process from a CRF image", link: true, main: rstrt::main },
];

pub fn find(name: &str) -> Option<&'static Applet> {
    APPLETS.iter().find(|a| a.name == name)
}

/// Parses an applet's arguments; on --help or an error, prints and returns the exit code.
/// A lone "-" as the last argument is the positional "standard input" (argh would take it for
/// an option).
pub fn parse<T: argh::FromArgs>(name: &str, args: &[String]) -> Result<T, i32> {
    let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
    if a.last() == Some(&"-") && !a.contains(&"--") && !(a.len() >= 2 && matches!(a[a.len() - 2], "-o" | "--output")) {
        a.insert(a.len() - 1, "--");
    }
    T::from_args(&[name], &a).map_err(|e| {
        if e.status.is_ok() {
            print!("{}", e.output);
            crate::exit::OK
        } else {
            eprintln!("{name}: {}", e.output.trim_end());
            eprintln!("{name}: try '{name} --help'");
            crate::exit::USAGE
        }
    })
}

/// Log lines go to stderr as "applet: message"; CRS_LOG=info|debug shows more, each line
/// then after the CLOCK_MONOTONIC time it was written at (seconds), which the logs of both
/// ends of a migration on one machine share.
pub fn init_logging(applet: &'static str) {
    use std::io::Write;
    let env = std::env::var("CRS_LOG").ok();
    let mut b = env_logger::Builder::new();
    match env.is_some() {
        true => b.format(move |f, rec| {
            let us = crate::res::clocks::now(libc::CLOCK_MONOTONIC) / 1000;
            writeln!(f, "[{}.{:06}] {applet}: {}", us / 1_000_000, us % 1_000_000, rec.args())
        }),
        false => b.format(move |f, rec| writeln!(f, "{applet}: {}", rec.args())),
    };
    match &env {
        Some(filter) => b.parse_filters(filter),
        // Info passes the logger's own filter; the global level (warn) is raised by -v.
        None => b.filter_level(log::LevelFilter::Info),
    };
    b.init();
    if env.is_none() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

/// The fd numbers of --stub-fd (`asked`) that no stub line (`made`, "fd N (...) as ...")
/// names: given, but stubbing nothing.
pub fn unused_stubs(asked: &[String], made: &[String]) -> Vec<i32> {
    let mut out: Vec<i32> = asked
        .iter()
        .filter_map(|a| a.parse::<i32>().ok())
        .filter(|n| !made.iter().any(|s| s.starts_with(&format!("fd {n} "))))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Enables info-level logging for -v (unless CRS_LOG says otherwise).
pub fn verbose(on: bool) {
    if on && std::env::var("CRS_LOG").is_err() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
