//! The dashboard once ACLs are on (issue 24, docs/dashboard.md "Access"):
//! a one-member cluster serving its dashboard, open until `herd acl
//! bootstrap`, then closed to anything but a token of role read or more,
//! by `Authorization: Bearer` or by the cookie `POST /login` sets; a node
//! token, a wrong token and a revoked token's cookie are refused. Then the
//! login form in headless Chromium (when installed): a page asked without
//! a token lands on the form, a submitted token opens the page, a revoked
//! one sends the browser back to the form with the reason; a screenshot of
//! the form is kept under `target/tmp/dashboard-auth/`.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::browser::{find_chromium, must_text, run_chromium, text};
use common::tokens::{cli_as as cli, json_as};
use common::{must_start_one_member, skip_or_fail, until, write_spec};
use herd_chaos::ports::free_loopback_port;

/// The cookie the dashboard's login sets.
const COOKIE: &str = "herd_dashboard_token";

/// A token's bearer text and accessor, made by `herd acl token create`.
fn create_token(addr: &str, operator: &str, name: &str, role: &str) -> (String, String) {
    let made = common::tokens::create_token(addr, operator, name, role, None);
    (made.secret, made.accessor)
}

/// One HTTP/1.1 exchange's answer.
struct Reply {
    status: u16,
    /// Header lines as sent (names and values unchanged).
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    /// The first header named `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `METHOD path` on `addr` with `headers` and an optional form `body`.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect to the dashboard");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    http(addr, "GET", path, headers, "")
}

/// The figures a page shows that the API also gives: what must not change
/// when the dashboard closes.
fn overview_figures(html: &str) -> Vec<String> {
    ["cluster-id", "leader", "term", "nodes", "jobs", "allocs"]
        .iter()
        .map(|k| must_text(html, k))
        .collect()
}

