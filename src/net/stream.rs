//! The image over a connection, both ways: [`FrameWriter`] turns what a checkpoint writes into
//! Data frames, sealed and sent on a thread of their own; [`FrameStream`] receives them on a
//! thread of its own and hands the bytes to a restore, lending a batch of pages out of the
//! frame it arrived in.

use super::{Code, Conn, Kind, NetError, Result};
use std::io::{self, Read, Write};

/// A frame buffer's capacity: a batch of pages with its section header and run table.
const FRAME_ROOM: usize = super::FRAME + (64 << 10);

/// Writes the image as Data frames. A buffer given whole (`Sink::give`: the pages of a batch) is
/// sent as a frame of its own, uncopied, so restartd restores it from the frame it arrived in;
/// other writes are gathered into frames of FRAME bytes or a little more, and a write that
/// fits in a frame (MAX_FRAME) is never split across two. The sealing and sending happen on a
/// scoped thread of their own, so that they overlap with reading the process's memory;
/// `finish` waits for it and gives the connection back.
pub struct FrameWriter<'scope, S: Read + Write + Send> {
    tx: Option<std::sync::mpsc::SyncSender<Out>>,
    /// Our own frame buffers, back from the sending thread, empty.
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    /// Buffers given to us (`Sink::give`), back from the sending thread, as they were.
    given: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pub bytes: u64,
    thread: Option<std::thread::ScopedJoinHandle<'scope, (&'scope mut Conn<S>, Option<NetError>)>>,
    /// What the peer said when a send failed (an Error frame it sent before closing).
    pub peer_said: std::sync::Arc<std::sync::Mutex<Option<NetError>>>,
}

impl<'scope, S: Read + Write + Send> FrameWriter<'scope, S> {
    pub fn new<'env>(scope: &'scope std::thread::Scope<'scope, 'env>, c: &'scope mut Conn<S>) -> Self {
        use std::sync::mpsc::sync_channel;
        let (tx, rx) = sync_channel::<Out>(2);
        let (back, spare) = sync_channel::<Vec<u8>>(4);
        let (given_back, given) = sync_channel::<Vec<u8>>(4);
        let peer_said = std::sync::Arc::new(std::sync::Mutex::new(None));
        let said = peer_said.clone();
        let thread = scope.spawn(move || {
            for out in rx {
                let (mut head, mut data) = match out {
                    Out::Framed(b) => (b, Vec::new()),
                    Out::Given(head, data) => (head, data),
                };
                // What was buffered before a given buffer, then that buffer (in several frames
                // if larger than one), in one write.
                let mut frames: Vec<(Kind, &mut [u8])> = Vec::with_capacity(2);
                if !head.is_empty() {
                    frames.push((Kind::Data, &mut head[..]));
                }
                frames.extend(data.chunks_mut(super::MAX_FRAME as usize).map(|f| (Kind::Data, f)));
                if let Err(e) = c.send_frames(&mut frames) {
                    // The peer may have refused and closed: its reason beats "broken pipe".
                    if let Ok(mut s) = said.lock() {
                        *s = fetch_error(c);
                    }
                    return (c, Some(e));
                }
                if head.capacity() > 0 {
                    head.clear();
                    let _ = back.try_send(head);
                }
                if data.capacity() > 0 {
                    let _ = given_back.try_send(data);
                }
            }
            (c, None)
        });
        FrameWriter {
            tx: Some(tx),
            spare,
            given,
            buf: Vec::with_capacity(FRAME_ROOM),
            bytes: 0,
            thread: Some(thread),
            peer_said,
        }
    }

    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(FRAME_ROOM));
        let full = std::mem::replace(&mut self.buf, next);
        self.queue(Out::Framed(full))
    }

    fn queue(&mut self, out: Out) -> io::Result<()> {
        self.bytes += match &out {
            Out::Framed(b) => b.len(),
            Out::Given(h, d) => h.len() + d.len(),
        } as u64;
        let tx = self.tx.as_ref().ok_or_else(|| io::Error::other("frame writer finished"))?;
        tx.send(out).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the connection to the destination failed"))
    }

    /// Sends what is buffered, waits for the sending thread and returns the connection and the
    /// number of image bytes sent.
    pub fn finish(mut self) -> Result<(&'scope mut Conn<S>, u64)> {
        self.send_buf().map_err(NetError::Io)?;
        drop(self.tx.take());
        let t = self.thread.take().ok_or_else(|| NetError::Protocol("frame writer finished twice".into()))?;
        match t.join() {
            Ok((c, None)) => Ok((c, self.bytes)),
            Ok((_, Some(e))) => Err(e),
            Err(_) => Err(NetError::Protocol("the frame sender panicked".into())),
        }
    }
}

