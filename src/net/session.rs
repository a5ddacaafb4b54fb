//! The two sides of a migration session over any byte stream: the handshake (version, then
//! mutual proof of the cluster key), the image as Data frames, and the commit exchange that
//! makes sure the process never runs twice nor vanishes.

use super::{Code, Conn, HELLO_KEYED, Kind, NONCE_LEN, NetError, PROTOCOL_VERSION, Result, mac, random};
use super::{hello, parse_hello};
use std::io::{self, Read, Write};

const CLIENT_PROOF: &str = "crs client";
const SERVER_PROOF: &str = "crs server";
const SESSION: &str = "crs session";

/// Client side of the handshake. With a key, the server must prove it knows it too.
pub fn client_hello<S: Read + Write>(c: &mut Conn<S>, key: Option<&[u8; 32]>) -> Result<()> {
    let cn: [u8; NONCE_LEN] = random()?;
    c.send(Kind::Hello, &hello(if key.is_some() { HELLO_KEYED } else { 0 }, &cn))?;
    let mut buf = Vec::new();
    c.expect(Kind::Hello, &mut buf)?;
    let (version, flags, sn) = parse_hello(&buf)?;
    if version != PROTOCOL_VERSION {
        return Err(NetError::Protocol(format!(
            "the destination speaks protocol version {version}, this migrate speaks {PROTOCOL_VERSION}: use the same crs release on both nodes"
        )));
    }
    let Some(k) = key else {
        if flags & HELLO_KEYED != 0 {
            return Err(NetError::Remote(
                Code::Auth,
                "this restartd requires the cluster key: give migrate --key".into(),
            ));
        }
        return Ok(());
    };
    if flags & HELLO_KEYED == 0 {
        return Err(NetError::Protocol("the destination has no cluster key, but we do: refusing to send the process to an unauthenticated restartd".into()));
    }
    c.send(Kind::Auth, &mac(k, CLIENT_PROOF, &[&cn, &sn]))?;
    c.expect(Kind::AuthOk, &mut buf)?;
    if !super::ct_eq(&buf, &mac(k, SERVER_PROOF, &[&cn, &sn])) {
        return Err(NetError::Protocol("the destination could not prove it has the cluster key".into()));
    }
    c.authenticate(mac(k, SESSION, &[&cn, &sn]));
    Ok(())
}

/// Server side of the handshake. `loopback` says whether the peer is on this node, the only
/// peer a restartd without a key serves.
pub fn server_hello<S: Read + Write>(c: &mut Conn<S>, key: Option<&[u8; 32]>, loopback: bool) -> Result<()> {
    let mut buf = Vec::new();
    c.expect(Kind::Hello, &mut buf)?;
    let (version, flags, cn) = match parse_hello(&buf) {
        Ok(h) => h,
        Err(e) => {
            let _ = c.send_error(Code::Protocol, "not the crs migration protocol");
            return Err(e);
        }
    };
    if version != PROTOCOL_VERSION {
        let msg = format!(
            "restartd speaks protocol version {PROTOCOL_VERSION}, the client {version}: use the same crs release on both nodes"
        );
        let _ = c.send_error(Code::Version, &msg);
        return Err(NetError::Protocol(msg));
    }
    if key.is_none() && !loopback {
        // Said instead of our Hello, so the client learns it before it freezes anything.
        let msg = "this restartd has no cluster key and serves only clients on its own node";
        let _ = c.send_error(Code::Auth, msg);
        return Err(NetError::Protocol(msg.into()));
    }
    let sn: [u8; NONCE_LEN] = random()?;
    c.send(Kind::Hello, &hello(if key.is_some() { HELLO_KEYED } else { 0 }, &sn))?;
    let Some(k) = key else { return Ok(()) };
    if flags & HELLO_KEYED == 0 {
        let msg = "this restartd requires the cluster key: give migrate --key";
        let _ = c.send_error(Code::Auth, msg);
        return Err(NetError::Protocol(msg.into()));
    }
    c.expect(Kind::Auth, &mut buf)?;
    if !super::ct_eq(&buf, &mac(k, CLIENT_PROOF, &[&cn, &sn])) {
        let msg = "wrong cluster key";
        let _ = c.send_error(Code::Auth, msg);
        return Err(NetError::Protocol(msg.into()));
    }
    c.send(Kind::AuthOk, &mac(k, SERVER_PROOF, &[&cn, &sn]))?;
    c.authenticate(mac(k, SESSION, &[&cn, &sn]));
    Ok(())
}