/// `application/x-www-form-urlencoded` for one value.
fn form_value(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The cookie a login reply sets, as `NAME=VALUE` to send back.
fn cookie_of(reply: &Reply) -> String {
    let set = reply.header("set-cookie").expect("a cookie is set");
    set.split(';').next().expect("name=value").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrapped_dashboard_needs_a_read_token() {
    let dash = format!("127.0.0.1:{}", free_loopback_port().expect("port"));
    let cluster = must_start_one_member(&["--http-listen", &dash]).await;
    let addr = cluster.addr_list();
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = write_spec(
        dir.path(),
        "web",
        "name = \"web\"\ntype = \"service\"\n[task]\ndriver = \"exec\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"sleep 3600\"]\n[task.resources]\ncpu = 100\nmemory = \"32MiB\"\n",
    );
    let out = cli(&addr, None, &["job", "run", "--detach", &spec]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Before bootstrap: open, as the gRPC API is.
    let before = until("the dashboard serving", Duration::from_secs(20), || {
        TcpStream::connect(&dash).ok()?;
        let reply = get(&dash, "/", &[]);
        (reply.status == 200).then_some(reply.body)
    })
    .await;
    let figures = overview_figures(&before);
    assert_eq!(figures[4], "1", "one job: {figures:?}");
    assert!(text(&before, "viewer").is_none(), "no viewer while open");
    let login = get(&dash, "/login", &[]);
    assert_eq!(login.status, 200);
    assert!(login.body.contains("data-k=\"open\""), "{}", login.body);

    // Bootstrap, and tokens of each kind.
    let first = json_as(&addr, "", &["acl", "bootstrap"]);
    let operator = first["secret"].as_str().expect("secret").to_string();
    let (reader, reader_acc) = create_token(&addr, &operator, "viewer", "read");
    let (node, _) = create_token(&addr, &operator, "agent", "node");
    let html = [("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")];

    // No token: 401 for a script, the login page for a browser; every
    // path, unknown ones included.
    for path in [
        "/",
        "/nodes",
        "/jobs",
        "/allocs?job=web",
        "/migrations",
        "/fragmentation",
        "/nope",
    ] {
        let reply = get(&dash, path, &[]);
        assert_eq!(reply.status, 401, "{path}: {}", reply.body);
        assert!(reply.body.contains("/login"), "{path}: {}", reply.body);
        assert!(
            reply
                .header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{path}"
        );
        assert!(!reply.body.contains("data-k=\"cluster-id\""));
        let reply = get(&dash, path, &html);
        assert_eq!(reply.status, 303, "{path}");
        let location = reply.header("location").expect("location");
        assert_eq!(location, format!("/login?next={}", form_value(path)));
    }
    // A node token, a garbage one, a valid token sent the wrong way.
    let node_auth = format!("Bearer {node}");
    let reply = get(&dash, "/", &[("Authorization", &node_auth)]);
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(reply.body.contains("role node"), "{}", reply.body);
    for bad in [
        "Bearer nope.nope",
        "Basic abc",
        &format!("Bearer {reader}x"),
    ] {
        let reply = get(&dash, "/jobs", &[("Authorization", bad)]);
        assert_eq!(reply.status, 401, "{bad}: {}", reply.body);
    }

    // A read token by header: the same figures as before, and as the API.
    let read_auth = format!("Bearer {reader}");
    let reply = get(&dash, "/", &[("Authorization", &read_auth)]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut after = overview_figures(&reply.body);
    after[2] = figures[2].clone(); // the term may not move, but need not match
    assert_eq!(after, figures);
    assert_eq!(must_text(&reply.body, "viewer-role"), "read");
    assert!(
        !reply.body.contains("data-k=\"logout\""),
        "no cookie, no logout"
    );
    let status = json_as(&addr, &reader, &["cluster", "status"]);
    assert_eq!(figures[0], status["cluster_id"].as_str().expect("id"));
    let jobs = json_as(&addr, &reader, &["job", "list"]);
    assert_eq!(figures[4], jobs.as_array().expect("jobs").len().to_string());
    let reply = get(
        &dash,
        "/jobs",
        &[("Authorization", &format!("Bearer {operator}"))],
    );
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("data-row=\"web\""), "{}", reply.body);

    // The login form: a bad token gets the form again with the reason and
    // no cookie; a node token likewise; a read token the cookie and the
    // page it asked for.
    let form = get(&dash, "/login?next=%2Fjobs", &html);
    assert_eq!(form.status, 200);
    assert!(form.body.contains("name=\"token\"") && form.body.contains("value=\"/jobs\""));
    assert!(
        !form.body.contains("data-k=\"served-by\""),
        "the form shows no cluster"
    );
    for (token, status, why) in [
        ("nope.nope", 401, "not valid"),
        (node.as_str(), 403, "role node"),
        ("", 401, "no token"),
    ] {
        let body = format!("next=%2Fjobs&token={}", form_value(token));
        let reply = http(&dash, "POST", "/login", &html, &body);
        assert_eq!(reply.status, status, "{token}: {}", reply.body);
        assert!(reply.header("set-cookie").is_none(), "{token}");
        assert!(
            must_text(&reply.body, "error").contains(why),
            "{}",
            reply.body
        );
        assert!(reply.body.contains("name=\"token\""));
    }
    let body = format!(
        "token={}&next={}",
        form_value(&reader),
        form_value("/allocs?job=web")
    );
    let reply = http(&dash, "POST", "/login", &html, &body);
    assert_eq!(reply.status, 303, "{}", reply.body);
    assert_eq!(reply.header("location"), Some("/allocs?job=web"));
    let set = reply.header("set-cookie").expect("cookie").to_string();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(part), "{part} in {set}");
    }
    let cookie = cookie_of(&reply);
    assert_eq!(cookie, format!("{COOKIE}={reader}"));
    let with_cookie = [("Cookie", cookie.as_str()), html[0]];
    let reply = get(&dash, "/allocs?job=web", &with_cookie);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(must_text(&reply.body, "job-filter"), "web");
    assert!(reply.body.contains("data-k=\"logout\""), "a logout button");
    let reply = get(&dash, "/", &with_cookie);
    assert_eq!(overview_figures(&reply.body)[4], figures[4]);
    // An open redirect is no redirect.
    let body = format!(
        "token={}&next={}",
        form_value(&reader),
        form_value("//evil.example/")
    );
    let reply = http(&dash, "POST", "/login", &html, &body);
    assert_eq!(reply.header("location"), Some("/"));

    // Revoked: the cookie stops working at once; the form says why and
    // clears it.
    json_as(&addr, &operator, &["acl", "token", "revoke", &reader_acc]);
    let reply = get(&dash, "/jobs", &[("Cookie", cookie.as_str())]);
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert!(reply.body.contains("revoked"), "{}", reply.body);
    let reply = get(&dash, "/jobs", &with_cookie);
    assert_eq!(reply.status, 303);
    let reply = get(&dash, "/login?next=%2Fjobs", &with_cookie);
    assert_eq!(reply.status, 200);
    assert!(
        must_text(&reply.body, "error").contains("revoked"),
        "{}",
        reply.body
    );
    assert!(reply
        .header("set-cookie")
        .is_some_and(|c| c.contains("Max-Age=0")));
    let reply = http(&dash, "POST", "/logout", &with_cookie, "");
    assert_eq!(reply.status, 303);
    assert_eq!(reply.header("location"), Some("/login"));
    assert!(reply
        .header("set-cookie")
        .is_some_and(|c| c.starts_with(&format!("{COOKIE}=;"))));

    // The same in a browser, when there is one.
    let (another, _) = create_token(&addr, &operator, "browser", "read");
    let (doomed, doomed_acc) = create_token(&addr, &operator, "doomed", "read");
    match find_chromium() {
        Some(bin) => in_chromium(&bin, &dash, &another, &doomed, || {
            json_as(&addr, &operator, &["acl", "token", "revoke", &doomed_acc]);
        }),
        None => skip_or_fail(
            "chromium is not installed (Debian package `chromium`): the login form is not driven in a browser",
        ),
    }
}

// ---------------------------------------------------------------------------
// Headless Chromium, one profile kept across runs (so its cookies are).

/// Runs headless Chromium on `profile` with `args`, at most 90 s; stdout.
fn chromium(bin: &Path, profile: &Path, args: &[String]) -> String {
    // Wait for the form's submission and the redirect after it; under the
    // pages' 5 s auto-refresh, or the dump may catch a reload half done.
    run_chromium(bin, profile, &["--virtual-time-budget=2000"], args)
}

/// Serves, on another loopback port (the same site as the dashboard, as
/// browsers count sites: ports aside), one page whose script fills in and
/// submits a form with the login form's fields, as a person would; for as
/// long as the test runs.
fn serve_submitter(dash: &str, token: &str, next: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let at = listener.local_addr().expect("addr").to_string();
    let page = format!(
        "<!doctype html><html><body><form method=\"post\" action=\"http://{dash}/login\">\
         <input name=\"next\" value=\"{next}\"><input type=\"password\" name=\"token\">\
         </form><script>var f=document.forms[0];f.token.value='{token}';f.submit();</script></body></html>"
    );
    // Each connection in a thread of its own: Chromium opens spare ones
    // (preconnects) that may never send a request.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let page = page.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
            });
        }
    });
    at
}

