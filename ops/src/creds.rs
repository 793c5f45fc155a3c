//! The CLI's credentials: one identity per process, from the global
//! `--ca/--cert/--key` flags (or `ORRERY_CA`, `ORRERY_CERT`, `ORRERY_KEY`),
//! or `--insecure` for a cluster started with `--insecure`. Nothing given is
//! an error that says what to give: Orrery does not fall back to plain TCP.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, Result};
use clap::Args;
use orrery_actors::client::Transport;
use orrery_storage::security::Tls;

#[derive(Clone, Debug, Default, Args)]
pub struct CredFlags {
    /// The CA certificate (PEM) that signed the masters' certificates.
    // The ids are prefixed: a subcommand's own `key` (a job key) must not
    // meet a global `key` (a path).
    #[arg(
        id = "tls_ca",
        long = "ca",
        global = true,
        env = "ORRERY_CA",
        value_name = "FILE"
    )]
    pub ca: Option<PathBuf>,
    /// This process's certificate (PEM), issued by `orrery certs`.
    #[arg(
        id = "tls_cert",
        long = "cert",
        global = true,
        env = "ORRERY_CERT",
        value_name = "FILE"
    )]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(
        id = "tls_key",
        long = "key",
        global = true,
        env = "ORRERY_KEY",
        value_name = "FILE"
    )]
    pub key: Option<PathBuf>,
    /// Plain TCP, no authentication: only for a throwaway test cluster whose
    /// masters run with --insecure too.
    #[arg(
        id = "tls_insecure",
        long = "insecure",
        global = true,
        env = "ORRERY_INSECURE",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    pub insecure: bool,
}

impl CredFlags {
    /// The TLS material, or None with --insecure.
    pub fn tls(&self) -> Result<Option<Arc<Tls>>> {
        let given = [&self.ca, &self.cert, &self.key]
            .iter()
            .filter(|f| f.is_some())
            .count();
        if self.insecure {
            if given > 0 {
                return Err(anyhow!(
                    "--insecure and --ca/--cert/--key (or ORRERY_INSECURE and ORRERY_CA/CERT/KEY) were both given: choose one"
                ));
            }
            return Ok(None);
        }
        match (&self.ca, &self.cert, &self.key) {
            (Some(ca), Some(cert), Some(key)) => Ok(Some(Arc::new(
                Tls::load(ca, cert, key).map_err(|e| anyhow!("{e}"))?,
            ))),
            _ if given == 0 => Err(anyhow!(
                "no credentials: give --ca, --cert and --key (ORRERY_CA, ORRERY_CERT, ORRERY_KEY; see `orrery certs --help`), or --insecure for a cluster started with --insecure"
            )),
            _ => Err(anyhow!(
                "--ca, --cert and --key go together; only {given} of the three were given"
            )),
        }
    }
}

static FLAGS: OnceLock<CredFlags> = OnceLock::new();

/// Records the process's flags (main does, once).
pub fn init(flags: CredFlags) {
    let _ = FLAGS.set(flags);
}

/// The process's flags.
pub fn flags() -> CredFlags {
    FLAGS.get().cloned().unwrap_or_default()
}

/// How this CLI process reaches the masters.
pub fn transport() -> Result<Transport> {
    let flags = FLAGS.get().cloned().unwrap_or_default();
    Ok(match flags.tls()? {
        Some(tls) => Transport::Tls(tls),
        None => Transport::Plain,
    })
}
