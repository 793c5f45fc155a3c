//! `orrery certs`: a small CA for a cluster, and certificates naming their
//! holder's role (`orrery://master/NAME`, `orrery://agent/HOST`,
//! `orrery://client/NAME`), plus bearer tokens. Files are PEM; keys are
//! written readable by the owner only; nothing is ever overwritten.
//!
//! Sites with their own PKI may issue the certificates elsewhere: all
//! Orrery reads is the one `orrery://ROLE/NAME` URI SAN (and, for masters,
//! the DNS names or IPs they are reached at).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use orrery_storage::security::pki::{write_pem, Ca, Validity};
use orrery_storage::security::Principal;

#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Create the cluster's CA (DIR/ca.pem, DIR/ca.key). Keep ca.key off
    /// the cluster's machines.
    Ca(CaArgs),
    /// A master's certificate (DIR/master-NAME.pem, .key) for the
    /// addresses it is reached at.
    Master(MasterCert),
    /// An agent's certificate for one host (DIR/agent-HOST.pem, .key).
    Agent(AgentCert),
    /// A client's certificate (DIR/client-NAME.pem, .key): an operator or
    /// a framework, named as in the policy file.
    Client(ClientCert),
    /// A bearer token for a client: prints the token (shown once) and the
    /// `[[token]]` entry for the master's --tokens file (its SHA-256).
    Token(TokenArgs),
}

#[derive(Debug, Args)]
pub struct CaArgs {
    /// Where the CA's files go.
    #[arg(long)]
    dir: PathBuf,
    /// Days the CA is valid.
    #[arg(long, default_value_t = 3650)]
    days: u32,
}

#[derive(Debug, Args)]
pub struct Common {
    /// The directory holding ca.pem and ca.key; the certificate goes there.
    #[arg(long)]
    dir: PathBuf,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

#[derive(Debug, Args)]
pub struct MasterCert {
    #[command(flatten)]
    common: Common,
    /// The master's name (its certificate names `orrery://master/NAME`).
    #[arg(long)]
    name: String,
    /// A DNS name or IP address the master is reached at; repeat for each.
    #[arg(long = "san", required = true)]
    sans: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AgentCert {
    #[command(flatten)]
    common: Common,
    /// The host the agent runs on, as it registers (--hostname).
    #[arg(long)]
    host: String,
}

#[derive(Debug, Args)]
pub struct ClientCert {
    #[command(flatten)]
    common: Common,
    /// The client's principal, as the policy file names it.
    #[arg(long)]
    name: String,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The client principal the token authenticates.
    #[arg(long)]
    principal: String,
}

fn days(d: u32) -> Result<Validity> {
    if d == 0 || d > 36_500 {
        bail!("--days {d}: give 1 to 36500");
    }
    Ok(Validity::days(i64::from(d)))
}

fn write_new(path: &Path, pem: &str, secret: bool) -> Result<()> {
    if path.exists() {
        bail!(
            "{} exists; Orrery does not overwrite certificates or keys (move it away first)",
            path.display()
        );
    }
    write_pem(path, pem, secret).map_err(|e| anyhow!("{e}"))
}

fn load_ca(dir: &Path) -> Result<Ca> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).with_context(|| {
            format!(
                "reading {} (create the CA with `orrery certs ca --dir {}`)",
                p.display(),
                dir.display()
            )
        })
    };
    Ca::from_pem(&read("ca.pem")?, &read("ca.key")?).map_err(|e| anyhow!("{}: {e}", dir.display()))
}

fn issue(common: &Common, principal: Principal, sans: &[String], file: &str) -> Result<()> {
    let validity = days(common.days)?;
    let ca = load_ca(&common.dir)?;
    let pair = ca
        .issue(&principal, sans, validity)
        .map_err(|e| anyhow!("issuing the certificate of {principal}: {e}"))?;
    let cert = common.dir.join(format!("{file}.pem"));
    let key = common.dir.join(format!("{file}.key"));
    if key.exists() {
        bail!("{} exists; Orrery does not overwrite keys", key.display());
    }
    write_new(&cert, &pair.cert_pem, false)?;
    write_new(&key, &pair.key_pem, true)?;
    println!("{principal}: {} and {}", cert.display(), key.display());
    Ok(())
}

pub fn run(cmd: &CertsCmd) -> Result<()> {
    let principal = |role: &str, name: &str| Principal::new(role, name).map_err(|e| anyhow!(e));
    match cmd {
        CertsCmd::Ca(a) => {
            let validity = days(a.days)?;
            std::fs::create_dir_all(&a.dir)
                .with_context(|| format!("creating {}", a.dir.display()))?;
            let (cert, key) = (a.dir.join("ca.pem"), a.dir.join("ca.key"));
            if cert.exists() || key.exists() {
                bail!(
                    "{} already holds a CA; Orrery does not overwrite it",
                    a.dir.display()
                );
            }
            let ca = Ca::generate("Orrery cluster CA", validity).map_err(|e| anyhow!(e))?;
            write_new(&cert, &ca.pair.cert_pem, false)?;
            write_new(&key, &ca.pair.key_pem, true)?;
            println!(
                "CA: {} (give to every process) and {} (keep safe)",
                cert.display(),
                key.display()
            );
            Ok(())
        }
        CertsCmd::Master(m) => issue(
            &m.common,
            principal("master", &m.name)?,
            &m.sans,
            &format!("master-{}", m.name),
        ),
        CertsCmd::Agent(a) => issue(
            &a.common,
            principal("agent", &a.host)?,
            &[],
            &format!("agent-{}", a.host),
        ),
        CertsCmd::Client(c) => issue(
            &c.common,
            principal("client", &c.name)?,
            &[],
            &format!("client-{}", c.name),
        ),
        CertsCmd::Token(t) => {
            principal("client", &t.principal)?;
            let token = orrery_storage::security::random_token().map_err(|e| anyhow!("{e}"))?;
            println!("token: {token}");
            println!("# for the master's --tokens file:");
            println!("[[token]]");
            println!("principal = {:?}", t.principal);
            println!("sha256 = {:?}", orrery_gateway::auth::token_hash(&token));
            Ok(())
        }
    }
}
