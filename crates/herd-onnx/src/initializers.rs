//! Large initializers: finding them, keying them by content, folding the constant work done on
//! them, and stripping their bytes from a model so that an engine can be handed a shared copy.
//!
//! Everything here works on the protobuf wire format, field by field, so the parts of a model
//! that herd's hand-written [`crate::proto`] subset does not model (functions, metadata,
//! training info, unknown attributes...) pass through byte for byte.
//!
//! The plan for one model ([`analyze`]):
//! - a *large* initializer is a numeric tensor stored inline (`raw_data`) of at least the
//!   threshold's bytes; its key is the SHA-256 of its element type, dims and bytes;
//! - a *foldable* node computes only from initializers (and other foldable nodes), is a
//!   deterministic standard ONNX op, and reaches at least one large initializer. Quantised
//!   exports dequantise their weights this way (`Cast` + `Mul`), and an engine's constant
//!   folding would give every session its own float copy of them. herd folds them itself, once
//!   per distinct computation: each output that leaves the folded part ([`Fold`]) is keyed by
//!   the exact bytes of the nodes that compute it and the keys of their inputs;
//! - [`Analysis::mini_model`] is a model without inputs that computes some folds (run it once
//!   with any engine); [`Analysis::rewrite`] writes the model without the folded nodes, the
//!   initializers only they used, and with every shared tensor replaced by a data-less
//!   placeholder marked as external data (the engine receives the tensor from the caller).

use std::collections::{HashMap, HashSet};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::proto::{attribute_type, elem_type, NodeProto};
use crate::OnnxError;

/// Initializers at least this large are shared by default (64 KiB).
pub const DEFAULT_THRESHOLD: usize = 64 * 1024;

/// The external-data location written into placeholders. Engines that validate external data
/// paths want a file of this name to exist next to the model; it is never read.
pub const PLACEHOLDER_LOCATION: &str = "herd-shared-weights";

/// A content key (SHA-256).
pub type Key = [u8; 32];

/// A large initializer kept by the model (read by nodes that are not folded).
#[derive(Debug, Clone)]
pub struct RawShared {
    pub name: String,
    pub key: Key,
    /// One of [`crate::proto::elem_type`].
    pub elem_type: i32,
    pub dims: Vec<i64>,
    /// Where its little-endian element bytes lie in the model bytes given to [`analyze`].
    pub data: std::ops::Range<usize>,
}

/// One output of the folded part of the graph: a tensor that only depends on initializers.
#[derive(Debug, Clone)]
pub struct Fold {
    pub name: String,
    pub key: Key,
    /// Indexes (into the graph's nodes) of the nodes that compute it, in graph order.
    nodes: Vec<usize>,
}

/// What [`Analysis::rewrite`] writes in place of a shared tensor.
#[derive(Debug, Clone)]
pub struct Placeholder {
    pub name: String,
    pub elem_type: i32,
    pub dims: Vec<i64>,
    pub bytes: u64,
}

struct Node {
    raw: std::ops::Range<usize>,
    inputs: Vec<String>,
    outputs: Vec<String>,
    folded: bool,
}

struct Init {
    raw: std::ops::Range<usize>,
    name: String,
    key: Option<Key>,
}

/// The sharing plan of one model. Borrow-free: ranges index the bytes given to [`analyze`].
pub struct Analysis {
    /// Top-level `ModelProto` fields other than the graph.
    model_fields: Vec<std::ops::Range<usize>>,
    /// Graph fields other than nodes and initializers.
    graph_fields: Vec<std::ops::Range<usize>>,
    nodes: Vec<Node>,
    inits: Vec<Init>,
    /// Large initializers the rewritten model still reads.
    pub raw_shared: Vec<RawShared>,
    /// Outputs of the folded part.
    pub folds: Vec<Fold>,
    /// Bytes of the model that the rewrite removes (folded nodes' inputs and shared data).
    pub stripped_bytes: u64,
    /// Field numbers of `model_fields` (ir_version and opset_import enter a trunk's key).
    model_field_numbers: Vec<u32>,
    /// The graph's inputs: name and the whole `ValueInfoProto` field.
    graph_inputs: Vec<(String, std::ops::Range<usize>)>,
    /// The graph's outputs: name and the whole `ValueInfoProto` field.
    graph_outputs: Vec<(String, std::ops::Range<usize>)>,
    /// Whether the graph has fields a split model could not carry (sparse initializers).
    unsplittable: bool,
}

/// A model cut in two where it stops reading weights that other models hold: the *trunk*
/// (every node that reads such a weight, and every node those depend on) and the *head* (the
/// rest). Models whose trunks have the same key compute the same trunk outputs from the same
/// inputs, so one engine session of the trunk can serve all of them.
#[derive(Debug, Clone)]
pub struct Split {
    /// SHA-256 of the trunk: its nodes' bytes, the keys (or bytes) of what they read, the
    /// graph inputs they read, the opsets, and the boundary names.
    pub key: Key,
    /// Kept nodes of the trunk (indexes into the graph's nodes), in graph order.
    trunk: Vec<usize>,
    /// Graph inputs the trunk reads, in graph order.
    pub trunk_inputs: Vec<String>,
    /// Graph inputs the head reads, in graph order.
    pub head_inputs: Vec<String>,
    /// Trunk outputs the head reads (sorted): the head's extra inputs.
    pub boundary: Vec<String>,
    /// All graph inputs, in graph order.
    pub inputs: Vec<String>,
    /// Shared tensors (kept large initializers and folds) the trunk reads.
    pub trunk_shared: Vec<String>,
    /// Shared tensors the head reads (its own large weights: not resident elsewhere).
    pub head_shared: Vec<String>,
}

