//! The plan file (TOML) and the files it names, read and checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use herd_api::units::SizeSpec;
use serde::Deserialize;

use crate::PlanError;

/// A plan file as written. Paths inside are relative to the plan file's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// A title for the report.
    #[serde(default)]
    pub title: Option<String>,
    /// What the case study published, printed beside the result (free text).
    #[serde(default)]
    pub published: Option<String>,
    /// Where the plan's inputs come from (free text: measured, a named public source, or
    /// modelled from a case's headline figures), printed with the result so a reader knows.
    #[serde(default)]
    pub inputs: Option<String>,
    /// May be left out when `herd plan --channel` names the models.
    #[serde(default)]
    pub models: ModelsSection,
    #[serde(default)]
    pub traffic: TrafficSection,
    pub machines: MachinesSection,
    #[serde(default)]
    pub policy: PolicySection,
    #[serde(default)]
    pub simulate: SimulateSection,
    #[serde(default)]
    pub tco: Option<TcoSection>,
}

/// Where the models come from: exactly one of `dir`, `channel`, `inventory`, or a uniform fleet
/// `count`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsSection {
    /// A directory repository (`<dir>/<model>/<version>/model.onnx`): each model is loaded once,
    /// like the server does, to measure its charge and load time.
    pub dir: Option<PathBuf>,
    /// A registry channel (e.g. `production`): the models of the release it points to, each
    /// fetched and loaded once to measure, as `herd serve --channel` would serve them. The
    /// registry and artifact store are `herd plan`'s `--registry` / `--artifacts`.
    pub channel: Option<String>,
    /// A CSV inventory: `name,size,load_secs` (size in bytes or with a unit: `292MB`).
    pub inventory: Option<PathBuf>,
    /// A uniform fleet: `count` models of `size` each taking `load_secs` to load.
    pub count: Option<usize>,
    pub size: Option<String>,
    pub load_secs: Option<f64>,
    /// Name prefix of a uniform fleet's models (default `model`).
    pub prefix: Option<String>,
}

/// The traffic: per-model rates with a daily profile, or a trace.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSection {
    /// Requests per second of every model at profile 1.0.
    pub rate: Option<f64>,
    /// Per-model overrides of `rate` (requests per second).
    #[serde(default)]
    pub rates: BTreeMap<String, f64>,
    /// Instead of per-model rates: this many requests per second in all, spread over the models
    /// by a zipf law of exponent `zipf` (model 0 the busiest).
    pub total_rate: Option<f64>,
    pub zipf: Option<f64>,
    /// 24 hourly multipliers of the rates on weekdays (hour 0 = midnight); default all 1.
    pub profile: Option<Vec<f64>>,
    /// 24 hourly multipliers on Saturday and Sunday; default the weekday profile.
    pub weekend_profile: Option<Vec<f64>>,
    /// A request trace, CSV `timestamp,model` (seconds; header optional). When given, the rates
    /// are measured from it and the cache simulation replays it.
    pub trace: Option<PathBuf>,
    /// Hours of synthetic traffic the cache simulation generates from the rates (default 24).
    pub simulate_hours: Option<f64>,
    /// Seed of the synthetic traffic.
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachinesSection {
    /// The catalog of instance types (TOML), relative to the plan file.
    pub catalog: PathBuf,
    /// The instance type herd runs on.
    #[serde(rename = "type")]
    pub kind: String,
    /// The instance type of the one-model-per-machine baseline (default: `type`).
    pub baseline_type: Option<String>,
    /// Which memory holds the models: `accelerator` or `host` (default: accelerator when the
    /// type has one).
    pub memory: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Share of a machine's memory the models may take (herd's `--memory-budget 80%`).
    #[serde(default = "default_share")]
    pub budget_share: f64,
    /// Requests per second one instance serves at the autoscaling target (SageMaker's
    /// invocations-per-instance target, divided by 60). Unset: throughput is not a limit.
    pub invocations_per_instance: Option<f64>,
    /// Copies of every model across machines (herd sharing: the fleet is packed `replicas`
    /// times).
    #[serde(default = "one")]
    pub replicas: u32,
    /// Instances per model in the baseline (default: `replicas`).
    pub baseline_replicas: Option<u32>,
    /// Hours in a billed month.
    #[serde(default = "default_hours")]
    pub hours_per_month: f64,
    /// Scale-down windows for herd + autoscaling.
    #[serde(default)]
    pub schedule: Vec<ScheduleWindow>,
}

impl Default for PolicySection {
    fn default() -> Self {
        PolicySection {
            budget_share: default_share(),
            invocations_per_instance: None,
            replicas: 1,
            baseline_replicas: None,
            hours_per_month: default_hours(),
            schedule: Vec::new(),
        }
    }
}

