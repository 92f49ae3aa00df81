//! The web console over real HTTP, on both databases: sessions, CSRF, tenant confinement,
//! the topology map and the forms. The browser test (`console_browser`) drives the same
//! pages in Chromium through the real binary.

use reqwest::redirect::Policy;
use serde_json::json;

use crate::api_health::FLEET;
use crate::both_backends;
use crate::ctx::TestContext;

/// A browser-like client that does not follow redirects, so a test sees each 303.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    host: String,
    /// The session cookie's value, once signed in.
    pub session: Option<String>,
}

/// A page: status, `Location`, `Set-Cookie` and the body.
pub struct Got {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookie: Option<String>,
    pub body: String,
}

impl Browser {
    pub fn new(ctx: &TestContext) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .unwrap(),
            base: ctx.url(""),
            host: ctx.addr.to_string(),
            session: None,
        }
    }

    async fn done(resp: reqwest::Response) -> Got {
        let h = |n: &str| {
            resp.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let (status, location, set_cookie) =
            (resp.status().as_u16(), h("location"), h("set-cookie"));
        Got {
            status,
            location,
            set_cookie,
            body: resp.text().await.unwrap(),
        }
    }

    fn with_cookie(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.session {
            Some(s) => r.header("cookie", format!("neocloud_session={s}")),
            None => r,
        }
    }

    pub async fn get(&self, path: &str) -> Got {
        let r = self.with_cookie(self.http.get(format!("{}{path}", self.base)));
        Self::done(r.send().await.unwrap()).await
    }

    /// Posts a form from the console's own origin.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Got {
        let origin = format!("http://{}", self.host);
        self.post_with(path, form, &[("origin", origin.as_str())])
            .await
    }

    pub async fn post_with(
        &self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Got {
        let mut r = self.with_cookie(self.http.post(format!("{}{path}", self.base)));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{k}={}", enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let r = r
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        Self::done(r.send().await.unwrap()).await
    }

    /// Signs in with `key`; panics unless the console accepts it.
    pub async fn sign_in(&mut self, key: &str) {
        let g = self.post("/sign-in", &[("key", key), ("next", "/")]).await;
        assert_eq!(g.status, 303, "sign-in refused: {}", g.body);
        let cookie = g.set_cookie.expect("a session cookie");
        let value = cookie
            .strip_prefix("neocloud_session=")
            .and_then(|c| c.split(';').next())
            .unwrap();
        self.session = Some(value.to_string());
    }

    /// The CSRF token in a page's forms.
    pub fn csrf(page: &str) -> String {
        let at = page
            .find(r#"name="csrf" value=""#)
            .expect("a form with a csrf token");
        let rest = &page[at + r#"name="csrf" value=""#.len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The console's GET pages, for the checks that walk every page.
const PAGES: &[&str] = &[
    "/",
    "/sites/east",
    "/sites/east?color=tenant",
    "/sites/east/at?x=1&y=16",
    "/nodes/e-p1-l1-n1",
    "/problems",
    "/problems?site=east&state=cordoned",
    "/tenants",
    "/contracts",
    "/reports",
    "/events",
    "/instances",
    "/usage",
    "/invoices",
];

/// The console's POST forms.
const FORMS: &[&str] = &[
    "/sign-out",
    "/instances",
    "/nodes/e-p1-l1-n1/cordon",
    "/instances/inst_00000000000000000000000000/terminate",
    "/invoices/inv_x/finalize",
];

both_backends!(every_page_needs_a_session, |ctx: TestContext| async move {
    ctx.import(FLEET).await.expect(200);
    let mut b = Browser::new(&ctx);
    for p in PAGES {
        let g = b.get(p).await;
        assert_eq!(g.status, 303, "{p} without a session");
        let to = g.location.unwrap();
        assert!(to.starts_with("/sign-in"), "{p} went to {to}");
    }
    for p in FORMS {
        let g = b.post(p, &[("csrf", "x")]).await;
        assert_eq!(g.status, 303, "POST {p} without a session");
    }
    // The page asked for is where sign-in returns to.
    assert_eq!(
        b.get("/sites/east").await.location.as_deref(),
        Some("/sign-in?next=/sites/east")
    );
    // A made-up or malformed cookie is cleared, not trusted.
    b.session = Some("nck_000000000000_ffff".into());
    let g = b.get("/instances").await;
    assert_eq!(g.status, 303);
    assert!(g.set_cookie.unwrap().contains("Max-Age=0"));
    // Signed in as the operator, every page renders.
    b.sign_in(&ctx.operator_key).await;
    for p in PAGES {
        let g = b.get(p).await;
        assert!(
            g.status == 200 || (g.status == 303 && p.contains("/at?")),
            "{p}: {} {}",
            g.status,
            g.body
        );
    }
    // A GET of the static assets needs no session and is cacheable.
    b.session = None;
    let css = b.get("/assets/console.css").await;
    assert_eq!(css.status, 200);
    assert!(css.body.contains(".topology"));
});

both_backends!(sign_in_and_sign_out, |ctx: TestContext| async move {
    let mut b = Browser::new(&ctx);
    let page = b.get("/sign-in?next=/events").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"name="next" value="/events""#));
    // An open redirect through `next` falls back home.
    let page = b.get("/sign-in?next=//evil.example/").await;
    assert!(page.body.contains(r#"name="next" value="/""#));
    for (key, why) in [
        ("", "Paste an API key"),
        ("nck_deadbeef0000_00", "invalid API key"),
        ("not a key at all \u{7f}", "not an API key"),
    ] {
        let g = b.post("/sign-in", &[("key", key)]).await;
        assert_eq!(g.status, 401, "{key:?}");
        assert!(g.body.contains(why), "{key:?}: {}", g.body);
        assert!(g.set_cookie.is_none());
    }
    let (agent, _) = ctx.key("node-agent", None).await;
    let g = b.post("/sign-in", &[("key", &agent)]).await;
    assert_eq!(g.status, 401);
    assert!(g.body.contains("Node-agent keys cannot sign in"));
    // Sign-in from another site is refused before the key is even looked at.
    let g = b
        .post_with(
            "/sign-in",
            &[("key", &ctx.operator_key)],
            &[("origin", "http://evil.example")],
        )
        .await;
    assert_eq!(g.status, 403);

    let g = b
        .post(
            "/sign-in",
            &[("key", &ctx.operator_key), ("next", "/events")],
        )
        .await;
    assert_eq!(g.status, 303);
    assert_eq!(g.location.as_deref(), Some("/events"));
    let cookie = g.set_cookie.unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    b.sign_in(&ctx.operator_key).await;
    let home = b.get("/").await;
    assert_eq!(home.status, 200);
    assert!(home.body.contains("operator-admin"));
    // Security headers on every page.
    let r = reqwest::Client::new()
        .get(ctx.url("/events"))
        .header(
            "cookie",
            format!("neocloud_session={}", b.session.clone().unwrap()),
        )
        .send()
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["cache-control"], "no-store");

    // Sign-out needs the session's token.
    let g = b.post("/sign-out", &[("csrf", "wrong")]).await;
    assert_eq!(g.status, 403);
    assert_eq!(b.get("/").await.status, 200, "still signed in");
    let token = Browser::csrf(&home.body);
    let g = b.post("/sign-out", &[("csrf", &token)]).await;
    assert_eq!(g.status, 303);
    assert!(g.set_cookie.unwrap().contains("Max-Age=0"));

    // A revoked key ends its sessions.
    let (tenant_key, key_id) = {
        let t = ctx.tenant("acme").await;
        ctx.key("tenant-admin", Some(t["id"].as_str().unwrap()))
            .await
    };
    let mut tb = Browser::new(&ctx);
    tb.sign_in(&tenant_key).await;
    assert_eq!(tb.get("/instances").await.status, 200);
    ctx.delete(&format!("/v1/api-keys/{key_id}"), &ctx.operator_key)
        .await
        .expect(200);
    let g = tb.get("/instances").await;
    assert_eq!(g.status, 303);
    assert!(g.set_cookie.unwrap().contains("Max-Age=0"));
});

/// Two tenants with a running instance each; returns (key A, instance A, key B, instance B).
async fn two_tenants(ctx: &TestContext) -> (String, String, String, String) {
    ctx.import(FLEET).await.expect(200);
    let mut out = Vec::new();
    for name in ["alpha", "beta"] {
        let t = ctx.tenant(name).await;
        let (key, _) = ctx
            .key("tenant-admin", Some(t["id"].as_str().unwrap()))
            .await;
        let i = ctx
            .post(
                "/v1/instances",
                &key,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 2, "name": format!("{name}-job")}),
            )
            .await
            .expect(201);
        assert_eq!(i["state"], "running");
        out.push((key, i["id"].as_str().unwrap().to_string()));
    }
    let (b, a) = (out.pop().unwrap(), out.pop().unwrap());
    (a.0, a.1, b.0, b.1)
}

both_backends!(a_tenant_sees_only_its_own, |ctx: TestContext| async move {
    let (key_a, inst_a, _key_b, inst_b) = two_tenants(&ctx).await;
    // Meter both (usage counts whole seconds) and invoice both, so every tenant page
    // has data.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for id in [&inst_a, &inst_b] {
        ctx.post(
            &format!("/v1/instances/{id}/terminate"),
            &ctx.operator_key,
            &json!({}),
        )
        .await;
    }
    let month = neocloud_types::Timestamp::now().to_string()[..7].to_string();
    let mut invoices = Vec::new();
    for t in ["alpha", "beta"] {
        let inv = ctx
            .post(
                "/v1/invoices",
                &ctx.operator_key,
                &json!({"tenant_id": t, "month": month}),
            )
            .await
            .expect(200);
        invoices.push(inv["id"].as_str().unwrap().to_string());
    }
    let mut b = Browser::new(&ctx);
    b.sign_in(&key_a).await;
    for page in ["/instances", "/usage", "/invoices", "/contracts"] {
        let g = b.get(page).await;
        assert_eq!(g.status, 200, "{page}");
        assert!(!g.body.contains(&inst_b), "{page} shows beta's instance");
        assert!(!g.body.contains("beta"), "{page} names beta");
        assert!(
            !g.body.contains(&invoices[1]),
            "{page} shows beta's invoice"
        );
    }
    assert!(b.get("/instances").await.body.contains(&inst_a));
    assert!(b.get("/usage").await.body.contains(&inst_a));
    assert!(b.get("/invoices").await.body.contains(&invoices[0]));
    // Another tenant's things read as not found.
    for page in [
        format!("/instances/{inst_b}"),
        format!("/invoices/{}", invoices[1]),
        format!("/invoices/{}/csv", invoices[1]),
    ] {
        let g = b.get(&page).await;
        assert_eq!(g.status, 404, "{page}");
        assert!(g.body.contains("not found"));
    }
    let g = b.get(&format!("/invoices/{}/csv", invoices[0])).await;
    assert_eq!(g.status, 200);
    assert!(g.body.starts_with("invoice,tenant_id,tenant,month,kind"));
    assert!(g.body.contains(&invoices[0]));
    // Names beside the ids: the tenant, and the site of each metered line.
    let line = g.body.lines().nth(1).unwrap();
    assert!(line.contains(",alpha,"), "{}", g.body);
    assert!(g.body.contains(",east,"), "{}", g.body);
    // Operator pages are not a tenant's.
    for page in ["/sites/east", "/nodes/e-p1-l1-n1", "/reports"] {
        assert_eq!(b.get(page).await.status, 403, "{page}");
    }
    // And a terminate of beta's instance changes nothing.
    let token = Browser::csrf(&b.get("/instances").await.body);
    let g = b
        .post(
            &format!("/instances/{inst_b}/terminate"),
            &[("csrf", &token)],
        )
        .await;
    assert_eq!(g.status, 404);
});

/// The launch form's fields for a 1-node shape of `gpus` GPUs.
fn launch_form(csrf: &str, gpus: &str, idem: &str, model: &str) -> Vec<(String, String)> {
    [
        ("csrf", csrf),
        ("idem", idem),
        ("gpu_model", model),
        ("class", "on-demand"),
        ("gpus", gpus),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

async fn post_launch(b: &Browser, form: &[(String, String)], headers: &[(&str, &str)]) -> Got {
    let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    b.post_with("/instances", &f, headers).await
}

fn listed(body: &str) -> usize {
    body.matches("data-instance=").count()
}

both_backends!(
    forms_refuse_cross_site_posts_and_bad_input,
    |ctx: TestContext| async move {
        let (key_a, inst_a, _, _) = two_tenants(&ctx).await;
        let mut b = Browser::new(&ctx);
        b.sign_in(&key_a).await;
        let token = Browser::csrf(&b.get("/instances").await.body);
        let origin = format!("http://{}", ctx.addr);
        let same = [("origin", origin.as_str())];
        let m = "H100-SXM-80GB";
        let before = listed(&b.get("/instances").await.body);
        // No token, a wrong token, another origin, a cross-site fetch: refused, nothing made.
        for (form, headers) in [
            (
                launch_form("", "1", "i1", m),
                vec![("origin", origin.as_str())],
            ),
            (
                launch_form("bad", "1", "i2", m),
                vec![("origin", origin.as_str())],
            ),
            (
                launch_form(&token, "1", "i3", m),
                vec![("origin", "http://evil.example")],
            ),
            (
                launch_form(&token, "1", "i4", m),
                vec![("sec-fetch-site", "cross-site")],
            ),
        ] {
            let g = post_launch(&b, &form, &headers).await;
            assert_eq!(g.status, 403, "{}", g.body);
        }
        assert_eq!(listed(&b.get("/instances").await.body), before);
        // Bad shapes come back with the reason, nothing made.
        for (gpus, why) in [
            ("3", "gpus must be 1, 2, 4 or 8"),
            ("-1", "gpus must be a whole number"),
            ("99999999999", "gpus must be a whole number"),
        ] {
            let g = post_launch(&b, &launch_form(&token, gpus, "bad", m), &same).await;
            assert_eq!(g.status, 400, "{gpus}: {}", g.body);
            assert!(g.body.contains(why), "{gpus}: {}", g.body);
        }
        let g = post_launch(&b, &launch_form(&token, "1", "u1", "Z-9000"), &same).await;
        assert!(g.status >= 400 && g.status < 500, "{}", g.body);
        assert!(g.body.contains("Z-9000"), "{}", g.body);
        assert_eq!(listed(&b.get("/instances").await.body), before);
        // A good launch, posted twice with the same form token, launches once.
        let g1 = post_launch(&b, &launch_form(&token, "1", "once", m), &same).await;
        assert_eq!(g1.status, 303, "{}", g1.body);
        let g2 = post_launch(&b, &launch_form(&token, "1", "once", m), &same).await;
        assert_eq!(g1.location, g2.location);
        assert_eq!(listed(&b.get("/instances").await.body), before + 1);
        let page = b.get(g1.location.as_deref().unwrap()).await;
        assert!(
            page.body.contains(r#"id="instance-state">running<"#),
            "{}",
            page.body
        );
        // Terminate with a stale token changes nothing; with the right one it ends.
        let g = b
            .post(
                &format!("/instances/{inst_a}/terminate"),
                &[("csrf", "stale")],
            )
            .await;
        assert_eq!(g.status, 403);
        let i = ctx
            .get(&format!("/v1/instances/{inst_a}"), &key_a)
            .await
            .expect(200);
        assert_eq!(i["state"], "running");
        let g = b
            .post(
                &format!("/instances/{inst_a}/terminate"),
                &[("csrf", &token)],
            )
            .await;
        assert_eq!(g.status, 303);
        let i = ctx
            .get(&format!("/v1/instances/{inst_a}"), &key_a)
            .await
            .expect(200);
        assert_ne!(i["state"], "running");
    }
);

both_backends!(
    the_topology_map_finds_every_node,
    |ctx: TestContext| async move {
        let (_, inst_a, _, _) = two_tenants(&ctx).await;
        let mut b = Browser::new(&ctx);
        b.sign_in(&ctx.operator_key).await;
        let g = b.get("/sites/east").await;
        assert_eq!(g.status, 200);
        assert!(g.body.contains(r#"<svg id="topology""#));
        // 8 nodes: each is one square in one of the state paths.
        assert_eq!(g.body.matches("h4v4h-4z").count(), 8);
        assert!(
            g.body.contains(r#"class="st-partial""#),
            "alpha and beta hold 2 GPUs each"
        );
        assert!(g.body.contains("<title>e-p1/e-p1-l2</title>"));
        let by_tenant = b.get("/sites/east?color=tenant").await.body;
        assert!(by_tenant.contains("alpha") && by_tenant.contains("beta"));
        assert!(by_tenant.contains(r#"class="t0""#) && by_tenant.contains(r#"class="t1""#));
        // The first square of the first row is the first node; a point off the map goes
        // back to the map.
        let g = b.get("/sites/east/at?x=1&y=15").await;
        assert_eq!(g.status, 303);
        assert_eq!(g.location.as_deref(), Some("/nodes/e-p1-l1-n1"));
        // Find a node: an exact name opens it; part of a name or block lists the matches;
        // nothing matching is said; the map stays.
        let g = b.get("/sites/east?find=e-p1-l1-n1").await;
        assert_eq!(g.status, 303);
        assert_eq!(g.location.as_deref(), Some("/nodes/e-p1-l1-n1"));
        let g = b.get("/sites/east?find=e-p1-l2").await;
        assert_eq!(g.status, 200);
        assert!(g.body.contains(r#"id="find-many""#), "{}", g.body);
        assert!(g.body.contains(r#"href="/nodes/e-p1-l2-n4""#), "{}", g.body);
        let g = b.get("/sites/east?find=nothing-like-it").await;
        assert!(g.body.contains(r#"id="find-none""#) && g.body.contains(r#"id="topology""#));
        assert_eq!(
            b.get(&format!("/sites/east?find={}", "x".repeat(300)))
                .await
                .status,
            400
        );
        let g = b.get("/sites/east/at?x=5000&y=5000").await;
        assert_eq!(g.location.as_deref(), Some("/sites/east"));
        let node = b.get("/nodes/e-p1-l1-n1").await.body;
        assert!(node.contains("Health history"));
        // What runs on it: alpha's instance, on the GPUs it holds, with its tenant's name.
        let a = ctx
            .get(&format!("/v1/instances/{inst_a}"), &ctx.operator_key)
            .await
            .expect(200);
        let host = a["placement"][0]["node"].as_str().unwrap();
        let held = b.get(&format!("/nodes/{host}")).await.body;
        assert!(held.contains(r#"id="work""#), "{held}");
        assert!(held.contains(&format!("/instances/{inst_a}")), "{held}");
        assert!(
            held.contains("alpha") && held.contains("whole GPUs"),
            "{held}"
        );
        // No agent: said so, not a blank.
        assert!(node.contains("never: no agent"), "{node}");
        // Only the operations that apply to an available node.
        assert!(node.contains(r#"id="op-cordon""#) && node.contains(r#"id="op-drain""#));
        assert!(!node.contains(r#"id="op-uncordon""#));
        assert!(!node.contains(r#"id="op-repair-complete""#));
        // Nothing needs attention yet.
        let pr = b.get("/problems").await;
        assert_eq!(pr.status, 200);
        assert!(pr.body.contains(r#"id="no-problems""#), "{}", pr.body);
        // Agent coverage per site: no node of east has an agent.
        assert!(pr.body.contains(r#"id="coverage""#), "{}", pr.body);
        assert!(pr.body.contains("0 (0.0%)"), "{}", pr.body);
        let home = b.get("/").await.body;
        assert!(home.contains(r#"id="business""#) && home.contains("sold % of sellable"));
        assert!(home.contains(r#"id="fleet-healthy""#), "{home}");
        // Bad input is a clear 4xx page.
        let g = b.get("/sites/nowhere").await;
        assert_eq!(g.status, 404);
        // The error page keeps the signed-in navigation.
        assert!(g.body.contains(r#"href="/problems""#), "{}", g.body);
        assert!(g.body.contains("nowhere") && g.body.contains(r#"id="sign-out""#));
        let g = b.get("/sites/east?color=rainbow").await;
        assert_eq!(g.status, 400);
        assert!(g.body.contains("color must be"));
        assert_eq!(b.get("/sites/east/at?x=-1&y=a").await.status, 400);
        // Cordon from the node page, as an operator form.
        let token = Browser::csrf(&node);
        let g = b
            .post(
                "/nodes/e-p1-l1-n1/cordon",
                &[("csrf", &token), ("reason", "fan")],
            )
            .await;
        assert_eq!(g.status, 303);
        let node = b.get("/nodes/e-p1-l1-n1").await.body;
        assert!(node.contains(r#"id="node-state">cordoned<"#));
        assert!(node.contains(r#"id="op-uncordon""#) && node.contains(r#"id="op-drain""#));
        assert!(!node.contains(r#"id="op-cordon""#));
        // The problems view lists it, counted per site and state, linked, with its reason.
        let pr = b.get("/problems").await.body;
        assert!(pr.contains(r#"id="problem-counts""#), "{pr}");
        assert!(
            pr.contains(r#"href="/problems?site=east&amp;state=cordoned""#),
            "{pr}"
        );
        assert!(
            pr.contains(r#"href="/nodes/e-p1-l1-n1""#) && pr.contains("fan"),
            "{pr}"
        );
        let home = b.get("/").await.body;
        assert!(home.contains(r#"id="fleet-problems""#), "{home}");
        assert!(home.contains("east: 1 cordoned"), "{home}");
        let only = b.get("/problems?state=failed").await.body;
        assert!(!only.contains(r#"href="/nodes/e-p1-l1-n1""#), "{only}");
        let g = b.get("/problems?state=sideways").await;
        assert_eq!(g.status, 400);
        assert!(g.body.contains("no node state"), "{}", g.body);
        let g = b
            .post("/nodes/e-p1-l1-n1/explode", &[("csrf", &token)])
            .await;
        assert_eq!(g.status, 404);
        let _ = inst_a;
    }
);

both_backends!(
    the_launch_form_sells_shares_and_mig_instances,
    |ctx: TestContext| async move {
        let (key_a, _, _, _) = two_tenants(&ctx).await;
        let mut b = Browser::new(&ctx);
        b.sign_in(&key_a).await;
        let form = b.get("/instances").await.body;
        assert!(form.contains(r#"name="share""#) && form.contains(r#"name="mig""#));
        let token = Browser::csrf(&form);
        let origin = format!("http://{}", ctx.addr);
        let same = [("origin", origin.as_str())];
        let m = "H100-SXM-80GB";
        let with = |extra: (&str, &str), idem: &str| {
            let mut f = launch_form(&token, "", idem, m);
            f.push((extra.0.to_string(), extra.1.to_string()));
            f
        };
        let before = listed(&b.get("/instances").await.body);
        // Bad slices come back with the reason, nothing made.
        for (extra, why) in [
            (("share", "0"), "1 to 1000"),
            (("share", "1001"), "1 to 1000"),
            (("mig", "9g.99gb"), "MIG profile"),
            (("mig", "1g.5gb"), "not one of"),
        ] {
            let g = post_launch(&b, &with(extra, "bad"), &same).await;
            assert!(g.status >= 400 && g.status < 500, "{extra:?}: {}", g.body);
            assert!(g.body.contains(why), "{extra:?}: {}", g.body);
        }
        assert_eq!(listed(&b.get("/instances").await.body), before);
        // A quarter of a GPU and a MIG instance launch and show what they hold.
        let g = post_launch(&b, &with(("share", "250"), "s1"), &same).await;
        assert_eq!(g.status, 303, "{}", g.body);
        let page = b.get(g.location.as_deref().unwrap()).await.body;
        assert!(page.contains("0.250 of a GPU"), "{page}");
        assert!(page.contains(r#"id="instance-state">running<"#), "{page}");
        let g = post_launch(&b, &with(("mig", "3g.40gb"), "m1"), &same).await;
        assert_eq!(g.status, 303, "{}", g.body);
        let page = b.get(g.location.as_deref().unwrap()).await.body;
        assert!(page.contains("MIG 3g.40gb"), "{page}");
        let list = b.get("/instances").await.body;
        assert_eq!(listed(&list), before + 2);
        assert!(list.contains("0.250 of a GPU") && list.contains("MIG 3g.40gb"));
    }
);

/// The page of a large gang: its blocks first, with the node out of service named; the node
/// list folded; Terminate above the fold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_gang_page_is_summarised() {
    let Some(g) = crate::gang_repair::Gang::start(crate::ctx::Db::Sqlite).await else {
        return;
    };
    let inst = g
        .launch(json!({"gpu_model": "H100-SXM-80GB", "nodes": 30, "gang_level": "pod"}))
        .await;
    let id = inst["id"].as_str().unwrap();
    let nodes = crate::gang_repair::nodes(&inst);
    let odd = nodes.last().unwrap();
    g.ctx
        .post(
            &format!("/v1/nodes/{odd}/cordon"),
            &g.ctx.operator_key,
            &json!({"reason": "fan"}),
        )
        .await
        .expect(200);
    let mut b = Browser::new(&g.ctx);
    b.sign_in(&g.ctx.operator_key).await;
    let page = b.get(&format!("/instances/{id}")).await.body;
    assert!(page.contains(r#"id="placement-blocks""#), "{page}");
    assert!(page.contains("30 nodes in 2 blocks"), "{page}");
    assert!(page.contains(&format!("{odd}</a> (cordoned)")), "{page}");
    assert!(page.contains(r#"<details id="placement-nodes">"#), "{page}");
    let terminate = page.find(r#"id="terminate""#).unwrap();
    assert!(terminate < page.find(r#"id="placement-blocks""#).unwrap());
    // A tenant sees the same summary, without links to nodes.
    let mut t = Browser::new(&g.ctx);
    t.sign_in(&g.key).await;
    let page = t.get(&format!("/instances/{id}")).await.body;
    assert!(page.contains("30 nodes in 2 blocks"), "{page}");
    assert!(page.contains(&format!("{odd} (cordoned)")), "{page}");
    assert!(!page.contains("/nodes/"), "{page}");
}

/// A contract's page: its terms, pool and work, outages and availability, its events;
/// linked from the list and from the audit trail; another tenant's is not found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contract_has_its_own_page() {
    let ctx = TestContext::start(crate::ctx::Db::Sqlite).await;
    let (key_a, _, key_b, _) = two_tenants(&ctx).await;
    let now = neocloud_types::Timestamp::now();
    let c = ctx
        .post(
            "/v1/contracts",
            &key_a,
            &json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 16, "site": "east",
                    "start_at": now.to_string(),
                    "end_at": now.plus_seconds(30 * 86_400).to_string()}),
        )
        .await
        .expect(201);
    let cid = c["id"].as_str().unwrap().to_string();
    let i = ctx
        .post(
            "/v1/instances",
            &key_a,
            &json!({"class": "reserved", "contract_id": cid, "gpu_model": "H100-SXM-80GB",
                    "gpus": 8, "name": "train-1"}),
        )
        .await
        .expect(201);
    let iid = i["id"].as_str().unwrap();
    let mut b = Browser::new(&ctx);
    b.sign_in(&key_a).await;
    let list = b.get("/contracts").await.body;
    assert!(
        list.contains(&format!(r#"href="/contracts/{cid}""#)),
        "{list}"
    );
    let page = b.get(&format!("/contracts/{cid}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let page = page.body;
    assert!(
        page.contains("2 nodes pinned, 16 of the 16 GPUs promised"),
        "{page}"
    );
    assert!(page.contains(&format!("/instances/{iid}")) && page.contains("train-1"));
    assert!(page.contains(r#"id="no-outages""#) && page.contains("Availability so far"));
    assert!(page.contains(r#"id="no-credits""#), "{page}");
    assert!(page.contains(r#"id="contract-calendar""#), "{page}");
    assert!(page.contains(&format!("/events?resource={cid}")));
    // The tenant has its audit trail in the navigation; the contract's events link back.
    assert!(page.contains(r#"href="/events""#), "{page}");
    let ev = b.get(&format!("/events?resource={cid}")).await.body;
    assert!(ev.contains(&format!(r#"href="/contracts/{cid}""#)), "{ev}");
    // Before/after is indented JSON, not one line.
    assert!(ev.contains("{\n  &quot;"), "{ev}");
    // Another tenant's contract is not found, and unknown ids too.
    let mut other = Browser::new(&ctx);
    other.sign_in(&key_b).await;
    assert_eq!(other.get(&format!("/contracts/{cid}")).await.status, 404);
    assert_eq!(
        b.get("/contracts/ctr_00000000000000000000000000")
            .await
            .status,
        404
    );
}

/// A running instance's page says what it costs now and so far; the usage page lists what
/// running instances have run up, for the tenant's own instances only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_instances_show_their_cost() {
    let ctx = TestContext::start(crate::ctx::Db::Sqlite).await;
    let (key_a, inst_a, _key_b, inst_b) = two_tenants(&ctx).await;
    // Usage counts whole seconds.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let mut b = Browser::new(&ctx);
    b.sign_in(&key_a).await;
    let page = b.get(&format!("/instances/{inst_a}")).await.body;
    assert!(page.contains(r#"id="instance-rate""#), "{page}");
    assert!(
        page.contains("per GPU-hour") && page.contains("× 2 GPUs"),
        "{page}"
    );
    assert!(page.contains(r#"id="instance-cost""#), "{page}");
    assert!(page.contains("Running, not yet metered"), "{page}");
    let usage = b.get("/usage").await.body;
    assert!(usage.contains(r#"id="usage-running""#), "{usage}");
    assert!(usage.contains(&inst_a), "{usage}");
    assert!(
        !usage.contains(&inst_b),
        "another tenant's instance: {usage}"
    );
    assert!(usage.contains(">whole<"), "{usage}");
    // Instances are named where they have a name.
    assert!(usage.contains("alpha-job"), "{usage}");
}

/// Operators see tenants with their quotas, keys and invoices, and generate and finalize
/// invoices from the console; a double submit generates once; tenants cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_manage_tenants_and_invoices() {
    let ctx = TestContext::start(crate::ctx::Db::Sqlite).await;
    let (key_a, _, _, _) = two_tenants(&ctx).await;
    let alpha = ctx
        .get("/v1/tenants/alpha", &ctx.operator_key)
        .await
        .expect(200);
    let alpha_id = alpha["id"].as_str().unwrap().to_string();
    let mut b = Browser::new(&ctx);
    b.sign_in(&ctx.operator_key).await;
    let list = b.get("/tenants").await.body;
    assert!(list.contains(r#"href="/tenants/alpha""#) && list.contains(r#"href="/tenants/beta""#));
    let page = b.get("/tenants/alpha").await.body;
    assert!(
        page.contains(r#"id="keys""#) && page.contains("tenant-admin"),
        "{page}"
    );
    assert!(page.contains(r#"id="no-invoices""#), "{page}");
    assert!(page.contains("/events?tenant=alpha"), "{page}");
    assert_eq!(b.get("/tenants/nobody").await.status, 404);
    // Generate this month's invoice from the form; the same form again replays.
    let form = b.get("/invoices").await.body;
    assert!(form.contains(r#"id="generate""#), "{form}");
    let token = Browser::csrf(&form);
    // Last month: over, so it can be finalized.
    let month = neocloud_billing::Month::containing(neocloud_types::Timestamp::now())
        .prev()
        .to_string();
    let origin = format!("http://{}", ctx.addr);
    let fields = [
        ("csrf", token.as_str()),
        ("tenant", alpha_id.as_str()),
        ("month", month.as_str()),
        ("idem", "console-test-1"),
    ];
    let g = b
        .post_with("/invoices", &fields, &[("origin", origin.as_str())])
        .await;
    assert_eq!(g.status, 303, "{}", g.body);
    let at = g.location.clone().unwrap();
    assert!(at.starts_with("/invoices/"), "{at}");
    let again = b
        .post_with("/invoices", &fields, &[("origin", origin.as_str())])
        .await;
    assert_eq!(again.location.as_deref(), Some(at.as_str()));
    let inv = b.get(&at).await.body;
    assert!(inv.contains(r#"id="finalize""#), "{inv}");
    let g = b
        .post_with(
            &format!("{at}/finalize"),
            &[("csrf", token.as_str())],
            &[("origin", origin.as_str())],
        )
        .await;
    assert_eq!(g.status, 303, "{}", g.body);
    let inv = b.get(&at).await.body;
    assert!(inv.contains(r#"id="invoice-state">finalized<"#), "{inv}");
    assert!(!inv.contains(r#"id="finalize""#));
    assert!(
        b.get("/tenants/alpha")
            .await
            .body
            .contains(r#"id="tenant-invoices""#)
    );
    // A tenant has no such form, and its post is refused.
    let mut t = Browser::new(&ctx);
    t.sign_in(&key_a).await;
    let mine = t.get("/invoices").await.body;
    assert!(!mine.contains(r#"id="generate""#));
    let tt = Browser::csrf(&mine);
    let g = t
        .post_with(
            "/invoices",
            &[
                ("csrf", tt.as_str()),
                ("tenant", alpha_id.as_str()),
                ("month", month.as_str()),
            ],
            &[("origin", origin.as_str())],
        )
        .await;
    assert_eq!(g.status, 403, "{}", g.body);
}

/// Operator admins set a tenant's quota, create a key (its secret shown once) and revoke
/// it from the tenant's page; bad input is said on the page and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_set_quotas_and_manage_keys() {
    let ctx = TestContext::start(crate::ctx::Db::Sqlite).await;
    two_tenants(&ctx).await;
    let mut b = Browser::new(&ctx);
    b.sign_in(&ctx.operator_key).await;
    let page = b.get("/tenants/alpha").await.body;
    assert!(page.contains(r#"id="set-quota""#) && page.contains(r#"id="create-key""#));
    let token = Browser::csrf(&page);
    let quota = |max: &'static str| {
        [
            ("csrf", token.clone()),
            ("gpu_model", "H100-SXM-80GB".to_string()),
            ("class", "on-demand".to_string()),
            ("max_gpus", max.to_string()),
        ]
    };
    let post = async |path: &str, form: &[(&str, String)]| {
        let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        b.post(path, &f).await
    };
    let g = post("/tenants/alpha/quota", &quota("16")).await;
    assert_eq!(g.status, 303, "{}", g.body);
    let q = ctx
        .get("/v1/quotas?tenant=alpha", &ctx.operator_key)
        .await
        .expect(200);
    assert_eq!(q["items"][0]["max_gpus"], 16, "{q}");
    // Not a number: said on the page, nothing changed.
    let g = post("/tenants/alpha/quota", &quota("lots")).await;
    assert_eq!(g.status, 400);
    assert!(g.body.contains("not a whole number"), "{}", g.body);
    let q = ctx
        .get("/v1/quotas?tenant=alpha", &ctx.operator_key)
        .await
        .expect(200);
    assert_eq!(q["items"][0]["max_gpus"], 16);
    // A key: the secret is on the page once, and it works.
    let form = [
        ("csrf", token.clone()),
        ("name", "ci-deploy".to_string()),
        ("role", "tenant-member".to_string()),
        ("idem", "console-key-1".to_string()),
    ];
    let g = post("/tenants/alpha/keys", &form).await;
    assert_eq!(g.status, 200, "{}", g.body);
    assert!(g.body.contains(r#"id="new-secret""#), "{}", g.body);
    let secret = g
        .body
        .split("<pre>")
        .nth(1)
        .unwrap()
        .split("</pre>")
        .next()
        .unwrap();
    ctx.get("/v1/instances", secret).await.expect(200);
    // The same form again: no second key, no secret.
    let again = post("/tenants/alpha/keys", &form).await;
    assert_eq!(again.status, 303);
    let page = b.get("/tenants/alpha").await.body;
    assert_eq!(page.matches(">ci-deploy<").count(), 1, "{page}");
    // Revoke it: it stops working.
    let keys = ctx
        .get("/v1/api-keys?tenant=alpha", &ctx.operator_key)
        .await
        .expect(200);
    let kid = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "ci-deploy")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let g = post(
        &format!("/tenants/alpha/keys/{kid}/revoke"),
        &[("csrf", token.clone())],
    )
    .await;
    assert_eq!(g.status, 303, "{}", g.body);
    ctx.get("/v1/instances", secret).await.expect(401);
}
