//! The dashboard: HTML rendered here, from the same views the `/api` routes and the
//! connector print, with a few lines of JavaScript that fetch each part again
//! (`/part/NAME`) every second. No build step: the page is this file.
//!
//! Every figure a test or a script may want is also in a `data-*` attribute.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::admin::{OfficeStatus, Savings, TopologyView};
use crate::web::{App, html};

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Bytes for people: B, KiB, MiB, GiB.
pub fn human(b: u64) -> String {
    let f = b as f64;
    if b < 1024 {
        format!("{b} B")
    } else if f < 1024.0 * 1024.0 {
        format!("{:.1} KiB", f / 1024.0)
    } else if f < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", f / (1024.0 * 1024.0))
    } else {
        format!("{:.2} GiB", f / (1024.0 * 1024.0 * 1024.0))
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 100.0 / whole as f64).clamp(0.0, 100.0)
    }
}

const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d2433;background:#f4f6fa}
header{background:#1f3a5f;color:#fff;padding:10px 24px;display:flex;align-items:center;gap:28px}
header h1{font-size:18px;margin:0;font-weight:600}
header nav a{color:#c9d7ee;text-decoration:none;margin-right:18px;padding:4px 0}
header nav a.on{color:#fff;border-bottom:2px solid #7fb3ff}
#live{margin-left:auto;font-size:12px;color:#c9d7ee}
main{padding:18px 24px;max-width:1280px}
h2{font-size:16px;margin:22px 0 8px}
h3{font-size:15px;margin:0 0 8px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #dde3ec;border-radius:8px;padding:10px 14px;min-width:170px}
.card .v{font-size:22px;font-weight:600}
.card .k{font-size:12px;color:#5b6678}
.card.good .v{color:#1a7f37}
.panel{background:#fff;border:1px solid #dde3ec;border-radius:8px;padding:12px 16px;margin-bottom:14px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eef1f5;vertical-align:middle}
th{font-size:12px;color:#5b6678;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
ul.tree,ul.tree ul{list-style:none;margin:0;padding-left:22px}
ul.tree{padding-left:0}
ul.tree li{margin:4px 0}
.office{display:inline-flex;gap:10px;align-items:baseline;background:#f7f9fc;border:1px solid #dde3ec;border-radius:6px;padding:4px 10px}
.office b{font-size:14px}
.badge{font-size:11px;border-radius:9px;padding:1px 7px;background:#e7edf6;color:#34435a}
.badge.on{background:#dff3e4;color:#1a7f37}
.badge.off{background:#f6e3e3;color:#a33}
.rvp{font-size:12px;color:#5b6678;margin:2px 0 0 12px}
.bar{display:flex;height:14px;width:220px;background:#eef1f5;border-radius:4px;overflow:hidden}
.bar span{display:block;height:100%}
.s-origin{background:#d9534f}.s-server{background:#9b59b6}.s-wan{background:#f0ad4e}.s-lan{background:#5cb85c}.s-done{background:#3b82f6}
.legend span{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 4px 0 12px;vertical-align:middle}
.empty{color:#5b6678}
input#filter{font:inherit;padding:6px 10px;width:360px;border:1px solid #c5cfdd;border-radius:6px;margin-bottom:10px}
code{font-size:12px;color:#445}
"#;

const SCRIPT: &str = r#"
(function(){
  const parts=[...document.querySelectorAll('[data-part]')];
  const live=document.getElementById('live');
  function filter(){
    const f=document.getElementById('filter'); if(!f) return;
    const q=f.value.trim().toLowerCase();
    let shown=0;
    document.querySelectorAll('tr[data-client]').forEach(r=>{
      const hit=!q||r.textContent.toLowerCase().includes(q);
      r.style.display=hit?'':'none'; if(hit) shown++;
    });
    const c=document.getElementById('shown'); if(c) c.textContent=shown;
  }
  async function refresh(){
    try{
      for(const el of parts){
        const r=await fetch('/part/'+el.dataset.part,{credentials:'same-origin',cache:'no-store'});
        if(!r.ok){live.textContent='refresh refused: HTTP '+r.status;return;}
        el.innerHTML=await r.text();
      }
      filter();
      document.body.dataset.refreshes=(+(document.body.dataset.refreshes||0))+1;
      live.textContent='live \u00b7 updated '+new Date().toLocaleTimeString();
    }catch(e){live.textContent='server unreachable';}
  }
  const f=document.getElementById('filter'); if(f) f.addEventListener('input',filter);
  filter();
  setInterval(refresh,1000);
})();
"#;

fn layout(title: &str, active: &str, body: &str) -> String {
    let mut nav = String::new();
    for (href, name) in [
        ("/", "Overview"),
        ("/deployments", "Deployments"),
        ("/clients", "Clients"),
        ("/catalogue", "Catalogue"),
    ] {
        let _ = write!(
            nav,
            r#"<a href="{href}"{}>{name}</a>"#,
            if name == active { r#" class="on""# } else { "" }
        );
    }
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>{title} · Branchline</title><style>{STYLE}</style></head><body data-view="{view}"><header><h1>Branchline</h1><nav>{nav}</nav><span id="live">live</span></header><main>{body}</main><script>{SCRIPT}</script></body></html>"#,
        title = esc(title),
        view = esc(&active.to_lowercase()),
    )
}

fn section(part: &str, inner: String) -> String {
    format!(r#"<div data-part="{part}">{inner}</div>"#)
}

/// `/`: what was saved, the office tree and the live WAN transfers.
pub async fn overview(State(app): State<Arc<App>>) -> Response {
    let body = format!(
        "{}<h2>Offices</h2>{}<h2>Live WAN transfers</h2>{}",
        section("summary", summary(&app)),
        section("offices", offices(&app)),
        section("transfers", transfers(&app)),
    );
    html(layout("Overview", "Overview", &body))
}

/// `/deployments`: each deployment's progress per office and where its bytes came from.
pub async fn deployments(State(app): State<Arc<App>>) -> Response {
    let body = format!(
        r#"<h2>Deployments</h2><p class="legend">Bytes by source:<span class="s-origin"></span>origin<span class="s-server"></span>server<span class="s-wan"></span>WAN (parent office)<span class="s-lan"></span>LAN peers</p>{}"#,
        section("deployments", deployment_list(&app))
    );
    html(layout("Deployments", "Deployments", &body))
}

/// `/clients`: every client, with a search box.
pub async fn clients(State(app): State<Arc<App>>) -> Response {
    let body = format!(
        r#"<h2>Clients</h2><input id="filter" type="search" placeholder="Search by host name, id, office or address" autocomplete="off"> <span class="empty"><span id="shown"></span> shown</span>{}"#,
        section("clients", client_list(&app))
    );
    html(layout("Clients", "Clients", &body))
}

/// `/catalogue`: the published content items.
pub async fn catalogue(State(app): State<Arc<App>>) -> Response {
    let body = format!(
        "<h2>Catalogue</h2>{}",
        section("catalogue", catalogue_list(&app))
    );
    html(layout("Catalogue", "Catalogue", &body))
}

/// `/part/NAME`: one part of a page, for the live refresh.
pub async fn part(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    let inner = match name.as_str() {
        "summary" => summary(&app),
        "offices" => offices(&app),
        "transfers" => transfers(&app),
        "deployments" => deployment_list(&app),
        "clients" => client_list(&app),
        "catalogue" => catalogue_list(&app),
        _ => return (StatusCode::NOT_FOUND, "no such part\n").into_response(),
    };
    html(inner)
}

fn card(key: &str, value: String, attr: &str, good: bool) -> String {
    format!(
        r#"<div class="card{}" data-card="{attr}"><div class="v">{value}</div><div class="k">{key}</div></div>"#,
        if good { " good" } else { "" }
    )
}

fn summary(app: &App) -> String {
    let h = app.state.health();
    let deps = crate::calls::deployments_view(&app.state);
    let s: &Savings = &deps.savings;
    let items = crate::lock(&app.state.catalogue).len();
    let mut out = String::from(r#"<div class="cards">"#);
    out.push_str(&card(
        "clients online",
        format!("{} / {}", h.clients_online, h.clients_total),
        "clients",
        false,
    ));
    out.push_str(&card(
        "deployments",
        deps.deployments.len().to_string(),
        "deployments",
        false,
    ));
    out.push_str(&card("content items", items.to_string(), "items", false));
    out.push_str(&card(
        "delivered to clients",
        human(s.delivered_bytes),
        "delivered",
        false,
    ));
    out.push_str(&card(
        "read from the origin",
        human(s.origin_bytes),
        "origin",
        false,
    ));
    out.push_str(&format!(
        r#"<div class="card good" data-card="saved" data-saved="{}" data-delivered="{}"><div class="v">{}</div><div class="k">origin traffic saved vs every client reading the origin ({:.0}%)</div></div>"#,
        s.origin_saved_bytes,
        s.delivered_bytes,
        human(s.origin_saved_bytes),
        pct(s.origin_saved_bytes, s.delivered_bytes)
    ));
    out.push_str(&format!(
        r#"<div class="card good" data-card="wan-saved" data-saved="{}"><div class="v">{}</div><div class="k">WAN traffic saved (branch clients served by office peers)</div></div>"#,
        s.wan_saved_bytes,
        human(s.wan_saved_bytes)
    ));
    out.push_str("</div>");
    out
}

fn offices(app: &App) -> String {
    let view = crate::calls::topology_view(&app.state);
    fn walk(view: &TopologyView, parent: Option<&str>, out: &mut String) {
        let children: Vec<_> = view
            .offices
            .iter()
            .filter(|o| o.parent.as_deref() == parent)
            .collect();
        if children.is_empty() {
            return;
        }
        out.push_str(if parent.is_none() {
            r#"<ul class="tree">"#
        } else {
            "<ul>"
        });
        for o in children {
            let mut extras = String::new();
            if o.kind != "default" {
                let _ = write!(extras, r#" <span class="badge">{}</span>"#, esc(&o.kind));
            }
            if o.auto {
                extras.push_str(r#" <span class="badge">automatic</span>"#);
            }
            if let Some(c) = o.ceiling_bytes_per_s {
                let _ = write!(
                    extras,
                    r#" <span class="badge">ceiling {:.1} Mbit/s</span>"#,
                    c as f64 * 8.0 / 1e6
                );
            }
            if let Some(h) = &o.allowed_hours {
                let _ = write!(
                    extras,
                    r#" <span class="badge">hours {} UTC</span>"#,
                    esc(h)
                );
            }
            let _ = write!(
                out,
                r#"<li><div class="office" data-office="{name}" data-online="{on}" data-total="{tot}" data-parent="{parent}"><b>{name}</b><span class="badge {cls}">{on}/{tot} online</span><code>{subnets}</code>{extras}</div>"#,
                name = esc(&o.name),
                on = o.clients_online,
                tot = o.clients_total,
                parent = esc(o.parent.as_deref().unwrap_or("")),
                cls = if o.clients_online > 0 { "on" } else { "off" },
                subnets = esc(&o.subnets.join(", ")),
            );
            for r in &o.rvps {
                let _ = write!(
                    out,
                    r#"<div class="rvp" data-rvp-office="{}" data-content="{}" data-client="{}">RVP for {}: <b>{}</b> <code>{}</code></div>"#,
                    esc(&o.name),
                    esc(&r.content_id),
                    esc(&r.client_id),
                    esc(if r.content.is_empty() {
                        &r.content_id
                    } else {
                        &r.content
                    }),
                    esc(&r.hostname),
                    esc(&r.client_id),
                );
            }
            walk(view, Some(&o.name), out);
            out.push_str("</li>");
        }
        out.push_str("</ul>");
    }
    let mut out = String::from(r#"<div class="panel">"#);
    walk(&view, None, &mut out);
    out.push_str("</div>");
    out
}

fn rate_text(r: f64) -> String {
    format!("{:.2} Mbit/s", r * 8.0 / 1e6)
}

fn transfers(app: &App) -> String {
    let list = app.transfers();
    if list.is_empty() {
        return r#"<div class="panel"><p class="empty" data-no-transfers>No content is crossing a WAN link now.</p></div>"#.into();
    }
    let mut out = String::from(
        r#"<div class="panel"><table><tr><th>Link</th><th>Content</th><th>RVP</th><th>Progress</th><th class="n">Over the link</th><th class="n">Rate</th></tr>"#,
    );
    for (t, rate) in list {
        let _ = write!(
            out,
            r#"<tr data-transfer data-office="{office}" data-content="{cid}" data-bytes="{b}" data-rate="{rate:.0}"><td>{parent} → <b>{office}</b></td><td>{content}</td><td>{rvp}</td><td><div class="bar"><span class="s-wan" style="width:{p:.1}%"></span></div></td><td class="n">{hb} of {size}</td><td class="n">{rt}</td></tr>"#,
            office = esc(&t.office),
            cid = esc(&t.content_id),
            b = t.bytes_wan_in,
            parent = esc(t.parent.as_deref().unwrap_or("origin")),
            content = esc(&t.content),
            rvp = esc(t.rvp.as_deref().unwrap_or("-")),
            p = pct(t.bytes_wan_in, t.size),
            hb = human(t.bytes_wan_in),
            size = human(t.size),
            rt = rate_text(rate),
        );
    }
    out.push_str("</table></div>");
    out
}

fn source_bar(o: &OfficeStatus) -> String {
    let total = o.bytes_origin + o.bytes_server + o.bytes_wan_in + o.bytes_lan;
    let mut out = String::from(r#"<div class="bar" title="origin / server / WAN / LAN">"#);
    for (cls, v) in [
        ("s-origin", o.bytes_origin),
        ("s-server", o.bytes_server),
        ("s-wan", o.bytes_wan_in),
        ("s-lan", o.bytes_lan),
    ] {
        if v > 0 {
            let _ = write!(
                out,
                r#"<span class="{cls}" style="width:{:.1}%"></span>"#,
                pct(v, total)
            );
        }
    }
    out.push_str("</div>");
    out
}

fn deployment_list(app: &App) -> String {
    let view = crate::calls::deployments_view(&app.state);
    if view.deployments.is_empty() {
        return r#"<div class="panel"><p class="empty">No deployments yet (`branchline connector deploy CONTENT --to all`).</p></div>"#.into();
    }
    let mut out = String::new();
    for d in &view.deployments {
        let _ = write!(
            out,
            r#"<div class="panel deployment" data-deployment="{id}" data-content="{cid}" data-done="{done}" data-total="{total}"><h3>Deployment {id}: {content} ({size}) → {target}{pre}</h3><p>{done} of {total} targeted clients done</p><table><tr><th>Office</th><th>Parent</th><th>Progress</th><th class="n">Done</th><th>Where the bytes came from</th><th class="n">Origin</th><th class="n">Server</th><th class="n">WAN in</th><th class="n">WAN out</th><th class="n">LAN</th><th>RVP</th></tr>"#,
            id = d.deployment,
            cid = esc(&d.status.content_id),
            done = d.clients_done,
            total = d.clients_total,
            content = esc(&d.status.content),
            size = human(d.status.size),
            target = esc(&d.target),
            pre = if d.prestage { " (prestage)" } else { "" },
        );
        for o in &d.status.offices {
            let _ = write!(
                out,
                r#"<tr data-office-status data-deployment="{dep}" data-office="{office}" data-done="{done}" data-total="{total}" data-origin="{origin}" data-server="{server}" data-wan-in="{wi}" data-wan-out="{wo}" data-lan="{lan}" data-rvp="{rvp}"><td><b>{office}</b></td><td>{parent}</td><td><div class="bar"><span class="s-done" style="width:{p:.1}%"></span></div></td><td class="n">{done}/{total}</td><td>{bar}</td><td class="n">{ho}</td><td class="n">{hs}</td><td class="n">{hwi}</td><td class="n">{hwo}</td><td class="n">{hl}</td><td>{rvp}</td></tr>"#,
                dep = d.deployment,
                office = esc(&o.office),
                parent = esc(o.parent.as_deref().unwrap_or("-")),
                done = o.clients_done,
                total = o.clients_total,
                origin = o.bytes_origin,
                server = o.bytes_server,
                wi = o.bytes_wan_in,
                wo = o.bytes_wan_out,
                lan = o.bytes_lan,
                rvp = esc(o.rvp.as_deref().unwrap_or("")),
                p = pct(o.clients_done, o.clients_total),
                bar = source_bar(o),
                ho = human(o.bytes_origin),
                hs = human(o.bytes_server),
                hwi = human(o.bytes_wan_in),
                hwo = human(o.bytes_wan_out),
                hl = human(o.bytes_lan),
            );
        }
        out.push_str("</table></div>");
    }
    out
}

fn client_list(app: &App) -> String {
    let view = crate::calls::clients_view(&app.state);
    let now = app.state.clock.now_ms();
    let mut out = format!(
        r#"<div class="panel"><table data-clients="{}"><tr><th>Host</th><th>Office</th><th>Status</th><th>Address</th><th class="n">Last heard</th><th class="n">Cache free / size</th><th class="n">Complete items</th><th>RVP for</th><th>Version</th><th>Client id</th></tr>"#,
        view.clients.len()
    );
    for c in &view.clients {
        let _ = write!(
            out,
            r#"<tr data-client="{id}" data-office="{office}" data-online="{online}"><td><b>{host}</b></td><td>{office}</td><td><span class="badge {cls}">{st}</span></td><td>{addr}</td><td class="n">{ago:.1} s ago</td><td class="n">{free} / {size}</td><td class="n">{complete}</td><td>{rvp}</td><td>{ver}</td><td><code>{id}</code></td></tr>"#,
            id = esc(&c.client_id),
            office = esc(c.office.as_deref().unwrap_or("-")),
            online = c.online,
            host = esc(&c.hostname),
            cls = if c.online { "on" } else { "off" },
            st = if c.online { "online" } else { "offline" },
            addr = esc(c.address.as_deref().unwrap_or("-")),
            ago = now.saturating_sub(c.last_seen_ms) as f64 / 1000.0,
            free = human(c.cache_free_bytes),
            size = human(c.cache_size_bytes),
            complete = c.complete,
            rvp = esc(&c.rvp_for.join(", ")),
            ver = esc(&c.version),
        );
    }
    out.push_str("</table></div>");
    out
}

fn catalogue_list(app: &App) -> String {
    let view = crate::calls::catalogue_view(&app.state);
    if view.items.is_empty() {
        return r#"<div class="panel"><p class="empty">Nothing published yet (`branchline connector publish FILE`).</p></div>"#.into();
    }
    let mut out = String::from(
        r#"<div class="panel"><table><tr><th>Name</th><th>Version</th><th class="n">Size</th><th class="n">Piece size</th><th class="n">Complete holders</th><th>Server copy</th><th>Origin</th><th>Content id</th></tr>"#,
    );
    for i in &view.items {
        let _ = write!(
            out,
            r#"<tr data-item="{cid}" data-holders="{holders}"><td><b>{name}</b></td><td>{ver}</td><td class="n">{size}</td><td class="n">{piece}</td><td class="n">{holders}</td><td>{server}</td><td><code>{origin}</code></td><td><code>{cid}</code></td></tr>"#,
            cid = esc(&i.content_id),
            holders = i.complete_holders,
            name = esc(&i.name),
            ver = esc(&i.version),
            size = human(i.size),
            piece = human(u64::from(i.piece_size)),
            server = if i.server_holds { "yes" } else { "no" },
            origin = esc(&i.origin),
        );
    }
    out.push_str("</table></div>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_sizes() {
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(human(512), "512 B");
        assert_eq!(human(4 << 20), "4.0 MiB");
        assert_eq!(pct(1, 0), 0.0);
        assert_eq!(pct(1, 4), 25.0);
    }
}
