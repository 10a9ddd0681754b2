//! Cron schedules as Kubernetes reads them (robfig/cron's standard parser): five fields
//! (minute, hour, day of month, month, day of week) with lists, ranges, steps, `*`/`?`
//! and month/weekday names; the `@yearly`…`@hourly` macros; a `CRON_TZ=`/`TZ=` prefix or
//! the CronJob's `timeZone`. Day of month and day of week match as cron does: both
//! when either is `*`, otherwise either. Times are computed in the schedule's zone, and
//! "now" is always an argument, so the logic is tested with a clock the test controls.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// How far ahead (or back) a schedule is searched before it is deemed never to fire, as
/// robfig/cron gives up after five years.
const SEARCH_DAYS: i32 = 366 * 5;

/// Beyond this many missed start times Kubernetes stops counting (and warns).
pub const MAX_MISSED: u32 = 100;

/// Why a schedule or time zone was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("empty schedule")]
    Empty,
    #[error("expected exactly 5 fields, found {found}: {spec:?}")]
    FieldCount { found: usize, spec: String },
    #[error("unrecognized descriptor: {0}")]
    Descriptor(String),
    #[error("invalid {field} field {value:?}")]
    Field { field: &'static str, value: String },
    #[error("unknown time zone {name:?}")]
    TimeZone {
        name: String,
        #[source]
        source: jiff::Error,
    },
}

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Debug, Clone)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// Whether day of month / day of week were `*` (or `?`): then both must match.
    dom_star: bool,
    dow_star: bool,
    zone: TimeZone,
}

struct Bounds {
    field: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Bounds = Bounds { field: "minute", min: 0, max: 59, names: &[] };
const HOUR: Bounds = Bounds { field: "hour", min: 0, max: 23, names: &[] };
const DOM: Bounds = Bounds { field: "day of month", min: 1, max: 31, names: &[] };
const MONTH: Bounds = Bounds {
    field: "month",
    min: 1,
    max: 12,
    names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
};
const DOW: Bounds = Bounds { field: "day of week", min: 0, max: 6, names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"] };

impl Bounds {
    fn value(&self, s: &str) -> Result<u32, ScheduleError> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == lower) {
            // Month names start at 1, weekday names at 0 (the field's minimum).
            return Ok(self.min + u32::try_from(i).unwrap_or(0));
        }
        s.parse::<u32>().map_err(|_| self.invalid(s))
    }

    fn invalid(&self, value: &str) -> ScheduleError {
        ScheduleError::Field { field: self.field, value: value.to_string() }
    }

    /// Parses one field: returns its bits and whether it was a bare `*`/`?`.
    fn parse(&self, expr: &str) -> Result<(u64, bool), ScheduleError> {
        let mut bits = 0u64;
        let mut star = false;
        for part in expr.split(',') {
            let mut range_step = part.split('/');
            let range = range_step.next().unwrap_or_default();
            let step = range_step.next();
            if range_step.next().is_some() {
                return Err(self.invalid(part));
            }
            let (mut start, mut end, mut is_star) = if range == "*" || range == "?" {
                (self.min, self.max, true)
            } else {
                let mut low_high = range.split('-');
                let low = self.value(low_high.next().unwrap_or_default())?;
                let high = match low_high.next() {
                    Some(h) => Some(self.value(h)?),
                    None => None,
                };
                if low_high.next().is_some() {
                    return Err(self.invalid(part));
                }
                (low, high.unwrap_or(low), false)
            };
            let mut stride = 1u32;
            if let Some(step) = step {
                stride = step.parse::<u32>().map_err(|_| self.invalid(part))?;
                if stride == 0 {
                    return Err(self.invalid(part));
                }
                // "N/step" means "N-max/step".
                if !is_star && !range.contains('-') {
                    end = self.max;
                }
                if stride > 1 {
                    is_star = false;
                }
            }
            if start < self.min || end > self.max || start > end {
                return Err(self.invalid(part));
            }
            while start <= end {
                bits |= 1 << start;
                start += stride;
            }
            star |= is_star;
        }
        Ok((bits, star))
    }
}

fn has(bits: u64, v: impl Into<i64>) -> bool {
    u32::try_from(v.into()).is_ok_and(|v| v < 64 && bits & (1 << v) != 0)
}

