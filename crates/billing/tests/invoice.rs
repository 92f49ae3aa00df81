//! Invoices end to end: price book → rated usage → invoice, with hand-computed amounts.

// Tests may unwrap: a panic here is a failed test, not a crashed server.
#![allow(clippy::unwrap_used)]

use neocloud_billing::{
    ContractTerms, Downtime, Invoice, LineKind, Month, PriceBook, PriceEntry, PriceKind, SlaPolicy,
    UsageInterval, UsageRecord, build_invoice, rate_interval,
};
use neocloud_types::{Class, ContractId, InstanceId, Money, SiteId, TenantId, Timestamp};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}
fn usd(s: &str) -> Money {
    s.parse().unwrap()
}
fn month(s: &str) -> Month {
    s.parse().unwrap()
}
fn site(n: u8) -> SiteId {
    format!("site_{n:032x}").parse().unwrap()
}
fn tenant(n: u8) -> TenantId {
    format!("ten_{n:032x}").parse().unwrap()
}
fn contract_id(n: u8) -> ContractId {
    format!("ctr_{n:032x}").parse().unwrap()
}
fn instance(n: u8) -> InstanceId {
    format!("inst_{n:032x}").parse().unwrap()
}

const H100: &str = "H100-SXM-80GB";

fn book() -> PriceBook {
    let e = |kind, site, price: &str| PriceEntry {
        gpu_model: H100.to_string(),
        site,
        kind,
        price: usd(price),
        effective_from: ts("2026-01-01T00:00:00Z"),
    };
    PriceBook::new(vec![
        e(PriceKind::OnDemand, None, "2.85"),
        e(PriceKind::InternalShadow, None, "1.20"),
        // A site where on-demand costs $9.00/GPU-hour, for rounding cases: 1 GPU-second
        // there is $0.0025.
        e(PriceKind::OnDemand, Some(site(9)), "9.00"),
    ])
    .unwrap()
}

/// 16 H100s at $2.10/GPU-hour from 2026-11-16 00:00 UTC for a year, SLA 99.9%.
fn mid_month_contract() -> ContractTerms {
    ContractTerms {
        id: contract_id(1),
        tenant: tenant(1),
        gpu_model: H100.to_string(),
        site: site(1),
        gpus: 16,
        start: ts("2026-11-16T00:00:00Z"),
        end: ts("2027-11-16T00:00:00Z"),
        rate: usd("2.10"),
        sla_milli: 99_900,
    }
}

#[allow(clippy::too_many_arguments)]
fn usage(
    inst: u8,
    ten: TenantId,
    class: Class,
    st: SiteId,
    gpus: u32,
    start: &str,
    end: &str,
    spot: &[(Timestamp, Money)],
) -> Vec<UsageRecord> {
    let iv = UsageInterval {
        instance: instance(inst),
        tenant: ten,
        class,
        gpu_model: H100.to_string(),
        site: st,
        contract: None,
        gpus,
        start: ts(start),
        end: ts(end),
    };
    rate_interval(&iv, &book(), spot).unwrap()
}

fn invoice(
    internal: bool,
    m: &str,
    contracts: &[ContractTerms],
    records: &[UsageRecord],
    downtime: &[Downtime],
) -> Invoice {
    build_invoice(
        tenant(1),
        internal,
        month(m),
        contracts,
        records,
        downtime,
        &SlaPolicy::default(),
    )
}

