//! The eBPF side of virtuos (issue #6): loads `ebpf/`'s object with aya, attaches it to a
//! cgroup, pins it under `/sys/fs/bpf/virtuos/<cgroup-id>/` so that it outlives the command,
//! and removes exactly that again. `status` and `top` read what is pinned.
//!
//! Attach records (which hooks are active, which the kernel refused and with which errno) are
//! kept as JSON in `/run/virtuos/bpf/<cgroup-id>.json`, since a bpffs holds only BPF objects.

pub mod btf;
pub mod env;
pub mod seccomp;
mod sys;
pub mod syscalls;
pub mod top;

/// The map/record layouts shared with the eBPF programs (`ebpf-common/`).
pub use virtuos_ebpf_common as layout;

use std::collections::HashMap as StdHashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use aya::programs::links::FdLink;
use aya::programs::{
    CgroupAttachMode, CgroupSock, CgroupSockAddr, Lsm, LsmCgroup, ProgramError, ProgramInfo,
    RawTracePoint,
};
use aya::{Ebpf, EbpfLoader};
use serde::{Deserialize, Serialize};

use env::Cgroup;

/// What a hook is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Syscall counts and latency (always attached).
    Telemetry,
    /// Cgroup socket hooks (with `--enforce`).
    Enforce,
    /// BPF LSM variants (with `--enforce`, where the kernel allows them).
    Lsm,
}

/// One program of the object and what became of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hook {
    /// Program name in the object.
    pub program: String,
    /// Where it attaches (`raw_tp/sys_enter`, `cgroup/sock_create`, `lsm/file_open`, ...).
    pub attach: String,
    /// What it is for.
    pub role: Role,
    /// `active`, `refused` (the kernel said no), `failed` (another error) or `off`.
    pub state: String,
    /// The kernel's errno when refused.
    pub errno: Option<i32>,
    /// The error, in words.
    pub error: Option<String>,
    /// Kernel program id when loaded.
    pub prog_id: Option<u32>,
}

/// The attach record of one cgroup.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// The cgroup directory.
    pub cgroup: PathBuf,
    /// Its id.
    pub cgroup_id: u64,
    /// Depth below the cgroup2 root.
    pub level: u32,
    /// Whether enforcement was asked for.
    pub enforce: bool,
    /// Whether `attach --create` (or `run --enforce`) created the cgroup.
    pub created: bool,
    /// Pin directory.
    pub pin_dir: PathBuf,
    /// The object loaded.
    pub object: PathBuf,
    /// Storage export whose device the `file_open` LSM variant guards, if given.
    pub export: Option<PathBuf>,
    /// Unix time of the attach, seconds.
    pub attached_unix: u64,
    /// Every program of the object.
    pub hooks: Vec<Hook>,
}

/// Options of `attach`.
#[derive(Clone, Debug, Default)]
pub struct AttachOpts {
    /// `--cgroup PATH`.
    pub cgroup: PathBuf,
    /// `--enforce`.
    pub enforce: bool,
    /// `--create`.
    pub create: bool,
    /// `--export DIR`: the storage domain's export (guarded by the `file_open` LSM variant).
    pub export: Option<PathBuf>,
}

/// A fresh attachment: the record plus the loaded object (for aya-log).
pub struct Attached {
    /// What was attached.
    pub record: Record,
    /// The loaded object; its pinned programs and links stay when it is dropped.
    pub ebpf: Ebpf,
}

const TELEMETRY: [(&str, &str); 2] = [("sys_enter", "sys_enter"), ("sys_exit", "sys_exit")];
const SOCK_ADDR: [&str; 4] = ["connect4", "connect6", "bind4", "bind6"];
/// (program, hook, per-cgroup).
const LSM: [(&str, &str, bool); 4] = [
    ("lsm_socket_create", "socket_create", false),
    ("lsm_file_open", "file_open", false),
    ("lsm_uring_allowed", "uring_allowed", false),
    ("lsm_cg_socket_create", "socket_create", true),
];

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The pin directory of a cgroup id.
pub fn pin_dir(id: u64) -> PathBuf {
    Path::new(env::PIN_ROOT).join(id.to_string())
}

