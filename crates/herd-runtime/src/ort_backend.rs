//! The ONNX Runtime backend.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use herd_api::v2::{bf16, f16, DataType, Tensor, TensorData, TensorMetadata};
use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{RunOptions, Session};
use ort::value::{DynValue, TensorElementType, ValueType};

use crate::{Backend, Cancel, Instance, LoadOptions, RuntimeError, Signature};

/// ONNX Runtime allows one environment per process; herd creates it once, with a global thread
/// pool shared by every session (thousands of sessions must not mean thousands of pools).
static ENV: OnceLock<Result<(Environment, PathBuf), String>> = OnceLock::new();

/// ONNX Runtime, loaded from a shared library found by [`crate::install::locate`].
#[derive(Clone)]
pub struct OrtBackend {
    env: Environment,
    library: PathBuf,
    /// Large weights shared between this backend's sessions (`None`: HERD_SHARED_WEIGHTS=off).
    shared: Option<std::sync::Arc<crate::shared::SharedStore>>,
    /// Base sessions of LoRA adapter models, one per base file.
    adapter_bases: Arc<crate::adapters::Bases>,
}

impl OrtBackend {
    /// Loads the library (once per process) and creates the environment.
    /// `intra_threads` sizes the shared pool (0 = ONNX Runtime's default, one per core).
    /// `spin`: the pool's threads spin for a moment after each operator before they sleep
    /// (ONNX Runtime's own default). Measured on MiniLM, one 24-token text on 2 cores: 4.9 ms
    /// with it, 6.9 ms without (waking a sleeping thread per operator); the cost is CPU burnt
    /// in that moment after a run. The environment is created once per process: the first
    /// backend's settings hold for every later one.
    pub fn new(
        library: Option<&Path>,
        intra_threads: usize,
        spin: bool,
    ) -> Result<OrtBackend, RuntimeError> {
        let lib = crate::install::locate(library)?;
        let entry = ENV.get_or_init(|| {
            // The library must be loaded before any other ONNX Runtime call.
            let builder = ort::init_from(&lib).map_err(|e| e.to_string())?;
            let pool = GlobalThreadPoolOptions::default()
                .with_intra_threads(intra_threads)
                .and_then(|p| p.with_inter_threads(1))
                .and_then(|p| p.with_spin_control(spin))
                .map_err(|e| e.to_string())?;
            crate::memory::tune_allocator();
            let env = builder
                .with_name("herd")
                .with_global_thread_pool(pool)
                .build()
                .map_err(|e| e.to_string())?;
            Ok((env, lib.clone()))
        });
        match entry {
            Ok((env, path)) => Ok(OrtBackend {
                env: env.clone(),
                library: path.clone(),
                shared: crate::shared::enabled_by_env().then(|| {
                    std::sync::Arc::new(crate::shared::SharedStore::new(
                        herd_onnx::initializers::DEFAULT_THRESHOLD,
                    ))
                }),
                adapter_bases: Default::default(),
            }),
            Err(reason) => Err(RuntimeError::LibraryBroken {
                path: lib,
                reason: reason.clone(),
            }),
        }
    }

    /// The library this process uses.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// This backend with weight sharing off (every model loads its own copy of its weights).
    pub fn without_sharing(mut self) -> OrtBackend {
        self.shared = None;
        self
    }

    /// The base sessions of this backend's LoRA adapter models.
    pub fn adapter_bases(&self) -> &crate::adapters::Bases {
        &self.adapter_bases
    }

    /// The store of weights shared between this backend's sessions, unless sharing is off.
    pub fn shared_store(&self) -> Option<&crate::shared::SharedStore> {
        self.shared.as_deref()
    }
}

