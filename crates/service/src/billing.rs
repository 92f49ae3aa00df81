//! Billing in the service: the price book, and metering instances into the usage ledger
//! when they stop running.

use neocloud_billing::ledger::{UsageInterval, rate_interval};
use neocloud_billing::prices::{PriceBook, PriceEntry, PriceKind};
use neocloud_store::{Page, Store, UsageFilter, WriteTx};
use neocloud_types::{Class, Instance, Money, Price, Timestamp, UsageRecord};

use crate::auth::{self, Action, Principal};
use crate::error::OrNotFound;
use crate::error::{Error, Result};
use crate::{Created, Idempotency, Service, SetPrice, page_limit};

/// List prices per GPU-hour of the built-in models, in micro-dollars, seeded into an empty
/// price book; operators change them with `POST /v1/prices`.
fn list_price_micros(model: &str) -> i64 {
    match model {
        "A100-SXM-80GB" => 1_800_000,
        "H100-SXM-80GB" => 3_000_000,
        "H200-SXM-141GB" => 3_600_000,
        "B200" => 5_000_000,
        "GB200" => 6_000_000,
        "L40S" => 1_000_000,
        "MI300X" => 2_500_000,
        _ => 2_000_000,
    }
}

/// The default book for a model: reserved 15/25/35% off list by term, spot between 30% and
/// 80% of list, the internal shadow price at 60% of list.
fn default_prices(model: &str) -> Vec<(PriceKind, i64)> {
    let list = list_price_micros(model);
    vec![
        (PriceKind::OnDemand, list),
        (PriceKind::ReservedUnder1y, list * 85 / 100),
        (PriceKind::Reserved1To3y, list * 75 / 100),
        (PriceKind::ReservedOver3y, list * 65 / 100),
        (PriceKind::SpotFloor, list * 30 / 100),
        (PriceKind::SpotCeiling, list * 80 / 100),
        (PriceKind::InternalShadow, list * 60 / 100),
    ]
}

