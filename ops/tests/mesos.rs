//! Mesos compatibility with real clients and real processes: a pymesos
//! 0.3.15 framework (PyPI, installed by `ops/scripts/install-pymesos.sh`)
//! against three `orrery master --insecure` processes and a real agent —
//! subscribe, launch, TASK_RUNNING and TASK_FINISHED, the leader killed
//! with SIGKILL, the framework reregistering through the new leader and
//! launching again — and the operator API's and `/master/state`'s JSON, and
//! Mesos' refusals, over plain HTTP.

mod common;

#[path = "../../gateway/tests/common/framework.rs"]
mod framework;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::agent::AgentProc;
use common::*;
use framework::eventually;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// The test's own copy of pymesos (installed once per target dir).
fn pymesos_dir() -> PathBuf {
    let dest = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pymesos-0.3.15");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-pymesos.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(&dest)
        .output()
        .expect("run install-pymesos.sh");
    assert!(
        out.status.success(),
        "installing pymesos failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dest
}

/// The pymesos framework process: its stdout lines, its stdin, and a kill
/// when the test ends, pass or fail.
struct PyFramework {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl PyFramework {
    fn start(master_http: &str) -> PyFramework {
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr = dir.path().join("framework.stderr");
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/mesos/pymesos_framework.py"
            ))
            .arg(master_http)
            .env("PYTHONPATH", pymesos_dir())
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn python3");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        PyFramework {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
            _dir: dir,
        }
    }

    /// Waits for a line starting with `prefix`; the line.
    fn expect(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        if let Some(l) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return l.clone();
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "the framework never printed {prefix:?}; it printed {:?}\n--- its stderr ---\n{}",
            self.seen,
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        );
    }

    fn tell(&mut self, line: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{line}");
        }
    }
}

