//! The site's working hours (`[working_hours]` in the config) and deadlines
//! counted in working time.
//!
//! This module owns the calendar: the time zone, the working weekdays, the
//! daily opening and closing times and the public holidays, and
//! [`WorkingHours::deadline`], the instant by which a given amount of
//! working time has passed. It is pure (no clock: times are passed in), so
//! escalation ([`crate::escalation`]) is tested with a fake clock.
//!
//! Working time is real elapsed time inside the daily windows
//! `[open, close)` of working days, in the calendar's time zone. On the
//! nights clocks change (last Sunday of March and October in Denmark) a
//! window that spans the change is an hour shorter or longer; an opening or
//! closing time that does not exist that night is taken an hour later, one
//! that occurs twice is taken the first time (jiff's "compatible" rule).
//!
//! Time zones come from the tz database bundled into the binary (jiff's
//! `tzdb-bundle-always`), so deadlines do not depend on whether, or which,
//! `/usr/share/zoneinfo` the host has; a zone missing from the bundle is
//! looked up in the system database.

use std::collections::BTreeSet;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Weekday};
use jiff::tz::{TimeZone, TimeZoneDatabase};

use crate::Millis;

/// Default time zone of `[working_hours]`.
pub const DEFAULT_TIME_ZONE: &str = "Europe/Copenhagen";
/// Default working days, as `working_hours.days` spells them.
pub const DEFAULT_DAYS: [&str; 5] = ["mon", "tue", "wed", "thu", "fri"];
/// Default opening time.
pub const DEFAULT_OPEN: &str = "08:00";
/// Default closing time.
pub const DEFAULT_CLOSE: &str = "16:00";

const MINUTES_PER_DAY: u16 = 24 * 60;

/// Why a working-hours setting was refused; the config names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkingHoursError {
    #[error("unknown time zone {0:?}: use an IANA name such as Europe/Copenhagen")]
    UnknownTimeZone(String),
    #[error("invalid time of day {0:?}: expected HH:MM, e.g. 08:00 (24:00 closes at midnight)")]
    InvalidClock(String),
    #[error("unknown weekday {0:?}: use mon, tue, wed, thu, fri, sat or sun")]
    UnknownWeekday(String),
    #[error("invalid date {0:?}: expected YYYY-MM-DD")]
    InvalidDate(String),
    #[error("at least one working day is needed")]
    NoWorkingDays,
    #[error("the closing time must be after the opening time")]
    CloseNotAfterOpen,
}

/// Looks a time zone up, in the bundled tz database first.
pub fn time_zone(name: &str) -> Result<TimeZone, WorkingHoursError> {
    TimeZoneDatabase::bundled()
        .get(name)
        .or_else(|_| jiff::tz::db().get(name))
        .map_err(|_| WorkingHoursError::UnknownTimeZone(name.to_owned()))
}

/// A time of day as minutes after midnight: `HH:MM` from `00:00` to `24:00`
/// (the end of the day, only useful as a closing time).
pub fn parse_clock(text: &str) -> Result<u16, WorkingHoursError> {
    let invalid = || WorkingHoursError::InvalidClock(text.to_owned());
    let (hours, minutes) = text.split_once(':').ok_or_else(invalid)?;
    if hours.len() != 2 || minutes.len() != 2 {
        return Err(invalid());
    }
    let hours: u16 = hours.parse().map_err(|_| invalid())?;
    let minutes: u16 = minutes.parse().map_err(|_| invalid())?;
    if minutes >= 60 || hours * 60 + minutes > MINUTES_PER_DAY {
        return Err(invalid());
    }
    Ok(hours * 60 + minutes)
}

/// A weekday by its three-letter English name (`mon` … `sun`).
pub fn parse_weekday(text: &str) -> Result<Weekday, WorkingHoursError> {
    Ok(match text {
        "mon" => Weekday::Monday,
        "tue" => Weekday::Tuesday,
        "wed" => Weekday::Wednesday,
        "thu" => Weekday::Thursday,
        "fri" => Weekday::Friday,
        "sat" => Weekday::Saturday,
        "sun" => Weekday::Sunday,
        _ => return Err(WorkingHoursError::UnknownWeekday(text.to_owned())),
    })
}

/// A calendar date, `YYYY-MM-DD`.
pub fn parse_date(text: &str) -> Result<Date, WorkingHoursError> {
    text.parse()
        .map_err(|_| WorkingHoursError::InvalidDate(text.to_owned()))
}

