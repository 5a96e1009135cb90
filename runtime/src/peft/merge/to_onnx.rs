//! Writing a merged model as ONNX.
//!
//! The shipped file is rewritten, not regenerated: [`crate::onnx::write::rewrite_model`] copies
//! it field by field and re-encodes only the initializers a merge changed, plus the few nodes a
//! merge must add. Regenerating the file from the fused graph would lose everything the fused
//! graph does not keep (the original op decomposition, doc strings, `value_info`, metadata) and
//! would have to encode kilotune's fused ops, which ONNX has no names for; rewriting keeps the
//! file the user shipped, with new numbers in it.
//!
//! Each fused `Linear` is found in the file from its output value, whose name the fusion keeps
//! (ONNX value names are unique; node names need not be): `MatMul` (+ bias `Add`) for an f32
//! layer, ONNX Runtime's `DynamicQuantizeLinear` → `MatMulInteger` → `Cast` → `Mul` (+ `Add`)
//! for an int8 one. A changed initializer read by that one node only is replaced in place;
//! one shared with other readers (tied weights) gets a new initializer for this node alone.
//! Additions are plain ONNX ops:
//!
//! - a bias a layer did not have (BitFit on a bias-free model): an `Add` after the layer;
//! - an int8 layer's LoRA side path: `MatMul(x, Aᵀ)` → `Mul(alpha/r)` → `MatMul(·, Bᵀ)` added to
//!   the layer's output, exactly what a session computes;
//! - a task head ([`HEAD_OUTPUT`], [`REGRESSION_OUTPUT`]): the pooling (mean over
//!   `attention_mask`, or the first token) and the linear layer, as `MatMul` + `Add` rather
//!   than `Gemm`, so kilotune reloads the file too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{merge_graph, MergeError, MergeOptions, MergeReport};
use crate::base::Base;
use crate::delta::Delta;
use crate::error::Result;
use crate::graph::Graph;
use crate::onnx::proto::{AttributeProto, DimProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use crate::onnx::write::{attr_kind, rewrite_model, ModelEdit};
use crate::ops::{Linear, LinearWeight, LoraPatch, Op};
use crate::peft::apply::{check_base, HEAD_PREFIX};
use crate::peft::{PeftMethod, Pooling, TaskHead};

/// The name of a classification head's output in a merged file (`task_logits` when the model
/// already has an output called `logits`).
pub const HEAD_OUTPUT: &str = "logits";

/// The name of a regression head's output in a merged file (`task_predictions` when taken).
pub const REGRESSION_OUTPUT: &str = "predictions";

/// ONNX `DataType` codes written here.
pub(super) const FLOAT: i32 = 1;
const INT8: i32 = 3;
const INT64: i32 = 7;

/// A merged model, serialized.
#[derive(Debug)]
pub struct MergedOnnx {
    /// The ONNX file's bytes.
    pub bytes: Vec<u8>,
    /// What the merge did (and, for requantized int8 layers, the error it introduced).
    pub report: MergeReport,
    /// The head's output, when the delta's task head was written.
    pub head_output: Option<String>,
    /// Whether the file still refers to external data files: it only loads beside them.
    pub external_data: bool,
}

/// Merges `delta` into the ONNX model `original` and returns the merged file.
///
/// `base` must be `original` loaded with the default [`crate::LoadOptions`] (as shipped, fused):
/// the delta is checked against its fingerprint, merged into its fused graph
/// ([`super::merge_graph`]), and every changed weight is written back where the fused layer came
/// from. The written file therefore holds exactly the merged weights a session would run.
pub fn merge_onnx(original: &[u8], base: &Base, delta: &Delta, options: &MergeOptions) -> Result<MergedOnnx> {
    check_base(delta, &base.fingerprint())?;
    let (merged, report) = merge_graph(base.graph(), delta, options)?;
    let model = ModelProto::decode(original)?;
    let mut w = Writer::new(&model);
    let (bg, mg) = (base.graph(), &merged);
    for (bn, mn) in bg.nodes.iter().zip(&mg.nodes) {
        let (Op::Linear(bl), Op::Linear(ml)) = (&bn.op, &mn.op) else { continue };
        let weight_changed = !same_weight(&bl.weight, &ml.weight);
        let bias_changed = bl.bias != ml.bias;
        if !weight_changed && !bias_changed && ml.lora.is_none() {
            continue;
        }
        let out = &bg.values[bn.outputs[0]].name;
        let site = w.locate(&ml.module, out, ml.is_int8())?;
        w.write_linear(ml, &site, out, weight_changed, bias_changed)?;
    }
    w.write_constants(bg, mg, delta)?;
    let head_output = if options.write_head { w.write_head(delta)? } else { None };
    let method = match &delta.method {
        PeftMethod::Lora(c) => format!("LoRA r={} alpha={}", c.r, c.alpha),
        other => format!("{other:?}"),
    };
    let (f32_layers, side, requantized) = report.counts();
    w.edit.set_metadata = vec![
        ("kilotune.merge.base_fingerprint".to_owned(), crate::delta::hex(&delta.base_fingerprint)),
        (
            "kilotune.merge".to_owned(),
            format!(
                "{method}; {f32_layers} f32 layers merged, {side} int8 side paths, {requantized} int8 layers requantized, {} biases, {} constants",
                report.biases, report.constants
            ),
        ),
    ];
    let bytes = rewrite_model(original, &w.edit)?;
    let external_data = model.graph.initializer.iter().any(|t| t.data_location == 1);
    Ok(MergedOnnx { bytes, report, head_output, external_data })
}

fn same_weight(a: &LinearWeight, b: &LinearWeight) -> bool {
    match (a, b) {
        (LinearWeight::F32(a), LinearWeight::F32(b)) => Arc::ptr_eq(a, b),
        (LinearWeight::I8(a), LinearWeight::I8(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

fn tensor(name: String, dims: Vec<i64>, data_type: i32, raw: Vec<u8>) -> TensorProto {
    TensorProto { name, dims, data_type, raw_data: raw, ..Default::default() }
}

pub(super) fn f32_tensor(dims: Vec<i64>, v: &[f32]) -> TensorProto {
    tensor(String::new(), dims, FLOAT, v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn i64_tensor(dims: Vec<i64>, v: &[i64]) -> TensorProto {
    tensor(String::new(), dims, INT64, v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// `m` [rows × cols] row-major, transposed.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = m[i * cols + j];
        }
    }
    t
}

pub(super) fn node(name: String, op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: vec![output.to_owned()],
        name,
        op_type: op.to_owned(),
        ..Default::default()
    }
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.to_owned(), kind: attr_kind::INT, i, ..Default::default() }
}

/// Where a fused `Linear` came from in the file (node indices).
pub(super) struct Site {
    /// The node that writes the layer's output (the bias `Add`, or the core op).
    pub(super) producer: usize,
    /// Which of its outputs that is.
    pub(super) out_slot: usize,
    pub(super) core: Core,
    /// The bias `Add` and the input slot the bias comes in on.
    pub(super) bias: Option<(usize, usize)>,
    /// The layer's input value.
    pub(super) x: String,
}

pub(super) enum Core {
    /// `MatMul(x, W)`.
    F32 { matmul: usize },
    /// `MatMulInteger(xq, Wq, ..)` and the `Mul(x_scale, w_scale)` with `w_scale` in `scale_slot`.
    I8 { mmi: usize, scale_mul: usize, scale_slot: usize },
}

/// What is added after a layer's output.
enum Stage<'a> {
    Bias(&'a [f32]),
    Lora(&'a LoraPatch),
}

pub(super) struct Writer<'m> {
    pub(super) model: &'m ModelProto,
    producer: HashMap<&'m str, usize>,
    /// Reads of each value by node input slots and graph outputs.
    readers: HashMap<&'m str, usize>,
    pub(super) inits: HashMap<&'m str, &'m TensorProto>,
    /// Every value and node name in use, so added ones are fresh.
    pub(super) names: HashSet<String>,
    pub(super) edit: ModelEdit,
}

impl<'m> Writer<'m> {
    pub(super) fn new(model: &'m ModelProto) -> Writer<'m> {
        let g = &model.graph;
        let mut producer = HashMap::new();
        let mut readers: HashMap<&str, usize> = HashMap::new();
        let mut names: HashSet<String> = HashSet::new();
        for (i, n) in g.node.iter().enumerate() {
            for o in &n.output {
                producer.insert(o.as_str(), i);
                names.insert(o.clone());
            }
            for v in n.input.iter().filter(|v| !v.is_empty()) {
                *readers.entry(v.as_str()).or_default() += 1;
            }
            names.insert(n.name.clone());
        }
        for o in &g.output {
            *readers.entry(o.name.as_str()).or_default() += 1;
        }
        names.extend(g.input.iter().map(|v| v.name.clone()));
        names.extend(g.output.iter().map(|v| v.name.clone()));
        names.extend(g.initializer.iter().map(|t| t.name.clone()));
        let inits = g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        Writer { model, producer, readers, inits, names, edit: ModelEdit::default() }
    }

    pub(super) fn node(&self, i: usize) -> &'m NodeProto {
        &self.model.graph.node[i]
    }

    /// `stem`, or `stem_1`, `stem_2`, ... : a name nothing in the file uses yet.
    pub(super) fn fresh(&mut self, stem: &str) -> String {
        let mut name = stem.to_owned();
        let mut i = 1;
        while self.names.contains(&name) {
            name = format!("{stem}_{i}");
            i += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// The node writing `value`, if it is a default-domain `op`.
    fn produced_by(&self, value: &str, op: &str) -> Option<usize> {
        let &i = self.producer.get(value)?;
        let n = self.node(i);
        (n.op_type == op && (n.domain.is_empty() || n.domain == "ai.onnx")).then_some(i)
    }

    /// Gives input `slot` of node `at` the value of `t`: in place when the initializer there is
    /// read by that slot alone, else as a new initializer for this node only.
    fn set_input(&mut self, at: usize, slot: usize, mut t: TensorProto) {
        let old = self.node(at).input[slot].as_str();
        if self.inits.contains_key(old) && self.readers.get(old) == Some(&1) {
            t.name = old.to_owned();
            self.edit.replace_initializers.push(t);
        } else {
            t.name = self.fresh(&format!("{old}.merged"));
            self.edit.rename_inputs.push((at, slot, t.name.clone()));
            self.edit.add_initializers.push(t);
        }
    }

    /// Adds a new initializer named after `stem`, returning its name.
    pub(super) fn add_init(&mut self, stem: &str, mut t: TensorProto) -> String {
        t.name = self.fresh(stem);
        let name = t.name.clone();
        self.edit.add_initializers.push(t);
        name
    }

    /// Finds the nodes a fused `Linear` writing `out` came from.
    pub(super) fn locate(&self, module: &str, out: &str, int8: bool) -> Result<Site> {
        let err = |reason: String| MergeError::OnnxLayout { module: module.to_owned(), reason };
        let &p = self.producer.get(out).ok_or_else(|| err(format!("no node writes `{out}`")))?;
        let pn = self.node(p);
        let out_slot = pn.output.iter().position(|o| o == out).unwrap_or(0);
        let core_op = if int8 { "Mul" } else { "MatMul" };
        let (core_value, bias) = if pn.op_type == "Add" {
            let slot = (0..2)
                .find(|&s| pn.input.get(s).is_some_and(|v| self.produced_by(v, core_op).is_some()))
                .ok_or_else(|| err(format!("the bias Add `{}` reads no {core_op}", pn.name)))?;
            (pn.input[slot].as_str(), Some((p, 1 - slot)))
        } else {
            (out, None)
        };
        let c = self.produced_by(core_value, core_op).ok_or_else(|| err(format!("`{core_value}` is not written by {core_op}")))?;
        let cn = self.node(c);
        if !int8 {
            let x = cn.input.first().cloned().ok_or_else(|| err("MatMul without inputs".into()))?;
            return Ok(Site { producer: p, out_slot, core: Core::F32 { matmul: c }, bias, x });
        }
        // int8: Mul(Cast(MatMulInteger(DQL(x)...)), Mul(x_scale, w_scale)).
        let find = |n: &NodeProto, op: &str| (0..n.input.len()).find_map(|s| self.produced_by(&n.input[s], op).map(|i| (s, i)));
        let (_, cast) = find(cn, "Cast").ok_or_else(|| err("the int8 output Mul reads no Cast".into()))?;
        let (_, mmi) = find(self.node(cast), "MatMulInteger").ok_or_else(|| err("the Cast reads no MatMulInteger".into()))?;
        let (_, scale_mul) = find(cn, "Mul").ok_or_else(|| err("the int8 output Mul reads no scale product".into()))?;
        let sn = self.node(scale_mul);
        let (xs_slot, dql) = find(sn, "DynamicQuantizeLinear").ok_or_else(|| err("the scale product reads no activation scale".into()))?;
        let x = self.node(dql).input.first().cloned().ok_or_else(|| err("DynamicQuantizeLinear without input".into()))?;
        Ok(Site { producer: p, out_slot, core: Core::I8 { mmi, scale_mul, scale_slot: 1 - xs_slot }, bias, x })
    }

    /// Writes a merged layer's weight, bias and side path.
    fn write_linear(&mut self, l: &Linear, site: &Site, out: &str, weight_changed: bool, bias_changed: bool) -> Result<()> {
        let err = |reason: String| MergeError::OnnxLayout { module: l.module.clone(), reason };
        let (k, n) = (l.k as i64, l.n as i64);
        let check = |t: Option<&&TensorProto>, dtype: i32, what: &str| match t {
            Some(t) if t.dims != [k, n] || t.data_type != dtype => {
                Err(err(format!("{what} `{}` is {:?} of type {}, the layer is {k}×{n}", t.name, t.dims, t.data_type)))
            }
            _ => Ok(()),
        };
        if weight_changed {
            match (&l.weight, &site.core) {
                (LinearWeight::F32(w), Core::F32 { matmul }) => {
                    check(self.inits.get(self.node(*matmul).input[1].as_str()), FLOAT, "weight")?;
                    self.set_input(*matmul, 1, f32_tensor(vec![k, n], w));
                }
                (LinearWeight::I8(p), Core::I8 { mmi, scale_mul, scale_slot }) => {
                    check(self.inits.get(self.node(*mmi).input[1].as_str()), INT8, "int8 weight")?;
                    let q: Vec<u8> = p.weights_kn().iter().map(|&v| v as u8).collect();
                    self.set_input(*mmi, 1, tensor(String::new(), vec![k, n], INT8, q));
                    let old = self.node(*scale_mul).input[*scale_slot].as_str();
                    let old_t = self.inits.get(old).ok_or_else(|| err(format!("weight scale `{old}` is not an initializer")))?;
                    let s = p.scales();
                    let scales = if old_t.dims.iter().product::<i64>() == 1 {
                        if s.iter().any(|x| x.to_bits() != s[0].to_bits()) {
                            return Err(err("the file has one weight scale, the merged layer has one per channel".into()).into());
                        }
                        vec![s[0]]
                    } else {
                        s.to_vec()
                    };
                    let dims = old_t.dims.clone();
                    self.set_input(*scale_mul, *scale_slot, f32_tensor(dims, &scales));
                }
                _ => return Err(err("the layer's weight type does not match the file's op".into()).into()),
            }
        }
        let mut stages = Vec::new();
        if bias_changed {
            let b = l.bias.as_deref().map(Vec::as_slice).unwrap_or(&[]);
            match site.bias {
                Some((add, slot)) => {
                    let old = self.node(add).input[slot].as_str();
                    let dims = self.inits.get(old).map_or(vec![n], |t| t.dims.clone());
                    self.set_input(add, slot, f32_tensor(dims, b));
                }
                None => stages.push(Stage::Bias(b)),
            }
        }
        if let Some(lora) = &l.lora {
            stages.push(Stage::Lora(lora));
        }
        if !stages.is_empty() {
            self.append_stages(l, site, out, &stages);
        }
        Ok(())
    }

    /// Renames the layer's output and adds `stages` after it, the last writing `out` again.
    fn append_stages(&mut self, l: &Linear, site: &Site, out: &str, stages: &[Stage<'_>]) {
        let (k, n, m) = (l.k as i64, l.n as i64, l.module.as_str());
        let mut cur = self.fresh(&format!("{out}_kt_pre"));
        self.edit.rename_outputs.push((site.producer, site.out_slot, cur.clone()));
        for (i, stage) in stages.iter().enumerate() {
            let result = if i + 1 == stages.len() { out.to_owned() } else { self.fresh(&format!("{out}_kt_{i}")) };
            match stage {
                Stage::Bias(b) => {
                    let bias = self.add_init(&format!("{m}.bias"), f32_tensor(vec![n], b));
                    let name = self.fresh(&format!("{m}/kt_bias/Add"));
                    self.edit.insert_after.push((site.producer, node(name, "Add", &[&cur, &bias], &result)));
                }
                Stage::Lora(lora) => {
                    let r = lora.r as i64;
                    let at = self.add_init(&format!("{m}.lora_A.T"), f32_tensor(vec![k, r], &transpose(&lora.a, lora.r, l.k)));
                    let sc = self.add_init(&format!("{m}.lora_scale"), f32_tensor(vec![], &[lora.scale]));
                    let bt = self.add_init(&format!("{m}.lora_B.T"), f32_tensor(vec![r, n], &transpose(&lora.b, l.n, lora.r)));
                    let down = self.fresh(&format!("{out}_kt_lora_down"));
                    let scaled = self.fresh(&format!("{out}_kt_lora_scaled"));
                    let up = self.fresh(&format!("{out}_kt_lora_up"));
                    let names: Vec<String> =
                        ["MatMul_A", "Mul_scale", "MatMul_B", "Add"].iter().map(|s| self.fresh(&format!("{m}/kt_lora/{s}"))).collect();
                    for nd in [
                        node(names[0].clone(), "MatMul", &[&site.x, &at], &down),
                        node(names[1].clone(), "Mul", &[&down, &sc], &scaled),
                        node(names[2].clone(), "MatMul", &[&scaled, &bt], &up),
                        node(names[3].clone(), "Add", &[&cur, &up], &result),
                    ] {
                        self.edit.insert_after.push((site.producer, nd));
                    }
                }
            }
            cur = result;
        }
    }

    /// Deltas on named constants (LayerNorm β, ...): their initializers are replaced in place,
    /// so every reader sees the change, as every reader of the constant does in a session.
    fn write_constants(&mut self, bg: &Graph, mg: &Graph, delta: &Delta) -> Result<()> {
        let linear_biases: HashSet<String> =
            bg.nodes.iter().filter_map(|n| if let Op::Linear(l) = &n.op { Some(format!("{}.bias", l.module)) } else { None }).collect();
        let linears: HashSet<&str> = bg.nodes.iter().filter_map(|n| if let Op::Linear(l) = &n.op { Some(l.module.as_str()) } else { None }).collect();
        for t in &delta.tensors {
            let name = t.name.as_str();
            // A Linear's own tensors (LoRA, a replaced weight, (IA)3 scales, a sparse diff)
            // went into its weight and bias, which `write_linear` wrote.
            let of_linear = name.rsplit_once('.').is_some_and(|(m, _)| linears.contains(m)) || name.ends_with(".lora_A") || name.ends_with(".lora_B");
            if name.starts_with(HEAD_PREFIX) || of_linear || linear_biases.contains(name) {
                continue;
            }
            let err = |reason: &str| MergeError::OnnxLayout { module: name.to_owned(), reason: reason.to_owned() };
            let value = mg.value_named(name).and_then(|v| mg.constant(v)).ok_or_else(|| err("no such constant in the merged graph"))?;
            let old = self.inits.get(name).ok_or_else(|| err("the constant is not an initializer of the file"))?;
            let v = value.as_slice::<f32>().ok_or_else(|| err("the constant is not f32"))?;
            let t = f32_tensor(old.dims.clone(), v);
            self.edit.replace_initializers.push(TensorProto { name: name.to_owned(), ..t });
        }
        Ok(())
    }

    /// Adds the delta's pooled head (classification or regression) as an extra output; returns
    /// its name. A causal LM's head is the base's own, so nothing is added for it.
    fn write_head(&mut self, delta: &Delta) -> Result<Option<String>> {
        let (classes, pooling, name) = match &delta.head {
            None | Some(TaskHead::CausalLm | TaskHead::MaskedLm) => return Ok(None),
            Some(TaskHead::Classification { classes, pooling }) => (*classes as usize, *pooling, HEAD_OUTPUT),
            Some(TaskHead::Regression { outputs }) => (*outputs as usize, crate::train::head::REGRESSION_POOLING, REGRESSION_OUTPUT),
        };
        let head = |what: &str| {
            let t = delta.tensor(&format!("{HEAD_PREFIX}{what}")).ok_or_else(|| MergeError::Head(format!("the delta has no `{HEAD_PREFIX}{what}`")))?;
            Ok::<_, crate::Error>((t.to_f32()?, t.shape.clone()))
        };
        let (weight, wshape) = head("weight")?;
        let (bias, _) = head("bias")?;
        let hidden = weight.len() / classes.max(1);
        if wshape != [classes as u32, hidden as u32] || bias.len() != classes {
            return Err(MergeError::Head(format!("head.weight {wshape:?} and head.bias [{}] do not fit {classes} classes", bias.len())).into());
        }
        let g = &self.model.graph;
        let opset = self.model.opset_import.iter().find(|(d, _)| d.is_empty() || d == "ai.onnx").map_or(0, |(_, v)| *v);
        if opset < 13 {
            return Err(MergeError::Head(format!("opset {opset}: the head needs opset 13 or later")).into());
        }
        let hidden_out = g.output.first().ok_or_else(|| MergeError::Head("the model has no output".into()))?.name.clone();
        let batch = g.input.first().and_then(|i| i.dims.first().cloned()).unwrap_or(DimProto::Unknown);
        let out = if self.names.contains(name) { self.fresh(&format!("task_{name}")) } else { self.fresh(name) };
        let v = |w: &mut Self, s: &str| w.fresh(&format!("head/{s}"));
        let pooled = v(self, "pooled");
        let mut nodes = match pooling {
            Pooling::Mean => self.mean_pool(&hidden_out, &pooled, opset)?,
            // The first position of every row, whatever the mask says, as the trainer pools.
            Pooling::Cls => {
                let zero = self.add_init("head/first", i64_tensor(vec![], &[0]));
                let mut gather = node(self.fresh("head/Gather"), "Gather", &[&hidden_out, &zero], &pooled);
                gather.attribute.push(int_attr("axis", 1));
                vec![gather]
            }
        };
        let z = v(self, "matmul");
        let wt = self.add_init("head.weight.T", f32_tensor(vec![hidden as i64, classes as i64], &transpose(&weight, classes, hidden)));
        let b = self.add_init("head.bias", f32_tensor(vec![classes as i64], &bias));
        nodes.push(node(self.fresh("head/MatMul"), "MatMul", &[&pooled, &wt], &z));
        nodes.push(node(self.fresh("head/Add"), "Add", &[&z, &b], &out));
        self.edit.append_nodes.extend(nodes);
        self.edit.add_outputs.push(ValueInfoProto { name: out.clone(), elem_type: FLOAT, dims: vec![batch, DimProto::Value(classes as i64)] });
        Ok(Some(out))
    }

    /// Nodes writing `pooled` = mean_s(hidden · m) / max(mean_s(m), 1e-9) = Σ m·h / Σ m, the
    /// trainer's mean pooling (it clamps the count at 1e-9 instead; both give 0 for an
    /// all-padding row).
    fn mean_pool(&mut self, hidden_out: &str, pooled: &str, opset: i64) -> Result<Vec<NodeProto>> {
        if !self.model.graph.input.iter().any(|i| i.name == "attention_mask") {
            return Err(MergeError::Head("the model has no `attention_mask` input to pool with".into()).into());
        }
        let v = |w: &mut Self, s: &str| w.fresh(&format!("head/{s}"));
        let (mask_f, mask3, masked, sum_mean, cnt_mean, denom) =
            (v(self, "mask_f"), v(self, "mask3"), v(self, "masked"), v(self, "sum_mean"), v(self, "count_mean"), v(self, "denominator"));
        let minus_one = self.add_init("head/axis_last", i64_tensor(vec![1], &[-1]));
        let seq_axis = self.add_init("head/axis_seq", i64_tensor(vec![1], &[1]));
        let eps = self.add_init("head/eps", f32_tensor(vec![], &[1e-9]));
        let mut nodes = Vec::new();
        let mut cast = node(self.fresh("head/Cast"), "Cast", &["attention_mask"], &mask_f);
        cast.attribute.push(int_attr("to", i64::from(FLOAT)));
        nodes.push(cast);
        nodes.push(node(self.fresh("head/Unsqueeze"), "Unsqueeze", &[&mask_f, &minus_one], &mask3));
        nodes.push(node(self.fresh("head/Mul"), "Mul", &[hidden_out, &mask3], &masked));
        // ReduceMean takes its axes as an input from opset 18, as an attribute before.
        for (x, y, keep) in [(&masked, &sum_mean, 0), (&mask_f, &cnt_mean, 1)] {
            let name = self.fresh("head/ReduceMean");
            let mut r = if opset >= 18 { node(name, "ReduceMean", &[x, &seq_axis], y) } else { node(name, "ReduceMean", &[x], y) };
            if opset < 18 {
                r.attribute.push(AttributeProto { name: "axes".into(), kind: attr_kind::INTS, ints: vec![1], ..Default::default() });
            }
            r.attribute.push(int_attr("keepdims", keep));
            nodes.push(r);
        }
        nodes.push(node(self.fresh("head/Max"), "Max", &[&cnt_mean, &eps], &denom));
        nodes.push(node(self.fresh("head/Div"), "Div", &[&sum_mean, &denom], pooled));
        Ok(nodes)
    }
}
