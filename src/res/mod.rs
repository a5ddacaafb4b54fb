//! The resources of a process, one file each: its model, its CRF section encoding, how it is
//! collected from /proc and ptrace, and how it is restored. The order of `SECTION_ORDER` is the
//! order sections appear in an image and the order a restore applies them.

pub mod creds;
pub mod cwd;
pub mod fileid;
pub mod files;
pub mod head;
pub mod memory;
pub mod regs;
pub mod signals;
pub mod task;

use crate::crf::Tag;

/// Sections in image order (PAGES batches repeat after VMAS; END closes the image).
pub const SECTION_ORDER: [Tag; 9] =
    [Tag::Head, Tag::Files, Tag::MmStruct, Tag::Vmas, Tag::Pages, Tag::Regs, Tag::Signals, Tag::Task, Tag::Cwd];
