//! A service address that moves with its process (migrate --move-address): taken off its
//! interface at the source once the process is frozen and its image sent, put on the
//! destination's interface in the same subnet before the restored process runs, with a
//! gratuitous ARP (IPv4) or an unsolicited neighbour advertisement (IPv6) so that the
//! segment's neighbours send to its new place at once; put back where it was on any failure
//! (each side's `Held` does so when dropped). Done with iproute2's `ip`, in the caller's
//! network namespace; an IPv6 address is added without duplicate address detection (it has
//! just left the source), so that it serves at once.

use crate::error::{Error, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

/// "10.0.0.100/24", "fd00::100/64".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Address {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

impl Address {
    pub fn parse(s: &str) -> std::result::Result<Address, String> {
        let bad = || {
            format!(
                "{}: give an address and its prefix length, as 10.0.0.100/24 or fd00::100/64",
                crate::text::printable(s)
            )
        };
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let most = if ip.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix.parse().ok().filter(|p| (1..=most).contains(p)).ok_or_else(bad)?;
        Ok(Address { ip, prefix })
    }

    /// Whether `ip` is in this address's subnet.
    fn same_subnet(&self, ip: IpAddr) -> bool {
        // Both as 128 bits, an IPv4 address in the top 32.
        let bits = |a: IpAddr| match a {
            IpAddr::V4(v) => (u32::from(v) as u128) << 96,
            IpAddr::V6(v) => u128::from(v),
        };
        let mask = u128::MAX << (128 - self.prefix as u32);
        self.ip.is_ipv4() == ip.is_ipv4() && bits(ip) & mask == bits(self.ip) & mask
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

/// This node's addresses: (interface, address, prefix).
fn addresses() -> Result<Vec<(String, IpAddr, u8)>> {
    let out = ip(&["-o", "addr", "show"])?;
    let mut v = Vec::new();
    for l in out.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let at = f.iter().position(|w| *w == "inet" || *w == "inet6");
        let (Some(dev), Some(a)) = (f.get(1), at.and_then(|i| f.get(i + 1))) else {
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
        .find(|a| a.2 == addr.prefix && addr.same_subnet(a.1))
        .map(|a| a.0)
        .ok_or_else(|| Error::Refused(format!("this node has no interface on the subnet of {addr}")))?;
    add(addr, &dev)?;
    let held = Held { addr, dev, undo_add: false, armed: true };
    announce(&held.dev, addr.ip)?;
    Ok(held)
}

/// Puts `addr` on `dev`; an IPv6 one without duplicate address detection.
fn add(addr: Address, dev: &str) -> Result<()> {
    let a = addr.to_string();
    match addr.ip {
        IpAddr::V4(_) => ip(&["addr", "add", &a, "dev", dev]).map(drop),
        IpAddr::V6(_) => ip(&["addr", "add", &a, "dev", dev, "nodad"]).map(drop),
    }
}

/// Tells the segment `addr` is on `dev` now.
fn announce(dev: &str, addr: IpAddr) -> Result<()> {
    match addr {
        IpAddr::V4(v) => gratuitous_arp(dev, v),
        IpAddr::V6(v) => unsolicited_na(dev, v),
    }
}

impl Held {
    /// The move is done: leave the address where it is now. Where it was put on, say so
    /// again, twice, over the next half second (as keepalived repeats its gratuitous ARPs): a
    /// neighbour that was probing the old place when the first announcement came, and got its
    /// answer after it, learns the new place all the same. (Where it was taken off, nothing
    /// is said: an announcement from there would send the neighbours back to a node that no
    /// longer has it, until their entries went stale: a 13 s pause for the clients.)
    pub fn keep(mut self) {
        self.armed = false;
        if self.undo_add {
            return;
        }
        for pause in [100, 400] {
            std::thread::sleep(std::time::Duration::from_millis(pause));
            if let Err(e) = announce(&self.dev, self.addr.ip) {
                log::info!("announcing {} again: {e}", self.addr);
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.armed {
            if self.undo_add {
                let _ = add(self.addr, &self.dev).and_then(|_| announce(&self.dev, self.addr.ip));
            } else {
                let _ = ip(&["addr", "del", &self.addr.to_string(), "dev", &self.dev]);
            }
        }
    }
}

/// The Ethernet address and the index of interface `dev`.
fn link(dev: &str) -> Result<(Vec<u8>, u32)> {
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
    Ok((mac, index))
}

fn sockaddr6(addr: Ipv6Addr, scope: u32) -> libc::sockaddr_in6 {
    libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as u16,
        sin6_port: 0,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr { s6_addr: addr.octets() },
        sin6_scope_id: scope,
    }
}

/// Sends an unsolicited neighbour advertisement (override set) for `addr`, from it, on `dev`
/// to all nodes: its neighbours learn our MAC for it.
fn unsolicited_na(dev: &str, addr: Ipv6Addr) -> Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let (mac, index) = link(dev)?;
    // SAFETY: socket takes integers; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMPV6) };
    if raw < 0 {
        return Err(Error::sys("socket(ICMPv6)", dev, nix::errno::Errno::last()));
    }
    // SAFETY: just made, ours alone.
    let s = unsafe { OwnedFd::from_raw_fd(raw) };
    let set = |name: i32, v: i32| {
        // SAFETY: setsockopt reads one int.
        unsafe { libc::setsockopt(s.as_raw_fd(), libc::IPPROTO_IPV6, name, (&v as *const i32).cast(), 4) }
    };
    if set(libc::IPV6_MULTICAST_HOPS, 255) != 0 || set(libc::IPV6_MULTICAST_IF, index as i32) != 0 {
        return Err(Error::sys("setsockopt(IPV6_MULTICAST_*)", dev, nix::errno::Errno::last()));
    }
    let from = sockaddr6(addr, 0);
    // SAFETY: bind reads a live sockaddr_in6 (the address is on this node by now).
    if unsafe { libc::bind(s.as_raw_fd(), (&from as *const libc::sockaddr_in6).cast(), 28) } != 0 {
        return Err(Error::sys("bind (neighbour advertisement)", addr.to_string(), nix::errno::Errno::last()));
    }
    // Type 136, code 0, the checksum (the kernel's), flags: override; the target; the target
    // link-layer address option.
    let mut na = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    na.extend_from_slice(&addr.octets());
    na.extend_from_slice(&[2, 1]);
    na.extend_from_slice(&mac);
    let all = sockaddr6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), index);
    for _ in 0..2 {
        // SAFETY: sendto reads the message and a live sockaddr_in6.
        let n = unsafe {
            libc::sendto(s.as_raw_fd(), na.as_ptr().cast(), na.len(), 0, (&all as *const libc::sockaddr_in6).cast(), 28)
        };
        if n < 0 {
            return Err(Error::sys("sendto (neighbour advertisement)", dev, nix::errno::Errno::last()));
        }
    }
    Ok(())
}

/// Broadcasts an ARP request for `addr` from `addr` on `dev`: its neighbours learn our MAC
/// for it.
fn gratuitous_arp(dev: &str, addr: Ipv4Addr) -> Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let (mac, index) = link(dev)?;
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