fn record_path(id: u64) -> PathBuf {
    Path::new(env::STATE_DIR).join(format!("{id}.json"))
}

/// The errno inside an aya program error, if the kernel gave one.
fn prog_errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::LoadError { io_error, .. } => io_error.raw_os_error(),
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::ENOENT => "ENOENT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::E2BIG => "E2BIG",
        libc::ESRCH => "ESRCH",
        _ => "",
    };
    let text = std::io::Error::from_raw_os_error(e);
    if name.is_empty() {
        format!("errno {e}: {text}")
    } else {
        format!("{name} (errno {e}): {text}")
    }
}

fn hook(program: &str, attach: String, role: Role) -> Hook {
    Hook {
        program: program.into(),
        attach,
        role,
        state: "off".into(),
        errno: None,
        error: None,
        prog_id: None,
    }
}

fn set_err(h: &mut Hook, step: &str, e: &ProgramError) {
    let errno = prog_errno(e);
    h.state = if errno.is_some() { "refused" } else { "failed" }.into();
    h.errno = errno;
    let log = match e {
        ProgramError::LoadError { verifier_log, .. } => {
            let l = verifier_log.to_string();
            let l = l.trim();
            if l.is_empty() {
                String::new()
            } else {
                // The verifier's conclusion is at the end.
                let tail: Vec<&str> = l.lines().rev().take(6).collect();
                format!(
                    "; verifier: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )
            }
        }
        _ => String::new(),
    };
    h.error = Some(match errno {
        Some(n) => format!("{step}: kernel answered {}{log}", errno_name(n)),
        None => format!("{step}: {e}"),
    });
    if let ProgramError::SyscallError(se) = e {
        h.error = h.error.take().map(|m| format!("{m} (in {})", se.call));
    }
}

fn pin_link(link: FdLink, dir: &Path, program: &str) -> Result<()> {
    link.pin(dir.join(format!("link_{program}")))
        .map_err(|e| anyhow!("pinning the link of {program}: {e}"))?;
    Ok(())
}

fn pin_prog(ebpf: &mut Ebpf, dir: &Path, program: &str) -> Result<Option<u32>> {
    let p = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from the object"))?;
    let id = p.info().ok().map(|i| i.id());
    p.pin(dir.join(format!("prog_{program}")))
        .map_err(|e| anyhow!("pinning program {program}: {e}"))?;
    Ok(id)
}

/// Loads the object, attaches it to the cgroup and pins everything. On error nothing of it
/// stays pinned.
pub fn attach(opts: &AttachOpts) -> Result<Attached> {
    env::require_root("attach")?;
    env::ensure_bpffs()?;
    let obj = env::object_path()?;
    let cg = env::resolve_cgroup(&opts.cgroup, opts.create)?;
    let dir = pin_dir(cg.id);
    std::fs::create_dir_all(env::PIN_ROOT)
        .with_context(|| format!("creating {}", env::PIN_ROOT))?;
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "cgroup {} is already attached (pinned at {}): run `virtuos-redirect detach --cgroup {}` first",
            cg.path.display(),
            dir.display(),
            cg.path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    match attach_into(opts, &obj, &cg, &dir) {
        Ok(a) => Ok(a),
        Err(e) => {
            let _ = remove_pins(&dir);
            if cg.created {
                let _ = std::fs::remove_dir(&cg.path);
            }
            Err(e)
        }
    }
}

fn attach_into(opts: &AttachOpts, obj: &Path, cg: &Cgroup, dir: &Path) -> Result<Attached> {
    let mut ebpf = EbpfLoader::new()
        .override_global("CGROUP_LEVEL", &cg.level, true)
        .load_file(obj)
        .with_context(|| format!("loading {}", obj.display()))?;
    check_layout(&ebpf)?;
    {
        let mut attached: BpfHashMap<_, u64, u32> =
            BpfHashMap::try_from(ebpf.map_mut("ATTACHED").context("map ATTACHED missing")?)?;
        let flags = if opts.enforce {
            layout::attached::ENFORCE
        } else {
            0
        };
        attached.insert(cg.id, flags, 0)?;
    }
    let cg_file =
        File::open(&cg.path).with_context(|| format!("opening cgroup {}", cg.path.display()))?;
    let mut hooks = Vec::new();

    // Telemetry: must work.
    for (program, tp) in TELEMETRY {
        let mut h = hook(program, format!("raw_tp/{tp}"), Role::Telemetry);
        let p: &mut RawTracePoint = ebpf
            .program_mut(program)
            .context("telemetry program missing")?
            .try_into()?;
        p.load()
            .with_context(|| format!("loading {program}: raw tracepoints refused?"))?;
        let id = p
            .attach(tp)
            .with_context(|| format!("attaching {program}"))?;
        let link = FdLink::from(p.take_link(id)?);
        pin_link(link, dir, program)?;
        h.prog_id = pin_prog(&mut ebpf, dir, program)?;
        h.state = "active".into();
        hooks.push(h);
    }

    // Enforcement through cgroup socket hooks.
    let mut h = hook("sock_create", "cgroup/sock_create".into(), Role::Enforce);
    if opts.enforce {
        let r = (|| -> Result<(), ProgramError> {
            let p: &mut CgroupSock = ebpf
                .program_mut("sock_create")
                .ok_or(ProgramError::NotLoaded)?
                .try_into()?;
            p.load()?;
            let id = p.attach(&cg_file, CgroupAttachMode::Single)?;
            let link = FdLink::try_from(p.take_link(id)?)
                .map_err(|e| ProgramError::SyscallError(link_err("sock_create", e)))?;
            pin_link(link, dir, "sock_create").map_err(|e| other_err("pin", e))?;
            Ok(())
        })();
        match r {
            Ok(()) => {
                h.prog_id = pin_prog(&mut ebpf, dir, "sock_create")?;
                h.state = "active".into();
            }
            Err(e) => set_err(&mut h, "cgroup/sock_create", &e),
        }
    }
    hooks.push(h);
    for program in SOCK_ADDR {
        let mut h = hook(program, format!("cgroup/{program}"), Role::Enforce);
        if opts.enforce {
            let r = (|| -> Result<(), ProgramError> {
                let p: &mut CgroupSockAddr = ebpf
                    .program_mut(program)
                    .ok_or(ProgramError::NotLoaded)?
                    .try_into()?;
                p.load()?;
                let id = p.attach(&cg_file, CgroupAttachMode::Single)?;
                let link = FdLink::try_from(p.take_link(id)?)
                    .map_err(|e| ProgramError::SyscallError(link_err(program, e)))?;
                pin_link(link, dir, program).map_err(|e| other_err("pin", e))?;
                Ok(())
            })();
            match r {
                Ok(()) => {
                    h.prog_id = pin_prog(&mut ebpf, dir, program)?;
                    h.state = "active".into();
                }
                Err(e) => set_err(&mut h, &format!("cgroup/{program}"), &e),
            }
        }
        hooks.push(h);
    }
    if opts.enforce
        && hooks
            .iter()
            .any(|h| h.role == Role::Enforce && h.state != "active")
    {
        let why: Vec<String> = hooks
            .iter()
            .filter(|h| h.role == Role::Enforce && h.state != "active")
            .map(|h| format!("{}: {}", h.attach, h.error.clone().unwrap_or_default()))
            .collect();
        bail!("enforcement could not be attached: {}", why.join("; "));
    }

    // BPF LSM variants: tried, and recorded with the kernel's answer.
    let kbtf = if opts.enforce {
        Some(aya::Btf::from_sys_fs())
    } else {
        None
    };
    if opts.enforce {
        configure_file_open(&mut ebpf, opts.export.as_deref())?;
    }
    for (program, lsm_hook, per_cgroup) in LSM {
        let prefix = if per_cgroup { "lsm_cgroup" } else { "lsm" };
        let mut h = hook(program, format!("{prefix}/{lsm_hook}"), Role::Lsm);
        match &kbtf {
            None => {
                h.error = Some("not requested (attach without --enforce)".into());
            }
            Some(Err(e)) => {
                h.state = "failed".into();
                h.error = Some(format!(
                    "kernel BTF missing or unreadable at {} ({e}): BPF LSM programs need CONFIG_DEBUG_INFO_BTF",
                    env::VMLINUX_BTF
                ));
            }
            Some(Ok(btf)) => {
                let r = (|| -> Result<(), ProgramError> {
                    let prog = ebpf.program_mut(program).ok_or(ProgramError::NotLoaded)?;
                    let link = if per_cgroup {
                        let p: &mut LsmCgroup = prog.try_into()?;
                        p.load(lsm_hook, btf)?;
                        let id = p.attach(&cg_file)?;
                        FdLink::from(p.take_link(id)?)
                    } else {
                        let p: &mut Lsm = prog.try_into()?;
                        p.load(lsm_hook, btf)?;
                        let id = p.attach()?;
                        FdLink::from(p.take_link(id)?)
                    };
                    pin_link(link, dir, program).map_err(|e| other_err("pin", e))?;
                    Ok(())
                })();
                match r {
                    Ok(()) => {
                        h.prog_id = pin_prog(&mut ebpf, dir, program)?;
                        h.state = "active".into();
                    }
                    Err(e) => set_err(&mut h, &format!("loading {prefix}/{lsm_hook}"), &e),
                }
            }
        }
        hooks.push(h);
    }

    // Maps, so that `top` and `status` can read them.
    for (name, map) in ebpf.maps() {
        let file = format!("map_{}", name.replace(['.', '/'], "_"));
        map.pin(dir.join(&file))
            .map_err(|e| anyhow!("pinning map {name}: {e}"))?;
    }
    let record = Record {
        cgroup: cg.path.clone(),
        cgroup_id: cg.id,
        level: cg.level,
        enforce: opts.enforce,
        created: cg.created,
        pin_dir: dir.to_path_buf(),
        object: obj.to_path_buf(),
        export: opts.export.clone(),
        attached_unix: now_unix(),
        hooks,
    };
    std::fs::create_dir_all(env::STATE_DIR)
        .with_context(|| format!("creating {}", env::STATE_DIR))?;
    let mut json = serde_json::to_vec_pretty(&record)?;
    json.push(b'\n');
    std::fs::write(record_path(cg.id), json)
        .with_context(|| format!("writing {}", record_path(cg.id).display()))?;
    Ok(Attached { record, ebpf })
}

fn link_err(program: &str, e: aya::programs::links::LinkError) -> aya::sys::SyscallError {
    aya::sys::SyscallError {
        call: "link_create",
        io_error: std::io::Error::other(format!(
            "{program}: the kernel gave a legacy attachment, not a bpf_link ({e})"
        )),
    }
}

fn other_err(call: &'static str, e: anyhow::Error) -> ProgramError {
    ProgramError::SyscallError(aya::sys::SyscallError {
        call,
        io_error: std::io::Error::other(e.to_string()),
    })
}

/// Checks that the object's maps have the value sizes this loader reads.
fn check_layout(ebpf: &Ebpf) -> Result<()> {
    let size = |name: &str| -> Result<u32> {
        let m = ebpf
            .map(name)
            .with_context(|| format!("map {name} missing from the object"))?;
        let info = match m {
            Map::PerCpuArray(d) | Map::Array(d) | Map::HashMap(d) | Map::LruHashMap(d) => {
                d.info()?
            }
            _ => bail!("map {name} has an unexpected type"),
        };
        Ok(info.value_size())
    };
    let want = std::mem::size_of::<layout::SysStat>() as u32;
    if size("STATS")? != want {
        bail!(
            "the eBPF object's STATS record is {} bytes, this loader expects {want}: rebuild it (scripts/build-ebpf.sh)",
            size("STATS")?
        );
    }
    Ok(())
}

/// Writes the storage device and the kernel struct offsets for `lsm/file_open`.
fn configure_file_open(ebpf: &mut Ebpf, export: Option<&Path>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some(export) = export else {
        return Ok(());
    };
    let dev = std::fs::metadata(export)
        .with_context(|| format!("--export {}", export.display()))?
        .dev();
    let offs = std::fs::read(env::VMLINUX_BTF)
        .ok()
        .and_then(|d| btf::Btf::parse(d).ok())
        .and_then(|b| btf::file_open_offsets(&b));
    let mut cfg: Array<_, u64> =
        Array::try_from(ebpf.map_mut("CONFIG").context("map CONFIG missing")?)?;
    if let Some([a, b, c]) = offs {
        cfg.set(layout::config::STORAGE_DEV, env::kernel_dev(dev), 0)?;
        cfg.set(layout::config::OFF_F_INODE, a, 0)?;
        cfg.set(layout::config::OFF_I_SB, b, 0)?;
        cfg.set(layout::config::OFF_S_DEV, c, 0)?;
    }
    Ok(())
}

/// Removes every pin in `dir` (detaching links first) and the directory.
fn remove_pins(dir: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(removed);
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    // Links first, so that nothing runs while its maps go away.
    entries.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
    });
    for p in entries {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("link_") {
            // Force the detach even if someone else holds the link open.
            if let Ok(fd) = sys::obj_get(&p) {
                let _ = sys::link_detach(&fd);
            }
        }
        std::fs::remove_file(&p).with_context(|| format!("unpinning {}", p.display()))?;
        removed.push(name);
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(removed)
}

