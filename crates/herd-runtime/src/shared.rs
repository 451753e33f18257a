//! Weights shared between sessions: a content-keyed, reference-counted store of tensors, and
//! ONNX Runtime sessions built with those tensors supplied by the caller.
//!
//! When a model loads, [`herd_onnx::initializers::analyze`] finds its large initializers and the
//! constant work done on them (a quantised export's dequantisation). Each distinct tensor is
//! held once in the [`SharedStore`]: a model whose encoder is already resident gets the same
//! memory (`SessionOptions::AddInitializer`), and its model bytes are handed to ONNX Runtime
//! without those tensors (data-less external-data placeholders that are never read), so the
//! load does not parse them again. Folded tensors are computed once by running a small model
//! made of the folding nodes. A tensor is freed when the last session that uses it is dropped.
//!
//! Pre-packing (ONNX Runtime's weight layout for its matrix kernels, made once at load) is a
//! second copy of the weights. Without it every run packs the weights again: measured on
//! MiniLM int8, ~45% of a one-sentence run's CPU time, 6.6 vs 4.4 ms per request
//! (notes/issue-8.md). So a session with at least [`prepack_min_bytes`] of shared tensors
//! (16 MiB by default, `HERD_PREPACK_MIN_BYTES`) pre-packs into the [`PackedSet`] of its weight
//! set: one ONNX Runtime pre-packed weights container for every session over the same shared
//! tensors (instances of a model, later models of the same weights). ONNX Runtime keys the
//! container's buffers by op type and a hash of the packed contents, so a later session finds
//! the packed copy the first one made and keeps none of its own; the set is charged once (the
//! first session's measured build) and freed with its last user (a shared trunk over the same
//! tensors uses the same set). Small models (thousands of per-customer models:
//! their memory would double, for little speed) do not pre-pack (`session.disable_prepacking`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

pub use herd_onnx::initializers::Key;
use herd_onnx::initializers::{self, Placeholder};
use herd_onnx::proto::elem_type;
use ort::environment::Environment;
use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights};
use ort::session::Session;
use ort::value::{DynValue, TensorElementType, ValueType};

use crate::{LoadOptions, RuntimeError};

/// Weight sharing is on unless `HERD_SHARED_WEIGHTS` is `off`/`0`/`false` (for comparisons).
pub fn enabled_by_env() -> bool {
    !matches!(
        std::env::var("HERD_SHARED_WEIGHTS").as_deref(),
        Ok("off" | "0" | "false")
    )
}

/// Shared trunk sessions are on unless `HERD_SHARED_TRUNKS` is `off`/`0`/`false` (for
/// comparisons: then every model has a whole session of its own, on shared tensors).
pub fn trunks_enabled_by_env() -> bool {
    !matches!(
        std::env::var("HERD_SHARED_TRUNKS").as_deref(),
        Ok("off" | "0" | "false")
    )
}

/// Shared tensors a session needs (in bytes) before it pre-packs them: `HERD_PREPACK_MIN_BYTES`,
/// default 16 MiB (see the module docs).
pub fn prepack_min_bytes() -> u64 {
    std::env::var("HERD_PREPACK_MIN_BYTES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(16 << 20)
}

/// What a loaded instance shares with others (for the cache's accounting).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sharing {
    /// The shared tensors the instance uses: content key and bytes.
    pub weights: Vec<(Key, u64)>,
    /// Bytes of shared tensors this load created (not found in the store).
    pub created_bytes: u64,
    /// Bytes of the model file that were not handed to the engine (shared or folded away).
    pub stripped_file_bytes: u64,
    /// Set when the instance's runs take turns on a session shared with other models (a shared
    /// trunk, a LoRA base): the key under which that session's run memory is charged once.
    pub serial_runs: Option<Key>,
}

/// The key of a shared session's run memory (distinct from the session's own key).
pub fn run_memory_key(session: &Key) -> Key {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"herd-run-memory-v1\0");
    h.update(session);
    h.finalize().into()
}

