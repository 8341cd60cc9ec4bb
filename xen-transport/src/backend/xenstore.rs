//! A minimal xenstore client and the rendezvous record of the `xen` backend.
//!
//! Speaks the xenstore wire protocol (`xen/include/public/io/xs_wire.h`: a 16-byte header
//! `type, req_id, tx_id, len` followed by `len` bytes) over `/dev/xen/xenbus` (any domain whose
//! kernel runs the xenbus driver), `/proc/xen/xenbus` (older kernels, with xenfs mounted) or
//! the `xenstored` Unix socket in dom0. Only what the rendezvous needs: read, write, remove,
//! list, and waiting for a key by polling.
//!
//! The rendezvous: the service domain (server side of the transport) publishes under its own
//! `data/` directory (writable by the guest; libxl creates it) the grant references of the
//! region it shares with a peer, the unbound event-channel port the peer binds to, and a
//! `state`; the peer reads them from `/local/domain/<server domid>/data/<name>/`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::TransportError;

/// Message types of the wire protocol (the subset used here).
mod op {
    pub const DIRECTORY: u32 = 1;
    pub const READ: u32 = 2;
    pub const WRITE: u32 = 11;
    pub const RM: u32 = 13;
    pub const ERROR: u32 = 16;
}

/// Where a xenstore connection can be opened, in order of preference.
pub const XENBUS_DEVICES: [&str; 2] = ["/dev/xen/xenbus", "/proc/xen/xenbus"];
/// The `xenstored` socket (dom0 only).
pub const XENSTORED_SOCKET: &str = "/run/xenstored/socket";

/// The largest payload xenstored accepts (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;

enum Conn {
    Dev(File),
    Sock(UnixStream),
}

