//! The model cache and the [`Core`] facade the HTTP layer calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use herd_api::v2::{Tensor, TensorData};
use herd_runtime::{memory, Backend, Instance, LoadOptions, Signature};
use parking_lot::Mutex;
use tokio::sync::{watch, Semaphore};

use crate::limits::{
    append_rows, check_rows, exceeded, limit_texts, slice_rows, token_upper_bound,
};
use crate::model::{BatchSettings, JobOutput, LoadedModel};
use crate::pipeline::PipelineShared;
use crate::policy;
use crate::source::{ModelEntry, ModelSource};
use crate::validate::check_inputs;
use crate::{CoreConfig, CoreError, EvictionPolicy, ModelConfig, RequestLimits};

type Key = (String, String);

/// Instance creation is serialised process-wide (allocation counters are process-wide) so the
/// allocation growth can be charged to one model.
pub(crate) static MEASURE: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// Whether the engine has made its one-time allocations (see `load_blocking`).
static PRIMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
type LoadResult = Option<Result<Arc<Served>, CoreError>>;
/// Instances, their signature, their charge in bytes, and a text pipeline's shared part.
type Loaded = (
    crate::model::Instances,
    Signature,
    u64,
    Option<Arc<PipelineShared>>,
);

/// A loaded model plus what the core needs to know about it.
pub struct Served {
    pub model: LoadedModel,
    pub config: ModelConfig,
    pub charge: u64,
    /// The tokenizer side of a text pipeline (to count a request's tokens before running it).
    pub(crate) pipeline: Option<Arc<PipelineShared>>,
    /// Set when the model left the cache while requests still held it: its charge stays in the
    /// budget until this (the last field, dropped after the instances) goes with the last holder.
    release: Mutex<Option<Ticket>>,
}

/// Gives a retired model's charge back to its core when the model's last holder drops it.
struct Ticket {
    core: Weak<Core>,
    id: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(core) = self.core.upgrade() {
            let mut st = core.state.lock();
            if let Some(r) = st.retiring.remove(&self.id) {
                st.used = st.used.saturating_sub(r.charge);
                tracing::debug!(model = %r.key.0, version = %r.key.1, charge = r.charge,
                    "retired model released by its last request");
            }
            core.publish(&st);
        }
    }
}

/// A model out of the cache that requests still run on: still charged (see [`Ticket`]).
struct Retiring {
    key: Key,
    charge: u64,
    shared: Arc<[(herd_runtime::shared::Key, u64)]>,
}

enum Slot {
    Loading(watch::Receiver<LoadResult>),
    Ready(Arc<Served>),
    Failed { error: CoreError, at: Instant },
}

struct Entry {
    slot: Slot,
    /// Bytes charged to this model alone (its unique weights plus working memory).
    charge: u64,
    /// Weights shared with other models: charged once for all their users (`shared_used`).
    shared: Arc<[(herd_runtime::shared::Key, u64)]>,
    pinned: bool,
    freq: u64,
    last_used: u64,
    load_secs: f64,
    priority: f64,
    /// The source stopped serving this version while it loaded: retire it when the load ends.
    stale: bool,
    /// Lookups that found it loaded or loading (the cache's `hits`, per model) since it entered.
    hits: u64,
}

struct CacheState {
    entries: HashMap<Key, Entry>,
    /// Sum of charges of loaded models plus reservations of loads in progress.
    used: u64,
    /// GDSF inflation value L: the priority of the last victim.
    clock: f64,
    tick: u64,
    /// Recent measured per-instance overheads (measured size minus file size).
    overheads: Overheads,
    /// Models out of the cache that requests still hold (their charges are in `used`).
    retiring: HashMap<u64, Retiring>,
    next_ticket: u64,
}

/// State of one model version, as the repository index shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelState {
    Ready,
    Loading,
    Unloaded,
    Failed(String),
}

impl ModelState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ModelState::Ready => "READY",
            ModelState::Loading => "LOADING",
            ModelState::Unloaded => "UNLOADED",
            ModelState::Failed(_) => "UNAVAILABLE",
        }
    }
}

#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub name: String,
    pub version: Option<String>,
    pub state: ModelState,
    /// Bytes charged to this model alone (unique weights plus working memory).
    pub charge: u64,
    /// Bytes of the weights it shares with other models (charged once for all of them).
    pub shared_bytes: u64,
    /// Seconds its last load took (0 when never loaded).
    pub load_secs: f64,
    /// Cache hits since it was last loaded (requests that found it loaded or loading).
    pub hits: u64,
}

/// Counters of the cache since start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub loads: u64,
    pub load_failures: u64,
    pub evictions: u64,
    pub load_seconds_total: f64,
    pub loaded_models: usize,
    /// Bytes charged: every model's own charge plus the shared weights, once each.
    pub used_bytes: u64,
    /// Of `used_bytes`, the weights shared between models (each distinct tensor once).
    pub shared_bytes: u64,
    pub budget_bytes: u64,
    /// Highest `used_bytes` ever seen.
    pub peak_used_bytes: u64,
}

pub struct InferRequest {
    pub model: String,
    pub version: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Outputs to return (all when `None`).
    pub outputs: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// Time spent waiting for the model to load (zero on a cache hit).
    pub load: Duration,
    pub queue: Duration,
    pub inference: Duration,
    pub total: Duration,
}

#[derive(Debug)]
pub struct InferOutput {
    pub model: String,
    pub version: String,
    pub outputs: Vec<Tensor>,
    pub timing: Timing,
    pub batch_rows: usize,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    load_failures: AtomicU64,
    evictions: AtomicU64,
    load_nanos: AtomicU64,
    peak_used: AtomicU64,
}

/// The serving core: ask it to infer, load, unload, describe.
pub struct Core {
    cfg: CoreConfig,
    /// The source with run-time configuration changes on top (`overlay`, the same object).
    source: Arc<dyn ModelSource>,
    overlay: Arc<crate::overrides::Overlay>,
    backend: Arc<dyn Backend>,
    state: Mutex<CacheState>,
    loaders: Arc<Semaphore>,
    counters: Counters,
    /// Signatures read from files (metadata of unloaded models), per version.
    sig_cache: Mutex<HashMap<Key, Signature>>,
    /// Signature-only file reads that may run at once.
    meta_reads: Semaphore,
    /// The source's generation the cache last followed (see [`Core::follow_source`]).
    seen_generation: AtomicU64,
}

