//! `virtuos-net`: the network component of virtuos. Not built yet: issue #5 owns it.
//! Until then the binary says so and exits with status 2, so scripts cannot mistake it for a
//! working component.

fn main() {
    eprintln!("virtuos-net: not implemented yet (tracked by issue #5); see README.md");
    std::process::exit(2);
}
