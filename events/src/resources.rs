//! Resources: what an agent has, a task uses and an offer carries.
//!
//! Owns the fixed-point `Resources` value (cpus in thousandths, memory and
//! disk in MB, port ranges), its arithmetic, its validation and Mesos' text
//! form (`cpus:4;mem:8192;disk:20000;ports:[31000-32000]`). Fixed point keeps
//! sums exact, so `used + offered <= total` never fails by rounding and replay
//! is bit-identical. It must not know about agents or offers.

use std::fmt;

use orrery_proto::events as pb;

use crate::rejection::Rejection;

/// The largest amount of any scalar resource one agent may declare. Bounds
/// every sum over a cluster of a million agents well inside u64.
pub const SCALAR_MAX: u64 = 1 << 40;

/// A set of ports as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PortSet {
    ranges: Vec<(u32, u32)>,
}

impl PortSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from ranges as a client wrote them; refuses inverted,
    /// overlapping or out-of-range ranges (a client that overlaps ranges has
    /// a bug we should tell it about, not paper over).
    pub fn from_ranges(ranges: &[(u32, u32)]) -> Result<Self, Rejection> {
        let mut sorted: Vec<(u32, u32)> = ranges.to_vec();
        sorted.sort_unstable();
        for &(b, e) in &sorted {
            if b > e || e > u32::from(u16::MAX) {
                return Err(Rejection::InvalidResources {
                    problem: format!("port range [{b}-{e}] is inverted or beyond 65535"),
                });
            }
        }
        for w in sorted.windows(2) {
            if w[1].0 <= w[0].1 {
                return Err(Rejection::InvalidResources {
                    problem: format!(
                        "port ranges [{}-{}] and [{}-{}] overlap",
                        w[0].0, w[0].1, w[1].0, w[1].1
                    ),
                });
            }
        }
        let mut set = PortSet::new();
        for (b, e) in sorted {
            set.insert_range(b, e);
        }
        Ok(set)
    }

    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn count(&self) -> u64 {
        self.ranges.iter().map(|&(b, e)| u64::from(e - b) + 1).sum()
    }

    fn insert_range(&mut self, b: u32, e: u32) {
        // Merge with every range that overlaps or touches [b, e].
        let mut nb = b;
        let mut ne = e;
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        let mut placed = false;
        for &(rb, re) in &self.ranges {
            if re.saturating_add(1) < nb {
                out.push((rb, re));
            } else if ne.saturating_add(1) < rb {
                if !placed {
                    out.push((nb, ne));
                    placed = true;
                }
                out.push((rb, re));
            } else {
                nb = nb.min(rb);
                ne = ne.max(re);
            }
        }
        if !placed {
            out.push((nb, ne));
        }
        self.ranges = out;
    }

    pub fn union(&self, other: &PortSet) -> PortSet {
        let mut s = self.clone();
        for &(b, e) in &other.ranges {
            s.insert_range(b, e);
        }
        s
    }

    pub fn contains(&self, other: &PortSet) -> bool {
        other
            .ranges
            .iter()
            .all(|&(b, e)| self.ranges.iter().any(|&(rb, re)| rb <= b && e <= re))
    }

    /// Whether any port is in both sets (no allocation).
    pub fn intersects(&self, other: &PortSet) -> bool {
        let (mut i, mut j) = (0, 0);
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a, b) = (self.ranges[i], other.ranges[j]);
            if a.1 < b.0 {
                i += 1;
            } else if b.1 < a.0 {
                j += 1;
            } else {
                return true;
            }
        }
        false
    }

    pub fn contains_port(&self, port: u32) -> bool {
        self.ranges.iter().any(|&(b, e)| b <= port && port <= e)
    }

    /// `self` minus `other`, whether or not `other` is contained.
    pub fn difference(&self, other: &PortSet) -> PortSet {
        let mut out = Vec::new();
        for &(b, e) in &self.ranges {
            let mut cur = b;
            let mut done = false;
            for &(ob, oe) in &other.ranges {
                if oe < cur || ob > e {
                    continue;
                }
                if ob > cur {
                    out.push((cur, ob - 1));
                }
                if oe >= e {
                    done = true;
                    break;
                }
                cur = oe + 1;
            }
            if !done {
                out.push((cur, e));
            }
        }
        PortSet { ranges: out }
    }

    /// The first `n` ports of the set, lowest first (used to hand PORT0.. to
    /// a task that asked for a number of ports).
    pub fn take_first(&self, n: u64) -> Option<PortSet> {
        let mut left = n;
        let mut out = Vec::new();
        for &(b, e) in &self.ranges {
            if left == 0 {
                break;
            }
            let len = u64::from(e - b) + 1;
            let take = len.min(left);
            out.push((b, b + (take as u32) - 1));
            left -= take;
        }
        (left == 0).then_some(PortSet { ranges: out })
    }
}