/// Writes the image as Data frames of up to CHUNK bytes. The sealing and sending happen on a
/// scoped thread of their own, so that they overlap with reading the process's memory;
/// `finish` waits for it and gives the connection back.
pub struct FrameWriter<'scope, S: Read + Write + Send> {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pub bytes: u64,
    thread: Option<std::thread::ScopedJoinHandle<'scope, (&'scope mut Conn<S>, Option<NetError>)>>,
    /// What the peer said when a send failed (an Error frame it sent before closing).
    pub peer_said: std::sync::Arc<std::sync::Mutex<Option<NetError>>>,
}

impl<'scope, S: Read + Write + Send> FrameWriter<'scope, S> {
    pub fn new<'env>(scope: &'scope std::thread::Scope<'scope, 'env>, c: &'scope mut Conn<S>) -> Self {
        use std::sync::mpsc::sync_channel;
        let (tx, rx) = sync_channel::<Vec<u8>>(2);
        let (back, spare) = sync_channel::<Vec<u8>>(4);
        let peer_said = std::sync::Arc::new(std::sync::Mutex::new(None));
        let said = peer_said.clone();
        let thread = scope.spawn(move || {
            for mut buf in rx {
                if let Err(e) = c.send_in_place(Kind::Data, &mut buf) {
                    // The peer may have refused and closed: its reason beats "broken pipe".
                    if let Ok(mut s) = said.lock() {
                        *s = fetch_error(c);
                    }
                    return (c, Some(e));
                }
                buf.clear();
                let _ = back.try_send(buf);
            }
            (c, None)
        });
        FrameWriter {
            tx: Some(tx),
            spare,
            buf: Vec::with_capacity(super::CHUNK),
            bytes: 0,
            thread: Some(thread),
            peer_said,
        }
    }

    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(super::CHUNK));
        let full = std::mem::replace(&mut self.buf, next);
        self.bytes += full.len() as u64;
        let tx = self.tx.as_ref().ok_or_else(|| io::Error::other("frame writer finished"))?;
        tx.send(full).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the connection to the destination failed"))
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
        let room = super::CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == super::CHUNK {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

/// Receives the image's Data frames on a thread of its own, which opens them, so that
/// the network and the restore overlap; hands the bytes on in order. `finish` gives the
/// connection back for the rest of the session.
pub struct FrameStream<S: Read + Write + Send + 'static> {
    rx: std::sync::mpsc::Receiver<Result<Vec<u8>>>,
    back: std::sync::mpsc::SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
    pub bytes: u64,
    limit: u64,
    /// A copy of everything received (restartd --spool).
    pub tee: Option<std::fs::File>,
    /// Why the stream stopped early, for the error reply.
    pub failure: Option<(Code, String)>,
    thread: Option<std::thread::JoinHandle<Conn<S>>>,
}

