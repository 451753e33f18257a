//! LoRA adapters: models that run on another model's file with an adapter activated per run.
//!
//! A LoRA base exposes its adapter parameters as overridable initializers (graph inputs with
//! default values); an adapter file (`.onnx_adapter`, ONNX Runtime's format) holds values for
//! them, and ONNX Runtime feeds them per run (`RunOptions::add_adapter`). herd builds one
//! session of a base file for all the adapter models on it ([`Bases`]): each adapter model's
//! instance holds the base session and its own adapter, so it costs the adapter's bytes. The
//! base session is charged once for its users, like a shared tensor; its large weights are
//! shared with the base model's own sessions through the [`SharedStore`] when sharing is on.
//! Runs of different adapters on one base take turns on its session (each run uses the
//! process's intra-op thread pool); each adapter model has its own batcher, so a batch never
//! mixes adapters.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use herd_api::v2::Tensor;
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Adapter, RunOptions, Session};
use sha2::{Digest, Sha256};

use crate::shared::{Key, SharedStore, SharedWeight, Sharing};
use crate::{Cancel, Instance, LoadOptions, RuntimeError, Signature};

/// One session of a base file, shared by the adapter models on it.
pub(crate) struct BaseSession {
    key: Key,
    session: Mutex<Session>,
    signature: Signature,
    /// Heap bytes the session took beyond the shared tensors it created.
    bytes: u64,
    /// What the base session shares (its large tensors), for the accounting.
    sharing: Sharing,
    resident: Arc<AtomicU64>,
    /// Shared tensors the session uses (dropped after it).
    _weights: Vec<Arc<SharedWeight>>,
    /// The pre-packed weights container of those tensors, if the session packs into one.
    _packed: Option<Arc<crate::shared::PackedSet>>,
}

