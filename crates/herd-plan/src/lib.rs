//! `herd plan`: what serving a fleet of models costs before paying for it.
//!
//! Owns: the plan file (models, traffic, machines catalog, policy), the cost model (one model
//! per machine, herd sharing machines under a budget, herd with autoscaling and schedules), the
//! cost of ownership over horizons, and a cache simulation that replays a trace on a simulated
//! clock through herd-core's own eviction code; the report as text, JSON and self-contained HTML
//! with SVG charts.
//! Must not depend on: HTTP, storage engines. (It loads models through herd-core only to measure
//! a directory repository's charges, like the server does.)

pub mod cost;
pub mod file;
pub mod html;
pub mod models;
pub mod sim;
pub mod traffic;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use herd_api::units::human_bytes;
use herd_core::EvictionPolicy;
use serde::Serialize;

pub use file::PlanFile;
pub use models::ModelSpec;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{}: {reason}", path.display())]
    Io { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("{}: line {line}: {reason}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("measuring the models: {0}")]
    Measure(String),
}

/// One horizon's totals of the cost-of-ownership comparison.
#[derive(Debug, Clone, Serialize)]
pub struct TcoRow {
    pub name: String,
    pub upfront: f64,
    pub monthly: f64,
    /// Total at each horizon, in the order of `months`.
    pub totals: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tco {
    pub months: Vec<u32>,
    pub options: Vec<TcoRow>,
    /// The cheapest option at each horizon.
    pub cheapest: Vec<String>,
}

/// The smallest simulated budget meeting a target, per policy.
#[derive(Debug, Clone, Serialize)]
pub struct Smallest {
    pub policy: String,
    pub target: String,
    pub budget: Option<u64>,
}

/// Everything `herd plan` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub title: Option<String>,
    pub published: Option<String>,
    /// Where the inputs come from (the plan file's `inputs`).
    pub inputs: Option<String>,
    pub prices_as_of: String,
    pub models: usize,
    pub total_charge: u64,
    pub requests_per_second_peak: f64,
    pub costs: cost::Costs,
    pub tco: Option<Tco>,
    /// Trace used by the simulation: `file` or `synthetic`, its requests and hours.
    pub trace: Option<TraceInfo>,
    pub simulation: Vec<sim::SimResult>,
    pub smallest: Vec<Smallest>,
    /// The models as the plan saw them (charges measured or given).
    pub fleet: Vec<ModelSpec>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceInfo {
    pub kind: String,
    pub requests: usize,
    pub hours: f64,
}

/// The plan file's models when they need no engine; `None` when they are a directory to
/// measure (call [`models::measure_directory`] and pass its result to [`evaluate`]).
pub fn static_models(plan: &PlanFile, base: &Path) -> Result<Option<Vec<ModelSpec>>, PlanError> {
    if models::needs_backend(&plan.models) {
        return Ok(None);
    }
    models::from_section(&plan.models, base).map(Some)
}

/// The registry channel a plan wants measured, if any.
pub fn channel_to_measure(plan: &PlanFile) -> Option<&str> {
    plan.models.channel.as_deref()
}

/// The directory a plan wants measured, if any.
pub fn directory_to_measure(plan: &PlanFile, base: &Path) -> Option<PathBuf> {
    plan.models.dir.as_ref().map(|d| base.join(d))
}

/// Computes the whole report.
pub fn evaluate(plan: &PlanFile, base: &Path, fleet: Vec<ModelSpec>) -> Result<Report, PlanError> {
    let catalog = file::load_catalog(&base.join(&plan.machines.catalog))?;
    let herd_type = catalog.get(&plan.machines.kind)?;
    let baseline_type = match &plan.machines.baseline_type {
        Some(b) => catalog.get(b)?,
        None => herd_type,
    };
    let (rates, trace) = match &plan.traffic.trace {
        Some(t) => {
            let tr = traffic::read_trace(&base.join(t), &fleet)?;
            (traffic::rates_from_trace(&tr, fleet.len()), Some(tr))
        }
        None => (traffic::rates(&plan.traffic, &fleet)?, None),
    };
    let costs = cost::costs(
        &fleet,
        &rates,
        herd_type,
        baseline_type,
        plan.machines.memory.as_deref(),
        &plan.policy,
    )?;
    let tco = plan.tco.as_ref().map(|t| {
        let options: Vec<TcoRow> = t
            .option
            .iter()
            .map(|o| {
                let from_plan = match o.plan.as_deref() {
                    Some("baseline") => costs.baseline.monthly_cost,
                    Some("shared") => costs.shared.monthly_cost,
                    Some("autoscaled") => costs.autoscaled.monthly_cost,
                    _ => 0.0,
                };
                let monthly = o.monthly + from_plan;
                TcoRow {
                    name: o.name.clone(),
                    upfront: o.upfront,
                    monthly,
                    totals: t
                        .months
                        .iter()
                        .map(|m| o.upfront + monthly * *m as f64)
                        .collect(),
                }
            })
            .collect();
        let cheapest = (0..t.months.len())
            .map(|i| {
                options
                    .iter()
                    .min_by(|a, b| a.totals[i].total_cmp(&b.totals[i]))
                    .map(|o| o.name.clone())
                    .unwrap_or_default()
            })
            .collect();
        Tco {
            months: t.months.clone(),
            options,
            cheapest,
        }
    });

    let mut simulation = Vec::new();
    let mut smallest = Vec::new();
    let mut trace_info = None;
    if !plan.simulate.skip {
        let (trace, kind) = match trace {
            Some(t) => (t, "file"),
            None => (
                traffic::generate(
                    &rates,
                    plan.traffic.simulate_hours.unwrap_or(24.0),
                    plan.traffic.seed.unwrap_or(7),
                    plan.simulate.max_requests,
                )?,
                "synthetic",
            ),
        };
        if trace.len() > plan.simulate.max_requests {
            return Err(PlanError::Invalid {
                field: "traffic.trace".into(),
                reason: format!(
                    "{} requests, more than simulate.max_requests = {}",
                    trace.len(),
                    plan.simulate.max_requests
                ),
            });
        }
        trace_info = Some(TraceInfo {
            kind: kind.into(),
            requests: trace.len(),
            hours: trace.last().map(|r| r.at / 3600.0).unwrap_or(0.0),
        });
        let budgets: Vec<u64> = if plan.simulate.budgets.is_empty() {
            sim::default_budgets(&fleet, &[costs.machine_budget])
        } else {
            plan.simulate
                .budgets
                .iter()
                .map(|b| file::parse_size("simulate.budgets", b))
                .collect::<Result<_, _>>()?
        };
        let policies: Vec<EvictionPolicy> = plan
            .simulate
            .policies
            .iter()
            .map(|p| p.parse().expect("checked when the plan was read"))
            .collect();
        for p in &policies {
            let mut rows: Vec<sim::SimResult> = budgets
                .iter()
                .map(|b| sim::simulate(&fleet, &trace, *p, *b))
                .collect();
            if let Some(target) = plan.simulate.target_hit_ratio {
                smallest.push(Smallest {
                    policy: sim::policy_name(*p).into(),
                    target: format!("hit ratio >= {target}"),
                    budget: rows
                        .iter()
                        .find(|r| r.hit_ratio >= target)
                        .map(|r| r.budget),
                });
            }
            if let Some(target) = plan.simulate.target_p99_ms {
                smallest.push(Smallest {
                    policy: sim::policy_name(*p).into(),
                    target: format!("added p99 <= {target} ms"),
                    budget: rows
                        .iter()
                        .find(|r| r.p99_added_ms <= target)
                        .map(|r| r.budget),
                });
            }
            simulation.append(&mut rows);
        }
    }
    Ok(Report {
        title: plan.title.clone(),
        published: plan.published.clone(),
        inputs: plan.inputs.clone(),
        prices_as_of: catalog.prices_as_of.clone(),
        models: fleet.len(),
        total_charge: fleet.iter().map(|m| m.charge).sum(),
        requests_per_second_peak: rates.peak_total(),
        costs,
        tco,
        trace: trace_info,
        simulation,
        smallest,
        fleet,
    })
}

fn money(v: f64) -> String {
    let whole = v.round() as i64;
    let s = whole.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    format!("{}${out}", if whole < 0 { "-" } else { "" })
}

/// The report as a text table.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    if let Some(t) = &r.title {
        let _ = writeln!(s, "{t}");
    }
    let _ = writeln!(
        s,
        "{} models, {} in all; peak {:.1} req/s; prices as of {}",
        r.models,
        human_bytes(r.total_charge),
        r.requests_per_second_peak,
        r.prices_as_of
    );
    let _ = writeln!(
        s,
        "one herd machine serves {} models ({} fit its budget of {})\n",
        r.costs.models_per_machine,
        r.costs.models_per_machine_by_memory,
        human_bytes(r.costs.machine_budget)
    );
    let _ = writeln!(
        s,
        "{:<32} {:<18} {:>9} {:>14} {:>8}",
        "option", "instance type", "machines", "monthly cost", "saving"
    );
    for o in [&r.costs.baseline, &r.costs.shared, &r.costs.autoscaled] {
        let machines = if (o.average_machines - o.machines as f64).abs() > 1e-9 {
            format!("{:.2} avg", o.average_machines)
        } else {
            o.machines.to_string()
        };
        let _ = writeln!(
            s,
            "{:<32} {:<18} {:>9} {:>14} {:>7.1}%",
            o.name,
            o.instance_type,
            machines,
            money(o.monthly_cost),
            o.saving * 100.0
        );
    }
    let shared = r.costs.shared.monthly_cost;
    if shared > 0.0 && r.costs.autoscaled.monthly_cost < shared {
        let _ = writeln!(
            s,
            "autoscaling and schedules save {:.1}% of the shared cost",
            100.0 * (1.0 - r.costs.autoscaled.monthly_cost / shared)
        );
    }
    for o in [&r.costs.baseline, &r.costs.shared, &r.costs.autoscaled] {
        let _ = writeln!(s, "  {}: {}", o.name, o.why);
    }
    if let Some(t) = &r.tco {
        let _ = writeln!(s, "\ncost of ownership");
        let mut head = format!("{:<32} {:>10} {:>10}", "option", "upfront", "monthly");
        for m in &t.months {
            let _ = write!(head, " {:>12}", format!("{m} months"));
        }
        let _ = writeln!(s, "{head}");
        for o in &t.options {
            let mut line = format!(
                "{:<32} {:>10} {:>10}",
                o.name,
                money(o.upfront),
                money(o.monthly)
            );
            for v in &o.totals {
                let _ = write!(line, " {:>12}", money(*v));
            }
            let _ = writeln!(s, "{line}");
        }
        for (m, c) in t.months.iter().zip(&t.cheapest) {
            let _ = writeln!(s, "cheapest over {m} months: {c}");
        }
    }
    if let Some(ti) = &r.trace {
        let _ = writeln!(
            s,
            "\ncache simulation ({} trace, {} requests over {:.2} h; herd-core's eviction on a simulated clock)",
            ti.kind, ti.requests, ti.hours
        );
        let _ = writeln!(
            s,
            "{:<6} {:>12} {:>9} {:>9} {:>10} {:>11} {:>13} {:>9}",
            "policy",
            "budget",
            "hit ratio",
            "loads",
            "loads/h",
            "loading s",
            "added p99 ms",
            "timeouts"
        );
        for x in &r.simulation {
            let _ = writeln!(
                s,
                "{:<6} {:>12} {:>9.4} {:>9} {:>10.1} {:>11.1} {:>13} {:>9}",
                x.policy,
                human_bytes(x.budget),
                x.hit_ratio,
                x.loads,
                x.loads_per_hour,
                x.load_seconds,
                if x.p99_added_ms > sim::default_timeout_secs() * 1e3 {
                    "> timeout".to_string()
                } else {
                    format!("{:.1}", x.p99_added_ms)
                },
                x.timeouts
            );
        }
        for m in &r.smallest {
            let _ = writeln!(
                s,
                "smallest budget with {} ({}): {}",
                m.target,
                m.policy,
                m.budget
                    .map(human_bytes)
                    .unwrap_or_else(|| "none of those simulated".into())
            );
        }
    }
    if let Some(p) = &r.published {
        let _ = writeln!(s, "\npublished: {p}");
    }
    if let Some(i) = &r.inputs {
        let _ = writeln!(s, "inputs: {i}");
    }
    s
}
