//! `virtuos-storage`: the storage service domain.
//!
//! Serves file system calls forwarded by applications over shared-memory sessions on a Unix
//! socket, confined to an export root: a directory (`--root`) or a block device or image file
//! mounted where no other process can see it (`--device`, needs root).

use anyhow::Context;
use clap::{ArgGroup, Parser};
use service::{install_signal_handlers, Runtime, RuntimeConfig};
use virtuos_storage::Storage;

/// Serve forwarded file system calls, confined to an export root and run with each client's
/// uid, gid and supplementary groups.
///
/// Paths from clients are relative to the export root and resolved with openat2(RESOLVE_BENEATH
/// | RESOLVE_NO_MAGICLINKS): nothing outside the root can be named. A path that meets a
/// symlink with an absolute target, or `..` above the root, is handed back to the client,
/// which continues it in its own file system (or again under its mount). To serve users other than
/// its own, the server needs CAP_SETUID and CAP_SETGID (run it as root); the socket is made
/// connectable by every local user (mode 0666), each acting as themselves.
///
/// No client can stop the server or starve the others: it raises its RLIMIT_NOFILE soft limit
/// to the hard limit, answers a call that meets a resource limit with that error (EMFILE,
/// ENFILE), keeps accepting when the process is out of descriptors, reads each client's hello
/// on a thread of its own, and bounds each uid's sessions and open files (root is exempt).
#[derive(Parser, Debug)]
#[command(version, group(ArgGroup::new("export").required(true).args(["root", "device"])))]
struct Args {
    /// Directory to export.
    #[arg(long, value_name = "DIR")]
    root: Option<std::path::PathBuf>,
    /// Block device or file system image to mount privately and export (needs root). An image
    /// file is attached to a free loop device that is released when the server exits.
    #[arg(long, value_name = "PATH")]
    device: Option<std::path::PathBuf>,
    /// File system type of --device (default: probe the types in /proc/filesystems).
    #[arg(long, value_name = "T", requires = "device")]
    fstype: Option<String>,
    /// Unix socket to listen on.
    #[arg(long, value_name = "SOCK")]
    listen: std::path::PathBuf,
    /// Cores to pin the polling worker threads to (cpulist syntax, e.g. 1 or 2-3).
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    /// Polling worker threads (default: one per listed CPU, or 1).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Threads for calls io_uring cannot run or confine (path operations, getdents, ...).
    #[arg(long, value_name = "N", default_value_t = service::DEFAULT_BLOCKING_THREADS)]
    blocking_threads: usize,
    /// Most concurrent sessions.
    #[arg(long, default_value_t = 1024)]
    max_sessions: usize,
    /// Most open files per session.
    #[arg(long, default_value_t = service::fdtable::DEFAULT_MAX_HANDLES)]
    max_files: usize,
    #[command(flatten)]
    uid_limits: service::UidLimitArgs,
    /// Longest idle spin of a worker before it sleeps, in ns (0: sleep at once).
    #[arg(long)]
    spin_max_ns: Option<u64>,
    /// Also serve sessions that Xen domain DOMID requests through xenstore (grant-shared
    /// pages and event channels; run inside a Xen guest, with --threads 1).
    #[arg(long, value_name = "DOMID")]
    xen_peer: Option<u16>,
    /// Rendezvous name under this domain's xenstore `data/` directory (with --xen-peer).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "virtuos-storage",
        requires = "xen_peer"
    )]
    xen_name: String,
}

fn main() -> anyhow::Result<()> {
    service::init_logging();
    let args = Args::parse();
    let storage = match (&args.root, &args.device) {
        (Some(dir), _) => Storage::with_root(dir)?,
        (None, Some(dev)) => {
            tracing::info!(device = %dev.display(), "mounting the export");
            Storage::with_device(dev, args.fstype.as_deref())?
        }
        (None, None) => unreachable!("clap requires one of --root and --device"),
    };
    service::limits::raise_nofile_limit_logged();
    let mut cfg = RuntimeConfig::from_common_options(
        &args.listen,
        args.cpus.as_deref(),
        args.threads,
        args.max_sessions,
        args.spin_max_ns,
    )?
    .with_uid_limits(&args.uid_limits);
    cfg.blocking_threads = args.blocking_threads;
    cfg.max_handles = args.max_files;
    let export = storage.export().to_string();
    let mut rt = Runtime::start(cfg, storage).context("starting the storage service")?;
    if let Some(peer) = args.xen_peer {
        rt.serve_xen(peer, &args.xen_name)
            .context("serving sessions over Xen")?;
    }
    // Every local user may connect; each acts as themselves.
    std::fs::set_permissions(
        &args.listen,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .with_context(|| format!("making {} connectable", args.listen.display()))?;
    tracing::info!(%export, socket = %args.listen.display(), "storage domain serving");
    install_signal_handlers(rt.shutdown_handle())?;
    rt.join();
    Ok(())
}
