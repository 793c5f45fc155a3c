//! `orrery masters list|add ID|remove ID`: the masters' group, from the
//! operator's side, and the request `orrery master join` sends.
//!
//! Replacing a master whose disk is gone (Aurora's runbook, on raft's joint
//! consensus): `orrery masters remove OLD`, start a new replica with `orrery
//! master join --id NEW ...`, wait for `orrery masters list` to show it
//! caught up, then `orrery masters add NEW`. Ids are never reused.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use orrery_gateway::client::{with_leader, Transport};
use orrery_proto::operator::{self as op, operator_client::OperatorClient};

#[derive(Debug, Subcommand)]
pub enum MastersCmd {
    /// The group: each master's id, address, role, match index and lag.
    List,
    /// Promotes a master that joined as a learner (`orrery master join`)
    /// to a voter, once it has caught up.
    Add { id: u64 },
    /// Removes a master (a voter or a learner) for good; its id is retired.
    Remove { id: u64 },
}

/// How long a change may wait for a leader (a change itself commits two
/// raft configurations in turn).
const PATIENCE: Duration = Duration::from_secs(20);

pub fn run(masters: Option<&str>, cmd: &MastersCmd, json: bool) -> Result<()> {
    let masters = crate::list::parse_masters(masters)?;
    if let MastersCmd::Add { id: 0 } | MastersCmd::Remove { id: 0 } = cmd {
        bail!("master ids start at 1");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let transport = crate::creds::transport()?;
    let group = rt.block_on(async {
        with_leader(&transport, &masters, PATIENCE, |ch| async move {
            let mut c = OperatorClient::new(ch);
            match cmd {
                MastersCmd::List => c.list_masters(op::ListMastersRequest {}).await,
                MastersCmd::Add { id } => c.add_master(op::MasterIdRequest { node_id: *id }).await,
                MastersCmd::Remove { id } => {
                    c.remove_master(op::MasterIdRequest { node_id: *id }).await
                }
            }
            .map(|r| r.into_inner())
        })
        .await
        .map(|(g, _)| g)
        .map_err(|e| {
            let what = match cmd {
                MastersCmd::List => "listing the masters".to_owned(),
                MastersCmd::Add { id } => format!("adding master {id}"),
                MastersCmd::Remove { id } => format!("removing master {id}"),
            };
            anyhow!("{what}: {}", e.message())
        })
    })?;
    print!("{}", render(&group, json));
    Ok(())
}

/// Asks the leader (through any of `peers`) to add this master as a
/// learner. A master already a learner at `addr` is answered as added.
pub async fn request_join(
    transport: &Transport,
    peers: &[String],
    node_id: u64,
    addr: &str,
) -> Result<op::MastersGroup> {
    with_leader(transport, peers, PATIENCE, |ch| async move {
        OperatorClient::new(ch)
            .join_master(op::JoinMasterRequest {
                node_id,
                addr: addr.to_owned(),
            })
            .await
            .map(|r| r.into_inner())
    })
    .await
    .map(|(g, _)| g)
    .map_err(|e| anyhow!("asking to join as master {node_id}: {}", e.message()))
}

pub fn render(g: &op::MastersGroup, json: bool) -> String {
    if json {
        let masters: Vec<serde_json::Value> = g
            .masters
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.node_id,
                    "addr": m.addr,
                    "role": m.role,
                    "match_index": m.matched_index,
                    "lag": m.lag,
                })
            })
            .collect();
        return format!(
            "{}\n",
            serde_json::json!({
                "leader_id": g.leader_id,
                "term": g.term,
                "masters": masters,
                "joint": g.joint,
                "last_log_index": g.last_log_index,
                "retired": g.retired,
                "pending": g.pending,
                "committed_index": g.committed_index,
            })
        );
    }
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    let rows: Vec<[String; 5]> = g
        .masters
        .iter()
        .map(|m| {
            [
                m.node_id.to_string(),
                m.addr.clone(),
                m.role.clone(),
                opt(m.matched_index),
                opt(m.lag),
            ]
        })
        .collect();
    let heads = ["ID", "ADDRESS", "ROLE", "MATCH", "LAG"];
    let mut width = heads.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(&heads);
    for r in &rows {
        out.push_str(&line(&r.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    out.push_str(&format!(
        "term {}, last log index {}",
        g.term, g.last_log_index
    ));
    if g.joint {
        out.push_str(", in a joint configuration (a change half done)");
    }
    out.push('\n');
    if !g.pending.is_empty() {
        out.push_str(&format!("pending: {}\n", g.pending));
    }
    if !g.retired.is_empty() {
        let ids: Vec<String> = g.retired.iter().map(u64::to_string).collect();
        out.push_str(&format!("retired ids: {}\n", ids.join(",")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_roles_and_lag() {
        let g = op::MastersGroup {
            leader_id: 1,
            term: 3,
            masters: vec![
                op::MasterStatus {
                    node_id: 1,
                    addr: "127.0.0.1:7001".into(),
                    role: "leader".into(),
                    matched_index: Some(40),
                    lag: Some(0),
                },
                op::MasterStatus {
                    node_id: 4,
                    addr: "127.0.0.1:7004".into(),
                    role: "learner".into(),
                    matched_index: Some(12),
                    lag: Some(28),
                },
            ],
            last_log_index: 40,
            retired: vec![2],
            ..Default::default()
        };
        let t = render(&g, false);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID  ADDRESS"), "{t}");
        assert!(
            lines[2].contains("learner") && lines[2].ends_with("28"),
            "{t}"
        );
        assert!(t.contains("retired ids: 2"), "{t}");
        let j: serde_json::Value = serde_json::from_str(&render(&g, true)).unwrap();
        assert_eq!(j["masters"][1]["lag"], 28);
        assert_eq!(j["retired"][0], 2);
    }
}