impl Sharing {
    /// Bytes of all the shared tensors the instance uses.
    pub fn shared_bytes(&self) -> u64 {
        self.weights.iter().map(|(_, b)| b).sum()
    }
}

/// One shared tensor. Dropping the last `Arc` frees it.
pub struct SharedWeight {
    key: Key,
    /// `None` only while dropping.
    value: Option<Arc<DynValue>>,
    bytes: u64,
    resident: Arc<AtomicU64>,
}

impl SharedWeight {
    fn value(&self) -> &Arc<DynValue> {
        self.value
            .as_ref()
            .expect("a shared weight has its value until dropped")
    }
}

impl Drop for SharedWeight {
    fn drop(&mut self) {
        self.resident.fetch_sub(self.bytes, Ordering::Relaxed);
        drop(self.value.take());
        // The last user of a large tensor is gone: hand its pages back now, so resident
        // memory drops with the charge (freed chunks inside the heap are otherwise kept).
        if self.bytes >= 1 << 20 {
            release_free_memory();
        }
    }
}

/// Returns the allocator's free pages to the system (glibc `malloc_trim`).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The process's shared tensors, by content key.
pub struct SharedStore {
    map: Mutex<HashMap<Key, Weak<SharedWeight>>>,
    /// Trunk sessions shared by models whose graphs begin with the same computation.
    trunks: Mutex<HashMap<Key, Weak<Trunk>>>,
    /// Pre-packed weights containers, by weight set.
    packed: Mutex<HashMap<Key, Weak<PackedSet>>>,
    /// Whether models are split into a shared trunk and a head of their own.
    split: bool,
    resident: Arc<AtomicU64>,
    threshold: usize,
    dir: Mutex<Option<PathBuf>>,
    seq: AtomicU64,
}

impl SharedStore {
    pub fn new(threshold: usize) -> SharedStore {
        SharedStore {
            map: Mutex::new(HashMap::new()),
            trunks: Mutex::new(HashMap::new()),
            packed: Mutex::new(HashMap::new()),
            split: trunks_enabled_by_env(),
            resident: Arc::new(AtomicU64::new(0)),
            threshold,
            dir: Mutex::new(None),
            seq: AtomicU64::new(0),
        }
    }

    /// Bytes of shared tensors alive now (some session still uses them).
    pub fn resident_bytes(&self) -> u64 {
        self.resident.load(Ordering::Relaxed)
    }