/// Sends `msg` and returns the reply `(type, payload)` to request `req_id`, skipping other
/// messages (watch events).
fn exchange<S: Read + Write>(s: &mut S, msg: &[u8], req_id: u32) -> io::Result<(u32, Vec<u8>)> {
    // The xenbus device wants a whole message per write.
    s.write_all(msg)?;
    loop {
        let mut hdr = [0u8; 16];
        s.read_exact(&mut hdr)?;
        let word = |i: usize| {
            u32::from_le_bytes([hdr[i * 4], hdr[i * 4 + 1], hdr[i * 4 + 2], hdr[i * 4 + 3]])
        };
        let (ty, rid, len) = (word(0), word(1), word(3) as usize);
        if len > PAYLOAD_MAX + 16 {
            return Err(io::Error::other(format!("xenstore reply of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body)?;
        if rid == req_id {
            return Ok((ty, body));
        }
    }
}

/// One connection to xenstore.
pub struct XenStore {
    conn: Conn,
    next_req: u32,
}

/// A xenstore error reply (`ENOENT`, `EACCES`, ...), or a transport failure.
fn xs_err(path: &str, what: String) -> TransportError {
    TransportError::Xen(io::Error::other(format!("xenstore {path}: {what}")))
}

impl XenStore {
    /// Opens the first xenstore connection available here.
    pub fn open() -> Result<XenStore, TransportError> {
        let mut last = None;
        for dev in XENBUS_DEVICES {
            match OpenOptions::new().read(true).write(true).open(dev) {
                Ok(f) => {
                    return Ok(XenStore {
                        conn: Conn::Dev(f),
                        next_req: 1,
                    })
                }
                Err(e) => last = Some((dev, e)),
            }
        }
        match UnixStream::connect(XENSTORED_SOCKET) {
            Ok(s) => Ok(XenStore {
                conn: Conn::Sock(s),
                next_req: 1,
            }),
            Err(_) => {
                let (path, source) = last.expect("XENBUS_DEVICES is not empty");
                Err(TransportError::XenUnavailable { path, source })
            }
        }
    }

    /// Sends one request and returns the reply payload; an `XS_ERROR` reply becomes an error
    /// naming the xenstore error (`ENOENT`, ...).
    fn request(&mut self, ty: u32, payload: &[u8], path: &str) -> Result<Vec<u8>, TransportError> {
        if payload.len() > PAYLOAD_MAX {
            return Err(xs_err(path, format!("payload of {} bytes", payload.len())));
        }
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        let mut msg = Vec::with_capacity(16 + payload.len());
        for w in [ty, req_id, 0, payload.len() as u32] {
            msg.extend_from_slice(&w.to_le_bytes());
        }
        msg.extend_from_slice(payload);
        let (rty, body) = match &mut self.conn {
            Conn::Dev(f) => exchange(f, &msg, req_id),
            Conn::Sock(u) => exchange(u, &msg, req_id),
        }
        .map_err(TransportError::Xen)?;
        if rty == op::ERROR {
            let name = String::from_utf8_lossy(&body)
                .trim_end_matches('\0')
                .to_string();
            return Err(xs_err(path, name));
        }
        Ok(body)
    }

    /// The value at `path`, or `None` when it does not exist.
    pub fn read(&mut self, path: &str) -> Result<Option<String>, TransportError> {
        match self.request(op::READ, &nul_terminated(path), path) {
            Ok(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            Err(TransportError::Xen(e)) if e.to_string().ends_with("ENOENT") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` at `path` (creating parents).
    pub fn write(&mut self, path: &str, value: &str) -> Result<(), TransportError> {
        let mut p = nul_terminated(path);
        p.extend_from_slice(value.as_bytes());
        self.request(op::WRITE, &p, path).map(drop)
    }

    /// Removes `path` and everything below it.
    pub fn rm(&mut self, path: &str) -> Result<(), TransportError> {
        match self.request(op::RM, &nul_terminated(path), path) {
            Ok(_) => Ok(()),
            Err(TransportError::Xen(e)) if e.to_string().ends_with("ENOENT") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The children of `path`.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, TransportError> {
        let v = self.request(op::DIRECTORY, &nul_terminated(path), path)?;
        Ok(v.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }

    /// Polls `path` until `pred` accepts its value or `timeout` passes.
    pub fn wait_for(
        &mut self,
        path: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, TransportError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.read(path)? {
                if pred(&v) {
                    return Ok(v);
                }
            }
            if Instant::now() >= deadline {
                return Err(xs_err(path, format!("not ready after {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// This domain's id (the `domid` key of its home directory).
    pub fn own_domid(&mut self) -> Result<u16, TransportError> {
        let v = self
            .read("domid")?
            .ok_or_else(|| xs_err("domid", "missing".into()))?;
        v.trim()
            .parse()
            .map_err(|_| xs_err("domid", format!("not a domain id: {v:?}")))
    }
}

fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// What a server domain publishes for one peer: its domain id, the grant references of the
/// region (in page order) and the unbound event-channel port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendezvous {
    /// The domain that granted the pages and owns the port.
    pub domid: u16,
    /// Grant references, one per page.
    pub refs: Vec<u32>,
    /// The event-channel port to bind interdomain.
    pub port: u32,
}

/// The directory of rendezvous `name` of domain `domid`.
pub fn rendezvous_dir(domid: u16, name: &str) -> String {
    format!("/local/domain/{domid}/data/{name}")
}

impl Rendezvous {
    /// Writes the record under the server's `data/<name>` and sets `state` to `ready` last.
    pub fn publish(&self, xs: &mut XenStore, name: &str) -> Result<(), TransportError> {
        let dir = rendezvous_dir(self.domid, name);
        let refs: Vec<String> = self.refs.iter().map(u32::to_string).collect();
        xs.write(&format!("{dir}/refs"), &refs.join(","))?;
        xs.write(&format!("{dir}/port"), &self.port.to_string())?;
        xs.write(&format!("{dir}/pages"), &self.refs.len().to_string())?;
        xs.write(&format!("{dir}/state"), "ready")
    }

    /// Waits until domain `domid` published rendezvous `name`, and reads it.
    pub fn wait(
        xs: &mut XenStore,
        domid: u16,
        name: &str,
        timeout: Duration,
    ) -> Result<Rendezvous, TransportError> {
        let dir = rendezvous_dir(domid, name);
        xs.wait_for(&format!("{dir}/state"), timeout, |v| v == "ready")?;
        let get = |xs: &mut XenStore, k: &str| -> Result<String, TransportError> {
            xs.read(&format!("{dir}/{k}"))?
                .ok_or_else(|| xs_err(&format!("{dir}/{k}"), "missing".into()))
        };
        let refs = parse_refs(&get(xs, "refs")?)
            .ok_or_else(|| xs_err(&format!("{dir}/refs"), "not a list of grant refs".into()))?;
        let port = get(xs, "port")?
            .trim()
            .parse()
            .map_err(|_| xs_err(&format!("{dir}/port"), "not a port".into()))?;
        Ok(Rendezvous { domid, refs, port })
    }
}

/// Parses `"8,9,10"` into grant references.
pub fn parse_refs(s: &str) -> Option<Vec<u32>> {
    let v: Option<Vec<u32>> = s.split(',').map(|r| r.trim().parse().ok()).collect();
    v.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_round_trip() {
        assert_eq!(parse_refs("8,9,10"), Some(vec![8, 9, 10]));
        assert_eq!(parse_refs("8"), Some(vec![8]));
        assert_eq!(parse_refs(""), None);
        assert_eq!(parse_refs("8,x"), None);
    }

    #[test]
    fn rendezvous_lives_in_the_servers_data_dir() {
        assert_eq!(rendezvous_dir(3, "virtuos"), "/local/domain/3/data/virtuos");
    }
}