/// What the sending thread sends: a frame we built; or a buffer given to us whole, after
/// what was buffered before it (empty, or a frame of its own).
enum Out {
    Framed(Vec<u8>),
    Given(Vec<u8>, Vec<u8>),
}

impl<S: Read + Write + Send> crate::crf::Sink for FrameWriter<'_, S> {
    /// Sends what is buffered, then `data` as a frame of its own (or several, if larger than a
    /// frame), without a copy; returns a buffer given earlier that has been sent since.
    fn give(&mut self, data: Vec<u8>) -> io::Result<Option<Vec<u8>>> {
        if data.is_empty() {
            self.send_buf()?;
        } else {
            let head = if self.buf.is_empty() {
                Vec::new()
            } else {
                let next = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(FRAME_ROOM));
                std::mem::replace(&mut self.buf, next)
            };
            self.queue(Out::Given(head, data))?;
        }
        Ok(self.given.try_recv().ok())
    }
}

/// After a failed send: an Error frame the peer sent before closing, if one is there.
fn fetch_error<S: Read + Write>(c: &mut Conn<S>) -> Option<NetError> {
    let mut buf = Vec::new();
    match c.recv(&mut buf) {
        Err(e @ NetError::Remote(..)) => Some(e),
        _ => None,
    }
}

fn to_io(e: NetError) -> io::Error {
    match e {
        NetError::Io(e) => e,
        e => io::Error::other(e.to_string()),
    }
}

