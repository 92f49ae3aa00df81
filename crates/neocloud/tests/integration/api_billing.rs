//! The price book and the usage ledger through HTTP, on both databases.

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::ctx::TestContext;

/// Two 8-GPU H100 nodes in one site (also used by the input tests).
pub(crate) const FLEET: &str = r#"
[[sites]]
name = "east"
region = "us-east"
power_mw = 1
[[sites.nodes]]
name = "e1"
gpu_model = "H100-SXM-80GB"
gpus = 8
[[sites.nodes]]
name = "e2"
gpu_model = "H100-SXM-80GB"
gpus = 8
"#;

fn secs(ts: &Value) -> i64 {
    let t: neocloud_types::Timestamp = ts.as_str().unwrap().parse().unwrap();
    t.micros().div_euclid(1_000_000)
}

both_backends!(
    the_price_book_is_seeded_and_guarded,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        let t = ctx.tenant("acme").await;
        let (tk, _) = ctx.key("tenant-member", t["id"].as_str()).await;
        // Seeded defaults, readable by tenants.
        let book = ctx
            .get("/v1/prices?gpu_model=H100-SXM-80GB", &tk)
            .await
            .expect(200);
        let od = book["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["kind"] == "on-demand")
            .unwrap()
            .clone();
        assert_eq!(od["price_per_gpu_hour"], "3");
        assert_eq!(book["items"].as_array().unwrap().len(), 7);
        // Bad prices change nothing.
        let now = neocloud_types::Timestamp::now();
        for (bad, status, code) in [
            (
                json!({"gpu_model": "H100-SXM-80GB", "kind": "on-demand", "price_per_gpu_hour": "-1"}),
                400,
                "invalid_request",
            ),
            (
                json!({"gpu_model": "H100-SXM-80GB", "kind": "on-demand", "price_per_gpu_hour": "abc"}),
                400,
                "invalid_request",
            ),
            (
                json!({"gpu_model": "H100-SXM-80GB", "kind": "on-demand", "price_per_gpu_hour": 2.5}),
                400,
                "invalid_request",
            ),
            (
                json!({"gpu_model": "H100-SXM-80GB", "kind": "gold", "price_per_gpu_hour": "2"}),
                400,
                "invalid_request",
            ),
            (
                json!({"gpu_model": "H900", "kind": "on-demand", "price_per_gpu_hour": "2"}),
                400,
                "invalid_request",
            ),
            (
                json!({"gpu_model": "H100-SXM-80GB", "kind": "on-demand", "price_per_gpu_hour": "2", "effective_from": now.plus_seconds(-86400).to_string()}),
                400,
                "invalid_request",
            ),
        ] {
            ctx.post("/v1/prices", &k, &bad).await.problem(status, code);
        }
        ctx.post(
            "/v1/prices",
            &tk,
            &json!({"gpu_model": "H100-SXM-80GB", "kind": "on-demand", "price_per_gpu_hour": "2"}),
        )
        .await
        .problem(403, "forbidden");
        let later = now.plus_seconds(86400).to_string();
        let p = json!({"gpu_model": "H100-SXM-80GB", "kind": "on-demand", "price_per_gpu_hour": "2.85", "effective_from": later});
        ctx.post("/v1/prices", &k, &p).await.expect(201);
        ctx.post("/v1/prices", &k, &p)
            .await
            .problem(409, "conflict");
        let book = ctx
            .get("/v1/prices?gpu_model=H100-SXM-80GB", &k)
            .await
            .expect(200);
        assert_eq!(book["items"].as_array().unwrap().len(), 8);
    }
);

