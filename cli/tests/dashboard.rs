//! The read-only web dashboard (issue 24) in headless Chromium: a real
//! three-member cluster, each member serving its dashboard
//! (`--http-listen`), two node agents (one with SIMULATED GPUs), jobs of
//! three kinds, a power budget and a completed live migration. Every page
//! is loaded in Chromium (`--dump-dom`, the DOM after the page's script
//! ran) and its figures are checked against what the CLI reads through the
//! gRPC API (`herd node|job|alloc|migration list -o json`, `herd cluster
//! status`, `herd power budget list`, `herd reschedule plan`); a follower's
//! pages say they may be stale; a screenshot of each page is kept under
//! `target/tmp/dashboard/` (the path is printed).
//!
//! Needs Debian's `chromium`: skipped with a message where it is missing,
//! failed under CI=true (`.ci/run` installs it).

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::agents::{must_have_ready_nodes, running_allocs};
use common::browser::{find_chromium, must_text, run_chromium, text};
use common::*;
use herd_api::resources::display_memory;
use herd_chaos::agents::AgentSet;
use herd_chaos::ports::free_loopback_port;
use herd_chaos::process_cluster::{ClusterSetup, ProcessCluster};
use serde_json::Value;

/// Headless Chromium, each run with its own fresh profile directory.
struct Browser {
    bin: PathBuf,
}

impl Browser {
    /// Runs Chromium with `args` on a fresh profile to completion (at most
    /// [`common::browser::CHROMIUM_LIMIT`]); returns its stdout.
    fn run(&self, args: &[String]) -> String {
        let profile = tempfile::tempdir().expect("profile dir");
        run_chromium(&self.bin, profile.path(), &[], args)
    }

    /// The DOM of `url` once loaded, serialized.
    fn dom(&self, url: &str) -> String {
        let dom = self.run(&["--dump-dom".to_string(), url.to_string()]);
        assert!(dom.contains("</html>"), "no page from {url}: {dom}");
        dom
    }

    /// A 1280x900 screenshot of `url` at `path`.
    fn screenshot(&self, url: &str, path: &Path) {
        let _ = std::fs::remove_file(path);
        self.run(&[
            format!("--screenshot={}", path.display()),
            "--window-size=1280,900".to_string(),
            url.to_string(),
        ]);
        let png = std::fs::read(path).expect("screenshot written");
        assert!(
            png.len() > 5_000 && png.starts_with(b"\x89PNG"),
            "{} is no screenshot ({} bytes)",
            path.display(),
            png.len()
        );
    }
}

/// The table of `dom` whose `data-table` is `name`.
fn table<'a>(dom: &'a str, name: &str) -> &'a str {
    let start = dom
        .find(&format!("data-table=\"{name}\""))
        .unwrap_or_else(|| panic!("no table {name} in {dom}"));
    let end = start + dom[start..].find("</table>").expect("table end");
    &dom[start..end]
}

/// The row of `html` whose `data-row` is `key`.
fn row<'a>(html: &'a str, key: &str) -> &'a str {
    let start = html
        .find(&format!("data-row=\"{key}\""))
        .unwrap_or_else(|| panic!("no row {key} in {html}"));
    let end = start + html[start..].find("</tr>").expect("row end");
    &html[start..end]
}

/// How many rows `html` holds.
fn rows(html: &str) -> usize {
    html.matches("data-row=\"").count()
}

/// The fraction a fragment-rate text (`0.6250 (62.5 %)`) starts with.
fn fraction(text: &str) -> f64 {
    text.split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{text:?} is no fragment rate"))
}

/// `GET path` on `addr` over plain HTTP/1.1: status line and headers
/// (lower-cased), and the body.
fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the dashboard");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers");
    (head.to_lowercase(), body.to_string())
}