impl<S: Read + Write + Send> Write for FrameWriter<'_, S> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let max = super::MAX_FRAME as usize;
        if self.buf.len() + data.len() > max {
            self.send_buf()?;
        }
        let n = data.len().min(max - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= super::FRAME {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

/// Receives the image's Data frames on a thread of its own, which opens them, so that
/// the network and the restore overlap; hands the bytes on in order, and lends out what lies
/// whole in one frame (a batch of pages) without a copy. `finish` gives the connection back
/// for the rest of the session.
pub struct FrameStream<S: Read + Write + Send + 'static> {
    /// Frames as they arrive: a buffer and the length of its payload (0: the End frame).
    rx: std::sync::mpsc::Receiver<Result<(Vec<u8>, usize)>>,
    /// Buffers going back to the receiving thread.
    back: std::sync::mpsc::SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    end: usize,
    pos: usize,
    done: bool,
    /// Image bytes taken in so far; shared, to be read while the stream is lent to the restore.
    pub progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
    limit: u64,
    /// A copy of everything received (restartd --spool).
    pub tee: Option<std::fs::File>,
    /// Why the stream stopped early, for the error reply.
    pub failure: Option<(Code, String)>,
    thread: Option<std::thread::JoinHandle<Conn<S>>>,
}

/// Frame buffers in use by one stream (of about 1 MiB each): two queued, one arriving, one
/// being restored from.
const POOL: usize = 4;

impl<S: Read + Write + Send + 'static> FrameStream<S> {
    pub fn start(mut c: Conn<S>, limit: u64) -> Self {
        use std::sync::mpsc::sync_channel;
        let (tx, rx) = sync_channel::<Result<(Vec<u8>, usize)>>(POOL - 2);
        let (back, spare) = sync_channel::<Vec<u8>>(POOL);
        let thread = std::thread::spawn(move || {
            let mut made = 0;
            loop {
                let mut buf = match spare.try_recv() {
                    Ok(b) => b,
                    Err(_) if made < POOL => {
                        made += 1;
                        Vec::new()
                    }
                    Err(_) => match spare.recv() {
                        Ok(b) => b,
                        Err(_) => return c,
                    },
                };
                let item = match c.recv_into(&mut buf) {
                    // An empty frame carries nothing: a client that sends them would keep the
                    // connection busy without the image ever growing.
                    Ok((Kind::Data, 0)) => Err(NetError::Protocol("an empty Data frame".into())),
                    Ok((Kind::Data, n)) => Ok((buf, n)),
                    Ok((Kind::End, _)) => Ok((buf, 0)),
                    Ok((k, _)) => Err(NetError::Protocol(format!("expected image data, got {k:?}"))),
                    Err(e) => Err(e),
                };
                let last = !matches!(&item, Ok((_, n)) if *n > 0);
                if tx.send(item).is_err() || last {
                    return c;
                }
            }
        });
        FrameStream {
            rx,
            back,
            cur: Vec::new(),
            end: 0,
            pos: 0,
            done: false,
            progress: Default::default(),
            limit,
            tee: None,
            failure: None,
            thread: Some(thread),
        }
    }

    /// Image bytes taken in so far.
    pub fn bytes(&self) -> u64 {
        self.progress.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops receiving (the thread ends at its next frame) and returns the connection.
    pub fn finish(mut self) -> Option<Conn<S>> {
        use std::sync::mpsc::sync_channel;
        let t = self.thread.take()?;
        // Dropping our ends lets a thread blocked on a full channel, or waiting for a buffer,
        // end.
        drop(std::mem::replace(&mut self.rx, sync_channel(0).1));
        drop(std::mem::replace(&mut self.back, sync_channel(0).0));
        t.join().ok()
    }

    /// Makes the current frame hold unread bytes, waiting for the next frame if need be; false
    /// at the end of the image.
    fn fill(&mut self) -> io::Result<bool> {
        while self.pos == self.end {
            if self.done {
                return Ok(false);
            }
            // The used buffer goes back first, for the receiving thread to take the next frame in.
            let old = std::mem::take(&mut self.cur);
            if old.capacity() > 0 {
                let _ = self.back.try_send(old);
            }
            (self.pos, self.end) = (0, 0);
            let item = self.rx.recv().unwrap_or_else(|_| Err(NetError::Protocol("receiver stopped".into())));
            match item {
                Ok((_, 0)) => self.done = true,
                Ok((b, n)) => {
                    let bytes = self.progress.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed) + n as u64;
                    if bytes > self.limit {
                        let msg = format!("image exceeds the limit of {} bytes (--max-image-size)", self.limit);
                        self.failure = Some((Code::TooLarge, msg.clone()));
                        self.done = true;
                        return Err(io::Error::other(msg));
                    }
                    if let Some(f) = &mut self.tee
                        && let Err(e) = f.write_all(&b[..n])
                    {
                        // This node's failure, not the image's.
                        let msg = format!("restartd cannot spool the image (--spool): {e}");
                        self.failure = Some((Code::RestoreFailed, msg.clone()));
                        self.done = true;
                        return Err(io::Error::other(msg));
                    }
                    (self.cur, self.end) = (b, n);
                }
                Err(e) => {
                    let code = if matches!(e, NetError::Io(_)) { Code::Timeout } else { Code::Protocol };
                    self.failure = Some((code, e.to_string()));
                    self.done = true;
                    return Err(to_io(e));
                }
            }
        }
        Ok(true)
    }
}