/// Looks up an IANA zone name ("UTC", "Europe/Paris").
pub fn zone(name: &str) -> Result<TimeZone, ScheduleError> {
    TimeZone::get(name).map_err(|source| ScheduleError::TimeZone { name: name.to_string(), source })
}

impl Schedule {
    /// Parses `spec` in the zone `time_zone` (the CronJob's `spec.timeZone`) or, without
    /// one, in the zone a `CRON_TZ=`/`TZ=` prefix names, or else the controller's local
    /// zone (as kube-controller-manager does).
    pub fn parse(spec: &str, time_zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let mut spec = spec.trim();
        let mut zone_name = time_zone.map(str::to_string);
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            let (prefix, rest) = spec.split_once(char::is_whitespace).ok_or(ScheduleError::Empty)?;
            let name = prefix.split_once('=').map(|(_, n)| n).unwrap_or_default();
            if zone_name.is_none() {
                zone_name = Some(name.to_string());
            }
            spec = rest.trim();
        }
        let zone = match zone_name.as_deref() {
            Some(name) => zone(name)?,
            None => TimeZone::try_system().unwrap_or(TimeZone::UTC),
        };
        if spec.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let expanded = if spec.starts_with('@') {
            match spec.to_ascii_lowercase().as_str() {
                "@yearly" | "@annually" => "0 0 1 1 *",
                "@monthly" => "0 0 1 * *",
                "@weekly" => "0 0 * * 0",
                "@daily" | "@midnight" => "0 0 * * *",
                "@hourly" => "0 * * * *",
                _ => return Err(ScheduleError::Descriptor(spec.to_string())),
            }
        } else {
            spec
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields[..] else {
            return Err(ScheduleError::FieldCount { found: fields.len(), spec: spec.to_string() });
        };
        let (days_of_month, dom_star) = DOM.parse(dom)?;
        let (days_of_week, dow_star) = DOW.parse(dow)?;
        Ok(Schedule {
            minutes: MINUTE.parse(minute)?.0,
            hours: HOUR.parse(hour)?.0,
            days_of_month,
            months: MONTH.parse(month)?.0,
            days_of_week,
            dom_star,
            dow_star,
            zone,
        })
    }

    /// The zone the schedule is read in.
    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    fn day_matches(&self, d: Date) -> bool {
        if !has(self.months, d.month()) {
            return false;
        }
        let dom = has(self.days_of_month, d.day());
        let dow = has(self.days_of_week, d.weekday().to_sunday_zero_offset());
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The instants of one day's matching minutes, earliest first.
    fn times_of(&self, d: Date) -> impl DoubleEndedIterator<Item = Timestamp> + '_ {
        (0..24i8).filter(|h| has(self.hours, *h)).flat_map(move |h| {
            (0..60i8).filter(|m| has(self.minutes, *m)).filter_map(move |m| {
                let dt = d.at(h, m, 0, 0);
                self.zone.to_ambiguous_timestamp(dt).compatible().ok()
            })
        })
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let start = t.to_zoned(self.zone.clone()).date();
        (0..SEARCH_DAYS)
            .filter_map(|i| start.checked_add(i.days()).ok())
            .filter(|d| self.day_matches(*d))
            .find_map(|d| self.times_of(d).find(|x| *x > t))
    }

    /// The last scheduled time at or before `t`.
    pub fn last_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let start = t.to_zoned(self.zone.clone()).date();
        (0..SEARCH_DAYS)
            .filter_map(|i| start.checked_sub(i.days()).ok())
            .filter(|d| self.day_matches(*d))
            .find_map(|d| self.times_of(d).rev().find(|x| *x <= t))
    }

    /// What the CronJob controller should do at `now` (Kubernetes'
    /// `mostRecentScheduleTime` and the checks around it): `earliest` is the last
    /// schedule time (or the CronJob's creation), `starting_deadline_seconds` the
    /// CronJob's `startingDeadlineSeconds`.
    pub fn decide(&self, earliest: Timestamp, starting_deadline_seconds: Option<i64>, now: Timestamp) -> Decision {
        let mut from = earliest;
        if let Some(sds) = starting_deadline_seconds {
            if let Ok(bound) = now.checked_sub(sds.seconds()) {
                from = from.max(bound);
            }
        }
        let next = self.next_after(now);
        let due = match self.next_after(from) {
            Some(first) if first <= now => {
                let scheduled = self.last_at_or_before(now).unwrap_or(first);
                let mut missed = 1u32;
                let mut t = first;
                while missed <= MAX_MISSED {
                    match self.next_after(t) {
                        Some(n) if n <= now => {
                            missed += 1;
                            t = n;
                        }
                        _ => break,
                    }
                }
                let too_late = starting_deadline_seconds
                    .is_some_and(|sds| scheduled.checked_add(sds.seconds()).is_ok_and(|deadline| deadline < now));
                Some(Due { scheduled, missed, too_late })
            }
            _ => None,
        };
        Decision { due, next }
    }
}

