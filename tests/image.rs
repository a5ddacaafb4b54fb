//! Corrupt, truncated and foreign images are refused with one clear line, and nothing of them
//! ever runs.

mod support;
use std::process::{Command, Stdio};
use support::*;

/// An image of the memory target (killed), and the offsets where its sections start.
fn image(name: &str) -> (support::TmpDir, Vec<u8>, Vec<(usize, usize)>) {
    let dir = tmpdir(name);
    let d = dir.to_str().unwrap();
    let mut p = start("memory", &[d, "8"], &dir);
    let img = dir.join("m.crf");
    ckpt(&["-k", "-o", img.to_str().unwrap(), &p.pid().to_string()]);
    p.kill();
    let bytes = std::fs::read(&img).unwrap();
    let mut secs = Vec::new();
    let mut off = 16;
    while off + 24 <= bytes.len() {
        let len = u64::from_le_bytes(bytes[off + 8..off + 16].try_into().unwrap()) as usize;
        secs.push((off, len));
        off += 24 + len;
    }
    assert_eq!(off, bytes.len(), "sections must tile the image");
    (dir, bytes, secs)
}

/// rstrt on these bytes must fail with the bad-image code, one line, and no output from the
/// process (which would mean something of it ran).
fn refused(dir: &std::path::Path, bytes: &[u8], what: &str, want: &str) {
    let bad = dir.join("bad.crf");
    std::fs::write(&bad, bytes).unwrap();
    let mut c = Command::new(crs());
    c.args(["rstrt", bad.to_str().unwrap()]).stdin(Stdio::null());
    close_extra_fds(&mut c);
    let o = c.output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(4), "{what}: rstrt exit {:?}, stderr {err}", o.status);
    assert!(o.stdout.is_empty(), "{what}: the process ran: {}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(err.lines().count(), 1, "{what}: not one line: {err}");
    assert!(err.contains(want), "{what}: {err:?} does not say {want:?}");
    let info = run(&["crfinfo", bad.to_str().unwrap()]);
    assert_eq!(info.status.code(), Some(4), "{what}: crfinfo accepted it");
}

#[test]
fn a_flipped_byte_in_any_section_is_refused() {
    let (dir, bytes, secs) = image("img-flip");
    assert!(secs.len() >= 10, "expected all sections, got {}", secs.len());
    for (i, &(off, len)) in secs.iter().enumerate() {
        let mut b = bytes.clone();
        b[off + 9] ^= 0x10; // length field of the header
        refused(&dir, &b, &format!("header of section {i}"), "offset");
        if len > 0 {
            let mut b = bytes.clone();
            b[off + 24 + len / 2] ^= 0x01;
            refused(&dir, &b, &format!("payload of section {i}"), "checksum mismatch");
        }
    }
}

/// Page batches out of address order (the first two swapped, checksums right) are refused:
/// a restore writes a process's batches in parallel, which only works when none overlaps.
#[test]
fn page_batches_out_of_order_are_refused() {
    use crs::crf::{Reader, Tag, Writer, pages};
    let (dir, bytes, _) = image("img-order");
    let mut r = Reader::new(&bytes[..]).unwrap();
    let mut buf = vec![0u8; pages::MAX_BATCH_PAGES * 4096];
    /// A section (tag, flags, payload), or a batch (runs, data).
    type Sec = Result<(Tag, u32, Vec<u8>), (Vec<pages::Run>, Vec<u8>)>;
    let mut all: Vec<Sec> = Vec::new();
    while let Some(s) = r.next_section().unwrap() {
        if s.tag == Tag::PAGES {
            let b = pages::read_batch_header(&mut r, &s).unwrap();
            let runs = b.runs.clone();
            all.push(Err((runs, b.data(&mut r, &mut buf).unwrap().to_vec())));
        } else {
            let p = r.payload(&s, "X").unwrap();
            all.push(Ok((s.tag, s.flags, p)));
        }
    }
    let first = all.iter().position(|s| s.is_err()).unwrap();
    assert!(all[first + 1].is_err(), "the memory target has one page batch only");
    all.swap(first, first + 1);
    let mut w = Writer::new(Vec::new()).unwrap();
    for s in &all {
        match s {
            Ok((tag, flags, p)) => w.section(*tag, *flags, &[p]).unwrap(),
            Err((runs, data)) => pages::write_batch(&mut w, runs, data).unwrap(),
        }
    }
    refused(&dir, &w.finish().unwrap().0, "batches swapped", "goes back to");
}

#[test]
fn truncated_images_are_refused() {
    let (dir, bytes, secs) = image("img-trunc");
    let mut cuts = vec![0, 3, 15, 16, 30, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1];
    cuts.extend(secs.iter().map(|&(o, _)| o)); // at every section boundary, incl. the trailer
    for cut in cuts {
        refused(&dir, &bytes[..cut], &format!("cut at {cut}"), "truncated");
    }
}

#[test]
fn wrong_magic_and_future_version_are_refused() {
    let (dir, bytes, _) = image("img-magic");
    let mut b = bytes.clone();
    b[0] = b'X';
    refused(&dir, &b, "magic", "not a CRF image");
    let mut b = bytes.clone();
    b[4..8].copy_from_slice(&99u32.to_le_bytes());
    let crc = crc32(&b[0..12]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    refused(&dir, &b, "version", "version 99 is not supported");
    refused(&dir, b"definitely not an image at all", "text", "not a CRF image");
}

/// CRC-32 (IEEE), bit by bit: the test does not trust the codec's own crc.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
        }
    }
    !c
}

#[test]
fn crfinfo_describes_a_good_image() {
    let (dir, _, _) = image("img-info");
    let o = run(&["crfinfo", dir.join("m.crf").to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    for want in ["process:", "[heap]", "[stack]", "[vdso]", "registers:", "cwd:", "trailer ok"] {
        assert!(out.contains(want), "crfinfo output lacks {want}:\n{out}");
    }
}

/// An image whose vdso differs from this kernel's (as after a kernel update) is refused by name
/// before anything is created.
#[test]
fn a_different_vdso_is_refused() {
    let (dir, bytes, _) = image("img-vdso");
    let img = rewrite(&bytes, |tag, p| {
        if tag != crs::res::image::tags::VMAS {
            return p;
        }
        let mut v = crs::res::memory::decode_vmas(&p, 0).unwrap();
        let vdso = v.iter_mut().find(|v| v.name == "[vdso]").expect("a vdso");
        vdso.content[100] ^= 0xff;
        crs::res::memory::encode_vmas(&v)
    });
    let bad = dir.join("vdso.crf");
    std::fs::write(&bad, img).unwrap();
    let o = run(&["rstrt", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("vdso") && stderr(&o).contains("differs from this kernel"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}