fn in_chromium(bin: &Path, dash: &str, token: &str, doomed: &str, revoke: impl FnOnce()) {
    let profile = tempfile::tempdir().expect("profile");
    let dom = |url: String| chromium(bin, profile.path(), &["--dump-dom".to_string(), url]);

    // No cookie: a page lands on the form, which says where it returns.
    let page = dom(format!("http://{dash}/jobs"));
    assert!(page.contains("name=\"token\""), "no login form: {page}");
    assert!(page.contains("value=\"/jobs\""), "{page}");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-auth");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let shot = shots.join("login.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        bin,
        profile.path(),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1000,600".to_string(),
            format!("http://{dash}/jobs"),
        ],
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 3_000,
        "no screenshot"
    );

    // The form submitted: the cookie is set and the page asked for loads,
    // then later pages load with it.
    let submitter = serve_submitter(dash, token, "/jobs");
    let page = dom(format!("http://{submitter}/"));
    assert!(
        page.contains("data-row=\"web\""),
        "not the jobs page: {page}"
    );
    assert!(page.contains("data-k=\"logout\""), "{page}");
    let page = dom(format!("http://{dash}/"));
    assert!(
        page.contains("data-k=\"cluster-id\""),
        "the cookie did not stay: {page}"
    );
    let signed_in = shots.join("signed-in.png");
    let _ = std::fs::remove_file(&signed_in);
    chromium(
        bin,
        profile.path(),
        &[
            format!("--screenshot={}", signed_in.display()),
            "--window-size=1280,500".to_string(),
            format!("http://{dash}/jobs"),
        ],
    );
    assert!(std::fs::read(&signed_in)
        .expect("screenshot")
        .starts_with(b"\x89PNG"));

    // A token revoked while the browser holds it: back to the form, which
    // says why.
    let submitter = serve_submitter(dash, doomed, "/");
    let page = dom(format!("http://{submitter}/"));
    assert!(page.contains("data-k=\"cluster-id\""), "{page}");
    revoke();
    let page = dom(format!("http://{dash}/nodes"));
    assert!(
        page.contains("name=\"token\""),
        "not sent to the form: {page}"
    );
    assert!(page.contains("revoked"), "{page}");
    println!("dashboard login screenshots in {}", shots.display());
}
