//! keygen: make the cluster key migrate and restartd authenticate each other with.

/// Write a new random cluster key (mode 0600) to FILE (default /etc/crs/key). Copy the same
/// file to every node that migrates processes or runs restartd.
#[derive(argh::FromArgs)]
struct Args {
    /// where to write the key (default /etc/crs/key)
    #[argh(positional)]
    file: Option<String>,
}

use crate::exit;

pub fn main(name: &str, argv: &[String]) -> i32 {
    let a: Args = match super::parse(name, argv) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let path = a.file.unwrap_or_else(|| crate::net::key::DEFAULT_KEY.to_string());
    match crate::net::key::generate(&path) {
        Ok(()) => {
            println!("{path}");
            exit::OK
        }
        Err(e) => {
            eprintln!("{name}: {e}");
            exit::FAILURE
        }
    }
}
