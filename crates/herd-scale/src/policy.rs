//! The policy file: worker pools per queue, serving pools, and schedules. TOML, validated once at
//! load with errors that name the line and the field.
//!
//! ```toml
//! [defaults]
//! queue_url = "sqlite://.herd/jobs.db"
//! flexible_max_unavailable = 1          # outside every schedule window
//!
//! [[workers]]
//! queue = "default"
//! jobs_per_worker = 10
//! min = 0
//! max = 8
//! cooldown = "60s"
//!
//! [[serving]]
//! name = "web"
//! target_invocations_per_minute = 225
//! target_memory_utilisation = 0.8
//! stabilisation_window = "300s"
//! tolerance = 0.1
//! min = 1
//! max = 6
//!
//! [[schedule]]
//! name = "working-hours"
//! days = ["mon", "tue", "wed", "thu", "fri"]
//! window = "08:00-19:00"
//! timezone = "Europe/Berlin"
//! flexible_max_unavailable = 0
//! workers.default = { min = 1 }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use toml::Spanned;

use crate::error::{Result, ScaleError};
use crate::schedule::Window;

/// A duration written as `"300ms"`, `"5s"`, `"2m"`, `"1h"` or a plain number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }
}

/// Parses `"300ms"`, `"5s"`, `"2m"`, `"1h"`, `"1d"` or `"42"` (seconds).
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("'{text}' is not a duration; write e.g. \"500ms\", \"30s\", \"5m\" or \"1h\"")
    })?;
    let factor = match unit.trim() {
        "ms" => 0.001,
        "" | "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(format!(
                "'{text}': unknown duration unit '{other}'; use ms, s, m, h or d"
            ))
        }
    };
    let secs = value * factor;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("'{text}' is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(s) => Ok(HumanDuration(Duration::from_secs(s))),
            Raw::Float(s) if s.is_finite() && s >= 0.0 => {
                Ok(HumanDuration(Duration::from_secs_f64(s)))
            }
            Raw::Float(s) => Err(serde::de::Error::custom(format!(
                "{s} is not a valid duration"
            ))),
            Raw::Text(t) => parse_duration(&t)
                .map(HumanDuration)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Settings that apply when no schedule window overrides them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Queue URL used by worker pools that do not name their own.
    #[serde(default)]
    pub queue_url: Option<String>,
    /// maxUnavailable of the flexible-pod PodDisruptionBudget outside every schedule window.
    #[serde(default = "default_flexible_max_unavailable")]
    pub flexible_max_unavailable: u32,
}

fn default_flexible_max_unavailable() -> u32 {
    1
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            queue_url: None,
            flexible_max_unavailable: default_flexible_max_unavailable(),
        }
    }
}

/// A pool of `herd worker` processes (or worker pods) for one queue.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerPool {
    /// The queue name the workers claim from.
    pub queue: String,
    /// Queue URL (`sqlite://…`, `redis://…`); defaults to `[defaults].queue_url`.
    #[serde(default)]
    pub queue_url: Option<String>,
    /// Desired workers = ceil(waiting / jobs_per_worker).
    pub jobs_per_worker: u32,
    #[serde(default)]
    pub min: u32,
    pub max: u32,
    /// How long the queue must be empty with nothing running before scaling to zero, and the
    /// least time between a scale-up and a following scale-down.
    #[serde(default = "default_cooldown")]
    pub cooldown: HumanDuration,
    /// Local backend: passed to `herd worker --idle-exit` so a forgotten worker still ends.
    #[serde(default = "default_idle_exit")]
    pub idle_exit: HumanDuration,
    /// Kubernetes backend: the worker Deployment (default `herd-worker-<queue>`).
    #[serde(default)]
    pub deployment: Option<String>,
}

fn default_cooldown() -> HumanDuration {
    HumanDuration::secs(60)
}
fn default_idle_exit() -> HumanDuration {
    HumanDuration::secs(300)
}

impl WorkerPool {
    pub fn deployment_name(&self) -> String {
        self.deployment
            .clone()
            .unwrap_or_else(|| format!("herd-worker-{}", self.queue))
    }
}

