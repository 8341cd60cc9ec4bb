//! Operation numbers carried in [`crate::Request::opcode`].
//!
//! Numbers below 256 belong to the transport and service runtime and are answered by every
//! server; the storage and network domains add their own ranges as they implement them.

macro_rules! opcodes {
    ($( $(#[$doc:meta])* $name:ident = $num:expr, )*) => {
        /// An operation a server can be asked to perform.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Opcode {
            $( $(#[$doc])* $name = $num, )*
        }

        impl Opcode {
            /// Every opcode this version knows.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name),*];

            /// Decodes an opcode number; `None` for numbers this version does not know.
            pub const fn from_u16(n: u16) -> Option<Opcode> {
                match n {
                    $( $num => Some(Opcode::$name), )*
                    _ => None,
                }
            }

            /// A short lower-case name for logs and telemetry.
            pub const fn name(self) -> &'static str {
                match self {
                    $( Opcode::$name => stringify!($name), )*
                }
            }
        }
    };
}

opcodes! {
    /// Does nothing and returns `args[0] & i64::MAX` straight from the polling thread (ring
    /// round-trip probe; the echoed token lets tests prove nothing is lost or duplicated).
    Nop = 0,
    /// Executes an io_uring `NOP` and returns its completion (io_uring path probe).
    UringNop = 1,
    /// Reverses the payload in place in the data window and returns its length (data-area probe).
    Echo = 2,
    /// Returns the caller's credentials as the server sees them: `aux = [pid, uid, gid]`.
    WhoAmI = 3,
    /// Sleeps `args[0]` microseconds on the server's io_uring (a timeout), then returns 0:
    /// a stand-in for a slow device call, used to test shutdown and waiting.
    Delay = 4,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for &op in Opcode::ALL {
            assert_eq!(Opcode::from_u16(op as u16), Some(op));
        }
        assert_eq!(Opcode::from_u16(999), None);
    }
}