impl Drop for BaseSession {
    fn drop(&mut self) {
        self.resident.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The base sessions alive, by base file (path, size and modification time).
#[derive(Default)]
pub struct Bases {
    map: Mutex<HashMap<Key, Weak<BaseSession>>>,
    resident: Arc<AtomicU64>,
}

impl Bases {
    /// Number of base sessions alive now.
    pub fn len(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|w| w.strong_count() > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes of the base sessions alive now (not counting shared tensors).
    pub fn resident_bytes(&self) -> u64 {
        self.resident.load(Ordering::Relaxed)
    }
}

fn base_key(path: &Path) -> Result<Key, String> {
    let canonical = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = std::fs::metadata(&canonical).map_err(|e| format!("{}: {e}", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = Sha256::new();
    h.update(b"herd-lora-base-v1\0");
    h.update(canonical.as_os_str().as_encoded_bytes());
    h.update(meta.len().to_le_bytes());
    h.update(mtime.to_le_bytes());
    Ok(h.finalize().into())
}

/// Builds an instance of the model at `path` with the adapter `adapter` activated per run.
pub(crate) fn load(
    env: &Environment,
    bases: &Bases,
    store: Option<&SharedStore>,
    path: &Path,
    adapter: &Path,
    opts: &LoadOptions,
) -> Result<Box<dyn Instance>, RuntimeError> {
    let fail = |p: &Path, reason: String| RuntimeError::LoadFailed {
        path: p.to_path_buf(),
        reason,
    };
    let key = base_key(path).map_err(|e| fail(path, e))?;
    let existing = {
        let map = bases.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&key).and_then(Weak::upgrade)
    };
    let (base, created) = match existing {
        Some(b) => (b, 0),
        None => {
            let b = build_base(env, bases, store, key, path, opts)?;
            let mut map = bases.map.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&key).and_then(Weak::upgrade) {
                Some(other) => (other, 0),
                None => {
                    map.retain(|_, w| w.strong_count() > 0);
                    bases.resident.fetch_add(b.bytes, Ordering::Relaxed);
                    let created = b.bytes + b.sharing.created_bytes;
                    let b = Arc::new(b);
                    map.insert(key, Arc::downgrade(&b));
                    (b, created)
                }
            }
        }
    };
    let lora = Adapter::from_file(adapter, None)
        .map_err(|e| fail(adapter, format!("LoRA adapter: {e}")))?;
    let mut weights = base.sharing.weights.clone();
    weights.push((base.key, base.bytes));
    Ok(Box::new(AdapterInstance {
        signature: base.signature.clone(),
        sharing: Sharing {
            weights,
            created_bytes: created,
            stripped_file_bytes: 0,
            serial_runs: Some(crate::shared::run_memory_key(&base.key)),
        },
        adapter: Lora(lora),
        path: adapter.to_path_buf(),
        base,
    }))
}

fn build_base(
    env: &Environment,
    bases: &Bases,
    store: Option<&SharedStore>,
    key: Key,
    path: &Path,
    opts: &LoadOptions,
) -> Result<BaseSession, RuntimeError> {
    let fail = |reason: String| RuntimeError::LoadFailed {
        path: path.to_path_buf(),
        reason,
    };
    let plain = LoadOptions {
        adapter: None,
        ..opts.clone()
    };
    let before = crate::memory::allocated_bytes();
    // The base's large tensors are shared with its own model's sessions when sharing is on.
    let shared = match store {
        Some(s) => crate::shared::load(env, s, path, &plain)?.filter(|s| s.trunk.is_none()),
        None => None,
    };
    let (session, sharing, weights, packed) = match shared {
        Some(s) => (s.session, s.sharing, s.weights, s.packed),
        None => {
            let session = plain_session(env, path, &plain).map_err(fail)?;
            (session, Sharing::default(), Vec::new(), None)
        }
    };
    let after = crate::memory::allocated_bytes();
    let measured = match (before, after) {
        (Some(b), Some(a)) => a.saturating_sub(b),
        _ => std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    };
    let signature = crate::ort_backend::signature_of(&session).map_err(fail)?;
    Ok(BaseSession {
        key,
        session: Mutex::new(session),
        signature,
        bytes: measured.saturating_sub(sharing.created_bytes).max(1),
        sharing,
        resident: bases.resident.clone(),
        _weights: weights,
        _packed: packed,
    })
}

/// A session of `path` with the options of unshared models (no arena, no memory patterns).
fn plain_session(env: &Environment, path: &Path, opts: &LoadOptions) -> Result<Session, String> {
    let s = |e: ort::Error<ort::session::builder::SessionBuilder>| e.to_string();
    let b = Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(s)?;
    let mut b = crate::ort_backend::memory_options(b)?;
    if opts.intra_threads > 0 {
        b = b
            .with_independent_thread_pool()
            .map_err(s)?
            .with_intra_threads(opts.intra_threads)
            .map_err(s)?;
    }
    b.commit_from_file(path).map_err(|e| e.to_string())
}

/// An ONNX Runtime LoRA adapter, movable between threads.
struct Lora(Adapter);

// SAFETY: an OrtLoraAdapter is read-only once created (ONNX Runtime documents adapters as
// usable by concurrent runs); ort's wrapper holds it behind an `Arc` with an atomic count and
// does not implement `Send` only because it holds a raw pointer. herd uses it from one thread
// at a time (the instance's `&mut self` runs).
unsafe impl Send for Lora {}

/// An adapter model's instance: the shared base session, this model's adapter.
struct AdapterInstance {
    base: Arc<BaseSession>,
    adapter: Lora,
    signature: Signature,
    sharing: Sharing,
    path: PathBuf,
}

impl Instance for AdapterInstance {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn sharing(&self) -> Sharing {
        self.sharing.clone()
    }

    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        self.run_cancellable(inputs, &Cancel::new())
    }

    fn run_cancellable(
        &mut self,
        inputs: Vec<Tensor>,
        cancel: &Cancel,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        if cancel.is_cancelled() {
            return Err(RuntimeError::Cancelled);
        }
        let mut values = Vec::with_capacity(inputs.len());
        for t in inputs {
            let v = crate::ort_backend::to_value(t.shape, t.data)
                .map_err(|e| RuntimeError::InvalidInput(format!("input '{}': {e}", t.name)))?;
            values.push((t.name, v));
        }
        let mut opts = RunOptions::new().map_err(|e| RuntimeError::Run(e.to_string()))?;
        opts.add_adapter(&self.adapter.0).map_err(|e| {
            RuntimeError::Run(format!(
                "activating the adapter {}: {e}",
                self.path.display()
            ))
        })?;
        let opts = Arc::new(opts);
        let stop = opts.clone();
        cancel.on_cancel(move || {
            let _ = stop.terminate();
        });
        let mut session = self.base.session.lock().unwrap_or_else(|p| p.into_inner());
        let run = session.run_with_options(values, &*opts);
        cancel.clear();
        let outputs = match run {
            Ok(o) => o,
            Err(_) if cancel.is_cancelled() => return Err(RuntimeError::Cancelled),
            Err(e) => return Err(RuntimeError::Run(e.to_string())),
        };
        let mut result = Vec::with_capacity(self.signature.outputs.len());
        for meta in &self.signature.outputs {
            let value = outputs.get(&meta.name).ok_or_else(|| {
                RuntimeError::Run(format!("the model did not produce output '{}'", meta.name))
            })?;
            result.push(crate::ort_backend::from_value(&meta.name, value)?);
        }
        Ok(result)
    }
}