impl Core {
    pub fn new(
        cfg: CoreConfig,
        source: Arc<dyn ModelSource>,
        backend: Arc<dyn Backend>,
    ) -> Arc<Core> {
        metrics::gauge!("herd_cache_memory_budget_bytes").set(cfg.memory_budget as f64);
        let overlay = Arc::new(crate::overrides::Overlay::new(source));
        let source: Arc<dyn ModelSource> = overlay.clone();
        Arc::new(Core {
            overlay,
            loaders: Arc::new(Semaphore::new(cfg.load_concurrency.max(1))),
            cfg,
            backend,
            state: Mutex::new(CacheState {
                entries: HashMap::new(),
                used: 0,
                clock: 0.0,
                tick: 0,
                overheads: Overheads::default(),
                retiring: HashMap::new(),
                next_ticket: 0,
            }),
            counters: Counters::default(),
            sig_cache: Mutex::new(HashMap::new()),
            meta_reads: Semaphore::new(2),
            seen_generation: AtomicU64::new(source.generation()),
            source,
        })
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub fn source(&self) -> &Arc<dyn ModelSource> {
        &self.source
    }

    /// The run-time configuration changes ([`crate::overrides`]).
    pub fn overlay(&self) -> &crate::overrides::Overlay {
        &self.overlay
    }

    pub fn platform(&self) -> &'static str {
        self.backend.platform()
    }

