//! The shim's configuration, from the environment `virtuos-redirect run` sets up.

use std::sync::OnceLock;

use crate::paths::{self, PathBuf};

/// Environment variable naming the storage domain's socket.
pub const ENV_STORAGE: &str = "VIRTUOS_STORAGE";
/// Environment variable naming the mount prefix routed to the storage domain.
pub const ENV_MOUNT: &str = "VIRTUOS_MOUNT";
/// Environment variable naming the network domain's socket.
pub const ENV_NET: &str = "VIRTUOS_NET";

/// What the shim routes where.
pub struct Config {
    /// Storage domain socket.
    pub storage_sock: Option<std::path::PathBuf>,
    /// Normalised absolute mount prefix.
    pub mount: Option<PathBuf>,
    /// Network domain socket: AF_INET/AF_INET6 sockets go there.
    pub net_sock: Option<std::path::PathBuf>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// The configuration (read from the environment on first use).
pub fn get() -> &'static Config {
    CONFIG.get_or_init(|| {
        let storage_sock = std::env::var_os(ENV_STORAGE).map(std::path::PathBuf::from);
        let mount = std::env::var_os(ENV_MOUNT).and_then(|m| {
            use std::os::unix::ffi::OsStrExt;
            let b = m.as_bytes();
            (b.first() == Some(&b'/'))
                .then(|| paths::normalize(b).ok())
                .flatten()
        });
        let mount = if storage_sock.is_some() { mount } else { None };
        Config {
            storage_sock,
            mount,
            net_sock: std::env::var_os(ENV_NET).map(std::path::PathBuf::from),
        }
    })
}