impl Drop for PyFramework {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- framework stderr ---\n{}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three masters, each with its own `--http`.
async fn three_masters() -> (Masters, Vec<String>) {
    let m = Masters::new(3, &master_flags());
    let http: Vec<String> = free_ports(3)
        .into_iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    for id in 1..=3u64 {
        m.start(id, &["--http", &http[id as usize - 1]]);
    }
    (m, http)
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn call(addr: &str, path: &str, body: &Value) -> (u16, String) {
    let r = http(addr, "POST", path, &body.to_string());
    (status_of(&r), body_of(&r).to_owned())
}

/// `/master/state`, once the master serves it (it answers 503 while the
/// new leader recovers).
fn try_master_state(addr: &str) -> Option<Value> {
    let r = try_http(addr, "GET", "/master/state", "")?;
    (status_of(&r) == 200).then(|| serde_json::from_str(body_of(&r)).ok())?
}

fn master_state(addr: &str) -> Value {
    let r = http(addr, "GET", "/master/state", "");
    assert_eq!(status_of(&r), 200, "{r}");
    serde_json::from_str(body_of(&r)).expect("/master/state is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pymesos_framework_launches_tasks_and_survives_a_master_failover() {
    let _serial = SERIAL.lock().await;
    let (m, http) = three_masters().await;
    let (leader, term) = m
        .leader_among(&[1, 2, 3], WAIT)
        .await
        .unwrap_or_else(|| panic!("no leader\n{}", m.logs()));
    let mut agent = AgentProc::new(&m);
    agent.start(&[], &[]);
    let leader_http = http[leader as usize - 1].clone();
    eventually("the agent registered", WAIT, || {
        let addr = leader_http.clone();
        async move {
            let s = try_master_state(&addr)?;
            (s["activated_slaves"] == json!(1)).then_some(())
        }
    })
    .await;

    // pymesos starts at a follower and is redirected (307) to the leader.
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut fw = PyFramework::start(&http[follower as usize - 1]);
    let registered = fw.expect("REGISTERED ", WAIT);
    let framework_id = registered["REGISTERED ".len()..].to_owned();
    fw.expect("UPDATE t1 TASK_RUNNING True", WAIT);
    fw.expect("UPDATE t1 TASK_FINISHED True", WAIT);
    let out = std::fs::read_to_string(agent.sandbox(&framework_id, "t1").join("stdout"))
        .unwrap_or_default();
    assert!(out.contains("hello from t1"), "the task's stdout: {out:?}");

    // The leader dies; the framework's stream ends, it reconnects to its
    // master once that is back (restarted, as by systemd), and is sent on
    // to the new leader.
    m.kill9(leader);
    fw.expect("DISCONNECTED", WAIT);
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let (new_leader, new_term) = m
        .leader_among(&others, WAIT)
        .await
        .unwrap_or_else(|| panic!("no new leader\n{}", m.logs()));
    assert!(new_term > term);
    m.start(leader, &["--http", &http[leader as usize - 1]]);
    fw.expect("REREGISTERED", Duration::from_secs(60));
    fw.tell("NEXT");
    fw.expect("UPDATE t2 TASK_RUNNING True", WAIT);
    fw.expect("UPDATE t2 TASK_FINISHED True", WAIT);
    fw.expect("DONE", WAIT);

    // One framework, both tasks finished under it, on the new leader.
    let s = master_state(&http[new_leader as usize - 1]);
    let fws = s["frameworks"].as_array().expect("frameworks");
    assert_eq!(fws.len(), 1, "{s}");
    assert_eq!(fws[0]["id"], json!(framework_id));
    let done: Vec<&str> = fws[0]["completed_tasks"]
        .as_array()
        .expect("completed_tasks")
        .iter()
        .filter(|t| t["state"] == json!("TASK_FINISHED"))
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(done, ["t1", "t2"], "{s}");
    fw.tell("STOP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_api_and_refusals_speak_mesos_json() {
    let _serial = SERIAL.lock().await;
    let (m, http) = three_masters().await;
    let (leader, _) = m
        .leader_among(&[1, 2, 3], WAIT)
        .await
        .unwrap_or_else(|| panic!("no leader\n{}", m.logs()));
    let addr = http[leader as usize - 1].clone();
    let mut agent = AgentProc::new(&m);
    agent.resources = "cpus:4;mem:2048;gpus:2;ports:[31000-31010]".to_owned();
    agent.start(&["--attributes", "rack:r1"], &[]);
    let agents = eventually("GET_AGENTS lists the agent", WAIT, || {
        let addr = addr.clone();
        async move {
            let (code, body) = call(&addr, "/api/v1", &json!({"type": "GET_AGENTS"}));
            let v: Value = serde_json::from_str(&body).ok()?;
            (code == 200 && v["get_agents"]["agents"].as_array()?.len() == 1).then_some(v)
        }
    })
    .await;
    assert_eq!(agents["type"], json!("GET_AGENTS"));
    let a = &agents["get_agents"]["agents"][0];
    assert_eq!(a["active"], json!(true));
    assert_eq!(a["agent_info"]["hostname"], json!("host-1"));
    assert!(a["agent_info"]["id"]["value"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(
        a["agent_info"]["attributes"][0],
        json!({"name": "rack", "type": "TEXT", "text": {"value": "r1"}})
    );
    let total = a["total_resources"].as_array().expect("total_resources");
    let named = |n: &str| total.iter().find(|r| r["name"] == json!(n)).cloned();
    assert_eq!(
        named("cpus"),
        Some(json!({"name": "cpus", "type": "SCALAR", "scalar": {"value": 4.0}, "role": "*"}))
    );
    assert_eq!(named("gpus").expect("gpus")["scalar"]["value"], json!(2.0));
    assert_eq!(
        named("ports").expect("ports")["ranges"]["range"],
        json!([{"begin": 31000, "end": 31010}])
    );

    let (code, body) = call(&addr, "/api/v1", &json!({"type": "GET_STATE"}));
    assert_eq!(code, 200, "{body}");
    let s: Value = serde_json::from_str(&body).expect("GET_STATE is JSON");
    assert_eq!(s["type"], json!("GET_STATE"));
    for part in ["get_tasks", "get_executors", "get_frameworks", "get_agents"] {
        assert!(s["get_state"][part].is_object(), "{part} in {s}");
    }
    assert_eq!(s["get_state"]["get_agents"]["agents"][0], *a);
    let (code, body) = call(&addr, "/api/v1", &json!({"type": "GET_HEALTH"}));
    assert_eq!(
        (code, body.contains("\"healthy\":true")),
        (200, true),
        "{body}"
    );

    // The v0 document, under both of its names.
    let st = master_state(&addr);
    assert_eq!(st["activated_slaves"], json!(1));
    assert_eq!(st["slaves"][0]["resources"]["gpus"], json!(2.0));
    assert_eq!(
        st["slaves"][0]["resources"]["ports"],
        json!("[31000-31010]")
    );
    let r = crate::http(&addr, "GET", "/state.json", "");
    assert_eq!(status_of(&r), 200);
    let r = crate::http(&addr, "GET", "/version", "");
    assert!(body_of(&r).contains("\"version\":\"1.11.0\""), "{r}");

    // Followers send clients to the leader, as Mesos' masters do.
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let r = crate::http(
        &http[follower as usize - 1],
        "POST",
        "/api/v1/scheduler",
        r#"{"type":"TEARDOWN","framework_id":{"value":"x"}}"#,
    );
    assert_eq!(status_of(&r), 307, "{r}");
    assert!(r.contains(&format!("//{addr}/api/v1/scheduler")), "{r}");

    // Refusals: each names the problem; nothing changes; the master stays.
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"type": "GET_NOTHING"}), 400, "GET_NOTHING"),
        (
            json!({"kind": "GET_STATE"}),
            400,
            "missing required field type",
        ),
        (
            json!({"type": "START_MAINTENANCE"}),
            400,
            "start_maintenance",
        ),
        (json!({"type": "GET_QUOTA"}), 501, "GET_QUOTA"),
    ];
    for (body, want, says) in cases {
        let (code, text) = call(&addr, "/api/v1", &body);
        assert_eq!(code, want, "{body}: {text}");
        assert!(text.contains(says), "{body}: {text}");
    }
    let scheduler_cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": "u"}}}),
            400,
            "subscribe.framework_info.name",
        ),
        (json!({"type": "SUBSCRIBE"}), 400, "subscribe"),
        (
            json!({"type": "DECLINE", "framework_id": {"value": "no-such"}, "decline": {"offer_ids": []}}),
            403,
            "Framework cannot be found",
        ),
        (json!({"type": "KILL"}), 400, "framework_id"),
        (
            json!({"type": "LAUNCH_ROCKETS", "framework_id": {"value": "f"}}),
            400,
            "LAUNCH_ROCKETS",
        ),
        (
            json!({"type": "MESSAGE", "framework_id": {"value": "f"}}),
            501,
            "MESSAGE",
        ),
    ];
    for (body, want, says) in scheduler_cases {
        let (code, text) = call(&addr, "/api/v1/scheduler", &body);
        assert_eq!(code, want, "{body}: {text}");
        assert!(text.contains(says), "{body}: {text}");
    }
    let r = crate::http(&addr, "POST", "/api/v1/scheduler", "{not json");
    assert_eq!(status_of(&r), 400, "{r}");
    assert!(r.contains("Failed to parse body into JSON"), "{r}");
    let (code, _) = call(&addr, "/api/v1", &json!({"type": "GET_HEALTH"}));
    assert_eq!(code, 200, "the master still answers");
    assert_eq!(master_state(&addr)["frameworks"], json!([]));

