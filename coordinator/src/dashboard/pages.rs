//! The pages as HTML: the views of [`super::view`] rendered into one
//! layout (navigation, an auto-refresh switch, a footer saying which member
//! served the page and how fresh it is). Everything from the state goes
//! through [`Html::text`]; CSS and the few lines of script are inline, so
//! the pages load nothing from anywhere.
//!
//! Every table row carries `data-row` (its name or id) and every figure
//! cell `data-k` (what it holds), so that a test or a script can find a
//! figure without depending on the layout.

use std::collections::BTreeMap;

use herd_api::resources::display_memory;

use super::auth::Viewer;
use super::history::{Sample, SAMPLE_EVERY};
use super::html::Html;
use super::svg::{self, Axis, Point};
use super::view::{
    AllocsPage, Fragmentation, JobRow, MigrationRow, MigrationsPage, NodeReport, NodeRow,
    NodesPage, Overview,
};

/// Who served a page, from what, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The member serving it.
    pub member_id: u64,
    /// Its role (`leader`, `follower`...).
    pub role: String,
    /// The log index of the state the page was built from.
    pub applied_index: u64,
    /// The leader it knows, id and address.
    pub leader: Option<(u64, String)>,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Whose token the page was served to; None while the dashboard is
    /// open (ACLs not bootstrapped).
    pub viewer: Option<Viewer>,
}

/// The pages, in navigation order: path, title.
pub const PAGES: [(&str, &str); 6] = [
    ("/", "Overview"),
    ("/nodes", "Nodes"),
    ("/jobs", "Jobs"),
    ("/allocs", "Allocations"),
    ("/migrations", "Migrations"),
    ("/fragmentation", "Fragmentation"),
];