both_backends!(
    usage_is_metered_to_the_second_when_an_instance_stops,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        ctx.import(FLEET).await.expect(200);
        let a = ctx.tenant("acme").await;
        let b = ctx.tenant("bravo").await;
        let (ka, _) = ctx.key("tenant-admin", a["id"].as_str()).await;
        let (kb, _) = ctx.key("tenant-admin", b["id"].as_str()).await;
        let i = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}),
            )
            .await
            .expect(201);
        let id = i["id"].as_str().unwrap().to_string();
        // Nothing is metered while it runs...
        let u = ctx.get("/v1/usage", &ka).await.expect(200);
        assert_eq!(u["items"].as_array().unwrap().len(), 0);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        // ...and everything when it stops.
        let t = ctx
            .post(&format!("/v1/instances/{id}/terminate"), &ka, &json!({}))
            .await
            .expect(200);
        let u = ctx.get("/v1/usage", &ka).await.expect(200);
        let recs = u["items"].as_array().unwrap();
        assert_eq!(recs.len(), 1, "{u}");
        let r = &recs[0];
        let seconds = secs(&t["ended_at"]) - secs(&t["started_at"]);
        assert!(seconds >= 1);
        assert_eq!(r["gpu_seconds"], 8 * seconds);
        assert_eq!(r["rate"], "3");
        assert_eq!(r["class"], "on-demand");
        // 8 GPUs × s seconds × $3/GPU-hour, in micro-dollars, rounded half to even.
        let num = 8 * seconds * 3_000_000;
        let (q, rem) = (num / 3600, num % 3600);
        let q = if 2 * rem > 3600 || (2 * rem == 3600 && q % 2 == 1) {
            q + 1
        } else {
            q
        };
        let expected = neocloud_types::Money::from_micros(q);
        assert_eq!(r["amount"], expected.to_string());
        // Terminating again (a replayed state change) adds nothing.
        ctx.post(&format!("/v1/instances/{id}/terminate"), &ka, &json!({}))
            .await
            .expect(200);
        assert_eq!(
            ctx.get("/v1/usage", &ka).await.expect(200)["items"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // Tenants see only their own usage; operators filter by tenant; CSV export.
        assert_eq!(
            ctx.get("/v1/usage", &kb).await.expect(200)["items"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
        ctx.get("/v1/usage?tenant=acme", &kb)
            .await
            .problem(404, "not_found");
        let all = ctx.get("/v1/usage?tenant=acme", &k).await.expect(200);
        assert_eq!(all["items"].as_array().unwrap().len(), 1);
        ctx.get("/v1/usage?month=2026-13", &k)
            .await
            .problem(400, "invalid_request");
        ctx.get("/v1/usage?format=xml", &k)
            .await
            .problem(400, "invalid_request");
        let csv = ctx
            .send(Method::GET, "/v1/usage?format=csv", Some(&ka), None, &[])
            .await;
        assert_eq!(
            csv.headers.get("content-type").unwrap(),
            "text/csv; charset=utf-8"
        );
        let text = csv.body.as_str().unwrap().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("instance_id,tenant_id,"));
        assert!(lines[0].contains(",gpus,gpu_milli,month,"), "{text}");
        assert!(
            lines[0].starts_with("instance_id,tenant_id,tenant,class,"),
            "{text}"
        );
        assert!(lines[1].contains(",acme,"), "names beside ids: {text}");
        assert!(lines[1].starts_with(&id));
        // Whole GPUs: the part column is empty, and every row has every column.
        let cols = lines[0].split(',').count();
        assert_eq!(lines[1].split(',').count(), cols, "{text}");
    }
);

both_backends!(
    preempted_spot_is_metered_at_the_spot_price,
    |ctx: TestContext| async move {
        ctx.import(FLEET).await.expect(200);
        let a = ctx.tenant("acme").await;
        let b = ctx.tenant("bravo").await;
        let (ka, _) = ctx.key("tenant-admin", a["id"].as_str()).await;
        let (kb, _) = ctx.key("tenant-admin", b["id"].as_str()).await;
        let s = ctx
            .post(
                "/v1/instances",
                &kb,
                &json!({"gpu_model": "H100-SXM-80GB", "nodes": 2, "class": "spot"}),
            )
            .await
            .expect(201);
        ctx.post(
            "/v1/instances",
            &ka,
            &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}),
        )
        .await
        .expect(201);
        let s = ctx
            .get(&format!("/v1/instances/{}", s["id"].as_str().unwrap()), &kb)
            .await
            .expect(200);
        let deadline: neocloud_types::Timestamp =
            s["preempt_at"].as_str().unwrap().parse().unwrap();
        ctx.svc.tick(deadline).await.unwrap();
        let u = ctx.get("/v1/usage", &kb).await.expect(200);
        let r = &u["items"][0];
        assert_eq!(r["class"], "spot");
        assert_eq!(r["gpus"], 16);
        assert_eq!(r["rate"], "0.9", "spot floor: 30% of the $3.00 list price");
        let ended = ctx
            .get(&format!("/v1/instances/{}", s["id"].as_str().unwrap()), &kb)
            .await
            .expect(200);
        assert_eq!(
            r["gpu_seconds"],
            16 * (secs(&ended["ended_at"]) - secs(&ended["started_at"]))
        );
    }
);