    /// Resolves a model and version against the source.
    pub fn resolve(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<(ModelEntry, String), CoreError> {
        let entry = self.source.get(name)?;
        let v = match version {
            Some(v) => {
                if !entry.versions.iter().any(|x| x == v) {
                    return Err(CoreError::VersionNotFound {
                        model: name.to_string(),
                        version: v.to_string(),
                    });
                }
                v.to_string()
            }
            None => entry
                .default_version()
                .ok_or_else(|| CoreError::ModelNotFound(name.to_string()))?
                .to_string(),
        };
        Ok((entry, v))
    }

    /// Runs one inference: loads the model if needed (sharing a load in progress), validates,
    /// queues, and waits, all within the request timeout.
    pub async fn infer(self: &Arc<Self>, req: InferRequest) -> Result<InferOutput, CoreError> {
        let timeout = self.cfg.request_timeout;
        let model = req.model.clone();
        match tokio::time::timeout(timeout, self.infer_inner(req)).await {
            Ok(r) => r,
            Err(_) => Err(CoreError::Timeout {
                model,
                after: timeout,
            }),
        }
    }

    async fn infer_inner(self: &Arc<Self>, req: InferRequest) -> Result<InferOutput, CoreError> {
        let t0 = Instant::now();
        let InferRequest {
            model: name,
            version,
            mut inputs,
            outputs: wanted_outputs,
        } = req;
        self.follow_source();
        let (entry, version) = self.resolve(&name, version.as_deref())?;
        let limits = self.cfg.limits.for_model(&entry.config);
        // Text limits first: before the model loads and before any text reaches a tokenizer.
        if let Some(table) = &entry.config.pipeline {
            let truncation = crate::pipeline::truncates(table);
            for t in inputs.iter_mut().filter(|t| {
                t.name == crate::pipeline::TEXT_INPUT || t.name == crate::pipeline::TEXT_PAIR_INPUT
            }) {
                limit_texts(&name, &limits, truncation, t)?;
            }
        }
        let served = self.get_resolved(entry, version).await?;
        let load = t0.elapsed();
        let m = &served.model;
        if let Some(wanted) = &wanted_outputs {
            for w in wanted {
                let known = m.signature.outputs.iter().any(|o| &o.name == w)
                    || label_names_output(&served.config).as_deref() == Some(w.as_str());
                if !known {
                    return Err(CoreError::InvalidInput(format!(
                        "model '{}' has no output '{w}'; its outputs are: {}",
                        m.name,
                        m.signature
                            .outputs
                            .iter()
                            .map(|o| format!("'{}'", o.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
        let (inputs, rows) = check_inputs(&m.name, &m.signature, inputs)?;
        match &served.pipeline {
            Some(p) => check_tokens(&m.name, &limits, p, &inputs).await?,
            None => {
                if let Some(r) = rows {
                    check_rows(&m.name, &limits, r)?;
                }
                if let Some(max) = served.config.max_dynamic_dim {
                    crate::limits::check_dynamic_dims(&m.name, &m.signature, &inputs, max)?;
                }
            }
        }
        let out = run_in_chunks(m, inputs, rows, served.config.max_batch_size).await?;
        let mut outputs = out.outputs;
        add_label_names(&served.config, &mut outputs);
        if let Some(wanted) = &wanted_outputs {
            outputs.retain(|o| wanted.contains(&o.name));
        }
        Ok(InferOutput {
            model: m.name.clone(),
            version: m.version.clone(),
            outputs,
            timing: Timing {
                load,
                queue: out.queue,
                inference: out.inference,
                total: t0.elapsed(),
            },
            batch_rows: out.batch_rows,
        })
    }

    /// The loaded model for `name`/`version`, loading it if needed. The returned `Arc` keeps
    /// the model from eviction while it is held.
    pub async fn get(
        self: &Arc<Self>,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<Served>, CoreError> {
        self.follow_source();
        let (entry, version) = self.resolve(name, version)?;
        self.get_resolved(entry, version).await
    }

    async fn get_resolved(
        self: &Arc<Self>,
        entry: ModelEntry,
        version: String,
    ) -> Result<Arc<Served>, CoreError> {
        let key: Key = (entry.name.clone(), version);
        let mut rx = {
            let mut st = self.state.lock();
            st.tick += 1;
            let tick = st.tick;
            let clock = st.clock;
            let policy = self.cfg.policy;
            match st.entries.get_mut(&key) {
                Some(e) => match &e.slot {
                    Slot::Ready(m) => {
                        let m = m.clone();
                        e.freq += 1;
                        e.last_used = tick;
                        e.priority = priority(policy, clock, e);
                        e.hits += 1;
                        self.counters.hits.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("herd_cache_hits_total").increment(1);
                        return Ok(m);
                    }
                    Slot::Loading(rx) => {
                        e.hits += 1;
                        self.counters.hits.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("herd_cache_hits_total").increment(1);
                        rx.clone()
                    }
                    Slot::Failed { error, at } if at.elapsed() < self.cfg.failed_retry_after => {
                        return Err(error.clone());
                    }
                    Slot::Failed { .. } => self.start_load(&mut st, key.clone(), entry.config),
                },
                None => self.start_load(&mut st, key.clone(), entry.config),
            }
        };
        let done = rx
            .wait_for(|v| v.is_some())
            .await
            .map_err(|_| CoreError::ShuttingDown)?;
        done.clone().expect("waited for Some")
    }

    /// Inserts a loading entry and spawns the load. Called with the state lock held.
    fn start_load(
        self: &Arc<Self>,
        st: &mut CacheState,
        key: Key,
        config: ModelConfig,
    ) -> watch::Receiver<LoadResult> {
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("herd_cache_misses_total").increment(1);
        let (tx, rx) = watch::channel(None);
        st.entries.insert(
            key.clone(),
            Entry {
                slot: Slot::Loading(rx.clone()),
                charge: 0,
                shared: Arc::from(Vec::new()),
                pinned: config.pinned,
                freq: 0,
                last_used: st.tick,
                load_secs: 0.0,
                priority: 0.0,
                stale: false,
                hits: 0,
            },
        );
        let core = self.clone();
        tokio::spawn(async move {
            let result = core.load(key.clone(), config).await;
            let _ = tx.send(Some(result));
        });
        rx
    }

    /// The load task: waits for a loader slot, resolves the artifact, makes room, creates the
    /// instances while measuring their memory, then trues up the charge.
    async fn load(
        self: Arc<Self>,
        key: Key,
        config: ModelConfig,
    ) -> Result<Arc<Served>, CoreError> {
        let (name, version) = key.clone();
        let generation = self.source.generation();
        let _slot = self
            .loaders
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CoreError::ShuttingDown)?;
        let started = Instant::now();
        let core = self.clone();
        let cfg2 = config.clone();
        let (n2, v2) = (name.clone(), version.clone());
        let joined = tokio::task::spawn_blocking(move || core.load_blocking(&n2, &v2, &cfg2)).await;
        let result = match joined {
            Ok(r) => r,
            Err(e) => Err(CoreError::LoadFailed {
                model: name.clone(),
                version: version.clone(),
                reason: format!("the loader crashed: {e}"),
            }),
        };
        // Whether the source still serves this version (checked off the lock; a switch after
        // this check marks the entry stale, see `retire_unserved`).
        let still_served = generation == self.source.generation()
            || self
                .source
                .get(&name)
                .is_ok_and(|e| e.versions.contains(&version));
        let mut st = self.state.lock();
        // The reservation lives in the entry, so an unload during the load has already returned it.
        let reserved = st.entries.get(&key).map(|e| e.charge).unwrap_or(0);
        let secs = started.elapsed().as_secs_f64();
        metrics::histogram!("herd_model_load_duration_seconds").record(secs);
        match result {
            Ok((instances, signature, charge, pipeline)) => {
                self.counters.loads.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .load_nanos
                    .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                metrics::counter!("herd_model_loads_total", "result" => "ok").increment(1);
                st.used = st.used.saturating_sub(reserved) + charge;
                let served = Arc::new(Served {
                    model: LoadedModel::start(
                        name.clone(),
                        version.clone(),
                        signature,
                        self.backend.platform(),
                        instances,
                        self.cfg.queue_capacity,
                        BatchSettings {
                            max_batch_size: config.max_batch_size,
                            max_queue_delay: Duration::from_millis(config.max_queue_delay_ms),
                        },
                    ),
                    config: config.clone(),
                    charge,
                    pipeline,
                    release: Mutex::new(None),
                });
                let clock = st.clock;
                let policy = self.cfg.policy;
                let tick = st.tick;
                let still_wanted = match st.entries.get_mut(&key) {
                    Some(e) => {
                        e.slot = Slot::Ready(served.clone());
                        e.charge = charge;
                        e.freq = e.freq.max(1);
                        e.last_used = tick;
                        e.load_secs = secs.max(0.001);
                        e.priority = priority(policy, clock, e);
                        true
                    }
                    None => false,
                };
                if !still_wanted {
                    // Unloaded while loading: its charge is not kept, but the waiters are answered.
                    st.used = st.used.saturating_sub(charge);
                    self.publish(&st);
                    return Ok(served);
                }
                // The accounting was settled by the loader (reservation -> measured charge).
                tracing::info!(model = %name, version = %version, charge, secs, "model loaded");
                // A version the source stopped serving during the load answers its waiters and
                // leaves the cache at once (charged until they finish).
                let gone = st.entries.get(&key).is_some_and(|e| e.stale)
                    || (generation != self.source.generation() && !still_served);
                let out = if gone {
                    self.take_out(&mut st, &key)
                } else {
                    None
                };
                self.publish(&st);
                drop(st);
                drop(out);
                Ok(served)
            }
            Err(error) => {
                self.counters.load_failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("herd_model_loads_total", "result" => "error").increment(1);
                st.used = st.used.saturating_sub(reserved);
                // Room problems are transient: do not remember them as a failure.
                let remember = !matches!(error, CoreError::NoRoom { .. });
                if let Some(e) = st.entries.get_mut(&key) {
                    if remember {
                        e.slot = Slot::Failed {
                            error: error.clone(),
                            at: Instant::now(),
                        };
                        e.charge = 0;
                        e.shared = Arc::from(Vec::new());
                    } else {
                        st.entries.remove(&key);
                    }
                }
                self.publish(&st);
                tracing::warn!(model = %name, version = %version, error = %error, "model load failed");
                Err(error)
            }
        }
    }

    /// Where a model's instances load from: its own file, or for a LoRA adapter model (config
    /// `base` + `adapter`) its base's file with the adapter (`path`) to activate per run.
    fn adapter_load(
        &self,
        name: &str,
        config: &ModelConfig,
        path: std::path::PathBuf,
    ) -> Result<(std::path::PathBuf, LoadOptions), CoreError> {
        let plain = LoadOptions {
            intra_threads: config.threads,
            ..LoadOptions::default()
        };
        let Some(base) = &config.base else {
            return Ok((path, plain));
        };
        let (entry, version) = self.resolve(base, None)?;
        if entry.config.base.is_some() {
            return Err(CoreError::BadConfig {
                model: name.to_string(),
                reason: format!("base '{base}' is itself an adapter model; name a model file"),
            });
        }
        let base_path = self.source.artifact(base, &version)?;
        Ok((
            base_path,
            LoadOptions {
                adapter: Some(path),
                ..plain
            },
        ))
    }

    fn load_blocking(
        &self,
        name: &str,
        version: &str,
        config: &ModelConfig,
    ) -> Result<Loaded, CoreError> {
        let fail = |reason: String| CoreError::LoadFailed {
            model: name.into(),
            version: version.into(),
            reason,
        };
        let path = self.source.artifact(name, version)?;
        // The weights' bytes: the file plus its external-data files. No charge is ever below them,
        // and a model whose weights alone exceed the budget is refused (507) before loading.
        // A LoRA adapter model: its file is the adapter's (charged), run on its base's file.
        let file_size = weights_bytes(&path).map_err(fail)?;
        let (path, load_opts) = self.adapter_load(name, config, path)?;
        let instances_n = config.instances.max(1) as u64;
        // Sessions the load makes: the instances and the solo one (weights are held by each).
        let sessions_n = instances_n + u64::from(config.solo_instance());
        // Reserve room before loading; the reservation is kept in the entry until the true-up.
        // When every loaded model is busy, wait a little for one to become idle (requests are
        // short) rather than failing at once; give up with NoRoom after `room_wait`.
        let waiting_since = Instant::now();
        loop {
            let key = (name.to_string(), version.to_string());
            let mut st = self.state.lock();
            let estimate = st.overheads.estimate(file_size) * sessions_n;
            match self.make_room(&mut st, name, estimate, &key) {
                Ok(()) => {}
                Err(CoreError::NoRoom { .. }) if waiting_since.elapsed() < self.cfg.room_wait => {
                    drop(st);
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                Err(e) => return Err(e),
            }
            match st.entries.get_mut(&key) {
                Some(e) => e.charge = estimate,
                None => return Err(CoreError::NotReady(name.to_string())),
            }
            st.used += estimate;
            self.publish(&st);
            break;
        }
        let guard = MEASURE.lock().unwrap_or_else(|p| p.into_inner());
        // The engine's one-time allocations (thread pools, kernel buffers) happen on its first
        // load and run in the process; make them outside the measured window, so the first
        // model is not charged for them (they are part of the server's fixed overhead).
        if !PRIMED.swap(true, Ordering::SeqCst) {
            if let Ok(mut inst) = self.backend.load(&path, &load_opts) {
                let inputs = max_shape_inputs(
                    inst.signature(),
                    config.max_batch_size,
                    config.max_dynamic_dim.unwrap_or(1),
                );
                let _ = inst.run(inputs);
            }
        }
        let before = memory::allocated_bytes();
        let mut instances: Vec<Box<dyn Instance>> = Vec::with_capacity(instances_n as usize);
        // The first instance may run on a trunk shared with other models; the others are
        // sessions of their own (on the same weights), so that the instances run side by side.
        let more = LoadOptions {
            whole: true,
            ..load_opts.clone()
        };
        for i in 0..instances_n {
            let opts = if i == 0 { &load_opts } else { &more };
            let inst = self
                .backend
                .load(&path, opts)
                .map_err(|e| fail(e.to_string()))?;
            instances.push(inst);
        }
        // A run alone on the model gets the shared pool (every core) on one more session.
        let solo = if config.solo_instance() {
            let opts = LoadOptions {
                intra_threads: 0,
                ..more
            };
            Some(
                self.backend
                    .load(&path, &opts)
                    .map_err(|e| fail(e.to_string()))?,
            )
        } else {
            None
        };
        let mut instances = crate::model::Instances {
            each: instances,
            solo,
        };
        // A text pipeline shares one tokenizer between its instances, prepared inside the
        // measured window so the tokenizer is charged with the model.
        let mut pipeline = None;
        if let Some(table) = &config.pipeline {
            let shared = crate::pipeline::prepare(table, &path, instances.each[0].signature())
                .map_err(|reason| fail(format!("text pipeline: {reason}")))?;
            pipeline = Some(shared);
        }
        let loaded = memory::allocated_bytes();
        let loaded_rss = memory::rss_bytes();
        // Working memory: a run at the largest shape a request can reach (max_batch_size rows,
        // a pipeline's max_length tokens); its peak over the loaded level, plus the run's
        // inputs and outputs, is charged for each instance (each runs on its own).
        let sig0 = instances.each[0].signature().clone();
        let make_inputs = |rows: usize| match &pipeline {
            Some(p) => crate::pipeline::warmup_tensors(p, rows),
            None => max_shape_inputs(&sig0, rows, config.max_dynamic_dim.unwrap_or(1)),
        };
        // The run's memory is freed when it ends: sample the peak meanwhile, of the allocator's
        // count (the charge: with herd's fixed mmap threshold, what a run allocates is what it
        // makes resident; measured for MiniLM at 32 x 256, the peak RSS of a request is within
        // 1 MiB of base + charge) and of resident memory (logged; the charge only where the
        // allocator has no count). Both are process-wide: other threads can only add to them.
        let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let peak = Arc::new(AtomicU64::new(loaded.unwrap_or(0)));
        let peak_rss = Arc::new(AtomicU64::new(loaded_rss.unwrap_or(0)));
        let sampler = {
            let (sampling, peak, peak_rss) = (sampling.clone(), peak.clone(), peak_rss.clone());
            std::thread::spawn(move || {
                while sampling.load(Ordering::Relaxed) {
                    peak.fetch_max(memory::allocated_bytes().unwrap_or(0), Ordering::Relaxed);
                    peak_rss.fetch_max(memory::rss_bytes().unwrap_or(0), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_micros(500));
                }
            })
        };
        let warm = |inst: &mut Box<dyn Instance>| -> Result<u64, CoreError> {
            let inputs = make_inputs(config.max_batch_size);
            let io_in = tensors_bytes(&inputs);
            match inst.run(inputs) {
                Ok(outputs) => Ok(io_in + tensors_bytes(&outputs)),
                Err(e) => {
                    tracing::warn!(model = %name, version = %version, error = %e,
                        "warm-up at the largest shape failed; charging a one-row run");
                    let one = make_inputs(1);
                    let io_in = tensors_bytes(&one);
                    let out = inst
                        .run(one)
                        .map_err(|e| fail(format!("warm-up inference failed: {e}")))?;
                    Ok(io_in + tensors_bytes(&out))
                }
            }
        };
        let working_io = warm(&mut instances.each[0]);
        sampling.store(false, Ordering::Relaxed);
        let _ = sampler.join();
        let working_io = working_io?;
        let warmed = memory::allocated_bytes().map(|w| w.max(peak.load(Ordering::Relaxed)));
        let rss_growth = loaded_rss
            .map(|l| peak_rss.load(Ordering::Relaxed).saturating_sub(l))
            .unwrap_or(0);
        drop(guard);
        if let Some(shared) = &pipeline {
            instances = instances.map(|i| {
                Box::new(crate::pipeline::PipelineInstance::new(i, shared.clone()))
                    as Box<dyn Instance>
            });
        }
        let (measured, working) = match (before, loaded, warmed) {
            (Some(b), Some(l), Some(w)) => (l.saturating_sub(b), w.saturating_sub(l) + working_io),
            _ => (0, rss_growth + working_io),
        };
        let key = (name.to_string(), version.to_string());
        let (shared, created, stripped, serial) = shared_weights(instances.all());
        // A model whose runs take turns on a session shared with other models (a shared trunk,
        // a LoRA base) needs that session's run memory only during its turn: the run memory is
        // charged once for all the session's users (the most any of them measured); the model
        // keeps its own inputs and outputs.
        let (shared, working) = match serial {
            Some(k) => {
                let mut v = shared.to_vec();
                v.push((k, working.saturating_sub(working_io)));
                (Arc::from(v), working_io.min(working))
            }
            None => (shared, working),
        };
        let charge = if !shared.is_empty() {
            // Shared weights are charged once for all their users (`shared_used`); this model
            // is charged what it allocated beyond the shared weights it created.
            // Working memory is each instance's own, shared weights or not.
            measured
                .saturating_sub(created)
                .max(file_size.saturating_sub(stripped) * sessions_n)
                + working * instances_n
        } else {
            let mut st = self.state.lock();
            let reserved = st.entries.get(&key).map(|e| e.charge).unwrap_or(0);
            // Every session holds the weights; only `instances` of them run at once.
            let per_session =
                st.overheads
                    .charge(file_size, measured / sessions_n, reserved / sessions_n);
            per_session * sessions_n + working * instances_n
        };
        if charge > self.cfg.memory_budget {
            return Err(CoreError::TooLarge {
                model: name.to_string(),
                needed: charge,
                budget: self.cfg.memory_budget,
            });
        }
        tracing::debug!(model = %name, version = %version, weights = file_size,
            load = measured, working, rss_growth, charge, "measured");
        // True up: swap the reservation for the measured charge, evicting (or waiting for an
        // idle model to evict) if the measurement exceeds the reservation.
        let waiting_since = Instant::now();
        loop {
            let mut st = self.state.lock();
            let Some(reserved) = st.entries.get(&key).map(|e| e.charge) else {
                return Err(CoreError::NotReady(name.to_string()));
            };
            if let Some(e) = st.entries.get_mut(&key) {
                e.shared = shared.clone();
            }
            // The reservation stood for the whole model; its shared weights are counted as
            // shared bytes now, so room is made for the measured charge without the
            // reservation (counting both once refused loads that fit: NoRoom with needed 0).
            st.used = st.used.saturating_sub(reserved);
            match self.make_room(&mut st, name, charge, &key) {
                Ok(()) => {}
                Err(CoreError::NoRoom { .. }) if waiting_since.elapsed() < self.cfg.room_wait => {
                    st.used += reserved;
                    drop(st);
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                Err(e) => {
                    st.used += reserved;
                    return Err(e);
                }
            }
            st.used += charge;
            if let Some(e) = st.entries.get_mut(&key) {
                e.charge = charge;
            }
            self.publish(&st);
            break;
        }
        let signature = instances.each[0].signature().clone();
        if signature.outputs.is_empty() {
            return Err(fail("the model has no outputs".into()));
        }
        Ok((instances, signature, charge, pipeline))
    }

    /// Evicts until `needed` more bytes fit. Called with the lock held.
    fn make_room(
        &self,
        st: &mut CacheState,
        model: &str,
        needed: u64,
        exclude: &Key,
    ) -> Result<(), CoreError> {
        if needed > self.cfg.memory_budget {
            return Err(CoreError::TooLarge {
                model: model.to_string(),
                needed,
                budget: self.cfg.memory_budget,
            });
        }
        while st.used + shared_used(st) + needed > self.cfg.memory_budget {
            if !self.evict_one(st, Some(exclude)) {
                let busy = st
                    .entries
                    .values()
                    .filter(|e| !matches!(e.slot, Slot::Failed { .. }))
                    .count();
                return Err(CoreError::NoRoom {
                    model: model.to_string(),
                    needed,
                    free: self
                        .cfg
                        .memory_budget
                        .saturating_sub(st.used + shared_used(st)),
                    reason: format!(
                        "all {busy} loaded or loading models are in use, loading or pinned"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Evicts the least valuable evictable model. Never one in use, loading or pinned.
    fn evict_one(&self, st: &mut CacheState, exclude: Option<&Key>) -> bool {
        let victim = policy::victim(
            st.entries
                .iter()
                .filter(|(k, e)| {
                    Some(*k) != exclude
                        && !e.pinned
                        && matches!(&e.slot, Slot::Ready(m) if Arc::strong_count(m) == 1)
                })
                .map(|(k, e)| (k, e.priority, e.last_used)),
        )
        .map(|(k, _)| k.clone());
        let Some(k) = victim else { return false };
        let e = st.entries.remove(&k).expect("victim exists");
        st.used = st.used.saturating_sub(e.charge);
        st.clock = policy::clock_after_eviction(self.cfg.policy, st.clock, e.priority);
        self.counters.evictions.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("herd_cache_evictions_total").increment(1);
        tracing::debug!(model = %k.0, version = %k.1, charge = e.charge, "evicted");
        true
    }

    fn publish(&self, st: &CacheState) {
        let shared = shared_used(st);
        self.counters
            .peak_used
            .fetch_max(st.used + shared, Ordering::Relaxed);
        metrics::gauge!("herd_cache_shared_weights_bytes").set(shared as f64);
        let loaded = st
            .entries
            .values()
            .filter(|e| matches!(e.slot, Slot::Ready(_)))
            .count();
        metrics::gauge!("herd_cache_memory_used_bytes").set((st.used + shared) as f64);
        metrics::gauge!("herd_cache_loaded_models").set(loaded as f64);
    }

    /// Loads a model (all its served versions) now; used by the repository API and pins.
    pub async fn load_model(self: &Arc<Self>, name: &str) -> Result<(), CoreError> {
        let entry = self.source.get(name)?;
        // An explicit load retries a failed model at once.
        {
            let mut st = self.state.lock();
            for v in &entry.versions {
                let k = (name.to_string(), v.clone());
                if matches!(
                    st.entries.get(&k).map(|e| &e.slot),
                    Some(Slot::Failed { .. })
                ) {
                    st.entries.remove(&k);
                }
            }
        }
        for v in &entry.versions {
            self.get(name, Some(v)).await?;
        }
        Ok(())
    }

    /// Unloads every version of a model. Requests already running finish; memory returns when
    /// the last one does. Returns whether anything was loaded.
    pub fn unload_model(self: &Arc<Self>, name: &str) -> Result<bool, CoreError> {
        let mut st = self.state.lock();
        let keys: Vec<Key> = st.entries.keys().filter(|k| k.0 == name).cloned().collect();
        if keys.is_empty() {
            // Unknown models are an error; known but unloaded ones are fine.
            self.source.get(name)?;
        }
        let mut out = Vec::new();
        for k in keys {
            out.extend(self.take_out(&mut st, &k));
        }
        let any = out.iter().any(|e| matches!(e.slot, Slot::Ready(_)));
        self.publish(&st);
        drop(st);
        drop(out);
        Ok(any)
    }

    /// Removes an entry. A ready model that requests still hold stays charged until the last
    /// of them drops it (a [`Ticket`]); anything else gives its charge back now. The entry is
    /// returned so the caller drops it after releasing the lock (a ticket takes the lock).
    fn take_out(self: &Arc<Self>, st: &mut CacheState, key: &Key) -> Option<Entry> {
        let e = st.entries.remove(key)?;
        match &e.slot {
            Slot::Ready(m) if Arc::strong_count(m) > 1 => {
                st.next_ticket += 1;
                let id = st.next_ticket;
                st.retiring.insert(
                    id,
                    Retiring {
                        key: key.clone(),
                        charge: e.charge,
                        shared: e.shared.clone(),
                    },
                );
                *m.release.lock() = Some(Ticket {
                    core: Arc::downgrade(self),
                    id,
                });
            }
            _ => st.used = st.used.saturating_sub(e.charge),
        }
        Some(e)
    }

    /// Follows the source: when its [`ModelSource::generation`] moved since the last call,
    /// retires what it no longer serves. Cheap otherwise (one atomic read); called on every
    /// request and by [`Core::spawn_follow_source`].
    pub fn follow_source(self: &Arc<Self>) -> usize {
        let g = self.source.generation();
        if self.seen_generation.load(Ordering::Acquire) == g
            || self.seen_generation.swap(g, Ordering::AcqRel) == g
        {
            return 0;
        }
        let retired = self.retire_unserved();
        if retired > 0 {
            tracing::info!(
                generation = g,
                retired,
                "retired versions the source no longer serves"
            );
        }
        retired
    }

    /// Background task: follows the source's generation without waiting for a request (woken
    /// by [`ModelSource::changes`] when the source has it, else every second). Runs until the
    /// core is dropped.
    pub fn spawn_follow_source(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let mut changes = self.source.changes();
        tokio::spawn(async move {
            loop {
                match &mut changes {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            changes = None;
                        }
                    }
                    None => tokio::time::sleep(Duration::from_secs(1)).await,
                }
                let Some(core) = weak.upgrade() else { break };
                core.follow_source();
            }
        })
    }

    /// Bytes still charged for models that left the cache while requests held them.
    pub fn retiring_bytes(&self) -> u64 {
        self.state.lock().retiring.values().map(|r| r.charge).sum()
    }

    /// Every (model, version) the cache holds now: loaded, loading, failed, or retired but
    /// still running requests (e.g. so a source does not delete their files).
    pub fn resident(&self) -> Vec<(String, String)> {
        let st = self.state.lock();
        st.entries
            .keys()
            .chain(st.retiring.values().map(|r| &r.key))
            .cloned()
            .collect()
    }

    /// Drops loaded versions that the source no longer serves (after a release switch). Loads
    /// still in progress finish (their waiters get an answer) and leave the cache then; requests
    /// running on a retired version finish on it, and its charge stays until the last one
    /// drops it. Returns how many were retired.
    pub fn retire_unserved(self: &Arc<Self>) -> usize {
        let keys: Vec<Key> = self.state.lock().entries.keys().cloned().collect();
        let stale: Vec<Key> = keys
            .into_iter()
            .filter(|(n, v)| match self.source.get(n) {
                Ok(e) => !e.versions.contains(v),
                Err(_) => true,
            })
            .collect();
        let mut st = self.state.lock();
        let mut out = Vec::new();
        for k in &stale {
            // A load in progress has waiters: let it finish; it leaves the cache when it ends.
            if let Some(e) = st.entries.get_mut(k) {
                if matches!(e.slot, Slot::Loading(_)) {
                    e.stale = true;
                    continue;
                }
            }
            out.extend(self.take_out(&mut st, k));
        }
        let retired = out.len();
        self.publish(&st);
        drop(st);
        drop(out);
        retired
    }

    /// The signature of a model version as it is served, loaded or not: from the loaded model,
    /// else from a signature-only read of its file (streaming; the weights are never read into
    /// memory), cached per version; a text pipeline's (`text` in) either way.
    pub async fn signature(&self, name: &str, version: &str) -> Result<Signature, CoreError> {
        if let Some(m) = self.peek(name, version) {
            return Ok(m.model.signature.clone());
        }
        let (entry, _) = self.resolve(name, Some(version))?;
        let key: Key = (name.to_string(), version.to_string());
        let fail = |reason: String| CoreError::LoadFailed {
            model: name.to_string(),
            version: version.to_string(),
            reason,
        };
        let cached = self.sig_cache.lock().get(&key).cloned();
        let inner = match cached {
            Some(sig) => sig,
            None => {
                // A few reads at a time: 64 concurrent metadata requests read the file once or twice.
                let _permit = self
                    .meta_reads
                    .acquire()
                    .await
                    .map_err(|_| CoreError::ShuttingDown)?;
                let cached = self.sig_cache.lock().get(&key).cloned();
                match cached {
                    Some(sig) => sig,
                    None => {
                        let source = self.source.clone();
                        let (n, v) = (name.to_string(), version.to_string());
                        let sig = tokio::task::spawn_blocking(move || {
                            let path = source.artifact(&n, &v)?;
                            let scan =
                                herd_onnx::scan_file(&path).map_err(|e| CoreError::LoadFailed {
                                    model: n.clone(),
                                    version: v.clone(),
                                    reason: e.to_string(),
                                })?;
                            Ok::<_, CoreError>(Signature {
                                inputs: scan.signature.inputs,
                                outputs: scan.signature.outputs,
                            })
                        })
                        .await
                        .map_err(|_| CoreError::ShuttingDown)??;
                        let mut cache = self.sig_cache.lock();
                        if cache.len() >= 4096 {
                            cache.clear();
                        }
                        cache.insert(key, sig.clone());
                        sig
                    }
                }
            }
        };
        match &entry.config.pipeline {
            Some(table) => crate::pipeline::signature_for(table, &inner)
                .map_err(|reason| fail(format!("text pipeline: {reason}"))),
            None => Ok(inner),
        }
    }

    /// State of a model version without loading it.
    pub fn state_of(&self, name: &str, version: &str) -> ModelState {
        let st = self.state.lock();
        match st
            .entries
            .get(&(name.to_string(), version.to_string()))
            .map(|e| &e.slot)
        {
            Some(Slot::Ready(_)) => ModelState::Ready,
            Some(Slot::Loading(_)) => ModelState::Loading,
            Some(Slot::Failed { error, .. }) => ModelState::Failed(error.to_string()),
            None => ModelState::Unloaded,
        }
    }

    /// The loaded model if it is ready, without loading or counting a hit.
    pub fn peek(&self, name: &str, version: &str) -> Option<Arc<Served>> {
        let st = self.state.lock();
        match st
            .entries
            .get(&(name.to_string(), version.to_string()))
            .map(|e| &e.slot)
        {
            Some(Slot::Ready(m)) => Some(m.clone()),
            _ => None,
        }
    }

    /// The repository index: every model of the source with the state of each served version.
    pub fn index(&self) -> Result<Vec<IndexEntry>, CoreError> {
        let models = self.source.list()?;
        let st = self.state.lock();
        let sizes = shared_sizes(&st);
        let mut out = Vec::with_capacity(models.len());
        for m in models {
            if m.versions.is_empty() {
                // A model the source lists but cannot serve (e.g. bad config): show why.
                let reason = self.source.get(&m.name).err().map(|e| e.to_string());
                out.push(IndexEntry {
                    name: m.name,
                    version: None,
                    state: ModelState::Failed(reason.unwrap_or_else(|| "no versions".into())),
                    charge: 0,
                    shared_bytes: 0,
                    load_secs: 0.0,
                    hits: 0,
                });
                continue;
            }
            for v in &m.versions {
                let e = st.entries.get(&(m.name.clone(), v.clone()));
                let state = match e.map(|e| &e.slot) {
                    Some(Slot::Ready(_)) => ModelState::Ready,
                    Some(Slot::Loading(_)) => ModelState::Loading,
                    Some(Slot::Failed { error, .. }) => ModelState::Failed(error.to_string()),
                    None => ModelState::Unloaded,
                };
                out.push(IndexEntry {
                    name: m.name.clone(),
                    version: Some(v.clone()),
                    state,
                    charge: e.map(|e| e.charge).unwrap_or(0),
                    shared_bytes: e
                        .map(|e| {
                            e.shared
                                .iter()
                                .map(|(k, b)| sizes.get(k).copied().unwrap_or(*b))
                                .sum()
                        })
                        .unwrap_or(0),
                    load_secs: e.map(|e| e.load_secs).unwrap_or(0.0),
                    hits: e.map(|e| e.hits).unwrap_or(0),
                });
            }
        }
        Ok(out)
    }

    pub fn stats(&self) -> CacheStats {
        let st = self.state.lock();
        CacheStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            loads: self.counters.loads.load(Ordering::Relaxed),
            load_failures: self.counters.load_failures.load(Ordering::Relaxed),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            load_seconds_total: self.counters.load_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            loaded_models: st
                .entries
                .values()
                .filter(|e| matches!(e.slot, Slot::Ready(_)))
                .count(),
            used_bytes: st.used + shared_used(&st),
            shared_bytes: shared_used(&st),
            budget_bytes: self.cfg.memory_budget,
            peak_used_bytes: self
                .counters
                .peak_used
                .load(Ordering::Relaxed)
                .max(st.used + shared_used(&st)),
        }
    }

    /// Queue depth of every loaded model (for metrics).
    pub fn queue_depths(&self) -> Vec<(String, usize)> {
        let st = self.state.lock();
        st.entries
            .values()
            .filter_map(|e| match &e.slot {
                Slot::Ready(m) => Some((m.model.name.clone(), m.model.queue_depth())),
                _ => None,
            })
            .collect()
    }

    /// Loads every pinned model of the source. Failures are logged and shown in the index.
    pub async fn preload_pinned(self: &Arc<Self>) -> usize {
        let models = match self.source.list() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list models to preload");
                return 0;
            }
        };
        let mut n = 0;
        for m in models.into_iter().filter(|m| m.config.pinned) {
            match self.load_model(&m.name).await {
                Ok(()) => n += 1,
                Err(e) => {
                    tracing::warn!(model = %m.name, error = %e, "pinned model failed to load")
                }
            }
        }
        n
    }

    /// Background task: periodic warm-up inferences for models that ask for them
    /// (`warmup_interval_secs`). Runs until the core is dropped.
    pub fn spawn_warmup_loop(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last: HashMap<Key, Instant> = HashMap::new();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(core) = weak.upgrade() else { break };
                let due: Vec<Arc<Served>> = {
                    let st = core.state.lock();
                    st.entries
                        .iter()
                        .filter_map(|(k, e)| match &e.slot {
                            Slot::Ready(m) if m.config.warmup_interval_secs > 0 => {
                                let every = Duration::from_secs(m.config.warmup_interval_secs);
                                let ok = last.get(k).map(|t| t.elapsed() >= every).unwrap_or(true);
                                ok.then(|| m.clone())
                            }
                            _ => None,
                        })
                        .collect()
                };
                for m in due {
                    last.insert(
                        (m.model.name.clone(), m.model.version.clone()),
                        Instant::now(),
                    );
                    let inputs = warmup_inputs(&m.model.signature);
                    let rows = m.model.signature.inputs.first().map(|_| 1);
                    if let Ok(p) = m.model.submit(inputs, rows) {
                        let _ = p.wait().await;
                    }
                }
            }
        })
    }
}

/// A request's tokens against `max_tokens_per_request`, before any inference. Counting needs the
/// tokenizer only when the cheap upper bound (a token covers at least one byte) is over the limit.
async fn check_tokens(
    model: &str,
    limits: &RequestLimits,
    p: &Arc<PipelineShared>,
    inputs: &[Tensor],
) -> Result<(), CoreError> {
    let bytes_of = |name: &str| match inputs.iter().find(|t| t.name == name).map(|t| &t.data) {
        Some(TensorData::Bytes(v)) => Some(v),
        _ => None,
    };
    let Some(texts) = bytes_of(crate::pipeline::TEXT_INPUT) else {
        return Ok(());
    };
    // A cross-encoder's pairs: the bound counts both texts of a row (plus one byte for the
    // pair's extra separator token).
    let pairs = bytes_of(crate::pipeline::TEXT_PAIR_INPUT).cloned();
    let max = limits.max_tokens_per_request;
    let bound = match &pairs {
        None => token_upper_bound(texts, p.pre().max_length(), p.pre().specials()),
        Some(b) => {
            let joined: Vec<Vec<u8>> = texts
                .iter()
                .zip(b)
                .map(|(a, b)| [a.as_slice(), b.as_slice(), b" "].concat())
                .collect();
            token_upper_bound(&joined, p.pre().max_length(), p.pre().specials())
        }
    };
    if bound <= max {
        return Ok(());
    }
    let texts = texts.clone();
    let p = p.clone();
    let total = tokio::task::spawn_blocking(move || -> Result<usize, CoreError> {
        let strs: Vec<&str> = texts
            .iter()
            .enumerate()
            .map(|(i, b)| {
                std::str::from_utf8(b).map_err(|e| {
                    CoreError::InvalidInput(format!("text {i} is not valid UTF-8: {e}"))
                })
            })
            .collect::<Result<_, _>>()?;
        let max_length = p.pre().max_length();
        let counts = match &pairs {
            None => p.pre().token_counts(&strs),
            Some(b) => {
                let seconds: Vec<String> = b
                    .iter()
                    .map(|t| String::from_utf8_lossy(t).into_owned())
                    .collect();
                let joined: Vec<(&str, &str)> = strs
                    .iter()
                    .zip(&seconds)
                    .map(|(a, b)| (*a, b.as_str()))
                    .collect();
                p.pre().pair_token_counts(&joined)
            }
        }
        .map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        Ok(counts.into_iter().map(|c| c.min(max_length)).sum())
    })
    .await
    .map_err(|_| CoreError::ShuttingDown)??;
    if total > max {
        return Err(exceeded(
            model,
            "max_tokens_per_request",
            max,
            total,
            "tokens in one request",
        ));
    }
    Ok(())
}

/// Runs a request on the model's queue; one with more rows than `max_batch_size` runs as
/// consecutive chunks of at most `max_batch_size` rows (so its working set is bounded by the
/// model's batch shape), whose outputs are joined back. Other requests can run between chunks.
/// Dropping the future (timeout, client gone) stops submitting chunks.
async fn run_in_chunks(
    m: &LoadedModel,
    inputs: Vec<Tensor>,
    rows: Option<usize>,
    max_batch_size: usize,
) -> Result<JobOutput, CoreError> {
    let max = max_batch_size.max(1);
    let total = match rows {
        Some(r) if r > max && m.batchable => r,
        _ => {
            return m.submit(inputs, rows)?.wait().await;
        }
    };
    let mut acc = JobOutput {
        outputs: Vec::new(),
        queue: Duration::ZERO,
        inference: Duration::ZERO,
        batch_rows: 0,
    };
    let mut start = 0;
    while start < total {
        let end = (start + max).min(total);
        let chunk: Vec<Tensor> = inputs
            .iter()
            .map(|t| slice_rows(t, total, start, end))
            .collect();
        let out = m.submit(chunk, Some(end - start))?.wait().await?;
        acc.queue += out.queue;
        acc.inference += out.inference;
        acc.batch_rows = acc.batch_rows.max(out.batch_rows);
        append_rows(&mut acc.outputs, out.outputs).map_err(|reason| CoreError::Inference {
            model: m.name.clone(),
            reason,
        })?;
        start = end;
    }
    Ok(acc)
}

/// Learns what a model costs beyond its file. The allocation growth measured around a load
/// also catches other threads' allocations (requests in flight), so outliers are capped at a
/// few times the median of recent loads once there are enough samples.
#[derive(Default)]
struct Overheads {
    samples: std::collections::VecDeque<u64>,
}

impl Overheads {
    const KEEP: usize = 64;

    fn median(&self) -> Option<u64> {
        if self.samples.len() < 4 {
            return None;
        }
        let mut v: Vec<u64> = self.samples.iter().copied().collect();
        v.sort_unstable();
        Some(v[v.len() / 2])
    }

    /// Bytes to reserve for one instance before loading it.
    fn estimate(&self, file: u64) -> u64 {
        match self.median() {
            Some(m) => file + m + m / 4 + 16 * 1024,
            None => file + file / 2 + 128 * 1024,
        }
    }

    /// The charge of one instance given its raw measurement; records the raw sample. Never
    /// below the weights' bytes (`file`, external data included): other threads freeing
    /// memory during the window can hide some of a load, so once there are enough samples the
    /// charge is at least the file plus half the usual overhead. Never capped from above: other
    /// threads allocating during the window can only make a charge too high, which is safe,
    /// while a cap would undercharge a model that really holds more (ONNX Runtime's arena).
    fn charge(&mut self, file: u64, measured: u64, _reserved: u64) -> u64 {
        let charged = match self.median() {
            Some(m) => measured.max(file + m / 2),
            None => measured.max(file),
        };
        if self.samples.len() == Self::KEEP {
            self.samples.pop_front();
        }
        self.samples.push_back(measured.saturating_sub(file));
        charged
    }
}

/// Bytes of the distinct shared weights that loaded (or loading) models use: each tensor is
/// charged once, and is no longer charged when its last user leaves the cache.
fn shared_used(st: &CacheState) -> u64 {
    shared_sizes(st).values().sum()
}

/// The distinct shared items of the loaded (or loading) models and their bytes: the largest
/// any user reported (a tensor's size is the same for all; a shared session's run memory is
/// what its users each measured).
fn shared_sizes(st: &CacheState) -> HashMap<herd_runtime::shared::Key, u64> {
    let mut sizes: HashMap<herd_runtime::shared::Key, u64> = HashMap::new();
    let users = st.entries.values().map(|e| &e.shared);
    for shared in users.chain(st.retiring.values().map(|r| &r.shared)) {
        for (k, b) in shared.iter() {
            let v = sizes.entry(*k).or_default();
            *v = (*v).max(*b);
        }
    }
    sizes
}

/// The distinct shared weights of a model's instances, the bytes of those its load created,
/// and the file bytes not handed to the engine.
#[allow(clippy::type_complexity)]
fn shared_weights<'a>(
    instances: impl Iterator<Item = &'a Box<dyn Instance>>,
) -> (
    Arc<[(herd_runtime::shared::Key, u64)]>,
    u64,
    u64,
    Option<herd_runtime::shared::Key>,
) {
    let mut seen = std::collections::HashSet::new();
    let mut weights = Vec::new();
    let (mut created, mut stripped, mut serial) = (0, 0, None);
    for i in instances {
        let s = i.sharing();
        created += s.created_bytes;
        stripped = stripped.max(s.stripped_file_bytes);
        serial = serial.or(s.serial_runs);
        for (k, b) in s.weights {
            if seen.insert(k) {
                weights.push((k, b));
            }
        }
    }
    (Arc::from(weights), created, stripped, serial)
}

/// Scored by the pure [`policy`] module, which the simulation (`herd plan`) drives too.
fn priority(policy: EvictionPolicy, clock: f64, e: &Entry) -> f64 {
    policy::priority(
        policy,
        clock,
        &policy::Usage {
            charge: e.charge,
            freq: e.freq,
            last_used: e.last_used,
            load_secs: e.load_secs,
        },
    )
}

/// The bytes of the weights of the model file at `path`: the file and its external-data files.
fn weights_bytes(path: &std::path::Path) -> Result<u64, String> {
    let file = std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // A file that is not ONNX is the engine's to report (with its own words) when it loads.
    let Ok(scan) = herd_onnx::scan_file(path) else {
        return Ok(file);
    };
    let mut total = file;
    for p in scan.external_paths(path).map_err(|e| e.to_string())? {
        let n = std::fs::metadata(&p).map(|m| m.len()).map_err(|e| {
            format!(
                "external data file {} (named by the model) cannot be read: {e}",
                p.display()
            )
        })?;
        total += n;
    }
    Ok(total)
}

/// Bytes held by tensors' buffers (BYTES: their contents).
fn tensors_bytes(ts: &[Tensor]) -> u64 {
    ts.iter()
        .map(|t| match &t.data {
            TensorData::Bytes(v) => v.iter().map(|b| b.len() as u64 + 24).sum::<u64>(),
            d => (d.len() * d.datatype().element_size().unwrap_or(8)) as u64,
        })
        .sum()
}

/// Zero inputs with every dynamic dimension set to 1 (empty strings for BYTES).
pub(crate) fn warmup_inputs(sig: &Signature) -> Vec<Tensor> {
    shaped_inputs(sig, 1, 1)
}

/// Zero inputs at the largest shape a request reaches: a dynamic first dimension at `rows`
/// (requests are chunked to `max_batch_size` rows), other dynamic dimensions at `other` (the
/// model's `max_dynamic_dim`, else 1).
fn max_shape_inputs(sig: &Signature, rows: usize, other: usize) -> Vec<Tensor> {
    shaped_inputs(sig, rows.max(1), other.max(1))
}

fn shaped_inputs(sig: &Signature, rows: usize, other: usize) -> Vec<Tensor> {
    sig.inputs
        .iter()
        .map(|m| {
            let shape: Vec<i64> = m
                .shape
                .iter()
                .enumerate()
                .map(|(i, d)| match (i, *d) {
                    (0, d) if d < 0 => rows as i64,
                    (_, d) if d < 0 => other as i64,
                    (_, d) => d,
                })
                .collect();
            let n = Tensor::shape_elements(&shape).unwrap_or(0);
            // In the model's own element type (FP16 and BF16 included).
            let data = TensorData::zeros(m.datatype, n);
            Tensor::new(m.name.clone(), shape, data)
        })
        .collect()
}

fn label_names_output(cfg: &ModelConfig) -> Option<String> {
    cfg.labels
        .as_ref()
        .map(|_| format!("{}_name", cfg.label_output))
}

/// With `labels` configured, adds a BYTES output `<label_output>_name` naming each class index.
fn add_label_names(cfg: &ModelConfig, outputs: &mut Vec<Tensor>) {
    let Some(labels) = &cfg.labels else { return };
    let Some(src) = outputs.iter().find(|o| o.name == cfg.label_output) else {
        return;
    };
    let names: Vec<Vec<u8>> = match &src.data {
        TensorData::I64(v) => v
            .iter()
            .map(|i| {
                usize::try_from(*i)
                    .ok()
                    .and_then(|i| labels.get(i))
                    .map(|s| s.as_bytes().to_vec())
                    .unwrap_or_else(|| i.to_string().into_bytes())
            })
            .collect(),
        _ => return,
    };
    let t = Tensor::new(
        format!("{}_name", cfg.label_output),
        src.shape.clone(),
        TensorData::Bytes(names),
    );
    outputs.push(t);
}

#[cfg(test)]
mod tests;