impl<S: Read + Write + Send + 'static> Read for FrameStream<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !self.fill()? {
            return Ok(0);
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<S: Read + Write + Send + 'static> crate::crf::Input for FrameStream<S> {
    fn can_borrow(&mut self, n: usize) -> io::Result<bool> {
        Ok(self.fill()? && self.end - self.pos >= n)
    }

    fn borrow(&mut self, n: usize) -> Option<&[u8]> {
        let to = self.pos.checked_add(n).filter(|&t| t <= self.end)?;
        let s = &self.cur[self.pos..to];
        self.pos = to;
        Some(s)
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use crate::crf::pages::{self, Run};
    use crate::crf::{PAGE_SIZE, Reader, Tag, Writer};
    use crate::net::Side;
    use std::os::unix::net::UnixStream;

    /// An image of a header and three page batches of 1, 256 and 1024 pages.
    fn batches() -> Vec<(Vec<Run>, Vec<u8>)> {
        [1usize, 256, 1024]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let runs = vec![Run { addr: (i as u64 + 1) << 32, npages: n as u32, flags: 0 }];
                let data = (0..n * PAGE_SIZE).map(|b| (b * 7 + i) as u8).collect();
                (runs, data)
            })
            .collect()
    }

    /// A section of 5 MiB, more than a frame holds, then the batches.
    fn big() -> Vec<u8> {
        (0..5 << 20).map(|i: usize| (i / 4093) as u8).collect()
    }

    fn write_image<W: Write>(out: W) -> W {
        let mut w = Writer::new(out).unwrap();
        w.section(Tag(1), 0, &[b"head", &big()]).unwrap();
        for (runs, data) in batches() {
            pages::write_batch(&mut w, &runs, &data).unwrap();
        }
        w.finish().unwrap().0
    }

    /// The same image, its big section and its batches given to the output whole.
    fn give_image<W: crate::crf::Sink>(out: W) -> W {
        let mut w = Writer::new(out).unwrap();
        w.section_given(Tag(1), 0, b"head", big()).unwrap();
        for (runs, data) in batches() {
            pages::give_batch(&mut w, &runs, data).unwrap();
        }
        w.finish().unwrap().0
    }

    /// Receives the image from `b` and checks every batch against what was sent.
    fn read_image(b: UnixStream) {
        let mut c = Conn::new(b, Side::Server);
        c.authenticate([5; 32]);
        let mut fr = FrameStream::start(c, u64::MAX);
        let mut r = Reader::new(&mut fr).unwrap();
        let s = r.next_section().unwrap().unwrap();
        assert!(r.payload(&s, "X").unwrap() == [&b"head"[..], &big()].concat());
        let mut buf = vec![0u8; pages::MAX_BATCH_PAGES * PAGE_SIZE];
        for (runs, data) in batches() {
            let s = r.next_section().unwrap().unwrap();
            let b = pages::read_batch_header(&mut r, &s).unwrap();
            assert_eq!(b.runs, runs);
            assert!(b.data(&mut r, &mut buf).unwrap() == &data[..]);
        }
        assert!(r.next_section().unwrap().is_none() && r.complete());
        assert!(fr.finish().is_some());
    }

    #[test]
    fn image_through_frame_writer() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || read_image(b));
        let mut c = Conn::new(a, Side::Client);
        c.authenticate([5; 32]);
        std::thread::scope(|s| {
            let w = write_image(FrameWriter::new(s, &mut c));
            let (c, _) = w.finish().unwrap();
            c.send(Kind::End, &[]).unwrap();
        });
        t.join().unwrap();
    }

    #[test]
    fn image_given_to_frame_writer() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || read_image(b));
        let mut c = Conn::new(a, Side::Client);
        c.authenticate([5; 32]);
        std::thread::scope(|s| {
            let w = give_image(FrameWriter::new(s, &mut c));
            let (c, _) = w.finish().unwrap();
            c.send(Kind::End, &[]).unwrap();
        });
        t.join().unwrap();
        // Given to any other output, the buffers are written.
        assert!(give_image(Vec::new()) == write_image(Vec::new()));
    }

    #[test]
    fn image_split_anywhere() {
        // Frames of odd sizes: batches straddle frames, and the reader copies them together.
        let img = write_image(Vec::new());
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || read_image(b));
        let mut c = Conn::new(a, Side::Client);
        c.authenticate([5; 32]);
        for part in img.chunks(333_331) {
            c.send(Kind::Data, part).unwrap();
        }
        c.send(Kind::End, &[]).unwrap();
        t.join().unwrap();
    }
}
