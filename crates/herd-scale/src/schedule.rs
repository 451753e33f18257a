//! Schedule windows: days of the week, a local `HH:MM-HH:MM` range and an IANA time zone.
//!
//! A window is compared against the *wall clock* of its zone, so "08:00-19:00 Europe/Berlin" opens
//! at 08:00 local time both in winter (07:00 UTC) and in summer (06:00 UTC). A window whose end is
//! before its start crosses midnight: it opens on the listed day and closes the next day. On a
//! day whose clocks jump, the wall clock simply skips or repeats an hour; the window is open
//! whenever the wall clock is inside it.

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// A parsed, validated schedule window.
#[derive(Debug, Clone)]
pub struct Window {
    /// Bit i set = the window opens on the day with Monday-zero offset i.
    days: u8,
    start: Time,
    end: Time,
    /// The end was written `24:00`: the window closes at the end of the day it opened.
    end_of_day: bool,
    tz: TimeZone,
    tz_name: String,
}

fn parse_hhmm(text: &str) -> Result<Time, String> {
    let (h, m) = text
        .split_once(':')
        .ok_or_else(|| format!("'{text}' is not HH:MM"))?;
    let h: i8 = h
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not HH:MM"))?;
    let m: i8 = m
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not HH:MM"))?;
    Time::new(h, m, 0, 0)
        .map_err(|_| format!("'{text}' is not a valid HH:MM time (00:00 to 23:59, or 24:00)"))
}

fn parse_days(days: &[String]) -> Result<u8, String> {
    let mut mask = 0u8;
    if days.is_empty() {
        return Err("days: list at least one day (mon..sun, weekdays, weekend, daily)".into());
    }
    for d in days {
        let bits = match d.trim().to_ascii_lowercase().as_str() {
            "mon" | "monday" => 1 << 0,
            "tue" | "tuesday" => 1 << 1,
            "wed" | "wednesday" => 1 << 2,
            "thu" | "thursday" => 1 << 3,
            "fri" | "friday" => 1 << 4,
            "sat" | "saturday" => 1 << 5,
            "sun" | "sunday" => 1 << 6,
            "weekdays" => 0b001_1111,
            "weekend" => 0b110_0000,
            "daily" | "all" => 0b111_1111,
            _ => {
                return Err(format!(
                    "days: '{d}' is not a day; use mon, tue, wed, thu, fri, sat, sun, weekdays, weekend or daily"
                ))
            }
        };
        mask |= bits;
    }
    Ok(mask)
}

impl Window {
    /// Parses `days`, `"HH:MM-HH:MM"` and an IANA zone name.
    pub fn new(days: &[String], window: &str, tz: &str) -> Result<Window, String> {
        let days = parse_days(days)?;
        let (a, b) = window.split_once('-').ok_or_else(|| {
            format!(
                "window: '{window}' is not HH:MM-HH:MM (e.g. \"08:00-19:00\" or \"19:00-08:00\")"
            )
        })?;
        let start = parse_hhmm(a).map_err(|e| format!("window start: {e}"))?;
        let end_of_day = b.trim() == "24:00";
        let end = if end_of_day {
            Time::midnight()
        } else {
            parse_hhmm(b).map_err(|e| format!("window end: {e}"))?
        };
        if start == end && !end_of_day {
            return Err(format!(
                "window: '{window}' is empty (start equals end); for all day use \"00:00-24:00\""
            ));
        }
        let zone = TimeZone::get(tz).map_err(|_| {
            format!("timezone: '{tz}' is not an IANA time zone (e.g. \"Europe/Berlin\", \"America/New_York\", \"UTC\")")
        })?;
        Ok(Window {
            days,
            start,
            end,
            end_of_day,
            tz: zone,
            tz_name: tz.to_string(),
        })
    }

    fn opens_on(&self, day: Weekday) -> bool {
        self.days & (1 << day.to_monday_zero_offset()) != 0
    }

    /// Whether the window is open at instant `now`.
    pub fn contains(&self, now: Timestamp) -> bool {
        let local = now.to_zoned(self.tz.clone());
        let t = local.time();
        let day = local.weekday();
        if self.start < self.end || self.end_of_day {
            // Same-day window (an end of 24:00 closes at midnight).
            self.opens_on(day) && t >= self.start && (self.end_of_day || t < self.end)
        } else {
            // Crosses midnight: the evening part belongs to today, the morning part to yesterday.
            (self.opens_on(day) && t >= self.start)
                || (self.opens_on(day.previous()) && t < self.end)
        }
    }