/// Finds the attachment of `--cgroup PATH`: by the cgroup's id, or (when the directory is
/// gone) by the path in the records.
fn find_attachment(arg: &Path) -> Result<(u64, Option<Record>)> {
    match env::resolve_cgroup(arg, false) {
        Ok(cg) => Ok((cg.id, read_record(cg.id))),
        Err(e) => {
            for r in records() {
                if r.cgroup == arg || r.cgroup.ends_with(arg) {
                    return Ok((r.cgroup_id, Some(r)));
                }
            }
            Err(e)
        }
    }
}

fn read_record(id: u64) -> Option<Record> {
    let data = std::fs::read(record_path(id)).ok()?;
    serde_json::from_slice(&data).ok()
}

fn records() -> Vec<Record> {
    attached_ids().into_iter().filter_map(read_record).collect()
}

/// The cgroup ids with a pin directory.
pub fn attached_ids() -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(env::PIN_ROOT)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// What `detach` did.
pub struct Detached {
    /// The cgroup id.
    pub cgroup_id: u64,
    /// Pins removed.
    pub removed: Vec<String>,
    /// Program ids of ours still loaded after waiting (should be empty).
    pub still_loaded: Vec<u32>,
}

/// Removes exactly what `attach` pinned for this cgroup, and checks the programs are gone.
pub fn detach(cgroup: &Path) -> Result<Detached> {
    env::require_root("detach")?;
    let (id, rec) = find_attachment(cgroup)?;
    let dir = pin_dir(id);
    if !dir.exists() {
        bail!(
            "nothing of virtuos is attached to {} (no {})",
            cgroup.display(),
            dir.display()
        );
    }
    let ids: Vec<u32> = rec
        .as_ref()
        .map(|r| r.hooks.iter().filter_map(|h| h.prog_id).collect())
        .unwrap_or_default();
    let removed = remove_pins(&dir)?;
    let _ = std::fs::remove_file(record_path(id));
    // Programs are freed after an RCU grace period: wait briefly for them to go.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut still: Vec<u32>;
    loop {
        let loaded = loaded_ids();
        still = ids.iter().copied().filter(|i| loaded.contains(i)).collect();
        if still.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Detached {
        cgroup_id: id,
        removed,
        still_loaded: still,
    })
}

