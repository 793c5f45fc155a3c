//! A secured cluster from the command line: `orrery certs` makes a CA and
//! certificates, a master and an agent run over mutual TLS with a policy,
//! the CLI acts as the operator, a viewer is refused maintenance, and
//! `orrery replay history` shows who did what.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::free_port;

/// Children killed when the test ends, pass or fail.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn orrery(dir: &Path, who: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orrery"));
    c.env_remove("ORRERY_INSECURE")
        .env_remove("ORRERY_CA")
        .env_remove("ORRERY_CERT")
        .env_remove("ORRERY_KEY")
        .args(args)
        .stdin(Stdio::null());
    if let Some(who) = who {
        c.env("ORRERY_CA", dir.join("ca.pem"))
            .env("ORRERY_CERT", dir.join(format!("{who}.pem")))
            .env("ORRERY_KEY", dir.join(format!("{who}.key")));
    }
    c.output().expect("run orrery")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn spawn(dir: &Path, who: &str, args: &[&str], log: &str) -> Child {
    let log = std::fs::File::create(dir.join(log)).expect("log");
    Command::new(env!("CARGO_BIN_EXE_orrery"))
        .env_remove("ORRERY_INSECURE")
        .env("ORRERY_CA", dir.join("ca.pem"))
        .env("ORRERY_CERT", dir.join(format!("{who}.pem")))
        .env("ORRERY_KEY", dir.join(format!("{who}.key")))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn orrery")
}

#[test]
fn a_secured_cluster_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = dir.to_str().unwrap();
    ok(&orrery(dir, None, &["certs", "ca", "--dir", d]));
    // Nothing is overwritten.
    let again = orrery(dir, None, &["certs", "ca", "--dir", d]);
    assert_eq!(again.status.code(), Some(1));
    ok(&orrery(
        dir,
        None,
        &[
            "certs",
            "master",
            "--dir",
            d,
            "--name",
            "m1",
            "--san",
            "127.0.0.1",
        ],
    ));
    ok(&orrery(
        dir,
        None,
        &["certs", "agent", "--dir", d, "--host", "h-sec"],
    ));
    ok(&orrery(
        dir,
        None,
        &["certs", "client", "--dir", d, "--name", "ops"],
    ));
    ok(&orrery(
        dir,
        None,
        &["certs", "client", "--dir", d, "--name", "viewer"],
    ));
    let token = ok(&orrery(
        dir,
        None,
        &["certs", "token", "--principal", "bot"],
    ));
    let entry = token
        .lines()
        .skip_while(|l| !l.starts_with("[[token]]"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join("tokens.toml"), entry).unwrap();
    std::fs::write(
        dir.join("policy.toml"),
        "[[grant]]\nprincipal = \"ops\"\nallow = [\"view\", \"operator\", \"jobs\"]\n\n[[grant]]\nprincipal = \"viewer\"\nallow = [\"view\"]\n",
    )
    .unwrap();

    // A master refuses to start without a policy, or with another role's
    // certificate.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let peers = format!("1={addr}");
    let data = dir.join("m1");
    let data = data.to_str().unwrap();
    let master_args = [
        "master",
        "--id",
        "1",
        "--listen",
        &addr,
        "--peers",
        &peers,
        "--data-dir",
        data,
    ];
    let o = orrery(dir, Some("master-m1"), &master_args);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--policy is required"));
    let mut with_policy = master_args.to_vec();
    let policy = dir.join("policy.toml");
    let tokens = dir.join("tokens.toml");
    with_policy.extend(["--policy", policy.to_str().unwrap()]);
    with_policy.extend(["--tokens", tokens.to_str().unwrap()]);
    let o = orrery(dir, Some("client-ops"), &with_policy);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("needs a master certificate"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let mut procs = Procs(vec![spawn(dir, "master-m1", &with_policy, "master.log")]);
    let work = dir.join("work");
    procs.0.push(spawn(
        dir,
        "agent-h-sec",
        &[
            "--master",
            &addr,
            "agent",
            "--work-dir",
            work.to_str().unwrap(),
            "--hostname",
            "h-sec",
            "--ip",
            "127.0.0.1",
            "--resources",
            "cpus:2;mem:2048;disk:100",
        ],
        "agent.log",
    ));

    // The operator sees the agent register over TLS.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = orrery(
            dir,
            Some("client-ops"),
            &["--master", &addr, "--json", "agent", "list"],
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if v[0]["state"] == "REGISTERED" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent registers: {}{}",
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A viewer may look but not drain; without credentials nothing.
    ok(&orrery(
        dir,
        Some("client-viewer"),
        &["--master", &addr, "host", "query"],
    ));
    let o = orrery(
        dir,
        Some("client-viewer"),
        &["--master", &addr, "host", "maintenance", "start", "h-sec"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("client:viewer may not call"), "{err}");
    let o = orrery(dir, None, &["--master", &addr, "host", "query"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no credentials"));
    // The refusal is in the master's log, with who and why.
    let log = std::fs::read_to_string(dir.join("master.log")).unwrap();
    assert!(
        log.contains("refused") && log.contains("client:viewer"),
        "{log}"
    );
    // Another cluster's CA and certificate: the handshake fails, and the
    // master logs the refused connection.
    let other = dir.join("other");
    let o = other.to_str().unwrap();
    ok(&orrery(dir, None, &["certs", "ca", "--dir", o]));
    ok(&orrery(
        dir,
        None,
        &["certs", "client", "--dir", o, "--name", "ops"],
    ));
    let foreign = Command::new(env!("CARGO_BIN_EXE_orrery"))
        .env_remove("ORRERY_INSECURE")
        .env("ORRERY_CA", other.join("ca.pem"))
        .env("ORRERY_CERT", other.join("client-ops.pem"))
        .env("ORRERY_KEY", other.join("client-ops.key"))
        .args(["--master", &addr, "host", "query"])
        .output()
        .unwrap();
    assert_eq!(foreign.status.code(), Some(1));
    let err = String::from_utf8_lossy(&foreign.stderr);
    assert!(
        err.contains("UnknownIssuer") || err.contains("certificate"),
        "the reason is named: {err}"
    );
    // The client gives up at once (a certificate refusal is not retried);
    // the master's line may follow a moment later.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(dir.join("master.log")).unwrap();
        if log.contains("refused a TLS connection") {
            break;
        }
        assert!(Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let query = ok(&orrery(
        dir,
        Some("client-ops"),
        &["--master", &addr, "host", "query"],
    ));
    assert!(
        query.contains("HOST_STATE_UP"),
        "the viewer changed nothing: {query}"
    );

    // The operator drains the host; the history says who asked.
    ok(&orrery(
        dir,
        Some("client-ops"),
        &["--master", &addr, "host", "maintenance", "start", "h-sec"],
    ));
    let history = ok(&orrery(
        dir,
        Some("client-ops"),
        &["--master", &addr, "replay", "history", "h-sec"],
    ));
    let line = |needle: &str| {
        history
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} in the history: {history}"))
            .to_owned()
    };
    assert!(line("AgentRegistered").contains("agent:h-sec"), "{history}");
    assert!(line("HostDrainStarted").contains("client:ops"), "{history}");
    drop(procs);
}