/// A pool of `herd serve` instances sized from their `/metrics`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServingPool {
    pub name: String,
    /// Target inference requests per instance per minute (e.g. 225).
    pub target_invocations_per_minute: f64,
    /// Target fraction of each instance's memory budget in use (e.g. 0.8).
    pub target_memory_utilisation: f64,
    /// Scale down on the highest recommendation of this window (default 300 s, like the HPA).
    #[serde(default = "default_stabilisation")]
    pub stabilisation_window: HumanDuration,
    /// No change while |metric/target - 1| is within this band (default 0.1, like the HPA).
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    #[serde(default = "default_serving_min")]
    pub min: u32,
    pub max: u32,
    /// Local backend: model repository passed to `herd serve --repo`.
    #[serde(default)]
    pub repo: Option<PathBuf>,
    /// Local backend: `herd serve --memory-budget` (default 256MiB).
    #[serde(default = "default_memory_budget")]
    pub memory_budget: String,
    /// Kubernetes backend: the serving Deployment (default `herd-serve-<name>`).
    #[serde(default)]
    pub deployment: Option<String>,
    /// Kubernetes backend: the port of `/metrics` on each serving pod (default 8080).
    #[serde(default = "default_metrics_port")]
    pub metrics_port: u16,
}

fn default_stabilisation() -> HumanDuration {
    HumanDuration::secs(300)
}
fn default_tolerance() -> f64 {
    0.1
}
fn default_serving_min() -> u32 {
    1
}
fn default_memory_budget() -> String {
    "256MiB".to_string()
}
fn default_metrics_port() -> u16 {
    8080
}

impl ServingPool {
    pub fn deployment_name(&self) -> String {
        self.deployment
            .clone()
            .unwrap_or_else(|| format!("herd-serve-{}", self.name))
    }
}

/// Per-pool bounds a schedule window can override.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    pub min: Option<u32>,
    pub max: Option<u32>,
}

/// A named window that selects settings while it is open.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    pub name: String,
    /// Days on which the window opens: `mon`..`sun`, or `weekdays`, `weekend`, `daily`.
    pub days: Vec<String>,
    /// `HH:MM-HH:MM` local time; an end before the start crosses midnight into the next day.
    pub window: String,
    /// IANA time zone, e.g. `Europe/Berlin` (default `UTC`).
    #[serde(default = "default_tz")]
    pub timezone: String,
    /// maxUnavailable of the flexible-pod PDB while the window is open.
    #[serde(default)]
    pub flexible_max_unavailable: Option<u32>,
    /// Worker pool bounds by queue name.
    #[serde(default)]
    pub workers: BTreeMap<String, Bounds>,
    /// Serving pool bounds by pool name.
    #[serde(default)]
    pub serving: BTreeMap<String, Bounds>,
}

fn default_tz() -> String {
    "UTC".to_string()
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    workers: Vec<Spanned<WorkerPool>>,
    #[serde(default)]
    serving: Vec<Spanned<ServingPool>>,
    #[serde(default)]
    schedule: Vec<Spanned<ScheduleSpec>>,
}

