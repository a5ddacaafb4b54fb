//! TCPQUEUED: the connections waiting in a TCP listener's accept queue (ckpt
//! --tcp-established): the handshake done, maybe bytes received, nothing accepted yet.
//!
//! The kernel gives no way to read a queued connection but to accept it, and none to put one
//! back but a SYN cookie: a checkpoint accepts each through its own copy of the listener,
//! reads it as an established connection (res::tcpconn, in repair mode, its packets
//! blocked), and a restore (or the checkpoint, when the process runs on) puts it back in the
//! queue as Linux 6.9's BPF SYN cookies do (bpf_sk_assign_tcp_reqsk): a TC program on the
//! loopback device, made for that one connection, gives the listener a request with the
//! connection's options (MSS, window scales, SACK, timestamps and the timestamp clock) when
//! crs sends it, through a raw socket, the peer's last ACK; the listener makes the connection
//! from it, numbered where it was, with the bytes received carried in that ACK and the
//! segments after it (and the peer's FIN, when it had closed its side). The program and the
//! raw socket go once the connection is there (sock_diag shows it with every byte), and their
//! packets pass crs's own packet blocks by their mark.
//!
//! What that cannot bring back: the window the connection had offered (the new one offers
//! what a fresh connection of the listener does), and the peer's last timestamp (as for
//! TCPCONNS). A connection still in the handshake (SYN_RECV, or held by TCP_DEFER_ACCEPT
//! until data comes) is no socket yet: it is lost, its client seeing a reset once it sends.

use super::inet;
use super::tcpconn::{self, Conn};
use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use nix::errno::Errno;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The marks of crs's packets that put a connection back (SO_MARK): the high half MARK, the
/// low one the put-back's own (another crs may put one back at the same time: each TC
/// program acts on its packets alone). crs's nftables blocks let them through.
pub const MARK: u32 = 0x6372_0000;
pub const MARK_MASK: u32 = 0xffff_0000;

/// The most bytes received a waiting connection may hold. A connection made from a SYN
/// cookie offers a fresh connection's window, and the kernel counts the memory crs's packets
/// take (more than they carry): 96000 bytes went back of 128512 a client had sent, with the
/// default buffers. A checkpoint refuses more, before it takes any.
pub const MAX_WAITING: u32 = 64 << 10;

/// The first of `n` marks of MARK no other put-back of ours uses now (one batch of this
/// process's at a time; the pid and the clock against other processes').
fn fresh_marks() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (std::process::id() ^ nanos ^ nanos >> 16) & 0xffff
}

/// The mark of the `i`th connection of a batch whose first is `first` (never MARK itself,
/// which [`send_segment`]'s packets carry).
fn mark_of(first: u32, i: usize) -> u32 {
    MARK | (1 + (first + i as u32) % 0xffff)
}

/// A connection that waited in listener `listener`'s queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Queued {
    /// The listener's inode (an INETSOCKS socket).
    pub listener: u64,
    /// Its peer had closed its side: the FIN is in `conn.rcv_seq`.
    pub fin: bool,
    pub conn: Conn,
}

fn sys(call: &str, what: &str) -> Error {
    Error::sys(call, what, Errno::last())
}

// BPF: the program, its load and its attachment.

const BPF_MAP_CREATE: i32 = 0;
const BPF_MAP_UPDATE_ELEM: i32 = 2;
const BPF_PROG_LOAD: i32 = 5;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_LINK_CREATE: i32 = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const HELPER_SKC_LOOKUP_TCP: i32 = 99;
const HELPER_SK_RELEASE: i32 = 86;
const HELPER_SKC_TO_TCP_SOCK: i32 = 137;
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;
const KFUNC: &str = "bpf_sk_assign_tcp_reqsk";

