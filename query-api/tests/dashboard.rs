//! The dashboard in a real browser: Debian's headless Chromium, driven over the DevTools
//! protocol, against the query API serving a generated workload whose ground truth is known.
//!
//! - Signed in with a read key, every card's numbers in the DOM equal the ground truth (the
//!   expectations are formatted as the page formats numbers); filters change them as the ground
//!   truth says; a URL opens the view it describes and keeps describing it.
//! - A bad key shows the sign-in error; a key of tenant A never shows tenant B's data, whatever
//!   the URL, the storage or a request from the page says.
//! - The page refreshes by itself (an unchanged card costs a 304) and shows a newly stored run;
//!   the live tail shows the tenant's events and no one else's.
//! - The automations panel lists an automation created through the API, with its last firing,
//!   and never another tenant's.
//! - Screenshots at 1280×800 and 390×844 go to `target/dashboard-screenshots/`; the console has
//!   no errors. First meaningful paint and page weight are measured and printed.

mod common;
#[path = "dashboard/expect.rs"]
mod expect;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::truth::{self, Buckets, Filters};
use common::workload::{DAY, HOUR, SECOND, rfc3339};
use common::{Harness, TenantKeys};
use expect::{View, check_cards};
use flowhouse_query_api::Settings;
use flowhouse_query_api::live::{Feed, Item};
use flowhouse_schema::Stream;
use flowhouse_tests::browser::{Browser, Page};
use serde_json::{Value, json};
use uuid::Uuid;

/// The page's refresh interval in these tests (the default is 10 s).
const REFRESH_SECS: u64 = 2;

fn screenshots() -> PathBuf {
    flowhouse_tests::workspace_root().join("target/dashboard-screenshots")
}

/// What the page shows: every card's state, `data-k` values and table rows, as text.
const READ_CARDS: &str = r#"(() => {
  const out = {};
  for (const s of document.querySelectorAll('[data-card]')) {
    const card = { state: s.dataset.state, k: {}, tables: {}, message: s.querySelector('.card-msg')?.textContent || '' };
    for (const e of s.querySelectorAll('[data-k]')) if (!e.closest('[data-table]')) card.k[e.dataset.k] = e.textContent;
    for (const t of s.querySelectorAll('[data-table]')) {
      card.tables[t.dataset.table] = [...t.querySelectorAll(':scope > tbody > tr, :scope > li')].map((r) => ({
        id: r.dataset.id || r.dataset.key || r.dataset.start || '',
        cells: [...r.querySelectorAll('th, td, button, .count')].map((c) => c.textContent),
      }));
    }
    out[s.dataset.card] = card;
  }
  return out;
})()"#;

/// Every card has answered the current view (a refresh of the whole page ended).
const READY: &str = r#"(() => {
  const cards = [...document.querySelectorAll('[data-card]')];
  return cards.length > 0 && cards.every((c) => c.getAttribute('aria-busy') === 'false') && document.body.dataset.refreshed;
})()"#;

// --- driving the page ------------------------------------------------------------------------------

/// Runs `action` and waits until the page has refreshed every card since.
async fn settle(page: &Page<'_>, action: &str) -> Value {
    let before = page.eval("document.body.dataset.refreshed || ''").await;
    page.eval(action).await;
    page.wait_for(
        "a refresh after the action",
        &format!(
            "{READY} && document.body.dataset.refreshed !== {before}",
            before = before
        ),
    )
    .await;
    page.eval(READ_CARDS).await
}

async fn sign_in(page: &Page<'_>, key: &str) {
    page.eval(&format!(
        "document.getElementById('key').value = {key}; document.getElementById('signin-form').requestSubmit()",
        key = json!(key)
    ))
    .await;
}

fn search_pairs(search: &str) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(search.trim_start_matches('?')).unwrap();
    pairs.sort();
    pairs
}

