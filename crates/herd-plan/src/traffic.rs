//! Traffic: requests per second of every model for each hour of a week, from rates and daily
//! profiles or measured from a trace; and traces, read from a file or generated from the rates.

use std::collections::HashMap;
use std::path::Path;

use rand::{Rng, SeedableRng};

use crate::file::TrafficSection;
use crate::models::ModelSpec;
use crate::PlanError;

pub const HOURS_PER_WEEK: usize = 168;

/// One request of a trace: seconds since the trace started, and the model's index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    pub at: f64,
    pub model: usize,
}

/// Rates of every model (requests per second) in each hour of the week (hour 0 = Monday 00:00).
#[derive(Debug, Clone)]
pub struct Rates {
    /// `per_model[i]` is model i's base rate; `hourly[h]` the multiplier of hour h of the week.
    pub per_model: Vec<f64>,
    pub hourly: Vec<f64>,
}

impl Rates {
    /// All models' requests per second in hour `h` of the week.
    pub fn total_at(&self, h: usize) -> f64 {
        self.per_model.iter().sum::<f64>() * self.hourly[h % HOURS_PER_WEEK]
    }
    /// Model i's peak rate over the week.
    pub fn peak_of(&self, i: usize) -> f64 {
        self.per_model[i] * self.hourly.iter().cloned().fold(0.0, f64::max)
    }
    pub fn peak_total(&self) -> f64 {
        (0..HOURS_PER_WEEK)
            .map(|h| self.total_at(h))
            .fold(0.0, f64::max)
    }
}

/// Whether hour `h` of the week falls on Saturday or Sunday.
pub fn is_weekend(h: usize) -> bool {
    (h % HOURS_PER_WEEK) / 24 >= 5
}

/// Rates from the traffic section (not a trace).
pub fn rates(t: &TrafficSection, models: &[ModelSpec]) -> Result<Rates, PlanError> {
    let n = models.len();
    let mut per_model = vec![t.rate.unwrap_or(0.0); n];
    if let Some(total) = t.total_rate {
        let s = t.zipf.unwrap_or(1.0);
        let w: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
        let sum: f64 = w.iter().sum();
        for (r, wi) in per_model.iter_mut().zip(&w) {
            *r = total * wi / sum;
        }
    }
    let index: HashMap<&str, usize> = models
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.as_str(), i))
        .collect();
    for (name, r) in &t.rates {
        let i = *index.get(name.as_str()).ok_or_else(|| PlanError::Invalid {
            field: "traffic.rates".into(),
            reason: format!("'{name}' is not one of the models"),
        })?;
        per_model[i] = *r;
    }
    let weekday = t.profile.clone().unwrap_or_else(|| vec![1.0; 24]);
    let weekend = t.weekend_profile.clone().unwrap_or_else(|| weekday.clone());
    let hourly = (0..HOURS_PER_WEEK)
        .map(|h| {
            if is_weekend(h) {
                weekend[h % 24]
            } else {
                weekday[h % 24]
            }
        })
        .collect();
    Ok(Rates { per_model, hourly })
}

/// Rates measured from a trace: each model's share of the requests, and the requests per
/// second of each hour of the week the trace covers (a trace shorter than a week repeats).
pub fn rates_from_trace(trace: &[Request], n_models: usize) -> Rates {
    let mut counts = vec![0u64; n_models];
    for r in trace {
        counts[r.model] += 1;
    }
    let span = trace.last().map(|r| r.at).unwrap_or(0.0).max(1.0);
    let hours = (span / 3600.0).ceil().max(1.0) as usize;
    let mut per_hour = vec![0u64; hours];
    for r in trace {
        per_hour[((r.at / 3600.0) as usize).min(hours - 1)] += 1;
    }
    let total = trace.len().max(1) as f64;
    // Per-hour request rates; a partial last (or only) hour is scaled by the time it covers.
    let hour_rate = |i: usize| {
        let covered = if i + 1 == hours {
            (span - 3600.0 * i as f64).max(1.0)
        } else {
            3600.0
        };
        per_hour[i] as f64 / covered
    };
    let hourly_total: Vec<f64> = (0..HOURS_PER_WEEK).map(|h| hour_rate(h % hours)).collect();
    // per_model[i] * hourly[h] = model i's rate in hour h, with per_model the shares.
    let per_model = counts.iter().map(|c| *c as f64 / total).collect();
    Rates {
        per_model,
        hourly: hourly_total,
    }
}

/// Reads a `timestamp,model` CSV (seconds; any header line and `#` comments skipped). Models
/// must be among `models`; timestamps are made relative to the first and must not go back.
pub fn read_trace(path: &Path, models: &[ModelSpec]) -> Result<Vec<Request>, PlanError> {
    let text = std::fs::read_to_string(path).map_err(|e| PlanError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let index: HashMap<&str, usize> = models
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.as_str(), i))
        .collect();
    let mut out = Vec::new();
    let mut first: Option<f64> = None;
    let mut last = f64::NEG_INFINITY;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| PlanError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let Some((ts, model)) = line.split_once(',') else {
            return Err(bad("expected timestamp,model".into()));
        };
        let Ok(t) = ts.trim().parse::<f64>() else {
            if out.is_empty() && first.is_none() {
                continue; // a header
            }
            return Err(bad(format!("'{ts}' is not a timestamp in seconds")));
        };
        if !t.is_finite() || t < last {
            return Err(bad(format!(
                "timestamp {t} goes back (previous {last}); sort the trace"
            )));
        }
        last = t;
        let model = model.trim();
        let m = *index
            .get(model)
            .ok_or_else(|| bad(format!("model '{model}' is not one of the plan's models")))?;
        let t0 = *first.get_or_insert(t);
        out.push(Request {
            at: t - t0,
            model: m,
        });
    }
    if out.is_empty() {
        return Err(PlanError::Line {
            path: path.to_path_buf(),
            line: 0,
            reason: "no requests in the trace".into(),
        });
    }
    Ok(out)
}

