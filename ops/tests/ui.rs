//! The web UI in a real browser: Debian's Chromium, headless, driven
//! through chromedriver (WebDriver, the fantoccini crate), both installed
//! by `ops/scripts/install-chromium.sh`. A real `orrery master` and
//! `orrery agent` run a job of two real processes; the test checks that
//! the agent, the job's tasks and a host's maintenance state appear, that a
//! live page follows a commit without being reloaded, and that moving the
//! timeline back shows the cluster before the maintenance. Screenshots go
//! to `target/tmp/ui-screenshots/` (printed at the end).

mod common;

#[path = "../../gateway/tests/common/framework.rs"]
mod framework;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::agent::AgentProc;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use framework::eventually;

const WAIT: Duration = Duration::from_secs(30);

/// A GET through the common raw-socket helper: (status, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let out = http(addr, "GET", path, "");
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = body_of(&out).to_owned();
    (code, body)
}

/// chromedriver on a free port, killed when the test ends, pass or fail.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn install_chromium() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-chromium.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("run install-chromium.sh");
    assert!(
        out.status.success(),
        "installing chromium failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn browser(dir: &std::path::Path) -> (Driver, Client) {
    let port = free_port();
    let child = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver { child, port };
    let profile = dir.join("chromium-profile");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let url = format!("http://127.0.0.1:{}", driver.port);
    let client = eventually("chromedriver starts a session", WAIT, || {
        let caps = caps.clone();
        let url = url.clone();
        async move {
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&url)
                .await
                .ok()
        }
    })
    .await;
    (driver, client)
}

fn shots() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&d).expect("screenshot dir");
    d
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(shots().join(name), png).expect("write the screenshot");
}

async fn source(c: &Client) -> String {
    c.source().await.expect("the page source")
}

/// The text of the element `css` selects (found again if a live refresh
/// replaced it between the find and the read).
async fn text_of(c: &Client, css: &str) -> String {
    eventually(css, WAIT, || async {
        c.find(Locator::Css(css)).await.ok()?.text().await.ok()
    })
    .await
}

