//! Listening sockets that survive a crash of the network domain.
//!
//! As systemd's fd store keeps a service's listeners across a restart, the supervisor
//! (`virtuos-redirect domains`) keeps a duplicate of every socket this domain makes listen
//! (and of every bound datagram socket). The two talk over a Unix `SOCK_SEQPACKET` pair the
//! supervisor hands the domain (`--fd-store FD`), in fixed [`Record`]s:
//!
//! * domain → supervisor: `KEEP key uid` with the socket attached (SCM_RIGHTS) when a socket
//!   starts listening; `FORGET key` once no session holds it any more (swept every
//!   [`SWEEP`]), so nothing outlives its last holder;
//! * supervisor → domain, waiting in the pair before the domain starts: `RESTORE key uid` with
//!   each socket it keeps, then `END`.
//!
//! Each kept socket has a 64-bit random *key* that the client learns when its `listen`
//! succeeds ([`abi::Opcode::Listen`]'s `aux[0]`). A client that reconnects after the domain
//! restarted redeems its key ([`abi::Opcode::Reclaim`]) and gets the same socket under a new
//! handle: connections that arrived meanwhile wait in the kernel's accept queue. A key is a
//! 64-bit random capability, as the fd itself is: it lives only in the memory of processes
//! that held the socket (and their shims pass it on exactly as the fd is passed).
//! Restored sockets nobody reclaims within [`RESTORE_GRACE`] are dropped and forgotten.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use service::fdtable::{Handle, OpenFd};
pub use xen_transport::fdstore::{recv, send, Op, Record};

/// How often sockets no session holds any more are forgotten.
pub const SWEEP: Duration = Duration::from_millis(500);
/// How long a restored socket waits for its first reclaim.
pub const RESTORE_GRACE: Duration = Duration::from_secs(30);

struct Kept {
    /// The socket while a session holds it.
    weak: Weak<OpenFd>,
    /// A restored socket is held here until its grace ends (nobody else holds it yet).
    strong: Option<(Handle, Instant)>,
}

/// This domain's side of the store.
pub struct Store {
    sock: Option<OwnedFd>,
    kept: Mutex<HashMap<u64, Kept>>,
}

impl Store {
    /// No supervisor: nothing is kept (listeners die with the domain).
    pub fn none() -> Store {
        Store {
            sock: None,
            kept: Mutex::new(HashMap::new()),
        }
    }