both_backends!(
    quotes_price_from_the_book_and_signed_rates_stay,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        ctx.import(FLEET).await.expect(200);
        ctx.tenant("acme").await;
        let now = neocloud_types::Timestamp::now();
        let terms = |n: u32| json!({"tenant_id": "acme", "gpu_model": "H100-SXM-80GB", "gpu_count": n, "start_at": now.to_string(), "end_at": now.plus_seconds(400 * 86400).to_string(), "site": "east"});
        let c = ctx.post("/v1/contracts", &k, &terms(8)).await.expect(201);
        assert_eq!(
            c["price_per_gpu_hour"], "2.25",
            "1-3 years: 25% off the $3.00 list"
        );
        // A new 1-3 year price for east only, in force from now.
        ctx.post("/v1/prices", &k, &json!({"gpu_model": "H100-SXM-80GB", "site": "east", "kind": "reserved-1-3y", "price_per_gpu_hour": "2.05"}))
        .await
        .expect(201);
        // A quote starting after the change gets the new price.
        let later = neocloud_types::Timestamp::now().plus_seconds(60);
        let q = ctx
        .post("/v1/quotes", &k, &json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 8, "start_at": later.to_string(), "end_at": later.plus_seconds(400 * 86400).to_string(), "site": "east"}))
        .await
        .expect(200);
        assert_eq!(q["price_per_gpu_hour"], "2.05");
        // The signed contract keeps its rate.
        let again = ctx
            .get(&format!("/v1/contracts/{}", c["id"].as_str().unwrap()), &k)
            .await
            .expect(200);
        assert_eq!(again["price_per_gpu_hour"], "2.25");
    }
);

fn cents_half_even(micros: i128) -> i128 {
    let (q, r) = (micros.div_euclid(10_000), micros.rem_euclid(10_000));
    let q = if r > 5_000 || (r == 5_000 && q % 2 != 0) {
        q + 1
    } else {
        q
    };
    q * 10_000
}

