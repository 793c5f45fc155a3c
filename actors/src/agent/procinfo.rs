//! What /proc says about processes: the boot id, a process's start time,
//! and whether a checkpointed pid is still the same process. A pid is only
//! trusted with its start time and the boot id: pids are reused.

use std::path::Path;

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Fields of /proc/PID/stat after the command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// The process's start time in clock ticks since boot (field 22), if it
/// exists and is not a zombie.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    // f[0] is field 3 (the state); field 22 is f[19].
    if f.first().map(String::as_str) == Some("Z") {
        return None;
    }
    f.get(19)?.parse().ok()
}

/// Whether `pid` is still the process that was checkpointed.
pub fn same_process(pid: u32, ticks: u64, boot: &str) -> bool {
    pid != 0 && boot == boot_id() && start_ticks(pid) == Some(ticks)
}

/// Pids whose command line contains `needle` (an executor's task dir).
pub fn find_by_cmdline(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) && start_ticks(pid).is_some() {
                out.push(pid);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_itself_and_a_wrong_start_time_is_not() {
        let me = std::process::id();
        let ticks = start_ticks(me).expect("our own start time");
        let boot = boot_id();
        assert!(!boot.is_empty());
        assert!(same_process(me, ticks, &boot));
        assert!(!same_process(me, ticks + 1, &boot));
        assert!(!same_process(me, ticks, "another-boot"));
        assert!(!same_process(0, ticks, &boot));
    }
}