impl fmt::Debug for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, (b, e)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{b}-{e}")?;
        }
        f.write_str("]")
    }
}

/// Resources in fixed point. `Default` is "nothing".
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Resources {
    pub cpus_milli: u64,
    pub mem_mb: u64,
    pub disk_mb: u64,
    pub ports: PortSet,
}

impl Resources {
    pub fn new(cpus_milli: u64, mem_mb: u64, disk_mb: u64) -> Self {
        Self {
            cpus_milli,
            mem_mb,
            disk_mb,
            ports: PortSet::new(),
        }
    }

    pub fn with_ports(mut self, ranges: &[(u32, u32)]) -> Result<Self, Rejection> {
        self.ports = PortSet::from_ranges(ranges)?;
        Ok(self)
    }

    pub fn is_empty(&self) -> bool {
        self.cpus_milli == 0 && self.mem_mb == 0 && self.disk_mb == 0 && self.ports.is_empty()
    }

    /// Whether every part of `other` fits in `self`.
    pub fn contains(&self, other: &Resources) -> bool {
        self.cpus_milli >= other.cpus_milli
            && self.mem_mb >= other.mem_mb
            && self.disk_mb >= other.disk_mb
            && self.ports.contains(&other.ports)
    }

    /// Adds `other`. Scalars saturate: every input was bounded by
    /// [`SCALAR_MAX`], so saturation would itself be an invariant failure.
    pub fn add(&mut self, other: &Resources) {
        self.cpus_milli = self.cpus_milli.saturating_add(other.cpus_milli);
        self.mem_mb = self.mem_mb.saturating_add(other.mem_mb);
        self.disk_mb = self.disk_mb.saturating_add(other.disk_mb);
        if !other.ports.is_empty() {
            self.ports = self.ports.union(&other.ports);
        }
    }

    /// Subtracts `other`, flooring at zero. Callers that need exactness check
    /// [`Resources::contains`] first; the invariants catch any drift.
    pub fn subtract(&mut self, other: &Resources) {
        self.cpus_milli = self.cpus_milli.saturating_sub(other.cpus_milli);
        self.mem_mb = self.mem_mb.saturating_sub(other.mem_mb);
        self.disk_mb = self.disk_mb.saturating_sub(other.disk_mb);
        if !other.ports.is_empty() {
            self.ports = self.ports.difference(&other.ports);
        }
    }

    pub fn minus(&self, other: &Resources) -> Resources {
        let mut r = self.clone();
        r.subtract(other);
        r
    }

    pub fn plus(&self, other: &Resources) -> Resources {
        let mut r = self.clone();
        r.add(other);
        r
    }

    /// The scalar part only (DRF shares ignore ports, as Mesos does for
    /// non-scalar resources).
    pub fn scalars(&self) -> Resources {
        Resources::new(self.cpus_milli, self.mem_mb, self.disk_mb)
    }

    /// Checks the bounds every declared resource obeys.
    pub fn validate(&self) -> Result<(), Rejection> {
        for (name, v) in [
            ("cpus", self.cpus_milli),
            ("mem", self.mem_mb),
            ("disk", self.disk_mb),
        ] {
            if v > SCALAR_MAX {
                return Err(Rejection::InvalidResources {
                    problem: format!("{name} is larger than the limit {SCALAR_MAX}"),
                });
            }
        }
        Ok(())
    }