both_backends!(
    monthly_invoices_from_contracts_ledger_and_downtime,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        ctx.import(FLEET).await.expect(200);
        let a = ctx.tenant("acme").await;
        let b = ctx.tenant("bravo").await;
        let (ka, _) = ctx.key("tenant-admin", a["id"].as_str()).await;
        let (kb, _) = ctx.key("tenant-admin", b["id"].as_str()).await;
        let now = neocloud_types::Timestamp::now();
        let c = ctx
        .post("/v1/contracts", &k, &json!({"tenant_id": "acme", "gpu_model": "H100-SXM-80GB", "gpu_count": 8, "start_at": now.to_string(), "end_at": now.plus_seconds(400 * 86400).to_string(), "site": "east", "sla_percent": "99.9"}))
        .await
        .expect(201);
        let start: neocloud_types::Timestamp = c["start_at"].as_str().unwrap().parse().unwrap();
        // Some on-demand usage by acme on the other node.
        let i = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 4}),
            )
            .await
            .expect(201);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        ctx.post(
            &format!("/v1/instances/{}/terminate", i["id"].as_str().unwrap()),
            &ka,
            &json!({}),
        )
        .await
        .expect(200);
        let month = {
            let s = now.to_string();
            s[..7].to_string()
        };
        // Bad requests.
        ctx.post(
            "/v1/invoices",
            &k,
            &json!({"tenant_id": "acme", "month": "2026-13"}),
        )
        .await
        .problem(400, "invalid_request");
        ctx.post(
            "/v1/invoices",
            &k,
            &json!({"tenant_id": "acme", "month": "2999-01"}),
        )
        .await
        .problem(400, "invalid_request");
        ctx.post(
            "/v1/invoices",
            &ka,
            &json!({"tenant_id": "acme", "month": month}),
        )
        .await
        .problem(403, "forbidden");
        // The draft for this month.
        let inv = ctx
            .post(
                "/v1/invoices",
                &k,
                &json!({"tenant_id": "acme", "month": month}),
            )
            .await
            .expect(200);
        assert_eq!(inv["state"], "draft");
        let lines = inv["lines"].as_array().unwrap();
        let commit = lines.iter().find(|l| l["kind"] == "commitment").unwrap();
        // Take-or-pay: 8 GPUs × the rest of the month × $2.25/GPU-hour, rounded to the cent once.
        let month_end = {
            let m: neocloud_billing::period::Month = month.parse().unwrap();
            m.end()
        };
        // Invoices count whole seconds: the start is rounded down to its second.
        let secs = month_end.micros().div_euclid(1_000_000) - start.micros().div_euclid(1_000_000);
        let exact = 8i128 * i128::from(secs) * 2_250_000 / 3_600;
        let expected =
            neocloud_types::Money::from_micros(i64::try_from(cents_half_even(exact)).unwrap());
        assert_eq!(commit["amount"], expected.to_string(), "{inv}");
        let od = lines.iter().find(|l| l["kind"] == "on-demand").unwrap();
        let usage = ctx.get("/v1/usage?tenant=acme", &k).await.expect(200);
        let used: i64 = usage["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                u["amount"]
                    .as_str()
                    .unwrap()
                    .parse::<neocloud_types::Money>()
                    .unwrap()
                    .micros()
            })
            .sum();
        assert_eq!(
            od["amount"],
            neocloud_types::Money::from_micros(
                i64::try_from(cents_half_even(i128::from(used))).unwrap()
            )
            .to_string()
        );
        // Tenants read their own invoice, not another's.
        let id = inv["id"].as_str().unwrap();
        ctx.get(&format!("/v1/invoices/{id}"), &ka)
            .await
            .expect(200);
        ctx.get(&format!("/v1/invoices/{id}"), &kb)
            .await
            .problem(404, "not_found");
        assert_eq!(
            ctx.get("/v1/invoices", &kb).await.expect(200)["items"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
        // Regenerating reproduces the same totals under the same id.
        let again = ctx
            .post(
                "/v1/invoices",
                &k,
                &json!({"tenant_id": "acme", "month": month}),
            )
            .await
            .expect(200);
        assert_eq!(again["id"], inv["id"]);
        assert_eq!(again["total"], inv["total"]);
        assert_eq!(again["lines"], inv["lines"]);
        // Downtime of all 8 GPUs for a day breaks the 99.9% SLA: a credit line appears.
        let cid = c["id"].as_str().unwrap();
        let dt = |body: Value| {
            let ctx = &ctx;
            let k = k.clone();
            async move {
                ctx.post(&format!("/v1/contracts/{cid}/downtime"), &k, &body)
                    .await
            }
        };
        dt(json!({"start_at": start.plus_seconds(60).to_string(), "end_at": start.to_string(), "gpus": 8})).await.problem(400, "invalid_request");
        dt(json!({"start_at": start.to_string(), "end_at": start.plus_seconds(60).to_string(), "gpus": 9})).await.problem(400, "invalid_request");
        let end = start.plus_seconds(86400).min(month_end);
        dt(json!({"start_at": start.to_string(), "end_at": end.to_string(), "gpus": 8, "note": "leaf switch"})).await.expect(204);
        let inv = ctx
            .post(
                "/v1/invoices",
                &k,
                &json!({"tenant_id": "acme", "month": month}),
            )
            .await
            .expect(200);
        let credit = inv["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["kind"] == "sla-credit")
            .expect("a credit line")
            .clone();
        let credit_amount: neocloud_types::Money =
            credit["amount"].as_str().unwrap().parse().unwrap();
        assert!(credit_amount < neocloud_types::Money::ZERO);
        let sum: i64 = inv["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                l["amount"]
                    .as_str()
                    .unwrap()
                    .parse::<neocloud_types::Money>()
                    .unwrap()
                    .micros()
            })
            .sum();
        assert_eq!(
            inv["total"],
            neocloud_types::Money::from_micros(sum).to_string()
        );
        // The month is not over: it cannot be finalized yet.
        ctx.post(&format!("/v1/invoices/{id}/finalize"), &k, &json!({}))
            .await
            .problem(400, "invalid_request");
    }
);