    pub fn timezone(&self) -> &str {
        &self.tz_name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn w(days: &[&str], window: &str, tz: &str) -> Window {
        let days: Vec<String> = days.iter().map(|s| s.to_string()).collect();
        Window::new(&days, window, tz).unwrap()
    }

    #[test]
    fn weekday_working_hours() {
        let wh = w(&["weekdays"], "08:00-19:00", "UTC");
        // 2026-11-23 is a Monday.
        assert!(wh.contains(ts("2026-11-23T08:00:00Z")));
        assert!(wh.contains(ts("2026-11-23T18:59:59Z")));
        assert!(!wh.contains(ts("2026-11-23T19:00:00Z")));
        assert!(!wh.contains(ts("2026-11-23T07:59:59Z")));
        // Saturday.
        assert!(!wh.contains(ts("2026-11-28T10:00:00Z")));
    }

    #[test]
    fn window_crossing_midnight_belongs_to_the_day_it_opens() {
        // Friday night only: opens Fri 22:00, closes Sat 06:00.
        let night = w(&["fri"], "22:00-06:00", "UTC");
        // 2026-11-27 is a Friday.
        assert!(!night.contains(ts("2026-11-27T21:59:00Z")));
        assert!(night.contains(ts("2026-11-27T22:00:00Z")));
        assert!(night.contains(ts("2026-11-28T00:30:00Z"))); // Saturday morning
        assert!(night.contains(ts("2026-11-28T05:59:00Z")));
        assert!(!night.contains(ts("2026-11-28T06:00:00Z")));
        // Friday early morning belongs to Thursday night, which is not listed.
        assert!(!night.contains(ts("2026-11-27T01:00:00Z")));
        // Saturday 22:00 is not listed either.
        assert!(!night.contains(ts("2026-11-28T23:00:00Z")));
    }

    #[test]
    fn wall_clock_follows_dst_in_spring_and_autumn() {
        let wh = w(&["daily"], "08:00-19:00", "Europe/Berlin");
        // Before the spring change (CET, UTC+1): 07:30Z is 08:30 local.
        assert!(wh.contains(ts("2026-03-28T07:30:00Z")));
        assert!(!wh.contains(ts("2026-03-28T06:30:00Z")));
        // After it (CEST, UTC+2): 06:30Z is 08:30 local, 17:30Z is 19:30 local.
        assert!(wh.contains(ts("2026-03-30T06:30:00Z")));
        assert!(!wh.contains(ts("2026-03-30T17:30:00Z")));
        // After the autumn change (2026-10-25, back to UTC+1): 07:30Z is 08:30 local again.
        assert!(!wh.contains(ts("2026-10-26T06:30:00Z")));
        assert!(wh.contains(ts("2026-10-26T07:30:00Z")));
    }

    #[test]
    fn night_window_across_the_dst_night() {
        // 22:00-06:00 Berlin; clocks jump 02:00 -> 03:00 on Sunday 2026-03-29.
        let night = w(&["daily"], "22:00-06:00", "Europe/Berlin");
        assert!(night.contains(ts("2026-03-28T21:00:00Z"))); // 22:00 CET
        assert!(night.contains(ts("2026-03-29T00:30:00Z"))); // 01:30 CET
        assert!(night.contains(ts("2026-03-29T01:30:00Z"))); // 03:30 CEST (02:xx skipped)
        assert!(night.contains(ts("2026-03-29T03:59:00Z"))); // 05:59 CEST
                                                             // 04:30Z is 06:30 CEST: closed. A fixed UTC+1 offset would say 05:30 and keep it open.
        assert!(!night.contains(ts("2026-03-29T04:30:00Z")));
        // Autumn: 2026-10-25 03:00 CEST -> 02:00 CET; 05:30Z is 06:30 CET: closed.
        assert!(night.contains(ts("2026-10-25T04:30:00Z"))); // 05:30 CET
        assert!(!night.contains(ts("2026-10-25T05:30:00Z")));
    }

    #[test]
    fn new_york_and_all_day() {
        let all = w(&["sat", "sun"], "00:00-24:00", "America/New_York");
        // 2026-11-28 Saturday 00:30 local = 05:30Z.
        assert!(all.contains(ts("2026-11-28T05:30:00Z")));
        // Friday 23:30 local = Sat 04:30Z: not the weekend there yet.
        assert!(!all.contains(ts("2026-11-28T04:30:00Z")));
        // Sunday 23:59 local = Mon 04:59Z.
        assert!(all.contains(ts("2026-11-30T04:59:00Z")));
        assert!(!all.contains(ts("2026-11-30T05:00:00Z")));
    }
}
