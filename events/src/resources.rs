//! Resources: what an agent has, a task uses and an offer carries.
//!
//! Owns the fixed-point `Resources` value (cpus in thousandths, memory and
//! disk in MB, port ranges, and any other named scalar, ranges or set
//! resource an agent declares, as Mesos allows: `gpus:2`, `vlans:[100-200]`,
//! `disks:{ssd0,ssd1}`), its arithmetic, its validation and Mesos' text
//! form (`cpus:4;mem:8192;disk:20000;ports:[31000-32000];gpus:2`). Fixed point keeps
//! sums exact, so `used + offered <= total` never fails by rounding and replay
//! is bit-identical. It must not know about agents or offers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use orrery_proto::events as pb;

use crate::rejection::Rejection;

/// The largest amount of any scalar resource one agent may declare. Bounds
/// every sum over a cluster of a million agents well inside u64.
pub const SCALAR_MAX: u64 = 1 << 40;

/// The most named resources (scalars, ranges and sets together) one value
/// may carry, and the most items one set may hold: a hostile agent or
/// framework cannot make every offer and sum expensive.
pub const NAMED_MAX: usize = 64;
pub const SET_ITEMS_MAX: usize = 1_024;
/// The longest resource name or set item.
pub const NAME_BYTES_MAX: usize = 64;