both_backends!(
    the_memphis_backlog_and_invoice_match_the_contract,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        ctx.import(&neocloud_fleet::demo_fleet_toml(0.01).unwrap())
            .await
            .expect(200);
        ctx.tenant("frontier-lab").await;
        let now = neocloud_types::Timestamp::now();
        let end = now.plus_seconds(3 * 365 * 86400);
        let c = ctx
        .post("/v1/contracts", &k, &json!({"tenant_id": "frontier-lab", "gpu_model": "H100-SXM-80GB", "gpu_count": 2152, "start_at": now.to_string(), "end_at": end.to_string(), "site": "memphis-1", "sla_percent": "99.9"}))
        .await
        .expect(201);
        assert_eq!(c["price_per_gpu_hour"], "1.95");
        let value: neocloud_types::Money = c["total_value"].as_str().unwrap().parse().unwrap();
        // 2,152 GPUs × 26,280 hours × $1.95 = $110,281,392, less the moment between asking and
        // signing.
        assert!(
            (110_281_391_000_000..=110_281_392_000_000).contains(&value.micros()),
            "{value}"
        );
        let b = ctx.get("/v1/reports/backlog", &k).await.expect(200);
        let total: neocloud_types::Money = b["total"].as_str().unwrap().parse().unwrap();
        // The backlog is the contract's value from next month on: this month's commitment
        // is revenue (checked below to add up to the whole value).
        let by_year: i64 = b["by_year"]
            .as_array()
            .unwrap()
            .iter()
            .map(|y| {
                y["value"]
                    .as_str()
                    .unwrap()
                    .parse::<neocloud_types::Money>()
                    .unwrap()
                    .micros()
            })
            .sum();
        assert_eq!(by_year, total.micros());
        // From the year of next month's first day to the year the contract ends.
        let next = neocloud_billing::period::Month::containing(now).next();
        let last_year: i64 = end.to_string()[..4].parse().unwrap();
        assert_eq!(
            b["by_year"].as_array().unwrap().len() as i64,
            last_year - i64::from(next.year) + 1,
            "{b}"
        );
        // This month's invoice bills the commitment for the rest of the month, and the revenue
        // report shows the same amount as reserved revenue.
        let month = now.to_string()[..7].to_string();
        let inv = ctx
            .post(
                "/v1/invoices",
                &k,
                &json!({"tenant_id": "frontier-lab", "month": month}),
            )
            .await
            .expect(200);
        let commit: neocloud_types::Money =
            inv["lines"][0]["amount"].as_str().unwrap().parse().unwrap();
        let rev = ctx
            .get(&format!("/v1/reports/revenue?from={month}&to={month}"), &k)
            .await
            .expect(200);
        let row = &rev["items"][0];
        assert_eq!(row["class"], "reserved");
        let r: neocloud_types::Money = row["amount"].as_str().unwrap().parse().unwrap();
        assert_eq!(commit, r, "revenue is what invoices bill");
        // Nothing counted twice, nothing lost: this month's revenue and the backlog add up
        // to the contract's value (to the cent each).
        assert!(
            (commit.micros() + total.micros() - value.micros()).abs() <= 20_000,
            "{commit} + {total} vs {value}"
        );
        ctx.get("/v1/reports/revenue?from=2026-12&to=2026-11", &k)
            .await
            .problem(400, "invalid_request");
        ctx.get("/v1/reports/revenue?from=bad&to=2026-11", &k)
            .await
            .problem(400, "invalid_request");
    }
);