#[test]
fn contract_starting_mid_month() {
    let c = mid_month_contract();
    // November: 2026-11-16 → 2026-12-01 = 15 days × 24 h × 16 GPUs = 5,760 GPU-h
    // × $2.10 = $12,096.00; 15 × 86,400 s × 16 = 20,736,000 GPU-s.
    let nov = invoice(false, "2026-11", std::slice::from_ref(&c), &[], &[]);
    assert_eq!(nov.lines.len(), 1);
    let l = &nov.lines[0];
    assert_eq!(l.kind, LineKind::Commitment);
    assert_eq!(l.amount, usd("12096.00"));
    assert_eq!(l.quantity_gpu_seconds, 20_736_000);
    assert_eq!(l.contract, Some(c.id));
    assert!(l.billed);
    assert!(
        l.description.contains("$2.10/GPU-hour"),
        "{}",
        l.description
    );
    assert_eq!(nov.total, usd("12096.00"));
    assert_eq!(nov.shadow_total, Money::ZERO);
    // December (31 days): 744 h × 16 = 11,904 GPU-h × $2.10 = $24,998.40.
    let dec = invoice(false, "2026-12", std::slice::from_ref(&c), &[], &[]);
    assert_eq!(dec.total, usd("24998.40"));
    // October: before the contract, no line.
    let oct = invoice(false, "2026-10", std::slice::from_ref(&c), &[], &[]);
    assert!(oct.lines.is_empty());
    assert_eq!(oct.total, Money::ZERO);
    // November 2027: the contract ends 2027-11-16 00:00 (exclusive): 15 days again.
    assert_eq!(
        invoice(false, "2027-11", std::slice::from_ref(&c), &[], &[]).total,
        usd("12096.00")
    );
}

#[test]
fn commitment_is_take_or_pay_whether_used_or_not() {
    let c = mid_month_contract();
    // Reserved usage rates at 0 and has no line of its own: the bill is the same.
    let used = usage(
        1,
        tenant(1),
        Class::Reserved,
        site(1),
        16,
        "2026-11-16T00:00:00Z",
        "2026-12-01T00:00:00Z",
        &[],
    );
    assert!(used.iter().all(|r| r.amount == Money::ZERO));
    let with = invoice(false, "2026-11", std::slice::from_ref(&c), &used, &[]);
    let without = invoice(false, "2026-11", std::slice::from_ref(&c), &[], &[]);
    assert_eq!(with, without);
}

#[test]
fn memphis_lease_january_2027() {
    // 215,600 H100s reserved for 3 years from 2027-01-01 at $1.95/GPU-hour.
    let c = ContractTerms {
        id: contract_id(7),
        tenant: tenant(1),
        gpu_model: H100.to_string(),
        site: site(1),
        gpus: 215_600,
        start: ts("2027-01-01T00:00:00Z"),
        end: ts("2030-01-01T00:00:00Z"),
        rate: usd("1.95"),
        sla_milli: 99_900,
    };
    assert_eq!(
        PriceBook::reserved_kind(c.end.micros() - c.start.micros()),
        PriceKind::ReservedOver3y
    );
    // January 2027: 31 days = 744 h; 215,600 × 744 = 160,406,400 GPU-h;
    // × 1.95 = 320,812,800 − 8,020,320 = $312,792,480.00.
    let jan = invoice(false, "2027-01", std::slice::from_ref(&c), &[], &[]);
    assert_eq!(jan.total, usd("312792480.00"));
    assert_eq!(jan.total.micros(), 312_792_480_000_000);
    assert_eq!(jan.lines[0].quantity_gpu_seconds, 160_406_400 * 3_600);
    // February 2028 (leap, 29 days = 696 h): 215,600 × 696 = 150,057,600 GPU-h × 1.95
    // = 300,115,200 − 7,502,880 = $292,612,320.00.
    assert_eq!(
        invoice(false, "2028-02", std::slice::from_ref(&c), &[], &[]).total,
        usd("292612320.00")
    );
    // The term ends 2030-01-01 (exclusive): December 2029 is billed, January 2030 is not.
    assert_eq!(
        invoice(false, "2029-12", std::slice::from_ref(&c), &[], &[]).total,
        usd("312792480.00")
    );
    assert!(
        invoice(false, "2030-01", std::slice::from_ref(&c), &[], &[])
            .lines
            .is_empty()
    );
}

