//! `virtuos-shim-probe`: times file calls from inside a program, so `virtuos-bench latency`
//! can compare the same calls natively and under `virtuos-redirect run`.
//!
//! `virtuos-shim-probe FILE SAMPLES` prints one JSON object with per-call latencies (median,
//! p99 in ns) of: `read` of one byte from /dev/zero through libc (the shim's fast path for a
//! local fd), `pread` of 4 KiB from FILE through libc (routed to the storage domain when FILE
//! is under the mount), and the same one-byte read issued as a raw `syscall(SYS_read)` from
//! libc (which the shim can only catch with its seccomp trap).

use std::ffi::CString;
use std::time::Instant;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn time(samples: usize, mut f: impl FnMut()) -> (u64, u64) {
    for _ in 0..samples / 10 + 16 {
        f();
    }
    let mut v: Vec<u64> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as u64
        })
        .collect();
    v.sort_unstable();
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: virtuos-shim-probe FILE SAMPLES");
        std::process::exit(2);
    }
    let samples: usize = args[2].parse().expect("SAMPLES is a number");
    let zero = CString::new("/dev/zero").expect("no NUL");
    let file = CString::new(args[1].as_str()).expect("no NUL");
    // SAFETY: valid C strings; the descriptors are checked before use.
    let (z, f) = unsafe {
        (
            libc::open(zero.as_ptr(), libc::O_RDONLY),
            libc::open(file.as_ptr(), libc::O_RDONLY),
        )
    };
    assert!(
        z >= 0 && f >= 0,
        "open failed: {}",
        std::io::Error::last_os_error()
    );
    let mut buf = [0u8; 4096];
    let local = time(samples, || {
        // SAFETY: the buffer outlives the call and holds the length asked for.
        unsafe { libc::read(z, buf.as_mut_ptr().cast(), 1) };
    });
    let remote = time(samples, || {
        // SAFETY: as above.
        unsafe { libc::pread(f, buf.as_mut_ptr().cast(), 4096, 0) };
    });
    let raw = time(samples, || {
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_read, z, buf.as_mut_ptr(), 1) };
    });
    println!(
        "{{\"read_local\":[{},{}],\"pread_4k\":[{},{}],\"raw_syscall_read\":[{},{}]}}",
        local.0, local.1, remote.0, remote.1, raw.0, raw.1
    );
}
