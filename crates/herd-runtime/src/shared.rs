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
//! Sessions that use shared tensors do not pre-pack them (`session.disable_prepacking`):
//! a pre-packed copy would be per session (or, with ONNX Runtime's pre-packed weights
//! container, kept for the life of the container, so never freed on eviction).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

pub use herd_onnx::initializers::Key;
use herd_onnx::initializers::{self, Placeholder};
use herd_onnx::proto::elem_type;
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
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

/// What a loaded instance shares with others (for the cache's accounting).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sharing {
    /// The shared tensors the instance uses: content key and bytes.
    pub weights: Vec<(Key, u64)>,
    /// Bytes of shared tensors this load created (not found in the store).
    pub created_bytes: u64,
    /// Bytes of the model file that were not handed to the engine (shared or folded away).
    pub stripped_file_bytes: u64,
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
    value: Arc<DynValue>,
    bytes: u64,
    resident: Arc<AtomicU64>,
}

impl Drop for SharedWeight {
    fn drop(&mut self) {
        self.resident.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The process's shared tensors, by content key.
pub struct SharedStore {
    map: Mutex<HashMap<Key, Weak<SharedWeight>>>,
    resident: Arc<AtomicU64>,
    threshold: usize,
    dir: Mutex<Option<PathBuf>>,
    seq: AtomicU64,
}

impl SharedStore {
    pub fn new(threshold: usize) -> SharedStore {
        SharedStore {
            map: Mutex::new(HashMap::new()),
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
            value: Arc::new(value),
            bytes,
            resident: self.resident.clone(),
        });
        map.insert(key, Arc::downgrade(&w));
        (w, true)
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

/// A session built on shared tensors, and the handles that keep them alive.
pub(crate) struct SharedSession {
    pub session: Session,
    pub weights: Vec<Arc<SharedWeight>>,
    pub sharing: Sharing,
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
    for r in &plan.raw_shared {
        let w = match store.get(&r.key) {
            Some(w) => w,
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
        if w.is_none() {
            missing.push(i);
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
            let (elem, dims) = describe(&w.value).expect("shared values are tensors");
            Placeholder {
                name: name.clone(),
                elem_type: elem,
                dims,
                bytes: w.bytes,
            }
        })
        .collect();
    let stripped = plan.rewrite(&bytes, &placeholders);
    drop(bytes);
    let dir = store.work_dir().map_err(fail)?;
    let file = dir.join(format!(
        "m{}.onnx",
        store.seq.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&file, &stripped).map_err(|e| fail(format!("{}: {e}", file.display())))?;
    let built = (|| -> Result<Session, String> {
        let s = |e: ort::Error<ort::session::builder::SessionBuilder>| e.to_string();
        let mut b = Session::builder(env)
            .map_err(|e| e.to_string())?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(s)?
            .with_prepacking(false)
            .map_err(s)?;
        if opts.intra_threads > 0 {
            b = b
                .with_independent_thread_pool()
                .map_err(s)?
                .with_intra_threads(opts.intra_threads)
                .map_err(s)?;
        }
        for (name, w) in &weights {
            b = b.with_initializer(name, w.value.clone()).map_err(s)?;
        }
        b.commit_from_file(&file).map_err(|e| e.to_string())
    })();
    let _ = std::fs::remove_file(&file);
    let session = built.map_err(fail)?;
    let sharing = Sharing {
        weights: weights.iter().map(|(_, w)| (w.key, w.bytes)).collect(),
        created_bytes: created,
        stripped_file_bytes: plan.stripped_bytes,
    };
    Ok(Some(SharedSession {
        session,
        weights: weights.into_iter().map(|(_, w)| w).collect(),
        sharing,
    }))
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
