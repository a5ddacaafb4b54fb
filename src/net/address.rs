//! A service address that moves with its process (migrate --move-address): taken off its
//! interface at the source once the process is frozen and its image sent, put on the
//! destination's interface in the same subnet before the restored process runs, with a
//! gratuitous ARP so that the segment's neighbours send to its new place at once; put back
//! where it was on any failure (each side's `Held` does so when dropped). IPv4 only. Done
//! with iproute2's `ip`, in the caller's network namespace.

use crate::error::{Error, Result};
use std::net::Ipv4Addr;
use std::process::Command;

/// "10.0.0.100/24".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Address {
    pub ip: Ipv4Addr,
    pub prefix: u8,
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

impl Address {
    pub fn parse(s: &str) -> std::result::Result<Address, String> {
        let bad =
            || format!("{}: give an IPv4 address and its prefix length, as 10.0.0.100/24", crate::text::printable(s));
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().ok().filter(|p| (1..=32).contains(p)).ok_or_else(bad)?;
        Ok(Address { ip, prefix })
    }

    fn network(&self, ip: Ipv4Addr) -> u32 {
        u32::from(ip) & (u32::MAX << (32 - self.prefix as u32))
    }
}

fn ip(args: &[&str]) -> Result<String> {
    let o = Command::new("ip").args(args).output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Refused("moving an address takes ip (apt install iproute2)".into()),
        _ => Error::io("ip", e),
    })?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        return Err(Error::Proc(format!(
            "ip {}: {}",
            args.join(" "),
            crate::text::printable(err.lines().next().unwrap_or("failed"))
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// This node's IPv4 addresses: (interface, address, prefix).
fn addresses() -> Result<Vec<(String, Ipv4Addr, u8)>> {
    let out = ip(&["-o", "-4", "addr", "show"])?;
    let mut v = Vec::new();
    for l in out.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (Some(dev), Some(a)) = (f.get(1), f.iter().position(|w| *w == "inet").and_then(|i| f.get(i + 1))) else {
            continue;
        };
        if let Ok(a) = Address::parse(a) {
            v.push((dev.trim_end_matches(':').to_string(), a.ip, a.prefix));
        }
    }
    Ok(v)
}

/// The address, on this node: taken off (`put_back` on drop unless kept) or put on
/// (removed on drop unless kept).
pub struct Held {
    addr: Address,
    dev: String,
    /// Dropped unkept: put the address back on `dev` (true) or take it off again (false).
    undo_add: bool,
    armed: bool,
}

/// The interface that has `addr` here.
pub fn device_of(addr: Address) -> Result<String> {
    addresses()?.into_iter().find(|a| a.1 == addr.ip && a.2 == addr.prefix).map(|a| a.0).ok_or_else(|| {
        Error::Refused(format!("this node has no address {addr}: --move-address names one the process uses here"))
    })
}

/// Takes `addr` off the interface that has it here.
pub fn take_off(addr: Address) -> Result<Held> {
    let dev = device_of(addr)?;
    ip(&["addr", "del", &addr.to_string(), "dev", &dev])?;
    Ok(Held { addr, dev, undo_add: true, armed: true })
}

/// Puts `addr` on the interface that has an address of its subnet here, and announces it.
pub fn put_on(addr: Address) -> Result<Held> {
    let all = addresses()?;
    if all.iter().any(|a| a.1 == addr.ip) {
        return Err(Error::Refused(format!("{} is already on this node", addr.ip)));
    }
    let dev = all
        .into_iter()
        .find(|a| a.2 == addr.prefix && addr.network(a.1) == addr.network(addr.ip))
        .map(|a| a.0)
        .ok_or_else(|| Error::Refused(format!("this node has no interface on the subnet of {addr}")))?;
    ip(&["addr", "add", &addr.to_string(), "dev", &dev])?;
    let held = Held { addr, dev, undo_add: false, armed: true };
    gratuitous_arp(&held.dev, addr.ip)?;
    Ok(held)
}

impl Held {
    /// The move is done: leave the address where it is now.
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.armed {
            let verb = if self.undo_add { "add" } else { "del" };
            let r = ip(&["addr", verb, &self.addr.to_string(), "dev", &self.dev]);
            if self.undo_add {
                let _ = r.and_then(|_| gratuitous_arp(&self.dev, self.addr.ip));
            }
        }
    }
}

/// Broadcasts an ARP request for `addr` from `addr` on `dev`: its neighbours learn our MAC
/// for it.
fn gratuitous_arp(dev: &str, addr: Ipv4Addr) -> Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let path = format!("/sys/class/net/{dev}/address");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mac: Vec<u8> = text.trim().split(':').filter_map(|h| u8::from_str_radix(h, 16).ok()).collect();
    if mac.len() != 6 {
        return Err(Error::Proc(format!("{path}: not an Ethernet address")));
    }
    let name = std::ffi::CString::new(dev).map_err(|_| Error::Proc(format!("interface {dev:?}")))?;
    // SAFETY: if_nametoindex reads a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(Error::sys("if_nametoindex", dev, nix::errno::Errno::last()));
    }
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: socket takes integers; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto as i32) };
    if raw < 0 {
        return Err(Error::sys("socket(AF_PACKET)", dev, nix::errno::Errno::last()));
    }
    // SAFETY: just made, ours alone.
    let s = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&addr.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&addr.octets());
    // SAFETY: an all-zero sockaddr_ll is valid; its fields are set below.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = proto;
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    for _ in 0..2 {
        // SAFETY: sendto reads the frame and the address, both live.
        let n = unsafe {
            libc::sendto(
                s.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(Error::sys("sendto (gratuitous ARP)", dev, nix::errno::Errno::last()));
        }
    }
    Ok(())
}
