//! The crs multicall binary: finds the applet from argv[0]'s basename or from the first
//! argument (`crs APPLET ...`), and offers `crs --list` and `crs --install DIR`.

use crs::applets::{self, APPLETS};
use crs::exit;
use std::path::Path;

#[global_allocator]
static ALLOC: crs::aligned::Aligned = crs::aligned::Aligned;

fn usage() -> String {
    let mut s = String::from("usage: crs APPLET [ARGS...] | crs --list | crs --install DIR\n\napplets:\n");
    for a in APPLETS {
        s.push_str(&format!("  {:<9} {}\n", a.name, a.summary));
    }
    s.push_str("\nEach applet also runs as a symlink of its name to crs (see crs --install).\n");
    s
}

fn install(dir: &str) -> i32 {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("crs: cannot find our own binary: {e}");
            return exit::FAILURE;
        }
    };
    for a in APPLETS.iter().filter(|a| a.link) {
        let link = Path::new(dir).join(a.name);
        let _ = std::fs::remove_file(&link);
        if let Err(e) = std::os::unix::fs::symlink(&exe, &link) {
            eprintln!("crs: cannot create {}: {e}; does {dir} exist and may you write to it?", link.display());
            return exit::FAILURE;
        }
        println!("{} -> {}", link.display(), exe.display());
    }
    exit::OK
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args
        .first()
        .map(|a| Path::new(a).file_name().and_then(|n| n.to_str()).unwrap_or("crs").to_string())
        .unwrap_or_else(|| "crs".into());
    let (name, rest) = if argv0 == "crs" {
        match args.get(1).map(String::as_str) {
            None | Some("-h") | Some("--help") | Some("help") => {
                print!("{}", usage());
                std::process::exit(if args.len() > 1 { exit::OK } else { exit::USAGE });
            }
            Some("--list") => {
                for a in APPLETS {
                    println!("{}", a.name);
                }
                std::process::exit(exit::OK);
            }
            Some("--version") => {
                println!("crs {} (CRF format version {})", env!("CARGO_PKG_VERSION"), crs::crf::VERSION);
                std::process::exit(exit::OK);
            }
            Some("--install") => match args.get(2) {
                Some(d) => std::process::exit(install(d)),
                None => {
                    eprintln!("crs: --install needs a directory, e.g. crs --install /usr/local/bin");
                    std::process::exit(exit::USAGE);
                }
            },
            Some(n) => (n.to_string(), args[2..].to_vec()),
        }
    } else {
        (argv0, args[1..].to_vec())
    };
    let Some(applet) = applets::find(&name) else {
        let names: Vec<&str> = APPLETS.iter().map(|a| a.name).collect();
        eprintln!("crs: unknown applet '{name}'; applets are: {}", names.join(", "));
        std::process::exit(exit::UNKNOWN_APPLET);
    };
    applets::init_logging(applet.name);
    std::process::exit((applet.main)(applet.name, &rest));
}
