//! `virtuos-redirect`: runs unmodified programs with their file system calls under a mount
//! prefix routed to the virtuos storage domain.
//!
//! `run` checks that the service domains it is given answer, then starts the command with the
//! preload shim (`libvirtuos_preload.so`) and the routing configuration in its environment,
//! and exits with the command's status.
//!
//! `attach`/`detach`/`status`/`top` manage the eBPF telemetry and enforcement of a cgroup
//! (module `bpf`); `run --enforce` runs the program in a fresh cgroup with enforcement.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

mod supervise;
use clap::{Parser, Subcommand};
use xen_transport::control::connect_session;
use xen_transport::ClientConfig;

mod bpf;
mod domains;
mod keeper;

/// Run programs with their calls served by virtuos service domains.
#[derive(Parser, Debug)]
#[command(name = "virtuos-redirect", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run CMD with paths under --mount served by the storage domain at --storage and its
    /// sockets by the network domain at --net (a statically linked CMD in the supervised
    /// mode). CMD may itself live under --mount. run becomes CMD (same pid).
    Run(RunArgs),
    /// Load the eBPF programs and attach them to a cgroup (pinned under /sys/fs/bpf/virtuos).
    Attach(AttachArgs),
    /// Remove exactly what `attach` pinned for a cgroup.
    Detach(DetachArgs),
    /// Attached cgroups, their programs and hooks (with the kernel's answers), domain health.
    Status(StatusArgs),
    /// Live per-second view of the attached cgroups' system calls, routed and local.
    ///
    /// Local calls (kernel entries) come from the eBPF tracepoints, with log2 latency
    /// histograms. Routed calls never enter the kernel: they are read from the session regions
    /// the cgroup's processes map (root only), per service domain (the process outside the
    /// cgroup that maps the same region, by executable name): calls, ring spins/sleeps/wake-ups
    /// and p50/p99 of the round trip the client measures for every synchronous call (request
    /// published to response seen; log2 buckets, a percentile is its bucket's upper edge).
    /// Percentiles cover the interval, or the time since the session began when the interval
    /// had no routed call (`"window": "since_start"` in --json). Sessions of processes that
    /// exited are no longer visible.
    Top(TopArgs),
    /// Supervise the service domains (storage and/or network): start them, restart each when
    /// it dies (with backoff), and record their restarts for `status`.
    Domains(DomainsArgs),
    /// (Internal.) Exec CMD from inside the redirected environment, where the shim resolves it:
    /// how `run` starts a program that lives under --mount.
    #[command(hide = true, name = "exec-routed")]
    ExecRouted(ExecRoutedArgs),
}

#[derive(clap::Args, Debug)]
struct ExecRoutedArgs {
    #[arg(last = true, required = true, value_name = "CMD")]
    cmd: Vec<std::ffi::OsString>,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("domain").required(true).multiple(true).args(["storage", "net"])))]
struct DomainsArgs {
    /// Export root of the storage domain.
    #[arg(long, value_name = "DIR", requires = "storage")]
    storage_root: Option<PathBuf>,
    /// Socket the storage domain listens on (supervises `virtuos-storage`).
    #[arg(long, value_name = "SOCK", requires = "storage_root")]
    storage: Option<PathBuf>,
    /// CPUs for the storage domain's workers (passed as --cpus).
    #[arg(long, value_name = "LIST", requires = "storage")]
    storage_cpus: Option<String>,
    /// Socket the network domain listens on (supervises `virtuos-net`).
    #[arg(long, visible_alias = "net-sock", value_name = "SOCK")]
    net: Option<PathBuf>,
    /// CPUs for the network domain's workers (passed as --cpus).
    #[arg(long, value_name = "LIST", requires = "net")]
    net_cpus: Option<String>,
    /// Worker threads of the network domain (passed as --threads).
    #[arg(long, value_name = "N", requires = "net")]
    net_threads: Option<usize>,
    /// Network namespace the network domain serves in (passed as --netns): a name under
    /// /run/netns or a path.
    #[arg(long, value_name = "NAME", requires = "net")]
    netns: Option<String>,
    /// State file (JSON) read by `status`.
    #[arg(long, value_name = "FILE", default_value = domains::DEFAULT_STATE)]
    state: PathBuf,
}