/// A checked working-hours calendar; see the module documentation.
#[derive(Debug, Clone)]
pub struct WorkingHours {
    time_zone: TimeZone,
    days: Vec<Weekday>,
    open_minute: u16,
    close_minute: u16,
    holidays: BTreeSet<Date>,
}

impl WorkingHours {
    /// A calendar from its parts. `open_minute` and `close_minute` are
    /// minutes after midnight ([`parse_clock`]); the window is
    /// `[open, close)` on each of `days` that is not in `holidays`.
    pub fn new(
        time_zone: TimeZone,
        days: Vec<Weekday>,
        open_minute: u16,
        close_minute: u16,
        holidays: impl IntoIterator<Item = Date>,
    ) -> Result<Self, WorkingHoursError> {
        if days.is_empty() {
            return Err(WorkingHoursError::NoWorkingDays);
        }
        if close_minute <= open_minute || close_minute > MINUTES_PER_DAY {
            return Err(WorkingHoursError::CloseNotAfterOpen);
        }
        Ok(WorkingHours {
            time_zone,
            days,
            open_minute,
            close_minute,
            holidays: holidays.into_iter().collect(),
        })
    }

    /// The default calendar: [`DEFAULT_TIME_ZONE`], [`DEFAULT_DAYS`] from
    /// [`DEFAULT_OPEN`] to [`DEFAULT_CLOSE`], no holidays.
    pub fn standard() -> Result<Self, WorkingHoursError> {
        WorkingHours::new(
            time_zone(DEFAULT_TIME_ZONE)?,
            DEFAULT_DAYS
                .iter()
                .map(|day| parse_weekday(day))
                .collect::<Result<_, _>>()?,
            parse_clock(DEFAULT_OPEN)?,
            parse_clock(DEFAULT_CLOSE)?,
            [],
        )
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.time_zone
    }

    /// Whether `date` has a working window (a working weekday, no holiday).
    pub fn is_working_day(&self, date: Date) -> bool {
        self.days.contains(&date.weekday()) && !self.holidays.contains(&date)
    }

    /// The instant when `working_ms` of working time has passed since
    /// `from_ms`. Counting starts at `from_ms` inside working hours, else at
    /// the next opening; so a deadline of 0 is `from_ms` in working hours
    /// and the next opening outside them. Work that exactly fills a window
    /// ends at its closing time, not at the next opening. A negative
    /// `working_ms` counts as 0; an instant beyond what the calendar can
    /// represent (year 9999) gives [`Millis::MAX`]: never.
    pub fn deadline(&self, from_ms: Millis, working_ms: i64) -> Millis {
        let Ok(from) = Timestamp::from_millisecond(from_ms) else {
            return Millis::MAX;
        };
        let mut remaining = working_ms.max(0);
        let mut date = self.time_zone.to_datetime(from).date();
        loop {
            if self.is_working_day(date) {
                let (Some(open), Some(close)) = (
                    self.instant(date, self.open_minute),
                    self.instant(date, self.close_minute),
                ) else {
                    return Millis::MAX;
                };
                let begin = open.max(from_ms);
                if begin < close {
                    let available = close - begin;
                    if remaining <= available {
                        return begin + remaining;
                    }
                    remaining -= available;
                }
            }
            match date.tomorrow() {
                Ok(next) => date = next,
                Err(_) => return Millis::MAX,
            }
        }
    }

