//! Mesos' JSON for Orrery's values, both ways: resources, offers, inverse
//! offers, task statuses, framework and agent infos, tasks — with Mesos 1.x
//! field names exactly (`{"value": ..}` ids, `"type": "SCALAR"` resources,
//! base64 status uuids, seconds as doubles, times as `{"nanoseconds": N}`).
//!
//! Parsing is strict the way Mesos' JSON-to-protobuf conversion is: a
//! missing required field or a value of the wrong type is refused with an
//! error naming its path (`accept.operations[0].launch.task_infos[1].name`),
//! so the handler answers 400 with it. Nothing here decides anything.

use std::collections::BTreeSet;

use base64::Engine as _;
use orrery_events::pb;
use orrery_events::resources::{self, PortSet, Resources};
use orrery_events::state::{Agent, AgentState, Domain, Framework, Task, Unavailability};
use orrery_events::Cluster;
use orrery_proto::scheduler as sp;
use serde_json::{json, Map, Value};

/// The Mesos version Orrery's HTTP APIs answer as (`GET /version`): the
/// 1.x API whose semantics they follow. Clients such as pymesos switch on
/// it (>= 1.0: inverse offers arrive in their own event).
pub const MESOS_VERSION: &str = "1.11.0";

/// A field's path for error messages.
pub fn at(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_owned()
    } else {
        format!("{parent}.{field}")
    }
}

pub fn obj<'v>(v: &'v Value, path: &str) -> Result<&'v Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{path} must be a JSON object"))
}

/// An optional field (absent or null: `None`).
pub fn opt<'v>(v: &'v Value, field: &str) -> Option<&'v Value> {
    v.get(field).filter(|x| !x.is_null())
}

pub fn req<'v>(v: &'v Value, path: &str, field: &str) -> Result<&'v Value, String> {
    opt(v, field).ok_or_else(|| format!("missing required field {}", at(path, field)))
}

pub fn string(v: &Value, path: &str) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{path} must be a string"))
}

pub fn req_string(v: &Value, path: &str, field: &str) -> Result<String, String> {
    string(req(v, path, field)?, &at(path, field))
}

pub fn opt_string(v: &Value, path: &str, field: &str) -> Result<Option<String>, String> {
    opt(v, field)
        .map(|x| string(x, &at(path, field)))
        .transpose()
}

pub fn number(v: &Value, path: &str) -> Result<f64, String> {
    v.as_f64()
        .filter(|f| f.is_finite())
        .ok_or_else(|| format!("{path} must be a finite number"))
}

pub fn boolean(v: &Value, path: &str, field: &str) -> Result<Option<bool>, String> {
    opt(v, field)
        .map(|x| {
            x.as_bool()
                .ok_or_else(|| format!("{} must be true or false", at(path, field)))
        })
        .transpose()
}

pub fn array<'v>(v: &'v Value, path: &str, field: &str) -> Result<&'v [Value], String> {
    match opt(v, field) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(format!("{} must be a JSON array", at(path, field))),
    }
}

/// `{"value": "..."}`, Mesos' id shape.
pub fn id(v: &Value, path: &str) -> Result<String, String> {
    let s = req_string(v, path, "value")?;
    if s.is_empty() {
        return Err(format!("{path}.value is empty"));
    }
    Ok(s)
}

pub fn req_id(v: &Value, path: &str, field: &str) -> Result<String, String> {
    id(req(v, path, field)?, &at(path, field))
}

pub fn opt_id(v: &Value, path: &str, field: &str) -> Result<Option<String>, String> {
    opt(v, field).map(|x| id(x, &at(path, field))).transpose()
}

pub fn value_id(s: &str) -> Value {
    json!({ "value": s })
}

/// A status uuid as Mesos writes it: the bytes, base64.
pub fn uuid_json(uuid: &str) -> Value {
    Value::from(base64::engine::general_purpose::STANDARD.encode(uuid.as_bytes()))
}

pub fn parse_uuid(v: &Value, path: &str) -> Result<String, String> {
    let text = string(v, path)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|e| format!("{path} is not base64: {e}"))?;
    String::from_utf8(bytes).map_err(|_| format!("{path} names no status update of this master"))
}

