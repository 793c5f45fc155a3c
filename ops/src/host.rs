//! `orrery host maintenance start|complete HOSTS` and `orrery host query`,
//! as in Peloton's CLI, through the operator API of the leader.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use orrery_gateway::client::with_leader;
use orrery_proto::operator::{self as op, operator_client::OperatorClient};

#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// Host maintenance: start draining hosts, or bring them back up.
    #[command(subcommand)]
    Maintenance(MaintenanceCmd),
    /// Hosts and their maintenance state.
    Query {
        /// Only these states, comma-separated: HOST_STATE_UP,
        /// HOST_STATE_DRAINING, HOST_STATE_DRAINED, HOST_STATE_DOWN.
        #[arg(long)]
        states: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum MaintenanceCmd {
    /// Drain these hosts (comma-separated): UP → DRAINING.
    Start {
        hosts: String,
        #[command(flatten)]
        dry: crate::dryrun::DryRunArgs,
    },
    /// Bring these hosts (comma-separated) back: → UP.
    Complete { hosts: String },
}

fn hosts(text: &str) -> Result<Vec<String>> {
    let hosts: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect();
    if hosts.is_empty() {
        bail!("{text:?} names no host (give HOST[,HOST...])");
    }
    Ok(hosts)
}

pub fn run(masters: Option<&str>, cmd: &HostCmd, json: bool) -> Result<()> {
    let masters = crate::list::parse_masters(masters)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let patience = Duration::from_secs(10);
    let fail = |e: tonic::Status| anyhow!("{}", e.message());
    let transport = crate::creds::transport()?;
    rt.block_on(async {
        match cmd {
            HostCmd::Maintenance(m) => {
                if let MaintenanceCmd::Start { hosts: h, dry } = m {
                    if dry.dry_run {
                        let list = hosts(h)?;
                        let req = op::PlanMaintenanceRequest {
                            hostnames: list.clone(),
                            assumptions: Some(dry.assumptions()?),
                        };
                        let (r, _) = with_leader(&transport, &masters, patience, |ch| {
                            let req = req.clone();
                            async move { OperatorClient::new(ch).plan_maintenance(req).await }
                        })
                        .await
                        .map_err(fail)?;
                        let what = format!("draining {}", list.join(", "));
                        print!("{}", crate::dryrun::render(&what, &r.into_inner(), json));
                        return Ok(());
                    }
                }
                let (start, list) = match m {
                    MaintenanceCmd::Start { hosts: h, .. } => (true, hosts(h)?),
                    MaintenanceCmd::Complete { hosts: h } => (false, hosts(h)?),
                };
                with_leader(&transport, &masters, patience, |ch| {
                    let req = op::Hosts {
                        hostnames: list.clone(),
                    };
                    async move {
                        let mut c = OperatorClient::new(ch);
                        if start {
                            c.start_maintenance(req).await
                        } else {
                            c.complete_maintenance(req).await
                        }
                    }
                })
                .await
                .map_err(fail)?;
                println!(
                    "{} {}",
                    if start { "draining" } else { "up:" },
                    list.join(", ")
                );
            }
            HostCmd::Query { states } => {
                let states: Vec<String> = states
                    .as_deref()
                    .map(|s| s.split(',').map(|x| x.trim().to_owned()).collect())
                    .unwrap_or_default();
                let (list, _) = with_leader(&transport, &masters, patience, |ch| {
                    let req = op::QueryHostsRequest {
                        states: states.clone(),
                    };
                    async move {
                        OperatorClient::new(ch)
                            .query_hosts(req)
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await
                .map_err(fail)?;
                if json {
                    let v: Vec<_> = list
                        .hosts
                        .iter()
                        .map(|h| serde_json::json!({
                            "hostname": h.hostname,
                            "ip": h.ip,
                            "state": h.state,
                            "live_tasks": h.live_tasks,
                            "inverse_offers": h.inverse_offers.iter().map(|o| serde_json::json!({
                                "framework_id": o.framework_id,
                                "agent_id": o.agent_id,
                                "status": o.status,
                            })).collect::<Vec<_>>(),
                        }))
                        .collect();
                    println!("{}", serde_json::Value::from(v));
                } else {
                    print!(
                        "{}",
                        crate::list::table(
                            &["HOSTNAME", "IP", "STATE", "LIVE_TASKS", "INVERSE_OFFERS"],
                            list.hosts
                                .iter()
                                .map(|h| {
                                    let answers: Vec<String> = h
                                        .inverse_offers
                                        .iter()
                                        .map(|o| format!("{}:{}", o.framework_id, o.status))
                                        .collect();
                                    vec![
                                        h.hostname.clone(),
                                        h.ip.clone(),
                                        h.state.clone(),
                                        h.live_tasks.to_string(),
                                        if answers.is_empty() {
                                            "-".into()
                                        } else {
                                            answers.join(",")
                                        },
                                    ]
                                })
                                .collect(),
                        )
                    );
                }
            }
        }
        Ok(())
    })
}
