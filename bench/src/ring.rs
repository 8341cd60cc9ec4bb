//! Placeholder for the shared-memory ring benchmarks (replaced by the transport owner).

use anyhow::anyhow;

/// How the ring's consumer waits for work.
pub enum RingMode {
    /// Busy-poll the ring.
    Spin,
    /// Sleep on a futex when the ring is empty.
    Sleep,
}

/// Measures `samples` ring round trips, returning per-operation latencies in ns.
pub fn measure(mode: RingMode, samples: usize) -> anyhow::Result<Vec<u64>> {
    let _ = (mode, samples);
    Err(anyhow!("ring transport not wired yet"))
}
