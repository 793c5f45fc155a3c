//! Parsing the agent's flags that carry structure (Mesos' forms), with
//! errors that name the flag and the problem, and detecting the machine's
//! resources when `--resources` is omitted.

use orrery_events::state::Domain;
use orrery_events::Resources;

/// `--resources 'cpus:4;mem:8192;disk:20000;ports:[31000-32000]'`.
pub fn resources(text: &str) -> Result<Resources, String> {
    let r = Resources::parse(text).map_err(|e| format!("--resources {text:?}: {e}"))?;
    if r.cpus_milli == 0 && r.mem_mb == 0 {
        // An agent with nothing to offer is never what was meant (an empty
        // variable in a unit file, a stray `;`): say so rather than
        // register it.
        return Err(format!(
            "--resources {text:?} offers no cpus and no mem; give them (cpus:4;mem:8192), or leave the flag out to use what the machine has"
        ));
    }
    Ok(r)
}

/// `--attributes 'rack:r1;os:linux'`.
pub fn attributes(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once(':')
            .ok_or_else(|| format!("--attributes: `{part}` is not NAME:VALUE"))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || v.is_empty() {
            return Err(format!("--attributes: `{part}` has an empty name or value"));
        }
        if out.iter().any(|(n, _)| n == k) {
            return Err(format!("--attributes: `{k}` is given twice"));
        }
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

/// `--domain '{"fault_domain":{"region":{"name":"r1"},"zone":{"name":"z1"}}}'`
/// (Mesos' JSON form).
pub fn domain(text: &str) -> Result<Domain, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("--domain is not JSON: {e}"))?;
    let name = |level: &str| -> Result<String, String> {
        v.pointer(&format!("/fault_domain/{level}/name"))
            .and_then(|n| n.as_str())
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                format!(
                    "--domain needs fault_domain.{level}.name (Mesos' form: \
                     {{\"fault_domain\":{{\"region\":{{\"name\":\"r1\"}},\"zone\":{{\"name\":\"z1\"}}}}}})"
                )
            })
    };
    Ok(Domain {
        region: name("region")?,
        zone: name("zone")?,
    })
}

/// What this machine has: every cpu, the memory less 1 GiB for the system,
/// the work dir's free disk less 5 GiB, and ports 31000-32000 (Mesos'
/// defaults).
pub fn detect(work_dir: &std::path::Path) -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let mem_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(1024, |kb| (kb / 1024).saturating_sub(1024).max(256));
    let disk_mb = nix::sys::statvfs::statvfs(work_dir)
        .map(|s| (s.blocks_available().saturating_mul(s.fragment_size())) >> 20)
        .map_or(1024, |mb| mb.saturating_sub(5 * 1024).max(256));
    Resources::new(cpus * 1000, mem_mb, disk_mb)
        .with_ports(&[(31000, 32000)])
        .unwrap_or_else(|_| Resources::new(cpus * 1000, mem_mb, disk_mb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_errors_name_the_flag() {
        let r = resources("cpus:4;mem:8192;disk:20000;ports:[31000-32000]").unwrap();
        assert_eq!((r.cpus_milli, r.mem_mb, r.disk_mb), (4000, 8192, 20000));
        assert!(resources("cpus:lots")
            .unwrap_err()
            .starts_with("--resources"));
        for empty in ["", ";;;", "disk:100"] {
            let e = resources(empty).unwrap_err();
            assert!(e.contains("offers no cpus and no mem"), "{empty:?}: {e}");
        }
        assert_eq!(
            attributes("rack:r1; os:linux").unwrap(),
            vec![("rack".into(), "r1".into()), ("os".into(), "linux".into())]
        );
        assert!(attributes("rack").unwrap_err().contains("--attributes"));
        assert!(attributes("a:1;a:2").unwrap_err().contains("twice"));
        let d =
            domain(r#"{"fault_domain":{"region":{"name":"r1"},"zone":{"name":"z1"}}}"#).unwrap();
        assert_eq!((d.region.as_str(), d.zone.as_str()), ("r1", "z1"));
        assert!(domain("{").unwrap_err().contains("--domain is not JSON"));
        assert!(domain(r#"{"fault_domain":{"region":{"name":"r1"}}}"#)
            .unwrap_err()
            .contains("zone"));
        let m = detect(std::path::Path::new("/tmp"));
        assert!(m.cpus_milli >= 1000 && m.mem_mb >= 256);
    }
}