    /// The instant of `minute` after midnight on `date` in the calendar's
    /// time zone (24:00 is the next day's midnight).
    fn instant(&self, date: Date, minute: u16) -> Option<Millis> {
        let datetime = if minute >= MINUTES_PER_DAY {
            DateTime::from(date.tomorrow().ok()?)
        } else {
            // Both fit an i8: minute < 1440.
            let hour = i8::try_from(minute / 60).ok()?;
            let minute = i8::try_from(minute % 60).ok()?;
            date.at(hour, minute, 0, 0)
        };
        self.time_zone
            .to_timestamp(datetime)
            .ok()
            .map(|t| t.as_millisecond())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    /// Copenhagen wall-clock time `YYYY-MM-DDTHH:MM` as [`Millis`].
    pub(crate) fn cph(text: &str) -> Millis {
        let datetime: DateTime = text.parse().unwrap();
        time_zone(DEFAULT_TIME_ZONE)
            .unwrap()
            .to_timestamp(datetime)
            .unwrap()
            .as_millisecond()
    }

    /// [`Millis`] as Copenhagen wall-clock time with its UTC offset, so a
    /// test shows both which hour on the clock and which instant it is.
    fn wall(ms: Millis) -> String {
        Timestamp::from_millisecond(ms)
            .unwrap()
            .to_zoned(time_zone(DEFAULT_TIME_ZONE).unwrap())
            .strftime("%a %Y-%m-%d %H:%M %:z")
            .to_string()
    }

    /// The deadline of `working_ms` from Copenhagen time `from`, as [`wall`].
    fn due(hours: &WorkingHours, from: &str, working_ms: i64) -> String {
        wall(hours.deadline(cph(from), working_ms))
    }

    fn standard() -> WorkingHours {
        WorkingHours::standard().unwrap()
    }

    #[test]
    fn the_bundled_database_knows_copenhagen() {
        let tz = TimeZoneDatabase::bundled().get(DEFAULT_TIME_ZONE).unwrap();
        assert_eq!(tz.iana_name(), Some(DEFAULT_TIME_ZONE));
        assert!(matches!(
            time_zone("Europe/Atlantis"),
            Err(WorkingHoursError::UnknownTimeZone(_))
        ));
    }

    #[test]
    fn inside_working_hours_the_same_day() {
        let h = standard();
        // Tuesday 2026-11-24, 09:30 + 4 h = 13:30.
        assert_eq!(
            due(&h, "2026-11-24T09:30", 4 * HOUR),
            "Tue 2026-11-24 13:30 +01:00"
        );
        // Filling the window exactly ends at closing, not next morning.
        assert_eq!(
            due(&h, "2026-11-24T12:00", 4 * HOUR),
            "Tue 2026-11-24 16:00 +01:00"
        );
        // One minute more carries over to the next opening.
        assert_eq!(
            due(&h, "2026-11-24T12:00", 4 * HOUR + 60_000),
            "Wed 2026-11-25 08:01 +01:00"
        );
    }

    #[test]
    fn friday_afternoon_runs_into_monday() {
        let h = standard();
        // Friday 2026-11-27 14:00: 2 h on Friday, 2 h on Monday.
        assert_eq!(
            due(&h, "2026-11-27T14:00", 4 * HOUR),
            "Mon 2026-11-30 10:00 +01:00"
        );
    }

    #[test]
    fn at_night_and_at_the_weekend_counting_starts_at_the_next_opening() {
        let h = standard();
        assert_eq!(
            due(&h, "2026-11-24T23:10", 4 * HOUR),
            "Wed 2026-11-25 12:00 +01:00"
        );
        assert_eq!(
            due(&h, "2026-11-25T03:00", 4 * HOUR),
            "Wed 2026-11-25 12:00 +01:00"
        );
        // Closing time itself is outside hours.
        assert_eq!(
            due(&h, "2026-11-25T16:00", HOUR),
            "Thu 2026-11-26 09:00 +01:00"
        );
        for weekend in ["2026-11-28T10:00", "2026-11-29T18:00"] {
            assert_eq!(
                due(&h, weekend, 4 * HOUR),
                "Mon 2026-11-30 12:00 +01:00",
                "{weekend}"
            );
        }
        // 20 working hours from Thursday 15:00: 1 + 8 (Fri) + 8 (Mon) + 3.
        assert_eq!(
            due(&h, "2026-11-26T15:00", 20 * HOUR),
            "Tue 2026-12-01 11:00 +01:00"
        );
    }

    #[test]
    fn a_deadline_of_zero() {
        let h = standard();
        let in_hours = cph("2026-11-24T10:17");
        assert_eq!(h.deadline(in_hours, 0), in_hours);
        assert_eq!(h.deadline(in_hours, -5), in_hours);
        assert_eq!(
            due(&h, "2026-11-27T17:00", 0),
            "Mon 2026-11-30 08:00 +01:00"
        );
    }

    #[test]
    fn across_the_weekend_of_spring_forward() {
        let h = standard();
        // Clocks go from 02:00 CET to 03:00 CEST on Sunday 2026-03-29.
        let friday = cph("2026-03-27T15:00");
        let deadline = h.deadline(friday, 2 * HOUR);
        assert_eq!(wall(deadline), "Mon 2026-03-30 09:00 +02:00");
        // 66 hours on the clock, 65 real ones.
        assert_eq!(deadline - friday, 65 * HOUR);
    }

    #[test]
    fn across_the_weekend_of_fall_back() {
        let h = standard();
        // Clocks go from 03:00 CEST back to 02:00 CET on Sunday 2026-10-25.
        let friday = cph("2026-10-23T15:00");
        let deadline = h.deadline(friday, 2 * HOUR);
        assert_eq!(wall(deadline), "Mon 2026-10-26 09:00 +01:00");
        // 66 hours on the clock, 67 real ones.
        assert_eq!(deadline - friday, 67 * HOUR);
    }

    /// A night shift working Sundays: the window spans the clock change,
    /// so it holds one hour less (spring) or more (autumn) of working time.
    #[test]
    fn a_window_spanning_the_clock_change() {
        let night = WorkingHours::new(
            time_zone(DEFAULT_TIME_ZONE).unwrap(),
            vec![Weekday::Sunday],
            0,
            6 * 60,
            [],
        )
        .unwrap();
        // Spring: 01:00 CET + 2 h = 04:00 CEST (02:00–03:00 never happens).
        assert_eq!(
            due(&night, "2026-03-29T01:00", 2 * HOUR),
            "Sun 2026-03-29 04:00 +02:00"
        );
        // The window 00:00–06:00 holds 5 hours: a 6th runs to next Sunday.
        assert_eq!(
            due(&night, "2026-03-29T00:00", 6 * HOUR),
            "Sun 2026-04-05 01:00 +02:00"
        );
        // Autumn: 01:00 CEST + 3 h = 03:00 CET (02:00–03:00 happens twice).
        assert_eq!(
            due(&night, "2026-10-25T01:00", 3 * HOUR),
            "Sun 2026-10-25 03:00 +01:00"
        );
        // The window holds 7 hours that night.
        assert_eq!(
            due(&night, "2026-10-25T00:00", 7 * HOUR),
            "Sun 2026-10-25 06:00 +01:00"
        );
    }

    #[test]
    fn holidays_and_round_the_clock_windows() {
        let christmas = WorkingHours::new(
            time_zone(DEFAULT_TIME_ZONE).unwrap(),
            standard().days.clone(),
            8 * 60,
            16 * 60,
            ["2026-12-24", "2026-12-25"].map(|d| parse_date(d).unwrap()),
        )
        .unwrap();
        // Wednesday 23 December 15:00: 1 h, then Thursday and Friday are
        // holidays, then the weekend: Monday 28th 09:00.
        assert_eq!(
            due(&christmas, "2026-12-23T15:00", 2 * HOUR),
            "Mon 2026-12-28 09:00 +01:00"
        );
        let always = WorkingHours::new(
            time_zone(DEFAULT_TIME_ZONE).unwrap(),
            ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                .map(|d| parse_weekday(d).unwrap())
                .to_vec(),
            0,
            parse_clock("24:00").unwrap(),
            [],
        )
        .unwrap();
        // Round the clock, working time is real time, DST night included.
        let saturday = cph("2026-03-28T22:00");
        assert_eq!(always.deadline(saturday, 10 * HOUR), saturday + 10 * HOUR);
        assert_eq!(
            wall(always.deadline(saturday, 10 * HOUR)),
            "Sun 2026-03-29 09:00 +02:00"
        );
    }

    #[test]
    fn parsing_settings() {
        assert_eq!(parse_clock("08:00"), Ok(480));
        assert_eq!(parse_clock("16:30"), Ok(990));
        assert_eq!(parse_clock("24:00"), Ok(1440));
        for bad in ["8:00", "08:60", "24:01", "25:00", "0800", "aa:bb"] {
            assert_eq!(
                parse_clock(bad),
                Err(WorkingHoursError::InvalidClock(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(parse_weekday("sat"), Ok(Weekday::Saturday));
        assert!(parse_weekday("Monday").is_err());
        assert!(parse_date("2026-02-30").is_err());
        let tz = time_zone(DEFAULT_TIME_ZONE).unwrap();
        assert_eq!(
            WorkingHours::new(tz.clone(), vec![], 0, 60, []).unwrap_err(),
            WorkingHoursError::NoWorkingDays
        );
        assert_eq!(
            WorkingHours::new(tz, vec![Weekday::Monday], 600, 600, []).unwrap_err(),
            WorkingHoursError::CloseNotAfterOpen
        );
    }

    #[test]
    fn out_of_range_instants_are_never_due() {
        assert_eq!(standard().deadline(Millis::MAX, HOUR), Millis::MAX);
    }
}