/// A synthetic trace of `hours` hours from the rates: Poisson arrivals at each hour's total
/// rate, each request choosing a model in proportion to its rate. Seeded, deterministic.
pub fn generate(
    rates: &Rates,
    hours: f64,
    seed: u64,
    max_requests: usize,
) -> Result<Vec<Request>, PlanError> {
    let expected: f64 = (0..hours.ceil() as usize)
        .map(|h| rates.total_at(h) * 3600.0 * (hours - h as f64).min(1.0))
        .sum();
    if expected > max_requests as f64 {
        return Err(PlanError::Invalid {
            field: "traffic.simulate_hours".into(),
            reason: format!(
                "the rates make about {expected:.0} requests in {hours} hours, more than simulate.max_requests = {max_requests}; simulate fewer hours or raise the limit"
            ),
        });
    }
    let total: f64 = rates.per_model.iter().sum();
    if total <= 0.0 {
        return Ok(Vec::new());
    }
    let mut cdf = Vec::with_capacity(rates.per_model.len());
    let mut acc = 0.0;
    for r in &rates.per_model {
        acc += r / total;
        cdf.push(acc);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let end = hours * 3600.0;
    let mut out = Vec::with_capacity(expected as usize + 16);
    let mut t = 0.0;
    while t < end {
        let hour_end = ((t / 3600.0).floor() + 1.0) * 3600.0;
        let rate = rates.total_at((t / 3600.0) as usize);
        if rate <= 0.0 {
            t = hour_end;
            continue;
        }
        let u: f64 = rng.gen_range(f64::EPSILON..1.0);
        let next = t - u.ln() / rate;
        if next >= hour_end {
            // Memoryless: start afresh at the hour boundary with that hour's rate.
            t = hour_end;
            continue;
        }
        t = next;
        if t >= end {
            break;
        }
        let v: f64 = rng.gen();
        let model = cdf.partition_point(|c| *c < v).min(cdf.len() - 1);
        out.push(Request { at: t, model });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(n: usize) -> Vec<ModelSpec> {
        (0..n)
            .map(|i| ModelSpec {
                name: format!("m{i}"),
                charge: 1 << 20,
                load_secs: 0.1,
            })
            .collect()
    }

    #[test]
    fn generated_traffic_follows_the_rates() {
        let rates = Rates {
            per_model: vec![3.0, 1.0],
            hourly: vec![1.0; HOURS_PER_WEEK],
        };
        let tr = generate(&rates, 2.0, 1, 1_000_000).unwrap();
        let n = tr.len() as f64;
        // 4 req/s for 7200 s: 28800 expected; Poisson sd ~170.
        assert!((n - 28800.0).abs() < 1000.0, "{n}");
        let m0 = tr.iter().filter(|r| r.model == 0).count() as f64;
        assert!((m0 / n - 0.75).abs() < 0.02);
        assert!(tr.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(generate(&rates, 2.0, 1, 100).is_err());
    }

    #[test]
    fn zipf_and_overrides_and_profiles() {
        let t = TrafficSection {
            total_rate: Some(10.0),
            zipf: Some(1.0),
            rates: [("m2".to_string(), 7.0)].into(),
            profile: Some((0..24).map(|h| if h < 8 { 0.5 } else { 1.0 }).collect()),
            weekend_profile: Some(vec![0.1; 24]),
            ..Default::default()
        };
        let r = rates(&t, &fleet(3)).unwrap();
        assert!((r.per_model[0] - 10.0 / (1.0 + 0.5 + 1.0 / 3.0)).abs() < 1e-9);
        assert_eq!(r.per_model[2], 7.0);
        assert_eq!(r.hourly[3], 0.5);
        assert_eq!(r.hourly[12], 1.0);
        assert_eq!(r.hourly[5 * 24 + 12], 0.1);
        assert!(is_weekend(6 * 24) && !is_weekend(4 * 24 + 23));
    }

    #[test]
    fn traces_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        std::fs::write(&p, "timestamp,model\n100.0,m1\n100.5,m0\n101,m1\n").unwrap();
        let tr = read_trace(&p, &fleet(2)).unwrap();
        assert_eq!(tr.len(), 3);
        assert_eq!(tr[0], Request { at: 0.0, model: 1 });
        assert_eq!(tr[2].at, 1.0);
        let r = rates_from_trace(&tr, 2);
        assert!((r.per_model[1] - 2.0 / 3.0).abs() < 1e-9);
        std::fs::write(&p, "1,m0\n0.5,m0\n").unwrap();
        assert!(read_trace(&p, &fleet(1))
            .unwrap_err()
            .to_string()
            .contains("goes back"));
        std::fs::write(&p, "1,nope\n").unwrap();
        assert!(read_trace(&p, &fleet(1))
            .unwrap_err()
            .to_string()
            .contains("line 1"));
    }
}