/// The BTF id of function `name` in the running kernel's /sys/kernel/btf/vmlinux.
fn btf_func(name: &str) -> std::result::Result<u32, String> {
    const PATH: &str = "/sys/kernel/btf/vmlinux";
    let b = std::fs::read(PATH).map_err(|e| format!("{PATH}: {e} (a kernel without BTF)"))?;
    let u32_at = |o: usize| b.get(o..o + 4).map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]));
    if b.get(..2) != Some(&[0x9f, 0xeb]) {
        return Err(format!("{PATH} is not BTF crs reads (little-endian, magic 0xeb9f)"));
    }
    let bad = || format!("{PATH}: a header crs does not understand");
    let hdr = u32_at(4).ok_or_else(bad)? as usize;
    let (types, types_len) = (u32_at(8).ok_or_else(bad)? as usize + hdr, u32_at(12).ok_or_else(bad)? as usize);
    let strs = u32_at(16).ok_or_else(bad)? as usize + hdr;
    let strs_len = u32_at(20).ok_or_else(bad)? as usize;
    let str_at = |o: usize| -> Option<&[u8]> {
        let s = b.get(strs + o..strs + strs_len)?;
        Some(&s[..s.iter().position(|&c| c == 0)?])
    };
    let (mut at, end, mut id) = (types, types + types_len, 1u32);
    while at + 12 <= end {
        let (name_off, info) = (u32_at(at).ok_or_else(bad)?, u32_at(at + 4).ok_or_else(bad)?);
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        if kind == 12 && str_at(name_off as usize) == Some(name.as_bytes()) {
            return Ok(id);
        }
        at += 12
            + match kind {
                1 | 14 | 17 => 4,     // INT, VAR, DECL_TAG
                3 => 12,              // ARRAY
                4 | 5 => 12 * vlen,   // STRUCT, UNION
                6 | 13 => 8 * vlen,   // ENUM, FUNC_PROTO
                15 | 19 => 12 * vlen, // DATASEC, ENUM64
                2 | 7..=12 | 16 | 18 => 0,
                k => return Err(format!("{PATH}: a BTF kind crs does not know ({k})")),
            };
        id += 1;
    }
    Err(format!("this kernel has no {name} (Linux 6.9 and later have it, with CONFIG_SYN_COOKIES)"))
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    code as u64
        | (dst as u64 & 0xf) << 8
        | (src as u64 & 0xf) << 12
        | (off as u16 as u64) << 16
        | (imm as u32 as u64) << 32
}
fn mov(dst: u8, src: u8) -> u64 {
    insn(0xbf, dst, src, 0, 0)
}
fn movi(dst: u8, imm: i32) -> u64 {
    insn(0xb7, dst, 0, 0, imm)
}
fn addi(dst: u8, imm: i32) -> u64 {
    insn(0x07, dst, 0, 0, imm)
}
fn call(helper: i32) -> u64 {
    insn(0x85, 0, 0, 0, helper)
}
/// A map entry's value: the tuple bpf_skc_lookup_tcp takes (36 bytes, an IPv4 one in its
/// first 12), its length (u32), and the request's struct bpf_tcp_req_attrs (20 bytes).
const VALUE: usize = 60;

/// The program: every packet goes on (TCX_NEXT); one of ours (its mark's high half MARK)
/// whose mark the map (fd `map`, u32 mark -> VALUE) holds gives the listener its tuple
/// reaches a request with the entry's attributes. r6 the packet, r9 the entry.
fn program(map: i32, kfunc: u32) -> Vec<u64> {
    let mut p = vec![mov(6, 1), insn(0x61, 2, 1, 8, 0)]; // r2 = skb->mark
    p.extend([mov(3, 2), insn(0x57, 3, 0, 0, MARK_MASK as i32)]); // r3 = r2 & MARK_MASK
    let not_ours = p.len();
    p.push(0);
    p.push(insn(0x63, 10, 2, -4, 0)); // *(u32 *)(r10 - 4) = r2: the key
    p.extend([insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map), 0]); // r1 = the map
    p.extend([mov(2, 10), addi(2, -4), call(HELPER_MAP_LOOKUP_ELEM)]);
    let none = p.len();
    p.push(0);
    p.extend([mov(9, 0), insn(0x61, 3, 9, 36, 0)]); // r3 = the tuple's length
    let v6 = p.len();
    p.push(0);
    let lookup = |p: &mut Vec<u64>, len: i32| {
        p.extend([mov(1, 6), mov(2, 9), movi(3, len), movi(4, -1), movi(5, 0), call(HELPER_SKC_LOOKUP_TCP)]);
    };
    lookup(&mut p, 12);
    let skip = p.len();
    p.push(0);
    let v6_at = p.len();
    lookup(&mut p, 36);
    let found = p.len();
    let none2 = p.len();
    p.push(0);
    p.extend([mov(7, 0), mov(1, 0), call(HELPER_SKC_TO_TCP_SOCK)]);
    let not_tcp = p.len();
    p.push(0);
    p.extend([mov(2, 0), mov(1, 6), mov(3, 9), addi(3, 40), movi(4, 20)]);
    p.push(insn(0x85, 0, BPF_PSEUDO_KFUNC_CALL, 0, kfunc as i32));
    let release = p.len();
    p.extend([mov(1, 7), call(HELPER_SK_RELEASE)]);
    let out = p.len();
    p.extend([movi(0, -1), insn(0x95, 0, 0, 0, 0)]); // TCX_NEXT
    let jump = |from: usize, to: usize| (to - from - 1) as i16;
    // (MARK below 2^31: the comparison sign-extends it.)
    p[not_ours] = insn(0x55, 3, 0, jump(not_ours, out), MARK as i32);
    p[none] = insn(0x15, 0, 0, jump(none, out), 0);
    p[v6] = insn(0x15, 3, 0, jump(v6, v6_at), 36);
    p[skip] = insn(0x05, 0, 0, jump(skip, found), 0);
    p[none2] = insn(0x15, 0, 0, jump(none2, out), 0);
    p[not_tcp] = insn(0x15, 0, 0, jump(not_tcp, release), 0);
    p
}