#[derive(clap::Args, Debug)]
struct AttachArgs {
    /// The cgroup: a path on the cgroup2 mount, or relative to it.
    #[arg(long, value_name = "PATH")]
    cgroup: PathBuf,
    /// Also attach the enforcement hooks (no direct AF_INET/AF_INET6 sockets, LSM variants).
    #[arg(long)]
    enforce: bool,
    /// Create the cgroup if it does not exist.
    #[arg(long)]
    create: bool,
    /// The storage domain's export: the `file_open` LSM variant (where the kernel allows it)
    /// denies direct opens of files on its device.
    #[arg(long, value_name = "DIR")]
    export: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct DetachArgs {
    /// The cgroup given to `attach`.
    #[arg(long, value_name = "PATH")]
    cgroup: PathBuf,
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// Storage domain socket to check (repeatable).
    #[arg(long, value_name = "SOCK")]
    storage: Vec<PathBuf>,
    /// Network domain socket to check (repeatable).
    #[arg(long, value_name = "SOCK")]
    net: Vec<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct TopArgs {
    /// Print one sample and exit.
    #[arg(long)]
    once: bool,
    /// One JSON object per sample.
    #[arg(long)]
    json: bool,
    /// Sampling interval in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    interval_ms: u64,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Storage domain socket (as given to `virtuos-storage --listen`).
    #[arg(long, value_name = "SOCK", requires = "mount")]
    storage: Option<PathBuf>,
    /// Absolute path prefix routed to the storage domain; it stands for the export root.
    #[arg(long, value_name = "PREFIX", requires = "storage")]
    mount: Option<PathBuf>,
    /// Network domain socket (as given to `virtuos-net --listen`): every AF_INET/AF_INET6
    /// socket of the program lives in the network domain (of a statically linked program,
    /// its TCP sockets; its datagram sockets are refused).
    #[arg(long, value_name = "SOCK")]
    net: Option<PathBuf>,
    /// Put the program in a fresh cgroup with eBPF enforcement (no direct inet sockets) and
    /// a seccomp filter denying io_uring; the cgroup is removed afterwards. Needs root.
    #[arg(long)]
    enforce: bool,
    /// Serve CMD in the supervised mode (seccomp user notifications, as for a statically
    /// linked program) even when it is dynamically linked: slower; for checking the
    /// supervised mode with the same programs as the shim.
    #[arg(long)]
    supervised: bool,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    cmd: Vec<std::ffi::OsString>,
}

fn preload_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("VIRTUOS_PRELOAD") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            // The loader would only warn and run the program unredirected: refuse instead.
            bail!(
                "VIRTUOS_PRELOAD={}: no such file (build it with `cargo build --workspace`)",
                p.display()
            );
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating virtuos-redirect")?;
    let p = exe.with_file_name("libvirtuos_preload.so");
    if !p.exists() {
        bail!(
            "{} not found: build the workspace (`cargo build --release --workspace`) or set VIRTUOS_PRELOAD",
            p.display()
        );
    }
    Ok(p)
}

/// Where `run` finds CMD.
#[derive(Debug, PartialEq)]
enum Lookup {
    /// A local file.
    Local(PathBuf),
    /// Under the mount (a path there, or the first PATH entry that could hold it lies
    /// there): the shim must resolve and exec it.
    Routed,
    /// Neither local nor possibly under the mount.
    Missing,
}

/// `path` made absolute against `cwd` and folded lexically (`.`, `..`), as the shim routes it.
fn lexical_abs(cwd: &Path, path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in cwd.join(path).components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// Looks CMD up as `execvp` would, in `path` (PATH's value), knowing that files under `mount`
/// are the storage domain's and cannot be checked from here.
fn find(
    cmd: &std::ffi::OsStr,
    path: Option<&std::ffi::OsStr>,
    mount: Option<&Path>,
    cwd: &Path,
) -> Lookup {
    let c = Path::new(cmd);
    let under = |p: &Path| mount.is_some_and(|m| lexical_abs(cwd, p).starts_with(m));
    if c.components().count() > 1 {
        return if under(c) {
            Lookup::Routed
        } else {
            Lookup::Local(c.to_path_buf())
        };
    }
    let Some(path) = path else {
        return Lookup::Missing;
    };
    for d in std::env::split_paths(path) {
        if under(&d) {
            return Lookup::Routed;
        }
        let p = d.join(c);
        if p.is_file() {
            return Lookup::Local(p);
        }
    }
    Lookup::Missing
}

/// `exec-routed`: runs inside the redirected environment (the shim is loaded into this
/// process), so `execvp`'s calls reach the shim, which executes a program of the storage
/// domain from a copy of its image. Returns only if the exec failed.
fn exec_routed(args: ExecRoutedArgs) -> Result<i32> {
    use std::os::unix::ffi::OsStrExt;
    let c: Vec<std::ffi::CString> = args
        .cmd
        .iter()
        .map(|a| std::ffi::CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("an argument holds a NUL byte")?;
    let mut argv: Vec<*const libc::c_char> = c.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: argv is a null-terminated array of pointers to NUL-terminated strings that live
    // until the call returns (it returns only on failure).
    unsafe { libc::execvp(argv[0], argv.as_ptr()) };
    let err = std::io::Error::last_os_error();
    Ok(not_started(&args.cmd[0], &err))
}

/// True when the ELF file has no program interpreter (statically linked).
fn is_static(path: &Path) -> Result<bool> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return Ok(false); // a script or not 64-bit ELF: its interpreter is what runs
    }
    let rd16 = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[32..40].try_into()?) as usize;
    let (phentsize, phnum) = (rd16(54), rd16(56));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > data.len() {
            break;
        }
        if u32::from_le_bytes(data[o..o + 4].try_into()?) == 3 {
            return Ok(false); // PT_INTERP
        }
    }
    Ok(true)
}

