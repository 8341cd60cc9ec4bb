//! `virtuos-storage`: the storage component of virtuos. Not built yet: issue #4 owns it.
//! Until then the binary says so and exits with status 2, so scripts cannot mistake it for a
//! working component.

fn main() {
    eprintln!("virtuos-storage: not implemented yet (tracked by issue #4); see README.md");
    std::process::exit(2);
}
