//! ProcessState: everything an image says about a process except its page contents (which
//! stream through PAGES batches). Plain data, one field per resource, no I/O.

use crate::res::{
    files::Fd,
    head::Header,
    memory::{MmStruct, Vma},
    regs::RegState,
    signals::Signals,
    task::Task,
};

#[derive(Debug, Default)]
pub struct ProcessState {
    pub head: Header,
    pub files: Vec<Fd>,
    pub mm: MmStruct,
    pub vmas: Vec<Vma>,
    pub regs: Option<RegState>,
    pub signals: Signals,
    pub task: Task,
    pub cwd: String,
}