    /// Number of shared tensors alive now.
    pub fn len(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|w| w.strong_count() > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, key: &Key) -> Option<Arc<SharedWeight>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).and_then(Weak::upgrade)
    }

    /// Inserts `value` under `key` unless another load got there first; returns the held one.
    fn insert(&self, key: Key, value: DynValue, bytes: u64) -> (Arc<SharedWeight>, bool) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = map.get(&key).and_then(Weak::upgrade) {
            return (w, false);
        }
        map.retain(|_, w| w.strong_count() > 0);
        self.resident.fetch_add(bytes, Ordering::Relaxed);
        let w = Arc::new(SharedWeight {
            key,
            value: Some(Arc::new(value)),
            bytes,
            resident: self.resident.clone(),
        });
        map.insert(key, Arc::downgrade(&w));
        (w, true)
    }

    /// Number of trunk sessions alive now.
    pub fn trunks(&self) -> usize {
        let map = self.trunks.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|w| w.strong_count() > 0).count()
    }

    fn get_trunk(&self, key: &Key) -> Option<Arc<Trunk>> {
        let map = self.trunks.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).and_then(Weak::upgrade)
    }

    fn insert_trunk(&self, t: Trunk) -> (Arc<Trunk>, bool) {
        let mut map = self.trunks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = map.get(&t.key).and_then(Weak::upgrade) {
            return (w, false);
        }
        map.retain(|_, w| w.strong_count() > 0);
        self.resident.fetch_add(t.bytes, Ordering::Relaxed);
        let key = t.key;
        let t = Arc::new(t);
        map.insert(key, Arc::downgrade(&t));
        (t, true)
    }

    /// Number of pre-packed weight sets alive now.
    pub fn packed_sets(&self) -> usize {
        let map = self.packed.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|w| w.strong_count() > 0).count()
    }

    /// The pre-packed weights container of the weight set `weights` (content keys), and whether
    /// this call created it (then the caller's session build fills it: [`PackedSet::charge`]).
    fn packed_set(&self, weights: &[&Arc<SharedWeight>]) -> (Arc<PackedSet>, bool) {
        let key = packed_set_key(weights.iter().map(|w| &w.key));
        let mut map = self.packed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = map.get(&key).and_then(Weak::upgrade) {
            return (p, false);
        }
        map.retain(|_, w| w.strong_count() > 0);
        let p = Arc::new(PackedSet {
            key,
            container: PrepackedWeights::new(),
            bytes: AtomicU64::new(0),
            resident: self.resident.clone(),
        });
        map.insert(key, Arc::downgrade(&p));
        (p, true)
    }

    /// A private directory holding the never-read placeholder file that ONNX Runtime wants to
    /// exist next to a model with external-data placeholders.
    fn work_dir(&self) -> Result<PathBuf, String> {
        let mut dir = self.dir.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = dir.as_ref() {
            if d.join(initializers::PLACEHOLDER_LOCATION).exists() {
                return Ok(d.clone());
            }
        }
        let d = std::env::temp_dir().join(format!(
            "herd-shared-{}-{:x}",
            std::process::id(),
            self as *const _ as usize
        ));
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        std::fs::write(d.join(initializers::PLACEHOLDER_LOCATION), b"")
            .map_err(|e| format!("{}: {e}", d.display()))?;
        *dir = Some(d.clone());
        Ok(d)
    }
}