pub fn nanos_json(ms: u64) -> Value {
    json!({ "nanoseconds": ms.saturating_mul(1_000_000) })
}

// --- resources ----------------------------------------------------------------

fn scalar(name: &str, v: f64) -> Value {
    json!({"name": name, "type": "SCALAR", "scalar": {"value": v}, "role": "*"})
}

fn ranges(name: &str, set: &PortSet) -> Value {
    let range: Vec<Value> = set
        .ranges()
        .iter()
        .map(|&(b, e)| json!({"begin": b, "end": e}))
        .collect();
    json!({"name": name, "type": "RANGES", "ranges": {"range": range}, "role": "*"})
}

/// Resources as Mesos' list of `Resource` (zero scalars left out, as Mesos
/// leaves out what an agent does not have).
pub fn resources_json(r: &Resources) -> Value {
    let mut out = Vec::new();
    if r.cpus_milli > 0 {
        out.push(scalar("cpus", r.cpus_milli as f64 / 1000.0));
    }
    if r.mem_mb > 0 {
        out.push(scalar("mem", r.mem_mb as f64));
    }
    if r.disk_mb > 0 {
        out.push(scalar("disk", r.disk_mb as f64));
    }
    if !r.ports.is_empty() {
        out.push(ranges("ports", &r.ports));
    }
    for (name, v) in &r.named_scalars {
        out.push(scalar(name, *v as f64 / 1000.0));
    }
    for (name, v) in &r.named_ranges {
        out.push(ranges(name, v));
    }
    for (name, v) in &r.named_sets {
        out.push(json!({"name": name, "type": "SET", "set": {"item": v.iter().collect::<Vec<_>>()}, "role": "*"}));
    }
    Value::from(out)
}

/// The v0 endpoints' map form (`/master/state`): `{"cpus": 4.0, "mem":
/// 8192.0, "disk": 0.0, "gpus": 0.0, "ports": "[31000-32000]"}`.
pub fn resources_map(r: &Resources) -> Value {
    let mut m = Map::new();
    m.insert("cpus".into(), json!(r.cpus_milli as f64 / 1000.0));
    m.insert("mem".into(), json!(r.mem_mb as f64));
    m.insert("disk".into(), json!(r.disk_mb as f64));
    m.insert("gpus".into(), json!(0.0));
    if !r.ports.is_empty() {
        m.insert("ports".into(), json!(r.ports.to_string()));
    }
    for (name, v) in &r.named_scalars {
        m.insert(name.clone(), json!(*v as f64 / 1000.0));
    }
    for (name, v) in &r.named_ranges {
        m.insert(name.clone(), json!(v.to_string()));
    }
    for (name, v) in &r.named_sets {
        let items: Vec<&str> = v.iter().map(String::as_str).collect();
        m.insert(name.clone(), json!(format!("{{{}}}", items.join(","))));
    }
    Value::from(m)
}

