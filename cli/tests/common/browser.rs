//! Headless Chromium for the dashboard's tests, and reading the pages it
//! gives back: one way to find it, run it (bounded in time) and pick a
//! figure out of a page's HTML, so that every dashboard test reads pages
//! alike.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest one Chromium run may take.
pub const CHROMIUM_LIMIT: Duration = Duration::from_secs(90);

/// Chromium on PATH, under one of the names distributions give it.
pub fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Runs headless Chromium `bin` on the profile directory `profile` with
/// `flags` (after the fixed ones) and then `args`, to completion (at most
/// [`CHROMIUM_LIMIT`]); returns its stdout. It must succeed.
pub fn run_chromium(bin: &Path, profile: &Path, flags: &[&str], args: &[String]) -> String {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            // A container has no user namespaces for the sandbox, no
            // GPU, and a small /dev/shm.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if started.elapsed() > CHROMIUM_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            let err = err.join().unwrap_or_default();
            panic!("chromium {args:?} ran past {CHROMIUM_LIMIT:?}; stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    assert!(
        status.success(),
        "chromium {args:?} failed ({status}):\n{err}"
    );
    out
}

/// `&amp;`, `&lt;`, `&gt;`, `&quot;`, `&#39;` and `&nbsp;` decoded.
pub fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
}

/// The text of `html` with its tags removed (each as a space) and
/// whitespace collapsed.
pub fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    unescape(&out)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The text content of the first element of `html` whose `data-k` is `key`
/// (the dashboard marks every figure a test reads so).
pub fn text(html: &str, key: &str) -> Option<String> {
    let at = html.find(&format!("data-k=\"{key}\""))?;
    let open = html[..at].rfind('<')?;
    let tag: String = html[open + 1..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let inner_start = at + html[at..].find('>')? + 1;
    let inner_end = inner_start + html[inner_start..].find(&format!("</{tag}>"))?;
    Some(strip_tags(&html[inner_start..inner_end]))
}

/// [`text`], which must exist.
pub fn must_text(html: &str, key: &str) -> String {
    text(html, key).unwrap_or_else(|| panic!("no data-k={key:?} in {html}"))
}