/// A schedule after validation: its parsed window.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub spec: ScheduleSpec,
    pub window: Window,
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub defaults: Defaults,
    pub workers: Vec<WorkerPool>,
    pub serving: Vec<ServingPool>,
    pub schedules: Vec<Schedule>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy> {
        let text = std::fs::read_to_string(path).map_err(|source| ScaleError::PolicyRead {
            path: path.display().to_string(),
            source,
        })?;
        Policy::parse(&text, &path.display().to_string())
    }

    /// Parses and validates policy text; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Policy> {
        let err = |message: String| ScaleError::Policy {
            source_name: source_name.to_string(),
            message,
        };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut problems = Vec::new();

        let mut workers = Vec::new();
        for (i, spanned) in raw.workers.into_iter().enumerate() {
            let line = line_of(text, spanned.span().start);
            let w = spanned.into_inner();
            let at = format!("line {line}: workers[{i}] (queue \"{}\")", w.queue);
            if w.queue.trim().is_empty() {
                problems.push(format!(
                    "line {line}: workers[{i}].queue: must not be empty"
                ));
            }
            if w.jobs_per_worker == 0 {
                problems.push(format!("{at}.jobs_per_worker: must be at least 1"));
            }
            if w.max == 0 {
                problems.push(format!(
                    "{at}.max: must be at least 1 (a pool that can never run a worker is a typo)"
                ));
            }
            if w.min > w.max {
                problems.push(format!(
                    "{at}.min ({}) is above max ({}); lower min or raise max",
                    w.min, w.max
                ));
            }
            if workers.iter().any(|o: &WorkerPool| o.queue == w.queue) {
                problems.push(format!(
                    "{at}: a second pool for the same queue; merge them"
                ));
            }
            workers.push(w);
        }

        let mut serving = Vec::new();
        for (i, spanned) in raw.serving.into_iter().enumerate() {
            let line = line_of(text, spanned.span().start);
            let s = spanned.into_inner();
            let at = format!("line {line}: serving[{i}] (name \"{}\")", s.name);
            if s.name.trim().is_empty() {
                problems.push(format!("line {line}: serving[{i}].name: must not be empty"));
            }
            if !(s.target_invocations_per_minute.is_finite()
                && s.target_invocations_per_minute > 0.0)
            {
                problems.push(format!(
                    "{at}.target_invocations_per_minute: must be a positive number (e.g. 225)"
                ));
            }
            if !(s.target_memory_utilisation > 0.0 && s.target_memory_utilisation <= 1.0) {
                problems.push(format!(
                    "{at}.target_memory_utilisation: must be in (0, 1], e.g. 0.8 for 80% of the budget"
                ));
            }
            if !(s.tolerance >= 0.0 && s.tolerance < 1.0) {
                problems.push(format!("{at}.tolerance: must be in [0, 1), e.g. 0.1"));
            }
            if s.min == 0 {
                problems.push(format!(
                    "{at}.min: must be at least 1 (serving pools do not scale to zero: nothing would receive the first request)"
                ));
            }
            if s.min > s.max {
                problems.push(format!(
                    "{at}.min ({}) is above max ({}); lower min or raise max",
                    s.min, s.max
                ));
            }
            if serving.iter().any(|o: &ServingPool| o.name == s.name) {
                problems.push(format!("{at}: a second serving pool with the same name"));
            }
            serving.push(s);
        }

        let mut schedules = Vec::new();
        for (i, spanned) in raw.schedule.into_iter().enumerate() {
            let line = line_of(text, spanned.span().start);
            let s = spanned.into_inner();
            let at = format!("line {line}: schedule[{i}] (name \"{}\")", s.name);
            for q in s.workers.keys() {
                if !workers.iter().any(|w| &w.queue == q) {
                    problems.push(format!(
                        "{at}.workers.{q}: no [[workers]] pool for queue \"{q}\""
                    ));
                }
            }
            for p in s.serving.keys() {
                if !serving.iter().any(|w| &w.name == p) {
                    problems.push(format!(
                        "{at}.serving.{p}: no [[serving]] pool named \"{p}\""
                    ));
                }
            }
            for (q, b) in &s.workers {
                if let (Some(lo), Some(hi)) = (b.min, b.max) {
                    if lo > hi {
                        problems.push(format!("{at}.workers.{q}: min ({lo}) is above max ({hi})"));
                    }
                }
            }
            for (p, b) in &s.serving {
                if b.min == Some(0) {
                    problems.push(format!("{at}.serving.{p}.min: must be at least 1"));
                }
                if let (Some(lo), Some(hi)) = (b.min, b.max) {
                    if lo > hi {
                        problems.push(format!("{at}.serving.{p}: min ({lo}) is above max ({hi})"));
                    }
                }
            }
            match Window::new(&s.days, &s.window, &s.timezone) {
                Ok(window) => schedules.push(Schedule { spec: s, window }),
                Err(e) => problems.push(format!("{at}: {e}")),
            }
        }

        if !problems.is_empty() {
            return Err(err(problems.join("; ")));
        }
        Ok(Policy {
            defaults: raw.defaults,
            workers,
            serving,
            schedules,
        })
    }

    /// The first schedule whose window is open at `now`, if any (order in the file decides).
    pub fn active_schedule(&self, now: jiff::Timestamp) -> Option<&Schedule> {
        self.schedules.iter().find(|s| s.window.contains(now))
    }

    /// The queue URL for a worker pool: its own, else `[defaults].queue_url`, else `fallback`.
    pub fn queue_url<'a>(
        &'a self,
        pool: &'a WorkerPool,
        fallback: Option<&'a str>,
    ) -> Option<&'a str> {
        pool.queue_url
            .as_deref()
            .or(self.defaults.queue_url.as_deref())
            .or(fallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[defaults]
queue_url = "sqlite://jobs.db"

[[workers]]
queue = "default"
jobs_per_worker = 10
max = 8
cooldown = "90s"

[[serving]]
name = "web"
target_invocations_per_minute = 225
target_memory_utilisation = 0.8
max = 6

[[schedule]]
name = "working-hours"
days = ["weekdays"]
window = "08:00-19:00"
timezone = "Europe/Berlin"
flexible_max_unavailable = 0
workers.default = { min = 1 }
"#;

    #[test]
    fn good_policy_loads_with_defaults() {
        let p = Policy::parse(GOOD, "good.toml").unwrap();
        assert_eq!(p.workers[0].cooldown.0, Duration::from_secs(90));
        assert_eq!(p.workers[0].min, 0);
        assert_eq!(
            p.serving[0].stabilisation_window.0,
            Duration::from_secs(300)
        );
        assert!((p.serving[0].tolerance - 0.1).abs() < 1e-9);
        assert_eq!(p.serving[0].min, 1);
        assert_eq!(p.defaults.flexible_max_unavailable, 1);
        assert_eq!(p.schedules[0].spec.workers["default"].min, Some(1));
        assert_eq!(p.workers[0].deployment_name(), "herd-worker-default");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let text = "[[workers]]\nqueue = \"a\"\njobs_per_worker = \"ten\"\nmax = 2\n";
        let e = Policy::parse(text, "p.toml").unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("p.toml"), "{e}");
    }

    #[test]
    fn unknown_field_is_rejected_with_its_name() {
        let text =
            "[[workers]]\nqueue = \"a\"\njobs_per_worker = 1\nmax = 2\njobs_per_wroker = 3\n";
        let e = Policy::parse(text, "p.toml").unwrap_err().to_string();
        assert!(e.contains("jobs_per_wroker"), "{e}");
        assert!(e.contains("line 5"), "{e}");
    }

    #[test]
    fn validation_errors_name_line_and_field() {
        let text = "\n[[workers]]\nqueue = \"a\"\njobs_per_worker = 0\nmin = 5\nmax = 2\n\n[[serving]]\nname = \"s\"\ntarget_invocations_per_minute = 225\ntarget_memory_utilisation = 80\nmax = 3\n";
        let e = Policy::parse(text, "p.toml").unwrap_err().to_string();
        assert!(
            e.contains("line 2: workers[0] (queue \"a\").jobs_per_worker"),
            "{e}"
        );
        assert!(e.contains("min (5) is above max (2)"), "{e}");
        assert!(
            e.contains("line 8: serving[0] (name \"s\").target_memory_utilisation"),
            "{e}"
        );
    }

    #[test]
    fn bad_schedule_is_explained() {
        for (window, days, tz, want) in [
            ("8-19", "\"mon\"", "UTC", "is not HH:MM"),
            ("08:00-25:00", "\"mon\"", "UTC", "HH:MM"),
            ("08:00-19:00", "\"monday-ish\"", "UTC", "monday-ish"),
            ("08:00-19:00", "\"mon\"", "Mars/Olympus", "Mars/Olympus"),
            ("08:00-08:00", "\"mon\"", "UTC", "empty"),
        ] {
            let text = format!(
                "[[schedule]]\nname = \"x\"\ndays = [{days}]\nwindow = \"{window}\"\ntimezone = \"{tz}\"\n"
            );
            let e = Policy::parse(&text, "p.toml").unwrap_err().to_string();
            assert!(e.contains(want), "{window} {days} {tz}: {e}");
            assert!(e.contains("line 1: schedule[0]"), "{e}");
        }
    }

    #[test]
    fn schedule_referencing_unknown_pool_is_rejected() {
        let text = "[[schedule]]\nname = \"x\"\ndays = [\"daily\"]\nwindow = \"00:00-06:00\"\nworkers.nope = { min = 1 }\n";
        let e = Policy::parse(text, "p.toml").unwrap_err().to_string();
        assert!(e.contains("no [[workers]] pool for queue \"nope\""), "{e}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("42").unwrap(), Duration::from_secs(42));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("unit"));
        assert!(parse_duration("soon").is_err());
    }
}