/// The pages' style sheet (the login page's too).
pub(super) const STYLE: &str = "<style>
:root{color-scheme:light;--muted:#6b7280;--line:#e5e7eb}
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#111827;background:#f9fafb}
header{display:flex;gap:18px;align-items:center;padding:10px 20px;background:#111827;color:#f9fafb;flex-wrap:wrap}
header a{color:#d1d5db;text-decoration:none}header a[aria-current]{color:#fff;font-weight:600;border-bottom:2px solid #60a5fa}
header .brand{font-weight:700;font-size:16px;color:#fff}header label{margin-left:auto;color:#d1d5db;font-size:13px}
header .viewer{color:#d1d5db;font-size:13px}header .viewer code{color:#fff}header form.logout{margin:0}
main{padding:16px 20px;max-width:1400px}h1{font-size:20px;margin:4px 0 14px}h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;background:#fff;border:1px solid var(--line);margin-bottom:8px}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:middle;white-space:nowrap}
th{background:#f3f4f6;font-weight:600;font-size:12px;text-transform:uppercase;letter-spacing:.03em;color:#374151}
td.wrap{white-space:normal;max-width:420px}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:4px 16px;background:#fff;border:1px solid var(--line);padding:10px 14px;max-width:900px}
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{background:#fff;border:1px solid var(--line);padding:8px 12px;min-width:150px}
.muted{color:var(--muted)}.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.healthy,.ready,.running,.complete,.completed,.leader{background:#dcfce7;color:#166534}
.degraded,.draining,.pending,.planned,.preparing,.transferring,.switching,.candidate{background:#fef3c7;color:#92400e}
.down,.failed,.aborted,.lost,.unreachable{background:#fee2e2;color:#991b1b}
.stopped,.follower,.learner,.unknown,.shutdown{background:#e5e7eb;color:#374151}
footer{margin:18px 20px 30px;color:var(--muted);font-size:13px;max-width:1000px}
main{overflow-x:auto}.sub{font-size:12px;color:var(--muted)}
svg.bar{display:block;margin-top:3px}svg.chart{background:#fff;border:1px solid var(--line);margin:0 12px 8px 0}
</style>";

const SCRIPT: &str = "<script>(function(){var b=document.getElementById('auto');if(!b)return;\
try{b.checked=localStorage.getItem('herd-dashboard-refresh')!=='off';}catch(e){}\
b.addEventListener('change',function(){try{localStorage.setItem('herd-dashboard-refresh',b.checked?'on':'off');}catch(e){}});\
setInterval(function(){if(b.checked&&!document.hidden)location.reload();},5000);})();</script>";

/// A page: the layout around `body`, with `title` and the navigation
/// marking `path` as the current page.
pub fn layout(path: &str, title: &str, body: &Html, served: &Served) -> Html {
    let mut h = Html::new();
    h.raw("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>herd · ")
        .text(title)
        .raw("</title>")
        .raw(STYLE)
        .raw("</head><body><header><span class=\"brand\">herd</span><nav>");
    for (i, &(page, name)) in PAGES.iter().enumerate() {
        if i > 0 {
            h.raw(" &nbsp; ");
        }
        h.raw("<a href=\"").raw(page).raw("\"");
        if page == path {
            h.raw(" aria-current=\"page\"");
        }
        h.raw(">").raw(name).raw("</a>");
    }
    h.raw("</nav><label><input type=\"checkbox\" id=\"auto\" checked> auto-refresh (5 s)</label>");
    if let Some(viewer) = &served.viewer {
        h.append(&viewer_badge(viewer));
    }
    h.raw("</header><main><h1>")
        .text(title)
        .raw("</h1>")
        .append(body)
        .raw("</main>")
        .append(&footer(served))
        .raw(SCRIPT)
        .raw("</body></html>");
    h
}

/// Who is looking (the token's accessor and role) and, for a browser that
/// logged in, the button that logs it out.
pub fn viewer_badge(viewer: &Viewer) -> Html {
    let mut h = Html::new();
    h.raw("<span class=\"viewer\" data-k=\"viewer\">token <code>")
        .text(&viewer.accessor)
        .raw("</code> (<span data-k=\"viewer-role\">")
        .text(viewer.role)
        .raw("</span>)</span>");
    if viewer.by_cookie {
        h.raw("<form method=\"post\" action=\"/logout\" class=\"logout\"><button type=\"submit\" data-k=\"logout\">Log out</button></form>");
    }
    h
}

/// The footer: which member served the page, from which applied index,
/// and what that means for freshness.
pub fn footer(served: &Served) -> Html {
    let mut h = Html::new();
    h.raw("<footer data-k=\"footer\">Served by member <span data-k=\"served-by\">")
        .text(served.member_id)
        .raw("</span> (<span data-k=\"served-role\">")
        .text(&served.role)
        .raw("</span>) from its applied state at log index <span data-k=\"applied-index\">")
        .text(served.applied_index)
        .raw("</span>, at ")
        .text(time_of_day(served.at_ms))
        .raw(" UTC. ");
    if served.role == "leader" {
        h.raw("Read without a quorum round trip, as <code>--stale</code> reads are: a write acknowledged a moment ago may not show yet.");
    } else {
        h.raw("<strong data-k=\"stale-note\">This member is not the leader: what it shows may trail the cluster by the entries it has not applied yet.</strong> ");
        match &served.leader {
            Some((id, addr)) => {
                h.raw("The leader is member ")
                    .text(id)
                    .raw(" (")
                    .text(addr)
                    .raw("); its dashboard is the freshest, and only it shows the nodes' heartbeat reports (load, power).");
            }
            None => {
                h.raw("It knows no leader right now.");
            }
        }
    }
    h.raw("</footer>");
    h
}

/// `HH:MM:SS` of a Unix time in ms (UTC).
pub fn time_of_day(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
}

/// A span of ms as a person reads it.
pub fn span(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=119_999 => format!("{:.1} s", ms as f64 / 1000.0),
        120_000..=7_199_999 => format!("{} min", ms / 60_000),
        _ => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

/// A fragment rate as the pages write it: the fraction to four places (as
/// `herd reschedule plan` prints it) and the percentage.
pub fn fragment_rate_text(fr: f64) -> String {
    format!("{fr:.4} ({:.1} %)", fr * 100.0)
}

fn counts_card(
    h: &mut Html,
    title: &'static str,
    key: &'static str,
    counts: &BTreeMap<String, usize>,
) {
    let total: usize = counts.values().sum();
    h.raw("<div class=\"card\"><div class=\"muted\">")
        .raw(title)
        .raw("</div><div><strong data-k=\"")
        .raw(key)
        .raw("\">")
        .text(total)
        .raw("</strong></div><table data-counts=\"")
        .raw(key)
        .raw("\">");
    for (status, n) in counts {
        h.open_with("tr", "data-row", status)
            .cell("status", status)
            .cell("count", n)
            .raw("</tr>");
    }
    h.raw("</table></div>");
}

/// The overview page's body.
pub fn overview(o: &Overview, history: &[Sample]) -> Html {
    let mut h = Html::new();
    h.raw("<dl class=\"facts\"><dt>Cluster</dt><dd data-k=\"cluster-id\">")
        .text(if o.cluster_id.is_empty() {
            "(not set yet)"
        } else {
            o.cluster_id.as_str()
        })
        .raw("</dd><dt>Health</dt><dd><span class=\"badge ")
        .raw(o.health.level)
        .raw("\" data-k=\"health\">")
        .raw(o.health.level)
        .raw("</span> <span data-k=\"health-detail\">")
        .text(&o.health.detail)
        .raw("</span></dd><dt>Leader</dt><dd data-k=\"leader\">");
    match o.leader {
        Some(id) => h.text(id),
        None => h.raw("none known"),
    };
    h.raw("</dd><dt>Term</dt><dd data-k=\"term\">")
        .text(o.term)
        .raw("</dd><dt>Last log index</dt><dd data-k=\"last-log-index\">")
        .text(opt(o.last_log_index))
        .raw("</dd><dt>Snapshot index</dt><dd data-k=\"snapshot-index\">")
        .text(opt(o.snapshot_index))
        .raw("</dd><dt>Fragment rate</dt><dd data-k=\"fragment-rate\">")
        .text(fragment_rate_text(o.fragment_rate))
        .raw("</dd></dl>");

    h.raw("<h2>Members</h2><table data-table=\"members\"><tr><th>Id</th><th>Address</th><th>Role</th><th>Contact</th><th>Matched index</th><th></th></tr>");
    for m in &o.members {
        h.open_with("tr", "data-row", format_args!("member-{}", m.id))
            .cell("id", m.id)
            .cell("addr", &m.addr)
            .raw("<td data-k=\"role\"><span class=\"badge ")
            .raw(m.role)
            .raw("\">")
            .raw(m.role)
            .raw("</span></td><td data-k=\"contact\"><span class=\"badge ")
            .raw(m.contact.as_str())
            .raw("\">")
            .raw(m.contact.as_str())
            .raw("</span></td>")
            .cell("matched", opt(m.matched_index))
            .raw("<td class=\"muted\">")
            .raw(if m.this_member {
                "serving this page"
            } else {
                ""
            })
            .raw("</td></tr>");
    }
    h.raw("</table>");

    h.raw("<h2>Counts</h2><div class=\"cards\">");
    counts_card(&mut h, "Nodes", "nodes", &o.nodes);
    counts_card(&mut h, "Jobs", "jobs", &o.jobs);
    counts_card(&mut h, "Allocations", "allocs", &o.allocs);
    h.raw("<div class=\"card\"><div class=\"muted\">Migrations</div><div><strong data-k=\"migrations-active\">")
        .text(o.migrations_active)
        .raw("</strong> in flight</div><div><span data-k=\"migrations-ended\">")
        .text(o.migrations_ended)
        .raw("</span> ended (kept)</div></div><div class=\"card\"><div class=\"muted\">Power budgets</div><div><strong data-k=\"power-budgets\">")
        .text(o.power_budgets)
        .raw("</strong></div></div></div>");

    h.raw("<h2>Fragment rate over time</h2>")
        .append(&fragment_chart(history));
    h
}

fn fragment_chart(history: &[Sample]) -> Html {
    let points: Vec<Point> = history
        .iter()
        .map(|s| Point {
            at_ms: s.at_ms,
            value: s.fragment_rate,
        })
        .collect();
    svg::line_chart(
        &points,
        Axis {
            max: 1.0,
            percent: true,
        },
        "fragment rate over time",
    )
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// A cell with `text` (keyed `{key}-text`) over a bar of `used / total`.
fn used_cell(h: &mut Html, key: &'static str, text: String, used: u64, total: u64, label: &str) {
    h.raw("<td data-k=\"")
        .raw(key)
        .raw("\"><span data-k=\"")
        .raw(key)
        .raw("-text\">")
        .text(text)
        .raw("</span>")
        .append(&svg::bar(used as f64, total as f64, label))
        .raw("</td>");
}

/// A node's GPU power: draw, the sum of the limits in force, capped
/// GPUs, whether simulated.
fn power_cell(h: &mut Html, r: &NodeReport) {
    h.raw("<td data-k=\"power\">");
    if r.power_draw_watts <= 0.0 && r.power_limit_watts.is_none() {
        h.raw("-</td>");
        return;
    }
    h.text(format_args!("{:.0} W", r.power_draw_watts));
    let mut notes = Vec::new();
    if let Some(limit) = r.power_limit_watts {
        notes.push(format!("of {limit} W limit"));
    }
    if r.capped_gpus > 0 {
        notes.push(format!("{} capped", r.capped_gpus));
    }
    if r.gpus_simulated {
        notes.push("simulated".to_string());
    }
    if !notes.is_empty() {
        h.raw("<div class=\"sub\">")
            .text(notes.join(", "))
            .raw("</div>");
    }
    h.raw("</td>");
}

fn node_row(h: &mut Html, n: &NodeRow, now_ms: u64) {
    h.open_with("tr", "data-row", &n.name)
        .raw("<td><span data-k=\"name\">")
        .text(&n.name)
        .raw("</span><div class=\"sub\" data-k=\"addr\">")
        .text(&n.addr)
        .raw("</div></td><td><span data-k=\"status\" class=\"badge ")
        .raw(n.status)
        .raw("\">")
        .raw(n.status)
        .raw("</span><div class=\"sub\" data-k=\"eligible\">")
        .raw(if n.eligible {
            "eligible"
        } else {
            "not eligible"
        })
        .raw("</div>");
    if let Some(at) = n.drain_deadline_ms {
        h.raw("<div class=\"sub\" data-k=\"drain\">stops in ")
            .text(span(at.saturating_sub(now_ms)))
            .raw("</div>");
    }
    h.raw("</td>");
    used_cell(
        h,
        "cpu",
        format!("{} / {} m", n.cpu.used, n.cpu.total),
        n.cpu.used,
        n.cpu.total,
        &format!(
            "{}: CPU {} of {} millicores held",
            n.name, n.cpu.used, n.cpu.total
        ),
    );
    let (used, total) = (
        display_memory(n.memory.used),
        display_memory(n.memory.total),
    );
    used_cell(
        h,
        "memory",
        format!("{used} / {total}"),
        n.memory.used,
        n.memory.total,
        &format!("{}: memory {used} of {total} held", n.name),
    );
    h.raw("<td><span data-k=\"gpus\">")
        .text(format_args!("{} / {}", n.gpus.used, n.gpus.total))
        .raw("</span><div class=\"sub\" data-k=\"gpu-model\">")
        .text(n.gpu_model.as_deref().unwrap_or("-"))
        .raw("</div></td>")
        .cell("allocs", n.allocs);
    match &n.report {
        Some(r) => {
            h.raw("<td><span data-k=\"busy\">")
                .text(format_args!("{:.0} %", r.cpu_busy * 100.0))
                .raw("</span> busy<div class=\"sub\"><span data-k=\"mem-free\">")
                .text(display_memory(r.memory_available_bytes))
                .raw("</span> memory free</div></td>");
            power_cell(h, r);
            h.cell("heartbeat", format_args!("{} ago", span(r.age_ms)));
        }
        None => {
            h.raw("<td data-k=\"busy\">-</td><td data-k=\"power\">-</td><td data-k=\"heartbeat\">-</td>");
        }
    }
    h.raw("<td class=\"wrap\"><div data-k=\"labels\">");
    for (i, (k, v)) in n.labels.iter().enumerate() {
        if i > 0 {
            h.raw(", ");
        }
        h.text(k).raw("=").text(v);
    }
    h.raw("</div><div class=\"sub\" data-k=\"drivers\">")
        .text(n.drivers.join(", "))
        .raw("</div></td></tr>");
}

/// The nodes page's body; `reports_here` says whether this member holds
/// the nodes' heartbeat reports (only the leader does).
pub fn nodes(page: &NodesPage, reports_here: bool, now_ms: u64) -> Html {
    let mut h = Html::new();
    if !reports_here {
        h.raw("<p class=\"muted\" data-k=\"no-reports\">Load, free memory, power and heartbeat ages come from the nodes' heartbeats, which only the leader receives: open the leader's dashboard to see them.</p>");
    }
    if page.nodes.is_empty() {
        h.raw("<p class=\"muted\">No node has registered.</p>");
    } else {
        h.raw("<table data-table=\"nodes\"><tr><th>Node</th><th>Status</th><th>CPU held</th><th>Memory held</th><th>GPUs held</th><th>Allocs</th><th>Host</th><th>GPU power</th><th>Heartbeat</th><th>Labels, drivers</th></tr>");
        for n in &page.nodes {
            node_row(&mut h, n, now_ms);
        }
        h.raw("</table><p class=\"muted\">Held: what allocations (pending or running) and migrations in flight reserve, as the scheduler counts it.</p>");
    }
    h.raw("<h2>Power budgets</h2>");
    if page.budgets.is_empty() {
        h.raw(
            "<p class=\"muted\">No power budget is set (<code>herd power budget set</code>).</p>",
        );
        return h;
    }
    h.raw("<table data-table=\"budgets\"><tr><th>Group</th><th>Budget</th><th>Caps from</th><th>Hard cap at</th><th>Nodes</th><th>Idle</th><th>Draw</th><th>Headroom</th><th>Capped GPUs</th></tr>");
    for b in &page.budgets {
        h.open_with("tr", "data-row", &b.group)
            .cell("group", &b.group)
            .cell("watts", format_args!("{} W", b.watts))
            .cell(
                "cap",
                format_args!("{:.1} %", f64::from(b.cap_permille) / 10.0),
            )
            .cell(
                "hard",
                format_args!("{:.1} %", f64::from(b.hard_permille) / 10.0),
            )
            .cell("nodes", b.nodes)
            .cell("idle", format_args!("{:.0} W", b.idle_watts));
        match &b.status {
            Some(s) => {
                h.raw("<td data-k=\"draw\"><span data-k=\"draw-text\">")
                    .text(format_args!("{:.0} W", s.draw_watts))
                    .raw("</span>")
                    .append(&svg::bar(
                        s.draw_watts,
                        b.watts as f64,
                        &format!("{}: {:.0} of {} W", b.group, s.draw_watts, b.watts),
                    ))
                    .raw("</td>")
                    .cell("headroom", format_args!("{:.0} W", s.headroom_watts))
                    .cell(
                        "capped",
                        format_args!("{} ({} nodes reporting)", s.capped_gpus, s.reporting_nodes),
                    );
            }
            None => {
                h.cell("draw", "-")
                    .cell("headroom", "-")
                    .cell("capped", "-");
            }
        }
        h.raw("</tr>");
    }
    h.raw("</table>");
    h
}

fn job_row(h: &mut Html, j: &JobRow) {
    h.open_with("tr", "data-row", &j.name)
        .raw("<td data-k=\"name\">")
        .link_with_query("/allocs", "job", &j.name, &j.name)
        .raw("</td>")
        .cell("type", j.job_type)
        .raw("<td data-k=\"status\"><span class=\"badge ")
        .raw(j.status)
        .raw("\">")
        .raw(j.status)
        .raw("</span></td>")
        .cell("version", j.version)
        .cell("count", j.count)
        .cell("placed", j.placed)
        .cell("priority", j.priority)
        .cell("driver", &j.driver)
        .cell(
            "resources",
            format_args!(
                "{}m, {}, {} GPUs",
                j.cpu_millis,
                display_memory(j.memory_bytes),
                j.gpus
            ),
        )
        .cell("allocs", j.allocs)
        .raw("<td data-k=\"blocked\" class=\"wrap\">")
        .text(j.blocked.as_deref().unwrap_or(""))
        .raw("</td></tr>");
}

/// The jobs page's body.
pub fn jobs(rows: &[JobRow]) -> Html {
    let mut h = Html::new();
    if rows.is_empty() {
        h.raw("<p class=\"muted\">No job has been submitted.</p>");
        return h;
    }
    h.raw("<table data-table=\"jobs\"><tr><th>Name</th><th>Type</th><th>Status</th><th>Version</th><th>Count</th><th>Placed</th><th>Priority</th><th>Driver</th><th>Per instance</th><th>Allocs</th><th>Blocked</th></tr>");
    for j in rows {
        job_row(&mut h, j);
    }
    h.raw("</table><p class=\"muted\">Placed: instances with a pending or running allocation. A job's name lists its allocations.</p>");
    h
}

/// The allocations page's body.
pub fn allocs(page: &AllocsPage) -> Html {
    let mut h = Html::new();
    if let Some(job) = &page.job {
        h.raw("<p>Allocations of job <strong data-k=\"job-filter\">")
            .text(job)
            .raw("</strong> (<a href=\"/allocs\">all jobs</a>).</p>");
    }
    if page.rows.is_empty() {
        h.raw("<p class=\"muted\">No allocation.</p>");
        return h;
    }
    h.raw("<table data-table=\"allocs\"><tr><th>Id</th><th>Job</th><th>Instance</th><th>Node</th><th>Status</th><th>Desired</th><th>Generation</th><th>Job version</th><th>Resources</th><th>GPUs</th><th>Moving</th><th>Latest event</th></tr>");
    for a in &page.rows {
        h.open_with("tr", "data-row", &a.id)
            .cell("id", &a.id)
            .raw("<td data-k=\"job\">")
            .link_with_query("/allocs", "job", &a.job, &a.job)
            .raw("</td>")
            .cell("instance", a.instance)
            .cell("node", &a.node)
            .raw("<td data-k=\"status\"><span class=\"badge ")
            .raw(a.status)
            .raw("\">")
            .raw(a.status)
            .raw("</span></td>")
            .cell("desired", a.desired)
            .cell("generation", a.generation)
            .cell("job-version", a.job_version)
            .cell(
                "resources",
                format_args!("{}m, {}", a.cpu_millis, display_memory(a.memory_bytes)),
            )
            .cell(
                "gpu-indices",
                a.gpu_indices
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .cell("moving", a.moving.as_deref().unwrap_or(""))
            .raw("<td data-k=\"event\" class=\"wrap\">")
            .text(a.last_event.as_deref().unwrap_or(""))
            .raw("</td></tr>");
    }
    h.raw("</table>");
    if page.matched > page.rows.len() {
        h.raw("<p class=\"muted\" data-k=\"cut\">Showing ")
            .text(page.rows.len())
            .raw(" of ")
            .text(page.matched)
            .raw("; <code>herd alloc list</code> lists them all.</p>");
    }
    h
}

fn migration_table(h: &mut Html, key: &'static str, rows: &[MigrationRow]) {
    h.raw("<table data-table=\"")
        .raw(key)
        .raw("\"><tr><th>Id</th><th>Allocation</th><th>Job</th><th>Kind</th><th>Source</th><th>Target</th><th>Phase</th><th>Moved</th><th>Rounds</th><th>Downtime</th><th>Total</th><th>Error</th></tr>");
    for m in rows {
        h.open_with("tr", "data-row", &m.id)
            .cell("id", &m.id)
            .cell("alloc", &m.alloc_id)
            .cell("job", &m.job)
            .cell("kind", &m.kind)
            .cell("source", &m.source)
            .cell("target", &m.target)
            .raw("<td data-k=\"phase\"><span class=\"badge ")
            .raw(m.phase)
            .raw("\">")
            .raw(m.phase)
            .raw("</span></td>")
            .cell("bytes", display_memory(m.bytes))
            .cell("rounds", m.rounds)
            .cell(
                "downtime",
                match m.downtime_ms {
                    Some(ms) => format!("{ms} ms (limit {} ms)", m.downtime_limit_ms),
                    None => format!("- (limit {} ms)", m.downtime_limit_ms),
                },
            )
            .cell("total", span(m.total_ms))
            .raw("<td data-k=\"error\" class=\"wrap\">")
            .text(m.error.as_deref().unwrap_or(""))
            .raw("</td></tr>");
    }
    h.raw("</table>");
}

/// The migrations page's body.
pub fn migrations(page: &MigrationsPage) -> Html {
    let mut h = Html::new();
    h.raw("<h2>In flight (<span data-k=\"active-count\">")
        .text(page.active.len())
        .raw("</span>)</h2>");
    if page.active.is_empty() {
        h.raw("<p class=\"muted\">No migration is in flight.</p>");
    } else {
        migration_table(&mut h, "active", &page.active);
    }
    h.raw("<h2>Recent (<span data-k=\"ended-count\">")
        .text(page.ended)
        .raw("</span> ended, newest first)</h2>");
    if page.recent.is_empty() {
        h.raw("<p class=\"muted\">No migration has ended (or the ended ones were forgotten).</p>");
    } else {
        migration_table(&mut h, "recent", &page.recent);
    }
    h
}

/// The fragmentation page's body.
pub fn fragmentation(f: &Fragmentation, history: &[Sample]) -> Html {
    let mut h = Html::new();
    h.raw("<dl class=\"facts\"><dt>Fragment rate now</dt><dd data-k=\"fragment-rate\">")
        .text(fragment_rate_text(f.fragment_rate))
        .raw("</dd><dt>Target shape</dt><dd data-k=\"target\">")
        .text(format_args!("{} millicores", f.target_cpu_millis))
        .raw("</dd><dt>Nodes counted</dt><dd data-k=\"active-nodes\">")
        .text(format_args!("{} of {}", f.active_nodes, f.nodes))
        .raw("</dd><dt>Allocations</dt><dd data-k=\"allocations\">")
        .text(f.allocations)
        .raw("</dd><dt>Movable</dt><dd data-k=\"movable\">")
        .text(f.movable)
        .raw("</dd><dt>Not movable</dt><dd data-k=\"immovable\">");
    if f.immovable.is_empty() {
        h.raw("none");
    }
    for (i, (why, n)) in f.immovable.iter().enumerate() {
        if i > 0 {
            h.raw("; ");
        }
        h.text(format_args!("{n} {why}"));
    }
    h.raw("</dd></dl><p class=\"muted\">The share of free CPU on ready, eligible nodes that cannot hold one more instance of the target shape, as <code>herd reschedule plan</code> computes it before planning; <code>herd reschedule apply</code> lowers it with live migrations.</p>");
    h.raw("<h2>Over time</h2>").append(&fragment_chart(history));
    let cpu: Vec<Point> = history
        .iter()
        .map(|s| Point {
            at_ms: s.at_ms,
            value: svg::fraction(s.cpu_used_millis as f64, s.cpu_total_millis as f64),
        })
        .collect();
    h.raw("<h2>CPU held on ready nodes</h2>")
        .append(&svg::line_chart(
            &cpu,
            Axis {
                max: 1.0,
                percent: true,
            },
            "share of ready nodes' CPU held over time",
        ));
    let running: Vec<Point> = history
        .iter()
        .map(|s| Point {
            at_ms: s.at_ms,
            value: s.running_allocs as f64,
        })
        .collect();
    h.raw("<h2>Running allocations</h2>")
        .append(&svg::line_chart(
            &running,
            Axis {
                max: 1.0,
                percent: false,
            },
            "running allocations over time",
        ));
    h.raw("<p class=\"muted\">This member samples its applied state every <span data-k=\"sample-every\">")
        .text(SAMPLE_EVERY.as_secs())
        .raw("</span> s and keeps the last hour in memory (<span data-k=\"samples\">")
        .text(history.len())
        .raw("</span> samples now); a restart starts it afresh.</p>");
    h
}

/// The page for a path that is not one.
pub fn not_found(path: &str) -> Html {
    let mut h = Html::new();
    h.raw("<p>There is no page at <code>")
        .text(path)
        .raw("</code>. The pages are listed above.</p>");
    h
}

#[cfg(test)]
mod tests {
    use super::super::view::{Contact, Health, MemberRow, Used};
    use super::*;

    fn served(role: &str) -> Served {
        Served {
            member_id: 2,
            role: role.into(),
            applied_index: 77,
            leader: Some((1, "127.0.0.1:7001".into())),
            at_ms: 3_723_000,
            viewer: None,
        }
    }

    #[test]
    fn pages_name_their_viewer_and_offer_logout_to_a_logged_in_browser() {
        use crate::acl::Role;
        let body = Html::new();
        let open = layout("/", "Overview", &body, &served("leader")).into_string();
        assert!(!open.contains("data-k=\"viewer\"") && !open.contains("/logout"));
        let mut by_header = served("leader");
        by_header.viewer = Some(Viewer {
            accessor: "acc<1>".into(),
            role: Role::Read,
            by_cookie: false,
        });
        let page = layout("/", "Overview", &body, &by_header).into_string();
        assert!(page.contains("<code>acc&lt;1&gt;</code>"), "{page}");
        assert!(page.contains("data-k=\"viewer-role\">read<"), "{page}");
        assert!(!page.contains("/logout"), "no cookie to clear: {page}");
        let mut by_cookie = by_header;
        if let Some(v) = by_cookie.viewer.as_mut() {
            v.by_cookie = true;
        }
        let page = layout("/", "Overview", &body, &by_cookie).into_string();
        assert!(page.contains("action=\"/logout\""), "{page}");
    }

    #[test]
    fn a_followers_footer_says_it_may_be_stale_and_names_the_leader() {
        let f = footer(&served("follower")).into_string();
        assert!(f.contains("data-k=\"applied-index\">77<"), "{f}");
        assert!(
            f.contains("stale-note") && f.contains("member 1 (127.0.0.1:7001)"),
            "{f}"
        );
        assert!(f.contains("01:02:03 UTC"), "{f}");
        let l = footer(&served("leader")).into_string();
        assert!(!l.contains("stale-note") && l.contains("--stale"), "{l}");
    }

    #[test]
    fn the_layout_marks_the_current_page_and_loads_nothing_from_elsewhere() {
        let page = layout("/nodes", "Nodes <1>", &Html::new(), &served("leader")).into_string();
        assert!(
            page.contains("<a href=\"/nodes\" aria-current=\"page\">Nodes</a>"),
            "{page}"
        );
        assert!(
            page.contains("<title>herd · Nodes &lt;1&gt;</title>"),
            "{page}"
        );
        for external in ["src=", "http://", "https://", "@import", "url("] {
            assert!(!page.contains(external), "{external} in the page");
        }
    }

    fn node_named(name: &str) -> NodeRow {
        NodeRow {
            name: name.into(),
            addr: "127.0.0.1:1".into(),
            status: "ready",
            eligible: true,
            drain_deadline_ms: None,
            labels: vec![("rack".into(), "<r1>".into())],
            cpu: Used {
                used: 1500,
                total: 4000,
            },
            memory: Used {
                used: 128 << 20,
                total: 8 << 30,
            },
            gpus: Used { used: 1, total: 2 },
            gpu_model: Some("h100".into()),
            allocs: 2,
            drivers: vec!["exec".into()],
            report: None,
        }
    }

    #[test]
    fn user_supplied_names_are_escaped_everywhere() {
        let evil = "<img src=x onerror=alert(1)>";
        let nodes_page = NodesPage {
            nodes: vec![node_named(evil)],
            budgets: vec![],
        };
        let jobs_page = vec![JobRow {
            name: evil.into(),
            job_type: "service",
            status: "running",
            version: 1,
            count: 1,
            placed: 1,
            priority: 50,
            driver: evil.into(),
            cpu_millis: 1,
            memory_bytes: 1,
            gpus: 0,
            allocs: 1,
            blocked: Some(evil.into()),
        }];
        for html in [
            nodes(&nodes_page, true, 0),
            jobs(&jobs_page),
            not_found(evil),
        ] {
            let s = html.into_string();
            assert!(!s.contains("<img"), "{s}");
            assert!(s.contains("&lt;img src=x onerror=alert(1)&gt;"), "{s}");
        }
    }

    #[test]
    fn a_node_row_shows_held_over_total_with_a_bar() {
        let s = nodes(
            &NodesPage {
                nodes: vec![node_named("n1")],
                budgets: vec![],
            },
            false,
            0,
        )
        .into_string();
        assert!(s.contains("data-k=\"cpu-text\">1500 / 4000 m<"), "{s}");
        assert!(s.contains("data-k=\"memory-text\">128MiB / 8GiB<"), "{s}");
        assert!(s.contains("data-k=\"gpus\">1 / 2<"), "{s}");
        assert!(s.contains("<svg class=\"bar\""), "{s}");
        assert!(s.contains("rack=&lt;r1&gt;"), "{s}");
        assert!(s.contains("no-reports"), "{s}");
    }

    #[test]
    fn the_overview_lists_members_with_roles_and_counts() {
        let o = Overview {
            cluster_id: "c-1".into(),
            health: Health {
                level: "healthy",
                detail: "ok".into(),
            },
            term: 4,
            leader: Some(1),
            last_log_index: Some(9),
            snapshot_index: None,
            members: vec![MemberRow {
                id: 1,
                addr: "a:1".into(),
                role: "leader",
                this_member: true,
                contact: Contact::Healthy,
                matched_index: Some(9),
            }],
            nodes: BTreeMap::from([("ready".to_string(), 2)]),
            jobs: BTreeMap::new(),
            allocs: BTreeMap::from([("running".to_string(), 3), ("pending".to_string(), 1)]),
            migrations_active: 0,
            migrations_ended: 1,
            power_budgets: 0,
            fragment_rate: 0.25,
        };
        let s = overview(&o, &[]).into_string();
        assert!(s.contains("data-k=\"term\">4<"), "{s}");
        assert!(
            s.contains("data-row=\"member-1\"")
                && s.contains("data-k=\"role\"><span class=\"badge leader\">leader<"),
            "{s}"
        );
        assert!(s.contains("data-k=\"allocs\">4<"), "{s}");
        assert!(
            s.contains("data-k=\"fragment-rate\">0.2500 (25.0 %)<"),
            "{s}"
        );
        assert!(s.contains("No samples yet"), "{s}");
    }

    #[test]
    fn spans_read_naturally() {
        assert_eq!(span(250), "250 ms");
        assert_eq!(span(1_500), "1.5 s");
        assert_eq!(span(600_000), "10 min");
        assert_eq!(span(9_000_000), "2.5 h");
    }
}