impl<S: Read + Write + Send + 'static> FrameStream<S> {
    pub fn start(mut c: Conn<S>, limit: u64) -> Self {
        use std::sync::mpsc::sync_channel;
        let (tx, rx) = sync_channel::<Result<Vec<u8>>>(4);
        let (back, spare) = sync_channel::<Vec<u8>>(8);
        let thread = std::thread::spawn(move || {
            loop {
                let mut buf = spare.try_recv().unwrap_or_default();
                let item = match c.recv(&mut buf) {
                    Ok(Kind::Data) if buf.is_empty() => continue,
                    Ok(Kind::Data) => Ok(buf),
                    Ok(Kind::End) => Ok(Vec::new()),
                    Ok(k) => Err(NetError::Protocol(format!("expected image data, got {k:?}"))),
                    Err(e) => Err(e),
                };
                let last = !matches!(&item, Ok(b) if !b.is_empty());
                if tx.send(item).is_err() || last {
                    return c;
                }
            }
        });
        FrameStream {
            rx,
            back,
            cur: Vec::new(),
            pos: 0,
            done: false,
            bytes: 0,
            limit,
            tee: None,
            failure: None,
            thread: Some(thread),
        }
    }

    /// Stops receiving (the thread ends at its next frame) and returns the connection.
    pub fn finish(mut self) -> Option<Conn<S>> {
        let t = self.thread.take()?;
        // Dropping our ends lets a thread blocked on a full channel end.
        drop(std::mem::replace(&mut self.rx, std::sync::mpsc::sync_channel(0).1));
        t.join().ok()
    }
}

impl<S: Read + Write + Send + 'static> Read for FrameStream<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.done {
                return Ok(0);
            }
            let item = self.rx.recv().unwrap_or_else(|_| Err(NetError::Protocol("receiver stopped".into())));
            match item {
                Ok(b) if b.is_empty() => self.done = true,
                Ok(b) => {
                    self.bytes += b.len() as u64;
                    if self.bytes > self.limit {
                        let msg = format!("image exceeds the limit of {} bytes (--max-image-size)", self.limit);
                        self.failure = Some((Code::TooLarge, msg.clone()));
                        return Err(io::Error::other(msg));
                    }
                    if let Some(f) = &mut self.tee {
                        f.write_all(&b)?;
                    }
                    let old = std::mem::replace(&mut self.cur, b);
                    let _ = self.back.try_send(old);
                    self.pos = 0;
                }
                Err(e) => {
                    let code = if matches!(e, NetError::Io(_)) { Code::Timeout } else { Code::Protocol };
                    self.failure = Some((code, e.to_string()));
                    self.done = true;
                    return Err(to_io(e));
                }
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The u32 pid payload of Restored and Running.
pub fn pid_payload(pid: i32) -> [u8; 4] {
    (pid as u32).to_le_bytes()
}

pub fn parse_pid(p: &[u8]) -> Result<i32> {
    let b: [u8; 4] = p.try_into().map_err(|_| NetError::Protocol(format!("a pid message of {} bytes", p.len())))?;
    Ok(u32::from_le_bytes(b) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Side;
    use std::os::unix::net::UnixStream;

    fn pair(ck: Option<[u8; 32]>, sk: Option<[u8; 32]>, loopback: bool) -> (Result<()>, Result<()>) {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut s = Conn::new(b, Side::Server);
            server_hello(&mut s, sk.as_ref(), loopback)
        });
        let mut c = Conn::new(a, Side::Client);
        let r = client_hello(&mut c, ck.as_ref());
        drop(c);
        (r, t.join().unwrap())
    }

    #[test]
    fn same_key_authenticates_both_ways() {
        let (c, s) = pair(Some([1; 32]), Some([1; 32]), false);
        assert!(c.is_ok() && s.is_ok(), "{c:?} {s:?}");
    }

    #[test]
    fn wrong_or_missing_key_is_refused() {
        let (c, s) = pair(Some([1; 32]), Some([2; 32]), false);
        assert!(c.is_err() && s.is_err());
        let (c, s) = pair(None, Some([2; 32]), true);
        assert!(c.is_err() && s.is_err());
        // A client with a key refuses a server without one.
        let (c, _) = pair(Some([1; 32]), None, true);
        assert!(c.is_err());
    }

    #[test]
    fn keyless_server_serves_loopback_only() {
        let (c, s) = pair(None, None, true);
        assert!(c.is_ok() && s.is_ok());
        let (_, s) = pair(None, None, false);
        assert!(s.is_err());
    }
}
