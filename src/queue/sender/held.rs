//! The lease book: the rows this instance holds, each until when on the boot clock. The
//! dispatcher and each request read it before sending; the renewer and the writer change it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::db::clock::Mono;
use crate::queue::store;

/// Rows this instance holds a lease on, each until when on the boot clock, for the renewer and
/// the dispatcher.
#[derive(Debug, Default)]
pub(super) struct Held {
    pub(super) rows: HashMap<i64, Mono>,
    /// Rows whose outcome the writer is recording: a renewal skips them (they are locked), and
    /// that is not a lost lease.
    pub(super) writing: HashSet<i64>,
}

pub(super) type SharedHeld = Arc<Mutex<Held>>;

pub(super) fn lock_held(h: &SharedHeld) -> std::sync::MutexGuard<'_, Held> {
    h.lock().unwrap_or_else(|e| e.into_inner())
}

impl Held {
    /// Takes the leases a claim or renewal wrote, held from `sent` (when its statement left:
    /// the database wrote them later, so they surely last at least this long).
    pub(super) fn lease(&mut self, sent: Mono, leases: &[store::Leased]) {
        for l in leases {
            let until = sent + l.lasts;
            self.rows
                .entry(l.id)
                .and_modify(|u| *u = (*u).max(until))
                .or_insert(until);
        }
    }

    /// After a renewal of `asked` that returned `renewed`: the rows it did not return leave
    /// this instance's hands. Returns how many of those were lost (not being recorded).
    pub(super) fn renewed(
        &mut self,
        sent: Mono,
        asked: &[i64],
        renewed: &[store::Leased],
    ) -> usize {
        let kept: HashSet<i64> = renewed.iter().map(|l| l.id).collect();
        let mut lost = 0;
        for id in asked.iter().filter(|id| !kept.contains(id)) {
            if self.rows.remove(id).is_some() && !self.writing.contains(id) {
                lost += 1;
            }
        }
        let still: Vec<store::Leased> = renewed
            .iter()
            .filter(|l| self.rows.contains_key(&l.id))
            .cloned()
            .collect();
        self.lease(sent, &still);
        lost
    }

    /// Until when this instance's lease on `id` surely lasts; `None` when it holds none.
    pub(super) fn valid_until(&self, id: i64) -> Option<Mono> {
        self.rows.get(&id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn leased(id: i64, secs: u64) -> store::Leased {
        store::Leased {
            id,
            lasts: Duration::from_secs(secs),
        }
    }

    #[test]
    fn a_lease_lasts_from_when_its_statement_was_sent() {
        let t0 = Mono::now();
        let mut h = Held::default();
        h.lease(t0, &[leased(1, 25)]);
        assert_eq!(h.valid_until(1), Some(t0 + Duration::from_secs(25)));
        h.lease(t0 + Duration::from_secs(9), &[leased(2, 25)]);
        assert_eq!(h.valid_until(2), Some(t0 + Duration::from_secs(34)));
        assert_eq!(h.valid_until(3), None);
    }

    #[test]
    fn a_row_a_renewal_does_not_return_leaves_at_once_and_only_returned_rows_are_extended() {
        let t0 = Mono::now();
        let mut h = Held::default();
        h.lease(t0, &[leased(1, 25), leased(2, 25), leased(3, 25)]);
        h.writing.insert(3);
        let t1 = t0 + Duration::from_secs(3);
        // Row 2 was taken by another instance; row 3 is being recorded (locked, skipped).
        let lost = h.renewed(t1, &[1, 2, 3], &[leased(1, 25)]);
        assert_eq!(lost, 1, "only row 2 was lost");
        assert_eq!(h.valid_until(1), Some(t1 + Duration::from_secs(25)));
        assert_eq!(h.valid_until(2), None);
        assert_eq!(h.valid_until(3), None);
    }

    #[test]
    fn a_renewal_never_shortens_a_lease_nor_brings_back_a_row_recorded_meanwhile() {
        let t0 = Mono::now();
        let mut h = Held::default();
        h.lease(t0 + Duration::from_secs(10), &[leased(1, 25)]);
        let lost = h.renewed(t0, &[1, 2], &[leased(1, 5), leased(2, 25)]);
        assert_eq!(lost, 0);
        assert_eq!(h.valid_until(1), Some(t0 + Duration::from_secs(35)));
        assert_eq!(h.valid_until(2), None, "recorded while the renewal ran");
    }
}