#[test]
fn sla_breach_gives_the_right_tier() {
    let c = mid_month_contract();
    // Window: 16 GPUs × 1,296,000 s = 20,736,000 GPU-s.
    // 8 GPUs down for 24 h = 691,200 GPU-s → availability 20,044,800 / 20,736,000
    // = 96.666…% → 96,666 (floor) < 99.0% → 25% tier: 0.25 × $12,096 = $3,024.00.
    let down = [
        Downtime {
            contract: c.id,
            start: ts("2026-11-20T00:00:00Z"),
            end: ts("2026-11-21T00:00:00Z"),
            gpus: 8,
        },
        // Before the contract started: outside the window, ignored.
        Downtime {
            contract: c.id,
            start: ts("2026-11-10T00:00:00Z"),
            end: ts("2026-11-12T00:00:00Z"),
            gpus: 16,
        },
        // Another contract's downtime: ignored.
        Downtime {
            contract: contract_id(2),
            start: ts("2026-11-20T00:00:00Z"),
            end: ts("2026-11-25T00:00:00Z"),
            gpus: 16,
        },
    ];
    let inv = invoice(false, "2026-11", std::slice::from_ref(&c), &[], &down);
    assert_eq!(inv.lines.len(), 2);
    let credit = &inv.lines[1];
    assert_eq!(credit.kind, LineKind::SlaCredit);
    assert_eq!(credit.amount, usd("-3024.00"));
    assert_eq!(credit.quantity_gpu_seconds, 691_200);
    assert!(
        credit.description.contains("96.666%"),
        "{}",
        credit.description
    );
    assert!(
        credit.description.contains("25.000%"),
        "{}",
        credit.description
    );
    // $12,096.00 − $3,024.00 = $9,072.00.
    assert_eq!(inv.total, usd("9072.00"));

    // 16 GPUs down for a whole day = 1,382,400 GPU-s → 19,353,600 / 20,736,000
    // = 93.333% < 95.0% → 50%: $6,048.00 credit.
    let deep = [Downtime {
        contract: c.id,
        start: ts("2026-11-20T00:00:00Z"),
        end: ts("2026-11-21T00:00:00Z"),
        gpus: 16,
    }];
    let inv = invoice(false, "2026-11", std::slice::from_ref(&c), &[], &deep);
    assert_eq!(inv.lines[1].amount, usd("-6048.00"));
    assert_eq!(inv.total, usd("6048.00"));
}

#[test]
fn availability_exactly_at_the_sla_earns_no_credit_and_one_second_more_does() {
    let c = mid_month_contract();
    let down = |secs: i64| Downtime {
        contract: c.id,
        start: ts("2026-11-20T00:00:00Z"),
        end: ts("2026-11-20T00:00:00Z").plus_seconds(secs),
        gpus: 16,
    };
    // 16 GPUs × 1,296 s = 20,736 GPU-s = 0.1% of 20,736,000 → exactly 99.900%: no credit.
    let inv = invoice(
        false,
        "2026-11",
        std::slice::from_ref(&c),
        &[],
        &[down(1_296)],
    );
    assert_eq!(inv.lines.len(), 1);
    assert_eq!(inv.total, usd("12096.00"));
    // 1,297 s → 20,752 GPU-s → (20,736,000 − 20,752) × 100,000 / 20,736,000 = 99,899.92…
    // → 99,899 < 99,900 and ≥ 99,000: 10% tier = $1,209.60.
    let inv = invoice(
        false,
        "2026-11",
        std::slice::from_ref(&c),
        &[],
        &[down(1_297)],
    );
    assert_eq!(inv.lines[1].amount, usd("-1209.60"));
    assert_eq!(inv.total, usd("10886.40"));
}

#[test]
fn on_demand_line_is_rounded_once_per_line() {
    // Two preemptions mid-hour: 8 GPUs × 37 min 12 s (2,232 s) at $2.85 = $14.136 each
    // (exact to the micro-dollar). The line is 2 × 14.136 = $28.272 → $28.27 (rounding
    // each record first would give 14.14 × 2 = $28.28).
    let mut recs = usage(
        1,
        tenant(1),
        Class::OnDemand,
        site(1),
        8,
        "2026-11-03T10:00:00Z",
        "2026-11-03T10:37:12Z",
        &[],
    );
    recs.extend(usage(
        2,
        tenant(1),
        Class::OnDemand,
        site(1),
        8,
        "2026-11-04T10:00:00Z",
        "2026-11-04T10:37:12Z",
        &[],
    ));
    assert_eq!(recs[0].amount, usd("14.136"));
    let inv = invoice(false, "2026-11", &[], &recs, &[]);
    assert_eq!(inv.lines.len(), 1);
    assert_eq!(inv.lines[0].kind, LineKind::OnDemand);
    assert_eq!(inv.lines[0].quantity_gpu_seconds, 35_712);
    assert_eq!(inv.lines[0].amount, usd("28.27"));
    assert_eq!(inv.total, usd("28.27"));
}