/// Mesos' list of `Resource` as Orrery's resources. Entries of one name
/// add up (Mesos' `Resources` does the same); reservations for a role
/// other than `*`, revocable and persistent-disk resources are refused:
/// Orrery offers unreserved resources only.
pub fn parse_resources(list: &[Value], path: &str) -> Result<Resources, String> {
    if list.len() > resources::NAMED_MAX + 4 {
        return Err(format!(
            "{path} has {} resources, more than the limit {}",
            list.len(),
            resources::NAMED_MAX + 4
        ));
    }
    let mut total = Resources::default();
    let mut kinds: std::collections::BTreeMap<String, String> = Default::default();
    for (i, r) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        obj(r, &p)?;
        let name = req_string(r, &p, "name")?;
        let kind = req_string(r, &p, "type")?;
        if let Some(role) = opt_string(r, &p, "role")? {
            if role != "*" {
                return Err(format!(
                    "{p}.role: resources reserved for role {role:?} are not supported (only \"*\")"
                ));
            }
        }
        if array(r, &p, "reservations")?.iter().next().is_some() {
            return Err(format!("{p}.reservations: reservations are not supported"));
        }
        for unsupported in ["revocable", "disk", "provider_id", "shared"] {
            if opt(r, unsupported).is_some() {
                return Err(format!("{p}.{unsupported} is not supported"));
            }
        }
        if let Some(old) = kinds.insert(name.clone(), kind.clone()) {
            if old != kind {
                return Err(format!("{p}: {name} is given as both {old} and {kind}"));
            }
        }
        let one = match kind.as_str() {
            "SCALAR" => {
                let v = number(
                    req(req(r, &p, "scalar")?, &at(&p, "scalar"), "value")?,
                    &at(&p, "scalar.value"),
                )?;
                let text = format!("{name}:{v}");
                Resources::parse(&text).map_err(|e| format!("{p}: {e}"))?
            }
            "RANGES" => {
                let rp = at(&p, "ranges");
                let inner = req(r, &p, "ranges")?;
                let mut pairs = Vec::new();
                for (j, x) in array(inner, &rp, "range")?.iter().enumerate() {
                    let xp = format!("{rp}.range[{j}]");
                    let bound = |f: &str| -> Result<u32, String> {
                        req(x, &xp, f)?
                            .as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| format!("{xp}.{f} must be a whole number below 2^32"))
                    };
                    pairs.push(format!("{}-{}", bound("begin")?, bound("end")?));
                }
                let text = format!("{name}:[{}]", pairs.join(","));
                Resources::parse(&text).map_err(|e| format!("{p}: {e}"))?
            }
            "SET" => {
                let sp = at(&p, "set");
                let inner = req(r, &p, "set")?;
                let mut items = BTreeSet::new();
                for (j, x) in array(inner, &sp, "item")?.iter().enumerate() {
                    items.insert(string(x, &format!("{sp}.item[{j}]"))?);
                }
                if matches!(name.as_str(), "cpus" | "mem" | "disk" | "ports") {
                    return Err(format!("{p}: {name} cannot be a SET"));
                }
                resources::check_resource_name(&name).map_err(|e| format!("{p}: {e}"))?;
                let mut one = Resources::default();
                if !items.is_empty() {
                    one.named_sets.insert(name.clone(), items);
                }
                one
            }
            other => return Err(format!("{p}.type: {other:?} is not SCALAR, RANGES or SET")),
        };
        if matches!(name.as_str(), "ports") || one.named_ranges.contains_key(&name) {
            let overlap = match name.as_str() {
                "ports" => total.ports.intersects(&one.ports),
                _ => total
                    .named_ranges
                    .get(&name)
                    .is_some_and(|t| t.intersects(&one.named_ranges[&name])),
            };
            if overlap {
                return Err(format!("{p}: {name} ranges overlap an earlier entry"));
            }
        }
        total.add(&one);
    }
    total.validate().map_err(|e| format!("{path}: {e}"))?;
    Ok(total)
}

// --- master → framework ---------------------------------------------------------

fn domain_json(d: &Domain) -> Value {
    json!({"fault_domain": {"region": {"name": d.region}, "zone": {"name": d.zone}}})
}

fn pb_domain_json(d: &pb::Domain) -> Value {
    json!({"fault_domain": {"region": {"name": d.region}, "zone": {"name": d.zone}}})
}

fn attributes_json<'a>(attrs: impl Iterator<Item = (&'a String, &'a String)>) -> Value {
    Value::from(
        attrs
            .map(|(name, value)| json!({"name": name, "type": "TEXT", "text": {"value": value}}))
            .collect::<Vec<_>>(),
    )
}

pub fn unavailability_json(u: &pb::Unavailability) -> Value {
    let mut v = json!({"start": {"nanoseconds": u.start_ns}});
    if let Some(d) = u.duration_ns {
        v["duration"] = json!({"nanoseconds": d});
    }
    v
}

fn state_unavailability_json(u: &Unavailability) -> Value {
    unavailability_json(&pb::Unavailability {
        start_ns: u.start_ns,
        duration_ns: u.duration_ns,
    })
}

pub fn offer_json(o: &sp::Offer, role: &str) -> Value {
    let resources = Resources::from_logged(o.resources.as_ref());
    let mut v = json!({
        "id": value_id(&o.offer_id),
        "framework_id": value_id(&o.framework_id),
        "agent_id": value_id(&o.agent_id),
        "hostname": o.hostname,
        "resources": resources_json(&resources),
        "attributes": attributes_json(o.attributes.iter().map(|a| (&a.name, &a.value))),
        "allocation_info": {"role": role},
    });
    if let Some(d) = &o.domain {
        v["domain"] = pb_domain_json(d);
    }
    if let Some(u) = &o.unavailability {
        v["unavailability"] = unavailability_json(u);
    }
    v
}

