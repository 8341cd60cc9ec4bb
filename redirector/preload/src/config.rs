//! The shim's configuration, from the environment `virtuos-redirect run` sets up.
//!
//! It is read exactly once, by the library's ELF constructor ([`init`]), straight from
//! `environ` into fixed buffers: nothing allocates and nothing is initialised lazily, so an
//! interposed call made from inside the program's own allocator (jemalloc and tcmalloc open
//! files while they initialise) or from a signal handler never runs initialisation code.
//! Until the constructor has run, [`get`] returns an empty configuration: every call then
//! stays local, which is what the program would see without the shim.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

use xen_transport::SpinPolicy;

use crate::paths::{self, PathBuf};

/// Environment variable naming the storage domain's socket.
pub const ENV_STORAGE: &str = "VIRTUOS_STORAGE";
/// Environment variable naming the mount prefix routed to the storage domain.
pub const ENV_MOUNT: &str = "VIRTUOS_MOUNT";
/// Environment variable naming the network domain's socket.
pub const ENV_NET: &str = "VIRTUOS_NET";
/// Environment variable that asks for the exit report of routed and trapped calls.
pub const ENV_REPORT: &str = "VIRTUOS_REPORT";
/// `0` turns receiving ahead off.
pub const ENV_STREAMS: &str = "VIRTUOS_STREAMS";

/// What the shim routes where.
pub struct Config {
    /// Storage domain socket.
    pub storage_sock: Option<PathBuf>,
    /// Normalised absolute mount prefix.
    pub mount: Option<PathBuf>,
    /// Network domain socket: AF_INET/AF_INET6 sockets go there.
    pub net_sock: Option<PathBuf>,
    /// Print the call counts at exit.
    pub report: bool,
    /// The client's spin bounds (`VIRTUOS_CLIENT_SPIN_MIN_NS`/`_MAX_NS`).
    pub spin: SpinPolicy,
    /// Whether the network domain receives ahead into streams for this process (unless
    /// `VIRTUOS_STREAMS=0`: every recv a round trip, for comparison).
    pub streams: bool,
    /// `virtuos-redirect`, to hand a static program this one execs to the supervised mode.
    pub redirect: Option<PathBuf>,
    /// `NAME=value\0` of each setting in [`CARRIED`] this process started with: an exec puts
    /// back those the program dropped from the new program's environment.
    pub carried_env: Vec<Vec<u8>>,
    /// The shim library's own path (one element of `LD_PRELOAD`), empty if unknown.
    pub lib: Vec<u8>,
}

/// The environment entries that make a program redirected (see [`Config::carried_env`]).
pub const CARRIED: [&str; 9] = [
    ENV_STORAGE,
    ENV_MOUNT,
    ENV_NET,
    ENV_REPORT,
    "VIRTUOS_REDIRECT",
    "VIRTUOS_CLIENT_SPIN_MIN_NS",
    "VIRTUOS_CLIENT_SPIN_MAX_NS",
    ENV_STREAMS,
    "LD_PRELOAD",
];
/// Length of [`CARRIED`].
pub const MAX_CARRIED: usize = CARRIED.len();

impl Config {
    const EMPTY: Config = Config {
        storage_sock: None,
        mount: None,
        net_sock: None,
        report: false,
        spin: SpinPolicy::CLIENT,
        streams: true,
        redirect: None,
        carried_env: Vec::new(),
        lib: Vec::new(),
    };

    /// Builds the configuration from `lookup` (an environment reader).
    pub fn from_lookup<'a>(lookup: impl Fn(&str) -> Option<&'a [u8]>) -> Config {
        let storage_sock = lookup(ENV_STORAGE)
            .filter(|v| !v.is_empty())
            .and_then(PathBuf::from_bytes);
        let mount = lookup(ENV_MOUNT)
            .filter(|b| b.first() == Some(&b'/'))
            .and_then(|b| paths::normalize(b).ok());
        let mount = if storage_sock.is_some() { mount } else { None };
        Config {
            storage_sock,
            mount,
            net_sock: lookup(ENV_NET)
                .filter(|v| !v.is_empty())
                .and_then(PathBuf::from_bytes),
            report: lookup(ENV_REPORT).is_some(),
            streams: lookup(ENV_STREAMS) != Some(&b"0"[..]),
            redirect: lookup("VIRTUOS_REDIRECT")
                .filter(|v| v.first() == Some(&b'/'))
                .and_then(PathBuf::from_bytes),
            spin: SpinPolicy::CLIENT.with_overrides(
                ns(lookup("VIRTUOS_CLIENT_SPIN_MIN_NS")),
                ns(lookup("VIRTUOS_CLIENT_SPIN_MAX_NS")),
            ),
            carried_env: CARRIED
                .iter()
                .filter_map(|name| {
                    let v = lookup(name)?;
                    let mut e = Vec::with_capacity(name.len() + v.len() + 2);
                    e.extend_from_slice(name.as_bytes());
                    e.push(b'=');
                    e.extend_from_slice(v);
                    e.push(0);
                    Some(e)
                })
                .collect(),
            lib: Vec::new(),
        }
    }
}