#[test]
fn bankers_rounding_on_invoice_lines() {
    // At $9.00/GPU-hour a GPU-second costs $0.0025.
    // 6 s = $0.015 → $0.02 (tie, 1 is odd → 2); 10 s = $0.025 → $0.02 (tie, 2 is even);
    // 2 s = $0.005 → $0.00 (tie, 0 is even).
    let cases = [(6, "0.02"), (10, "0.02"), (2, "0"), (14, "0.04")]; // 14 s = 0.035 → 0.04
    for (secs, want) in cases {
        let start = ts("2026-11-03T10:00:00Z");
        let end = start.plus_seconds(secs);
        let recs = usage(
            1,
            tenant(1),
            Class::OnDemand,
            site(9),
            1,
            &start.to_string(),
            &end.to_string(),
            &[],
        );
        let inv = invoice(false, "2026-11", &[], &recs, &[]);
        assert_eq!(inv.lines[0].amount, usd(want), "{secs} s");
    }
}

#[test]
fn spot_lines_are_priced_per_interval() {
    // 8 spot GPUs 12:00–15:30 with spot $1.00, then $1.60 from 13:30, $1.20 from 15:00:
    // 12 GPU-h × 1.00 + 12 × 1.60 + 4 × 1.20 = 12.00 + 19.20 + 4.80 = $36.00.
    let series = [
        (ts("2026-11-03T11:00:00Z"), usd("1.00")),
        (ts("2026-11-03T13:30:00Z"), usd("1.60")),
        (ts("2026-11-03T15:00:00Z"), usd("1.20")),
    ];
    let recs = usage(
        1,
        tenant(1),
        Class::Spot,
        site(1),
        8,
        "2026-11-03T12:00:00Z",
        "2026-11-03T15:30:00Z",
        &series,
    );
    assert_eq!(recs.len(), 3);
    let inv = invoice(false, "2026-11", &[], &recs, &[]);
    assert_eq!(inv.lines.len(), 1);
    assert_eq!(inv.lines[0].kind, LineKind::Spot);
    assert_eq!(inv.lines[0].quantity_gpu_seconds, 8 * 12_600);
    assert_eq!(inv.total, usd("36.00"));
}

#[test]
fn internal_chargeback_is_shown_but_not_billed() {
    // Internal: 8 GPUs × 24 h = 192 GPU-h × $1.20 shadow = $230.40, not billed.
    // On-demand by the same internal tenant: 1 GPU × 1 h × $2.85 = $2.85, billed.
    let mut recs = usage(
        1,
        tenant(1),
        Class::Internal,
        site(1),
        8,
        "2026-11-03T00:00:00Z",
        "2026-11-04T00:00:00Z",
        &[],
    );
    recs.extend(usage(
        2,
        tenant(1),
        Class::OnDemand,
        site(1),
        1,
        "2026-11-05T00:00:00Z",
        "2026-11-05T01:00:00Z",
        &[],
    ));
    let inv = invoice(true, "2026-11", &[], &recs, &[]);
    let kinds: Vec<_> = inv.lines.iter().map(|l| (l.kind, l.billed)).collect();
    assert_eq!(
        kinds,
        vec![
            (LineKind::OnDemand, true),
            (LineKind::InternalChargeback, false)
        ]
    );
    assert_eq!(inv.lines[1].amount, usd("230.40"));
    assert_eq!(inv.lines[1].quantity_gpu_seconds, 691_200);
    assert_eq!(inv.total, usd("2.85"));
    assert_eq!(inv.shadow_total, usd("230.40"));
    // Not internal: internal-class records (which the service never creates for an
    // external tenant) do not appear.
    let ext = invoice(false, "2026-11", &[], &recs, &[]);
    assert_eq!(ext.lines.len(), 1);
    assert_eq!(ext.shadow_total, Money::ZERO);
}