/// The names with fields of their own.
const RESERVED: [&str; 4] = ["cpus", "mem", "disk", "ports"];

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
        Self::bounded("port", ranges, u32::from(u16::MAX))
    }

    /// As [`PortSet::from_ranges`] for ranges of another resource (`what`
    /// names it in refusals), whose values go up to `max`.
    pub fn bounded(what: &str, ranges: &[(u32, u32)], max: u32) -> Result<Self, Rejection> {
        let mut sorted: Vec<(u32, u32)> = ranges.to_vec();
        sorted.sort_unstable();
        for &(b, e) in &sorted {
            if b > e || e > max {
                return Err(Rejection::InvalidResources {
                    problem: format!("{what} range [{b}-{e}] is inverted or beyond {max}"),
                });
            }
        }
        for w in sorted.windows(2) {
            if w[1].0 <= w[0].1 {
                return Err(Rejection::InvalidResources {
                    problem: format!(
                        "{what} ranges [{}-{}] and [{}-{}] overlap",
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
///
/// The named maps never hold an empty entry (a zero scalar, an empty range
/// set or item set), so equal amounts compare equal.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Resources {
    pub cpus_milli: u64,
    pub mem_mb: u64,
    pub disk_mb: u64,
    pub ports: PortSet,
    /// Other scalars (`gpus`), in thousandths.
    pub named_scalars: BTreeMap<String, u64>,
    /// Other ranges (`vlans:[100-200]`).
    pub named_ranges: BTreeMap<String, PortSet>,
    /// Sets (`disks:{ssd0,ssd1}`).
    pub named_sets: BTreeMap<String, BTreeSet<String>>,
}

impl Resources {
    pub fn new(cpus_milli: u64, mem_mb: u64, disk_mb: u64) -> Self {
        Self {
            cpus_milli,
            mem_mb,
            disk_mb,
            ..Self::default()
        }
    }

    pub fn with_ports(mut self, ranges: &[(u32, u32)]) -> Result<Self, Rejection> {
        self.ports = PortSet::from_ranges(ranges)?;
        Ok(self)
    }

    pub fn is_empty(&self) -> bool {
        self.cpus_milli == 0
            && self.mem_mb == 0
            && self.disk_mb == 0
            && self.ports.is_empty()
            && self.named_scalars.is_empty()
            && self.named_ranges.is_empty()
            && self.named_sets.is_empty()
    }

    /// Whether every part of `other` fits in `self`.
    pub fn contains(&self, other: &Resources) -> bool {
        self.cpus_milli >= other.cpus_milli
            && self.mem_mb >= other.mem_mb
            && self.disk_mb >= other.disk_mb
            && self.ports.contains(&other.ports)
            && other
                .named_scalars
                .iter()
                .all(|(k, v)| self.named_scalars.get(k).is_some_and(|have| have >= v))
            && other.named_ranges.iter().all(|(k, v)| {
                self.named_ranges
                    .get(k)
                    .is_some_and(|have| have.contains(v))
            })
            && other.named_sets.iter().all(|(k, v)| {
                self.named_sets
                    .get(k)
                    .is_some_and(|have| have.is_superset(v))
            })
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
        for (k, v) in &other.named_scalars {
            let have = self.named_scalars.entry(k.clone()).or_insert(0);
            *have = have.saturating_add(*v);
        }
        for (k, v) in &other.named_ranges {
            let have = self.named_ranges.entry(k.clone()).or_default();
            *have = have.union(v);
        }
        for (k, v) in &other.named_sets {
            self.named_sets
                .entry(k.clone())
                .or_default()
                .extend(v.iter().cloned());
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
        for (k, v) in &other.named_scalars {
            if let Some(have) = self.named_scalars.get_mut(k) {
                *have = have.saturating_sub(*v);
                if *have == 0 {
                    self.named_scalars.remove(k);
                }
            }
        }
        for (k, v) in &other.named_ranges {
            if let Some(have) = self.named_ranges.get_mut(k) {
                *have = have.difference(v);
                if have.is_empty() {
                    self.named_ranges.remove(k);
                }
            }
        }
        for (k, v) in &other.named_sets {
            if let Some(have) = self.named_sets.get_mut(k) {
                have.retain(|item| !v.contains(item));
                if have.is_empty() {
                    self.named_sets.remove(k);
                }
            }
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

    /// The scalar part only, named scalars included (DRF shares ignore
    /// ranges and sets, as Mesos does for non-scalar resources).
    pub fn scalars(&self) -> Resources {
        Resources {
            named_scalars: self.named_scalars.clone(),
            ..Resources::new(self.cpus_milli, self.mem_mb, self.disk_mb)
        }
    }

    /// Every scalar as (name, amount in the unit DRF compares: thousandths
    /// for cpus and named scalars, MB for mem and disk).
    pub fn scalar_amounts(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        [
            ("cpus", self.cpus_milli),
            ("mem", self.mem_mb),
            ("disk", self.disk_mb),
        ]
        .into_iter()
        .chain(self.named_scalars.iter().map(|(k, v)| (k.as_str(), *v)))
    }

    /// Checks the bounds every declared resource obeys.
    pub fn validate(&self) -> Result<(), Rejection> {
        let bad = |problem: String| Err(Rejection::InvalidResources { problem });
        for (name, v) in self.scalar_amounts() {
            if v > SCALAR_MAX {
                return bad(format!("{name} is larger than the limit {SCALAR_MAX}"));
            }
        }
        let named = self.named_scalars.len() + self.named_ranges.len() + self.named_sets.len();
        if named > NAMED_MAX {
            return bad(format!(
                "{named} named resources, more than the limit {NAMED_MAX}"
            ));
        }
        let names = self
            .named_scalars
            .keys()
            .chain(self.named_ranges.keys())
            .chain(self.named_sets.keys());
        let mut seen = BTreeSet::new();
        for name in names {
            check_resource_name(name)?;
            if !seen.insert(name) {
                return bad(format!("`{name}` is given as two kinds of resource"));
            }
        }
        for (name, items) in &self.named_sets {
            if items.len() > SET_ITEMS_MAX {
                return bad(format!(
                    "set `{name}` has {} items, more than the limit {SET_ITEMS_MAX}",
                    items.len()
                ));
            }
            for item in items {
                check_set_item(name, item)?;
            }
        }
        Ok(())
    }

    /// Parses Mesos' text form:
    /// `cpus:4;mem:8192;disk:20000;ports:[31000-32000];gpus:2;disks:{a,b}`.
    /// Cpus and other scalars may be fractional (`cpus:0.5`, kept to three
    /// decimals as Mesos does); mem and disk are MB. A name may carry the
    /// default role, `cpus(*):4`; reservations for other roles are refused.
    pub fn parse(text: &str) -> Result<Resources, Rejection> {
        let bad = |problem: String| Rejection::InvalidResources { problem };
        let mut r = Resources::default();
        let mut seen = std::collections::BTreeSet::new();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once(':')
                .ok_or_else(|| bad(format!("`{part}` is not NAME:VALUE")))?;
            let name = name.trim();
            let name = match name.split_once('(') {
                None => name,
                Some((n, "*)")) => n.trim(),
                Some((n, role)) => {
                    return Err(bad(format!(
                        "`{n}` is reserved for role `{}`: only unreserved resources (`*`) are supported",
                        role.trim_end_matches(')')
                    )))
                }
            };
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
                    check_resource_name(other)?;
                    if value.starts_with('[') {
                        let ranges = parse_ranges(other, value, u32::MAX)?;
                        if !ranges.is_empty() {
                            r.named_ranges.insert(other.to_owned(), ranges);
                        }
                    } else if let Some(inner) =
                        value.strip_prefix('{').and_then(|v| v.strip_suffix('}'))
                    {
                        let mut items = BTreeSet::new();
                        for item in inner.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                            if !items.insert(item.to_owned()) {
                                return Err(bad(format!("set `{other}` lists `{item}` twice")));
                            }
                        }
                        if !items.is_empty() {
                            r.named_sets.insert(other.to_owned(), items);
                        }
                    } else {
                        let milli = named_milli_from_f64(other, parse_number(other, value)?)?;
                        if milli > 0 {
                            r.named_scalars.insert(other.to_owned(), milli);
                        }
                    }
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
            ports: ranges_to_proto(&self.ports),
            scalars: self
                .named_scalars
                .iter()
                .map(|(name, v)| pb::ScalarResource {
                    name: name.clone(),
                    value_milli: *v,
                })
                .collect(),
            ranges: self
                .named_ranges
                .iter()
                .map(|(name, v)| pb::RangesResource {
                    name: name.clone(),
                    ranges: ranges_to_proto(v),
                })
                .collect(),
            sets: self
                .named_sets
                .iter()
                .map(|(name, v)| pb::SetResource {
                    name: name.clone(),
                    items: v.iter().cloned().collect(),
                })
                .collect(),
        }
    }

    /// Converts from the wire, validating (a client's message may be hostile).
    pub fn from_proto(p: &pb::Resources) -> Result<Resources, Rejection> {
        let bad = |problem: String| Rejection::InvalidResources { problem };
        let named = p.scalars.len() + p.ranges.len() + p.sets.len();
        if named > NAMED_MAX {
            return Err(bad(format!(
                "{named} named resources, more than the limit {NAMED_MAX}"
            )));
        }
        let ranges: Vec<(u32, u32)> = p.ports.iter().map(|r| (r.begin, r.end)).collect();
        let mut r = Resources::new(p.cpus_milli, p.mem_mb, p.disk_mb).with_ports(&ranges)?;
        let mut names = BTreeSet::new();
        let mut fresh = |name: &str| {
            check_resource_name(name)?;
            if names.insert(name.to_owned()) {
                Ok(())
            } else {
                Err(bad(format!("`{name}` is given twice")))
            }
        };
        for s in &p.scalars {
            fresh(&s.name)?;
            if s.value_milli > 0 {
                r.named_scalars.insert(s.name.clone(), s.value_milli);
            }
        }
        for g in &p.ranges {
            fresh(&g.name)?;
            let pairs: Vec<(u32, u32)> = g.ranges.iter().map(|x| (x.begin, x.end)).collect();
            let set = PortSet::bounded(&g.name, &pairs, u32::MAX)?;
            if !set.is_empty() {
                r.named_ranges.insert(g.name.clone(), set);
            }
        }
        for s in &p.sets {
            fresh(&s.name)?;
            if s.items.len() > SET_ITEMS_MAX {
                return Err(bad(format!(
                    "set `{}` has {} items, more than the limit {SET_ITEMS_MAX}",
                    s.name,
                    s.items.len()
                )));
            }
            let mut items = BTreeSet::new();
            for item in &s.items {
                if !items.insert(item.clone()) {
                    return Err(bad(format!("set `{}` lists `{item}` twice", s.name)));
                }
            }
            if !items.is_empty() {
                r.named_sets.insert(s.name.clone(), items);
            }
        }
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
        let merged = |ranges: &[pb::PortRange]| {
            let mut set = PortSet::new();
            for r in ranges {
                set.insert_range(r.begin.min(r.end), r.end.max(r.begin));
            }
            set
        };
        let mut r = Resources {
            cpus_milli: p.cpus_milli,
            mem_mb: p.mem_mb,
            disk_mb: p.disk_mb,
            ports: merged(&p.ports),
            ..Resources::default()
        };
        for s in p.scalars.iter().filter(|s| s.value_milli > 0) {
            let have = r.named_scalars.entry(s.name.clone()).or_insert(0);
            *have = have.saturating_add(s.value_milli);
        }
        for g in &p.ranges {
            let set = merged(&g.ranges);
            if !set.is_empty() {
                let have = r.named_ranges.entry(g.name.clone()).or_default();
                *have = have.union(&set);
            }
        }
        for s in p.sets.iter().filter(|s| !s.items.is_empty()) {
            r.named_sets
                .entry(s.name.clone())
                .or_default()
                .extend(s.items.iter().cloned());
        }
        r
    }
}

fn ranges_to_proto(set: &PortSet) -> Vec<pb::PortRange> {
    set.ranges()
        .iter()
        .map(|&(begin, end)| pb::PortRange { begin, end })
        .collect()
}

/// A resource name: 1 to 64 of `A-Z a-z 0-9 _ - .`, not one of the four
/// with fields of their own (those are parsed, never named).
pub fn check_resource_name(name: &str) -> Result<(), Rejection> {
    let bad = |problem: String| Err(Rejection::InvalidResources { problem });
    if name.is_empty() {
        return bad("a resource has an empty name".to_owned());
    }
    if name.len() > NAME_BYTES_MAX {
        return bad(format!(
            "resource name `{}…` is longer than {NAME_BYTES_MAX} bytes",
            name.chars().take(16).collect::<String>()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return bad(format!(
            "resource name `{name}` has {c:?} (allowed: letters, digits, _ - .)"
        ));
    }
    if RESERVED.contains(&name) {
        return bad(format!("`{name}` cannot be a named resource"));
    }
    Ok(())
}

fn check_set_item(set: &str, item: &str) -> Result<(), Rejection> {
    let bad = |problem: String| Err(Rejection::InvalidResources { problem });
    if item.is_empty() || item.len() > NAME_BYTES_MAX {
        return bad(format!(
            "set `{set}` has an item of {} bytes (1 to {NAME_BYTES_MAX} allowed)",
            item.len()
        ));
    }
    if let Some(c) = item
        .chars()
        .find(|c| c.is_control() || matches!(c, ',' | '{' | '}' | ';'))
    {
        return bad(format!("set `{set}` item `{item}` has {c:?}"));
    }
    Ok(())
}

/// A named scalar to thousandths, as [`cpus_milli_from_f64`].
pub fn named_milli_from_f64(name: &str, v: f64) -> Result<u64, Rejection> {
    if !v.is_finite() || v < 0.0 {
        return Err(Rejection::InvalidResources {
            problem: format!("{name} {v} is negative or not finite"),
        });
    }
    let milli = (v * 1000.0).round();
    if milli > SCALAR_MAX as f64 {
        return Err(Rejection::InvalidResources {
            problem: format!("{name} {v} is larger than the limit"),
        });
    }
    Ok(milli as u64)
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
    named_milli_from_f64("cpus", cpus)
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
    parse_ranges("ports", value, u32::from(u16::MAX))
}

/// `[a-b,c-d]` (a lone `a` is `a-a`) for the resource `what`.
fn parse_ranges(what: &str, value: &str, max: u32) -> Result<PortSet, Rejection> {
    let bad = |problem: String| Rejection::InvalidResources { problem };
    let inner = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .ok_or_else(|| bad(format!("{what} `{value}` must look like [31000-32000]")))?;
    let mut ranges = Vec::new();
    for r in inner.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        let (b, e) = r.split_once('-').unwrap_or((r, r));
        let parse = |s: &str| {
            s.trim().parse::<u32>().map_err(|_| {
                bad(format!(
                    "{what} value `{}` in `{r}` is not a number",
                    s.trim()
                ))
            })
        };
        ranges.push((parse(b)?, parse(e)?));
        if ranges.len() > SET_ITEMS_MAX {
            return Err(bad(format!("{what} has more than {SET_ITEMS_MAX} ranges")));
        }
    }
    if what == "ports" {
        PortSet::from_ranges(&ranges)
    } else {
        PortSet::bounded(what, &ranges, max)
    }
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
        for (name, v) in &self.named_scalars {
            write!(f, ";{name}:{}", *v as f64 / 1000.0)?;
        }
        for (name, v) in &self.named_ranges {
            write!(f, ";{name}:{v}")?;
        }
        for (name, v) in &self.named_sets {
            let items: Vec<&str> = v.iter().map(String::as_str).collect();
            write!(f, ";{name}:{{{}}}", items.join(","))?;
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
            "gpus:-1",
            "gpus(ml):1",
            "bad name:1",
            "disks:{a,a}",
            "vlans:[5-1]",
            "ports:1",
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
    fn named_resources_parse_add_and_subtract() {
        let agent = Resources::parse("cpus(*):4;mem:8192;gpus:2;vlans:[100-200];disks:{ssd0,ssd1}")
            .unwrap();
        assert_eq!(agent.named_scalars.get("gpus"), Some(&2000));
        assert_eq!(agent.named_ranges["vlans"].ranges(), &[(100, 200)]);
        assert_eq!(agent.named_sets["disks"].len(), 2);
        assert_eq!(
            agent.to_string(),
            "cpus:4;mem:8192;disk:0;gpus:2;vlans:[100-200];disks:{ssd0,ssd1}"
        );
        assert_eq!(Resources::parse(&agent.to_string()).unwrap(), agent);
        let task = Resources::parse("cpus:1;gpus:0.5;vlans:[150-150];disks:{ssd1}").unwrap();
        assert!(agent.contains(&task));
        let rest = agent.minus(&task);
        assert_eq!(rest.named_scalars["gpus"], 1500);
        assert_eq!(
            rest.named_ranges["vlans"].ranges(),
            &[(100, 149), (151, 200)]
        );
        assert_eq!(
            rest.named_sets["disks"].iter().collect::<Vec<_>>(),
            ["ssd0"]
        );
        assert_eq!(rest.plus(&task), agent);
        // Emptied entries disappear, so equal amounts compare equal.
        let none = task.minus(&task);
        assert!(none.is_empty(), "{none:?}");
        assert!(!Resources::parse("cpus:1").unwrap().contains(&task));
        // The proto form round-trips and is validated.
        assert_eq!(Resources::from_proto(&agent.to_proto()).unwrap(), agent);
        assert_eq!(Resources::from_logged(Some(&agent.to_proto())), agent);
        let mut p = agent.to_proto();
        p.scalars.push(pb::ScalarResource {
            name: "cpus".into(),
            value_milli: 1,
        });
        assert!(Resources::from_proto(&p).is_err());
        let mut p = agent.to_proto();
        p.sets[0].name = "gpus".into();
        assert!(Resources::from_proto(&p).is_err(), "a name given twice");
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
