//! The blocking pool: a few threads for the calls io_uring cannot run (or cannot confine), so
//! that the polling workers never block.
//!
//! A job is a plain closure; the worker that queues it wraps the handler's function so that the
//! response travels back to that worker's completion queue and wakes it through its eventfd,
//! like an io_uring completion.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default number of blocking threads.
pub const DEFAULT_BLOCKING_THREADS: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// A fixed set of threads running queued closures.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    /// Starts `threads` threads named `<name>-b<i>`.
    pub(crate) fn start(name: &str, threads: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared::default());
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let shared = shared.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("virtuos-{name}-b{i}"))
                    .spawn(move || run(&shared))?,
            );
        }
        Ok(Pool {
            shared,
            threads: Mutex::new(handles),
        })
    }

    /// Queues `job`; false once the pool is closed (the job is dropped unrun).
    pub(crate) fn spawn(&self, job: Job) -> bool {
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.closed {
            return false;
        }
        q.jobs.push_back(job);
        drop(q);
        self.shared.ready.notify_one();
        true
    }

    /// Stops taking jobs, drops the queued ones, and waits up to `grace` for running ones; a
    /// thread still busy after that (a call stuck in the kernel) is left to finish on its own.
    pub(crate) fn close(&self, grace: Duration) {
        let dropped = {
            let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.closed = true;
            std::mem::take(&mut q.jobs)
        };
        drop(dropped);
        self.shared.ready.notify_all();
        let deadline = Instant::now() + grace;
        let handles = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                tracing::warn!(thread = ?h.thread().name(), "blocking call still running at shutdown");
            }
        }
    }
}

fn run(shared: &Shared) {
    loop {
        let job = {
            let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if q.closed {
                    return;
                }
                if let Some(j) = q.jobs.pop_front() {
                    break j;
                }
                q = shared.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        job();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn runs_jobs_concurrently_and_closes() {
        let pool = Pool::start("t", 3).unwrap();
        let n = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(std::sync::Barrier::new(3));
        for _ in 0..3 {
            let n = n.clone();
            let b = barrier.clone();
            // Three jobs that wait for each other finish only if they run at the same time.
            assert!(pool.spawn(Box::new(move || {
                b.wait();
                n.fetch_add(1, Ordering::SeqCst);
            })));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while n.load(Ordering::SeqCst) < 3 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        pool.close(Duration::from_secs(1));
        assert!(!pool.spawn(Box::new(|| {})));
    }
}