both_backends!(
    a_finalized_invoice_never_changes,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        ctx.import(FLEET).await.expect(200);
        let t = ctx.tenant("acme").await;
        let tid = t["id"].as_str().unwrap().to_string();
        let site = ctx.get("/v1/sites/east", &k).await.expect(200)["id"]
            .as_str()
            .unwrap()
            .to_string();
        // Last month's ledger: one hour of 8 GPUs at $3.00 (written as the metering would).
        let last: neocloud_billing::period::Month = {
            let this: neocloud_billing::period::Month = neocloud_types::Timestamp::now()
                .to_string()[..7]
                .parse()
                .unwrap();
            this.prev()
        };
        let add = |start_offset: i64| {
            let pool = ctx.svc.store().pool().clone();
            let (tid, site) = (tid.clone(), site.clone());
            async move {
                let s = last.start().micros() + start_offset * 1_000_000;
                sqlx::query(
                "INSERT INTO usage_records (instance_id, start_at, end_at, tenant_id, class, gpu_model, site_id, contract_id, gpus, month, gpu_seconds, rate_micros, amount_micros, created_at)
                 VALUES ($1, $2, $3, $4, 'on-demand', 'H100-SXM-80GB', $5, NULL, 8, $6, 28800, 3000000, 24000000, 0)",
            )
            .bind(neocloud_types::InstanceId::new().to_string())
            .bind(s)
            .bind(s + 3_600_000_000)
            .bind(tid)
            .bind(site)
            .bind(last.to_string())
            .execute(&pool)
            .await
            .unwrap();
            }
        };
        add(0).await;
        let inv = ctx
            .post(
                "/v1/invoices",
                &k,
                &json!({"tenant_id": "acme", "month": last.to_string()}),
            )
            .await
            .expect(200);
        assert_eq!(inv["total"], "24");
        let id = inv["id"].as_str().unwrap();
        let fin = ctx
            .post(&format!("/v1/invoices/{id}/finalize"), &k, &json!({}))
            .await
            .expect(200);
        assert_eq!(fin["state"], "finalized");
        assert!(fin["finalized_at"].is_string());
        // Late usage for the same month arrives; the finalized invoice does not change.
        add(7200).await;
        let again = ctx
            .post(
                "/v1/invoices",
                &k,
                &json!({"tenant_id": "acme", "month": last.to_string()}),
            )
            .await
            .expect(200);
        assert_eq!(again, fin);
        assert_eq!(
            ctx.get(&format!("/v1/invoices/{id}"), &k).await.expect(200)["total"],
            "24"
        );
    }
);

both_backends!(
    a_cancelled_contract_is_billed_until_its_cancellation,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        ctx.import(FLEET).await.expect(200);
        ctx.tenant("acme").await;
        let now = neocloud_types::Timestamp::now();
        let c = ctx
        .post("/v1/contracts", &k, &json!({"tenant_id": "acme", "gpu_model": "H100-SXM-80GB", "gpu_count": 8, "start_at": now.to_string(), "end_at": now.plus_seconds(400 * 86400).to_string(), "site": "east"}))
        .await
        .expect(201);
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        let cancelled = ctx
            .post(
                &format!("/v1/contracts/{}/cancel", c["id"].as_str().unwrap()),
                &k,
                &json!({}),
            )
            .await
            .expect(200);
        let month = now.to_string()[..7].to_string();
        let inv = ctx
            .post(
                "/v1/invoices",
                &k,
                &json!({"tenant_id": "acme", "month": month}),
            )
            .await
            .expect(200);
        let line = &inv["lines"][0];
        assert_eq!(line["kind"], "commitment");
        let secs = secs(&cancelled["updated_at"]) - secs(&c["start_at"]);
        let q = line["quantity_gpu_seconds"].as_i64().unwrap();
        // Whole seconds from the start to the cancellation, for 8 GPUs: a couple of seconds,
        // not the rest of the month.
        assert!(
            (8 * (secs - 1)..=8 * (secs + 1)).contains(&q),
            "{q} vs {secs}: {inv}"
        );
    }
);