fn ns(v: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(v?).ok()?.parse().ok()
}

struct Slot(UnsafeCell<Config>);
// SAFETY: written once by the constructor before READY is published (Release); read only
// after READY is seen (Acquire), never written again.
unsafe impl Sync for Slot {}

static CONFIG: Slot = Slot(UnsafeCell::new(Config::EMPTY));
static EMPTY: Config = Config::EMPTY;
static READY: AtomicBool = AtomicBool::new(false);

/// The configuration (empty until the constructor has read it).
pub fn get() -> &'static Config {
    if READY.load(Ordering::Acquire) {
        // SAFETY: see `Slot`: published by `init` and immutable since.
        unsafe { &*CONFIG.0.get() }
    } else {
        &EMPTY
    }
}

/// Whether the constructor has read the configuration.
pub fn ready() -> bool {
    READY.load(Ordering::Acquire)
}

extern "C" {
    static environ: *const *const libc::c_char;
}

/// The value of `name` in the process's environment, read in place.
pub fn env(name: &str) -> Option<&'static [u8]> {
    // SAFETY: `environ` is libc's NULL-terminated array of NUL-terminated strings; the
    // constructor reads it before the program's main can change it, and nothing here keeps a
    // pointer past the strings' life (the program's environment lives as long as it).
    unsafe {
        let mut p = environ;
        if p.is_null() {
            return None;
        }
        while !(*p).is_null() {
            let s = std::ffi::CStr::from_ptr(*p).to_bytes();
            if s.len() > name.len() && s.starts_with(name.as_bytes()) && s[name.len()] == b'=' {
                return Some(&s[name.len() + 1..]);
            }
            p = p.add(1);
        }
    }
    None
}

/// Reads the configuration from the environment; called once, by the constructor, while the
/// process is still single-threaded.
pub fn init() -> &'static Config {
    if !READY.load(Ordering::Acquire) {
        let mut c = Config::from_lookup(env);
        c.lib = own_path();
        // SAFETY: the constructor runs once, before any other thread of the program exists
        // and before READY is published, so nothing reads CONFIG concurrently.
        unsafe { *CONFIG.0.get() = c };
        READY.store(true, Ordering::Release);
    }
    get()
}

/// The path the dynamic loader opened this library from.
fn own_path() -> Vec<u8> {
    // SAFETY: a zeroed Dl_info is a valid output buffer; dladdr reads the loader's tables for
    // the address of a function of this library and fills it with pointers into them.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(own_path as *const libc::c_void, &mut info) == 0 || info.dli_fname.is_null()
        {
            return Vec::new();
        }
        std::ffi::CStr::from_ptr(info.dli_fname).to_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_normalises() {
        let c = Config::from_lookup(|k| match k {
            ENV_STORAGE => Some(b"/run/s.sock".as_slice()),
            ENV_MOUNT => Some(b"/vt//x/./".as_slice()),
            _ => None,
        });
        assert_eq!(c.storage_sock.unwrap().as_bytes(), b"/run/s.sock");
        assert_eq!(c.mount.unwrap().as_bytes(), b"/vt/x");
        assert!(c.net_sock.is_none() && !c.report);
        // A mount without a storage socket routes nothing; a relative mount is ignored.
        let c = Config::from_lookup(|k| (k == ENV_MOUNT).then_some(b"/vt".as_slice()));
        assert!(c.mount.is_none());
        let c = Config::from_lookup(|k| match k {
            ENV_STORAGE => Some(b"/s".as_slice()),
            ENV_MOUNT => Some(b"vt".as_slice()),
            _ => None,
        });
        assert!(c.mount.is_none());
    }

    #[test]
    fn settings_an_exec_restores_are_kept_whole() {
        let c = Config::from_lookup(|k| match k {
            ENV_NET => Some(b"/run/n.sock".as_slice()),
            "LD_PRELOAD" => Some(b"/x/libvirtuos_preload.so".as_slice()),
            _ => None,
        });
        assert_eq!(
            c.carried_env,
            vec![
                b"VIRTUOS_NET=/run/n.sock\0".to_vec(),
                b"LD_PRELOAD=/x/libvirtuos_preload.so\0".to_vec()
            ]
        );
    }

    #[test]
    fn environment_is_read_in_place() {
        assert!(env("PATH").is_some());
        assert!(env("VIRTUOS_SURELY_NOT_SET_ANYWHERE").is_none());
    }
}