impl Analysis {
    /// Whether anything is shared: when false, load the model as it is.
    pub fn shares_anything(&self) -> bool {
        !self.raw_shared.is_empty() || !self.folds.is_empty()
    }

    /// A model with no inputs whose outputs are the folds named by `which` (indexes into
    /// [`Analysis::folds`]), computed by the same nodes from the same initializers.
    pub fn mini_model(&self, model: &[u8], which: &[usize]) -> Vec<u8> {
        let mut wanted: Vec<usize> = which
            .iter()
            .flat_map(|&i| self.folds[i].nodes.iter().copied())
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let used: HashSet<&str> = wanted
            .iter()
            .flat_map(|&n| self.nodes[n].inputs.iter().map(String::as_str))
            .collect();
        let mut graph = Vec::new();
        for &n in &wanted {
            put_field(&mut graph, 1, &model[self.nodes[n].raw.clone()]);
        }
        for init in &self.inits {
            if used.contains(init.name.as_str()) {
                put_field(&mut graph, 5, &model[init.raw.clone()]);
            }
        }
        put_field(&mut graph, 2, b"herd-fold");
        for &i in which {
            // A name-only ValueInfoProto: the engine infers the type.
            let mut vi = Vec::new();
            put_field(&mut vi, 1, self.folds[i].name.as_bytes());
            put_field(&mut graph, 12, &vi);
        }
        let mut out = Vec::new();
        for f in &self.model_fields {
            out.extend_from_slice(&model[f.clone()]);
        }
        put_field(&mut out, 7, &graph);
        out
    }

    /// The model without the folded nodes and the initializers only they read, and with every
    /// tensor in `placeholders` (the kept large initializers and the folds) as a data-less
    /// external-data placeholder.
    pub fn rewrite(&self, model: &[u8], placeholders: &[Placeholder]) -> Vec<u8> {
        let replaced: HashSet<&str> = placeholders.iter().map(|p| p.name.as_str()).collect();
        let read: HashSet<&str> = self
            .nodes
            .iter()
            .filter(|n| !n.folded)
            .flat_map(|n| n.inputs.iter().map(String::as_str))
            .collect();
        let mut graph = Vec::with_capacity(model.len() / 8);
        for f in &self.graph_fields {
            graph.extend_from_slice(&model[f.clone()]);
        }
        for n in self.nodes.iter().filter(|n| !n.folded) {
            put_field(&mut graph, 1, &model[n.raw.clone()]);
        }
        for init in &self.inits {
            if replaced.contains(init.name.as_str()) {
                continue;
            }
            let folded_only = !read.contains(init.name.as_str())
                && self
                    .nodes
                    .iter()
                    .any(|n| n.folded && n.inputs.contains(&init.name));
            if !folded_only {
                put_field(&mut graph, 5, &model[init.raw.clone()]);
            }
        }
        for p in placeholders {
            put_field(&mut graph, 5, &placeholder(p));
        }
        let mut out = Vec::with_capacity(graph.len() + 1024);
        for f in &self.model_fields {
            out.extend_from_slice(&model[f.clone()]);
        }
        put_field(&mut out, 7, &graph);
        out
    }

    /// The shared tensors the rewritten model reads, by name: kept large initializers and folds.
    fn shared_names(&self) -> HashMap<&str, Key> {
        self.raw_shared
            .iter()
            .map(|r| (r.name.as_str(), r.key))
            .chain(self.folds.iter().map(|f| (f.name.as_str(), f.key)))
            .collect()
    }

    fn reads(&self, nodes: &[usize]) -> HashSet<&str> {
        nodes
            .iter()
            .flat_map(|&i| self.nodes[i].inputs.iter().map(String::as_str))
            .filter(|x| !x.is_empty())
            .collect()
    }