pub(crate) fn book_from(prices: &[Price]) -> Result<PriceBook> {
    let entries = prices
        .iter()
        .map(|p| {
            Ok(PriceEntry {
                gpu_model: p.gpu_model.clone(),
                site: p.site_id,
                kind: p.kind.parse::<PriceKind>().map_err(Error::internal)?,
                price: p.price_per_gpu_hour,
                effective_from: p.effective_from,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    PriceBook::new(entries).map_err(|e| Error::internal(e.to_string()))
}

impl Service {
    /// Seeds the default price of every catalog model that has none (first start, new
    /// models), effective from the beginning of time.
    pub(crate) async fn price_seed_defaults(store: &Store) -> Result<()> {
        let have: std::collections::BTreeSet<String> = store
            .price_list()
            .await?
            .into_iter()
            .map(|p| p.gpu_model)
            .collect();
        let missing: Vec<String> = store
            .gpu_model_list()
            .await?
            .into_iter()
            .map(|m| m.name)
            .filter(|m| !have.contains(m))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut tx = store.begin_write().await?;
        for m in &missing {
            for (kind, micros) in default_prices(m) {
                Store::price_insert(
                    &mut tx,
                    &Price {
                        gpu_model: m.clone(),
                        site_id: None,
                        kind: kind.as_str().to_string(),
                        price_per_gpu_hour: Money::from_micros(micros),
                        effective_from: Timestamp::from_micros(0),
                    },
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The price book as it stands.
    pub(crate) async fn price_book(&self) -> Result<PriceBook> {
        book_from(&self.store.price_list().await?)
    }

    /// Lists the price book (every key may read the prices it pays).
    pub async fn price_list(&self, p: &Principal, model: Option<&str>) -> Result<Vec<Price>> {
        auth::authorize(p, Action::ReadCatalog)?;
        let mut prices = self.store.price_list().await?;
        if let Some(m) = model {
            prices.retain(|x| x.gpu_model == m);
        }
        Ok(prices)
    }

    /// Adds a price, effective from now or a later time. Past intervals and signed contracts
    /// never change: a price cannot take effect in the past.
    pub async fn price_set(
        &self,
        p: &Principal,
        req: SetPrice,
        idem: Option<&Idempotency>,
    ) -> Result<Created<Price>> {
        auth::authorize(p, Action::WriteCatalog)?;
        if let Some(c) = self.idem_replay(p, idem).await? {
            return Ok(c);
        }
        let now = self.now();
        let kind: PriceKind = req.kind.parse().map_err(|e: String| Error::invalid(e))?;
        crate::requests::check_money(
            "price_per_gpu_hour",
            req.price_per_gpu_hour,
            crate::MAX_PRICE_PER_GPU_HOUR,
            "US dollars per GPU-hour",
        )?;
        self.store
            .gpu_model_get(&req.gpu_model)
            .await
            .or_not_found(|| Error::invalid(format!("unknown GPU model '{}'", req.gpu_model)))?;
        let site = match &req.site {
            Some(s) => Some(crate::error::stored_id(
                "site",
                &self.store.site_id_of(s).await?,
            )?),
            None => None,
        };
        let from = req.effective_from.unwrap_or(now);
        if from < now.plus_seconds(-60) {
            return Err(Error::invalid(
                "effective_from is in the past: a price change never alters a past interval",
            ));
        }
        let price = Price {
            gpu_model: req.gpu_model.clone(),
            site_id: site,
            kind: kind.as_str().to_string(),
            price_per_gpu_hour: req.price_per_gpu_hour,
            effective_from: from,
        };
        let mut tx = self.store.begin_write().await?;
        if let Some(c) = Self::idem_lookup(&mut tx, p, idem).await? {
            return Ok(c);
        }
        Store::price_insert(&mut tx, &price).await?;
        Store::event_insert(
            &mut tx,
            neocloud_store::NewEvent {
                actor: Some(p.key_id),
                tenant_id: None,
                action: "price.set",
                resource_kind: "price",
                resource_id: format!("{}/{}", price.gpu_model, price.kind),
                before: None,
                after: serde_json::to_value(&price).ok(),
            },
        )
        .await?;
        Self::idem_store(&mut tx, p, idem, &price).await?;
        tx.commit().await?;
        Ok(Created {
            value: price,
            replayed: false,
        })
    }

    /// Reads the usage ledger (a tenant key sees its own).
    pub async fn usage_list(
        &self,
        p: &Principal,
        tenant: Option<&str>,
        mut filter: UsageFilter,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<UsageRecord>> {
        auth::authorize(p, Action::ReadInstances)?;
        let limit = page_limit(limit)?;
        filter.tenant_id = self.scoped_tenant(p, tenant).await?;
        Ok(self.store.usage_list(&filter, cursor, limit).await?)
    }

    /// What a live instance has run up and not yet metered (the ledger records it when it
    /// stops, and at each month's invoice): the records metering it now would write. Empty
    /// for an instance that has ended or not started.
    pub async fn usage_unmetered(&self, p: &Principal, id: &str) -> Result<Vec<UsageRecord>> {
        auth::authorize(p, Action::ReadInstances)?;
        let inst = self.visible_instance(p, id).await?;
        if inst.state.is_final() || inst.started_at.is_none() {
            return Ok(Vec::new());
        }
        let book = self.price_book().await?;
        let metered = self.store.instance_metered_until(inst.id).await?;
        Ok(rate_open(&self.store, &book, &inst, metered, self.now())
            .await?
            .unwrap_or_default())
    }
}

/// Meters a running instance into the ledger from where it was last metered (or its start)
/// up to `until`, in the caller's transaction, so the records commit with the state change
/// that ended the interval.
pub(crate) async fn meter(
    store: &Store,
    tx: &mut WriteTx,
    book: &PriceBook,
    inst: &Instance,
    metered_until: Option<Timestamp>,
    until: Timestamp,
) -> Result<()> {
    let Some(rows) = rate_open(store, book, inst, metered_until, until).await? else {
        return Ok(());
    };
    Store::usage_append(tx, &rows).await?;
    Store::instance_set_metered_until(tx, inst.id, until).await?;
    Ok(())
}

/// The usage records metering `inst` from `metered_until` (or its start) to `until` would
/// write, rated as [`meter`] rates them; `None` when there is nothing to meter.
pub(crate) async fn rate_open(
    store: &Store,
    book: &PriceBook,
    inst: &Instance,
    metered_until: Option<Timestamp>,
    until: Timestamp,
) -> Result<Option<Vec<UsageRecord>>> {
    let Some(iv) = UsageInterval::of_instance(inst, metered_until, until) else {
        return Ok(None);
    };
    // Spot is priced per interval at the spot price then in force: the recorded series
    // (recomputed from the pool's utilization), and the floor before its first point.
    let spot: Vec<(Timestamp, Money)> = if inst.class == Class::Spot {
        let mut series: Vec<(Timestamp, Money)> = book
            .segments(
                &inst.gpu_model,
                iv.site,
                PriceKind::SpotFloor,
                Timestamp::from_micros(0),
                iv.end,
            )
            .into_iter()
            .map(|(s, _, p)| (s, p))
            .collect();
        let recorded = store.spot_price_series(&inst.gpu_model, iv.site).await?;
        if let Some(first) = recorded.first() {
            series.retain(|(t, _)| *t < first.0);
        }
        series.extend(recorded);
        series
    } else {
        Vec::new()
    };
    // A share or MIG instance is rated at its part of a GPU-hour; CPU-only at nothing.
    let slice_milli = inst
        .shape
        .is_slice()
        .then(|| inst.shape.gpu_milli(inst.gpu_count));
    let records = match slice_milli {
        Some(m) => neocloud_billing::rate_interval_milli(&iv, m, book, &spot),
        None => rate_interval(&iv, book, &spot),
    }
    .map_err(|e| Error::internal(e.to_string()))?;
    let rows: Vec<UsageRecord> = records
        .into_iter()
        .map(|r| UsageRecord {
            instance_id: r.instance,
            tenant_id: r.tenant,
            class: r.class,
            gpu_model: r.gpu_model,
            site_id: r.site,
            contract_id: r.contract,
            gpus: r.gpus,
            gpu_milli: slice_milli,
            month: r.month.to_string(),
            start_at: r.start,
            end_at: r.end,
            gpu_seconds: r.gpu_seconds,
            rate: r.rate,
            amount: r.amount,
        })
        .collect();
    Ok(Some(rows))
}

fn line_view(l: &neocloud_billing::invoice::InvoiceLine) -> neocloud_types::InvoiceLine {
    neocloud_types::InvoiceLine {
        kind: l.kind.as_str().to_string(),
        description: l.description.clone(),
        contract_id: l.contract,
        class: l.class,
        gpu_model: l.gpu_model.clone(),
        site_id: l.site,
        quantity_gpu_seconds: l.quantity_gpu_seconds,
        amount: l.amount,
        billed: l.billed,
    }
}

impl Service {
    /// Generates (or regenerates) a tenant's draft invoice for a month from the contracts,
    /// the ledger and recorded downtime. For a month that is over, running instances are
    /// first metered up to its end, so the ledger holds the whole month. A finalized invoice
    /// is returned as it is: it never changes.
    pub async fn invoice_generate(
        &self,
        p: &Principal,
        tenant: &str,
        month: &str,
        idem: Option<&Idempotency>,
    ) -> Result<Created<neocloud_types::Invoice>> {
        auth::authorize(p, Action::WriteInvoices)?;
        if let Some(c) = self.idem_replay(p, idem).await? {
            return Ok(c);
        }
        let tenant = self.visible_tenant(p, tenant).await?;
        let month: neocloud_billing::period::Month =
            month
                .parse()
                .map_err(|e: neocloud_billing::period::MonthParseError| {
                    Error::invalid(e.to_string())
                })?;
        let now = self.now();
        if month.start() > now {
            return Err(Error::invalid(format!(
                "{month} has not started: no invoice for a future period"
            )));
        }
        if let Some(inv) = self
            .store
            .invoice_for(tenant.id, &month.to_string())
            .await?
            && inv.state == "finalized"
        {
            return self.idempotent(p, idem, 200, async { Ok(inv) }).await;
        }
        let book = self.price_book().await?;
        if month.end() <= now {
            // Close the month for this tenant's running instances, written in order with
            // the scheduler's decisions so no stop meters the same interval at the same
            // time.
            let tenant_id = tenant.id;
            let book = book.clone();
            self.write_ordered(crate::writer::extra(move |store, tx| {
                Box::pin(async move {
                    let live = store.instance_list_live().await?;
                    for i in live
                        .iter()
                        .filter(|i| i.tenant_id == tenant_id && i.state.holds_gpus())
                    {
                        let metered = Store::instance_metered_until_tx(tx, i.id).await?;
                        if metered.is_some_and(|m| m >= month.end()) {
                            continue;
                        }
                        meter(store, tx, &book, i, metered, month.end()).await?;
                    }
                    Ok(())
                })
            }))
            .await?;
        }
        let contracts: Vec<neocloud_billing::invoice::ContractTerms> = self
            .store
            .contract_list(Some(tenant.id), None, crate::MAX_PAGE_SIZE)
            .await?
            .items
            .into_iter()
            .filter_map(|c| billing_terms(&c))
            .collect();
        // One summed record per (class, model, site): invoice lines are those sums.
        let usage: Vec<neocloud_billing::ledger::UsageRecord> = self
            .store
            .usage_month_totals(tenant.id, &month.to_string())
            .await?
            .into_iter()
            .map(|(class, gpu_model, site, gpu_seconds, amount)| {
                neocloud_billing::ledger::UsageRecord {
                    instance: neocloud_types::InstanceId::new(),
                    tenant: tenant.id,
                    class,
                    gpu_model,
                    site,
                    contract: None,
                    gpus: 0,
                    month,
                    start: month.start(),
                    end: month.start(),
                    gpu_seconds,
                    rate: Money::ZERO,
                    amount,
                }
            })
            .collect();
        let downtime: Vec<neocloud_billing::invoice::Downtime> = self
            .store
            .downtime_list(month.start(), month.end())
            .await?
            .into_iter()
            .map(|d| neocloud_billing::invoice::Downtime {
                contract: d.contract_id,
                start: d.start_at,
                end: d.end_at,
                gpus: d.gpus,
            })
            .collect();
        let built = neocloud_billing::invoice::build_invoice(
            tenant.id,
            tenant.kind == neocloud_types::TenantKind::Internal,
            month,
            &contracts,
            &usage,
            &downtime,
            &neocloud_billing::invoice::SlaPolicy::default(),
        );
        let id = match self
            .store
            .invoice_for(tenant.id, &month.to_string())
            .await?
        {
            Some(existing) => existing.id,
            None => format!("inv_{}", neocloud_types::EventId::new().uuid().simple()),
        };
        let inv = neocloud_types::Invoice {
            id,
            tenant_id: tenant.id,
            month: month.to_string(),
            state: "draft".into(),
            lines: built.lines.iter().map(line_view).collect(),
            total: built.total,
            shadow_total: built.shadow_total,
            created_at: now,
            finalized_at: None,
        };
        let mut tx = self.store.begin_write().await?;
        if let Some(c) = Self::idem_lookup(&mut tx, p, idem).await? {
            return Ok(c);
        }
        Store::invoice_put_draft(&mut tx, &inv).await?;
        Store::event_insert(
            &mut tx,
            neocloud_store::NewEvent {
                actor: Some(p.key_id),
                tenant_id: Some(tenant.id),
                action: "invoice.generated",
                resource_kind: "invoice",
                resource_id: inv.id.clone(),
                before: None,
                after: Some(serde_json::json!({"month": inv.month, "total": inv.total})),
            },
        )
        .await?;
        Self::idem_store_status(&mut tx, p, idem, 200, &inv).await?;
        tx.commit().await?;
        let generated = self.store.invoice_get(&inv.id).await?;
        self.idem_settle(p, idem, 200, &generated).await;
        Ok(Created {
            value: generated,
            replayed: false,
        })
    }

    async fn visible_invoice(&self, p: &Principal, id: &str) -> Result<neocloud_types::Invoice> {
        let inv = self
            .store
            .invoice_get(id)
            .await
            .or_not_found(|| Error::not_found("invoice", id))?;
        match p.tenant_scope() {
            Some(own) if own != inv.tenant_id => Err(Error::not_found("invoice", id)),
            _ => Ok(inv),
        }
    }

    /// Reads an invoice (a tenant key sees its own).
    pub async fn invoice_get(&self, p: &Principal, id: &str) -> Result<neocloud_types::Invoice> {
        auth::authorize(p, Action::ReadInvoices)?;
        self.visible_invoice(p, id).await
    }

    /// Lists invoices, newest month first (a tenant key sees its own).
    pub async fn invoice_list(
        &self,
        p: &Principal,
        tenant: Option<&str>,
    ) -> Result<Vec<neocloud_types::Invoice>> {
        auth::authorize(p, Action::ReadInvoices)?;
        let t = self.scoped_tenant(p, tenant).await?;
        Ok(self.store.invoice_list(t).await?)
    }

    /// Finalizes a draft invoice of a month that is over; from then on it never changes.
    pub async fn invoice_finalize(
        &self,
        p: &Principal,
        id: &str,
        idem: Option<&Idempotency>,
    ) -> Result<Created<neocloud_types::Invoice>> {
        auth::authorize(p, Action::WriteInvoices)?;
        if let Some(c) = self.idem_replay(p, idem).await? {
            return Ok(c);
        }
        let inv = self.visible_invoice(p, id).await?;
        if inv.state == "finalized" {
            return self.idempotent(p, idem, 200, async { Ok(inv) }).await;
        }
        let month: neocloud_billing::period::Month =
            inv.month
                .parse()
                .map_err(|e: neocloud_billing::period::MonthParseError| {
                    Error::internal(e.to_string())
                })?;
        let now = self.now();
        if month.end() > now {
            return Err(Error::invalid(format!(
                "{} is not over yet: finalize after {}",
                inv.month,
                month.end()
            )));
        }
        let mut tx = self.store.begin_write().await?;
        if let Some(c) = Self::idem_lookup(&mut tx, p, idem).await? {
            return Ok(c);
        }
        Store::invoice_finalize(&mut tx, &inv.id, now).await?;
        Store::event_insert(
            &mut tx,
            neocloud_store::NewEvent {
                actor: Some(p.key_id),
                tenant_id: Some(inv.tenant_id),
                action: "invoice.finalized",
                resource_kind: "invoice",
                resource_id: inv.id.clone(),
                before: None,
                after: Some(serde_json::json!({"total": inv.total})),
            },
        )
        .await?;
        Self::idem_store_status(&mut tx, p, idem, 200, &inv).await?;
        tx.commit().await?;
        let finalized = self.store.invoice_get(&inv.id).await?;
        self.idem_settle(p, idem, 200, &finalized).await;
        Ok(Created {
            value: finalized,
            replayed: false,
        })
    }

    /// Records downtime of a contract's GPUs (until the health issue records it from node
    /// failures); SLA credits are computed from it.
    pub async fn downtime_add(
        &self,
        p: &Principal,
        contract: &str,
        req: crate::AddDowntime,
        idem: Option<&Idempotency>,
    ) -> Result<Created<()>> {
        auth::authorize(p, Action::WriteInvoices)?;
        if let Some(c) = self.idem_replay(p, idem).await? {
            return Ok(c);
        }
        let cid: neocloud_types::ContractId = contract
            .parse()
            .map_err(|_| Error::not_found("contract", contract))?;
        let c = self
            .store
            .contract_get(cid)
            .await
            .or_not_found(|| Error::not_found("contract", contract))?;
        if req.end_at <= req.start_at {
            return Err(Error::invalid("end_at must be after start_at"));
        }
        if req.gpus == 0 || req.gpus > c.gpu_count {
            return Err(Error::invalid(format!(
                "gpus must be between 1 and the contract's {}",
                c.gpu_count
            )));
        }
        if req.start_at < c.start_at || req.end_at > c.end_at {
            return Err(Error::invalid(format!(
                "downtime must lie inside the contract's term, {} to {}",
                c.start_at, c.end_at
            )));
        }
        let mut tx = self.store.begin_write().await?;
        // The record commits with the downtime: a retry never credits twice.
        if let Some(c) = Self::idem_lookup(&mut tx, p, idem).await? {
            return Ok(c);
        }
        Store::downtime_insert(
            &mut tx,
            &neocloud_store::DowntimeRow {
                contract_id: c.id,
                start_at: req.start_at,
                end_at: req.end_at,
                gpus: req.gpus,
            },
            req.note.as_deref().unwrap_or(""),
        )
        .await?;
        Store::event_insert(
            &mut tx,
            neocloud_store::NewEvent {
                actor: Some(p.key_id),
                tenant_id: Some(c.tenant_id),
                action: "contract.downtime_recorded",
                resource_kind: "contract",
                resource_id: c.id.to_string(),
                before: None,
                after: Some(serde_json::json!({"start_at": req.start_at, "end_at": req.end_at, "gpus": req.gpus})),
            },
        )
        .await?;
        Self::idem_store_status(&mut tx, p, idem, 204, &()).await?;
        tx.commit().await?;
        Ok(Created {
            value: (),
            replayed: false,
        })
    }
}

/// A contract as billing sees it. A cancelled contract is billed up to its cancellation
/// (take-or-pay until then) and not after.
fn billing_terms(c: &neocloud_types::Contract) -> Option<neocloud_billing::invoice::ContractTerms> {
    let end = if c.state == neocloud_types::ContractState::Cancelled {
        c.end_at.min(c.updated_at)
    } else {
        c.end_at
    };
    (end > c.start_at).then(|| neocloud_billing::invoice::ContractTerms {
        id: c.id,
        tenant: c.tenant_id,
        gpu_model: c.gpu_model.clone(),
        site: c.site_id,
        gpus: c.gpu_count,
        start: c.start_at,
        end,
        rate: c.price_per_gpu_hour,
        sla_milli: sla_milli(&c.sla_percent),
    })
}

/// "99.9" → 99_900 thousandths of a percent.
fn sla_milli(s: &str) -> u32 {
    s.parse::<Money>()
        .ok()
        .and_then(|m| u32::try_from(m.micros() / 1000).ok())
        .unwrap_or(99_500)
}

impl Service {
    /// The contracted backlog: for every signed or active contract, the committed value from
    /// now (or its start) to its end, in total and by calendar year.
    pub async fn report_backlog(&self, p: &Principal) -> Result<crate::BacklogReport> {
        auth::authorize(p, Action::ReadCapacity)?;
        let now = self.now();
        // Sums in i128: no count of contracts can wrap the total around to a negative.
        let mut by_year: std::collections::BTreeMap<i32, i128> = Default::default();
        let mut contracts = Vec::new();
        let mut total: i128 = 0;
        let money = |v: i128| {
            i64::try_from(v)
                .map(Money::from_micros)
                .map_err(|_| Error::internal(format!("backlog of {v} micro-dollars overflows")))
        };
        // The current month's commitment is revenue already (invoices bill it whole, and
        // the revenue report counts it): the backlog starts with the next month.
        let next_month = neocloud_billing::period::Month::containing(now)
            .next()
            .start();
        for c in self.store.contract_list_live().await? {
            let from = c.start_at.max(next_month);
            if from >= c.end_at {
                continue;
            }
            // Each year's part is the value up to the year's end less the value up to its
            // start, each exact to the cent: the parts add up to the remaining value exactly,
            // and a contract not yet started counts its whole value.
            let value_to = |t: Timestamp| {
                i128::from(
                    neocloud_store::contract_value(c.gpu_count, from, t, c.price_per_gpu_hour)
                        .micros(),
                )
            };
            let mut done: i128 = 0;
            let mut year = neocloud_billing::period::Month::containing(from).year;
            loop {
                let y_end = neocloud_billing::period::Month::new(year + 1, 1)
                    .map(|m| m.start())
                    .ok_or_else(|| Error::internal("year out of range"))?;
                let upto = value_to(c.end_at.min(y_end));
                if upto > done {
                    *by_year.entry(year).or_default() += upto - done;
                }
                done = upto;
                if y_end >= c.end_at {
                    break;
                }
                year += 1;
            }
            total += done;
            contracts.push(crate::BacklogContract {
                contract_id: c.id,
                tenant_id: c.tenant_id,
                remaining_value: money(done)?,
            });
        }
        Ok(crate::BacklogReport {
            as_of: now,
            total: money(total)?,
            by_year: by_year
                .into_iter()
                .map(|(year, v)| {
                    Ok(crate::BacklogYear {
                        year,
                        value: money(v)?,
                    })
                })
                .collect::<Result<_>>()?,
            contracts,
        })
    }

    /// Revenue by month × tenant × class × site for `[from, to]` (months): commitments of
    /// contracts (take-or-pay) as `reserved`, and metered on-demand and spot usage.
    pub async fn report_revenue(
        &self,
        p: &Principal,
        from: &str,
        to: &str,
    ) -> Result<Vec<crate::RevenueRow>> {
        auth::authorize(p, Action::ReadCapacity)?;
        let parse = |s: &str| {
            s.parse::<neocloud_billing::period::Month>().map_err(
                |e: neocloud_billing::period::MonthParseError| Error::invalid(e.to_string()),
            )
        };
        let (first, last) = (parse(from)?, parse(to)?);
        if last < first {
            return Err(Error::invalid("`to` is before `from`"));
        }
        let contracts = self
            .store
            .contract_list(None, None, crate::MAX_PAGE_SIZE)
            .await?
            .items;
        let tenants = self
            .store
            .tenant_list(None, None, crate::MAX_PAGE_SIZE)
            .await?
            .items;
        let mut rows = Vec::new();
        let mut m = first;
        let mut guard = 0;
        while m <= last && guard < 240 {
            guard += 1;
            // Commitments exactly as invoices bill them (whole seconds, rounded to the cent).
            for t in &tenants {
                let terms: Vec<neocloud_billing::invoice::ContractTerms> = contracts
                    .iter()
                    .filter(|c| c.tenant_id == t.id)
                    .filter_map(billing_terms)
                    .collect();
                if terms.is_empty() {
                    continue;
                }
                let inv = neocloud_billing::invoice::build_invoice(
                    t.id,
                    false,
                    m,
                    &terms,
                    &[],
                    &[],
                    &neocloud_billing::invoice::SlaPolicy::default(),
                );
                for l in inv
                    .lines
                    .iter()
                    .filter(|l| l.kind == neocloud_billing::invoice::LineKind::Commitment)
                {
                    if let Some(site) = l.site {
                        rows.push(crate::RevenueRow {
                            month: m.to_string(),
                            tenant_id: t.id,
                            class: Class::Reserved,
                            site_id: site,
                            amount: l.amount,
                        });
                    }
                }
            }
            for t in &tenants {
                for (class, _model, site, _gs, amount) in
                    self.store.usage_month_totals(t.id, &m.to_string()).await?
                {
                    if matches!(class, Class::OnDemand | Class::Spot) {
                        rows.push(crate::RevenueRow {
                            month: m.to_string(),
                            tenant_id: t.id,
                            class,
                            site_id: site,
                            amount,
                        });
                    }
                }
            }
            m = m.next();
        }
        // One row per (month, tenant, class, site), whatever the GPU models.
        let mut merged: std::collections::BTreeMap<
            (String, String, String, String),
            crate::RevenueRow,
        > = Default::default();
        for r in rows {
            let key = (
                r.month.clone(),
                r.tenant_id.to_string(),
                r.class.as_str().to_string(),
                r.site_id.to_string(),
            );
            match merged.get_mut(&key) {
                Some(x) => x.amount = Money::from_micros(x.amount.micros() + r.amount.micros()),
                None => {
                    merged.insert(key, r);
                }
            }
        }
        Ok(merged.into_values().collect())
    }
}

impl Service {
    /// Recomputes the spot price of every pool (site and GPU model) from its utilization and
    /// records it when it changed: `floor + (ceiling − floor) × max(0, u − 50%) / 50%`.
    pub(crate) async fn spot_reprice(&self, book: &PriceBook, now: Timestamp) -> Result<usize> {
        let mut changed = 0;
        // Utilization of every pool, read under the lock in one go; the prices are written
        // after it is released.
        let pools: Vec<(neocloud_types::SiteId, String, u32)> = {
            let sched = crate::scheduler::lock(&self.sched);
            let mut v = Vec::new();
            for site in sched.sites() {
                for m in &site.gpus_by_model {
                    let total = u64::try_from(m.gpus).unwrap_or(0);
                    if total == 0 {
                        continue;
                    }
                    let free = sched
                        .alloc()
                        .free_gpus(Some(site.id), &m.gpu_model)
                        .min(total);
                    let used_milli = u32::try_from((total - free) * 1000 / total).unwrap_or(1000);
                    v.push((site.id, m.gpu_model.clone(), used_milli));
                }
            }
            v
        };
        for (site, model, used_milli) in pools {
            let (Some(floor), Some(ceiling)) = (
                book.price_at(&model, site, PriceKind::SpotFloor, now),
                book.price_at(&model, site, PriceKind::SpotCeiling, now),
            ) else {
                continue;
            };
            let price = neocloud_billing::prices::spot_price(floor, ceiling, used_milli);
            let last = self.store.spot_price_series(&model, site).await?;
            if last.last().map(|(_, p)| *p) == Some(price) {
                continue;
            }
            let mut tx = self.store.begin_write().await?;
            Store::spot_price_insert(&mut tx, &model, site, now, price).await?;
            tx.commit().await?;
            changed += 1;
        }
        Ok(changed)
    }

    /// The spot price series of a pool (any key may read it).
    pub async fn spot_price_list(
        &self,
        p: &Principal,
        site: &str,
        model: &str,
    ) -> Result<Vec<(Timestamp, Money)>> {
        auth::authorize(p, Action::ReadCatalog)?;
        let site: neocloud_types::SiteId =
            crate::error::stored_id("site", &self.store.site_id_of(site).await?)?;
        Ok(self.store.spot_price_series(model, site).await?)
    }
}

impl Service {
    /// Utilization = metered GPU-seconds / sellable GPU-seconds, by site, model and class,
    /// for a month (the part that has passed, for the current month).
    pub async fn report_utilization(
        &self,
        p: &Principal,
        month: &str,
    ) -> Result<Vec<crate::UtilizationRow>> {
        auth::authorize(p, Action::ReadCapacity)?;
        let m: neocloud_billing::period::Month =
            month
                .parse()
                .map_err(|e: neocloud_billing::period::MonthParseError| {
                    Error::invalid(e.to_string())
                })?;
        let now = self.now();
        if m.start() > now {
            return Err(Error::invalid(format!("{m} has not started")));
        }
        let elapsed_secs = (m.end().min(now).micros() - m.start().micros()) / 1_000_000;
        let (sites, config) = {
            let sched = crate::scheduler::lock(&self.sched);
            (sched.sites().to_vec(), sched.config().clone())
        };
        let tenants = self
            .store
            .tenant_list(None, None, crate::MAX_PAGE_SIZE)
            .await?
            .items;
        let mut sums: std::collections::BTreeMap<
            (String, String, Class),
            (neocloud_types::SiteId, i64),
        > = Default::default();
        for t in &tenants {
            for (class, model, site, gs, _) in
                self.store.usage_month_totals(t.id, &m.to_string()).await?
            {
                let e = sums
                    .entry((site.to_string(), model, class))
                    .or_insert((site, 0));
                e.1 += gs;
            }
        }
        let mut rows = Vec::new();
        for ((_, model, class), (site_id, gs)) in sums {
            let Some(site) = sites.iter().find(|s| s.id == site_id) else {
                continue;
            };
            let sellable = crate::scheduler::sellable(&config, site, &model).max(0);
            let sellable_secs = sellable.saturating_mul(elapsed_secs);
            rows.push(crate::UtilizationRow {
                month: m.to_string(),
                site_id,
                gpu_model: model,
                class,
                gpu_seconds: gs,
                sellable_gpu_seconds: sellable_secs,
                utilization_milli_percent: if sellable_secs > 0 {
                    i64::try_from(i128::from(gs) * 100_000 / i128::from(sellable_secs))
                        .unwrap_or(i64::MAX)
                } else {
                    0
                },
            });
        }
        Ok(rows)
    }

    /// Power by site now: facility watts allocated vs budget and cap, and the energy cost
    /// per hour at that draw.
    pub async fn report_power(&self, p: &Principal) -> Result<Vec<crate::PowerRow>> {
        auth::authorize(p, Action::ReadCapacity)?;
        let sites = self.store.site_list().await?;
        let sched = crate::scheduler::lock(&self.sched);
        Ok(sites
            .into_iter()
            .map(|s| {
                let used = sched.alloc().site_power(s.id).allocated_watts;
                // watts × $/MWh / 1,000,000 = $/hour; exact in micro-dollars.
                let cost = i128::from(used) * i128::from(s.energy_usd_per_mwh.micros()) / 1_000_000;
                crate::PowerRow {
                    site_id: s.id,
                    site: s.name.clone(),
                    allocated_watts: used,
                    budget_watts: s.power_budget_watts,
                    cap_watts: s.power_cap_watts,
                    energy_usd_per_mwh: s.energy_usd_per_mwh,
                    energy_cost_per_hour: Money::from_micros(
                        i64::try_from(cost).unwrap_or(i64::MAX),
                    ),
                }
            })
            .collect())
    }
}

impl Service {
    /// Gross margin per site for a month: revenue − energy cost, with the energy estimate
    /// and the internal share of compute.
    pub async fn report_margin(&self, p: &Principal, month: &str) -> Result<Vec<crate::MarginRow>> {
        auth::authorize(p, Action::ReadCapacity)?;
        let m: neocloud_billing::period::Month =
            month
                .parse()
                .map_err(|e: neocloud_billing::period::MonthParseError| {
                    Error::invalid(e.to_string())
                })?;
        let now = self.now();
        if m.start() > now {
            return Err(Error::invalid(format!("{m} has not started")));
        }
        let elapsed_secs = i128::from((m.end().min(now).micros() - m.start().micros()) / 1_000_000);
        let sites = self.store.site_list().await?;
        let revenue = self
            .report_revenue(p, &m.to_string(), &m.to_string())
            .await?;
        let power = self.store.node_power_totals().await?;
        let tenants = self
            .store
            .tenant_list(None, None, crate::MAX_PAGE_SIZE)
            .await?
            .items;
        // Metered GPU-seconds per (site, model), and per site internal vs all.
        let mut gs: std::collections::BTreeMap<(String, String), i128> = Default::default();
        let mut internal: std::collections::BTreeMap<String, i128> = Default::default();
        let mut all: std::collections::BTreeMap<String, i128> = Default::default();
        for t in &tenants {
            for (class, model, site, secs, _) in
                self.store.usage_month_totals(t.id, &m.to_string()).await?
            {
                *gs.entry((site.to_string(), model)).or_default() += i128::from(secs);
                *all.entry(site.to_string()).or_default() += i128::from(secs);
                if class == Class::Internal {
                    *internal.entry(site.to_string()).or_default() += i128::from(secs);
                }
            }
        }
        let mut rows = Vec::new();
        for s in &sites {
            let key = s.id.to_string();
            // Watt-seconds: idle draw all month, plus each GPU-second at its dynamic draw.
            let mut watt_secs: i128 = 0;
            for (site, model, idle, peak, gpus) in power.iter().filter(|x| x.0 == s.id) {
                let _ = site;
                watt_secs += i128::from(*idle) * elapsed_secs;
                if *gpus > 0 {
                    let used = gs.get(&(key.clone(), model.clone())).copied().unwrap_or(0);
                    watt_secs += used * i128::from(peak - idle) / i128::from(*gpus);
                }
            }
            let facility = watt_secs * i128::from(s.pue_milli) / 1000;
            let kwh = facility / 3_600_000;
            // Wh × $/MWh / 1,000,000 = $; in micro-dollars: Wh × micros / 1,000,000.
            let cost = facility / 3600 * i128::from(s.energy_usd_per_mwh.micros()) / 1_000_000;
            let cost = Money::from_micros(i64::try_from(cost).unwrap_or(i64::MAX));
            let rev: i64 = revenue
                .iter()
                .filter(|r| r.site_id == s.id)
                .map(|r| r.amount.micros())
                .sum();
            let total = all.get(&key).copied().unwrap_or(0);
            rows.push(crate::MarginRow {
                month: m.to_string(),
                site_id: s.id,
                revenue: Money::from_micros(rev),
                energy_kwh: i64::try_from(kwh).unwrap_or(i64::MAX),
                energy_cost: cost,
                gross_margin: Money::from_micros(rev - cost.micros()),
                internal_share_milli_percent: if total > 0 {
                    i64::try_from(internal.get(&key).copied().unwrap_or(0) * 100_000 / total)
                        .unwrap_or(0)
                } else {
                    0
                },
            });
        }
        Ok(rows)
    }
}
