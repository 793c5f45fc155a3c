//! `orrery --master ADDR[,ADDR...] agent|task|framework list`: what the
//! active master knows, as a table (or `--json` for tools).
//!
//! Asks any of the given masters and follows `orrery-leader` to the leader
//! (`orrery_gateway::client`), so a list of all masters always works.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use orrery_events::pb;
use orrery_gateway::client::with_leader;
use orrery_proto::operator::{self as op, operator_client::OperatorClient};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    Agents,
    Tasks,
    Frameworks,
}

/// Parses `--master 127.0.0.1:7001,127.0.0.1:7002`.
pub fn parse_masters(text: Option<&str>) -> Result<Vec<String>> {
    let Some(text) = text else {
        bail!("--master is required: the address of one or more masters, ADDR[,ADDR...]");
    };
    let masters: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if masters.is_empty() {
        bail!("--master {text:?} names no address (ADDR[,ADDR...])");
    }
    for m in &masters {
        if m.rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            bail!("--master: {m:?} is not HOST:PORT");
        }
    }
    Ok(masters)
}

fn cpus(r: &Option<pb::Resources>) -> String {
    let m = r.as_ref().map_or(0, |r| r.cpus_milli);
    format!("{}", m as f64 / 1000.0)
}

fn mem(r: &Option<pb::Resources>) -> u64 {
    r.as_ref().map_or(0, |r| r.mem_mb)
}

pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

pub fn render(state: &op::State, what: What, json: bool) -> String {
    if json {
        let all = orrery_gateway::http::state_json(state);
        let key = match what {
            What::Agents => "agents",
            What::Tasks => "tasks",
            What::Frameworks => "frameworks",
        };
        return format!("{}\n", all[key]);
    }
    match what {
        What::Agents => table(
            &[
                "ID", "HOSTNAME", "STATE", "CPUS", "MEM_MB", "TASKS", "DOMAIN",
            ],
            state
                .agents
                .iter()
                .map(|a| {
                    vec![
                        a.agent_id.clone(),
                        a.hostname.clone(),
                        a.state.clone(),
                        format!("{}/{}", cpus(&a.used), cpus(&a.total)),
                        format!("{}/{}", mem(&a.used), mem(&a.total)),
                        a.tasks.to_string(),
                        a.domain
                            .as_ref()
                            .map(|d| format!("{}/{}", d.region, d.zone))
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect(),
        ),
        What::Frameworks => table(
            &[
                "ID",
                "NAME",
                "ROLE",
                "CONNECTED",
                "SUPPRESSED",
                "REMOVED",
                "CPUS",
            ],
            state
                .frameworks
                .iter()
                .map(|f| {
                    vec![
                        f.framework_id.clone(),
                        f.name.clone(),
                        f.role.clone(),
                        f.connected.to_string(),
                        f.suppressed.to_string(),
                        f.removed.to_string(),
                        cpus(&f.allocated),
                    ]
                })
                .collect(),
        ),
        What::Tasks => table(
            &[
                "FRAMEWORK",
                "ID",
                "NAME",
                "STATE",
                "AGENT",
                "HOSTNAME",
                "CPUS",
            ],
            state
                .tasks
                .iter()
                .map(|t| {
                    vec![
                        t.framework_id.clone(),
                        t.task_id.clone(),
                        t.name.clone(),
                        pb::TaskState::try_from(t.state)
                            .map(|s| s.as_str_name().to_owned())
                            .unwrap_or_else(|_| t.state.to_string()),
                        t.agent_id.clone(),
                        t.hostname.clone(),
                        cpus(&t.resources),
                    ]
                })
                .collect(),
        ),
    }
}

pub fn run(masters: Option<&str>, what: What, json: bool) -> Result<()> {
    let masters = parse_masters(masters)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let transport = crate::creds::transport()?;
    let state = rt.block_on(async {
        with_leader(
            &transport,
            &masters,
            Duration::from_secs(10),
            |ch| async move {
                OperatorClient::new(ch)
                    .get_state(op::GetStateRequest {})
                    .await
                    .map(|r| r.into_inner())
            },
        )
        .await
        .map(|(s, _)| s)
        .map_err(|e| anyhow!("asking {}: {}", masters.join(","), e.message()))
    })?;
    print!("{}", render(&state, what, json));
    Ok(())
}

/// `orrery agents mark-gone [AGENT_ID...] [--held]`: retires agents for
/// good (their tasks end GONE); `--held` takes every agent whose removal
/// the master holds after a leader change (`--recovery-agent-removal-limit`).
pub fn mark_gone(masters: Option<&str>, ids: &[String], held: bool, json: bool) -> Result<()> {
    let masters = parse_masters(masters)?;
    if ids.is_empty() && !held {
        bail!("name the agents to retire (AGENT_ID...), or --held for those the master holds");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let transport = crate::creds::transport()?;
    let req = op::MarkAgentsGoneRequest {
        agent_ids: ids.to_vec(),
        held,
    };
    let done = rt.block_on(async {
        with_leader(&transport, &masters, Duration::from_secs(10), |ch| {
            let req = req.clone();
            async move {
                OperatorClient::new(ch)
                    .mark_agents_gone(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
        .map(|(s, _)| s)
        .map_err(|e| anyhow!("retiring agents: {}", e.message()))
    })?;
    if json {
        println!(
            "{}",
            serde_json::json!({"agent_ids": done.agent_ids, "committed_index": done.committed_index})
        );
    } else {
        for id in &done.agent_ids {
            println!("agent {id} is GONE");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_lists_are_checked() {
        assert!(parse_masters(None)
            .unwrap_err()
            .to_string()
            .contains("--master is required"));
        assert!(parse_masters(Some(" , ")).is_err());
        assert!(parse_masters(Some("host"))
            .unwrap_err()
            .to_string()
            .contains("HOST:PORT"));
        assert!(parse_masters(Some("h:99999")).is_err());
        assert_eq!(
            parse_masters(Some("a:1, b:2")).unwrap(),
            vec!["a:1".to_string(), "b:2".to_string()]
        );
    }

    #[test]
    fn tables_align_and_json_selects() {
        let state = op::State {
            agents: vec![op::AgentView {
                agent_id: "S1".into(),
                hostname: "host-1".into(),
                state: "REGISTERED".into(),
                total: Some(pb::Resources {
                    cpus_milli: 4000,
                    mem_mb: 8192,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = render(&state, What::Agents, false);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID  HOSTNAME"));
        assert!(
            lines[1].contains("host-1") && lines[1].contains("0/4") && lines[1].contains("0/8192")
        );
        let j: serde_json::Value =
            serde_json::from_str(&render(&state, What::Agents, true)).unwrap();
        assert_eq!(j[0]["hostname"], "host-1");
        assert_eq!(render(&state, What::Tasks, false).lines().count(), 1);
    }
}