fn loaded_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok().map(|p| p.id()))
        .collect()
}

/// Prints what `attach` did.
pub fn print_attached(r: &Record) {
    println!(
        "attached to cgroup {} (id {}){}{}, pinned under {}",
        r.cgroup.display(),
        r.cgroup_id,
        if r.created { ", created" } else { "" },
        if r.enforce {
            ", enforcing"
        } else {
            ", telemetry only"
        },
        r.pin_dir.display()
    );
    print_hooks(&r.hooks, "  ");
}

fn print_hooks(hooks: &[Hook], indent: &str) {
    for h in hooks {
        let id = h.prog_id.map(|i| format!(" prog {i}")).unwrap_or_default();
        let why = h
            .error
            .as_deref()
            .map(|e| format!(" - {e}"))
            .unwrap_or_default();
        println!(
            "{indent}{:<9} {:<26} {:<8}{id}{why}",
            format!("{:?}", h.role).to_lowercase(),
            h.attach,
            h.state
        );
    }
}

/// Options of `status`.
#[derive(Clone, Debug, Default)]
pub struct StatusOpts {
    /// Storage domain sockets to check.
    pub storage: Vec<PathBuf>,
    /// Network domain sockets to check.
    pub net: Vec<PathBuf>,
    /// Print JSON.
    pub json: bool,
}

