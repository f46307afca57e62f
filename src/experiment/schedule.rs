//! Cron schedules (local time). Pure: the caller supplies "now" and the queue's contents.

use chrono::{DateTime, TimeZone};

#[derive(Debug, thiserror::Error)]
#[error("invalid cron expression {expr:?}: {reason}")]
pub struct ScheduleError {
    pub expr: String,
    pub reason: String,
}

/// A parsed cron expression: the usual 5 fields (minute hour day month weekday), or 6 with a
/// leading seconds field for sub-minute schedules.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    cron: croner::Cron,
}

impl Schedule {
    pub fn parse(expr: &str) -> Result<Self, ScheduleError> {
        let cron = croner::Cron::new(expr)
            .with_seconds_optional()
            .parse()
            .map_err(|e| ScheduleError {
                expr: expr.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Schedule {
            expr: expr.to_string(),
            cron,
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The first firing strictly after `after`, in `after`'s time zone.
    pub fn next_after<Tz: TimeZone>(&self, after: &DateTime<Tz>) -> Option<DateTime<Tz>> {
        self.cron.find_next_occurrence(after, false).ok()
    }
}

/// Whether a firing schedule should enqueue a run: not when a run of the same experiment is
/// already waiting or running, so a long run does not pile up scheduled copies behind it.
pub fn should_enqueue<'a>(
    experiment: &str,
    queued_or_active: impl IntoIterator<Item = &'a str>,
) -> bool {
    !queued_or_active.into_iter().any(|e| e == experiment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Local, TimeZone, Utc};

    #[test]
    fn nightly_fires_at_three() {
        let s = Schedule::parse("0 3 * * *").unwrap();
        let t = Utc.with_ymd_and_hms(2026, 12, 4, 20, 0, 0).unwrap();
        let next = s.next_after(&t).unwrap();
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 12, 5, 3, 0, 0).unwrap());
        // Strictly after: at exactly 03:00 the next one is a day later.
        assert_eq!(
            s.next_after(&next).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 6, 3, 0, 0).unwrap()
        );
    }

    #[test]
    fn every_minute_in_local_time() {
        let s = Schedule::parse("* * * * *").unwrap();
        let now = Local::now();
        let next = s.next_after(&now).unwrap();
        let gap = next - now;
        assert!(gap.num_milliseconds() > 0 && gap.num_seconds() <= 60);
    }

    #[test]
    fn optional_seconds_field() {
        let s = Schedule::parse("*/10 * * * * *").unwrap();
        let t = Utc.with_ymd_and_hms(2026, 12, 4, 20, 0, 1).unwrap();
        assert_eq!(
            s.next_after(&t).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 4, 20, 0, 10).unwrap()
        );
    }

    #[test]
    fn bad_expressions_are_refused() {
        for e in ["0 25 * * *", "not cron", "* * * *", "61 * * * *"] {
            assert!(Schedule::parse(e).is_err(), "{e}");
        }
    }

    #[test]
    fn a_waiting_run_is_not_queued_twice() {
        assert!(should_enqueue("nightly", ["other"]));
        assert!(!should_enqueue("nightly", ["other", "nightly"]));
    }
}