/// A start time that has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The most recent start time not yet acted on.
    pub scheduled: Timestamp,
    /// How many start times passed since the last one acted on (at most `MAX_MISSED`+1).
    pub missed: u32,
    /// Whether `startingDeadlineSeconds` passed since `scheduled`.
    pub too_late: bool,
}

/// What the schedule says at a given "now".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The start time to act on now, if any.
    pub due: Option<Due>,
    /// The next start time after now, to come back at.
    pub next: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn utc(spec: &str) -> Schedule {
        match Schedule::parse(spec, Some("UTC")) {
            Ok(s) => s,
            Err(e) => panic!("{spec}: {e}"),
        }
    }

    #[test]
    fn every_minute_and_steps() {
        let s = utc("* * * * *");
        assert_eq!(s.next_after(ts("2024-05-01T10:00:30Z")), Some(ts("2024-05-01T10:01:00Z")));
        assert_eq!(s.next_after(ts("2024-05-01T10:01:00Z")), Some(ts("2024-05-01T10:02:00Z")));
        assert_eq!(s.last_at_or_before(ts("2024-05-01T10:01:00Z")), Some(ts("2024-05-01T10:01:00Z")));
        let s = utc("*/15 9-17 * * mon-fri");
        // 2024-05-04 is a Saturday.
        assert_eq!(s.next_after(ts("2024-05-03T17:45:00Z")), Some(ts("2024-05-06T09:00:00Z")));
        assert_eq!(s.next_after(ts("2024-05-06T09:07:00Z")), Some(ts("2024-05-06T09:15:00Z")));
        let s = utc("5/20 * * * *");
        assert_eq!(s.next_after(ts("2024-05-01T10:26:00Z")), Some(ts("2024-05-01T10:45:00Z")));
        let s = utc("0 0 1,15 JAN,jul ?");
        assert_eq!(s.next_after(ts("2024-01-20T00:00:00Z")), Some(ts("2024-07-01T00:00:00Z")));
    }

    #[test]
    fn macros() {
        assert_eq!(utc("@hourly").next_after(ts("2024-05-01T10:00:00Z")), Some(ts("2024-05-01T11:00:00Z")));
        assert_eq!(utc("@daily").next_after(ts("2024-05-01T10:00:00Z")), Some(ts("2024-05-02T00:00:00Z")));
        assert_eq!(utc("@midnight").next_after(ts("2024-05-01T10:00:00Z")), Some(ts("2024-05-02T00:00:00Z")));
        assert_eq!(utc("@weekly").next_after(ts("2024-05-01T10:00:00Z")), Some(ts("2024-05-05T00:00:00Z")));
        assert_eq!(utc("@monthly").next_after(ts("2024-05-01T10:00:00Z")), Some(ts("2024-06-01T00:00:00Z")));
        assert_eq!(utc("@yearly").next_after(ts("2024-05-01T10:00:00Z")), Some(ts("2025-01-01T00:00:00Z")));
        assert_eq!(utc("@annually").next_after(ts("2024-05-01T10:00:00Z")), Some(ts("2025-01-01T00:00:00Z")));
        assert!(Schedule::parse("@fortnightly", Some("UTC")).is_err());
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // Both restricted: either matches (the 13th, or any Friday).
        let s = utc("0 0 13 * 5");
        assert_eq!(s.next_after(ts("2024-05-01T00:00:00Z")), Some(ts("2024-05-03T00:00:00Z")));
        assert_eq!(s.next_after(ts("2024-05-10T00:00:00Z")), Some(ts("2024-05-13T00:00:00Z")));
        // One is `*`: both must match.
        let s = utc("0 0 13 * *");
        assert_eq!(s.next_after(ts("2024-05-01T00:00:00Z")), Some(ts("2024-05-13T00:00:00Z")));
    }

    #[test]
    fn bad_schedules_are_refused() {
        for bad in ["", "* * * *", "* * * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * * 7", "*/0 * * * *", "5-1 * * * *", "a * * * *"] {
            assert!(Schedule::parse(bad, Some("UTC")).is_err(), "{bad:?} accepted");
        }
        assert!(Schedule::parse("* * * * *", Some("Mars/Olympus")).is_err());
        // Never fires: February 30th.
        assert_eq!(utc("0 0 30 2 *").next_after(ts("2024-01-01T00:00:00Z")), None);
    }

    #[test]
    fn time_zones() {
        let s = match Schedule::parse("0 9 * * *", Some("Asia/Tokyo")) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(s.next_after(ts("2024-05-01T00:00:00Z")), Some(ts("2024-05-02T00:00:00Z")));
        let s = match Schedule::parse("CRON_TZ=America/New_York 30 2 * * *", None) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(s.next_after(ts("2024-01-10T00:00:00Z")), Some(ts("2024-01-10T07:30:00Z")));
        // The spring-forward gap (02:30 does not exist on 2024-03-10) runs an hour later.
        assert_eq!(s.next_after(ts("2024-03-10T00:00:00Z")), Some(ts("2024-03-10T07:30:00Z")));
        assert_eq!(s.next_after(ts("2024-06-10T00:00:00Z")), Some(ts("2024-06-10T06:30:00Z")));
        // timeZone wins over TZ= in the schedule.
        let s = match Schedule::parse("TZ=Asia/Tokyo 0 9 * * *", Some("UTC")) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(s.next_after(ts("2024-05-01T00:00:00Z")), Some(ts("2024-05-01T09:00:00Z")));
    }

    #[test]
    fn decide_with_a_controlled_clock() {
        let s = utc("*/5 * * * *");
        let created = ts("2024-05-01T10:01:00Z");
        // Nothing due before the first start time; come back at it.
        let d = s.decide(created, None, ts("2024-05-01T10:04:59Z"));
        assert_eq!(d, Decision { due: None, next: Some(ts("2024-05-01T10:05:00Z")) });
        // At it: due, one start time.
        let d = s.decide(created, None, ts("2024-05-01T10:05:01Z"));
        assert_eq!(d.due, Some(Due { scheduled: ts("2024-05-01T10:05:00Z"), missed: 1, too_late: false }));
        assert_eq!(d.next, Some(ts("2024-05-01T10:10:00Z")));
        // Once acted on (lastScheduleTime = 10:05), nothing until 10:10.
        assert_eq!(s.decide(ts("2024-05-01T10:05:00Z"), None, ts("2024-05-01T10:09:00Z")).due, None);
        // The controller was down for 20 minutes: the most recent start time, 4 missed.
        let d = s.decide(ts("2024-05-01T10:05:00Z"), None, ts("2024-05-01T10:27:00Z"));
        assert_eq!(d.due, Some(Due { scheduled: ts("2024-05-01T10:25:00Z"), missed: 4, too_late: false }));
        // Missed counting stops past 100.
        let d = utc("* * * * *").decide(ts("2024-01-01T00:00:00Z"), None, ts("2024-05-01T00:00:00Z"));
        assert_eq!(d.due.map(|d| (d.scheduled, d.missed)), Some((ts("2024-05-01T00:00:00Z"), MAX_MISSED + 1)));
    }

    #[test]
    fn starting_deadline() {
        let s = utc("0 * * * *");
        // 10:00 was missed by 30 s: within a 60 s deadline it still runs.
        let d = s.decide(ts("2024-05-01T09:00:00Z"), Some(60), ts("2024-05-01T10:00:30Z"));
        assert_eq!(d.due, Some(Due { scheduled: ts("2024-05-01T10:00:00Z"), missed: 1, too_late: false }));
        // 10 minutes late with a 60 s deadline: nothing to run; next is 11:00.
        let d = s.decide(ts("2024-05-01T09:00:00Z"), Some(60), ts("2024-05-01T10:10:00Z"));
        assert_eq!(d, Decision { due: None, next: Some(ts("2024-05-01T11:00:00Z")) });
    }
}