#[test]
fn usage_across_a_month_boundary_lands_in_each_month() {
    // 4 GPUs 2026-10-31 22:30 → 2026-11-01 01:15 at $2.85:
    // October 1.5 h × 4 = 6 GPU-h = $17.10; November 1.25 h × 4 = 5 GPU-h = $14.25.
    let recs = usage(
        1,
        tenant(1),
        Class::OnDemand,
        site(1),
        4,
        "2026-10-31T22:30:00Z",
        "2026-11-01T01:15:00Z",
        &[],
    );
    assert_eq!(
        invoice(false, "2026-10", &[], &recs, &[]).total,
        usd("17.10")
    );
    assert_eq!(
        invoice(false, "2026-11", &[], &recs, &[]).total,
        usd("14.25")
    );
}

#[test]
fn lines_are_in_a_stable_order_and_regeneration_is_identical() {
    let c1 = mid_month_contract();
    let mut c2 = mid_month_contract();
    c2.id = contract_id(2);
    c2.gpus = 8;
    let mut other = mid_month_contract();
    other.id = contract_id(3);
    other.tenant = tenant(2);
    let mut recs = Vec::new();
    for (i, st, class) in [
        (1, site(2), Class::Spot),
        (2, site(1), Class::OnDemand),
        (3, site(2), Class::OnDemand),
        (4, site(1), Class::Internal),
    ] {
        let series = [(ts("2026-01-01T00:00:00Z"), usd("1.00"))];
        recs.extend(usage(
            i,
            tenant(1),
            class,
            st,
            8,
            "2026-11-20T00:00:00Z",
            "2026-11-20T05:00:00Z",
            &series,
        ));
    }
    // Another tenant's usage is ignored.
    recs.extend(usage(
        9,
        tenant(2),
        Class::OnDemand,
        site(1),
        8,
        "2026-11-20T00:00:00Z",
        "2026-11-21T00:00:00Z",
        &[],
    ));
    let down = [Downtime {
        contract: c2.id,
        start: ts("2026-11-20T00:00:00Z"),
        end: ts("2026-11-22T00:00:00Z"),
        gpus: 8,
    }];
    let contracts = [c2.clone(), other, c1.clone(), c2.clone()];
    let a = invoice(true, "2026-11", &contracts, &recs, &down);
    let order: Vec<_> = a
        .lines
        .iter()
        .map(|l| (l.kind, l.contract, l.site))
        .collect();
    assert_eq!(
        order,
        vec![
            (LineKind::Commitment, Some(c1.id), Some(site(1))),
            (LineKind::Commitment, Some(c2.id), Some(site(1))),
            (LineKind::OnDemand, None, Some(site(1))),
            (LineKind::OnDemand, None, Some(site(2))),
            (LineKind::Spot, None, Some(site(2))),
            (LineKind::SlaCredit, Some(c2.id), Some(site(1))),
            (LineKind::InternalChargeback, None, Some(site(1))),
        ]
    );
    // c1 $12,096.00; c2 (8 GPUs) $6,048.00; on-demand 40 GPU-h × 2.85 = $114.00 at each
    // site; spot 40 GPU-h × 1.00 = $40.00; c2 down 2 days of 15 → 86.666% → 50% credit
    // = −$3,024.00. Total 12,096 + 6,048 + 114 + 114 + 40 − 3,024 = $15,388.00.
    // Chargeback 40 GPU-h × 1.20 = $48.00.
    assert_eq!(a.total, usd("15388.00"));
    assert_eq!(a.shadow_total, usd("48.00"));
    // Same inputs in another order → the identical invoice.
    let mut rev_recs = recs.clone();
    rev_recs.reverse();
    let mut rev_contracts = contracts.to_vec();
    rev_contracts.reverse();
    let b = invoice(true, "2026-11", &rev_contracts, &rev_recs, &down);
    assert_eq!(a, b);
    assert_eq!(a, invoice(true, "2026-11", &contracts, &recs, &down));
}
