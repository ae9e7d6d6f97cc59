//! Bounds how often Bulwark restores one object that someone else keeps changing, so two
//! writers never loop hot: a few repairs in a minute are free, then each further one waits
//! 15 s, 30 s, 60 s ... up to 5 minutes, until the object has been left alone for a minute.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Repairs of one object allowed within [`WINDOW`] before backing off.
pub const FREE_REPAIRS: usize = 3;
/// Window over which repairs are counted.
pub const WINDOW: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_secs(15);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Entry {
    /// Repairs made within the window.
    recent: VecDeque<Instant>,
    /// Last time the object needed a repair, made or deferred.
    last_needed: Option<Instant>,
    blocked_until: Option<Instant>,
    strikes: u32,
}

/// Repair history per object (`namespace/kind/name`), shared by every reconcile.
#[derive(Default)]
pub struct RepairBudget {
    entries: Mutex<HashMap<String, Entry>>,
}

impl RepairBudget {
    /// Records a repair of `key` at `now` and returns Ok, or returns how long to wait.
    pub fn allow(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut entries = self.entries.lock().expect("repair budget lock");
        let entry = entries.entry(key.to_string()).or_default();
        while entry
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            entry.recent.pop_front();
        }
        if entry
            .last_needed
            .is_none_or(|t| now.duration_since(t) >= WINDOW)
        {
            // Left alone for a whole window: the fight is over.
            entry.strikes = 0;
            entry.blocked_until = None;
        }
        entry.last_needed = Some(now);
        let released = match entry.blocked_until {
            Some(until) if now < until => return Err(until - now),
            Some(_) => {
                entry.blocked_until = None;
                true
            }
            None => false,
        };
        if released {
            // The repair a backoff was waiting for; the next one waits longer.
            entry.strikes += 1;
            entry.blocked_until = Some(now + backoff(entry.strikes));
            entry.recent.push_back(now);
            return Ok(());
        }
        if entry.recent.len() < FREE_REPAIRS {
            entry.recent.push_back(now);
            return Ok(());
        }
        entry.strikes += 1;
        let wait = backoff(entry.strikes);
        entry.blocked_until = Some(now + wait);
        Err(wait)
    }

    /// Forgets objects not repaired for a window, so the map stays as small as the fights.
    pub fn prune(&self, now: Instant) {
        let mut entries = self.entries.lock().expect("repair budget lock");
        entries.retain(|_, e| {
            e.blocked_until.is_some_and(|u| u > now)
                || e.recent
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < WINDOW)
        });
    }
}

fn backoff(strikes: u32) -> Duration {
    let exp = strikes.saturating_sub(1).min(5);
    (FIRST_BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts repairs allowed over `seconds` when someone rewrites the object every `every`.
    fn allowed_over(seconds: u64, every: Duration) -> Vec<u64> {
        let budget = RepairBudget::default();
        let start = Instant::now();
        let mut at = Duration::ZERO;
        let mut allowed = Vec::new();
        while at < Duration::from_secs(seconds) {
            if budget.allow("ns/Secret/s", start + at).is_ok() {
                allowed.push(at.as_secs());
            }
            at += every;
        }
        allowed
    }

    #[test]
    fn a_fight_is_repaired_ever_less_often() {
        let allowed = allowed_over(1200, Duration::from_millis(100));
        // Three at once, then after 15 s, 30 s, 60 s, 120 s, 240 s, 300 s, 300 s ...
        assert_eq!(&allowed[..3], &[0, 0, 0]);
        let gaps: Vec<u64> = allowed[2..].windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(&gaps[..5], &[15, 30, 60, 120, 240]);
        assert!(gaps[5..].iter().all(|g| *g == 300), "{gaps:?}");
        // Writes per minute stay bounded: five in the first minute (three, then after 15 s and
        // 45 s), at most one in any later minute.
        for minute in 0..20 {
            let n = allowed.iter().filter(|s| **s / 60 == minute).count();
            let bound = if minute == 0 { FREE_REPAIRS + 2 } else { 1 };
            assert!(n <= bound, "minute {minute}: {n} repairs");
        }
    }

    #[test]
    fn occasional_drift_is_always_repaired() {
        // One change every 30 s never exhausts the budget.
        let allowed = allowed_over(600, Duration::from_secs(30));
        assert_eq!(allowed.len(), 20);
    }

    #[test]
    fn a_quiet_minute_ends_the_fight() {
        let budget = RepairBudget::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            budget.allow("k", t0).unwrap();
        }
        assert!(budget.allow("k", t0).is_err());
        let later = t0 + Duration::from_secs(200);
        budget.allow("k", later).unwrap();
        budget.allow("k", later).unwrap();
        budget.allow("k", later).unwrap();
        assert_eq!(
            budget.allow("k", later),
            Err(FIRST_BACKOFF),
            "strikes start again"
        );
        budget.prune(later + Duration::from_secs(1000));
        assert!(budget.entries.lock().unwrap().is_empty());
    }
}
