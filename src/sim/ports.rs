//! Loopback ports for servers started from a config written before they bind (tests,
//! the load harness).

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// The range handed out: below the kernel's ephemeral range (32768 and up by default).
const FIRST: u32 = 20_000;
const COUNT: u32 = 10_000;

/// A 127.0.0.1 port free at the time of asking.
///
/// Not `bind(0)`: that returns a port from the ephemeral range, the kind the kernel hands
/// the next `bind(0)` or `connect` (a simulator, a client, an upstream connection) in the
/// moment before the server binds it, and two callers asking at once can be given the
/// same one. Instead each process walks its own sequence below that range, once, from
/// a start derived from its pid so that two processes side by side do not walk the same
/// ports, and checks each port is free before handing it out.
pub fn free_port() -> std::io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id().wrapping_mul(7919)) % COUNT;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        if n >= COUNT {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "no free loopback port left in 20000..30000",
            ));
        }
        // Always below 30000, so always a u16.
        let Ok(port) = u16::try_from(FIRST + (start + n) % COUNT) else {
            continue;
        };
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
}