/// What the kernel says to each BPF LSM variant right now (a load without attaching).
fn probe_lsm() -> Vec<Hook> {
    let mut out = Vec::new();
    let obj = match env::object_path() {
        Ok(o) => o,
        Err(e) => {
            let mut h = hook("lsm", "lsm/*".into(), Role::Lsm);
            h.state = "failed".into();
            h.error = Some(e.to_string());
            return vec![h];
        }
    };
    let btf = aya::Btf::from_sys_fs();
    let mut ebpf = match EbpfLoader::new().load_file(&obj) {
        Ok(e) => e,
        Err(e) => {
            let mut h = hook("lsm", "lsm/*".into(), Role::Lsm);
            h.state = "failed".into();
            h.error = Some(format!("loading {}: {e}", obj.display()));
            return vec![h];
        }
    };
    for (program, lsm_hook, per_cgroup) in LSM {
        let prefix = if per_cgroup { "lsm_cgroup" } else { "lsm" };
        let mut h = hook(program, format!("{prefix}/{lsm_hook}"), Role::Lsm);
        match &btf {
            Err(e) => {
                h.state = "failed".into();
                h.error = Some(format!("kernel BTF missing ({e})"));
            }
            Ok(btf) => {
                let r = (|| -> Result<(), ProgramError> {
                    let prog = ebpf.program_mut(program).ok_or(ProgramError::NotLoaded)?;
                    if per_cgroup {
                        let p: &mut LsmCgroup = prog.try_into()?;
                        p.load(lsm_hook, btf)
                    } else {
                        let p: &mut Lsm = prog.try_into()?;
                        p.load(lsm_hook, btf)
                    }
                })();
                match r {
                    Ok(()) => {
                        h.state = "loadable".into();
                    }
                    Err(e) => set_err(&mut h, &format!("loading {prefix}/{lsm_hook}"), &e),
                }
            }
        }
        out.push(h);
    }
    out
}

