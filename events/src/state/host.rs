//! Maintenance of one machine (Peloton's host states) and the schedule
//! windows (Mesos' maintenance primitives). Owns `Host`, `HostState`,
//! `Window`; changed only by `apply`.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostState {
    Up,
    Draining,
    Drained,
    Down,
}

impl HostState {
    /// Peloton's names, which `orrery host query` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Up => "HOST_STATE_UP",
            HostState::Draining => "HOST_STATE_DRAINING",
            HostState::Drained => "HOST_STATE_DRAINED",
            HostState::Down => "HOST_STATE_DOWN",
        }
    }

    /// No new placement while a host is anything but UP.
    pub fn accepts_work(self) -> bool {
        self == HostState::Up
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MachineId {
    pub hostname: String,
    pub ip: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub machine: MachineId,
    pub state: HostState,
    pub state_since_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Unavailability {
    pub start_ns: u64,
    /// `None` is unbounded.
    pub duration_ns: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub machines: Vec<MachineId>,
    pub unavailability: Unavailability,
}
