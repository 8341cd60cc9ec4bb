//! What virtuos's two front ends share: the preload shim (`libvirtuos_preload.so`, for
//! dynamically linked programs) and the supervised mode (`virtuos-redirect run` of a static
//! program, through seccomp user notifications).
//!
//! A library of plain functions and types: no exported symbols, no constructors, no global
//! state. Layered bottom-up, every import pointing down:
//!
//! * [`sys`]: the system-call layer, a trait so that the layers above are unit-tested
//!   against a mock;
//! * [`table`]: the one table of routed calls;
//! * [`decode`]: a routed call's number and raw arguments decoded into a typed [`Syscall`];
//! * [`mem`]: the caller's memory behind a trait (EFAULT, never a crash);
//! * [`seccomp`]: every seccomp filter virtuos installs.

pub mod decode;
pub mod mem;
pub mod seccomp;
pub mod sys;
pub mod table;

pub use decode::{decode, Fd, Syscall, UserPtr};
pub use mem::{CallerMemory, MemError, ProcessMemory};
pub use table::{Class, Routed, ROUTED};