    /// Cuts the model after the last node that reads a shared tensor for which `resident` is
    /// true (a weight another loaded model holds): the trunk is every kept node that reads one
    /// and every node those depend on; the head is the rest. `None` when nothing resident is
    /// read, when the head would be empty or would not need the trunk, when a graph output
    /// comes from the trunk, or when the graph cannot be split (subgraphs, external data,
    /// sparse or overridable initializers).
    pub fn split(&self, model: &[u8], resident: impl Fn(&Key) -> bool) -> Option<Split> {
        if self.unsplittable {
            return None;
        }
        let init_names: HashSet<&str> = self.inits.iter().map(|i| i.name.as_str()).collect();
        if self
            .graph_inputs
            .iter()
            .any(|(n, _)| init_names.contains(n.as_str()))
        {
            return None;
        }
        let shared = self.shared_names();
        let kept: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].folded)
            .collect();
        let producer: HashMap<&str, usize> = kept
            .iter()
            .flat_map(|&i| {
                self.nodes[i]
                    .outputs
                    .iter()
                    .filter(|o| !o.is_empty())
                    .map(move |o| (o.as_str(), i))
            })
            .collect();
        let mut in_trunk = vec![false; self.nodes.len()];
        let mut stack: Vec<usize> = kept
            .iter()
            .copied()
            .filter(|&i| {
                self.nodes[i]
                    .inputs
                    .iter()
                    .any(|x| shared.get(x.as_str()).is_some_and(&resident))
            })
            .collect();
        if stack.is_empty() {
            return None;
        }
        for &i in &stack {
            in_trunk[i] = true;
        }
        while let Some(c) = stack.pop() {
            for x in &self.nodes[c].inputs {
                if let Some(&p) = producer.get(x.as_str()) {
                    if !in_trunk[p] {
                        in_trunk[p] = true;
                        stack.push(p);
                    }
                }
            }
        }
        let trunk: Vec<usize> = kept.iter().copied().filter(|&i| in_trunk[i]).collect();
        let head: Vec<usize> = kept.iter().copied().filter(|&i| !in_trunk[i]).collect();
        let head_out: HashSet<&str> = head
            .iter()
            .flat_map(|&i| self.nodes[i].outputs.iter().map(String::as_str))
            .collect();
        if head.is_empty()
            || !self
                .graph_outputs
                .iter()
                .all(|(o, _)| head_out.contains(o.as_str()))
        {
            return None;
        }
        let trunk_out: HashSet<&str> = trunk
            .iter()
            .flat_map(|&i| self.nodes[i].outputs.iter().map(String::as_str))
            .collect();
        let (trunk_reads, head_reads) = (self.reads(&trunk), self.reads(&head));
        let mut boundary: Vec<String> = head_reads
            .iter()
            .filter(|x| trunk_out.contains(*x))
            .map(|x| x.to_string())
            .collect();
        if boundary.is_empty() {
            return None;
        }
        boundary.sort_unstable();
        let inputs: Vec<String> = self.graph_inputs.iter().map(|(n, _)| n.clone()).collect();
        let pick = |reads: &HashSet<&str>| -> Vec<String> {
            inputs
                .iter()
                .filter(|n| reads.contains(n.as_str()))
                .cloned()
                .collect()
        };
        let (trunk_inputs, head_inputs) = (pick(&trunk_reads), pick(&head_reads));
        // The key: what the trunk computes and from what.
        let mut h = Sha256::new();
        h.update(b"herd-trunk-v1\0");
        let put = |h: &mut Sha256, b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        for (f, &n) in self.model_fields.iter().zip(&self.model_field_numbers) {
            if n == 1 || n == 8 {
                put(&mut h, &model[f.clone()]);
            }
        }
        for &i in &trunk {
            put(&mut h, &model[self.nodes[i].raw.clone()]);
        }
        let mut read: Vec<&str> = trunk_reads
            .iter()
            .copied()
            .filter(|x| shared.contains_key(x) || init_names.contains(x))
            .collect();
        read.sort_unstable();
        for name in read {
            put(&mut h, name.as_bytes());
            match shared.get(name) {
                Some(k) => put(&mut h, k),
                None => {
                    for i in self.inits.iter().filter(|i| i.name == name) {
                        put(&mut h, &model[i.raw.clone()]);
                    }
                }
            }
        }
        for (n, f) in &self.graph_inputs {
            if trunk_inputs.contains(n) {
                put(&mut h, &model[f.clone()]);
            }
        }
        for b in &boundary {
            put(&mut h, b.as_bytes());
        }
        let shared_read = |reads: &HashSet<&str>| -> Vec<String> {
            let mut v: Vec<String> = reads
                .iter()
                .filter(|x| shared.contains_key(*x))
                .map(|x| x.to_string())
                .collect();
            v.sort_unstable();
            v
        };
        Some(Split {
            key: h.finalize().into(),
            trunk,
            trunk_inputs,
            head_inputs,
            boundary,
            inputs,
            trunk_shared: shared_read(&trunk_reads),
            head_shared: shared_read(&head_reads),
        })
    }

    /// The trunk of `split` as a model: the graph inputs it reads, its nodes and what they
    /// read (shared tensors as placeholders, from `placeholders`), the boundary as outputs.
    pub fn trunk_model(
        &self,
        model: &[u8],
        split: &Split,
        placeholders: &[Placeholder],
    ) -> Vec<u8> {
        let inputs: Vec<Vec<u8>> = self
            .graph_inputs
            .iter()
            .filter(|(n, _)| split.trunk_inputs.contains(n))
            .map(|(_, f)| model[f.clone()].to_vec())
            .collect();
        let outputs: Vec<Vec<u8>> = split
            .boundary
            .iter()
            .map(|b| {
                // A name-only ValueInfoProto: the engine infers the type.
                let mut vi = Vec::new();
                put_field(&mut vi, 1, b.as_bytes());
                let mut f = Vec::new();
                put_field(&mut f, 12, &vi);
                f
            })
            .collect();
        self.sub_model(
            model,
            &split.trunk,
            &inputs,
            &outputs,
            placeholders,
            "herd-trunk",
        )
    }

    /// The head of `split` as a model: the graph inputs it reads plus the boundary (typed by
    /// `boundary_types`, ONNX element types in `split.boundary` order), the other kept nodes,
    /// the graph's outputs.
    pub fn head_model(
        &self,
        model: &[u8],
        split: &Split,
        boundary_types: &[i32],
        placeholders: &[Placeholder],
    ) -> Vec<u8> {
        let in_trunk: HashSet<usize> = split.trunk.iter().copied().collect();
        let head: Vec<usize> = (0..self.nodes.len())
            .filter(|i| !self.nodes[*i].folded && !in_trunk.contains(i))
            .collect();
        let mut inputs: Vec<Vec<u8>> = self
            .graph_inputs
            .iter()
            .filter(|(n, _)| split.head_inputs.contains(n))
            .map(|(_, f)| model[f.clone()].to_vec())
            .collect();
        for (b, &ty) in split.boundary.iter().zip(boundary_types) {
            let vi = crate::proto::ValueInfoProto {
                name: Some(b.clone()),
                r#type: Some(crate::proto::TypeProto {
                    tensor_type: Some(crate::proto::TypeProtoTensor {
                        elem_type: Some(ty),
                        shape: None,
                    }),
                    ..Default::default()
                }),
                doc_string: None,
            };
            let mut f = Vec::new();
            put_field(&mut f, 11, &vi.encode_to_vec());
            inputs.push(f);
        }
        let outputs: Vec<Vec<u8>> = self
            .graph_outputs
            .iter()
            .map(|(_, f)| model[f.clone()].to_vec())
            .collect();
        self.sub_model(model, &head, &inputs, &outputs, placeholders, "herd-head")
    }

    /// A model of `nodes` with the given whole input/output fields, the initializers those
    /// nodes read, and the placeholders among them.
    fn sub_model(
        &self,
        model: &[u8],
        nodes: &[usize],
        inputs: &[Vec<u8>],
        outputs: &[Vec<u8>],
        placeholders: &[Placeholder],
        name: &str,
    ) -> Vec<u8> {
        let read = self.reads(nodes);
        let replaced: HashSet<&str> = placeholders.iter().map(|p| p.name.as_str()).collect();
        let mut graph = Vec::new();
        put_field(&mut graph, 2, name.as_bytes());
        for &n in nodes {
            put_field(&mut graph, 1, &model[self.nodes[n].raw.clone()]);
        }
        for init in &self.inits {
            if read.contains(init.name.as_str()) && !replaced.contains(init.name.as_str()) {
                put_field(&mut graph, 5, &model[init.raw.clone()]);
            }
        }
        for p in placeholders {
            if read.contains(p.name.as_str()) {
                put_field(&mut graph, 5, &placeholder(p));
            }
        }
        for f in inputs.iter().chain(outputs) {
            graph.extend_from_slice(f);
        }
        let mut out = Vec::with_capacity(graph.len() + 1024);
        for f in &self.model_fields {
            out.extend_from_slice(&model[f.clone()]);
        }
        put_field(&mut out, 7, &graph);
        out
    }
}