/// A hash map of `n` entries, u32 mark -> VALUE.
fn map(n: usize) -> std::result::Result<OwnedFd, String> {
    let mut attr = [0u8; 72];
    attr[0..4].copy_from_slice(&BPF_MAP_TYPE_HASH.to_ne_bytes());
    attr[4..8].copy_from_slice(&4u32.to_ne_bytes());
    attr[8..12].copy_from_slice(&(VALUE as u32).to_ne_bytes());
    attr[12..16].copy_from_slice(&(n.max(1) as u32).to_ne_bytes());
    bpf(BPF_MAP_CREATE, &mut attr).map_err(|e| format!("bpf(BPF_MAP_CREATE) of {n} entries: {e}"))
}

/// Map `map`'s entry for `mark`: `value`.
fn set_entry(map: &OwnedFd, mark: u32, value: &[u8; VALUE]) -> Result<()> {
    let key = mark.to_ne_bytes();
    let mut attr = [0u8; 32];
    attr[0..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(value.as_ptr() as u64).to_ne_bytes());
    bpf_raw(BPF_MAP_UPDATE_ELEM, &mut attr)
        .map(drop)
        .map_err(|e| Error::sys("bpf(BPF_MAP_UPDATE_ELEM)", "crs's map", e))
}

/// bpf(2) command `cmd` on `attr`: its result.
fn bpf_raw(cmd: i32, attr: &mut [u8]) -> std::result::Result<i64, Errno> {
    // SAFETY: bpf reads (and for some commands writes) attr.len() bytes of a live buffer;
    // every pointer in it points to a live buffer of the length given beside it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(r)
}

/// bpf(2) command `cmd` on `attr`, one that makes an object: its fd.
fn bpf(cmd: i32, attr: &mut [u8]) -> std::result::Result<OwnedFd, Errno> {
    let fd = bpf_raw(cmd, attr)?;
    // SAFETY: the commands given here return a new fd, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads `insns` as a TC program; its verifier's last words on a refusal.
fn load(insns: &[u64]) -> std::result::Result<OwnedFd, String> {
    let code: Vec<u8> = insns.iter().flat_map(|i| i.to_le_bytes()).collect();
    let license = b"GPL\0";
    let mut log = vec![0u8; 1 << 16];
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(code.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..57].copy_from_slice(b"crs_queue");
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd),
        Err(Errno::EPERM) => Err("loading a BPF program takes CAP_BPF and CAP_NET_ADMIN".into()),
        Err(_) => {
            // Again, with the verifier's log.
            attr[24..28].copy_from_slice(&1u32.to_ne_bytes());
            attr[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
            attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
            let e = bpf(BPF_PROG_LOAD, &mut attr).err().unwrap_or(Errno::UnknownErrno);
            let text = String::from_utf8_lossy(&log[..log.iter().position(|&c| c == 0).unwrap_or(0)]).to_string();
            let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
            Err(format!("the kernel refuses crs's BPF program ({e}): {}", crate::text::printable(&last)))
        }
    }
}