impl Drop for SharedStore {
    fn drop(&mut self) {
        if let Some(d) = self.dir.get_mut().ok().and_then(|d| d.take()) {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The first part of some models' graphs, one ONNX Runtime session for all of them (see
/// [`herd_onnx::initializers::Split`]): per-customer models of one base run the base here and
/// only their own head in a session of their own. Runs take turns (`Mutex`); each run uses the
/// process's intra-op thread pool. Dropping the last user frees the session, then its tensors.
pub struct Trunk {
    key: Key,
    session: Mutex<Session>,
    /// Graph inputs the trunk reads.
    inputs: Vec<String>,
    /// The boundary: trunk outputs the heads read.
    outputs: Vec<String>,
    /// Heap bytes the trunk's session took when it was built (charged once, like a tensor).
    bytes: u64,
    resident: Arc<AtomicU64>,
    /// Tensors the trunk's session uses (dropped after it).
    _weights: Vec<Arc<SharedWeight>>,
    /// The pre-packed weights container of those tensors, if the trunk packs into one.
    packed: Option<Arc<PackedSet>>,
}

impl Drop for Trunk {
    fn drop(&mut self) {
        self.resident.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// One ONNX Runtime pre-packed weights container for the sessions over one set of shared
/// tensors (see the module docs). Every session built with it holds the container (the `ort`
/// session keeps it); herd's users hold this handle so later loads find it, and the set is
/// charged under its own key while any of them lives.
pub struct PackedSet {
    key: Key,
    container: PrepackedWeights,
    /// What the first session's build allocated (its packed copy, and that session's own
    /// structures: an upper bound on the container's size).
    bytes: AtomicU64,
    resident: Arc<AtomicU64>,
}

impl PackedSet {
    /// Sets the measured size (once, by the load that created the set).
    fn charge(&self, bytes: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
        self.resident.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The key under which the set is charged, and its bytes.
    pub fn usage(&self) -> (Key, u64) {
        (self.key, self.bytes.load(Ordering::Relaxed))
    }
}

impl Drop for PackedSet {
    fn drop(&mut self) {
        self.resident
            .fetch_sub(*self.bytes.get_mut(), Ordering::Relaxed);
    }
}

/// The key of a weight set's pre-packed container: the sorted content keys of its tensors.
fn packed_set_key<'a>(keys: impl Iterator<Item = &'a Key>) -> Key {
    use sha2::Digest;
    let mut keys: Vec<&Key> = keys.collect();
    keys.sort_unstable();
    keys.dedup();
    let mut h = sha2::Sha256::new();
    h.update(b"herd-prepacked-v1\0");
    for k in keys {
        h.update(k);
    }
    h.finalize().into()
}

/// Builds a session whose shared tensors pre-pack into their weight set's container when they
/// are large enough ([`prepack_min_bytes`]); returns the session, the set, and the bytes of the
/// set this build created (charged to the load that made it).
fn build_packed(
    env: &Environment,
    store: &SharedStore,
    model: &[u8],
    weights: &[(&str, &Arc<SharedWeight>)],
    opts: &LoadOptions,
) -> Result<(Session, Option<Arc<PackedSet>>, u64), String> {
    let total: u64 = weights.iter().map(|(_, w)| w.bytes).sum();
    if weights.is_empty() || total < prepack_min_bytes() {
        let s = build_session(env, store, model, weights, opts, Prepack::Off)?;
        return Ok((s, None, 0));
    }
    let set: Vec<&Arc<SharedWeight>> = weights.iter().map(|(_, w)| *w).collect();
    let (packed, new) = store.packed_set(&set);
    let before = crate::memory::allocated_bytes();
    let session = build_session(
        env,
        store,
        model,
        weights,
        opts,
        Prepack::Shared(&packed.container),
    )?;
    let mut created = 0;
    if new {
        let after = crate::memory::allocated_bytes();
        created = match (before, after) {
            (Some(b), Some(a)) => a.saturating_sub(b),
            // Without the allocator's count, assume a packed copy as large as the tensors.
            _ => total,
        };
        packed.charge(created);
    }
    Ok((session, Some(packed), created))
}

/// Whether and where a session pre-packs its weights.
#[derive(Clone, Copy)]
enum Prepack<'a> {
    Off,
    /// Into a weight set's container, shared with the other sessions over those tensors.
    Shared(&'a PrepackedWeights),
}

/// How a split model runs: the shared trunk, then its own head.
pub(crate) struct TrunkUse {
    pub trunk: Arc<Trunk>,
    /// Graph inputs the head reads directly.
    pub head_inputs: Vec<String>,
    /// All the model's graph inputs, in order (the model's signature).
    pub inputs: Vec<String>,
}

impl TrunkUse {
    /// Runs the trunk on the inputs it reads and returns the head's inputs: the graph inputs
    /// the head reads and the boundary tensors.
    pub fn run_trunk(
        &self,
        inputs: Vec<(String, herd_api::v2::Tensor)>,
        to_value: impl Fn(herd_api::v2::Tensor) -> Result<DynValue, RuntimeError>,
        opts: &ort::session::RunOptions,
    ) -> Result<Vec<(String, DynValue)>, RuntimeError> {
        let mut trunk_in = Vec::with_capacity(self.trunk.inputs.len());
        let mut head_in = Vec::with_capacity(self.head_inputs.len() + self.trunk.outputs.len());
        for (name, t) in inputs {
            let (to_trunk, to_head) = (
                self.trunk.inputs.contains(&name),
                self.head_inputs.contains(&name),
            );
            if to_trunk && to_head {
                trunk_in.push((name.clone(), to_value(t.clone())?));
                head_in.push((name, to_value(t)?));
            } else if to_trunk {
                trunk_in.push((name, to_value(t)?));
            } else if to_head {
                head_in.push((name, to_value(t)?));
            }
        }
        let mut session = self.trunk.session.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = session
            .run_with_options(trunk_in, opts)
            .map_err(|e| RuntimeError::Run(e.to_string()))?;
        for b in &self.trunk.outputs {
            let v = out.remove(b.as_str()).ok_or_else(|| {
                RuntimeError::Run(format!("the shared trunk did not produce '{b}'"))
            })?;
            head_in.push((b.clone(), v));
        }
        Ok(head_in)
    }

    /// Input metadata of the trunk's session, by name.
    pub fn input_meta(&self) -> Vec<(String, ValueType)> {
        let session = self.trunk.session.lock().unwrap_or_else(|p| p.into_inner());
        session
            .inputs()
            .iter()
            .map(|o| (o.name().to_string(), o.dtype().clone()))
            .collect()
    }
}

/// A session built on shared tensors, and the handles that keep them alive.
pub(crate) struct SharedSession {
    pub session: Session,
    pub weights: Vec<Arc<SharedWeight>>,
    pub sharing: Sharing,
    /// Set when the model runs on a shared trunk (`session` is then its head).
    pub trunk: Option<TrunkUse>,
    /// The pre-packed weights container the session uses, if any.
    pub packed: Option<Arc<PackedSet>>,
}

/// Builds a session of `model` whose placeholders are the `weights` (by name); `prepack`:
/// whether ONNX Runtime pre-packs the weights, and where (see the module docs).
fn build_session(
    env: &Environment,
    store: &SharedStore,
    model: &[u8],
    weights: &[(&str, &Arc<SharedWeight>)],
    opts: &LoadOptions,
    prepack: Prepack<'_>,
) -> Result<Session, String> {
    let file = if weights.is_empty() {
        None
    } else {
        let dir = store.work_dir()?;
        let file = dir.join(format!(
            "m{}.onnx",
            store.seq.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&file, model).map_err(|e| format!("{}: {e}", file.display()))?;
        Some(file)
    };
    let built = (|| -> Result<Session, String> {
        let s = |e: ort::Error<ort::session::builder::SessionBuilder>| e.to_string();
        let b = Session::builder(env)
            .map_err(|e| e.to_string())?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(s)?
            .with_prepacking(!matches!(prepack, Prepack::Off))
            .map_err(s)?;
        // As for unshared models: no arena, no per-shape memory patterns.
        let mut b = crate::ort_backend::memory_options(b)?;
        if opts.intra_threads > 0 {
            b = b
                .with_independent_thread_pool()
                .map_err(s)?
                .with_intra_threads(opts.intra_threads)
                .map_err(s)?;
        }
        for (name, w) in weights {
            b = b.with_initializer(*name, w.value().clone()).map_err(s)?;
        }
        if let Prepack::Shared(container) = prepack {
            b = b.with_prepacked_weights(container).map_err(s)?;
        }
        match &file {
            Some(f) => b.commit_from_file(f).map_err(|e| e.to_string()),
            None => b.commit_from_memory(model).map_err(|e| e.to_string()),
        }
    })();
    if let Some(f) = file {
        let _ = std::fs::remove_file(f);
    }
    built
}

/// Loads `path` with its large tensors shared through `store`. `Ok(None)`: nothing to share
/// (or the model is not one herd can plan), load it the ordinary way.
pub(crate) fn load(
    env: &Environment,
    store: &SharedStore,
    path: &Path,
    opts: &LoadOptions,
) -> Result<Option<SharedSession>, RuntimeError> {
    let fail = |reason: String| RuntimeError::LoadFailed {
        path: path.to_path_buf(),
        reason,
    };
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size < store.threshold as u64 {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let Ok(plan) = initializers::analyze(&bytes, store.threshold) else {
        return Ok(None);
    };
    if !plan.shares_anything() {
        return Ok(None);
    }
    let mut weights: Vec<(String, Arc<SharedWeight>)> = Vec::new();
    let mut created = 0u64;
    // Tensors another model already holds: where the model may join a shared trunk.
    let mut resident: std::collections::HashSet<Key> = Default::default();
    for r in &plan.raw_shared {
        let w = match store.get(&r.key) {
            Some(w) => {
                resident.insert(r.key);
                w
            }
            None => {
                let value = tensor_from_le(r.elem_type, &r.dims, &bytes[r.data.clone()])
                    .map_err(|e| fail(format!("shared initializer '{}': {e}", r.name)))?;
                let (w, new) = store.insert(r.key, value, r.data.len() as u64);
                if new {
                    created += w.bytes;
                }
                w
            }
        };
        weights.push((r.name.clone(), w));
    }
    // Folds: reuse the held ones, compute the others with one small model.
    let mut missing = Vec::new();
    let mut fold_weights: Vec<Option<Arc<SharedWeight>>> = Vec::with_capacity(plan.folds.len());
    for (i, f) in plan.folds.iter().enumerate() {
        let w = store.get(&f.key);
        match w {
            None => missing.push(i),
            Some(_) => {
                resident.insert(f.key);
            }
        }
        fold_weights.push(w);
    }
    if !missing.is_empty() {
        let mini = plan.mini_model(&bytes, &missing);
        let folding = |e: String| fail(format!("folding constant weights: {e}"));
        let mut session = Session::builder(env)
            .map_err(|e| folding(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Disable)
            .map_err(|e| folding(e.to_string()))?
            .with_memory_pattern(false)
            .map_err(|e| folding(e.to_string()))?
            .commit_from_memory(&mini)
            .map_err(|e| folding(e.to_string()))?;
        let outputs = session
            .run(Vec::<(String, DynValue)>::new())
            .map_err(|e| fail(format!("folding constant weights: {e}")))?;
        for &i in &missing {
            let f = &plan.folds[i];
            let v = outputs
                .get(&f.name)
                .ok_or_else(|| fail(format!("folding did not produce '{}'", f.name)))?;
            let (value, n) = owned_copy(v).map_err(|e| fail(format!("fold '{}': {e}", f.name)))?;
            let (w, new) = store.insert(f.key, value, n);
            if new {
                created += w.bytes;
            }
            fold_weights[i] = Some(w);
        }
    }
    for (f, w) in plan.folds.iter().zip(fold_weights) {
        weights.push((f.name.clone(), w.expect("every fold was found or computed")));
    }
    let placeholders: Vec<Placeholder> = weights
        .iter()
        .map(|(name, w)| {
            let (elem, dims) = describe(w.value()).expect("shared values are tensors");
            Placeholder {
                name: name.clone(),
                elem_type: elem,
                dims,
                bytes: w.bytes,
            }
        })
        .collect();
    if store.split && !opts.whole {
        if let Some(split) = plan.split(&bytes, |k| resident.contains(k)) {
            let s = load_split(
                env,
                store,
                &bytes,
                &plan,
                &split,
                &weights,
                &placeholders,
                opts,
            );
            // The model file's bytes (read whole, then cut) are free now; give their pages back
            // (each customer's load would otherwise leave up to its file's size resident).
            drop(bytes);
            release_free_memory();
            let s = s.map_err(fail)?;
            let mut sharing = s.sharing;
            sharing.created_bytes += created;
            return Ok(Some(SharedSession { sharing, ..s }));
        }
    }
    let stripped = plan.rewrite(&bytes, &placeholders);
    drop(bytes);
    let named: Vec<(&str, &Arc<SharedWeight>)> =
        weights.iter().map(|(n, w)| (n.as_str(), w)).collect();
    let built = build_packed(env, store, &stripped, &named, opts);
    drop(stripped);
    release_free_memory();
    let (session, packed, packed_created) = built.map_err(fail)?;
    let mut used: Vec<(Key, u64)> = weights.iter().map(|(_, w)| (w.key, w.bytes)).collect();
    used.extend(packed.as_ref().map(|p| p.usage()));
    let sharing = Sharing {
        weights: used,
        created_bytes: created + packed_created,
        stripped_file_bytes: plan.stripped_bytes,
        serial_runs: None,
    };
    Ok(Some(SharedSession {
        session,
        weights: weights.into_iter().map(|(_, w)| w).collect(),
        sharing,
        trunk: None,
        packed,
    }))
}

/// Loads a model as a head on a shared trunk (reused, or built now). The returned sharing's
/// `created_bytes` counts the trunk when this load built it (the caller adds its tensors).
#[allow(clippy::too_many_arguments)]
fn load_split(
    env: &Environment,
    store: &SharedStore,
    bytes: &[u8],
    plan: &initializers::Analysis,
    split: &initializers::Split,
    weights: &[(String, Arc<SharedWeight>)],
    placeholders: &[Placeholder],
    opts: &LoadOptions,
) -> Result<SharedSession, String> {
    let pick = |names: &[String]| -> Vec<(&str, &Arc<SharedWeight>)> {
        weights
            .iter()
            .filter(|(n, _)| names.contains(n))
            .map(|(n, w)| (n.as_str(), w))
            .collect()
    };
    let mut created = 0;
    let trunk = match store.get_trunk(&split.key) {
        Some(t) => t,
        None => {
            let model = plan.trunk_model(bytes, split, placeholders);
            let named = pick(&split.trunk_shared);
            let before = crate::memory::allocated_bytes();
            let (session, packed, packed_created) = build_packed(env, store, &model, &named, opts)
                .map_err(|e| format!("shared trunk: {e}"))?;
            let after = crate::memory::allocated_bytes();
            // The packed set is charged on its own (other sessions over these tensors use it).
            let measured = match (before, after) {
                (Some(b), Some(a)) => a.saturating_sub(b).saturating_sub(packed_created),
                _ => model.len() as u64,
            };
            created += packed_created;
            let trunk = Trunk {
                key: split.key,
                inputs: split.trunk_inputs.clone(),
                outputs: split.boundary.clone(),
                bytes: measured.max(model.len() as u64),
                resident: store.resident.clone(),
                _weights: named.iter().map(|(_, w)| Arc::clone(w)).collect(),
                packed,
                session: Mutex::new(session),
            };
            let (t, new) = store.insert_trunk(trunk);
            if new {
                created += t.bytes;
            }
            t
        }
    };
    // The head's inputs from the trunk are typed as the trunk's session reports them.
    let types: Vec<i32> = {
        let session = trunk.session.lock().unwrap_or_else(|p| p.into_inner());
        split
            .boundary
            .iter()
            .map(|b| {
                session
                    .outputs()
                    .iter()
                    .find(|o| o.name() == b)
                    .and_then(|o| describe_type(o.dtype()))
                    .ok_or_else(|| format!("shared trunk output '{b}' is not a numeric tensor"))
            })
            .collect::<Result<_, _>>()?
    };
    let head_model = plan.head_model(bytes, split, &types, placeholders);
    let head_named = pick(&split.head_shared);
    let (session, packed, packed_created) =
        build_packed(env, store, &head_model, &head_named, opts)?;
    created += packed_created;
    let mut used: Vec<(Key, u64)> = trunk
        ._weights
        .iter()
        .chain(head_named.iter().map(|(_, w)| *w))
        .map(|w| (w.key, w.bytes))
        .collect();
    used.sort_unstable();
    used.dedup();
    used.push((trunk.key, trunk.bytes));
    used.extend(trunk.packed.as_ref().map(|p| p.usage()));
    used.extend(packed.as_ref().map(|p| p.usage()));
    let sharing = Sharing {
        weights: used,
        created_bytes: created,
        stripped_file_bytes: (bytes.len() as u64).saturating_sub(head_model.len() as u64),
        serial_runs: Some(run_memory_key(&trunk.key)),
    };
    Ok(SharedSession {
        session,
        weights: head_named.iter().map(|(_, w)| Arc::clone(w)).collect(),
        sharing,
        trunk: Some(TrunkUse {
            trunk,
            head_inputs: split.head_inputs.clone(),
            inputs: split.inputs.clone(),
        }),
        packed,
    })
}

fn describe_type(t: &ValueType) -> Option<i32> {
    match t {
        ValueType::Tensor { ty, .. } => onnx_elem(*ty),
        _ => None,
    }
}

/// ONNX element type and dims of a tensor value.
fn describe(v: &DynValue) -> Option<(i32, Vec<i64>)> {
    match v.dtype() {
        ValueType::Tensor { ty, shape, .. } => {
            Some((onnx_elem(*ty)?, shape.iter().copied().collect()))
        }
        _ => None,
    }
}

fn onnx_elem(t: TensorElementType) -> Option<i32> {
    Some(match t {
        TensorElementType::Float32 => elem_type::FLOAT,
        TensorElementType::Float64 => elem_type::DOUBLE,
        TensorElementType::Int8 => elem_type::INT8,
        TensorElementType::Uint8 => elem_type::UINT8,
        TensorElementType::Int16 => elem_type::INT16,
        TensorElementType::Uint16 => elem_type::UINT16,
        TensorElementType::Int32 => elem_type::INT32,
        TensorElementType::Uint32 => elem_type::UINT32,
        TensorElementType::Int64 => elem_type::INT64,
        TensorElementType::Uint64 => elem_type::UINT64,
        TensorElementType::Bool => elem_type::BOOL,
        _ => return None,
    })
}

fn tensor<T>(dims: &[i64], v: Vec<T>) -> Result<DynValue, String>
where
    T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
{
    ort::value::Tensor::from_array((dims.to_vec(), v))
        .map(|t| t.into_dyn())
        .map_err(|e| e.to_string())
}

/// A tensor owned by herd from little-endian element bytes.
#[allow(clippy::modulo_one)] // the macro also serves one-byte types
fn tensor_from_le(elem: i32, dims: &[i64], raw: &[u8]) -> Result<DynValue, String> {
    macro_rules! le {
        ($t:ty, $n:expr) => {{
            if raw.len() % $n != 0 {
                return Err(format!(
                    "{} bytes is not a whole number of elements",
                    raw.len()
                ));
            }
            let v: Vec<$t> = raw
                .chunks_exact($n)
                .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")))
                .collect();
            tensor(dims, v)
        }};
    }
    match elem {
        elem_type::FLOAT => le!(f32, 4),
        elem_type::DOUBLE => le!(f64, 8),
        elem_type::INT8 => le!(i8, 1),
        elem_type::UINT8 => le!(u8, 1),
        elem_type::INT16 => le!(i16, 2),
        elem_type::UINT16 => le!(u16, 2),
        elem_type::INT32 => le!(i32, 4),
        elem_type::UINT32 => le!(u32, 4),
        elem_type::INT64 => le!(i64, 8),
        elem_type::UINT64 => le!(u64, 8),
        elem_type::BOOL => tensor(dims, raw.iter().map(|b| *b != 0).collect::<Vec<bool>>()),
        other => Err(format!("element type {other} is not shared")),
    }
}

/// A herd-owned copy of an engine output (so its memory does not depend on the session that
/// produced it), and its size in bytes.
fn owned_copy(v: &DynValue) -> Result<(DynValue, u64), String> {
    let (_, dims) = describe(v).ok_or("not a numeric tensor")?;
    macro_rules! copy {
        ($t:ty) => {{
            let (_, data) = v.try_extract_tensor::<$t>().map_err(|e| e.to_string())?;
            let n = std::mem::size_of_val(data) as u64;
            (tensor(&dims, data.to_vec())?, n)
        }};
    }
    let ty = match v.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        _ => return Err("not a tensor".into()),
    };
    Ok(match ty {
        TensorElementType::Float32 => copy!(f32),
        TensorElementType::Float64 => copy!(f64),
        TensorElementType::Int8 => copy!(i8),
        TensorElementType::Uint8 => copy!(u8),
        TensorElementType::Int16 => copy!(i16),
        TensorElementType::Uint16 => copy!(u16),
        TensorElementType::Int32 => copy!(i32),
        TensorElementType::Uint32 => copy!(u32),
        TensorElementType::Int64 => copy!(i64),
        TensorElementType::Uint64 => copy!(u64),
        TensorElementType::Bool => copy!(bool),
        other => return Err(format!("element type {other:?} is not shared")),
    })
}