impl Backend for OrtBackend {
    fn platform(&self) -> &'static str {
        "onnxruntime_onnx"
    }

    fn load(&self, path: &Path, opts: &LoadOptions) -> Result<Box<dyn Instance>, RuntimeError> {
        let fail = |reason: String| RuntimeError::LoadFailed {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(adapter) = &opts.adapter {
            return crate::adapters::load(
                &self.env,
                &self.adapter_bases,
                self.shared.as_deref(),
                path,
                adapter,
                opts,
            );
        }
        if let Some(store) = &self.shared {
            if let Some(s) = crate::shared::load(&self.env, store, path, opts)? {
                let signature = match &s.trunk {
                    Some(t) => split_signature(t, &s.session),
                    None => signature_of(&s.session),
                }
                .map_err(fail)?;
                return Ok(Box::new(OrtInstance {
                    session: s.session,
                    signature,
                    trunk: s.trunk,
                    _shared: s.weights,
                    _packed: s.packed,
                    sharing: s.sharing,
                }));
            }
        }
        let mut builder = Session::builder(&self.env)
            .map_err(|e| fail(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| fail(e.to_string()))?;
        builder = memory_options(builder).map_err(fail)?;
        if opts.intra_threads > 0 {
            builder = builder
                .with_independent_thread_pool()
                .map_err(|e| fail(e.to_string()))?
                .with_intra_threads(opts.intra_threads)
                .map_err(|e| fail(e.to_string()))?;
        }
        let session = builder
            .commit_from_file(path)
            .map_err(|e| fail(e.to_string()))?;
        let signature = signature_of(&session).map_err(fail)?;
        Ok(Box::new(OrtInstance {
            session,
            signature,
            trunk: None,
            _shared: Vec::new(),
            _packed: None,
            sharing: Default::default(),
        }))
    }
}

/// The memory options of every session herd builds (plain and shared-weights): no CPU arena
/// (an arena keeps the largest run's memory forever, and at least a megabyte per session, a
/// lot for thousands of small models; without it a run's memory goes back to the allocator,
/// which herd trims) and no memory patterns (planned and kept per input shape; with dynamic
/// shapes they only add to what a session holds). The core charges each model the peak of a
/// run at the largest shape, which is only an upper bound on what a session holds without them.
pub(crate) fn memory_options(
    builder: ort::session::builder::SessionBuilder,
) -> Result<ort::session::builder::SessionBuilder, String> {
    builder
        .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(false).build()])
        .map_err(|e| e.to_string())?
        .with_memory_pattern(false)
        .map_err(|e| e.to_string())
}

pub(crate) fn signature_of(session: &Session) -> Result<Signature, String> {
    Ok(Signature {
        inputs: session
            .inputs()
            .iter()
            .map(|o| outlet_meta(o.name(), o.dtype()))
            .collect::<Result<_, _>>()?,
        outputs: session
            .outputs()
            .iter()
            .map(|o| outlet_meta(o.name(), o.dtype()))
            .collect::<Result<_, _>>()?,
    })
}

/// The signature of a model split into a shared trunk and `head`: the model's own inputs
/// (from whichever part reads them, in the model's order) and the head's outputs.
fn split_signature(t: &crate::shared::TrunkUse, head: &Session) -> Result<Signature, String> {
    let mut known: Vec<(String, ValueType)> = t.input_meta();
    known.extend(
        head.inputs()
            .iter()
            .map(|o| (o.name().to_string(), o.dtype().clone())),
    );
    let inputs = t
        .inputs
        .iter()
        .map(|n| {
            let (_, ty) = known
                .iter()
                .find(|(k, _)| k == n)
                .ok_or_else(|| format!("input '{n}' is read by neither part of the model"))?;
            outlet_meta(n, ty)
        })
        .collect::<Result<_, _>>()?;
    Ok(Signature {
        inputs,
        outputs: signature_of(head)?.outputs,
    })
}

struct OrtInstance {
    /// The model's session; the head's when the model runs on a shared trunk.
    session: Session,
    signature: Signature,
    trunk: Option<crate::shared::TrunkUse>,
    /// Keeps the shared weights the session uses alive (dropped after the session).
    _shared: Vec<std::sync::Arc<crate::shared::SharedWeight>>,
    /// The pre-packed weights container of those tensors, if the session packs into one.
    _packed: Option<std::sync::Arc<crate::shared::PackedSet>>,
    sharing: crate::shared::Sharing,
}

impl Instance for OrtInstance {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn sharing(&self) -> crate::shared::Sharing {
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
        let convert = |t: Tensor| {
            to_value(t.shape, t.data)
                .map_err(|e| RuntimeError::InvalidInput(format!("input '{}': {e}", t.name)))
        };
        // A model on a shared trunk converts its inputs as the trunk run takes them.
        let (mut values, pending) = match &self.trunk {
            Some(_) => (Vec::new(), inputs),
            None => {
                let mut values: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
                for t in inputs {
                    let name = t.name.clone();
                    values.push((name, convert(t)?));
                }
                (values, Vec::new())
            }
        };
        let opts = Arc::new(RunOptions::new().map_err(|e| RuntimeError::Run(e.to_string()))?);
        let stop = opts.clone();
        // Firing the cancel sets ONNX Runtime's terminate flag: the run stops between operators.
        cancel.on_cancel(move || {
            let _ = stop.terminate();
        });
        if let Some(t) = &self.trunk {
            // The shared trunk first; its boundary tensors feed this model's head.
            let named = pending.into_iter().map(|t| (t.name.clone(), t)).collect();
            match t.run_trunk(named, convert, &opts) {
                Ok(v) => values = v,
                Err(e) => {
                    cancel.clear();
                    return Err(if cancel.is_cancelled() {
                        RuntimeError::Cancelled
                    } else {
                        e
                    });
                }
            }
        }
        let run = self.session.run_with_options(values, &*opts);
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
            result.push(from_value(&meta.name, value)?);
        }
        Ok(result)
    }
}

