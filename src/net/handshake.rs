//! The handshake that opens a migration session over any byte stream: the version, then
//! mutual proof of the cluster key, after which every frame is sealed.

use super::{Code, Conn, HELLO_KEYED, Kind, NONCE_LEN, NetError, PROTOCOL_VERSION, Result, mac, random};
use super::{hello, parse_hello};
use std::io::{Read, Write};

const CLIENT_PROOF: &str = "crs client";
const SERVER_PROOF: &str = "crs server";
const SESSION: &str = "crs session";

/// Client side of the handshake. With a key, the server must prove it knows it too.
pub fn client_hello<S: Read + Write>(c: &mut Conn<S>, key: Option<&[u8; 32]>) -> Result<()> {
    let cn: [u8; NONCE_LEN] = random()?;
    c.send(Kind::Hello, &hello(if key.is_some() { HELLO_KEYED } else { 0 }, &cn))?;
    let mut buf = Vec::new();
    // What answers first with anything but a frame (a web server's "HTTP/1.1 400", say) is no
    // restartd.
    c.expect(Kind::Hello, &mut buf).map_err(|e| match e {
        NetError::Protocol(why) => NetError::Protocol(format!(
            "the peer does not answer as a restartd ({why}): is restartd what listens on that port?"
        )),
        e => e,
    })?;
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
    if key.is_some() && flags & HELLO_KEYED == 0 {
        // Also said instead of our Hello.
        let msg = "this restartd requires the cluster key: give migrate --key";
        let _ = c.send_error(Code::Auth, msg);
        return Err(NetError::Protocol(msg.into()));
    }
    let sn: [u8; NONCE_LEN] = random()?;
    c.send(Kind::Hello, &hello(if key.is_some() { HELLO_KEYED } else { 0 }, &sn))?;
    let Some(k) = key else { return Ok(()) };
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
        // The keyless client hears why, from an Error frame sent instead of the Hello.
        assert!(
            matches!(c, Err(NetError::Remote(Code::Auth, ref t)) if t.contains("requires the cluster key")),
            "{c:?}"
        );
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