    // A subscription by hand: the stream id, RecordIO, and calls checked
    // against the stream, as Mesos does.
    let (mut stream, head, first) = subscribe(
        &addr,
        &json!({
            "type": "SUBSCRIBE",
            "subscribe": {"framework_info": {"user": "u", "name": "by-hand", "capabilities": [{"type": "PARTITION_AWARE"}, {"type": "GPU_RESOURCES"}]}},
        }),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let stream_id = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("mesos-stream-id:")
                .then(|| l[16..].trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no Mesos-Stream-Id in {head}"));
    assert_eq!(first["type"], json!("SUBSCRIBED"), "{first}");
    let fw_id = first["subscribed"]["framework_id"]["value"]
        .as_str()
        .expect("framework id")
        .to_owned();
    assert!(first["subscribed"]["heartbeat_interval_seconds"]
        .as_f64()
        .is_some_and(|s| s > 0.0));
    let revive = json!({"type": "REVIVE", "framework_id": {"value": fw_id}});
    let (code, text) = call(&addr, "/api/v1/scheduler", &revive);
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("Mesos-Stream-Id"), "{text}");
    let with_stream = |id: &str| {
        let r = raw(&addr, &format!(
            "POST /api/v1/scheduler HTTP/1.0\r\nContent-Type: application/json\r\nMesos-Stream-Id: {id}\r\nContent-Length: {}\r\n\r\n{revive}",
            revive.to_string().len()
        ));
        (status_of(&r), body_of(&r).to_owned())
    };
    let (code, text) = with_stream("a-stale-stream");
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("didn't match the stream ID"), "{text}");
    assert_eq!(with_stream(&stream_id).0, 202);
    let r = raw(&addr, "POST /api/v1/scheduler HTTP/1.0\r\nContent-Type: application/x-protobuf\r\nContent-Length: 2\r\n\r\n{}");
    assert_eq!(status_of(&r), 415, "{r}");
    // Offers arrive on the stream in Mesos' shape.
    let offers = next_record(&mut stream, |e| e["type"] == json!("OFFERS"));
    let offer = &offers["offers"]["offers"][0];
    assert_eq!(offer["framework_id"]["value"], json!(fw_id));
    assert_eq!(offer["hostname"], json!("host-1"));
    assert!(
        offer["resources"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["name"] == json!("gpus"))),
        "{offer}"
    );
    // A launch the core refuses comes back as an update, as in Mesos.
    let accept = json!({"type": "ACCEPT", "framework_id": {"value": fw_id}, "accept": {
        "offer_ids": [offer["id"]],
        "operations": [{"type": "LAUNCH", "launch": {"task_infos": [{
            "name": "too big", "task_id": {"value": "big"}, "agent_id": offer["agent_id"],
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 64}}],
            "command": {"value": "true"},
        }]}}],
    }});
    let r = raw(&addr, &format!(
        "POST /api/v1/scheduler HTTP/1.0\r\nContent-Type: application/json\r\nMesos-Stream-Id: {stream_id}\r\nContent-Length: {}\r\n\r\n{accept}",
        accept.to_string().len()
    ));
    assert_eq!(status_of(&r), 202, "{r}");
    let update = next_record(&mut stream, |e| e["type"] == json!("UPDATE"));
    let st = &update["update"]["status"];
    assert_eq!(st["task_id"]["value"], json!("big"));
    assert_eq!(st["state"], json!("TASK_ERROR"), "{st}");
    assert_eq!(st["reason"], json!("REASON_TASK_INVALID"), "{st}");
    assert!(st.get("uuid").is_none(), "nothing to acknowledge: {st}");
    // The stream closes: the framework is no longer subscribed.
    drop(stream);
    eventually("the closed stream disconnects the framework", WAIT, || {
        let addr = addr.clone();
        let revive = revive.clone();
        async move {
            let (code, text) = call(&addr, "/api/v1/scheduler", &revive);
            (code == 403 && text.contains("not subscribed")).then_some(())
        }
    })
    .await;
}