/// Plans the sharing of `model`'s initializers of at least `threshold` bytes.
///
/// Models that keep tensors in external files, that have subgraphs (`If`, `Loop`, `Scan`), or
/// whose initializers are overridable graph inputs are not folded; their large inline
/// initializers are still shared unless they are overridable.
pub fn analyze(model: &[u8], threshold: usize) -> Result<Analysis, OnnxError> {
    let bad = |what: &str| OnnxError::NotOnnx(format!("malformed protobuf: {what}"));
    let mut model_fields = Vec::new();
    let mut model_field_numbers = Vec::new();
    let mut graph_range = None;
    for f in fields(model, 0).map_err(|e| bad(&e))? {
        if f.number == 7 && f.wire == 2 {
            graph_range = Some(f.payload.clone());
        } else {
            model_fields.push(f.whole.clone());
            model_field_numbers.push(f.number);
        }
    }
    let graph_range =
        graph_range.ok_or_else(|| OnnxError::NotOnnx("the model has no graph".into()))?;
    let mut graph_fields = Vec::new();
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut graph_inputs = HashSet::new();
    let mut graph_outputs = HashSet::new();
    let mut input_fields = Vec::new();
    let mut output_names = Vec::new();
    let mut unsplittable = false;
    let mut has_subgraph = false;
    let mut has_external = false;
    let mut large: HashMap<String, RawShared> = HashMap::new();
    for f in fields(&model[graph_range.clone()], graph_range.start).map_err(|e| bad(&e))? {
        match (f.number, f.wire) {
            (1, 2) => {
                let node = NodeProto::decode(&model[f.payload.clone()])
                    .map_err(|e| bad(&e.to_string()))?;
                let domain = node.domain.as_deref().unwrap_or("");
                let op = node.op_type.as_deref().unwrap_or("");
                let sub = node.attribute.iter().any(|a| {
                    a.g.is_some()
                        || matches!(a.r#type, Some(t) if t == attribute_type::GRAPH || t == 10)
                });
                has_subgraph |= sub;
                // Deterministic standard ops only; anything else is left to the engine.
                let foldable_op = (domain.is_empty() || domain == "ai.onnx")
                    && !matches!(
                        op,
                        "RandomNormal"
                            | "RandomUniform"
                            | "RandomNormalLike"
                            | "RandomUniformLike"
                            | "Multinomial"
                            | "Bernoulli"
                    )
                    && !sub;
                nodes.push((
                    Node {
                        raw: f.payload.clone(),
                        inputs: node.input,
                        outputs: node.output,
                        folded: false,
                    },
                    foldable_op,
                ));
            }
            (5, 2) => {
                let t = tensor_fields(model, f.payload.clone()).map_err(|e| bad(&e))?;
                has_external |= t.external;
                let name = t.name.clone().unwrap_or_default();
                let key = match (&t.raw_data, t.external) {
                    (Some(r), false) if r.len() >= threshold && numeric(t.data_type) => {
                        let key = tensor_key(t.data_type, &t.dims, &model[r.clone()]);
                        large.insert(
                            name.clone(),
                            RawShared {
                                name: name.clone(),
                                key,
                                elem_type: t.data_type,
                                dims: t.dims.clone(),
                                data: r.clone(),
                            },
                        );
                        Some(key)
                    }
                    _ => None,
                };
                inits.push(Init {
                    raw: f.payload.clone(),
                    name,
                    key,
                });
            }
            (11, 2) | (12, 2) => {
                let vi = crate::proto::ValueInfoProto::decode(&model[f.payload.clone()])
                    .map_err(|e| bad(&e.to_string()))?;
                let name = vi.name.unwrap_or_default();
                if f.number == 11 {
                    input_fields.push((name.clone(), f.whole.clone()));
                    graph_inputs.insert(name);
                } else {
                    output_names.push((name.clone(), f.whole.clone()));
                    graph_outputs.insert(name);
                }
                graph_fields.push(f.whole.clone());
            }
            (15, _) => {
                unsplittable = true;
                graph_fields.push(f.whole.clone());
            }
            _ => graph_fields.push(f.whole.clone()),
        }
    }
    // An initializer that is also a graph input can be overridden per run: never shared.
    large.retain(|name, _| !graph_inputs.contains(name));
    let init_names: HashSet<&str> = inits
        .iter()
        .filter(|i| !graph_inputs.contains(&i.name))
        .map(|i| i.name.as_str())
        .collect();
    let fold_enabled = !has_subgraph && !has_external;

    // Which nodes are foldable: all inputs constant, and some constant input is (or comes from) a
    // large initializer. One pass in graph order, then a fixpoint for out-of-order graphs.
    let mut constant: HashSet<String> = HashSet::new();
    let mut heavy: HashSet<String> = HashSet::new();
    let mut folded = vec![false; nodes.len()];
    if fold_enabled {
        loop {
            let mut changed = false;
            for (i, (n, ok)) in nodes.iter().enumerate() {
                if folded[i] || !ok || n.outputs.is_empty() {
                    continue;
                }
                let all_const = n.inputs.iter().all(|x| {
                    x.is_empty() || init_names.contains(x.as_str()) || constant.contains(x)
                });
                if !all_const {
                    continue;
                }
                let is_heavy = n
                    .inputs
                    .iter()
                    .any(|x| large.contains_key(x) || heavy.contains(x));
                if !is_heavy {
                    // Small constant work stays with the engine's own folding.
                    continue;
                }
                folded[i] = true;
                changed = true;
                for o in &n.outputs {
                    constant.insert(o.clone());
                    heavy.insert(o.clone());
                }
            }
            if !changed {
                break;
            }
        }
    }
    let mut nodes: Vec<Node> = nodes
        .into_iter()
        .zip(&folded)
        .map(|((mut n, _), &f)| {
            n.folded = f;
            n
        })
        .collect();
    // Outputs of folded nodes read by kept nodes or the graph's outputs.
    let kept_reads: HashSet<&str> = nodes
        .iter()
        .filter(|n| !n.folded)
        .flat_map(|n| n.inputs.iter().map(String::as_str))
        .chain(graph_outputs.iter().map(String::as_str))
        .collect();
    let producer: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.folded)
        .flat_map(|(i, n)| n.outputs.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let init_key: HashMap<&str, &Init> = inits.iter().map(|i| (i.name.as_str(), i)).collect();
    let mut folds = Vec::new();
    for (i, n) in nodes.iter().enumerate().filter(|(_, n)| n.folded) {
        for o in &n.outputs {
            if o.is_empty() || !kept_reads.contains(o.as_str()) {
                continue;
            }
            // The cone: every folded node this output depends on.
            let mut cone = vec![i];
            let mut stack = vec![i];
            let mut seen: HashSet<usize> = [i].into();
            while let Some(c) = stack.pop() {
                for x in &nodes[c].inputs {
                    if let Some(&p) = producer.get(x.as_str()) {
                        if seen.insert(p) {
                            cone.push(p);
                            stack.push(p);
                        }
                    }
                }
            }
            cone.sort_unstable();
            let mut h = Sha256::new();
            h.update(b"herd-fold-v1\0");
            let mut cone_inits: Vec<&str> = Vec::new();
            for &c in &cone {
                let raw = &model[nodes[c].raw.clone()];
                h.update((raw.len() as u64).to_le_bytes());
                h.update(raw);
                for x in &nodes[c].inputs {
                    if init_key.contains_key(x.as_str()) {
                        cone_inits.push(x.as_str());
                    }
                }
            }
            cone_inits.sort_unstable();
            cone_inits.dedup();
            for name in cone_inits {
                let init = init_key[name];
                h.update((name.len() as u64).to_le_bytes());
                h.update(name.as_bytes());
                match init.key {
                    Some(k) => h.update(k),
                    None => {
                        let raw = &model[init.raw.clone()];
                        h.update((raw.len() as u64).to_le_bytes());
                        h.update(raw);
                    }
                }
            }
            h.update(o.as_bytes());
            folds.push(Fold {
                name: o.clone(),
                key: h.finalize().into(),
                nodes: cone,
            });
        }
    }
    // Large initializers still read by kept nodes (or exposed as graph outputs) are shared as
    // they are; those only the folded nodes read disappear with them.
    let mut raw_shared: Vec<RawShared> = large
        .into_values()
        .filter(|r| kept_reads.contains(r.name.as_str()))
        .collect();
    raw_shared.sort_by(|a, b| a.name.cmp(&b.name));
    let mut stripped_bytes: u64 = raw_shared.iter().map(|r| r.data.len() as u64).sum();
    let read_by_kept: HashSet<&str> = kept_reads.clone();
    for init in &inits {
        if !read_by_kept.contains(init.name.as_str())
            && nodes
                .iter()
                .any(|n| n.folded && n.inputs.contains(&init.name))
        {
            stripped_bytes += init.raw.len() as u64;
        }
    }
    // Nodes are kept in a plain Vec; mark unused to keep the borrow checker simple.
    nodes.shrink_to_fit();
    Ok(Analysis {
        model_fields,
        graph_fields,
        nodes,
        inits,
        raw_shared,
        folds,
        stripped_bytes,
        model_field_numbers,
        graph_inputs: input_fields,
        graph_outputs: output_names,
        unsplittable: unsplittable || has_subgraph || has_external,
    })
}

/// The content key of a tensor: element type, dims and bytes.
pub fn tensor_key(elem: i32, dims: &[i64], data: &[u8]) -> Key {
    let mut h = Sha256::new();
    h.update(b"herd-tensor-v1\0");
    h.update(elem.to_le_bytes());
    h.update((dims.len() as u64).to_le_bytes());
    for d in dims {
        h.update(d.to_le_bytes());
    }
    h.update(data);
    h.finalize().into()
}

/// Element types herd can hand to an engine as a shared tensor.
fn numeric(t: i32) -> bool {
    matches!(
        t,
        elem_type::FLOAT
            | elem_type::DOUBLE
            | elem_type::INT8
            | elem_type::UINT8
            | elem_type::INT16
            | elem_type::UINT16
            | elem_type::INT32
            | elem_type::UINT32
            | elem_type::INT64
            | elem_type::UINT64
            | elem_type::BOOL
    )
}

fn placeholder(p: &Placeholder) -> Vec<u8> {
    let mut t = Vec::new();
    for d in &p.dims {
        put_key(&mut t, 1, 0);
        put_varint(&mut t, *d as u64);
    }
    put_key(&mut t, 2, 0);
    put_varint(&mut t, p.elem_type as u64);
    put_field(&mut t, 8, p.name.as_bytes());
    for (k, v) in [
        ("location", PLACEHOLDER_LOCATION.to_string()),
        ("offset", "0".to_string()),
        ("length", p.bytes.to_string()),
    ] {
        let mut e = Vec::new();
        put_field(&mut e, 1, k.as_bytes());
        put_field(&mut e, 2, v.as_bytes());
        put_field(&mut t, 13, &e);
    }
    // data_location = EXTERNAL
    put_key(&mut t, 14, 0);
    put_varint(&mut t, 1);
    t
}

struct TensorFields {
    name: Option<String>,
    data_type: i32,
    dims: Vec<i64>,
    raw_data: Option<std::ops::Range<usize>>,
    external: bool,
}

fn tensor_fields(model: &[u8], range: std::ops::Range<usize>) -> Result<TensorFields, String> {
    let mut t = TensorFields {
        name: None,
        data_type: 0,
        dims: Vec::new(),
        raw_data: None,
        external: false,
    };
    for f in fields(&model[range.clone()], range.start)? {
        let p = &model[f.payload.clone()];
        match (f.number, f.wire) {
            (1, 0) => t.dims.push(f.varint as i64),
            (1, 2) => {
                let mut buf = p;
                while !buf.is_empty() {
                    let (v, n) = varint(buf).ok_or("bad packed dims")?;
                    t.dims.push(v as i64);
                    buf = &buf[n..];
                }
            }
            (2, 0) => t.data_type = f.varint as i32,
            (8, 2) => t.name = Some(String::from_utf8_lossy(p).into_owned()),
            (9, 2) => t.raw_data = Some(f.payload.clone()),
            (13, 2) => t.external = true,
            (14, 0) => t.external |= f.varint == 1,
            _ => {}
        }
    }
    Ok(t)
}

struct WireField {
    number: u32,
    wire: u8,
    /// The whole field, key included (absolute range).
    whole: std::ops::Range<usize>,
    /// The payload of a length-delimited field (absolute range).
    payload: std::ops::Range<usize>,
    /// The value of a varint field.
    varint: u64,
}

/// The fields of one message; ranges are offset by `base` (the message's position).
fn fields(buf: &[u8], base: usize) -> Result<Vec<WireField>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let (key, n) = varint(&buf[pos..]).ok_or("truncated key")?;
        pos += n;
        let number = (key >> 3) as u32;
        let wire = (key & 7) as u8;
        let mut payload = pos..pos;
        let mut value = 0;
        match wire {
            0 => {
                let (v, n) = varint(&buf[pos..]).ok_or("truncated varint")?;
                value = v;
                pos += n;
            }
            1 => pos += 8,
            2 => {
                let (len, n) = varint(&buf[pos..]).ok_or("truncated length")?;
                pos += n;
                let len = usize::try_from(len).map_err(|_| "length overflow")?;
                let end = pos.checked_add(len).ok_or("length overflow")?;
                payload = pos..end;
                pos = end;
            }
            5 => pos += 4,
            w => return Err(format!("unsupported wire type {w}")),
        }
        if pos > buf.len() {
            return Err("truncated field".into());
        }
        out.push(WireField {
            number,
            wire,
            whole: base + start..base + pos,
            payload: base + payload.start..base + payload.end,
            varint: value,
        });
    }
    Ok(out)
}

fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_key(out: &mut Vec<u8>, number: u32, wire: u8) {
    put_varint(out, (u64::from(number) << 3) | u64::from(wire));
}

fn put_field(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    put_key(out, number, 2);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{GraphProto, ModelProto, OperatorSetIdProto, TensorProto, ValueInfoProto};

    fn tensor(name: &str, dims: &[i64], bytes: Vec<u8>, ty: i32) -> TensorProto {
        TensorProto {
            dims: dims.to_vec(),
            data_type: Some(ty),
            name: Some(name.into()),
            raw_data: Some(bytes),
            ..Default::default()
        }
    }

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            op_type: Some(op.into()),
            ..Default::default()
        }
    }

    /// y = x @ (Cast(wq) * scale) + head_b, with wq large (int8) and the head small.
    fn model(head: f32) -> Vec<u8> {
        let n = 300usize; // 300x300 int8 = 90,000 bytes > 64 KiB
        let wq: Vec<u8> = (0..n * n).map(|i| (i % 251) as u8).collect();
        let g = GraphProto {
            node: vec![
                node("Cast", &["wq"], &["wf"]),
                node("Mul", &["wf", "scale"], &["w"]),
                node("MatMul", &["x", "w"], &["h"]),
                node("Add", &["h", "b"], &["y"]),
            ],
            name: Some("g".into()),
            initializer: vec![
                tensor("wq", &[n as i64, n as i64], wq, elem_type::INT8),
                tensor(
                    "scale",
                    &[],
                    0.5f32.to_le_bytes().to_vec(),
                    elem_type::FLOAT,
                ),
                tensor("b", &[1], head.to_le_bytes().to_vec(), elem_type::FLOAT),
            ],
            input: vec![ValueInfoProto::tensor(
                "x",
                elem_type::FLOAT,
                &[-1, n as i64],
            )],
            output: vec![ValueInfoProto::tensor(
                "y",
                elem_type::FLOAT,
                &[-1, n as i64],
            )],
            ..Default::default()
        };
        let mut cast = g.node[0].clone();
        cast.attribute.push(crate::proto::AttributeProto::int(
            "to",
            elem_type::FLOAT as i64,
        ));
        let mut g = g;
        g.node[0] = cast;
        ModelProto {
            ir_version: Some(8),
            graph: Some(g),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn folds_the_dequantisation_and_keys_it_by_content() {
        let a = model(1.0);
        let b = model(2.0);
        let pa = analyze(&a, DEFAULT_THRESHOLD).unwrap();
        let pb = analyze(&b, DEFAULT_THRESHOLD).unwrap();
        assert!(pa.raw_shared.is_empty(), "wq is only read by folded nodes");
        assert_eq!(pa.folds.len(), 1);
        assert_eq!(pa.folds[0].name, "w");
        assert_eq!(pa.folds[0].key, pb.folds[0].key, "same encoder, same key");
        // A different weight gives a different key.
        let mut m = ModelProto::decode(&a[..]).unwrap();
        m.graph.as_mut().unwrap().initializer[0]
            .raw_data
            .as_mut()
            .unwrap()[7] ^= 1;
        let c = m.encode_to_vec();
        let pc = analyze(&c, DEFAULT_THRESHOLD).unwrap();
        assert_ne!(pc.folds[0].key, pa.folds[0].key);
        assert!(pa.stripped_bytes >= 90_000);
    }

    #[test]
    fn rewrite_drops_folded_nodes_and_writes_a_placeholder() {
        let a = model(1.0);
        let p = analyze(&a, DEFAULT_THRESHOLD).unwrap();
        let out = p.rewrite(
            &a,
            &[Placeholder {
                name: "w".into(),
                elem_type: elem_type::FLOAT,
                dims: vec![300, 300],
                bytes: 360_000,
            }],
        );
        assert!(out.len() < 2_000, "{} bytes", out.len());
        let m = ModelProto::decode(&out[..]).unwrap();
        let g = m.graph.unwrap();
        let ops: Vec<_> = g.node.iter().map(|n| n.op_type.clone().unwrap()).collect();
        assert_eq!(ops, ["MatMul", "Add"]);
        let names: Vec<_> = g
            .initializer
            .iter()
            .map(|t| t.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["b", "w"], "wq and scale only fed the folded nodes");
        let w = &g.initializer[1];
        assert_eq!(w.dims, [300, 300]);
        assert!(w.raw_data.is_none());
        assert_eq!(m.opset_import.len(), 1);
        assert_eq!(m.ir_version, Some(8));
    }

    #[test]
    fn mini_model_computes_the_fold_from_its_inputs() {
        let a = model(1.0);
        let p = analyze(&a, DEFAULT_THRESHOLD).unwrap();
        let mini = ModelProto::decode(&p.mini_model(&a, &[0])[..]).unwrap();
        let g = mini.graph.unwrap();
        assert_eq!(g.node.len(), 2);
        assert!(g.input.is_empty());
        assert_eq!(g.output[0].name.as_deref(), Some("w"));
        let names: Vec<_> = g
            .initializer
            .iter()
            .map(|t| t.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["wq", "scale"]);
    }

    #[test]
    fn a_large_initializer_read_directly_is_shared_as_it_is() {
        let n = 200usize;
        let w: Vec<u8> = (0..n * n * 4).map(|i| (i % 7) as u8).collect();
        let g = GraphProto {
            node: vec![node("MatMul", &["x", "w"], &["y"])],
            initializer: vec![tensor("w", &[n as i64, n as i64], w, elem_type::FLOAT)],
            input: vec![ValueInfoProto::tensor(
                "x",
                elem_type::FLOAT,
                &[-1, n as i64],
            )],
            output: vec![ValueInfoProto::tensor(
                "y",
                elem_type::FLOAT,
                &[-1, n as i64],
            )],
            ..Default::default()
        };
        let m = ModelProto {
            ir_version: Some(8),
            graph: Some(g.clone()),
            ..Default::default()
        }
        .encode_to_vec();
        let p = analyze(&m, DEFAULT_THRESHOLD).unwrap();
        assert!(p.folds.is_empty());
        assert_eq!(p.raw_shared.len(), 1);
        assert_eq!(p.raw_shared[0].data.len(), n * n * 4);
        assert_eq!(&m[p.raw_shared[0].data.clone()][..4], &[0, 1, 2, 3]);
        // Overridable (also a graph input): never shared.
        let mut g2 = g;
        g2.input.push(ValueInfoProto::tensor(
            "w",
            elem_type::FLOAT,
            &[n as i64, n as i64],
        ));
        let m2 = ModelProto {
            graph: Some(g2),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(!analyze(&m2, DEFAULT_THRESHOLD).unwrap().shares_anything());
    }

    #[test]
    fn splits_after_the_last_node_that_reads_a_resident_weight() {
        let (a, b) = (model(1.0), model(2.0));
        let (pa, pb) = (
            analyze(&a, DEFAULT_THRESHOLD).unwrap(),
            analyze(&b, DEFAULT_THRESHOLD).unwrap(),
        );
        assert!(
            pa.split(&a, |_| false).is_none(),
            "nothing resident: no split"
        );
        let sa = pa.split(&a, |_| true).unwrap();
        let sb = pb.split(&b, |_| true).unwrap();
        assert_eq!(sa.key, sb.key, "same encoder, different heads: same trunk");
        assert_eq!(sa.boundary, ["h"]);
        assert_eq!(sa.trunk_inputs, ["x"]);
        assert!(sa.head_inputs.is_empty());
        // A different encoder weight gives a different trunk.
        let mut m = ModelProto::decode(&a[..]).unwrap();
        m.graph.as_mut().unwrap().initializer[0]
            .raw_data
            .as_mut()
            .unwrap()[3] ^= 1;
        let c = m.encode_to_vec();
        let pc = analyze(&c, DEFAULT_THRESHOLD).unwrap();
        assert_ne!(pc.split(&c, |_| true).unwrap().key, sa.key);
        let w = Placeholder {
            name: "w".into(),
            elem_type: elem_type::FLOAT,
            dims: vec![300, 300],
            bytes: 360_000,
        };
        let trunk =
            ModelProto::decode(&pa.trunk_model(&a, &sa, std::slice::from_ref(&w))[..]).unwrap();
        let g = trunk.graph.unwrap();
        let ops: Vec<_> = g.node.iter().map(|n| n.op_type.clone().unwrap()).collect();
        assert_eq!(ops, ["MatMul"]);
        assert_eq!(g.initializer.len(), 1);
        assert!(
            g.initializer[0].raw_data.is_none(),
            "the weight is a placeholder"
        );
        assert_eq!(g.input[0].name.as_deref(), Some("x"));
        assert_eq!(g.output[0].name.as_deref(), Some("h"));
        let head =
            ModelProto::decode(&pa.head_model(&a, &sa, &[elem_type::FLOAT], &[w])[..]).unwrap();
        let g = head.graph.unwrap();
        let ops: Vec<_> = g.node.iter().map(|n| n.op_type.clone().unwrap()).collect();
        assert_eq!(ops, ["Add"]);
        let names: Vec<_> = g
            .initializer
            .iter()
            .map(|t| t.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["b"]);
        assert_eq!(g.input.len(), 1);
        assert_eq!(g.input[0].name.as_deref(), Some("h"));
        assert_eq!(g.output[0].name.as_deref(), Some("y"));
        assert_eq!(head.opset_import.len(), 1);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(analyze(&[0xff, 0xff, 0xff], DEFAULT_THRESHOLD).is_err());
        assert!(analyze(&[], DEFAULT_THRESHOLD).is_err());
        assert!(analyze(&[0x3a, 0x10, 0x01], DEFAULT_THRESHOLD).is_err());
    }
}