/// A window of the week (e.g. nights, weekends) with its own machine floor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleWindow {
    pub name: String,
    /// `all`, `weekdays` or `weekend`.
    #[serde(default = "all_days")]
    pub days: String,
    /// First hour of the window (0-23).
    #[serde(default)]
    pub from: u32,
    /// Hour the window ends (exclusive, 1-24; may wrap past midnight: from 22 to 6).
    #[serde(default = "day_end")]
    pub to: u32,
    /// Machines kept in the window (the cache holds less; the simulation says what that costs).
    pub min_machines: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulateSection {
    /// Eviction policies to simulate: `gdsf`, `lru`.
    #[serde(default = "both_policies")]
    pub policies: Vec<String>,
    /// Budgets to simulate (`2GiB`, bytes); default: shares of the fleet's total charge.
    #[serde(default)]
    pub budgets: Vec<String>,
    /// Find the smallest budget whose hit ratio is at least this.
    pub target_hit_ratio: Option<f64>,
    /// Find the smallest budget whose added p99 latency is at most this many milliseconds.
    pub target_p99_ms: Option<f64>,
    /// Longest trace the simulation replays.
    #[serde(default = "max_requests")]
    pub max_requests: usize,
    /// Skip the simulation.
    #[serde(default)]
    pub skip: bool,
}

impl Default for SimulateSection {
    fn default() -> Self {
        SimulateSection {
            policies: both_policies(),
            budgets: Vec::new(),
            target_hit_ratio: None,
            target_p99_ms: None,
            max_requests: max_requests(),
            skip: false,
        }
    }
}

/// Cost of ownership over horizons: self-hosting vs cloud vs platforms.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcoSection {
    /// Horizons in months (e.g. [12, 24]).
    pub months: Vec<u32>,
    pub option: Vec<TcoOption>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcoOption {
    pub name: String,
    /// Paid once at the start (hardware, setup).
    #[serde(default)]
    pub upfront: f64,
    /// Paid every month (power, rent, fees, people).
    #[serde(default)]
    pub monthly: f64,
    /// Adds the monthly cost of one of this plan's results: `baseline`, `shared`, `autoscaled`.
    pub plan: Option<String>,
}

fn default_share() -> f64 {
    0.8
}
fn one() -> u32 {
    1
}
fn default_hours() -> f64 {
    730.0
}
fn all_days() -> String {
    "all".into()
}
fn day_end() -> u32 {
    24
}
fn both_policies() -> Vec<String> {
    vec!["gdsf".into(), "lru".into()]
}
fn max_requests() -> usize {
    2_000_000
}

/// One instance type of the catalog.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceType {
    pub name: String,
    /// Host memory (`16GiB`).
    pub memory: String,
    pub cores: u32,
    /// Accelerator memory usable by models (`15.5GB`), if any.
    #[serde(default)]
    pub accelerator_memory: Option<String>,
    /// Price per hour (on-demand).
    pub hourly: f64,
    #[serde(default)]
    pub note: Option<String>,
}

/// The catalog file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// The date the prices were taken (`prices_as_of = "2026-12-01"`).
    pub prices_as_of: String,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    pub instance: Vec<InstanceType>,
}