/// The BTF id of the kfunc, looked up once.
fn kfunc() -> std::result::Result<u32, String> {
    static ID: std::sync::OnceLock<std::result::Result<u32, String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| btf_func(KFUNC)).clone()
}

/// Whether this kernel can put a connection back in a listener's queue; why not, if not.
pub fn usable() -> std::result::Result<(), String> {
    static OK: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    OK.get_or_init(|| {
        let id = kfunc()?;
        let m = map(1)?;
        load(&program(m.as_raw_fd(), id)).map(drop)
    })
    .clone()
}

// The packets.

/// The addresses packets carry: an IPv4 address mapped in IPv6 as IPv4.
pub fn plain(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        a => a,
    }
}

fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for p in parts {
        for &b in p.iter() {
            match odd.take() {
                Some(h) => sum += u16::from_be_bytes([h, b]) as u32,
                None => odd = Some(b),
            }
        }
    }
    if let Some(h) = odd {
        sum += u16::from_be_bytes([h, 0]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
pub const FIN: u8 = 0x01;

/// An IP packet from `from` to `to` carrying a TCP segment.
fn packet(from: SocketAddr, to: SocketAddr, seq: u32, ack: u32, flags: u8, window: u16, data: &[u8]) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20 + data.len());
    tcp.extend_from_slice(&from.port().to_be_bytes());
    tcp.extend_from_slice(&to.port().to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.extend_from_slice(&[5 << 4, flags]);
    tcp.extend_from_slice(&window.to_be_bytes());
    tcp.extend_from_slice(&[0; 4]); // checksum, urgent pointer
    tcp.extend_from_slice(data);
    let len = tcp.len() as u32;
    let (mut ip, pseudo) = match (from.ip(), to.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&((20 + len) as u16).to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_TCP as u8, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let sum = checksum(&[&ip]);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            let mut pseudo = [s.octets(), d.octets()].concat();
            pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8]);
            pseudo.extend_from_slice(&(len as u16).to_be_bytes());
            (ip, pseudo)
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&(len as u16).to_be_bytes());
            ip.extend_from_slice(&[libc::IPPROTO_TCP as u8, 64]);
            ip.extend_from_slice(&v6(s));
            ip.extend_from_slice(&v6(d));
            let mut pseudo = [v6(s), v6(d)].concat();
            pseudo.extend_from_slice(&len.to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, libc::IPPROTO_TCP as u8]);
            (ip, pseudo)
        }
    };
    let sum = checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&tcp);
    ip
}

/// bpf_sk_assign_tcp_reqsk's struct bpf_tcp_req_attrs for connection `c`: the peer's
/// timestamp left 0, as TCPCONNS leaves it; the connection's own clock where it was.
fn attrs(c: &Conn) -> [u8; 20] {
    let mut a = [0u8; 20];
    a[4..8].copy_from_slice(&c.timestamp.to_ne_bytes());
    a[8..10].copy_from_slice(&(c.mss.min(u16::MAX as u32) as u16).to_ne_bytes());
    let wscale = c.options & tcpconn::TCPI_OPT_WSCALE != 0;
    if wscale {
        (a[10], a[11]) = (c.rcv_wscale, c.snd_wscale);
    }
    a[12] = (c.options & tcpconn::TCPI_OPT_ECN != 0) as u8;
    a[13] = wscale as u8;
    a[14] = (c.options & tcpconn::TCPI_OPT_SACK != 0) as u8;
    a[15] = (c.options & tcpconn::TCPI_OPT_TIMESTAMPS != 0) as u8;
    a[16] = (c.options & tcpconn::TCPI_OPT_USEC_TS != 0) as u8;
    a
}

/// The tuple bpf_skc_lookup_tcp takes for packets from `from` to `to` (struct
/// bpf_sock_tuple: addresses, then ports, in network order).
fn tuple(from: SocketAddr, to: SocketAddr) -> Vec<u8> {
    let ip = |a: IpAddr| match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut t = [ip(from.ip()), ip(to.ip())].concat();
    t.extend_from_slice(&from.port().to_be_bytes());
    t.extend_from_slice(&to.port().to_be_bytes());
    t
}