/// Allocations holding resources (pending or running) from `herd alloc list`.
fn holds(alloc: &Value) -> bool {
    matches!(alloc["status"].as_str(), Some("pending" | "running"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_what_the_api_says_in_chromium() {
    let Some(bin) = find_chromium() else {
        skip_or_fail("chromium is not installed (Debian package `chromium`): the dashboard test loads its pages in it");
        return;
    };
    let browser = Browser { bin };

    // Three members, each serving its dashboard on a port of its own.
    let addrs = ProcessCluster::pick_addrs(3).expect("addresses");
    let mut dashboards: BTreeMap<u64, String> = BTreeMap::new();
    let mut own_args = BTreeMap::new();
    for id in addrs.keys() {
        let http = format!("127.0.0.1:{}", free_loopback_port().expect("port"));
        own_args.insert(*id, vec!["--http-listen".to_string(), http.clone()]);
        dashboards.insert(*id, http);
    }
    let cluster = ProcessCluster::start_at(
        herd_bin(),
        &addrs,
        ClusterSetup {
            extra_args: vec!["--node-ttl-ms".into(), "3000".into()],
            own_args,
            ..ClusterSetup::default()
        },
    )
    .expect("start cluster");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let addr = cluster.addr_list();
    let mut agents = AgentSet::new(herd_bin(), &addr).expect("agents");
    agents
        .start("g1", &["--sim-gpus", "2", "--sim-gpu-model", "h100"])
        .expect("start g1");
    agents.start("c1", &[]).expect("start c1");
    must_have_ready_nodes(&addr, &["g1", "c1"]).await;

    // Work of three kinds, a power budget, and one live migration.
    let dir = tempfile::tempdir().expect("tempdir");
    let specs = [
        ("web", "name = \"web\"\ntype = \"service\"\ncount = 2\n[task]\ndriver = \"exec\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"sleep 3600\"]\n[task.resources]\ncpu = 100\nmemory = \"32MiB\"\n"),
        ("infer", "name = \"infer\"\ntype = \"service\"\n[task]\ndriver = \"exec\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"sleep 3600\"]\n[task.resources]\ncpu = 100\nmemory = \"32MiB\"\ngpus = 1\n"),
        ("once", "name = \"once\"\ntype = \"batch\"\n[task]\ndriver = \"exec\"\ncommand = \"/bin/true\"\n[task.resources]\ncpu = 100\nmemory = \"16MiB\"\n"),
        ("vm", "name = \"vm\"\ntype = \"service\"\n[task]\ndriver = \"simvm\"\n[task.config]\ndirty_rate = \"1MiB\"\nseed = 3\n[task.resources]\ncpu = 100\nmemory = \"16MiB\"\n"),
    ];
    for (name, text) in specs {
        let spec = write_spec(dir.path(), name, text);
        must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &spec]);
    }
    must_cli_ok(&[
        "--addr", &addr, "power", "budget", "set", "cluster", "--watts", "5000",
    ]);
    let (vm_alloc, vm_node) = until("the jobs running", Duration::from_secs(40), || {
        let vm = running_allocs(&addr, "vm");
        let [vm] = vm.as_slice() else { return None };
        let ready = running_allocs(&addr, "web").len() == 2
            && running_allocs(&addr, "infer").len() == 1
            && json(&addr, &["job", "list"])
                .as_array()?
                .iter()
                .any(|j| j["name"] == "once" && j["status"] == "complete");
        ready.then(|| {
            (
                vm["id"].as_str().unwrap_or_default().to_string(),
                vm["node"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
    .await;
    let target = if vm_node == "g1" { "c1" } else { "g1" };
    must_cli_ok(&[
        "--addr", &addr, "alloc", "migrate", &vm_alloc, "--to", target, "--wait",
    ]);
    until("the moved VM running", Duration::from_secs(20), || {
        let vm = running_allocs(&addr, "vm");
        (vm.len() == 1 && vm[0]["node"] == target).then_some(())
    })
    .await;

    let status = json(&addr, &["cluster", "status"]);
    let leader = status["leader"].as_u64().expect("leader id");
    let follower = *dashboards
        .keys()
        .find(|id| **id != leader)
        .expect("a follower");
    let lead_url = format!("http://{}", dashboards[&leader]);
    let follow_url = format!("http://{}", dashboards[&follower]);

    // The charts need two samples (one every 5 s).
    let frag_dom = until_or_none(Duration::from_secs(30), || {
        let dom = browser.dom(&format!("{lead_url}/fragmentation"));
        let samples: u64 = must_text(&dom, "samples").parse().ok()?;
        (samples >= 2).then_some(dom)
    })
    .await
    .expect("two samples of the fragment rate within 30 s");

    // Overview, on the leader: the API's cluster, members and counts.
    let status = json(&addr, &["cluster", "status"]);
    let nodes = json(&addr, &["node", "list"]);
    let nodes = nodes.as_array().expect("nodes");
    let jobs = json(&addr, &["job", "list"]);
    let jobs = jobs.as_array().expect("jobs");
    let allocs = json(&addr, &["alloc", "list"]);
    let allocs = allocs.as_array().expect("allocs");
    let plan = json(&addr, &["reschedule", "plan"]);
    let fr = plan["fr_before"].as_f64().expect("fr_before");
    let dom = browser.dom(&format!("{lead_url}/"));
    assert_eq!(
        must_text(&dom, "cluster-id"),
        status["cluster_id"].as_str().expect("id")
    );
    assert_eq!(must_text(&dom, "leader"), leader.to_string());
    assert_eq!(must_text(&dom, "term"), status["term"].to_string());
    assert_eq!(
        must_text(&dom, "health"),
        "healthy",
        "{}",
        must_text(&dom, "health-detail")
    );
    assert_eq!(must_text(&dom, "served-role"), "leader");
    let members = table(&dom, "members");
    let api_members = status["members"].as_array().expect("members");
    assert_eq!(rows(members), api_members.len());
    for m in api_members {
        let id = m["id"].as_u64().expect("member id");
        let r = row(members, &format!("member-{id}"));
        assert_eq!(must_text(r, "addr"), m["addr"].as_str().expect("addr"));
        let role = if id == leader { "leader" } else { "follower" };
        assert_eq!(must_text(r, "role"), role);
        assert_eq!(must_text(r, "contact"), "healthy");
    }
    assert_eq!(must_text(&dom, "nodes"), nodes.len().to_string());
    assert_eq!(must_text(&dom, "jobs"), jobs.len().to_string());
    assert_eq!(must_text(&dom, "allocs"), allocs.len().to_string());
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for a in allocs {
        *by_status
            .entry(a["status"].as_str().expect("status").to_string())
            .or_default() += 1;
    }
    let counts_at = dom.find("data-counts=\"allocs\"").expect("alloc counts");
    let counts = &dom[counts_at..];
    for (s, n) in &by_status {
        assert_eq!(
            must_text(row(counts, s), "count"),
            n.to_string(),
            "allocations {s}"
        );
    }
    assert!((fraction(&must_text(&dom, "fragment-rate")) - fr).abs() < 1e-4);
    assert!(dom.contains("<svg class=\"chart\""), "no fragment chart");

    // Nodes: held resources as the allocations add up, GPUs, power.
    let dom = browser.dom(&format!("{lead_url}/nodes"));
    let node_table = table(&dom, "nodes");
    assert_eq!(rows(node_table), nodes.len());
    for n in nodes {
        let name = n["name"].as_str().expect("name");
        let r = row(node_table, name);
        let cap = &n["capacity"];
        let on: Vec<&Value> = allocs
            .iter()
            .filter(|a| a["node"] == name && holds(a))
            .collect();
        let sum = |k: &str| -> u64 {
            on.iter()
                .map(|a| a["resources"][k].as_u64().unwrap_or(0))
                .sum()
        };
        assert_eq!(
            must_text(r, "status"),
            n["status"].as_str().expect("status")
        );
        assert_eq!(
            must_text(r, "cpu-text"),
            format!("{} / {} m", sum("cpu_millis"), cap["cpu_millis"])
        );
        assert_eq!(
            must_text(r, "memory-text"),
            format!(
                "{} / {}",
                display_memory(sum("memory_bytes")),
                display_memory(cap["memory_bytes"].as_u64().expect("memory"))
            )
        );
        assert_eq!(
            must_text(r, "gpus"),
            format!("{} / {}", sum("gpus"), cap["gpus"])
        );
        assert_eq!(must_text(r, "allocs"), on.len().to_string());
        assert_ne!(
            must_text(r, "heartbeat"),
            "-",
            "the leader holds {name}'s report"
        );
        if cap["gpus"].as_u64() > Some(0) {
            assert_eq!(
                must_text(r, "gpu-model"),
                cap["gpu_model"].as_str().expect("model")
            );
            // Draw, the GPUs' limits, simulated: "966 W of 1400 W limit, simulated".
            let power = must_text(r, "power");
            let draw: f64 = power
                .split(" W")
                .next()
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("no draw in {power:?}"));
            assert!(draw > 0.0, "{power}");
            assert!(
                power.ends_with("simulated") && power.contains("W limit"),
                "{power}"
            );
        }
    }
    let budgets = json(&addr, &["power", "budget", "list"]);
    let budget = &budgets.as_array().expect("budgets")[0];
    let r = row(table(&dom, "budgets"), "cluster");
    assert_eq!(
        must_text(r, "watts"),
        format!("{} W", budget["budget_watts"])
    );
    assert_eq!(must_text(r, "nodes"), budget["nodes"].to_string());
    let idle = budget["idle_watts"].as_f64().expect("idle watts");
    assert_eq!(must_text(r, "idle"), format!("{idle:.0} W"));
    assert!(must_text(r, "draw-text").ends_with(" W"));

    // Jobs and allocations.
    let dom = browser.dom(&format!("{lead_url}/jobs"));
    let job_table = table(&dom, "jobs");
    assert_eq!(rows(job_table), jobs.len());
    for j in jobs {
        let r = row(job_table, j["name"].as_str().expect("name"));
        for (k, v) in [
            ("status", &j["status"]),
            ("version", &j["version"]),
            ("count", &j["count"]),
            ("placed", &j["placed"]),
        ] {
            let want = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            assert_eq!(must_text(r, k), want, "job {} {k}", j["name"]);
        }
    }
    let dom = browser.dom(&format!("{lead_url}/allocs"));
    let alloc_table = table(&dom, "allocs");
    assert_eq!(rows(alloc_table), allocs.len());
    for a in allocs {
        let r = row(alloc_table, a["id"].as_str().expect("id"));
        for k in ["job", "node", "status", "desired"] {
            assert_eq!(
                must_text(r, k),
                a[k].as_str().expect(k),
                "alloc {} {k}",
                a["id"]
            );
        }
        assert_eq!(must_text(r, "generation"), a["generation"].to_string());
    }
    assert_eq!(
        must_text(row(alloc_table, &vm_alloc), "generation"),
        "2",
        "the switch-over raised the moved VM's generation"
    );
    let dom = browser.dom(&format!("{lead_url}/allocs?job=web"));
    assert_eq!(must_text(&dom, "job-filter"), "web");
    assert_eq!(rows(table(&dom, "allocs")), 2);

    // Migrations: the completed move, as `herd migration list` has it.
    let migrations = json(&addr, &["migration", "list"]);
    let migrations = migrations.as_array().expect("migrations");
    let dom = browser.dom(&format!("{lead_url}/migrations"));
    let ended = migrations
        .iter()
        .filter(|m| matches!(m["phase"].as_str(), Some("completed" | "aborted")))
        .count();
    assert_eq!(must_text(&dom, "ended-count"), ended.to_string());
    assert_eq!(
        must_text(&dom, "active-count"),
        (migrations.len() - ended).to_string()
    );
    let recent = table(&dom, "recent");
    for m in migrations {
        let r = row(recent, m["id"].as_str().expect("id"));
        for (k, api) in [
            ("alloc", "alloc"),
            ("source", "source"),
            ("target", "target"),
            ("phase", "phase"),
            ("kind", "kind"),
        ] {
            assert_eq!(
                must_text(r, k),
                m[api].as_str().expect(api),
                "migration {k}"
            );
        }
    }
    assert!(migrations
        .iter()
        .any(|m| m["alloc"] == vm_alloc.as_str() && m["phase"] == "completed"));

    // Fragmentation: the rate now, as the planner computes it, and a chart.
    let dom = browser.dom(&format!("{lead_url}/fragmentation"));
    assert!((fraction(&must_text(&dom, "fragment-rate")) - fr).abs() < 1e-4);
    assert_eq!(
        must_text(&dom, "allocations"),
        plan["allocations"].to_string()
    );
    assert_eq!(
        must_text(&dom, "active-nodes"),
        format!("{} of {}", plan["active_nodes"], plan["nodes"])
    );
    let points: usize = frag_dom
        .split("data-points=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("a chart with points");
    assert!(points >= 2, "{points} points");

    // A follower serves the same state, saying it may be stale.
    let dom = browser.dom(&format!("{follow_url}/"));
    assert_eq!(must_text(&dom, "served-role"), "follower");
    assert_eq!(must_text(&dom, "served-by"), follower.to_string());
    assert!(must_text(&dom, "stale-note").contains("not the leader"));
    let applied: u64 = must_text(&dom, "applied-index").parse().expect("index");
    assert!(applied > 0);
    assert_eq!(
        must_text(&dom, "cluster-id"),
        status["cluster_id"].as_str().expect("id")
    );
    let dom = browser.dom(&format!("{follow_url}/nodes"));
    assert!(
        text(&dom, "no-reports").is_some(),
        "a follower has no heartbeat reports"
    );
    assert_eq!(rows(table(&dom, "nodes")), nodes.len());

    // Plain HTTP: no caching, nothing loadable from elsewhere, 404s.
    let (head, body) = http_get(&dashboards[&leader], "/jobs");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(head.contains("cache-control: no-store"), "{head}");
    for external in ["src=\"http", "href=\"http", "@import", "url("] {
        assert!(!body.contains(external), "{external} in a page");
    }
    let (head, body) = http_get(&dashboards[&leader], "/nope");
    assert!(head.starts_with("http/1.1 404"), "{head}");
    assert!(body.contains("no page at <code>/nope</code>"), "{body}");

    // A screenshot of every page, kept with the test's output.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    for (page, file) in [
        ("/", "overview"),
        ("/nodes", "nodes"),
        ("/jobs", "jobs"),
        ("/allocs", "allocs"),
        ("/migrations", "migrations"),
        ("/fragmentation", "fragmentation"),
    ] {
        browser.screenshot(
            &format!("{lead_url}{page}"),
            &shots.join(format!("{file}.png")),
        );
    }
    browser.screenshot(
        &format!("{follow_url}/"),
        &shots.join("overview-follower.png"),
    );
    println!("dashboard screenshots in {}", shots.display());
}
