//! Selling within the sellable capacity: the one rule `serve` and the simulator both place
//! on-demand and internal work by.
//!
//! A site's GPUs of one model are sellable except for the spare buffer kept for failover;
//! contracts promise part of what is sellable; on-demand and internal work may hold only
//! what is left, so that no GPU-hour is sold twice. Spot work may use anything idle and
//! reserved work runs in its contract's pool: neither is held to this rule. A request that
//! names no site tries each site with its model in turn.

use neocloud_types::{Class, InstanceId, SiteId};

use crate::{Allocation, Refusal, Request};

/// GPUs of a (site, model) that may be sold: all of them but the spare buffer, `spare_milli`
/// thousandths of the total rounded up.
pub fn sellable_gpus(total: u64, spare_milli: u32) -> u64 {
    total - (total.saturating_mul(u64::from(spare_milli))).div_ceil(1000)
}

/// Whether on-demand and internal work may hold `held_milli` thousandths of a GPU in all
/// (the placement being checked included) where contracts promise `committed` of the
/// `sellable` GPUs.
pub fn within_sellable(held_milli: u64, committed: u64, sellable: u64) -> bool {
    held_milli.saturating_add(committed.saturating_mul(1000)) <= sellable.saturating_mul(1000)
}

/// What [`place_within_sellable`] needs of its caller: the allocator as the caller holds
/// it, and the caller's count of what is sold.
pub trait Seller {
    /// Places `req` (the allocator's decision, recorded).
    fn place(&mut self, req: &Request) -> Result<Allocation, Refusal>;
    /// Undoes a placement that the sellable check refused.
    fn release(&mut self, id: InstanceId);
    /// The sites that have `model`, in the order a request without a site tries them.
    fn sites_with(&self, model: &str) -> Vec<SiteId>;
    /// `Ok` when `a`, just placed, stays within its site's sellable capacity (see
    /// [`within_sellable`]); otherwise the refusal to report.
    fn check_sellable(&self, a: &Allocation) -> Result<(), Refusal>;
}

/// Places `req` within the sellable capacity. On-demand and internal requests are checked
/// after the allocator places them and released again when over; without a site in the
/// request, every site with the model is tried in turn. The flag of an error says whether
/// the allocator refused (`true`) or the sellable capacity did (`false`).
pub fn place_within_sellable<S: Seller>(
    seller: &mut S,
    req: &Request,
) -> Result<Allocation, (Refusal, bool)> {
    if !matches!(req.class, Class::OnDemand | Class::Internal) {
        return seller.place(req).map_err(|e| (e, true));
    }
    let mut tried: Vec<SiteId> = Vec::new();
    let mut last: Option<(Refusal, bool)> = None;
    let sites = seller.sites_with(&req.gpu_model);
    loop {
        let mut r = req.clone();
        if r.site.is_none() && !tried.is_empty() {
            // Pin the next untried site that has the model.
            match sites.iter().find(|s| !tried.contains(s)) {
                Some(&s) => r.site = Some(s),
                None => break,
            }
        }
        let a = match seller.place(&r) {
            Ok(a) => a,
            Err(e) => match (req.site, r.site) {
                // Pinned by us to one more site: remember and go on to the next.
                (None, Some(s)) => {
                    tried.push(s);
                    last = Some(last.unwrap_or((e, true)));
                    continue;
                }
                _ => return Err(last.unwrap_or((e, true))),
            },
        };
        match seller.check_sellable(&a) {
            Ok(()) => return Ok(a),
            Err(refusal) => {
                seller.release(a.id);
                last = Some((refusal, false));
            }
        }
        if req.site.is_some() {
            break;
        }
        tried.push(a.site);
    }
    Err(last.unwrap_or((
        Refusal::NoCapacity {
            free_gpus: 0,
            reason: "no site has room".to_string(),
        },
        true,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spare_buffer_rounds_up_and_held_thousandths_count() {
        assert_eq!(sellable_gpus(220_000, 20), 215_600);
        assert_eq!(sellable_gpus(10, 20), 9);
        assert_eq!(sellable_gpus(0, 20), 0);
        assert!(within_sellable(4_400_000, 215_600, 220_000));
        assert!(!within_sellable(4_400_001, 215_600, 220_000));
        // A quarter of a GPU fits in the last whole GPU left; 1001 thousandths do not.
        assert!(within_sellable(250, 9, 10));
        assert!(!within_sellable(1001, 9, 10));
    }
}
