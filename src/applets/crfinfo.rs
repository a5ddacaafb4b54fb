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
use crate::res::image::{ProcessState, SECTIONS, SectionReader, View};
use crate::text::printable;
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

/// Reads the whole image (every checksum, the trailer), then prints each section as the
/// registry describes it, in image order. Names and paths from the image are escaped, so
/// that an image cannot drive the terminal it is described on.
fn describe(inp: impl Input) -> Result<()> {
    let mut r = Reader::new(inp)?;
    // The pages a running checkpoint copied before the freeze, checked as a restore holds them.
    let (read, mut head) = crate::engine::precopy::read_ahead(&mut r, crate::engine::precopy::Keep::Look)?;
    let ahead = read.copied;
    // Each process's block in turn (an image of a tree holds one per live process).
    let mut procs = Vec::new();
    let mut buf = vec![0u8; pages::MAX_BATCH_PAGES * PAGE_SIZE];
    // Bytes of the pages the processes share (TREEPAGES, after the first one's layout).
    let mut shared_bytes = 0u64;
    loop {
        let mut st = ProcessState::default();
        let mut sections = SectionReader::new();
        let mut next = sections.read_group(&mut r, &mut st, head, true, &mut |_, _| Ok(()))?;
        if procs.is_empty() {
            sections.more = st.tree.iter().filter(|m| m.zombie.is_none()).count() > 1;
        } else {
            sections.more = true;
        }
        let mut stored: BTreeMap<u64, u64> = BTreeMap::new(); // mapping start -> bytes stored
        let mut page_bytes = 0u64;
        // Bytes of the pages it takes as an earlier process's (RUN_SHARED).
        let mut as_earlier = 0u64;
        while let Some(s) = next.filter(|s| s.tag == Tag::TREEPAGES && procs.is_empty()) {
            let b = pages::read_batch_header(&mut r, &s)?;
            shared_bytes += b.data_len as u64;
            b.data(&mut r, &mut buf)?;
            next = r.next_section()?;
        }
        next = sections.take_plan(&mut r, next)?;
        // The batches the plan announces, each checked against the one that comes.
        let first = next.as_ref().map_or(r.offset(), |s| s.offset - crate::crf::SECTION_HEADER_LEN as u64);
        let mut plan = sections.plan.as_ref().map(|(p, at)| pages::Plan::read(p, *at, first)).transpose()?;
        let mut order = pages::InOrder::default();
        while let Some(s) = next.filter(|s| s.tag == Tag::PAGES) {
            let b = pages::read_batch_header(&mut r, &s)?;
            order.next(&b.runs, s.offset)?;
            if let Some(p) = plan.as_mut() {
                p.came(&s, &b.runs)?;
            }
            as_earlier +=
                b.runs.iter().filter(|r| r.flags & pages::RUN_SHARED != 0).map(|r| r.len() as u64).sum::<u64>();
            for run in b.runs.iter().filter(|r| r.flags & pages::RUN_KEPT == 0) {
                let i = st.vmas.partition_point(|v| v.end <= run.addr);
                let key = st.vmas.get(i).map_or(run.addr, |v| v.start);
                *stored.entry(key).or_default() += run.len() as u64;
            }
            page_bytes += b.data_len as u64;
            b.data(&mut r, &mut buf)?;
            next = r.next_section()?;
        }
        if let Some(p) = &plan {
            p.finish()?;
        }
        head = sections.read_group(&mut r, &mut st, next, false, &mut |_, _| Ok(()))?;
        procs.push((st, stored, page_bytes, as_earlier));
        if head.is_none() {
            break;
        }
    }
    println!("CRF image, format version {}, x86_64", r.version());
    let n = procs.len();
    for (i, (st, stored, page_bytes, _)) in procs.iter().enumerate() {
        if n > 1 {
            println!("-- process {} of {n}: pid {}", i + 1, st.head.pid);
        }
        let view = View { st, stored, page_bytes: *page_bytes };
        for d in SECTIONS {
            for line in (d.describe)(&view) {
                println!("{}", printable(&line));
            }
        }
    }
    for (pid, a) in &ahead {
        // The first process's when no section names one.
        let who = if *pid == 0 { String::new() } else { format!("pid {pid}: ") };
        println!(
            "ahead:     {who}{} bytes of pages copied while the process ran, {} bytes of them distinct pages",
            a.received(),
            a.held_bytes()
        );
    }
    if read.shm_bytes > 0 {
        println!("ahead:     {} bytes of pages of the tree's shared memory copied while it ran", read.shm_bytes);
    }
    for (st, .., as_earlier) in procs.iter().filter(|p| p.3 > 0) {
        println!(
            "sharing:   pid {}: {as_earlier} bytes of pages taken as an earlier process's (the same pages since a fork)",
            st.head.pid
        );
    }
    if shared_bytes > 0 {
        println!("shared:    {shared_bytes} bytes of pages stored once for the processes that share them");
    }
    println!("checksums: all {} bytes verified, trailer ok", r.offset());
    Ok(())
}