    /// The store on `sock`: reads the sockets kept from a previous run (until `END`).
    pub fn open(sock: OwnedFd) -> std::io::Result<Store> {
        let mut kept = HashMap::new();
        loop {
            match recv(sock.as_fd())? {
                Some((r, Some(fd))) if r.op == Op::Restore => {
                    let h: Handle = Arc::new(OpenFd::from(fd));
                    kept.insert(
                        r.key,
                        Kept {
                            weak: Arc::downgrade(&h),
                            strong: Some((h, Instant::now())),
                        },
                    );
                }
                Some((r, _)) if r.op == Op::End => break,
                Some(_) => continue,
                None => break,
            }
        }
        tracing::info!(
            restored = kept.len(),
            "listening sockets restored from the fd store"
        );
        Ok(Store {
            sock: Some(sock),
            kept: Mutex::new(kept),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Kept>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether sockets are kept at all.
    pub fn enabled(&self) -> bool {
        self.sock.is_some()
    }

    /// Keeps `fd` (which just started listening, for `uid`); returns its key (0: not kept).
    pub fn keep(&self, fd: &Handle, uid: u32) -> u64 {
        let Some(sock) = &self.sock else { return 0 };
        let mut kept = self.lock();
        if let Some((k, _)) = kept
            .iter()
            .find(|(_, k)| k.weak.upgrade().is_some_and(|h| Arc::ptr_eq(&h, fd)))
        {
            return *k;
        }
        let key = loop {
            let k = getrandom::u64().unwrap_or(0);
            if k != 0 && !kept.contains_key(&k) {
                break k;
            }
        };
        let rec = Record {
            op: Op::Keep,
            uid,
            key,
        };
        if let Err(e) = send(sock.as_fd(), rec, Some(fd.as_fd())) {
            tracing::warn!(%e, "fd store: cannot keep a listening socket; it will not survive a restart");
            return 0;
        }
        kept.insert(
            key,
            Kept {
                weak: Arc::downgrade(fd),
                strong: None,
            },
        );
        key
    }

    /// The kept socket `key`: `ENOENT` for an unknown key. The key is the capability, as an
    /// fd is: only processes that held the socket learnt it (nginx's workers, which dropped
    /// to another uid after their root master made the socket listen, take it back too).
    pub fn reclaim(&self, key: u64) -> Result<Handle, i32> {
        let kept = self.lock();
        let k = kept.get(&key).ok_or(libc::ENOENT)?;
        k.weak.upgrade().ok_or(libc::ENOENT)
    }

    /// The key of `fd`, if it is kept.
    pub fn key_of(&self, fd: &Handle) -> u64 {
        self.lock()
            .iter()
            .find(|(_, k)| k.weak.upgrade().is_some_and(|h| Arc::ptr_eq(&h, fd)))
            .map_or(0, |(key, _)| *key)
    }

    /// Forgets the sockets no session holds any more (and restored ones whose grace ended);
    /// returns how many.
    pub fn sweep(&self) -> usize {
        let Some(sock) = &self.sock else { return 0 };
        let mut kept = self.lock();
        for k in kept.values_mut() {
            if k.strong
                .as_ref()
                .is_some_and(|(_, t)| t.elapsed() >= RESTORE_GRACE)
            {
                k.strong = None;
            }
        }
        let gone: Vec<u64> = kept
            .iter()
            .filter(|(_, k)| k.weak.strong_count() == 0)
            .map(|(key, _)| *key)
            .collect();
        for key in &gone {
            kept.remove(key);
            let rec = Record {
                op: Op::Forget,
                uid: 0,
                key: *key,
            };
            if let Err(e) = send(sock.as_fd(), rec, None) {
                tracing::warn!(%e, "fd store: cannot forget a closed socket");
            }
        }
        gone.len()
    }

    /// Sockets kept now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (OwnedFd, OwnedFd) {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    fn listener() -> Handle {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Arc::new(OpenFd::from(OwnedFd::from(l)))
    }

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let r = Record {
            op: Op::Keep,
            uid: 1000,
            key: 0xdead_beef,
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode(&[0; 3]), None);
        let mut bad = r.encode();
        bad[0] = 9;
        assert_eq!(Record::decode(&bad), None);
    }

    #[test]
    fn kept_sockets_are_restored_reclaimed_and_forgotten() {
        let (dom, sup) = pair();
        // Nothing from a previous run.
        send(
            sup.as_fd(),
            Record {
                op: Op::End,
                uid: 0,
                key: 0,
            },
            None,
        )
        .unwrap();
        let store = Store::open(dom).unwrap();
        let l = listener();
        let key = store.keep(&l, 1000);
        assert_ne!(key, 0);
        assert_eq!(store.keep(&l, 1000), key, "kept once");
        let (rec, fd) = recv(sup.as_fd()).unwrap().unwrap();
        assert_eq!((rec.op, rec.uid, rec.key), (Op::Keep, 1000, key));
        let fd = fd.expect("the socket travels with KEEP");
        assert!(Arc::ptr_eq(&store.reclaim(key).unwrap(), &l));
        assert_eq!(store.reclaim(7).unwrap_err(), libc::ENOENT);
        assert_eq!(store.sweep(), 0, "still held");
        drop(l);
        assert_eq!(store.sweep(), 1);
        let (rec, _) = recv(sup.as_fd()).unwrap().unwrap();
        assert_eq!((rec.op, rec.key), (Op::Forget, key));

        // A new run gets the kept socket back under the same key.
        let (dom2, sup2) = pair();
        send(
            sup2.as_fd(),
            Record {
                op: Op::Restore,
                uid: 1000,
                key,
            },
            Some(fd.as_fd()),
        )
        .unwrap();
        send(
            sup2.as_fd(),
            Record {
                op: Op::End,
                uid: 0,
                key: 0,
            },
            None,
        )
        .unwrap();
        let store = Store::open(dom2).unwrap();
        assert_eq!(store.len(), 1);
        let h = store.reclaim(key).unwrap();
        assert_eq!(store.key_of(&h), key);
        assert_eq!(store.sweep(), 0, "held through its grace");
    }
}
