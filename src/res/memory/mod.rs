//! The address space, in three sections and three files: the mm layout (mm.rs, MMSTRUCT), the
//! mappings (vmas.rs, VMAS) and the page contents (pages.rs, PAGES batches).

mod mm;
mod pages;
mod vmas;

pub use mm::*;
pub use pages::*;
pub use vmas::*;
