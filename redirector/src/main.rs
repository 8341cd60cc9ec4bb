//! `virtuos-redirect`: the redirector component of virtuos. Not built yet: issue #4-and-5 owns it.
//! Until then the binary says so and exits with status 2, so scripts cannot mistake it for a
//! working component.

fn main() {
    eprintln!("virtuos-redirect: not implemented yet (tracked by issue #4-and-5); see README.md");
    std::process::exit(2);
}