both_backends!(
    spot_prices_follow_utilization_and_price_spot_usage,
    |ctx: TestContext| async move {
        ctx.import(FLEET).await.expect(200);
        let b = ctx.tenant("bravo").await;
        let (kb, _) = ctx.key("tenant-admin", b["id"].as_str()).await;
        // Spot fills the pool; the first repricing puts spot at its ceiling (80% of $3.00).
        let i = ctx
            .post(
                "/v1/instances",
                &kb,
                &json!({"gpu_model": "H100-SXM-80GB", "nodes": 2, "class": "spot"}),
            )
            .await
            .expect(201);
        ctx.svc
            .tick(neocloud_types::Timestamp::now())
            .await
            .unwrap();
        let s = ctx
            .get("/v1/spot-prices?site=east&gpu_model=H100-SXM-80GB", &kb)
            .await
            .expect(200);
        assert_eq!(s["items"][0]["price_per_gpu_hour"], "2.4", "{s}");
        ctx.get("/v1/spot-prices?site=nowhere&gpu_model=H100-SXM-80GB", &kb)
            .await
            .problem(404, "not_found");
        ctx.get("/v1/spot-prices?site=east", &kb)
            .await
            .problem(400, "invalid_request");
        // Metered when it stops: at the floor before the first recorded price, at the ceiling
        // from then on (a price taking effect mid-second applies from the next whole second).
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        ctx.post(
            &format!("/v1/instances/{}/terminate", i["id"].as_str().unwrap()),
            &kb,
            &json!({}),
        )
        .await
        .expect(200);
        let u = ctx.get("/v1/usage", &kb).await.expect(200);
        let recs = u["items"].as_array().unwrap();
        assert_eq!(recs.last().unwrap()["rate"], "2.4", "{u}");
        assert!(
            recs.iter()
                .all(|r| r["rate"] == "2.4" || r["rate"] == "0.9"),
            "{u}"
        );
        // The pool empties: a minute later spot falls back to its floor (30%).
        ctx.svc
            .tick(neocloud_types::Timestamp::now().plus_seconds(61))
            .await
            .unwrap();
        let s = ctx
            .get("/v1/spot-prices?site=east&gpu_model=H100-SXM-80GB", &kb)
            .await
            .expect(200);
        let series = s["items"].as_array().unwrap();
        assert_eq!(series.len(), 2, "{s}");
        assert_eq!(series[1]["price_per_gpu_hour"], "0.9");
    }
);

both_backends!(
    utilization_and_power_reports,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        ctx.import(&FLEET.replace("power_mw = 1", "power_mw = 1\nenergy_usd_per_mwh = \"80\""))
            .await
            .expect(200);
        let a = ctx.tenant("acme").await;
        let (ka, _) = ctx.key("tenant-admin", a["id"].as_str()).await;
        let i = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}),
            )
            .await
            .expect(201);
        // Power now: the allocated node draws more than the idle one.
        let p = ctx.get("/v1/reports/power", &k).await.expect(200);
        let row = &p["items"][0];
        assert_eq!(row["budget_watts"], 1_000_000);
        let w = row["allocated_watts"].as_i64().unwrap();
        assert!(w > 0);
        // $80/MWh × w watts = w × 0.00008 $/hour, exact to the micro-dollar.
        assert_eq!(
            row["energy_cost_per_hour"],
            neocloud_types::Money::from_micros(w * 80).to_string()
        );
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        ctx.post(
            &format!("/v1/instances/{}/terminate", i["id"].as_str().unwrap()),
            &ka,
            &json!({}),
        )
        .await
        .expect(200);
        let month = neocloud_types::Timestamp::now().to_string()[..7].to_string();
        let u = ctx
            .get(&format!("/v1/reports/utilization?month={month}"), &k)
            .await
            .expect(200);
        let row = &u["items"][0];
        assert_eq!(row["class"], "on-demand");
        let used = ctx.get("/v1/usage", &k).await.expect(200)["items"][0]["gpu_seconds"]
            .as_i64()
            .unwrap();
        assert_eq!(row["gpu_seconds"], used);
        let sellable = row["sellable_gpu_seconds"].as_i64().unwrap();
        assert!(
            sellable > 0 && sellable % 15 == 0,
            "15 sellable GPUs × the seconds of the month so far: {row}"
        );
        assert_eq!(
            row["utilization_milli_percent"],
            i64::try_from(i128::from(used) * 100_000 / i128::from(sellable)).unwrap()
        );
        ctx.get("/v1/reports/utilization?month=2999-01", &k)
            .await
            .problem(400, "invalid_request");
        ctx.get("/v1/reports/power", &ka)
            .await
            .problem(403, "forbidden");
    }
);