fn outlet_meta(name: &str, ty: &ValueType) -> Result<TensorMetadata, String> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => Ok(TensorMetadata {
            name: name.to_string(),
            datatype: element_to_datatype(*ty).ok_or_else(|| {
                format!("'{name}' has element type {ty:?}, which herd does not serve")
            })?,
            shape: shape.iter().copied().collect(),
        }),
        other => Err(format!(
            "'{name}' is a {other:?}; herd serves models whose inputs and outputs are tensors"
        )),
    }
}

fn element_to_datatype(t: TensorElementType) -> Option<DataType> {
    Some(match t {
        TensorElementType::Float32 => DataType::F32,
        TensorElementType::Float64 => DataType::F64,
        TensorElementType::Int8 => DataType::I8,
        TensorElementType::Int16 => DataType::I16,
        TensorElementType::Int32 => DataType::I32,
        TensorElementType::Int64 => DataType::I64,
        TensorElementType::Uint8 => DataType::U8,
        TensorElementType::Uint16 => DataType::U16,
        TensorElementType::Uint32 => DataType::U32,
        TensorElementType::Uint64 => DataType::U64,
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::String => DataType::Bytes,
        TensorElementType::Float16 => DataType::F16,
        TensorElementType::Bfloat16 => DataType::BF16,
        _ => return None,
    })
}

pub(crate) fn to_value(shape: Vec<i64>, data: TensorData) -> Result<DynValue, String> {
    fn prim<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
        shape: Vec<i64>,
        v: Vec<T>,
    ) -> Result<DynValue, String> {
        ort::value::Tensor::from_array((shape, v))
            .map(|t| t.into_dyn())
            .map_err(|e| e.to_string())
    }
    match data {
        TensorData::F32(v) => prim(shape, v),
        TensorData::F64(v) => prim(shape, v),
        TensorData::I8(v) => prim(shape, v),
        TensorData::I16(v) => prim(shape, v),
        TensorData::I32(v) => prim(shape, v),
        TensorData::I64(v) => prim(shape, v),
        TensorData::U8(v) => prim(shape, v),
        TensorData::U16(v) => prim(shape, v),
        TensorData::U32(v) => prim(shape, v),
        TensorData::U64(v) => prim(shape, v),
        TensorData::Bool(v) => prim(shape, v),
        TensorData::F16(v) => prim(shape, v),
        TensorData::BF16(v) => prim(shape, v),
        TensorData::Bytes(v) => {
            let strings = v
                .into_iter()
                .enumerate()
                .map(|(i, b)| {
                    String::from_utf8(b)
                        .map_err(|_| format!("BYTES element {i} is not valid UTF-8"))
                })
                .collect::<Result<Vec<String>, String>>()?;
            ort::value::Tensor::from_string_array((shape, &strings[..]))
                .map(|t| t.into_dyn())
                .map_err(|e| e.to_string())
        }
    }
}

pub(crate) fn from_value(name: &str, value: &DynValue) -> Result<Tensor, RuntimeError> {
    let err = |e: ort::Error| RuntimeError::Run(format!("output '{name}': {e}"));
    let ty = match value.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => {
            return Err(RuntimeError::Run(format!(
                "output '{name}' is a {other:?}, not a tensor"
            )))
        }
    };
    macro_rules! prim {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(err)?;
            (
                shape.iter().copied().collect::<Vec<i64>>(),
                TensorData::$variant(data.to_vec()),
            )
        }};
    }
    let (shape, data) = match ty {
        TensorElementType::Float32 => prim!(f32, F32),
        TensorElementType::Float64 => prim!(f64, F64),
        TensorElementType::Int8 => prim!(i8, I8),
        TensorElementType::Int16 => prim!(i16, I16),
        TensorElementType::Int32 => prim!(i32, I32),
        TensorElementType::Int64 => prim!(i64, I64),
        TensorElementType::Uint8 => prim!(u8, U8),
        TensorElementType::Uint16 => prim!(u16, U16),
        TensorElementType::Uint32 => prim!(u32, U32),
        TensorElementType::Uint64 => prim!(u64, U64),
        TensorElementType::Bool => prim!(bool, Bool),
        TensorElementType::Float16 => prim!(f16, F16),
        TensorElementType::Bfloat16 => prim!(bf16, BF16),
        TensorElementType::String => {
            let (shape, strings) = value.try_extract_strings().map_err(err)?;
            (
                shape.iter().copied().collect(),
                TensorData::Bytes(strings.into_iter().map(String::into_bytes).collect()),
            )
        }
        other => {
            return Err(RuntimeError::Run(format!(
                "output '{name}' has element type {other:?}, which herd does not serve"
            )))
        }
    };
    Ok(Tensor::new(name, shape, data))
}