impl Catalog {
    pub fn get(&self, name: &str) -> Result<&InstanceType, PlanError> {
        self.instance
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| PlanError::Invalid {
                field: "machines.type".into(),
                reason: format!(
                    "'{name}' is not in the catalog; it has: {}",
                    self.instance
                        .iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }
}

/// A size written by a user (`15.5GB`, `292MB`, bytes).
pub fn parse_size(field: &str, s: &str) -> Result<u64, PlanError> {
    match s.parse::<SizeSpec>() {
        Ok(SizeSpec::Bytes(b)) => Ok(b),
        Ok(SizeSpec::Percent(_)) => Err(PlanError::Invalid {
            field: field.into(),
            reason: format!("'{s}' must be a size, not a share"),
        }),
        Err(reason) => Err(PlanError::Invalid {
            field: field.into(),
            reason,
        }),
    }
}

impl PlanFile {
    /// Reads a plan file; relative paths inside become relative to its directory.
    pub fn load(path: &Path) -> Result<(PlanFile, PathBuf), PlanError> {
        Self::load_with_channel(path, None)
    }

    /// As [`PlanFile::load`], with the models taken from `channel` (a registry channel) instead
    /// of the file's `[models]` when it is given.
    pub fn load_with_channel(
        path: &Path,
        channel: Option<String>,
    ) -> Result<(PlanFile, PathBuf), PlanError> {
        let text = std::fs::read_to_string(path).map_err(|e| PlanError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut plan: PlanFile = toml::from_str(&text).map_err(|e| PlanError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        if let Some(c) = channel {
            plan.models = ModelsSection {
                channel: Some(c),
                ..ModelsSection::default()
            };
        }
        plan.check()?;
        Ok((plan, base))
    }

    fn check(&self) -> Result<(), PlanError> {
        let bad = |field: &str, reason: String| {
            Err(PlanError::Invalid {
                field: field.into(),
                reason,
            })
        };
        let m = &self.models;
        let sources = [
            m.dir.is_some(),
            m.channel.is_some(),
            m.inventory.is_some(),
            m.count.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if sources != 1 {
            return bad(
                "models",
                "name exactly one of dir (a directory repository), channel (a registry channel, or herd plan --channel), inventory (a CSV file) or count + size + load_secs (a uniform fleet)".into(),
            );
        }
        if m.count.is_some() && (m.size.is_none() || m.load_secs.is_none()) {
            return bad(
                "models",
                "a uniform fleet needs count, size and load_secs".into(),
            );
        }
        if m.count == Some(0) {
            return bad("models.count", "must be at least 1".into());
        }
        let p = &self.policy;
        if !(p.budget_share > 0.0 && p.budget_share <= 1.0) {
            return bad(
                "policy.budget_share",
                format!("{} is not in (0, 1]", p.budget_share),
            );
        }
        if p.replicas == 0 || p.baseline_replicas == Some(0) {
            return bad("policy.replicas", "must be at least 1".into());
        }
        if let Some(ipi) = p.invocations_per_instance {
            if !(ipi > 0.0 && ipi.is_finite()) {
                return bad("policy.invocations_per_instance", "must be > 0".into());
            }
        }
        if p.hours_per_month.is_nan() || p.hours_per_month <= 0.0 {
            return bad("policy.hours_per_month", "must be > 0".into());
        }
        for w in &p.schedule {
            if w.from > 23 || w.to == 0 || w.to > 24 || w.from == w.to {
                return bad(
                    "policy.schedule",
                    format!("window '{}': from must be 0-23, to 1-24 and differ", w.name),
                );
            }
            if !matches!(w.days.as_str(), "all" | "weekdays" | "weekend") {
                return bad(
                    "policy.schedule.days",
                    format!("'{}': use all, weekdays or weekend", w.days),
                );
            }
        }
        let t = &self.traffic;
        for (name, prof) in [
            ("traffic.profile", &t.profile),
            ("traffic.weekend_profile", &t.weekend_profile),
        ] {
            if let Some(v) = prof {
                if v.len() != 24 || v.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
                    return bad(
                        name,
                        "must be 24 non-negative numbers (one per hour)".into(),
                    );
                }
            }
        }
        let has_rates = t.rate.is_some() || t.total_rate.is_some() || !t.rates.is_empty();
        if t.trace.is_some() && has_rates {
            return bad("traffic", "give either a trace or rates, not both".into());
        }
        if t.trace.is_none() && !has_rates {
            return bad(
                "traffic",
                "give rate (per model), total_rate (+ zipf), rates, or a trace".into(),
            );
        }
        for r in t
            .rate
            .iter()
            .chain(t.total_rate.iter())
            .chain(t.rates.values())
        {
            if !(r.is_finite() && *r >= 0.0) {
                return bad("traffic", format!("rate {r} must be a non-negative number"));
            }
        }
        if let Some(h) = t.simulate_hours {
            if !(h > 0.0 && h <= 24.0 * 366.0) {
                return bad("traffic.simulate_hours", "must be in (0, 8784]".into());
            }
        }
        for pol in &self.simulate.policies {
            if pol.parse::<herd_core::EvictionPolicy>().is_err() {
                return bad("simulate.policies", format!("'{pol}': use gdsf or lru"));
            }
        }
        for b in &self.simulate.budgets {
            parse_size("simulate.budgets", b)?;
        }
        if let Some(r) = self.simulate.target_hit_ratio {
            if !(0.0..=1.0).contains(&r) {
                return bad("simulate.target_hit_ratio", "must be in [0, 1]".into());
            }
        }
        if let Some(tco) = &self.tco {
            for o in &tco.option {
                if let Some(p) = &o.plan {
                    if !matches!(p.as_str(), "baseline" | "shared" | "autoscaled") {
                        return bad(
                            "tco.option.plan",
                            format!("'{p}': use baseline, shared or autoscaled"),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads a catalog file.
pub fn load_catalog(path: &Path) -> Result<Catalog, PlanError> {
    let text = std::fs::read_to_string(path).map_err(|e| PlanError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let c: Catalog = toml::from_str(&text).map_err(|e| PlanError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    for i in &c.instance {
        parse_size("catalog.instance.memory", &i.memory)?;
        if let Some(a) = &i.accelerator_memory {
            parse_size("catalog.instance.accelerator_memory", a)?;
        }
        if !(i.hourly.is_finite() && i.hourly >= 0.0) {
            return Err(PlanError::Invalid {
                field: "catalog.instance.hourly".into(),
                reason: format!("'{}': {} is not a price", i.name, i.hourly),
            });
        }
    }
    Ok(c)
}
