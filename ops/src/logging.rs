//! Structured logs: `tracing` to stderr, as text or JSON (`--log-format`).
//! Crates that log through the `log` facade (raft-log) are bridged in, so
//! their warnings (a truncated torn record) reach the same output.

use anyhow::{bail, Result};

pub fn init(format: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORRERY_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,openraft=warn,raft_log=warn,chunked_wal=warn,h2=warn,tower=warn",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        "text" => builder.try_init(),
        "json" => builder.json().try_init(),
        other => bail!("--log-format {other:?} is not one of: text, json"),
    };
    if let Err(e) = result {
        bail!("could not start logging: {e}");
    }
    // The `log` crate's records (raft-log) go to tracing too.
    let _ = tracing_log::LogTracer::init();
    Ok(())
}