/// A flow-run event of `tenant`, as a client would send it, stored as ingest would store it.
fn event_json(run: Uuid, state: &str, state_type: &str, at: i64) -> Value {
    json!({
        "id": Uuid::new_v4(),
        "occurred": rfc3339(at),
        "event": format!("prefect.flow-run.{state}"),
        "resource": {
            "prefect.resource.id": format!("prefect.flow-run.{run}"),
            "prefect.resource.name": format!("fresh-{run}"),
            "prefect.state-type": state_type,
        },
        "related": [],
    })
}

fn live_item(tenant: flowhouse_schema::Tenant, event: &Value) -> Item {
    let raw = event.to_string();
    let parsed = flowhouse_schema::event::parse_event(
        raw.as_bytes(),
        &flowhouse_schema::event::Limits::default(),
        chrono::Utc::now(),
    )
    .unwrap();
    Item::Event(flowhouse_schema::rows::EventRow::new(
        tenant,
        chrono::Utc::now(),
        &parsed,
    ))
}

#[tokio::test]
async fn the_dashboard_in_a_browser_shows_the_ground_truth_and_only_its_tenants_data() {
    let started = Instant::now();
    let feed = Feed::detached(100);
    let settings = Settings {
        cache_fresh: Duration::from_secs(1),
        ..Settings::default()
    };
    let mut h = Harness::start_live("qa_dashboard", 2, settings, Some(feed.clone())).await;
    h.load(17, 120).await;
    let events = truth::unique(&h.events);
    let browser = Browser::launch().await;
    let (a, b): (&TenantKeys, &TenantKeys) = (&h.tenants[0], &h.tenants[1]);
    let home = format!("{}/?refresh={REFRESH_SECS}", h.base_url);

    // Sign in; the default view is the 7 days ending today, in UTC days.
    let page = browser.page(1280, 800).await;
    page.goto(&home).await;
    page.wait_for(
        "the sign-in form",
        "!document.getElementById('signin').hidden",
    )
    .await;
    sign_in(&page, &a.key).await;
    page.wait_for("the cards", READY).await;
    // Reloaded with the key in the tab's storage: the time to every card's first numbers.
    page.goto(&home).await;
    page.wait_for("the cards", READY).await;
    let mark = |name: &str| format!("performance.getEntriesByName('{name}')[0].startTime");
    let first = page
        .eval(&mark("flowhouse:first-card"))
        .await
        .as_f64()
        .unwrap();
    let paint = page.eval(&mark("flowhouse:cards")).await.as_f64().unwrap();
    // Every file the page loads (the modules are all preloaded by the HTML), uncompressed.
    let weight = page
        .eval(
            "Promise.all(['/', ...[...document.querySelectorAll('script[src], link[href]')].map((e) => e.getAttribute('src') || e.getAttribute('href'))]
               .filter((u, i, all) => all.indexOf(u) === i)
               .map((u) => fetch(u, { cache: 'no-store' }).then((r) => r.arrayBuffer()).then((b) => b.byteLength)))
             .then((sizes) => sizes.reduce((s, n) => s + n, 0))",
        )
        .await
        .as_f64()
        .unwrap();
    eprintln!(
        "first meaningful paint: the first card's numbers {first:.0} ms, every card's {paint:.0} ms after navigation"
    );
    eprintln!("page weight (HTML, CSS, JS, icon; uncompressed): {weight:.0} bytes");
    assert!(weight > 0.0 && weight <= 200.0 * 1024.0, "{weight} bytes");
    assert!(paint < 10_000.0, "first paint took {paint} ms");

    let week = View {
        h: &h,
        tenant: 0,
        since: h.base,
        until: h.base + 7 * DAY,
        buckets: Buckets::Width(DAY),
        filters: Filters::default(),
    };
    check_cards(&page.eval(READ_CARDS).await, &week, &events, "default view");

    // The automations panel: one created through the API (its name is data, shown as text)
    // with its last firing from the delivery log; another tenant's never.
    let created = h
        .http
        .post(h.url(a.tenant, "automations"))
        .bearer_auth(&h.write_only_key)
        .json(
            &json!({"name": "<b>nightly</b> fails", "trigger": {"type": "event",
            "expect": ["prefect.flow-run.Failed"], "threshold": 1, "within": 600},
            "actions": [{"type": "do-nothing"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let automation: Value = created.json().await.unwrap();
    let id = automation["id"].as_str().unwrap().to_string();
    let store = flowhouse_automations::store::Store::new(h.client.clone());
    let theirs = flowhouse_automations::model::Automation {
        id: Uuid::now_v7(),
        core: flowhouse_automations::model::parse_core(
            json!({"name": "B's", "trigger": automation["trigger"], "actions": []})
                .to_string()
                .as_bytes(),
        )
        .unwrap(),
        created: chrono::Utc::now(),
        updated: chrono::Utc::now(),
    };
    store.put(b.tenant, &theirs, false).await.unwrap();
    let fired_at = chrono::Utc::now();
    store
        .log_delivery(&flowhouse_automations::store::DeliveryRow {
            account_id: a.tenant.account_id,
            workspace_id: a.tenant.workspace_id,
            automation_id: id.parse().unwrap(),
            at: fired_at,
            idempotency_key: format!("{id}/all/1/triggered/0"),
            transition: "triggered".into(),
            action: "do-nothing".into(),
            attempt: 1,
            outcome: "delivered".into(),
            status: 0,
            error: String::new(),
            fired_at,
            bucket: String::new(),
            value: 1.0,
        })
        .await
        .unwrap();
    page.wait_for(
        "the automation and its firing in the panel",
        &format!(
            "document.querySelector('[data-card=automations] tr[data-id=\"{id}\"] td:last-child')
               ?.textContent.startsWith('triggered ')"
        ),
    )
    .await;
    let panel = &page.eval(READ_CARDS).await["automations"];
    let rows = panel["tables"]["automations"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "only the tenant's own: {panel}");
    assert_eq!(rows[0]["id"], id.as_str());
    let cells: Vec<&str> = rows[0]["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        cells[..3],
        ["<b>nightly</b> fails", "event", "on"],
        "{panel}"
    );
    assert!(cells[3].starts_with("triggered "), "{panel}");

    // Screenshots at both sizes.
    let wide = screenshots().join("dashboard-1280x800.png");
    page.screenshot(&wide).await;
    page.resize(390, 844).await;
    page.wait_for(
        "the narrow layout",
        "document.documentElement.clientWidth === 390",
    )
    .await;
    let narrow = screenshots().join("dashboard-390x844.png");
    page.screenshot(&narrow).await;
    let width = page.eval("document.documentElement.scrollWidth").await;
    assert_eq!(width, 390, "nothing is wider than a 390 px screen");
    page.resize(1280, 800).await;
    eprintln!(
        "screenshots: {}\n             {}",
        wide.display(),
        narrow.display()
    );

    // Filters: a click on the worst flow, then a tag typed in; the URL says both.
    let flow = page
        .eval("document.querySelector('[data-card=top-flow] li').dataset.id")
        .await
        .as_str()
        .unwrap()
        .to_string();
    let shown = settle(
        &page,
        "document.querySelector('[data-card=top-flow] li button').click()",
    )
    .await;
    let by_flow = View {
        filters: Filters {
            flow: vec![flow.clone()],
            ..Filters::default()
        },
        ..week
    };
    check_cards(&shown, &by_flow, &events, "filtered by flow");
    let shown = settle(
        &page,
        "document.querySelector('input[data-filter=tag]').value = 'etl'; document.getElementById('controls').requestSubmit()",
    )
    .await;
    let by_flow_and_tag = View {
        filters: Filters {
            flow: vec![flow.clone()],
            tag: vec!["etl".into()],
            ..Filters::default()
        },
        ..by_flow
    };
    check_cards(
        &shown,
        &by_flow_and_tag,
        &events,
        "filtered by flow and tag",
    );
    let search = page.eval("location.search").await;
    assert_eq!(
        search_pairs(search.as_str().unwrap()),
        search_pairs(&format!("flow={flow}&tag=etl&refresh={REFRESH_SECS}"))
    );

    // A URL opens the view it describes: a custom window in Kolkata's local days, a tag.
    let (since, until) = (h.base + DAY + 5 * HOUR + 17 * 60 * SECOND, h.base + 5 * DAY);
    let search = format!(
        "?range=custom&since={}&until={}&bucket=day&tz=Asia%2FKolkata&tag=nightly&refresh={REFRESH_SECS}",
        rfc3339(since),
        rfc3339(until)
    );
    page.goto(&format!("{}/{search}", h.base_url)).await;
    page.wait_for("the cards", READY).await;
    let kolkata = View {
        since,
        until,
        buckets: Buckets::Days("Asia/Kolkata".parse().unwrap()),
        filters: Filters {
            tag: vec!["nightly".into()],
            ..Filters::default()
        },
        ..week
    };
    check_cards(
        &page.eval(READ_CARDS).await,
        &kolkata,
        &events,
        "view from a URL",
    );
    let controls = page
        .eval("[document.querySelector('input[name=range]:checked').value, document.getElementById('tz').value, document.getElementById('bucket').value, location.search]")
        .await;
    assert_eq!(controls[0], "custom");
    assert_eq!(controls[1], "Asia/Kolkata");
    assert_eq!(controls[2], "day");
    assert_eq!(
        search_pairs(controls[3].as_str().unwrap()),
        search_pairs(&search),
        "the page keeps the URL it was given"
    );

    // A bad key shows the sign-in error and nothing else.
    let other = browser.page(1280, 800).await;
    other.goto(&home).await;
    other
        .wait_for(
            "the sign-in form",
            "!document.getElementById('signin').hidden",
        )
        .await;
    sign_in(&other, "fh_test_not_a_key").await;
    let error = other
        .wait_for(
            "the sign-in error",
            "document.getElementById('signin-error').textContent",
        )
        .await;
    assert!(
        error.as_str().unwrap().contains("unknown or was revoked"),
        "{error}"
    );
    let state = other
        .eval("[document.getElementById('dashboard').hidden, sessionStorage.getItem('flowhouse.key')]")
        .await;
    assert_eq!(state, json!([true, null]));

    // Tampering, signed in as A: a URL naming B's workspace shows A's data and says so.
    sign_in(&other, &a.key).await;
    other.wait_for("the cards", READY).await;
    let b_name = format!("{}/{}", b.tenant.account_id, b.tenant.workspace_id);
    other
        .goto(&format!("{}/?workspace={b_name}", h.base_url))
        .await;
    other.wait_for("the cards", READY).await;
    let notice = other
        .eval("document.getElementById('notice').textContent")
        .await;
    assert!(
        notice.as_str().unwrap().contains("does not hold"),
        "{notice}"
    );
    check_cards(
        &other.eval(READ_CARDS).await,
        &week,
        &events,
        "URL naming B",
    );
    let options = other
        .eval("[...document.querySelectorAll('#workspace option')].map((o) => o.value)")
        .await;
    assert_eq!(
        options,
        json!([format!("{}/{}", a.tenant.account_id, a.tenant.workspace_id)])
    );
    // Requests from the page to B's paths, with A's key, are refused (B shares A's account).
    let b_base = format!(
        "/api/accounts/{}/workspaces/{}",
        b.tenant.account_id, b.tenant.workspace_id
    );
    let statuses = other
        .eval(&format!(
            "Promise.all(['{b_base}/metrics/flow-runs', '{b_base}/metrics/logs?tz=UTC'].map((u) =>
               fetch(u, {{ headers: {{ Authorization: 'Bearer ' + sessionStorage.getItem('flowhouse.key') }} }}).then((r) => r.status)))"
        ))
        .await;
    assert_eq!(statuses, json!([403, 403]));
    let close = other
        .eval(&format!(
            "new Promise((resolve) => {{
               const s = new WebSocket(`ws://${{location.host}}{b_base}/events/out`);
               s.onopen = () => s.send(JSON.stringify({{ type: 'auth', token: sessionStorage.getItem('flowhouse.key') }}));
               s.onclose = (e) => resolve(e.code);
             }})"
        ))
        .await;
    assert_eq!(close, 1008, "B's live feed refuses A's key");
    // Storage: a forged key in the tab's storage is refused at the next load.
    other
        .eval("sessionStorage.setItem('flowhouse.key', 'fh_forged_' + 'x'.repeat(32))")
        .await;
    other.goto(&home).await;
    other
        .wait_for(
            "the sign-in error",
            "document.getElementById('signin-error').textContent",
        )
        .await;
    assert_eq!(
        other
            .eval("document.getElementById('dashboard').hidden")
            .await,
        true
    );
    // No page ever asked for B's data but the refused requests above.
    let b_requests: Vec<String> = other
        .requested_urls()
        .into_iter()
        .chain(page.requested_urls())
        .filter(|u| u.contains("/api/") && u.contains(&b.tenant.workspace_id.to_string()))
        .filter(|u| {
            !u.contains("/metrics/flow-runs")
                && !u.contains("/metrics/logs")
                && !u.ends_with("/events/out")
        })
        .collect();
    assert!(b_requests.is_empty(), "{b_requests:?}");
    // The only errors are the refusals this test asked for.
    let unexpected: Vec<String> = other
        .console_errors()
        .into_iter()
        .filter(|e| !(e.starts_with("network:") && (e.contains("401") || e.contains("403"))))
        .filter(|e| !e.contains("WebSocket"))
        .collect();
    assert!(unexpected.is_empty(), "console errors: {unexpected:#?}");

    // Live: unchanged cards cost 304s; a new run shows within a few refreshes; the tail shows
    // this tenant's events only.
    page.goto(&home).await;
    page.wait_for("the cards", READY).await;
    let total_before: u64 = page
        .eval("document.querySelector('[data-card=flow-runs] [data-k=total]').textContent")
        .await
        .as_str()
        .unwrap()
        .replace(',', "")
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !page
        .responses()
        .iter()
        .any(|(url, status)| url.contains("/metrics/") && *status == 304)
    {
        assert!(Instant::now() < deadline, "no refresh answered 304");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let run = Uuid::new_v4();
    let now = chrono::Utc::now().timestamp_micros();
    for (state, ty, at) in [
        ("Running", "RUNNING", now - 90 * SECOND),
        ("Completed", "COMPLETED", now - SECOND),
    ] {
        h.insert_raw_event(a.tenant, &event_json(run, state, ty, at))
            .await;
    }
    let inserted = Instant::now();
    page.wait_for(
        "the new run",
        &format!(
            "document.querySelector('[data-card=flow-runs] [data-k=total]').textContent.replace(/,/g, '') === '{}'",
            total_before + 1
        ),
    )
    .await;
    let shown_after = inserted.elapsed();
    eprintln!("a new run was on the page {shown_after:.1?} after it was stored");
    assert!(
        shown_after < Duration::from_secs(3 * REFRESH_SECS + 5),
        "the new run took {shown_after:?}"
    );
    let mine = event_json(Uuid::new_v4(), "Running", "RUNNING", now);
    let theirs = event_json(Uuid::new_v4(), "Running", "RUNNING", now);
    page.wait_for(
        "the live tail",
        "document.getElementById('tail-msg').textContent.startsWith('Newest')",
    )
    .await;
    feed.publish(b.tenant, Stream::Events, live_item(b.tenant, &theirs));
    feed.publish(a.tenant, Stream::Events, live_item(a.tenant, &mine));
    page.wait_for(
        "the tenant's live event",
        &format!(
            "document.querySelector('[data-event-id=\"{}\"]')",
            mine["id"].as_str().unwrap()
        ),
    )
    .await;
    let foreign = page
        .eval(&format!(
            "!!document.querySelector('[data-event-id=\"{}\"]')",
            theirs["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        foreign, false,
        "another tenant's event never reaches the tail"
    );
    let errors = page.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    drop(browser);
    eprintln!("browser tests took {:.1?}", started.elapsed());
    h.finish().await;
}
