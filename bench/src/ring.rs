//! Round trips over the virtuos shared-memory ring against a separate server process.
//!
//! The server is `virtuos-probe` (built with the workspace, found next to this binary), pinned
//! to the peer CPU; the client thread is pinned to the client CPU. Each sample is one `Nop`
//! request: written into a ring slot, consumed by the server's polling worker, answered, and
//! read back. `Spin` uses the default adaptive spin on both sides; `Sleep` disables spinning
//! on both sides, so every request rings the server's eventfd and every response wakes the
//! client's futex (the cost the adaptive wait avoids while busy).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xen_transport::control::connect_session;
use xen_transport::{ClientConfig, SpinPolicy};

use crate::syscalls::Pinning;

/// How both sides of the ring wait.
#[derive(Clone, Copy, Debug)]
pub enum RingMode {
    /// Adaptive spin-then-sleep on both sides (they stay in the spin phase while busy).
    Spin,
    /// No spinning: both sides sleep between requests.
    Sleep,
}

struct Server(Child, PathBuf);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.1);
    }
}

fn probe_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating virtuos-bench")?;
    let probe = exe.with_file_name("virtuos-probe");
    if !probe.exists() {
        bail!(
            "{} not found: build the whole workspace (`cargo build --release --workspace`) so \
             the probe server sits next to virtuos-bench",
            probe.display()
        );
    }
    Ok(probe)
}

fn start_server(mode: RingMode, cpu: Option<usize>) -> Result<Server> {
    let sock = std::env::temp_dir().join(format!("virtuos-bench-{}.sock", std::process::id()));
    let mut cmd = Command::new(probe_binary()?);
    cmd.arg("--listen")
        .arg(&sock)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    if let Some(cpu) = cpu {
        cmd.arg("--cpus").arg(cpu.to_string());
    }
    if let RingMode::Sleep = mode {
        cmd.arg("--spin-max-ns").arg("0");
    }
    let child = cmd.spawn().context("starting virtuos-probe")?;
    let server = Server(child, sock);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.1.exists() {
        if Instant::now() > deadline {
            bail!(
                "virtuos-probe did not create {} within 10 s",
                server.1.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(server)
}

/// Measures `samples` ring round trips, returning per-operation latencies in ns.
pub fn measure(mode: RingMode, samples: usize, pin: Pinning) -> Result<Vec<u64>> {
    let server = start_server(mode, pin.other)?;
    let cfg = ClientConfig {
        channels: 4,
        spin: match mode {
            RingMode::Spin => SpinPolicy::CLIENT,
            RingMode::Sleep => SpinPolicy::SLEEP,
        },
        ..ClientConfig::default()
    };
    let path = server.1.clone();
    let client_cpu = pin.client;
    let out = std::thread::spawn(move || -> Result<Vec<u64>> {
        crate::sys::maybe_pin(client_cpu);
        let session = connect_session(&path, &cfg).context("connecting to virtuos-probe")?;
        let warmup = (samples / 10).max(16);
        let mut lat = Vec::with_capacity(samples);
        for i in 0..warmup + samples {
            let mut req = abi::Request {
                opcode: abi::Opcode::Nop as u16,
                ..Default::default()
            };
            req.args[0] = i as u64;
            let t = Instant::now();
            let rsp = session.call(req).context("ring call")?;
            let ns = t.elapsed().as_nanos() as u64;
            if rsp.result != i as i64 {
                bail!("ring answered {} to request {i}", rsp.result);
            }
            if i >= warmup {
                lat.push(ns);
            }
            if let RingMode::Sleep = mode {
                // Let both sides fall asleep, as between requests of an idle client.
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        let st = session.stats();
        tracing::info!(
            ?mode,
            calls = st.calls,
            spins = st.spins,
            sleeps = st.sleeps,
            wakeups = st.wakeups,
            "client wait counters"
        );
        Ok(lat)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("ring client thread panicked"))??;
    drop(server);
    Ok(out)
}