pub fn inverse_offer_json(o: &sp::InverseOffer) -> Value {
    json!({
        "id": value_id(&o.offer_id),
        "framework_id": value_id(&o.framework_id),
        "agent_id": value_id(&o.agent_id),
        "unavailability": o.unavailability.as_ref().map(unavailability_json).unwrap_or(json!({"start": {"nanoseconds": 0}})),
        "hostname": o.hostname,
    })
}

/// Orrery's reasons under Mesos' names; a reason Mesos has no name for is
/// left out (its `message` still says what happened).
pub fn reason_name(state: pb::TaskState, reason: pb::TaskReason) -> Option<&'static str> {
    use pb::TaskReason as R;
    Some(match reason {
        R::Unspecified => return None,
        R::ReasonCommandExited => {
            if state == pb::TaskState::TaskFinished {
                return None;
            }
            "REASON_COMMAND_EXECUTOR_FAILED"
        }
        R::ReasonAgentUnreachable | R::ReasonAgentRemoved => "REASON_AGENT_REMOVED",
        R::ReasonAgentRestarted => "REASON_AGENT_RESTARTED",
        R::ReasonKilledByFramework => return None,
        R::ReasonFrameworkRemoved => "REASON_FRAMEWORK_REMOVED",
        R::ReasonExecutorTerminated => "REASON_EXECUTOR_TERMINATED",
        R::ReasonReconciliation | R::ReasonAgentReregisteredWithoutTask => "REASON_RECONCILIATION",
        R::ReasonHostMaintenance => "REASON_AGENT_DRAINING",
        R::ReasonInvalidOffers => "REASON_INVALID_OFFERS",
        R::ReasonContainerLaunchFailed => "REASON_CONTAINER_LAUNCH_FAILED",
        R::ReasonTaskUnhealthy => "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED",
        R::ReasonExecutorRecoveryTimeout => "REASON_EXECUTOR_REREGISTRATION_TIMEOUT",
        R::ReasonTaskInvalid => "REASON_TASK_INVALID",
    })
}

fn source_name(s: pb::StatusSource) -> Option<&'static str> {
    match s {
        pb::StatusSource::Unspecified => None,
        pb::StatusSource::SourceMaster => Some("SOURCE_MASTER"),
        pb::StatusSource::SourceAgent => Some("SOURCE_AGENT"),
        pb::StatusSource::SourceExecutor => Some("SOURCE_EXECUTOR"),
    }
}

pub fn state_name(s: pb::TaskState) -> &'static str {
    match s {
        // An unset state is never sent; Mesos has no name for it.
        pb::TaskState::Unspecified => "TASK_UNKNOWN",
        other => other.as_str_name(),
    }
}

/// A status update (`timestamp_s`: when the master sends it, as Mesos'
/// double of seconds).
pub fn status_json(s: &sp::TaskStatus, timestamp_s: f64) -> Value {
    let state = pb::TaskState::try_from(s.state).unwrap_or(pb::TaskState::TaskUnknown);
    let reason = pb::TaskReason::try_from(s.reason).unwrap_or(pb::TaskReason::Unspecified);
    let source = pb::StatusSource::try_from(s.source).unwrap_or(pb::StatusSource::Unspecified);
    let mut v = json!({
        "task_id": value_id(&s.task_id),
        "state": state_name(state),
        "timestamp": timestamp_s,
    });
    if !s.agent_id.is_empty() {
        v["agent_id"] = value_id(&s.agent_id);
    }
    if !s.message.is_empty() {
        v["message"] = json!(s.message);
    }
    if let Some(r) = reason_name(state, reason) {
        v["reason"] = json!(r);
    }
    if let Some(src) = source_name(source) {
        v["source"] = json!(src);
    }
    if !s.uuid.is_empty() {
        v["uuid"] = uuid_json(&s.uuid);
    }
    if let Some(h) = s.healthy {
        v["healthy"] = json!(h);
    }
    v
}