/// Exit status for a program that cannot be started, as a shell gives it: 127 when it does
/// not exist, 126 when it exists but cannot be executed.
fn not_started(what: &std::ffi::OsStr, e: &std::io::Error) -> i32 {
    eprintln!("virtuos-redirect: {}: {e}", what.to_string_lossy());
    if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

fn run(args: RunArgs) -> Result<i32> {
    let cwd = std::env::current_dir().context("the current directory")?;
    let mount = args.storage.as_ref().and(args.mount.as_deref());
    let path = std::env::var_os("PATH");
    let prog = match find(&args.cmd[0], path.as_deref(), mount, &cwd) {
        Lookup::Local(p) => Some(p),
        Lookup::Routed => None,
        Lookup::Missing => {
            eprintln!(
                "virtuos-redirect: {}: command not found",
                args.cmd[0].to_string_lossy()
            );
            return Ok(127);
        }
    };
    if let Some(prog) = &prog {
        if let Err(e) = std::fs::File::open(prog) {
            return Ok(not_started(prog.as_os_str(), &e));
        }
    }
    let routed = args.net.is_some() || args.storage.is_some();
    if args.supervised && !routed {
        bail!("--supervised needs a domain to route to: give --net SOCK and/or --storage SOCK --mount PREFIX");
    }
    let supervised = match &prog {
        Some(p) => routed && (args.supervised || is_static(p)?),
        None if args.supervised => bail!(
            "--supervised: {} lives under --mount; the supervised mode starts local programs only (without --supervised the shim starts it, and a static one is supervised all the same)",
            args.cmd[0].to_string_lossy()
        ),
        None => false,
    };
    if args.enforce {
        // The cgroup outlives this process's image: a keeper outside it removes it once the
        // program (this process, after the exec; or the supervised program and this
        // process, its supervisor) has exited.
        let e = bpf::EnforcedRun::start()?;
        keeper::spawn(e)?.enter()?;
    }
    if supervised {
        // The shim cannot enter a static binary: serve it through seccomp user notification.
        let storage = match (&args.storage, &args.mount) {
            (Some(sock), Some(mount)) => {
                if !mount.is_absolute() {
                    bail!("--mount {}: must be an absolute path", mount.display());
                }
                Some((sock.as_path(), mount.as_path()))
            }
            _ => None,
        };
        let domains = supervise::Domains {
            storage,
            net: args.net.as_deref(),
        };
        let prog = prog.expect("a supervised program is local");
        return supervise::run(&prog, &args.cmd, domains);
    }
    let mut cmd = if prog.is_some() {
        let mut c = Command::new(&args.cmd[0]);
        c.args(&args.cmd[1..]);
        c
    } else {
        // Under the mount: only the shim can reach it, so the exec is made from a process
        // the shim is loaded into, this binary's `exec-routed` (which keeps this pid).
        let me = std::env::current_exe().context("this binary's path (/proc/self/exe)")?;
        let mut c = Command::new(me);
        c.arg("exec-routed").arg("--").args(&args.cmd);
        c
    };
    let probe = |sock: &PathBuf, what: &str| -> Result<()> {
        connect_session(
            sock,
            &ClientConfig {
                channels: 1,
                ..ClientConfig::default()
            },
        )
        .map(drop)
        .with_context(|| format!("{what} domain at {}", sock.display()))
    };
    if let Some(sock) = &args.net {
        probe(sock, "network")?;
        cmd.env("VIRTUOS_NET", sock);
    }
    // A static program the redirected one execs is handed to the supervised mode through
    // this binary (the shim cannot enter it).
    if args.net.is_some() || args.storage.is_some() {
        if let Ok(me) = std::env::current_exe() {
            cmd.env("VIRTUOS_REDIRECT", me);
        }
    }
    if let (Some(sock), Some(mount)) = (&args.storage, &args.mount) {
        if !mount.is_absolute() {
            bail!("--mount {}: must be an absolute path", mount.display());
        }
        probe(sock, "storage")?;
        cmd.env("VIRTUOS_STORAGE", sock).env("VIRTUOS_MOUNT", mount);
    }
    if args.net.is_some() || args.storage.is_some() {
        let so = preload_path()?;
        let preload = match std::env::var_os("LD_PRELOAD") {
            Some(old) if !old.is_empty() => {
                let mut v = so.into_os_string();
                v.push(":");
                v.push(old);
                v
            }
            _ => so.into_os_string(),
        };
        cmd.env("LD_PRELOAD", preload);
    }
    // Nothing is left to do after the program: become it, so that its pid is the one its
    // starter knows (a harness that waits for it, a supervisor that signals it, nginx's
    // binary upgrade that checks who its parent is) and nothing stands between them.
    let err = std::os::unix::process::CommandExt::exec(&mut cmd);
    Ok(not_started(
        prog.as_ref()
            .map_or(args.cmd[0].as_os_str(), |p| p.as_os_str()),
        &err,
    ))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Run(a) => run(a)?,
        Cmd::ExecRouted(a) => exec_routed(a)?,
        Cmd::Attach(a) => {
            let at = bpf::attach(&bpf::AttachOpts {
                cgroup: a.cgroup,
                enforce: a.enforce,
                create: a.create,
                export: a.export,
            })?;
            bpf::print_attached(&at.record);
            0
        }
        Cmd::Detach(a) => {
            let d = bpf::detach(&a.cgroup)?;
            println!(
                "detached cgroup id {}: removed {} pin(s): {}",
                d.cgroup_id,
                d.removed.len(),
                d.removed.join(" ")
            );
            if !d.still_loaded.is_empty() {
                bail!("programs still loaded after detach: {:?}", d.still_loaded);
            }
            0
        }
        Cmd::Domains(a) => domains::run(domains::DomainsOpts {
            storage: match (a.storage_root, a.storage) {
                (Some(root), Some(sock)) => Some(domains::StorageOpts {
                    root,
                    sock,
                    cpus: a.storage_cpus,
                }),
                _ => None,
            },
            net: a.net.map(|sock| domains::NetOpts {
                sock,
                cpus: a.net_cpus,
                threads: a.net_threads,
                netns: a.netns,
            }),
            state: a.state,
        })?,
        Cmd::Status(a) => {
            bpf::status(&bpf::StatusOpts {
                storage: a.storage,
                net: a.net,
                json: a.json,
            })?;
            0
        }
        Cmd::Top(a) => {
            bpf::top::top(bpf::top::TopOpts {
                once: a.once,
                json: a.json,
                interval: std::time::Duration::from_millis(a.interval_ms.max(10)),
            })?;
            0
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn programs_under_the_mount_are_the_shims_to_find() {
        let cwd = Path::new("/tmp/w");
        let m = Some(Path::new("/vt"));
        assert_eq!(
            lexical_abs(cwd, Path::new("../vt/./b/../x")),
            PathBuf::from("/tmp/vt/x")
        );
        assert_eq!(
            lexical_abs(cwd, Path::new("/a/../vt/x")),
            PathBuf::from("/vt/x")
        );
        assert_eq!(find(OsStr::new("/vt/bin/x"), None, m, cwd), Lookup::Routed);
        assert_eq!(find(OsStr::new("/a/../vt/x"), None, m, cwd), Lookup::Routed);
        assert_eq!(
            find(OsStr::new("/vtx/bin/x"), None, m, cwd),
            Lookup::Local(PathBuf::from("/vtx/bin/x"))
        );
        // Without a mount, a path is the kernel's.
        assert_eq!(
            find(OsStr::new("/vt/bin/x"), None, None, cwd),
            Lookup::Local(PathBuf::from("/vt/bin/x"))
        );
        // PATH in order: a local hit first wins, a directory under the mount first defers.
        let path = OsStr::new("/bin:/vt/bin");
        assert_eq!(
            find(OsStr::new("sh"), Some(path), m, cwd),
            Lookup::Local(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            find(OsStr::new("no-such-program"), Some(path), m, cwd),
            Lookup::Routed
        );
        assert_eq!(
            find(OsStr::new("sh"), Some(OsStr::new("/vt/bin:/bin")), m, cwd),
            Lookup::Routed
        );
        assert_eq!(
            find(
                OsStr::new("no-such-program"),
                Some(OsStr::new("/bin")),
                m,
                cwd
            ),
            Lookup::Missing
        );
    }
}
