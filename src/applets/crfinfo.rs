//! crfinfo: describe a CRF image and verify every checksum.

/// Describe a CRF image: header, memory map (address range, protection, kind, stored bytes),
/// files, registers and cwd. Every section's checksum is verified; a bad image exits non-zero.
#[derive(argh::FromArgs)]
struct Args {
    /// the image file, or "-" to read standard input
    #[argh(positional)]
    image: String,
}

use crate::crf::{Input, PAGE_SIZE, Reader, Stream, Tag, pages};
use crate::error::{Error, Result};
use crate::exit;
use crate::res::fileid::hex;
use crate::res::{cwd, files, head::Header, memory, regs::RegState, signals::Signals, task::Task};
use std::collections::BTreeMap;

pub fn main(name: &str, argv: &[String]) -> i32 {
    let a: Args = match super::parse(name, argv) {
        Ok(a) => a,
        Err(code) => return code,
    };
    // Like any filter: `crfinfo IMAGE | head` ends quietly.
    // SAFETY: restoring the default disposition of SIGPIPE has no memory effects.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let r = if a.image == "-" {
        describe(Stream(std::io::stdin().lock()))
    } else {
        match std::fs::File::open(&a.image) {
            Ok(f) => describe(Stream(std::io::BufReader::with_capacity(1 << 20, f))),
            Err(e) => Err(Error::io(a.image.as_str(), e)),
        }
    };
    match r {
        Ok(()) => exit::OK,
        Err(e) => exit::report(name, &e),
    }
}

/// println! for text that holds an image's strings (names, paths): escaped, so that an image
/// cannot drive the terminal it is described on.
macro_rules! out {
    ($($t:tt)*) => { println!("{}", crate::text::printable(&format!($($t)*))) };
}

fn describe(inp: impl Input) -> Result<()> {
    let mut r = Reader::new(inp)?;
    out!("CRF image, format version {}, x86_64", crate::crf::VERSION);
    let mut vmas: Vec<memory::Vma> = Vec::new();
    let mut stored: BTreeMap<u64, u64> = BTreeMap::new(); // vma start -> bytes stored
    let mut total = 0u64;
    let mut buf = vec![0u8; pages::MAX_BATCH_PAGES * PAGE_SIZE];
    while let Some(s) = r.next_section()? {
        match s.tag {
            Tag::Pages => {
                let b = pages::read_batch_header(&mut r, &s)?;
                for run in &b.runs {
                    let i = vmas.partition_point(|v| v.end <= run.addr);
                    let key = vmas.get(i).map_or(run.addr, |v| v.start);
                    *stored.entry(key).or_default() += run.len() as u64;
                }
                total += b.data_len as u64;
                b.data(&mut r, &mut buf)?;
            }
            Tag::Head => {
                let h = Header::decode(&r.payload(&s)?, s.offset)?;
                out!("process:   pid {} ({}), ppid {}, pgid {}, sid {}", h.pid, h.comm, h.ppid, h.pgid, h.sid);
                out!("exe:       {}", h.exe);
                out!("ids:       uid {:?} gid {:?} groups {:?}", h.uids, h.gids, h.groups);
                out!("taken on:  {} (kernel {}) at {} (unix time)", h.hostname, h.kernel, h.time_sec);
                out!("flags:     {:#x}", h.flags);
            }
            Tag::Files => {
                let f = files::decode(&r.payload(&s)?, s.offset)?;
                out!("files:     {}", f.len());
                for x in f {
                    out!(
                        "  fd {:<3} {:<6} flags {:#o}{} pos {} {}",
                        x.fd,
                        files::kind_name(x.kind),
                        x.flags,
                        if x.cloexec { " cloexec" } else { "" },
                        x.pos,
                        x.id.path
                    );
                }
            }
            Tag::MmStruct => {
                let m = memory::MmStruct::decode(&r.payload(&s)?, s.offset)?;
                out!(
                    "mm:        code {:#x}-{:#x} data {:#x}-{:#x} brk {:#x}-{:#x} stack {:#x}",
                    m.start_code,
                    m.end_code,
                    m.start_data,
                    m.end_data,
                    m.start_brk,
                    m.brk,
                    m.start_stack
                );
                out!(
                    "           args {:#x}-{:#x} env {:#x}-{:#x} auxv {} bytes",
                    m.arg_start,
                    m.arg_end,
                    m.env_start,
                    m.env_end,
                    m.auxv.len()
                );
            }
            Tag::Vmas => vmas = memory::decode_vmas(&r.payload(&s)?, s.offset)?,
            Tag::Regs => {
                print_map(&vmas, &stored, total);
                let g = RegState::decode(&r.payload(&s)?, s.offset)?;
                out!(
                    "registers: rip {:#x} rsp {:#x} rax {:#x} fs_base {:#x}; xsave {} bytes (xcr0 {:#x})",
                    g.gpr.rip,
                    g.gpr.rsp,
                    g.gpr.rax,
                    g.gpr.fs_base,
                    g.xsave.len(),
                    g.xcr0()
                );
            }
            Tag::Signals => {
                let sg = Signals::decode(&r.payload(&s)?, s.offset)?;
                let handled: Vec<String> = sg
                    .actions
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| a.handler > 1)
                    .map(|(i, _)| (i + 1).to_string())
                    .collect();
                out!(
                    "signals:   handlers for [{}], blocked {:#x}, altstack {:#x}+{}",
                    handled.join(" "),
                    sg.blocked,
                    sg.altstack_sp,
                    sg.altstack_size
                );
            }
            Tag::Task => {
                let t = Task::decode(&r.payload(&s)?, s.offset)?;
                let rs = t.rseq.map_or("none".to_string(), |x| format!("{:#x}+{}", x.ptr, x.len));
                out!("task:      umask {:03o}, personality {:#x}, rseq {rs}", t.umask, t.personality);
            }
            Tag::Cwd => out!("cwd:       {}", cwd::decode(&r.payload(&s)?, s.offset)?),
            Tag::Pending => {
                let p = Signals::decode_pending(&r.payload(&s)?, s.offset)?;
                let sigs: Vec<String> = p.iter().map(|p| p.signo().to_string()).collect();
                out!("pending:   signals [{}]", sigs.join(" "));
            }
            Tag::Mdwe => {
                out!("mdwe:      memory-deny-write-execute, flags {:#x}", Task::decode_mdwe(&r.payload(&s)?, s.offset)?)
            }
            Tag::End => {}
        }
    }
    out!("checksums: all {} bytes verified, trailer ok", r.offset());
    Ok(())
}

fn print_map(vmas: &[memory::Vma], stored: &BTreeMap<u64, u64>, total: u64) {
    out!("memory:    {} mappings, {} bytes of pages stored", vmas.len(), total);
    for v in vmas {
        let b = stored.get(&v.start).copied().unwrap_or(0);
        let extra = match &v.file {
            Some(f) if !f.build_id.is_empty() => format!(" build-id {}", hex(&f.build_id)),
            _ => String::new(),
        };
        out!(
            "  {:012x}-{:012x} {} {:<5} {:>10} {}{}",
            v.start,
            v.end,
            v.prot_string(),
            v.kind_name(),
            b,
            v.name,
            extra
        );
    }
}