/// One scheduler event as Mesos' `Event` (`role`: the framework's, for
/// offers' `allocation_info`; `master_info` for SUBSCRIBED).
pub fn event_json(e: &sp::event::Event, role: &str, master_info: &Value, now_s: f64) -> Value {
    use sp::event::Event as E;
    match e {
        E::Subscribed(s) => json!({
            "type": "SUBSCRIBED",
            "subscribed": {
                "framework_id": value_id(&s.framework_id),
                "heartbeat_interval_seconds": s.heartbeat_interval_ms as f64 / 1000.0,
                "master_info": master_info,
            },
        }),
        E::Offers(o) => json!({
            "type": "OFFERS",
            "offers": {"offers": o.offers.iter().map(|x| offer_json(x, role)).collect::<Vec<_>>()},
        }),
        E::Rescind(r) => json!({"type": "RESCIND", "rescind": {"offer_id": value_id(&r.offer_id)}}),
        E::Update(u) => json!({
            "type": "UPDATE",
            "update": {"status": u.status.as_ref().map(|s| status_json(s, now_s)).unwrap_or(Value::Null)},
        }),
        E::Failure(f) => json!({"type": "FAILURE", "failure": {"agent_id": value_id(&f.agent_id)}}),
        E::Error(x) => json!({"type": "ERROR", "error": {"message": x.message}}),
        E::Heartbeat(_) => json!({"type": "HEARTBEAT"}),
        E::InverseOffers(o) => json!({
            "type": "INVERSE_OFFERS",
            "inverse_offers": {"inverse_offers": o.inverse_offers.iter().map(inverse_offer_json).collect::<Vec<_>>()},
        }),
        E::RescindInverseOffer(r) => json!({
            "type": "RESCIND_INVERSE_OFFER",
            "rescind_inverse_offer": {"inverse_offer_id": value_id(&r.offer_id)},
        }),
    }
}

