//! Machines and cost: one model per machine (the baseline), herd sharing machines under the
//! budget, and herd with autoscaling and schedules.

use serde::Serialize;

use crate::file::{parse_size, InstanceType, PolicySection, ScheduleWindow};
use crate::models::ModelSpec;
use crate::traffic::{is_weekend, Rates, HOURS_PER_WEEK};
use crate::PlanError;

/// One priced option.
#[derive(Debug, Clone, Serialize)]
pub struct Option_ {
    pub name: String,
    pub instance_type: String,
    /// Machines at peak.
    pub machines: u32,
    /// Average machines over the week.
    pub average_machines: f64,
    pub hourly_price: f64,
    pub monthly_cost: f64,
    /// Saving against the baseline, 0..1.
    pub saving: f64,
    /// How the machine count was found.
    pub why: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Costs {
    pub baseline: Option_,
    pub shared: Option_,
    pub autoscaled: Option_,
    /// Models one herd machine serves: as many as fit the budget (the largest model's charge)
    /// and whose peaks together stay within the invocations target.
    pub models_per_machine: usize,
    /// Models one herd machine holds by memory alone.
    pub models_per_machine_by_memory: usize,
    /// Bytes of the budget on one herd machine.
    pub machine_budget: u64,
    /// Machines in each hour of a week (hour 0 = Monday 00:00) for herd + autoscaling.
    pub autoscaled_hourly: Vec<u32>,
}

/// Model memory of an instance type: the accelerator's when it has one (unless `host`).
pub fn model_memory(t: &InstanceType, memory: Option<&str>) -> Result<u64, PlanError> {
    match (memory, &t.accelerator_memory) {
        (Some("host"), _) | (None, None) => parse_size("memory", &t.memory),
        (Some("accelerator") | None, Some(a)) => parse_size("accelerator_memory", a),
        (Some("accelerator"), None) => Err(PlanError::Invalid {
            field: "machines.memory".into(),
            reason: format!("'{}' has no accelerator memory", t.name),
        }),
        (Some(other), _) => Err(PlanError::Invalid {
            field: "machines.memory".into(),
            reason: format!("'{other}': use accelerator or host"),
        }),
    }
}

/// Bins needed to hold every model once, first fit decreasing, each bin `cap` bytes.
pub fn pack(models: &[ModelSpec], cap: u64) -> Result<usize, PlanError> {
    let mut sizes: Vec<u64> = models.iter().map(|m| m.charge).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let mut bins: Vec<u64> = Vec::new();
    for s in sizes {
        if s > cap {
            let m = models
                .iter()
                .find(|m| m.charge == s)
                .expect("size of a model");
            return Err(PlanError::Invalid {
                field: "models".into(),
                reason: format!(
                    "model '{}' ({} bytes) is larger than one machine's budget ({cap} bytes)",
                    m.name, s
                ),
            });
        }
        match bins.iter_mut().find(|b| **b + s <= cap) {
            Some(b) => *b += s,
            None => bins.push(s),
        }
    }
    Ok(bins.len().max(1))
}

fn ceil_div(rate: f64, per: Option<f64>) -> u32 {
    match per {
        Some(p) if rate > 0.0 => (rate / p - 1e-9).ceil().max(0.0) as u32,
        _ => 0,
    }
}

fn in_window(w: &ScheduleWindow, h: usize) -> bool {
    let day_ok = match w.days.as_str() {
        "weekdays" => !is_weekend(h),
        "weekend" => is_weekend(h),
        _ => true,
    };
    let hour = (h % 24) as u32;
    let hour_ok = if w.from < w.to {
        hour >= w.from && hour < w.to
    } else {
        hour >= w.from || hour < w.to
    };
    day_ok && hour_ok
}

pub fn costs(
    models: &[ModelSpec],
    rates: &Rates,
    herd_type: &InstanceType,
    baseline_type: &InstanceType,
    memory: Option<&str>,
    policy: &PolicySection,
) -> Result<Costs, PlanError> {
    let month = policy.hours_per_month;
    let ipi = policy.invocations_per_instance;
    let b_reps = policy.baseline_replicas.unwrap_or(policy.replicas);

    // Baseline: every model on its own machines, enough for its peak, at least `b_reps`.
    let b_mem = model_memory(baseline_type, memory)?;
    if let Some(m) = models.iter().find(|m| m.charge > b_mem) {
        return Err(PlanError::Invalid {
            field: "machines.baseline_type".into(),
            reason: format!(
                "model '{}' ({} bytes) does not fit in '{}' ({b_mem} bytes)",
                m.name, m.charge, baseline_type.name
            ),
        });
    }
    let baseline_machines: u32 = (0..models.len())
        .map(|i| ceil_div(rates.peak_of(i), ipi).max(b_reps))
        .sum();
    let baseline_monthly = baseline_machines as f64 * baseline_type.hourly * month;
    let baseline = Option_ {
        name: "one model per machine".into(),
        instance_type: baseline_type.name.clone(),
        machines: baseline_machines,
        average_machines: baseline_machines as f64,
        hourly_price: baseline_type.hourly,
        monthly_cost: baseline_monthly,
        saving: 0.0,
        why: format!(
            "{} models x at least {b_reps} machine(s) each{}",
            models.len(),
            if ipi.is_some() {
                ", more for a model whose peak needs it"
            } else {
                ""
            }
        ),
    };

    // Herd sharing: every model resident, packed under the budget, `replicas` copies, and
    // enough machines for the peak of all traffic together.
    let mem = model_memory(herd_type, memory)?;
    let budget = (mem as f64 * policy.budget_share) as u64;
    let bins = pack(models, budget)?;
    let per_machine = models
        .iter()
        .map(|m| m.charge)
        .max()
        .map(|c| (budget / c.max(1)) as usize)
        .unwrap_or(0)
        .min(models.len());
    let mean_peak =
        (0..models.len()).map(|i| rates.peak_of(i)).sum::<f64>() / models.len().max(1) as f64;
    let by_throughput = match ipi {
        Some(p) if mean_peak > 0.0 => ((p / mean_peak + 1e-9).floor() as usize).max(1),
        _ => usize::MAX,
    };
    let resident_floor = bins as u32 * policy.replicas;
    let peak_need = ceil_div(rates.peak_total(), ipi);
    let shared_machines = resident_floor.max(peak_need).max(1);
    let saving = |monthly: f64| {
        if baseline_monthly > 0.0 {
            1.0 - monthly / baseline_monthly
        } else {
            0.0
        }
    };
    let shared_monthly = shared_machines as f64 * herd_type.hourly * month;
    let shared = Option_ {
        name: "herd, shared machines".into(),
        instance_type: herd_type.name.clone(),
        machines: shared_machines,
        average_machines: shared_machines as f64,
        hourly_price: herd_type.hourly,
        monthly_cost: shared_monthly,
        saving: saving(shared_monthly),
        why: format!(
            "{} models packed into {bins} machine(s) at {:.0}% of {} bytes, x {} replica(s){}",
            models.len(),
            policy.budget_share * 100.0,
            mem,
            policy.replicas,
            if peak_need > resident_floor {
                format!(
                    "; the peak of {:.1} req/s needs {peak_need}",
                    rates.peak_total()
                )
            } else {
                String::new()
            }
        ),
    };

    // Herd + autoscaling: each hour as many machines as its traffic needs, never fewer than
    // the resident floor, except inside a schedule window, whose floor is its own.
    let hourly: Vec<u32> = (0..HOURS_PER_WEEK)
        .map(|h| {
            let floor = policy
                .schedule
                .iter()
                .filter(|w| in_window(w, h))
                .map(|w| w.min_machines)
                .min()
                .unwrap_or(resident_floor);
            ceil_div(rates.total_at(h), ipi).max(floor).max(1)
        })
        .collect();
    let avg = hourly.iter().map(|m| *m as f64).sum::<f64>() / HOURS_PER_WEEK as f64;
    let auto_monthly = avg * herd_type.hourly * month;
    let autoscaled = Option_ {
        name: "herd + autoscaling + schedules".into(),
        instance_type: herd_type.name.clone(),
        machines: hourly.iter().copied().max().unwrap_or(1),
        average_machines: avg,
        hourly_price: herd_type.hourly,
        monthly_cost: auto_monthly,
        saving: saving(auto_monthly),
        why: if policy.schedule.is_empty() && ipi.is_none() {
            "no schedule and no throughput target: the same as shared".into()
        } else {
            format!(
                "hourly machines from the traffic{}",
                if policy.schedule.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; windows {}",
                        policy
                            .schedule
                            .iter()
                            .map(|w| format!(
                                "{} ({} {:02}-{:02}h: {} machine(s))",
                                w.name, w.days, w.from, w.to, w.min_machines
                            ))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            )
        },
    };
    Ok(Costs {
        baseline,
        shared,
        autoscaled,
        models_per_machine: per_machine.min(by_throughput),
        models_per_machine_by_memory: per_machine,
        machine_budget: budget,
        autoscaled_hourly: hourly,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn it(name: &str, gb: &str, hourly: f64) -> InstanceType {
        InstanceType {
            name: name.into(),
            memory: "64GB".into(),
            cores: 4,
            accelerator_memory: Some(gb.into()),
            hourly,
            note: None,
        }
    }
    fn fleet(n: usize, bytes: u64) -> Vec<ModelSpec> {
        (0..n)
            .map(|i| ModelSpec {
                name: format!("m{i}"),
                charge: bytes,
                load_secs: 1.0,
            })
            .collect()
    }
    fn flat(per_model: Vec<f64>) -> Rates {
        Rates {
            per_model,
            hourly: vec![1.0; HOURS_PER_WEEK],
        }
    }

    #[test]
    fn packing_counts_bins_and_refuses_what_cannot_fit() {
        assert_eq!(pack(&fleet(12, 1_000), 12_400).unwrap(), 1);
        assert_eq!(pack(&fleet(13, 1_000), 12_400).unwrap(), 2);
        assert!(pack(&fleet(1, 20_000), 12_400).is_err());
    }

    #[test]
    fn twelve_models_on_one_machine_save_eleven_twelfths() {
        let t = it("g", "15.5GB", 1.0);
        let p = PolicySection::default();
        let c = costs(
            &fleet(12, 1_030_000_000),
            &flat(vec![0.1; 12]),
            &t,
            &t,
            None,
            &p,
        )
        .unwrap();
        assert_eq!(c.baseline.machines, 12);
        assert_eq!(c.shared.machines, 1);
        assert_eq!(c.models_per_machine, 12);
        assert!((c.shared.saving - 11.0 / 12.0).abs() < 1e-9);
        assert!((c.baseline.monthly_cost - 12.0 * 730.0).abs() < 1e-9);
    }

    #[test]
    fn throughput_and_schedules_set_the_hourly_machines() {
        let t = it("g", "16GB", 2.0);
        let mut p = PolicySection {
            invocations_per_instance: Some(10.0),
            ..Default::default()
        };
        p.schedule.push(ScheduleWindow {
            name: "night".into(),
            days: "all".into(),
            from: 22,
            to: 6,
            min_machines: 1,
        });
        let mut r = flat(vec![5.0, 5.0, 15.0]);
        // 25 req/s by day, 5 req/s from 22 to 6.
        r.hourly = (0..HOURS_PER_WEEK)
            .map(|h| {
                if !(6..22).contains(&(h % 24)) {
                    0.2
                } else {
                    1.0
                }
            })
            .collect();
        let c = costs(&fleet(3, 1_000), &r, &t, &t, None, &p).unwrap();
        assert_eq!(c.baseline.machines, 1 + 1 + 2);
        assert_eq!(c.shared.machines, 3);
        assert_eq!(c.autoscaled_hourly[12], 3);
        assert_eq!(c.autoscaled_hourly[23], 1);
        assert_eq!(c.autoscaled_hourly[3], 1);
        assert!((c.autoscaled.average_machines - (16.0 * 3.0 + 8.0) / 24.0).abs() < 1e-9);
    }
}