fn domain_health(kind: &str, sock: &Path) -> serde_json::Value {
    let cfg = xen_transport::ClientConfig {
        channels: 1,
        ..xen_transport::ClientConfig::default()
    };
    let t0 = Instant::now();
    match xen_transport::control::connect_session(sock, &cfg) {
        Ok(_s) => serde_json::json!({
            "domain": kind, "socket": sock, "ok": true,
            "connect_us": t0.elapsed().as_micros() as u64,
        }),
        Err(e) => serde_json::json!({
            "domain": kind, "socket": sock, "ok": false, "error": e.to_string(),
        }),
    }
}

/// `status`: attached cgroups and their programs, hook states with the kernel's answers, and
/// the health of the service domains given.
pub fn status(opts: &StatusOpts) -> Result<()> {
    let mut domains = Vec::new();
    for s in &opts.storage {
        domains.push(domain_health("storage", s));
    }
    for s in &opts.net {
        domains.push(domain_health("net", s));
    }
    // SAFETY: geteuid has no failure mode.
    let root = unsafe { libc::geteuid() } == 0;
    let mut attached = Vec::new();
    let mut kernel = Vec::new();
    if root {
        for id in attached_ids() {
            let dir = pin_dir(id);
            let rec = read_record(id);
            let mut programs = Vec::new();
            let mut pins: Vec<String> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            pins.sort();
            for p in pins.iter().filter(|p| p.starts_with("prog_")) {
                if let Ok(info) = ProgramInfo::from_pin(dir.join(p)) {
                    programs.push(serde_json::json!({
                        "pin": p, "id": info.id(),
                        "name": info.name_as_str().unwrap_or(""),
                        "type": format!("{:?}", info.program_type()),
                        "linked": pins.contains(&p.replacen("prog_", "link_", 1)),
                    }));
                }
            }
            let members = rec
                .as_ref()
                .and_then(|r| std::fs::read_to_string(r.cgroup.join("cgroup.procs")).ok())
                .map(|s| s.lines().count());
            attached.push(serde_json::json!({
                "cgroup_id": id,
                "pin_dir": dir,
                "record": rec,
                "processes": members,
                "programs": programs,
                "pins": pins,
            }));
        }
        kernel = probe_lsm();
    }
    let out = serde_json::json!({
        "root": root,
        "attached": attached,
        "lsm_probe": kernel,
        "domains": domains,
        "supervised": crate::domains::status_report().0,
    });
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if !root {
        println!(
            "eBPF: run as root to read {} (attachments not shown)",
            env::PIN_ROOT
        );
    } else if attached.is_empty() {
        println!("eBPF: nothing attached ({} is empty)", env::PIN_ROOT);
    }
    for a in &attached {
        let rec: Option<Record> = serde_json::from_value(a["record"].clone()).ok();
        match &rec {
            Some(r) => {
                println!(
                    "cgroup {} (id {}): {}, {} process(es), pinned under {}",
                    r.cgroup.display(),
                    r.cgroup_id,
                    if r.enforce {
                        "enforcing"
                    } else {
                        "telemetry only"
                    },
                    a["processes"]
                        .as_u64()
                        .map_or("?".into(), |n| n.to_string()),
                    r.pin_dir.display()
                );
                print_hooks(&r.hooks, "  ");
            }
            None => println!(
                "cgroup id {}: pinned under {} but its record is missing",
                a["cgroup_id"],
                a["pin_dir"].as_str().unwrap_or("")
            ),
        }
        for p in a["programs"].as_array().into_iter().flatten() {
            println!(
                "  program {:<22} id {:<6} {:<20} {}",
                p["name"].as_str().unwrap_or(""),
                p["id"],
                p["type"].as_str().unwrap_or(""),
                if p["linked"].as_bool() == Some(true) {
                    "attached"
                } else {
                    "loaded, not attached"
                }
            );
        }
    }
    if root {
        println!("kernel answer to the BPF LSM variants (load without attach, now):");
        print_hooks(&kernel, "  ");
    }
    for line in crate::domains::status_report().1 {
        println!("{line}");
    }
    for d in &domains {
        if d["ok"].as_bool() == Some(true) {
            println!(
                "{} domain at {}: ok (session in {} us)",
                d["domain"].as_str().unwrap_or(""),
                d["socket"].as_str().unwrap_or(""),
                d["connect_us"]
            );
        } else {
            println!(
                "{} domain at {}: error: {}",
                d["domain"].as_str().unwrap_or(""),
                d["socket"].as_str().unwrap_or(""),
                d["error"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// `run --enforce`: a fresh cgroup with enforcement attached, `run` itself moved into it with
/// the io_uring seccomp filter before it execs into the program, and everything removed
/// afterwards by a keeper (`keeper.rs`).
pub struct EnforcedRun {
    /// The cgroup made for this run.
    pub cgroup: PathBuf,
    procs: File,
    filter: Vec<libc::sock_filter>,
    logger: Option<LogPump>,
    /// The loaded object, until its log pump starts (in the process that keeps the run).
    ebpf: Option<Ebpf>,
}

impl EnforcedRun {
    /// Creates `<cgroup2>/virtuos/run-<pid>` and attaches enforcement to it.
    pub fn start() -> Result<EnforcedRun> {
        env::require_root("run --enforce")?;
        let rel = PathBuf::from(format!("virtuos/run-{}", std::process::id()));
        let attached = attach(&AttachOpts {
            cgroup: rel,
            enforce: true,
            create: true,
            export: None,
        })?;
        let cgroup = attached.record.cgroup.clone();
        let inactive: Vec<&Hook> = attached
            .record
            .hooks
            .iter()
            .filter(|h| h.role == Role::Lsm && h.state != "active")
            .collect();
        if !inactive.is_empty() {
            eprintln!(
                "virtuos-redirect: enforcing in {} with cgroup socket hooks and a seccomp io_uring filter; \
                 BPF LSM variants refused by the kernel ({}; see `status`)",
                cgroup.display(),
                inactive
                    .iter()
                    .map(|h| format!(
                        "{} {}",
                        h.attach,
                        h.errno.map_or("failed".into(), |e| format!("errno {e}"))
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(cgroup.join("cgroup.procs"))
            .with_context(|| format!("opening {}/cgroup.procs", cgroup.display()))?;
        Ok(EnforcedRun {
            cgroup,
            procs,
            filter: seccomp::io_uring_filter(),
            logger: None,
            ebpf: Some(attached.ebpf),
        })
    }

    /// Starts forwarding the eBPF programs' log records to stderr (a thread: call it in the
    /// process that keeps the run, after any fork).
    pub fn start_log(&mut self) {
        if let Some(e) = self.ebpf.take() {
            self.logger = LogPump::start(e);
        }
    }

    /// Moves this process into the cgroup and installs the seccomp filter: the step before
    /// it execs into the program.
    pub fn enter(&self) -> Result<()> {
        use std::io::Write;
        (&self.procs)
            .write_all(b"0")
            .with_context(|| format!("joining {}", self.cgroup.display()))?;
        seccomp::install(&self.filter).context("installing the io_uring seccomp filter")
    }

    /// Detaches, kills what is left in the cgroup and removes it.
    pub fn finish(mut self) -> Result<()> {
        if let Some(l) = self.logger.take() {
            l.stop();
        }
        let r = detach(&self.cgroup);
        let procs = self.cgroup.join("cgroup.procs");
        let empty = || {
            std::fs::read_to_string(&procs)
                .map(|s| s.trim().is_empty())
                .unwrap_or(true)
        };
        if !empty() {
            let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
            let deadline = Instant::now() + Duration::from_secs(2);
            while !empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let mut rm = std::fs::remove_dir(&self.cgroup);
        for _ in 0..50 {
            if rm.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            rm = std::fs::remove_dir(&self.cgroup);
        }
        rm.with_context(|| format!("removing cgroup {}", self.cgroup.display()))?;
        r.map(|_| ())
    }
}

/// Forwards aya-log records of a loaded object to stderr from a thread.
struct LogPump {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        eprintln!("virtuos-ebpf [{}]: {}", r.level(), r.args());
    }
    fn flush(&self) {}
}

impl LogPump {
    fn start(mut ebpf: Ebpf) -> Option<LogPump> {
        // After the programs are loaded (aya-log finds its ring buffer through them).
        let mut logger = match aya_log::EbpfLogger::init_with_logger(&mut ebpf, StderrLog) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("virtuos-redirect: eBPF log not available: {e}");
                return None;
            }
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let _keep = ebpf;
            let fd = logger.as_raw_fd();
            loop {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 100) };
                logger.flush();
                if s2.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
            }
        });
        Some(LogPump { stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Resolved attach records by cgroup id (for `top`).
pub fn records_by_id() -> StdHashMap<u64, Record> {
    records().into_iter().map(|r| (r.cgroup_id, r)).collect()
}

/// Opens a pinned map of an attachment.
pub fn pinned_map(id: u64, name: &str) -> Result<MapData> {
    let p = pin_dir(id).join(format!("map_{name}"));
    MapData::from_pin(&p).with_context(|| format!("opening {}", p.display()))
}
