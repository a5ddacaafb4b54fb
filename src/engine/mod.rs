//! The two sequences of the userspace engine: `checkpoint` freezes a process and writes its
//! image; `restore` builds a process from an image. The resources live in src/res/, the ptrace
//! toolkit they use in src/ptrace/.

pub mod blockers;
pub mod checkpoint;
pub mod family;
pub mod inherit;
pub mod layout;
pub mod lazy;
pub mod pagestates;
pub mod pidns;
pub mod precopy;
pub mod restore;
pub mod sentinel;
pub mod shmahead;
pub mod spawn;
pub mod urgent;
pub mod vmflags;