/// Index of the loopback device of our network namespace.
fn loopback() -> Result<u32> {
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if i == 0 {
        return Err(sys("if_nametoindex", "lo"));
    }
    Ok(i)
}

/// Connections to put back in their listeners' queues in our network namespace, their
/// program attached (which takes a while: the attachment, not the put-back, when the
/// processes are about to run).
pub struct PutBack {
    queued: Vec<Queued>,
    first: u32,
    link: Option<OwnedFd>,
}

impl PutBack {
    /// Loads and attaches the program for `queued` (none when there are none).
    pub fn prepare(queued: Vec<Queued>) -> Result<PutBack> {
        let first = fresh_marks();
        if queued.is_empty() {
            return Ok(PutBack { queued, first, link: None });
        }
        let refused = |why: String| {
            Error::Refused(format!(
                "{} TCP connections waiting to be accepted cannot be put back in their listeners' queues: {why}",
                queued.len()
            ))
        };
        let kfunc = kfunc().map_err(refused)?;
        if queued.len() > 1 << 16 {
            return Err(refused("crs puts back 65536 at most".into()));
        }
        if std::fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies").is_ok_and(|s| s.trim() == "0") {
            return Err(refused("net.ipv4.tcp_syncookies is 0 here, and SYN cookies are how crs does it".into()));
        }
        let m = map(queued.len()).map_err(refused)?;
        for (i, q) in queued.iter().enumerate() {
            let c = &q.conn;
            let what = tcpconn::name(&c.local, &c.peer);
            let (local, peer) = ends(c)?;
            let min_mss = if local.is_ipv4() { 536 } else { 1220 };
            if c.mss < min_mss {
                return Err(Error::Refused(format!(
                    "{what} (waiting to be accepted) cannot be put back: its MSS ({}) is below the {min_mss} a SYN cookie takes",
                    c.mss
                )));
            }
            let t = tuple(peer, local);
            let mut value = [0u8; VALUE];
            value[..t.len()].copy_from_slice(&t);
            value[36..40].copy_from_slice(&(t.len() as u32).to_ne_bytes());
            value[40..].copy_from_slice(&attrs(c));
            set_entry(&m, mark_of(first, i), &value)?;
        }
        let prog = load(&program(m.as_raw_fd(), kfunc)).map_err(refused)?;
        let mut attr = [0u8; 64];
        attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&loopback()?.to_ne_bytes());
        attr[8..12].copy_from_slice(&BPF_TCX_INGRESS.to_ne_bytes());
        let link =
            bpf(BPF_LINK_CREATE, &mut attr).map_err(|e| Error::sys("bpf(BPF_LINK_CREATE, tcx ingress)", "lo", e))?;
        Ok(PutBack { queued, first, link: Some(link) })
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Puts each connection back in its listener's queue, in order, and checks it is there
    /// with all its bytes; then the program goes (on a thread of its own: its detachment
    /// takes a while too).
    pub fn send(self) -> Result<()> {
        let r = self.queued.iter().enumerate().try_for_each(|(i, q)| put_back(q, mark_of(self.first, i)));
        if let Some(link) = self.link {
            std::thread::spawn(move || drop(link));
        }
        r
    }
}

/// The local and peer addresses of `c` as its packets carry them.
fn ends(c: &Conn) -> Result<(SocketAddr, SocketAddr)> {
    match (inet::addr_of(&c.local), inet::addr_of(&c.peer)) {
        (Some(l), Some(p)) => Ok((plain(l), plain(p))),
        _ => Err(Error::Proc(format!("{}: an address crs does not know", tcpconn::name(&c.local, &c.peer)))),
    }
}

/// A raw socket for packets to `local` (an address of this node), marked `mark`, and the
/// address to send them to.
fn raw_to(local: SocketAddr, mark: u32, what: &str) -> Result<(OwnedFd, Vec<u8>)> {
    let family = if local.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: socket takes integers; the fd is owned at once.
    let raw = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
    if raw < 0 {
        return Err(sys("socket(SOCK_RAW, IPPROTO_RAW)", what));
    }
    // SAFETY: just made, ours alone.
    let raw = unsafe { OwnedFd::from_raw_fd(raw) };
    inet::set_int(raw.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MARK, mark as i32, what)?;
    Ok((raw, inet::sockaddr(SocketAddr::new(local.ip(), 0))))
}