    /// Parses Mesos' text form: `cpus:4;mem:8192;disk:20000;ports:[31000-32000]`.
    /// Cpus may be fractional (`cpus:0.5`); mem and disk are MB.
    pub fn parse(text: &str) -> Result<Resources, Rejection> {
        let bad = |problem: String| Rejection::InvalidResources { problem };
        let mut r = Resources::default();
        let mut seen = std::collections::BTreeSet::new();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once(':')
                .ok_or_else(|| bad(format!("`{part}` is not NAME:VALUE")))?;
            let name = name.trim();
            let value = value.trim();
            if !seen.insert(name.to_owned()) {
                return Err(bad(format!("`{name}` is given twice")));
            }
            match name {
                "cpus" => r.cpus_milli = cpus_milli_from_f64(parse_number(name, value)?)?,
                "mem" => r.mem_mb = scalar_from_f64(name, parse_number(name, value)?)?,
                "disk" => r.disk_mb = scalar_from_f64(name, parse_number(name, value)?)?,
                "ports" => r.ports = parse_port_ranges(value)?,
                other => {
                    return Err(bad(format!(
                        "unknown resource `{other}` (known: cpus, mem, disk, ports)"
                    )))
                }
            }
        }
        r.validate()?;
        Ok(r)
    }

    pub fn to_proto(&self) -> pb::Resources {
        pb::Resources {
            cpus_milli: self.cpus_milli,
            mem_mb: self.mem_mb,
            disk_mb: self.disk_mb,
            ports: self
                .ports
                .ranges()
                .iter()
                .map(|&(begin, end)| pb::PortRange { begin, end })
                .collect(),
        }
    }

    /// Converts from the wire, validating (a client's message may be hostile).
    pub fn from_proto(p: &pb::Resources) -> Result<Resources, Rejection> {
        let ranges: Vec<(u32, u32)> = p.ports.iter().map(|r| (r.begin, r.end)).collect();
        let r = Resources::new(p.cpus_milli, p.mem_mb, p.disk_mb).with_ports(&ranges)?;
        r.validate()?;
        Ok(r)
    }

    /// Converts from the log, where the value was validated before it was
    /// written. Apply uses this: it must be total, so a range the decoder let
    /// through is merged rather than refused.
    pub fn from_logged(p: Option<&pb::Resources>) -> Resources {
        let Some(p) = p else {
            return Resources::default();
        };
        let mut ports = PortSet::new();
        for r in &p.ports {
            ports.insert_range(r.begin.min(r.end), r.end.max(r.begin));
        }
        Resources {
            cpus_milli: p.cpus_milli,
            mem_mb: p.mem_mb,
            disk_mb: p.disk_mb,
            ports,
        }
    }
}

fn parse_number(name: &str, value: &str) -> Result<f64, Rejection> {
    value
        .parse::<f64>()
        .map_err(|_| Rejection::InvalidResources {
            problem: format!("{name} value `{value}` is not a number"),
        })
}

/// Converts Mesos' floating-point cpus to thousandths, refusing negative,
/// NaN, infinite and absurdly large values.
pub fn cpus_milli_from_f64(cpus: f64) -> Result<u64, Rejection> {
    if !cpus.is_finite() || cpus < 0.0 {
        return Err(Rejection::InvalidResources {
            problem: format!("cpus {cpus} is negative or not finite"),
        });
    }
    let milli = (cpus * 1000.0).round();
    if milli > SCALAR_MAX as f64 {
        return Err(Rejection::InvalidResources {
            problem: format!("cpus {cpus} is larger than the limit"),
        });
    }
    Ok(milli as u64)
}

fn scalar_from_f64(name: &str, v: f64) -> Result<u64, Rejection> {
    if !v.is_finite() || v < 0.0 {
        return Err(Rejection::InvalidResources {
            problem: format!("{name} {v} is negative or not finite"),
        });
    }
    if v > SCALAR_MAX as f64 {
        return Err(Rejection::InvalidResources {
            problem: format!("{name} {v} is larger than the limit {SCALAR_MAX}"),
        });
    }
    Ok(v.round() as u64)
}