/// One RecordIO record: the length in decimal, a newline, the bytes.
pub fn record_io(v: &Value) -> Vec<u8> {
    let body = v.to_string();
    let mut out = format!("{}\n", body.len()).into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

// --- the operator's view ---------------------------------------------------------

/// `MasterInfo` (`ip` is the IPv4 address as Mesos' uint32 in network
/// order, 0 when the address is not IPv4).
pub fn master_info(c: &Cluster) -> Value {
    let Some(l) = c.leader.as_ref() else {
        return json!({"id": "", "ip": 0, "port": 0, "hostname": "", "version": MESOS_VERSION});
    };
    let addr = if l.http_addr.is_empty() {
        &l.addr
    } else {
        &l.http_addr
    };
    let (host, port) = addr
        .rsplit_once(':')
        .map(|(h, p)| (h.to_owned(), p.parse::<u32>().unwrap_or(0)))
        .unwrap_or((addr.clone(), 0));
    let ip = host
        .parse::<std::net::Ipv4Addr>()
        .map(|a| u32::from_le_bytes(a.octets()))
        .unwrap_or(0);
    let mut v = json!({
        "id": format!("orrery-{}-{}", l.leader_id, l.term),
        "ip": ip,
        "port": port,
        "hostname": host,
        "version": MESOS_VERSION,
        "address": {"hostname": host, "ip": host, "port": port},
    });
    if let Some(d) = &l.domain {
        v["domain"] = domain_json(d);
    }
    v
}

pub fn agent_info(a: &Agent) -> Value {
    let mut v = json!({
        "id": value_id(&a.id.0),
        "hostname": a.hostname,
        "port": 5051,
        "resources": resources_json(&a.total),
        "attributes": attributes_json(a.attributes.iter()),
    });
    if let Some(d) = &a.domain {
        v["domain"] = domain_json(d);
    }
    v
}

/// `GET_AGENTS`' agent.
pub fn agent_json(a: &Agent) -> Value {
    json!({
        "agent_info": agent_info(a),
        "active": a.is_active(),
        "deactivated": !a.is_active(),
        "version": MESOS_VERSION,
        "pid": format!("slave(1)@{}:5051", if a.ip.is_empty() { &a.hostname } else { &a.ip }),
        "registered_time": nanos_json(a.state_since_ms),
        "total_resources": resources_json(&a.total),
        "allocated_resources": resources_json(&a.used),
        "offered_resources": resources_json(&a.offered),
        "capabilities": [],
    })
}

pub fn capabilities_json(f: &Framework) -> Value {
    let mut caps = Vec::new();
    if f.region_aware {
        caps.push(json!({"type": "REGION_AWARE"}));
    }
    if f.partition_aware {
        caps.push(json!({"type": "PARTITION_AWARE"}));
    }
    Value::from(caps)
}

pub fn framework_info(f: &Framework) -> Value {
    json!({
        "id": value_id(&f.id.0),
        "name": f.name,
        "user": "",
        "role": f.role,
        "failover_timeout": f.failover_timeout_ms as f64 / 1000.0,
        "checkpoint": f.checkpoint,
        "principal": f.principal,
        "capabilities": capabilities_json(f),
    })
}

fn offered_to(c: &Cluster, f: &Framework) -> Resources {
    let mut r = Resources::default();
    for o in c.offers.values().filter(|o| o.framework_id == f.id) {
        r.add(&o.resources);
    }
    r
}

/// `GET_FRAMEWORKS`' framework.
pub fn framework_json(c: &Cluster, f: &Framework) -> Value {
    json!({
        "framework_info": framework_info(f),
        "active": f.connected && !f.removed,
        "connected": f.connected,
        "recovered": false,
        "allocated_resources": resources_json(&f.allocated),
        "offered_resources": resources_json(&offered_to(c, f)),
    })
}

fn task_status_of(t: &Task) -> Value {
    let mut s = json!({
        "task_id": value_id(&t.key.task_id.0),
        "agent_id": value_id(&t.agent_id.0),
        "state": state_name(t.state),
        "timestamp": t.updated_at_ms as f64 / 1000.0,
    });
    if let Some(r) = reason_name(t.state, t.reason) {
        s["reason"] = json!(r);
    }
    if !t.message.is_empty() {
        s["message"] = json!(t.message);
    }
    if let Some(h) = t.healthy {
        s["healthy"] = json!(h);
    }
    s
}

/// A `Task` (the v1 operator API's shape).
pub fn task_json(c: &Cluster, t: &Task) -> Value {
    let role = c
        .frameworks
        .get(&t.key.framework_id)
        .map(|f| f.role.clone())
        .unwrap_or_default();
    let mut v = json!({
        "name": t.name,
        "task_id": value_id(&t.key.task_id.0),
        "framework_id": value_id(&t.key.framework_id.0),
        "agent_id": value_id(&t.agent_id.0),
        "state": state_name(t.state),
        "resources": resources_json(&t.resources),
        "statuses": [task_status_of(t)],
        "role": role,
    });
    if !t.status_uuid.is_empty() {
        v["status_update_state"] = json!(state_name(t.state));
        v["status_update_uuid"] = uuid_json(&t.status_uuid);
    }
    v
}

/// `GET_TASKS`: live tasks, unreachable ones, and completed ones.
pub fn get_tasks(c: &Cluster) -> Value {
    let (mut live, mut unreachable, mut completed) = (Vec::new(), Vec::new(), Vec::new());
    for t in c.tasks.values() {
        let v = task_json(c, t);
        if t.state == pb::TaskState::TaskUnreachable {
            unreachable.push(v);
        } else if t.is_terminal() {
            completed.push(v);
        } else {
            live.push(v);
        }
    }
    json!({"pending_tasks": [], "tasks": live, "unreachable_tasks": unreachable, "completed_tasks": completed})
}

pub fn get_agents(c: &Cluster) -> Value {
    json!({
        "agents": c.agents.values().filter(|a| a.state != AgentState::Gone).map(agent_json).collect::<Vec<_>>(),
        "recovered_agents": [],
    })
}

pub fn get_frameworks(c: &Cluster) -> Value {
    let (live, done): (Vec<_>, Vec<_>) = c.frameworks.values().partition(|f| !f.removed);
    json!({
        "frameworks": live.iter().map(|f| framework_json(c, f)).collect::<Vec<_>>(),
        "completed_frameworks": done.iter().map(|f| framework_json(c, f)).collect::<Vec<_>>(),
    })
}

pub fn get_state(c: &Cluster) -> Value {
    json!({
        "get_tasks": get_tasks(c),
        "get_executors": {"executors": [], "orphan_executors": []},
        "get_frameworks": get_frameworks(c),
        "get_agents": get_agents(c),
    })
}

// --- /master/state (the v0 JSON) ---------------------------------------------------

fn v0_task(c: &Cluster, t: &Task) -> Value {
    let role = c
        .frameworks
        .get(&t.key.framework_id)
        .map(|f| f.role.clone())
        .unwrap_or_default();
    json!({
        "id": t.key.task_id.0,
        "name": t.name,
        "framework_id": t.key.framework_id.0,
        "executor_id": "",
        "slave_id": t.agent_id.0,
        "state": state_name(t.state),
        "resources": resources_map(&t.resources),
        "role": role,
        "statuses": [{"state": state_name(t.state), "timestamp": t.updated_at_ms as f64 / 1000.0}],
    })
}

/// `GET /master/state` and `/state.json`: Mesos' v0 state document.
pub fn master_state(c: &Cluster) -> Value {
    let info = master_info(c);
    let pid = format!(
        "master@{}:{}",
        info["hostname"].as_str().unwrap_or(""),
        info["port"]
    );
    let agents: Vec<&Agent> = c
        .agents
        .values()
        .filter(|a| a.state != AgentState::Gone)
        .collect();
    let slaves: Vec<Value> = agents
        .iter()
        .map(|a| {
            let mut v = json!({
                "id": a.id.0,
                "pid": format!("slave(1)@{}:5051", if a.ip.is_empty() { &a.hostname } else { &a.ip }),
                "hostname": a.hostname,
                "port": 5051,
                "registered_time": a.state_since_ms as f64 / 1000.0,
                "resources": resources_map(&a.total),
                "used_resources": resources_map(&a.used),
                "offered_resources": resources_map(&a.offered),
                "reserved_resources": {},
                "unreserved_resources": resources_map(&a.total),
                "attributes": a.attributes.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect::<Map<_, _>>(),
                "active": a.is_active(),
                "deactivated": !a.is_active(),
                "version": MESOS_VERSION,
                "capabilities": [],
            });
            if let Some(d) = &a.domain {
                v["domain"] = domain_json(d);
            }
            v
        })
        .collect();
    let framework = |f: &Framework| {
        let tasks: Vec<&Task> = c
            .tasks
            .values()
            .filter(|t| t.key.framework_id == f.id)
            .collect();
        json!({
            "id": f.id.0,
            "name": f.name,
            "user": "",
            "role": f.role,
            "principal": f.principal,
            "failover_timeout": f.failover_timeout_ms as f64 / 1000.0,
            "checkpoint": f.checkpoint,
            "capabilities": capabilities_json(f).as_array().map(|a| a.iter().map(|c| c["type"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
            "active": f.connected && !f.removed,
            "connected": f.connected,
            "recovered": false,
            "used_resources": resources_map(&f.allocated),
            "offered_resources": resources_map(&offered_to(c, f)),
            "resources": resources_map(&f.allocated),
            "tasks": tasks.iter().filter(|t| !t.is_terminal()).map(|t| v0_task(c, t)).collect::<Vec<_>>(),
            "completed_tasks": tasks.iter().filter(|t| t.is_terminal()).map(|t| v0_task(c, t)).collect::<Vec<_>>(),
            "unreachable_tasks": [],
            "offers": c.offers.values().filter(|o| o.framework_id == f.id).map(|o| json!({
                "id": o.id.0,
                "framework_id": o.framework_id.0,
                "slave_id": o.agent_id.0,
                "resources": resources_map(&o.resources),
            })).collect::<Vec<_>>(),
            "executors": [],
        })
    };
    let (live, done): (Vec<_>, Vec<_>) = c.frameworks.values().partition(|f| !f.removed);
    let leader = c.leader.as_ref();
    let mut v = json!({
        "version": MESOS_VERSION,
        "id": info["id"],
        "pid": pid,
        "hostname": info["hostname"],
        "leader": pid,
        "leader_info": info,
        "elected_time": leader.map_or(0.0, |l| l.elected_at_ms as f64 / 1000.0),
        "start_time": leader.map_or(0.0, |l| l.elected_at_ms as f64 / 1000.0),
        "activated_slaves": agents.iter().filter(|a| a.is_active()).count(),
        "deactivated_slaves": agents.iter().filter(|a| !a.is_active()).count(),
        "unreachable_slaves": 0,
        "slaves": slaves,
        "frameworks": live.iter().map(|f| framework(f)).collect::<Vec<_>>(),
        "completed_frameworks": done.iter().map(|f| framework(f)).collect::<Vec<_>>(),
        "orphan_tasks": [],
        "unregistered_frameworks": [],
        "flags": {},
    });
    if let Some(d) = leader.and_then(|l| l.domain.as_ref()) {
        v["domain"] = domain_json(d);
    }
    v
}

/// An unavailability from the state, for GET_MAINTENANCE_* answers.
pub fn window_unavailability(u: &Unavailability) -> Value {
    state_unavailability_json(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_round_trip_through_mesos_json() {
        let r =
            Resources::parse("cpus:2.5;mem:1024;ports:[31000-31005];gpus:1;disks:{a,b}").unwrap();
        let j = resources_json(&r);
        assert_eq!(
            j[0],
            json!({"name": "cpus", "type": "SCALAR", "scalar": {"value": 2.5}, "role": "*"})
        );
        assert_eq!(
            j[2]["ranges"]["range"][0],
            json!({"begin": 31000, "end": 31005})
        );
        assert_eq!(parse_resources(j.as_array().unwrap(), "r").unwrap(), r);
    }

    #[test]
    fn bad_resources_name_the_field() {
        let cases = [
            (
                json!([{"type": "SCALAR", "scalar": {"value": 1}}]),
                "missing required field r[0].name",
            ),
            (
                json!([{"name": "cpus", "type": "SCALAR"}]),
                "missing required field r[0].scalar",
            ),
            (
                json!([{"name": "cpus", "type": "SCALAR", "scalar": {"value": -1}}]),
                "negative",
            ),
            (json!([{"name": "cpus", "type": "TEXT"}]), "r[0].type"),
            (
                json!([{"name": "cpus", "type": "SCALAR", "scalar": {"value": 1}, "role": "ml"}]),
                "r[0].role",
            ),
            (
                json!([{"name": "ports", "type": "RANGES", "ranges": {"range": [{"begin": 5, "end": 1}]}}]),
                "inverted",
            ),
            (
                json!([{"name": "ports", "type": "RANGES", "ranges": {"range": [{"begin": 1, "end": 5}]}},
                    {"name": "ports", "type": "RANGES", "ranges": {"range": [{"begin": 3, "end": 9}]}}]),
                "overlap",
            ),
            (
                json!([{"name": "gpus", "type": "SCALAR", "scalar": {"value": 1}},
                    {"name": "gpus", "type": "SET", "set": {"item": ["x"]}}]),
                "both",
            ),
            (
                json!([{"name": "mem", "type": "SCALAR", "scalar": {"value": "lots"}}]),
                "r[0].scalar.value",
            ),
        ];
        for (v, want) in cases {
            let e = parse_resources(v.as_array().unwrap(), "r").unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
        // Entries of one name add up, as in Mesos.
        let two = json!([{"name": "cpus", "type": "SCALAR", "scalar": {"value": 1}},
                         {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}}]);
        assert_eq!(
            parse_resources(two.as_array().unwrap(), "r")
                .unwrap()
                .cpus_milli,
            1500
        );
    }

    #[test]
    fn uuids_are_base64_both_ways() {
        let j = uuid_json("6f1c");
        assert_eq!(j, json!("NmYxYw=="));
        assert_eq!(parse_uuid(&j, "u").unwrap(), "6f1c");
        assert!(parse_uuid(&json!("***"), "acknowledge.uuid")
            .unwrap_err()
            .contains("acknowledge.uuid"));
    }

    #[test]
    fn record_io_frames_a_record() {
        assert_eq!(
            record_io(&json!({"type": "HEARTBEAT"})),
            b"20\n{\"type\":\"HEARTBEAT\"}".to_vec()
        );
    }
}