async fn wait_for_text(c: &Client, what: &str, needle: &str) -> String {
    eventually(what, WAIT, || async {
        let s = c.source().await.ok()?;
        s.contains(needle).then_some(s)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_shows_the_cluster_live_and_at_a_past_event_in_chromium() {
    install_chromium();
    let http = format!("127.0.0.1:{}", free_port());
    let m = Masters::new(1, &master_flags());
    m.start(1, &["--http", &http]);
    m.leader_among(&[1], Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no leader\n{}", m.logs()));
    let mut agent = AgentProc::new(&m);
    agent.start(&[], &[]);
    let orrery = cli(&m);
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.toml");
    std::fs::write(
        &web,
        "role = \"www\"\nenv = \"prod\"\nname = \"web\"\ninstances = 2\nargv = [\"sleep\", \"1000\"]\n\
         [resources]\ncpus = 0.1\nmem = 16\n",
    )
    .unwrap();
    let (code, out, err) = orrery(&["job", "create", web.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    eventually("both web instances RUNNING", WAIT, || {
        let (_, out, _) = orrery(&["--json", "job", "status", "www/prod/web"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let running = v["instances"].as_array().map_or(0, |a| {
            a.iter().filter(|i| i["state"] == "TASK_RUNNING").count()
        });
        async move { (running == 2).then_some(()) }
    })
    .await;
    let (code, state) = get(&http, "/state");
    assert_eq!(code, 200, "{state}");
    let before: u64 = serde_json::from_str::<serde_json::Value>(&state).unwrap()["commit_index"]
        .as_u64()
        .expect("commit_index");

    let (_driver, c) = browser(dir.path()).await;
    // The overview, live: the agent, its domain-less row, the job and its
    // two running tasks with their sandboxes.
    c.goto(&format!("http://{http}/ui")).await.unwrap();
    let page = wait_for_text(&c, "the job's tasks on the overview", "www.prod.web.1").await;
    assert!(page.contains(r#"data-hostname="host-1""#), "the agent row");
    assert!(page.contains(r#"data-job="www/prod/web""#), "the job row");
    assert!(page.contains("sandboxes/"), "sandbox paths");
    let agent_row = text_of(&c, r#"tr.agent[data-hostname="host-1"]"#).await;
    assert!(agent_row.contains("HOST_STATE_UP"));
    let job_row = text_of(&c, r#"tr.job[data-job="www/prod/web"]"#).await;
    assert_eq!(job_row.matches("TASK_RUNNING").count(), 2);
    shot(&c, "overview.png").await;

    // Live: mark this document, start the maintenance from the CLI, and
    // see the page follow it with the mark still there (no reload).
    c.execute("window.orreryMark = 42;", vec![]).await.unwrap();
    let (ok, out, err) = orrery(&["host", "maintenance", "start", "host-1"]);
    assert_eq!(ok, Some(0), "{out}{err}");
    eventually("the live page shows the host draining", WAIT, || async {
        let t = text_of(&c, r#"tr.agent[data-hostname="host-1"]"#).await;
        (!t.contains("HOST_STATE_UP")).then_some(())
    })
    .await;
    let mark = c
        .execute("return window.orreryMark;", vec![])
        .await
        .unwrap();
    assert_eq!(
        mark,
        serde_json::json!(42),
        "updated in place, not reloaded"
    );

    // The maintenance page: the host out of UP.
    c.find(Locator::LinkText("Maintenance"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let page = wait_for_text(&c, "the maintenance page", r#"id="hosts""#).await;
    assert!(
        page.contains(r#"data-state="HOST_STATE_DRAINING""#)
            || page.contains(r#"data-state="HOST_STATE_DRAINED""#)
            || page.contains(r#"data-state="HOST_STATE_DOWN""#),
        "host-1 in maintenance:\n{page}"
    );
    shot(&c, "maintenance.png").await;

    // Time travel: type the event before the maintenance into the
    // timeline box and press Enter. The page is now at that event: the
    // host was UP and both tasks ran.
    let input = c.find(Locator::Id("at")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(&format!("{before}\n")).await.unwrap();
    let page = wait_for_text(
        &c,
        "the maintenance page at the earlier event",
        &format!("at event {before} of"),
    )
    .await;
    assert!(
        page.contains(r#"data-hostname="host-1" data-state="HOST_STATE_UP""#),
        "no host in maintenance at event {before}:\n{page}"
    );
    shot(&c, "maintenance-at-earlier-event.png").await;
    // The overview at that point, through the navigation (which keeps it).
    c.find(Locator::LinkText("Overview"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(
        &c,
        "the overview at the earlier event",
        &format!("at event {before} of"),
    )
    .await;
    let agent_row = text_of(&c, r#"tr.agent[data-hostname="host-1"]"#).await;
    assert!(agent_row.contains("HOST_STATE_UP"));
    let job_row = text_of(&c, r#"tr.job[data-job="www/prod/web"]"#).await;
    assert_eq!(job_row.matches("TASK_RUNNING").count(), 2);
    assert!(c
        .current_url()
        .await
        .unwrap()
        .as_str()
        .contains(&format!("at={before}")));
    shot(&c, "overview-at-earlier-event.png").await;

    // The slider: drag it to the first event (set and change, as a drag
    // ends): before any agent registered.
    c.execute(
        "var s = document.getElementById('at-slider'); s.value = s.min; \
         s.dispatchEvent(new Event('input', {bubbles: true})); \
         s.dispatchEvent(new Event('change', {bubbles: true}));",
        vec![],
    )
    .await
    .unwrap();
    let page = wait_for_text(&c, "the overview at the first event", "Agents (0)").await;
    assert!(page.contains("at event "), "{page}");

    // The timeline: the events, the maintenance among them, and a diff.
    c.goto(&format!("http://{http}/ui/timeline")).await.unwrap();
    let page = wait_for_text(&c, "the timeline", r#"id="events""#).await;
    assert!(
        page.contains("HostStateChanged") || page.contains("Host"),
        "{page}"
    );
    shot(&c, "timeline.png").await;
    c.goto(&format!("http://{http}/ui/diff?a={before}&b=live"))
        .await
        .unwrap();
    let page = source(&c).await;
    assert!(
        page.contains("changes") && page.contains("host-1"),
        "{page}"
    );
    // Why pending, for the job whose only host drains.
    c.goto(&format!("http://{http}/ui/why?job=www/prod/web"))
        .await
        .unwrap();
    let page = source(&c).await;
    assert!(page.contains("Why www/prod/web waits"), "{page}");
    shot(&c, "why-pending.png").await;
    // A bad point is named, not a blank page.
    c.goto(&format!("http://{http}/ui/overview?at=yesterday"))
        .await
        .unwrap();
    let page = source(&c).await;
    assert!(page.contains("neither an event index nor a time"), "{page}");
    // ... and stays: an error page does not reload itself on a commit.
    let (code, body) = get(&http, "/ui/overview?at=yesterday");
    assert_eq!(code, 400);
    assert!(!body.contains("orrery-commit"), "{body}");
    let (code, _) = get(&http, "/ui/overview?at=999999999");
    assert_eq!(code, 400, "a point past the end is refused");

    let _ = c.close().await;
    eprintln!("screenshots in {}", shots().display());
    agent.kill9();
}