fn parse_port_ranges(value: &str) -> Result<PortSet, Rejection> {
    let bad = |problem: String| Rejection::InvalidResources { problem };
    let inner = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .ok_or_else(|| bad(format!("ports `{value}` must look like [31000-32000]")))?;
    let mut ranges = Vec::new();
    for r in inner.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        let (b, e) = r.split_once('-').unwrap_or((r, r));
        let parse = |s: &str| {
            s.trim()
                .parse::<u32>()
                .map_err(|_| bad(format!("port `{}` in `{r}` is not a number", s.trim())))
        };
        ranges.push((parse(b)?, parse(e)?));
    }
    PortSet::from_ranges(&ranges)
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cpus = self.cpus_milli as f64 / 1000.0;
        write!(f, "cpus:{cpus};mem:{};disk:{}", self.mem_mb, self.disk_mb)?;
        if !self.ports.is_empty() {
            write!(f, ";ports:{}", self.ports)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_mesos_text() {
        let r = Resources::parse("cpus:4;mem:8192;disk:20000;ports:[31000-32000]").unwrap();
        assert_eq!(r.cpus_milli, 4000);
        assert_eq!(r.mem_mb, 8192);
        assert_eq!(r.disk_mb, 20000);
        assert_eq!(r.ports.ranges(), &[(31000, 32000)]);
        assert_eq!(
            r.to_string(),
            "cpus:4;mem:8192;disk:20000;ports:[31000-32000]"
        );
        let half = Resources::parse("cpus:0.5").unwrap();
        assert_eq!(half.cpus_milli, 500);
    }

    #[test]
    fn refuses_bad_text() {
        for bad in [
            "cpus:-1",
            "cpus:NaN",
            "cpus:inf",
            "mem:lots",
            "gpus:1",
            "cpus",
            "cpus:1;cpus:2",
            "ports:[10-5]",
            "ports:[1-10,5-20]",
            "ports:31000-32000",
            "ports:[70000-70001]",
            "mem:1e300",
        ] {
            let err = Resources::parse(bad).unwrap_err();
            assert!(
                matches!(err, Rejection::InvalidResources { .. }),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn port_arithmetic() {
        let all = PortSet::from_ranges(&[(100, 200)]).unwrap();
        let some = PortSet::from_ranges(&[(120, 130), (150, 150)]).unwrap();
        let rest = all.difference(&some);
        assert_eq!(rest.ranges(), &[(100, 119), (131, 149), (151, 200)]);
        assert_eq!(rest.union(&some), all);
        assert!(all.contains(&some));
        assert!(!rest.contains(&some));
        assert_eq!(all.take_first(3).unwrap().ranges(), &[(100, 102)]);
        assert!(some.take_first(20).is_none());
    }

    fn ranges() -> impl Strategy<Value = PortSet> {
        proptest::collection::vec((0u32..2000, 0u32..50), 0..6).prop_map(|v| {
            let mut s = PortSet::new();
            for (b, len) in v {
                s.insert_range(b, b + len);
            }
            s
        })
    }

    proptest! {
        #[test]
        fn port_sets_behave_like_sets(a in ranges(), b in ranges()) {
            let u = a.union(&b);
            prop_assert!(u.contains(&a) && u.contains(&b));
            let d = a.difference(&b);
            prop_assert!(a.contains(&d));
            prop_assert_eq!(d.union(&b).count(), u.count());
            prop_assert_eq!(a.intersects(&b), (0..2100u32).any(|p| a.contains_port(p) && b.contains_port(p)));
            for w in u.ranges().windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0, "ranges stay disjoint and non-adjacent");
            }
            for p in 0..2100u32 {
                prop_assert_eq!(u.contains_port(p), a.contains_port(p) || b.contains_port(p));
                prop_assert_eq!(d.contains_port(p), a.contains_port(p) && !b.contains_port(p));
            }
        }
    }
}