both_backends!(
    gross_margin_and_csv_reports,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        // PUE 1.0 and $100/MWh keep the arithmetic readable.
        ctx.import(&FLEET.replace(
            "power_mw = 1",
            "power_mw = 1\npue = 1.0\nenergy_usd_per_mwh = \"100\"",
        ))
        .await
        .expect(200);
        let a = ctx.tenant("acme").await;
        let (ka, _) = ctx.key("tenant-admin", a["id"].as_str()).await;
        let i = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}),
            )
            .await
            .expect(201);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        ctx.post(
            &format!("/v1/instances/{}/terminate", i["id"].as_str().unwrap()),
            &ka,
            &json!({}),
        )
        .await
        .expect(200);
        let month = neocloud_types::Timestamp::now().to_string()[..7].to_string();
        let m = ctx
            .get(&format!("/v1/reports/margin?month={month}"), &k)
            .await
            .expect(200);
        let row = &m["items"][0];
        let revenue: neocloud_types::Money = row["revenue"].as_str().unwrap().parse().unwrap();
        let cost: neocloud_types::Money = row["energy_cost"].as_str().unwrap().parse().unwrap();
        let margin: neocloud_types::Money = row["gross_margin"].as_str().unwrap().parse().unwrap();
        let used: i64 = ctx.get("/v1/usage", &k).await.expect(200)["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                u["amount"]
                    .as_str()
                    .unwrap()
                    .parse::<neocloud_types::Money>()
                    .unwrap()
                    .micros()
            })
            .sum();
        assert_eq!(
            revenue.micros(),
            used,
            "on-demand revenue is what was metered"
        );
        assert!(
            cost > neocloud_types::Money::ZERO,
            "idle nodes draw power all month: {row}"
        );
        assert_eq!(margin.micros(), revenue.micros() - cost.micros());
        assert_eq!(row["internal_share_milli_percent"], 0);
        // CSV for every report; bad formats are refused.
        let csv = ctx
            .send(
                reqwest::Method::GET,
                &format!("/v1/reports/margin?month={month}&format=csv"),
                Some(&k),
                None,
                &[],
            )
            .await;
        assert_eq!(
            csv.headers.get("content-type").unwrap(),
            "text/csv; charset=utf-8"
        );
        let text = csv.body.as_str().unwrap().to_string();
        assert!(
            text.lines().next().unwrap().contains("gross_margin"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 2);
        let csv = ctx
            .send(
                reqwest::Method::GET,
                &format!("/v1/reports/revenue?from={month}&to={month}&format=csv"),
                Some(&k),
                None,
                &[],
            )
            .await;
        assert!(
            csv.body.as_str().unwrap().starts_with("amount,"),
            "{:?}",
            csv.body
        );
        ctx.get(
            &format!("/v1/reports/utilization?month={month}&format=pdf"),
            &k,
        )
        .await
        .problem(400, "invalid_request");
    }
);
