//! Demand: the requests a run replays, from a trace and from generators.
//!
//! A generator is a non-homogeneous Poisson process (drawn by thinning) whose rate follows a
//! daily cycle (peak at 14:00 UTC), a weekly cycle (weekdays above, weekends below, the mean
//! kept), linear growth over the year and a monthly log-normal "volatility" factor; durations
//! are log-normal (heavy-tailed), cut at a maximum; shapes come from a weighted mix. Every
//! draw comes from a seeded generator, one stream per generator, so a run is reproducible.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "floats here are workload figures (hours, rates, counts) checked finite and in range before they become integers, and `as` saturates; money never passes through a float"
)]

use neocloud_allocator::synthetic::Rng;
use neocloud_types::{Class, Shape};

use crate::scenario::{GeneratorSpec, Scenario, Variant};

/// One request to replay.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// Arrival, seconds after the start.
    pub arrival: i64,
    /// Index into the scenario's tenants.
    pub tenant: u32,
    /// Class of service.
    pub class: Class,
    /// Index into the fleet's models.
    pub model: u32,
    /// Index into the fleet's sites, when the request names one.
    pub site: Option<u32>,
    /// Shape.
    pub shape: Shape,
    /// Seconds it runs once placed.
    pub duration: i64,
    /// Seconds it may wait in the queue.
    pub max_wait: i64,
}

const DAY: i64 = 86_400;
const YEAR: f64 = 365.0 * 86_400.0;

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut Rng) -> f64 {
    let u1 = 1.0 - rng.unit();
    let u2 = rng.unit();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Mixes a seed with a stream number into an independent seed.
pub(crate) fn stream(seed: u64, n: u64) -> Rng {
    let mut r = Rng::new(seed ^ n.wrapping_mul(0xd6e8_feb8_6659_fd93));
    let s = r.next_u64();
    Rng::new(s)
}

struct Rate<'a> {
    g: &'a GeneratorSpec,
    start_s: i64,
    horizon: i64,
    vol: Vec<f64>,
}

impl Rate<'_> {
    /// Arrivals per second at `t` seconds after the start.
    fn at(&self, t: i64) -> f64 {
        let abs = self.start_s + t;
        let day_s = abs.rem_euclid(DAY) as f64;
        let hours = day_s / 3600.0;
        let diurnal = 1.0 + self.g.diurnal * (std::f64::consts::TAU * (hours - 8.0) / 24.0).sin();
        // 1970-01-01 was a Thursday: day 0 has weekday index 3 (Monday = 0).
        let weekday = (abs.div_euclid(DAY) + 3).rem_euclid(7);
        let weekly = if weekday >= 5 {
            1.0 - self.g.weekly
        } else {
            1.0 + self.g.weekly * 2.0 / 5.0
        };
        let growth = 1.0 + self.g.growth_per_year * t as f64 / YEAR;
        let month = usize::try_from(t / (30 * DAY)).unwrap_or(0);
        let vol = self.vol.get(month).copied().unwrap_or(1.0);
        self.g.arrivals_per_day / DAY as f64 * diurnal * weekly * growth * vol
    }

    fn max(&self) -> f64 {
        let vmax = self.vol.iter().copied().fold(1.0f64, f64::max);
        let growth = 1.0 + self.g.growth_per_year * self.horizon as f64 / YEAR;
        self.g.arrivals_per_day / DAY as f64
            * (1.0 + self.g.diurnal)
            * (1.0 + self.g.weekly * 2.0 / 5.0)
            * growth.max(1.0)
            * vmax
    }
}

/// Draws one generator's requests over the horizon.
fn generate(
    g: &GeneratorSpec,
    model: u32,
    start_s: i64,
    horizon: i64,
    rng: &mut Rng,
    out: &mut Vec<Job>,
) {
    let months = usize::try_from(horizon / (30 * DAY) + 1).unwrap_or(1);
    let vol = (0..months)
        .map(|_| {
            let s = g.volatility;
            (s * normal(rng) - s * s / 2.0).exp()
        })
        .collect();
    let rate = Rate {
        g,
        start_s,
        horizon,
        vol,
    };
    let max = rate.max();
    if max <= 0.0 {
        return;
    }
    let total_w: f64 = g.shapes.iter().map(|s| s.1).sum();
    let max_dur = (g.max_duration_hours * 3600.0).max(60.0);
    let mut t = 0.0f64;
    loop {
        t += rng.exp(1.0 / max);
        if t >= horizon as f64 {
            break;
        }
        let ts = t as i64;
        if rng.unit() * max > rate.at(ts) {
            continue;
        }
        let mut pick = rng.unit() * total_w;
        let mut shape = g.shapes[0].0;
        for &(s, w) in &g.shapes {
            if pick < w {
                shape = s;
                break;
            }
            pick -= w;
        }
        let dur = g.duration_median_hours * 3600.0 * (g.duration_sigma * normal(rng)).exp();
        out.push(Job {
            arrival: ts,
            tenant: u32::try_from(g.tenant).unwrap_or(0),
            class: g.class,
            model,
            site: g.site.and_then(|s| u32::try_from(s).ok()),
            shape,
            duration: dur.clamp(60.0, max_dur).round() as i64,
            max_wait: (g.max_wait_hours * 3600.0).round() as i64,
        });
    }
}

/// Every request of a variant under a seed: the trace's and the generators', by arrival
/// (ties keep trace order, then generator order).
pub fn jobs(sc: &Scenario, v: &Variant, models: &[String], seed: u64) -> Vec<Job> {
    let model_of = |m: &str| {
        models
            .binary_search_by(|x| x.as_str().cmp(m))
            .ok()
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or(0)
    };
    // Room for what the generators are expected to draw, and half as much again (growth,
    // volatility, relaunches appended later): a year's list is a million requests, and
    // growing it by doubling copies it each time, into memory touched for the first time.
    // Room reserved and never used costs no memory.
    let years = sc.horizon_secs as f64 / YEAR;
    let expected: f64 = v
        .generators
        .iter()
        .map(|g| g.arrivals_per_day * 365.0 * years * (1.0 + g.growth_per_year.max(0.0) * years))
        .sum();
    let room = (expected * 1.5).clamp(0.0, 1e8) as usize;
    let mut out = Vec::with_capacity(sc.trace.len() + room);
    for r in sc.trace.iter() {
        if r.arrival_s >= sc.horizon_secs {
            continue;
        }
        let tenant = sc
            .tenants
            .iter()
            .position(|t| t.name == r.tenant)
            .unwrap_or(0);
        let site = r
            .site
            .as_ref()
            .and_then(|s| sc.fleet.sites.iter().position(|x| &x.name == s));
        out.push(Job {
            arrival: r.arrival_s,
            tenant: u32::try_from(tenant).unwrap_or(0),
            class: r.class,
            model: model_of(&r.gpu_model),
            site: site.and_then(|s| u32::try_from(s).ok()),
            shape: r.shape,
            duration: r.duration_s,
            max_wait: r.max_wait_s,
        });
    }
    let start_s = sc.start.micros().div_euclid(1_000_000);
    for (i, g) in v.generators.iter().enumerate() {
        let mut rng = stream(seed, i as u64 + 1);
        generate(
            g,
            model_of(&g.gpu_model),
            start_s,
            sc.horizon_secs,
            &mut rng,
            &mut out,
        );
    }
    out.sort_by_key(|j| j.arrival);
    out
}
