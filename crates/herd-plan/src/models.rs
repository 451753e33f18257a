//! The fleet of models: charges (bytes) and load times, from an inventory, a uniform fleet, or
//! measured by loading each model of a directory repository once, like the server does.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use herd_core::{Core, CoreConfig, DirectorySource, ModelSource};
use herd_runtime::Backend;
use serde::Serialize;

use crate::file::{parse_size, ModelsSection};
use crate::PlanError;

/// One model as the plan sees it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    /// Bytes the cache charges it.
    pub charge: u64,
    /// Seconds its load takes.
    pub load_secs: f64,
}

/// Whether the models section needs an engine (a directory or a channel to measure).
pub fn needs_backend(m: &ModelsSection) -> bool {
    m.dir.is_some() || m.channel.is_some()
}

/// The models of a section that needs no engine (inventory or uniform fleet).
pub fn from_section(m: &ModelsSection, base: &Path) -> Result<Vec<ModelSpec>, PlanError> {
    if let Some(inv) = &m.inventory {
        return read_inventory(&base.join(inv));
    }
    if let (Some(count), Some(size), Some(load)) = (m.count, &m.size, m.load_secs) {
        let charge = parse_size("models.size", size)?;
        let prefix = m.prefix.clone().unwrap_or_else(|| "model".into());
        return Ok((0..count)
            .map(|i| ModelSpec {
                name: format!("{prefix}-{i:05}"),
                charge,
                load_secs: load,
            })
            .collect());
    }
    Err(PlanError::Invalid {
        field: "models".into(),
        reason: "a directory repository needs an engine to measure (see measure_directory)".into(),
    })
}

/// Reads `name,size,load_secs` lines (a header line and `#` comments are skipped).
pub fn read_inventory(path: &Path) -> Result<Vec<ModelSpec>, PlanError> {
    let text = std::fs::read_to_string(path).map_err(|e| PlanError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (i == 0 && line.starts_with("name")) {
            continue;
        }
        let bad = |reason: String| PlanError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        if cols.len() != 3 {
            return Err(bad(format!(
                "expected name,size,load_secs, got {} columns",
                cols.len()
            )));
        }
        let charge = parse_size("size", cols[1]).map_err(|e| bad(e.to_string()))?;
        let load_secs: f64 = cols[2]
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| bad(format!("'{}' is not a number of seconds", cols[2])))?;
        out.push(ModelSpec {
            name: cols[0].to_string(),
            charge,
            load_secs,
        });
    }
    if out.is_empty() {
        return Err(PlanError::Line {
            path: path.to_path_buf(),
            line: 0,
            reason: "no models in the inventory".into(),
        });
    }
    Ok(out)
}

/// Loads every model of a directory repository, one after another, in a cache with room for
/// all of them, and reads the charge the cache gave each and how long its load took (the median
/// of five loads). Each model is unloaded after it is measured, so the measurements do not add
/// up in memory.
pub async fn measure_directory(
    dir: &Path,
    backend: Arc<dyn Backend>,
) -> Result<Vec<ModelSpec>, PlanError> {
    let source: Arc<dyn ModelSource> =
        Arc::new(DirectorySource::new(dir).map_err(|e| PlanError::Measure(e.to_string()))?);
    measure_source(source, backend, &dir.display().to_string()).await
}

/// As [`measure_directory`], for any model source (a registry channel's release: what
/// `herd serve --channel` would serve). `what` names the source in errors.
pub async fn measure_source(
    source: Arc<dyn ModelSource>,
    backend: Arc<dyn Backend>,
    what: &str,
) -> Result<Vec<ModelSpec>, PlanError> {
    let core_err = |e: herd_core::CoreError| PlanError::Measure(e.to_string());
    let core = Core::new(
        CoreConfig {
            memory_budget: u64::MAX / 4,
            ..CoreConfig::default()
        },
        source.clone(),
        backend,
    );
    let mut names: Vec<String> = source
        .list()
        .map_err(core_err)?
        .into_iter()
        .map(|m| m.name)
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(PlanError::Measure(format!("no models in {what}")));
    }
    // The first load in a process also pays the runtime's one-time setup: do it once first,
    // uncounted, as a server that has been running a while has.
    core.load_model(&names[0]).await.map_err(core_err)?;
    core.unload_model(&names[0]).map_err(core_err)?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        // The load time is the median of five loads (a single load is noisy at the
        // millisecond scale); the charge is the one the cache gave the last load.
        let mut times = Vec::with_capacity(5);
        for i in 0..5 {
            if i > 0 {
                core.unload_model(&name).map_err(core_err)?;
            }
            let t = Instant::now();
            core.load_model(&name).await.map_err(core_err)?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let load_secs = times[2];
        let charge: u64 = core
            .index()
            .map_err(core_err)?
            .iter()
            .filter(|e| e.name == name)
            .map(|e| e.charge)
            .sum();
        core.unload_model(&name).map_err(core_err)?;
        out.push(ModelSpec {
            name,
            charge,
            load_secs,
        });
    }
    settle_load_times(&mut out);
    Ok(out)
}

/// Load times that differ from the fleet's median by less than the measurement noise (three
/// median absolute deviations) are set to the median. The server weighs each load by that
/// load's own time, which varies from load to load; a model measured a little slow once must
/// not look slow for the whole simulation.
pub fn settle_load_times(models: &mut [ModelSpec]) {
    if models.len() < 3 {
        return;
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let med = median(models.iter().map(|m| m.load_secs).collect());
    let mad = median(models.iter().map(|m| (m.load_secs - med).abs()).collect());
    for m in models.iter_mut() {
        if (m.load_secs - med).abs() <= 3.0 * mad.max(med * 0.05) {
            m.load_secs = med;
        }
    }
}