/// Sends packet `p` through raw socket `raw` to `to`.
fn send_raw(raw: &OwnedFd, to: &[u8], p: &[u8], what: &str) -> Result<()> {
    // SAFETY: sendto reads p.len() bytes of a live packet and a live sockaddr.
    let n = unsafe {
        libc::sendto(raw.as_raw_fd(), p.as_ptr().cast(), p.len(), 0, to.as_ptr().cast(), to.len() as libc::socklen_t)
    };
    if n != p.len() as isize {
        return Err(sys("sendto (raw)", what));
    }
    Ok(())
}

/// Whether `a`'s address is one of this node's: a raw packet to it stays here (to another, it
/// would leave by a route, its source forged).
fn is_here(a: SocketAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(a.ip(), 0)).is_ok()
}

/// Sends one TCP segment with no data from `from` to `to`, which must be an address of this
/// node, marked MARK: crs's packet blocks let it through.
pub fn send_segment(
    from: SocketAddr,
    to: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    what: &str,
) -> Result<()> {
    if !is_here(to) {
        return Err(Error::Refused(format!("{what}: {} is not an address of this node", to.ip())));
    }
    let (raw, dst) = raw_to(to, MARK, what)?;
    send_raw(&raw, &dst, &packet(from, to, seq, ack, flags, window, &[]), what)
}

