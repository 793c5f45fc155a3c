//! Free loopback ports, for processes whose address must be known before
//! they bind it: a raft group's `--peers`, and the tests and benchmarks that
//! start one.
//!
//! Binding `127.0.0.1:0` and closing the socket to learn a free port leaves
//! a window in which the kernel may hand the same port to anyone who asks for
//! an ephemeral one — another test's listener, or the source port of any
//! outgoing connection — and the master that then binds it fails with
//! "Address already in use" (it happened to a CI run with dozens of tests in
//! one process). The ports handed out here come from below the kernel's
//! ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), which the
//! kernel never assigns on its own. A process-wide cursor that starts at a
//! random offset keeps the callers in one process from picking the same port
//! twice, and each port is checked with a bind before it is handed out.
//!
//! Crates that pick ports (`random-port`, for one) check a random port of a
//! range, but nothing stops two callers in one process from being handed the
//! same port before either binds it; the cursor here does, in a few lines
//! and without a dependency.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The lowest port handed out.
const LOW: u16 = 10_000;

/// The first port of the kernel's ephemeral range (Linux's default when it
/// cannot be read).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// `n` distinct free loopback ports, outside the kernel's ephemeral range
/// when it leaves room (else from it, through port 0).
pub fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    // The range and the cursor, read and drawn once per process.
    static CURSOR: OnceLock<(u16, AtomicU32)> = OnceLock::new();
    let (high, cursor) = CURSOR.get_or_init(|| {
        let high = ephemeral_start();
        let span = u64::from(high.saturating_sub(LOW).max(1));
        let random = RandomState::new().hash_one(std::process::id());
        (high, AtomicU32::new((random % span) as u32))
    });
    if *high <= LOW + 1_000 {
        // No room below the ephemeral range: let the kernel pick, holding
        // every socket open until all are picked so it cannot repeat one.
        let held = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<io::Result<Vec<_>>>()?;
        return held.iter().map(|l| Ok(l.local_addr()?.port())).collect();
    }
    pick(cursor, LOW, *high, n)
}

/// `n` ports of `low..high` that bind, going round from `cursor`; all are
/// held open until every one is picked.
fn pick(cursor: &AtomicU32, low: u16, high: u16, n: usize) -> io::Result<Vec<u16>> {
    let span = u32::from(high - low);
    let mut held = Vec::with_capacity(n);
    let mut tried = 0;
    while held.len() < n {
        if tried == span {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("no free loopback port between {low} and {high}"),
            ));
        }
        tried += 1;
        let port = low + (cursor.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// One free loopback port (see [`free_ports`]).
pub fn free_port() -> io::Result<u16> {
    Ok(free_ports(1)?[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These tests bind ports next to each other's (the cursor is shared):
    /// run alongside, one could see the other's ports as taken.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            for p in free_ports(4).expect("ports") {
                assert!(seen.insert(p), "port {p} was handed out twice");
                if ephemeral_start() > LOW + 1_000 {
                    assert!((LOW..ephemeral_start()).contains(&p), "{p}");
                }
                TcpListener::bind(("127.0.0.1", p)).expect("a handed-out port binds");
            }
        }
    }

    #[test]
    fn a_port_in_use_is_passed_over() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let taken = TcpListener::bind(("127.0.0.1", free_port().expect("a port"))).expect("bind");
        let p = taken.local_addr().expect("addr").port();
        // A cursor pointing at the taken port hands out others.
        let cursor = AtomicU32::new(0);
        let got = pick(&cursor, p, p + 3, 2).expect("two of the three");
        assert!(
            !got.contains(&p),
            "port {p} is bound and was handed out: {got:?}"
        );
        assert_eq!(got.len(), 2);
        // With every port of the range taken, the error says so.
        let cursor = AtomicU32::new(0);
        let err = pick(&cursor, p, p + 1, 1).expect_err("the only port is taken");
        assert!(err.to_string().contains("no free loopback port"), "{err}");
    }
}