/// A raw HTTP/1.0 request (its text as given); the whole response.
fn raw(addr: &str, request: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A subscription's response head and first record, and its stream.
fn subscribe(addr: &str, body: &Value) -> (BufReader<std::net::TcpStream>, String, Value) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let body = body.to_string();
    write!(
        s,
        "POST /api/v1/scheduler HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("read the head");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let first = next_record(&mut r, |_| true);
    (r, head, first)
}

/// Reads chunked RecordIO records until one matches `want`.
fn next_record(r: &mut BufReader<std::net::TcpStream>, want: impl Fn(&Value) -> bool) -> Value {
    use std::io::Read;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        // One chunk: its size in hex, CRLF, the bytes, CRLF.
        let mut size = String::new();
        r.read_line(&mut size).expect("a chunk size");
        let n = usize::from_str_radix(size.trim(), 16)
            .unwrap_or_else(|_| panic!("chunk size {size:?}"));
        assert!(n > 0, "the stream ended");
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk).expect("a chunk");
        pending.extend_from_slice(&chunk[..n]);
        while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
            let len: usize = std::str::from_utf8(&pending[..nl])
                .expect("utf-8")
                .parse()
                .expect("a record length");
            if pending.len() < nl + 1 + len {
                break;
            }
            let record: Value =
                serde_json::from_slice(&pending[nl + 1..nl + 1 + len]).expect("a JSON record");
            pending.drain(..nl + 1 + len);
            if want(&record) {
                return record;
            }
        }
    }
}
