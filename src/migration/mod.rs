//! Migration as library calls, so that a balancer or any program can move processes without
//! the command line: [`client::migrate`] moves (or copies) a running process to a restartd,
//! and [`server::serve_one`] serves one migration on an accepted connection. The `migrate`
//! and `restartd` applets are their command lines: arguments, keys, the listening loop.
//! The protocol itself (frames, handshake, streams) lives in src/net/.

pub mod client;
pub mod files;
pub mod postcopy;
pub mod server;

pub use client::{Moved, Options, migrate, resolve};
pub use server::{ServeConfig, Served, serve_one};
