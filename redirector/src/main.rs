//! `virtuos-redirect`: runs unmodified programs with their file system calls under a mount
//! prefix routed to the virtuos storage domain.
//!
//! `run` checks that the service domains it is given answer, then starts the command with the
//! preload shim (`libvirtuos_preload.so`) and the routing configuration in its environment,
//! and exits with the command's status.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use xen_transport::control::connect_session;
use xen_transport::ClientConfig;

/// Run programs with their calls served by virtuos service domains.
#[derive(Parser, Debug)]
#[command(name = "virtuos-redirect", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run CMD with paths under --mount served by the storage domain at --storage.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Storage domain socket (as given to `virtuos-storage --listen`).
    #[arg(long, value_name = "SOCK", requires = "mount")]
    storage: Option<PathBuf>,
    /// Absolute path prefix routed to the storage domain; it stands for the export root.
    #[arg(long, value_name = "PREFIX", requires = "storage")]
    mount: Option<PathBuf>,
    /// Network domain socket (not available yet: issue #5).
    #[arg(long, value_name = "SOCK")]
    net: Option<PathBuf>,
    /// Put the program in a fresh cgroup with eBPF enforcement (not available yet: issue #6).
    #[arg(long)]
    enforce: bool,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    cmd: Vec<std::ffi::OsString>,
}

fn preload_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("VIRTUOS_PRELOAD") {
        return Ok(PathBuf::from(p));
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

/// Resolves CMD through PATH like the shell would.
fn which(cmd: &std::ffi::OsStr) -> Option<PathBuf> {
    let c = Path::new(cmd);
    if c.components().count() > 1 {
        return Some(c.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(c))
        .find(|p| p.is_file())
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

fn run(args: RunArgs) -> Result<i32> {
    if args.net.is_some() {
        bail!("--net: the network domain is not implemented yet (issue #5)");
    }
    if args.enforce {
        bail!("--enforce: eBPF enforcement is not implemented yet (issue #6)");
    }
    let prog =
        which(&args.cmd[0]).with_context(|| format!("{:?}: command not found", args.cmd[0]))?;
    if is_static(&prog)? {
        bail!(
            "{} is statically linked: the preload shim cannot enter it, and the supervised \
             (seccomp user-notification) mode is not implemented yet",
            prog.display()
        );
    }
    let mut cmd = Command::new(&args.cmd[0]);
    cmd.args(&args.cmd[1..]);
    if let (Some(sock), Some(mount)) = (&args.storage, &args.mount) {
        if !mount.is_absolute() {
            bail!("--mount {}: must be an absolute path", mount.display());
        }
        connect_session(
            sock,
            &ClientConfig {
                channels: 1,
                ..ClientConfig::default()
            },
        )
        .with_context(|| format!("storage domain at {}", sock.display()))?;
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
        cmd.env("LD_PRELOAD", preload)
            .env("VIRTUOS_STORAGE", sock)
            .env("VIRTUOS_MOUNT", mount);
    }
    // Spawn and wait, forwarding the exit status (a signal as 128 + number).
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", prog.display()))?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Run(a) => run(a)?,
    };
    std::process::exit(code);
}