/// Sends connection `q`'s packets, marked `mark` for its part of the program, and checks it
/// is back.
fn put_back(q: &Queued, mark: u32) -> Result<()> {
    let c = &q.conn;
    let what = format!("{} (waiting to be accepted)", tcpconn::name(&c.local, &c.peer));
    let (local, peer) = ends(c)?;
    if !is_here(local) {
        return Err(Error::Refused(format!(
            "{what} cannot be put back in its listener's queue: {} is not an address of this node",
            local.ip()
        )));
    }
    let (raw, to) = raw_to(local, mark, &what)?;
    let send = |p: &[u8]| send_raw(&raw, &to, p, &what);
    let wscale = if c.options & tcpconn::TCPI_OPT_WSCALE != 0 { c.snd_wscale } else { 0 };
    let window = (c.window[1] >> wscale).min(u16::MAX as u32) as u16;
    let first = c.rcv_seq.wrapping_sub(q.fin as u32).wrapping_sub(c.received.len() as u32);
    // Pieces that fill the kernel's buffers well (a 32 KiB allocation each, headers and
    // all): the receive buffer counts what they take, not what they carry.
    let chunk = (c.mss as usize).clamp(536, 32_000);
    let data = &c.received;
    // The ACK that makes it, with the first bytes.
    send(&packet(peer, local, first, c.snd_seq, ACK, window, &data[..chunk.min(data.len())]))?;
    // Then the rest, as far as its window takes them: it opens as they come (the kernel
    // grows a new connection's window with what it receives), so what did not fit goes again
    // from where sock_diag says the queue ends, while that moves on.
    let want = data.len() as u32 + q.fin as u32;
    let (mut had, mut still) = (0u32, 0);
    let t = std::time::Instant::now();
    let got = loop {
        let got = inet::diag_one(c.family, &c.local, &c.peer)?;
        let rq = got.map_or(0, |g| g.1);
        if rq == want || got.is_none() && t.elapsed() > std::time::Duration::from_millis(500) {
            break got;
        }
        if rq > had || got.is_none() {
            (had, still) = (rq, 0);
        } else {
            still += 1;
            if still > 50 {
                break got;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let from = (rq as usize).min(data.len());
        let mut seq = first.wrapping_add(from as u32);
        if got.is_some() {
            for p in data[from..].chunks(chunk).take(64) {
                send(&packet(peer, local, seq, c.snd_seq, ACK | PSH, window, p))?;
                seq = seq.wrapping_add(p.len() as u32);
            }
        }
        if q.fin && seq == first.wrapping_add(data.len() as u32) {
            send(&packet(peer, local, seq, c.snd_seq, ACK | FIN, window, &[]))?;
        }
    };
    match got {
        Some((_, rq)) if rq == want => Ok(()),
        Some((_, rq)) => Err(Error::Proc(format!(
            "{what} is back in its listener's queue with {rq} of its {want} bytes received: the rest did not fit its new window"
        ))),
        None => Err(Error::Refused(format!(
            "{what} cannot be put back in its listener's queue: the listener made no connection of it (is it here, listening on that address?)"
        ))),
    }
}

/// Puts `queued` back in their listeners' queues in our network namespace.
pub fn put_back_all(queued: Vec<Queued>) -> Result<()> {
    PutBack::prepare(queued)?.send()
}

// The section.

pub fn encode(all: &[Queued]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(all.len() as u32);
    for q in all {
        e.u64(q.listener).u8(q.fin as u8);
        tcpconn::encode_conn(&mut e, &q.conn);
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<Queued>> {
    let mut d = Dec::new(b, at, "TCPQUEUED");
    let n = d.count(69)?;
    let mut all: Vec<Queued> = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = d.offset();
        let (listener, fin) = (d.u64()?, d.u8()?);
        let conn = tcpconn::decode_conn(&mut d)?;
        // Nothing accepted it: nothing wrote to it.
        if fin > 1 || !conn.sent.is_empty() || all.iter().any(|q| q.conn.ino == conn.ino) {
            return Err(d.bad_at(rec, format!("connection {}", conn.ino)));
        }
        all.push(Queued { listener, fin: fin == 1, conn });
    }
    d.finish()?;
    Ok(all)
}

pub fn describe(all: &[Queued]) -> Vec<String> {
    all.iter()
        .map(|q| {
            format!(
                "tcpqueued: {} {} waiting on listener {}: {} bytes received{}; mss {}",
                q.conn.ino,
                tcpconn::name(&q.conn.local, &q.conn.peer),
                q.listener,
                q.conn.received.len(),
                if q.fin { ", then its peer's FIN" } else { "" },
                q.conn.mss
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_program_jumps_within_itself_and_ends_in_one_exit() {
        let p = program(3, 7);
        assert_eq!(p.iter().filter(|&&x| x == insn(0x95, 0, 0, 0, 0)).count(), 1);
        assert_eq!(p.last(), Some(&insn(0x95, 0, 0, 0, 0)));
        for (i, x) in p.iter().enumerate() {
            let code = (*x & 0xff) as u8;
            if matches!(code, 0x05 | 0x15 | 0x55) {
                let to = i as i64 + 1 + (*x >> 16) as u16 as i16 as i64;
                assert!(to > i as i64 && to < p.len() as i64, "{i} jumps to {to}");
            }
        }
    }

    #[test]
    fn checksums_are_the_internets() {
        // RFC 1071's example: 0001 f203 f4f5 f6f7 sums to ddf2, complemented 220d.
        assert_eq!(checksum(&[&[0x00, 0x01, 0xf2], &[0x03, 0xf4, 0xf5, 0xf6, 0xf7]]), 0x220d);
    }

    /// Whether connections can be put back here: root (TCP_REPAIR) and BPF SYN cookies. Under
    /// CI, their lack fails the test rather than passing it.
    fn can_put_back() -> bool {
        // SAFETY: geteuid takes nothing.
        let why = if unsafe { libc::geteuid() } != 0 {
            "root only (TCP_REPAIR)".to_string()
        } else if let Err(why) = usable() {
            why.to_string()
        } else {
            return true;
        };
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("skipped: {why}");
        false
    }

    /// A connection taken out of a listener's queue and put back: the server accepts it with
    /// the bytes its client had sent, then the FIN; both ways carry on.
    #[test]
    fn a_queued_connection_goes_back_in_its_queue_with_its_bytes() {
        if !can_put_back() {
            return;
        }
        // IPv4, IPv6, and IPv4 to a listener taking both (the connection's addresses mapped).
        for (listen, at) in [("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("::", "127.0.0.1")] {
            round_trip(listen, at);
        }
    }

    fn round_trip(listen: &str, at: &str) {
        let l = std::net::TcpListener::bind((listen, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let mut c1 = std::net::TcpStream::connect((at, port)).unwrap();
        c1.write_all(b"sent while it waited\n").unwrap();
        let mut c2 = std::net::TcpStream::connect((at, port)).unwrap();
        c2.write_all(b"bye").unwrap();
        c2.shutdown(std::net::Shutdown::Write).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut back = Vec::new();
        for _ in 0..2 {
            let (s, _) = l.accept().unwrap();
            let fd: OwnedFd = s.into();
            tcpconn::repair_on(fd.as_raw_fd(), "test").unwrap();
            let (conn, fin) = tcpconn::collect_queued(fd.as_raw_fd(), 1 + back.len() as u64).unwrap();
            drop(fd); // in repair mode: silently
            back.push(Queued { listener: 0, fin, conn });
        }
        assert!(!back[0].fin && back[1].fin);
        put_back_all(back).unwrap();
        let (mut s1, _) = l.accept().unwrap();
        let mut buf = [0u8; 21];
        s1.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"sent while it waited\n");
        s1.write_all(b"answered\n").unwrap();
        let mut got = [0u8; 9];
        c1.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        c1.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"answered\n");
        c1.write_all(b"more").unwrap();
        let mut more = [0u8; 4];
        s1.read_exact(&mut more).unwrap();
        assert_eq!(&more, b"more");
        let (mut s2, _) = l.accept().unwrap();
        let mut all = Vec::new();
        s2.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"bye");
        s2.write_all(b"ok").unwrap();
        drop(s2);
        let mut end = Vec::new();
        c2.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        c2.read_to_end(&mut end).unwrap();
        assert_eq!(end, b"ok");
    }

    /// A hundred waiting connections, taken and put back in one program: the listener gives
    /// them back in the order they waited, each with its own bytes.
    #[test]
    fn a_hundred_waiting_connections_come_back_in_order() {
        if !can_put_back() {
            return;
        }
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let clients: Vec<std::net::TcpStream> = (0..100u8)
            .map(|i| {
                let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                c.write_all(&[i; 3]).unwrap();
                c
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut back = Vec::new();
        let mut order = Vec::new();
        for i in 0..100 {
            let (s, from) = l.accept().unwrap();
            order.push(from);
            let fd: OwnedFd = s.into();
            tcpconn::repair_on(fd.as_raw_fd(), "test").unwrap();
            let (conn, fin) = tcpconn::collect_queued(fd.as_raw_fd(), i).unwrap();
            back.push(Queued { listener: 0, fin, conn });
        }
        put_back_all(back).unwrap();
        for from in order {
            let (mut s, again) = l.accept().unwrap();
            assert_eq!(again, from);
            let mut b = [0u8; 3];
            s.read_exact(&mut b).unwrap();
            let i = clients.iter().position(|c| c.local_addr().unwrap() == from).unwrap() as u8;
            assert_eq!(b, [i; 3]);
        }
    }

    /// A client that sent MAX_WAITING bytes to a waiting connection: every byte comes back,
    /// in order.
    #[test]
    fn a_waiting_connection_with_the_most_bytes_comes_back_whole() {
        if !can_put_back() {
            return;
        }
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let block: Vec<u8> = (0..MAX_WAITING).map(|i| (i % 251) as u8).collect();
        c.write_all(&block).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (s, _) = l.accept().unwrap();
        let fd: OwnedFd = s.into();
        tcpconn::repair_on(fd.as_raw_fd(), "test").unwrap();
        let (conn, fin) = tcpconn::collect_queued(fd.as_raw_fd(), 1).unwrap();
        drop(fd);
        assert_eq!(conn.received.len(), block.len());
        put_back_all(vec![Queued { listener: 0, fin, conn }]).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut got = vec![0u8; block.len()];
        s.read_exact(&mut got).unwrap();
        assert!(got == block, "the bytes came back changed");
    }

    /// A connection whose address this node lacks is refused, no packet sent.
    #[test]
    fn a_connection_to_an_address_not_here_is_refused() {
        if !can_put_back() {
            return;
        }
        let at = |a: &str| inet::sockaddr(a.parse().unwrap());
        let conn = Conn {
            family: libc::AF_INET as u16,
            local: at("192.0.2.1:80"),
            peer: at("192.0.2.9:5000"),
            mss: 1460,
            ..Default::default()
        };
        let e = put_back_all(vec![Queued { listener: 0, fin: false, conn }]).unwrap_err().to_string();
        assert!(e.contains("192.0.2.1 is not an address of this node"), "{e}");
    }
}
