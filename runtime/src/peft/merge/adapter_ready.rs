//! Writing a base "adapter-ready": one ONNX file that any user's delta runs on, as inputs.
//!
//! This follows ONNX Runtime's Multi-LoRA convention: every LoRA A/B pair and every trainable
//! bias delta is an *optional graph input* (a graph input that shares its name with an
//! initializer, which is its default). A runtime creates one session for the file; a run that
//! feeds a user's tensors runs that user's delta, a run that feeds nothing runs the base, and
//! switching users is a matter of feeding other tensors, never of building a new session.
//!
//! What is added, per fused `Linear` (found in the file as [`super::to_onnx`] finds it):
//!
//! - LoRA (when the module is targeted): `y += (x · A) · B` with inputs `<module>.lora_A.weight`
//!   [k × r] and `<module>.lora_B.weight` [r × n]. They hold the `MatMul` layouts, Aᵀ and
//!   (alpha/r)·Bᵀ, so the graph needs no transpose and no scale. Their defaults have rank 0
//!   ([k × 0], [0 × n]): the side path then adds exact zeros, as ONNX Runtime's Multi-LoRA
//!   models do when no adapter is active.
//! - a bias delta (when asked for): `y += d` with input `<module>.bias.delta` [n], zeros by
//!   default.
//!
//! and per LayerNorm β (when bias deltas are asked for): `β' = β + d` with input `<β>.delta`,
//! every reader of β rewired to β'. [`AdapterReady::inputs`] maps each input to the delta
//! tensor it carries, and [`AdapterReady::feeds`] turns a delta into the tensors to feed.

use std::collections::HashSet;

use super::to_onnx::{f32_tensor, node, Writer, FLOAT};
use crate::base::Base;
use crate::delta::Delta;
use crate::error::{Error, Result};
use crate::onnx::proto::{DimProto, ModelProto, ValueInfoProto};
use crate::onnx::write::rewrite_model;
use crate::ops::Op;
use crate::peft::apply::{check_base, HEAD_PREFIX};
use crate::peft::config::module_matches;
use crate::peft::PeftMethod;
use crate::tensor::Tensor;

/// Which delta inputs an adapter-ready file gets.
#[derive(Clone, Debug)]
pub struct AdapterReadyConfig {
    /// LoRA inputs on every `Linear` whose module matches one of these names (PEFT's
    /// `target_modules` rule); `None` puts them on every `Linear`. Each input pair costs two
    /// small `MatMul`s per run, so an app that only trains `query` and `value` says so.
    pub lora_targets: Option<Vec<String>>,
    /// Bias-delta inputs on every `Linear` and every LayerNorm β (BitFit's parameters).
    pub bias_deltas: bool,
}

impl Default for AdapterReadyConfig {
    fn default() -> Self {
        AdapterReadyConfig { lora_targets: None, bias_deltas: true }
    }
}

impl AdapterReadyConfig {
    /// LoRA inputs on `targets` only, plus bias deltas.
    pub fn lora_on(targets: &[&str]) -> AdapterReadyConfig {
        AdapterReadyConfig { lora_targets: Some(targets.iter().map(|s| (*s).to_owned()).collect()), bias_deltas: true }
    }

    fn targets(&self, module: &str) -> bool {
        self.lora_targets.as_ref().is_none_or(|t| t.iter().any(|t| module_matches(module, t)))
    }
}

/// What an adapter input carries.
#[derive(Clone, Debug, PartialEq)]
pub enum AdapterInputKind {
    /// Aᵀ of the LoRA on `module`, [k × r].
    LoraA {
        /// The `Linear`'s input features.
        k: usize,
    },
    /// (alpha/r)·Bᵀ of the LoRA on `module`, [r × n].
    LoraB {
        /// The `Linear`'s output features.
        n: usize,
    },
    /// A bias delta of `len` values.
    Bias {
        /// Its length.
        len: usize,
    },
}

/// One optional input of an adapter-ready file.
#[derive(Clone, Debug)]
pub struct AdapterInput {
    /// The graph input's name.
    pub input: String,
    /// The delta tensor it carries (`<module>.lora_A`, `<module>.bias`, a LayerNorm β's name).
    pub tensor: String,
    /// The module, for LoRA (its rank and scale come from the delta's config).
    pub module: String,
    /// What it holds, and so how a delta tensor is laid out into it.
    pub kind: AdapterInputKind,
}

/// An adapter-ready file and the map of its delta inputs.
#[derive(Clone, Debug)]
pub struct AdapterReady {
    /// The ONNX file's bytes.
    pub bytes: Vec<u8>,
    /// Every optional delta input, in the order they were added.
    pub inputs: Vec<AdapterInput>,
    /// The fingerprint of the base it was written from; deltas are checked against it.
    pub fingerprint: [u8; 32],
}

impl AdapterReady {
    /// The tensors that run `delta` on this file: one per delta tensor, named as the graph
    /// input it feeds and laid out as that input wants. Inputs the delta does not train are
    /// left out (their defaults add zeros). Fails when the delta was made for another base or
    /// trains a tensor this file has no input for.
    pub fn feeds(&self, delta: &Delta) -> Result<Vec<(String, Tensor)>> {
        check_base(delta, &self.fingerprint)?;
        let lora = match &delta.method {
            PeftMethod::Lora(c) => Some(c),
            _ => None,
        };
        let bad = |name: &str, reason: String| Error::Config(format!("delta tensor `{name}`: {reason}"));
        let mut feeds = Vec::new();
        let mut used = HashSet::new();
        for i in &self.inputs {
            let Some(t) = delta.tensor(&i.tensor) else { continue };
            used.insert(i.tensor.as_str());
            let v = t.to_f32()?;
            let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            let tensor = match i.kind {
                AdapterInputKind::LoraA { k } => {
                    let r = shape.first().copied().unwrap_or(0);
                    if shape != [r, k] || r == 0 {
                        return Err(bad(&i.tensor, format!("shape {shape:?} is not [r, {k}]")));
                    }
                    Tensor::new(&[k, r], transpose(&v, r, k))?
                }
                AdapterInputKind::LoraB { n } => {
                    let r = shape.get(1).copied().unwrap_or(0);
                    if shape != [n, r] || r == 0 {
                        return Err(bad(&i.tensor, format!("shape {shape:?} is not [{n}, r]")));
                    }
                    let cfg = lora.ok_or_else(|| bad(&i.tensor, "LoRA tensors in a delta whose method is not LoRA".into()))?;
                    let scale = cfg.alpha / cfg.rank_for(&i.module).max(1) as f32;
                    let bt: Vec<f32> = transpose(&v, n, r).into_iter().map(|x| x * scale).collect();
                    Tensor::new(&[r, n], bt)?
                }
                AdapterInputKind::Bias { len } => {
                    if v.len() != len {
                        return Err(bad(&i.tensor, format!("{} values, the input takes {len}", v.len())));
                    }
                    Tensor::new(&[len], v)?
                }
            };
            feeds.push((i.input.clone(), tensor));
        }
        if let Some(t) = delta.tensors.iter().find(|t| !t.name.starts_with(HEAD_PREFIX) && !used.contains(t.name.as_str())) {
            return Err(bad(&t.name, "the adapter-ready file has no input for it (see AdapterReadyConfig)".into()));
        }
        Ok(feeds)
    }
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

/// Writes the ONNX model `original` adapter-ready (see the module documentation).
///
/// `base` must be `original` loaded with the default [`crate::LoadOptions`] (as shipped,
/// fused): its `Linear`s say where the side paths go.
pub fn adapter_ready_onnx(original: &[u8], base: &Base, config: &AdapterReadyConfig) -> Result<AdapterReady> {
    let model = ModelProto::decode(original)?;
    let mut w = Writer::new(&model);
    let mut inputs = Vec::new();
    let g = base.graph();
    for bn in &g.nodes {
        let Op::Linear(l) = &bn.op else { continue };
        let lora = config.targets(&l.module);
        if !lora && !config.bias_deltas {
            continue;
        }
        let out = g.values[bn.outputs[0]].name.clone();
        let site = w.locate(&l.module, &out, l.is_int8())?;
        let (k, n, m) = (l.k as i64, l.n as i64, l.module.as_str());
        let mut cur = w.fresh(&format!("{out}_kt_pre"));
        w.edit.rename_outputs.push((site.producer, site.out_slot, cur.clone()));
        let mut stages = 0;
        let total = usize::from(lora) + usize::from(config.bias_deltas);
        let next = |w: &mut Writer<'_>, stages: &mut usize| {
            *stages += 1;
            if *stages == total {
                out.clone()
            } else {
                w.fresh(&format!("{out}_kt_{stages}"))
            }
        };
        if lora {
            let r = DimProto::Param(format!("{m}.r"));
            let a = optional_input(&mut w, &format!("{m}.lora_A.weight"), vec![DimProto::Value(k), r.clone()], vec![k, 0]);
            let b = optional_input(&mut w, &format!("{m}.lora_B.weight"), vec![r, DimProto::Value(n)], vec![0, n]);
            let (down, up) = (w.fresh(&format!("{out}_kt_lora_down")), w.fresh(&format!("{out}_kt_lora_up")));
            let result = next(&mut w, &mut stages);
            let names: Vec<String> = ["MatMul_A", "MatMul_B", "Add"].iter().map(|s| w.fresh(&format!("{m}/kt_lora/{s}"))).collect();
            for nd in [
                node(names[0].clone(), "MatMul", &[&site.x, &a], &down),
                node(names[1].clone(), "MatMul", &[&down, &b], &up),
                node(names[2].clone(), "Add", &[&cur, &up], &result),
            ] {
                w.edit.insert_after.push((site.producer, nd));
            }
            inputs.push(AdapterInput { input: a, tensor: format!("{m}.lora_A"), module: m.to_owned(), kind: AdapterInputKind::LoraA { k: l.k } });
            inputs.push(AdapterInput { input: b, tensor: format!("{m}.lora_B"), module: m.to_owned(), kind: AdapterInputKind::LoraB { n: l.n } });
            cur = result;
        }
        if config.bias_deltas {
            let d = optional_input(&mut w, &format!("{m}.bias.delta"), vec![DimProto::Value(n)], vec![n]);
            let result = next(&mut w, &mut stages);
            let name = w.fresh(&format!("{m}/kt_bias_delta/Add"));
            w.edit.insert_after.push((site.producer, node(name, "Add", &[&cur, &d], &result)));
            inputs.push(AdapterInput { input: d, tensor: format!("{m}.bias"), module: m.to_owned(), kind: AdapterInputKind::Bias { len: l.n } });
        }
    }
    if config.bias_deltas {
        add_norm_betas(&model, base, &mut w, &mut inputs)?;
    }
    w.edit.set_metadata = vec![("kilotune.adapter_ready.base_fingerprint".to_owned(), crate::delta::hex(&base.fingerprint()))];
    let bytes = rewrite_model(original, &w.edit)?;
    Ok(AdapterReady { bytes, inputs, fingerprint: base.fingerprint() })
}

/// Adds `β' = β + d` for every LayerNorm β that is an initializer of the file, rewiring its
/// readers to β'.
fn add_norm_betas(model: &ModelProto, base: &Base, w: &mut Writer<'_>, inputs: &mut Vec<AdapterInput>) -> Result<()> {
    let g = base.graph();
    let mut seen = HashSet::new();
    for bn in &g.nodes {
        let slot = match bn.op {
            Op::LayerNorm { .. } => 2,
            Op::AddLayerNorm { .. } => 3,
            _ => continue,
        };
        let Some(Some(v)) = bn.inputs.get(slot) else { continue };
        let beta = g.values[*v].name.clone();
        let Some(init) = w.inits.get(beta.as_str()).copied() else { continue };
        if init.data_type != FLOAT || !seen.insert(beta.clone()) {
            continue;
        }
        let dims = init.dims.clone();
        let len = dims.iter().product::<i64>().max(0) as usize;
        let d = optional_input(w, &format!("{beta}.delta"), dims.iter().map(|&x| DimProto::Value(x)).collect(), dims);
        let adapted = w.fresh(&format!("{beta}.adapted"));
        let name = w.fresh(&format!("{beta}/kt_delta/Add"));
        w.edit.prepend_nodes.push(node(name, "Add", &[&beta, &d], &adapted));
        for (i, n) in model.graph.node.iter().enumerate() {
            for (s, x) in n.input.iter().enumerate() {
                if *x == beta {
                    w.edit.rename_inputs.push((i, s, adapted.clone()));
                }
            }
        }
        inputs.push(AdapterInput { input: d, tensor: beta, module: String::new(), kind: AdapterInputKind::Bias { len } });
    }
    Ok(())
}

/// Adds an optional f32 graph input named after `stem` whose default is zeros of `default`
/// dims (a zero dim makes an empty default); returns its name.
fn optional_input(w: &mut Writer<'_>, stem: &str, dims: Vec<DimProto>, default: Vec<i64>) -> String {
    let len = default.iter().product::<i64>().max(0) as usize;
    let name = w.add_init(stem, f32_tensor(default, &vec![0.0; len]));
    w.edit.add_inputs.push(ValueInfoProto { name: name.clone(), elem_type: FLOAT, dims });
    name
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::delta::{NamedTensor, TrainingSummary};
    use crate::peft::LoraConfig;
    use crate::LoadOptions;

    fn tiny_bert() -> (Vec<u8>, std::sync::Arc<Base>) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-bert.dynamo.onnx");
        (std::fs::read(&path).unwrap(), Base::load(&path, LoadOptions::default()).unwrap())
    }

    fn lora_on_query(base: &Base) -> Delta {
        let mut tensors = Vec::new();
        for l in base.linears().into_iter().filter(|l| l.module.ends_with("query")) {
            let a: Vec<f32> = (0..2 * l.k).map(|i| i as f32).collect();
            let b: Vec<f32> = (0..l.n * 2).map(|i| -(i as f32)).collect();
            tensors.push(NamedTensor::f32(format!("{}.lora_A", l.module), &[2, l.k as u32], a));
            tensors.push(NamedTensor::f32(format!("{}.lora_B", l.module), &[l.n as u32, 2], b));
        }
        let method = PeftMethod::Lora(LoraConfig { r: 2, alpha: 8.0, ..Default::default() });
        Delta { base_fingerprint: base.fingerprint(), method, head: None, tensors, summary: TrainingSummary::default() }
    }

    #[test]
    fn every_delta_tensor_is_an_optional_input_with_a_neutral_default() {
        let (bytes, base) = tiny_bert();
        let ready = adapter_ready_onnx(&bytes, &base, &AdapterReadyConfig::default()).unwrap();
        let linears = base.linears().len();
        let lora = ready.inputs.iter().filter(|i| !matches!(i.kind, AdapterInputKind::Bias { .. })).count();
        assert_eq!(lora, 2 * linears, "an A and a B on every Linear");
        // Linear biases, plus the embeddings' and each layer's two LayerNorm betas (2 layers).
        assert_eq!(ready.inputs.len() - lora, linears + 5);
        let model = ModelProto::decode(&ready.bytes).unwrap();
        let g = &model.graph;
        for i in &ready.inputs {
            let input = g.input.iter().find(|v| v.name == i.input).unwrap_or_else(|| panic!("no graph input {}", i.input));
            let init = g.initializer.iter().find(|t| t.name == i.input).unwrap_or_else(|| panic!("no default for {}", i.input));
            match i.kind {
                AdapterInputKind::LoraA { k } => {
                    assert_eq!(init.dims, [k as i64, 0]);
                    assert!(matches!(input.dims[1], DimProto::Param(_)), "the rank is free");
                }
                AdapterInputKind::LoraB { n } => assert_eq!(init.dims, [0, n as i64]),
                AdapterInputKind::Bias { len } => {
                    assert_eq!(init.dims.iter().product::<i64>(), len as i64);
                    assert!(init.raw_data.iter().all(|&b| b == 0), "bias deltas default to zeros");
                }
            }
        }
        // The shipped inputs come first, unchanged.
        assert_eq!(g.input[..3].iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["input_ids", "attention_mask", "token_type_ids"]);
    }

    #[test]
    fn feeds_lay_lora_out_as_matmul_operands_with_the_scale_in_b() {
        let (bytes, base) = tiny_bert();
        let ready = adapter_ready_onnx(&bytes, &base, &AdapterReadyConfig::lora_on(&["query"])).unwrap();
        let delta = lora_on_query(&base);
        let feeds = ready.feeds(&delta).unwrap();
        assert_eq!(feeds.len(), delta.tensors.len());
        let l = base.linears().into_iter().find(|l| l.module.ends_with("query")).unwrap();
        let a = &feeds.iter().find(|(n, _)| *n == format!("{}.lora_A.weight", l.module)).unwrap().1;
        let b = &feeds.iter().find(|(n, _)| *n == format!("{}.lora_B.weight", l.module)).unwrap().1;
        assert_eq!(a.shape(), [l.k, 2]);
        assert_eq!(b.shape(), [2, l.n]);
        let (av, bv) = (a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
        // Aᵀ[p][r] = A[r][p] = r·k + p; (alpha/r)·Bᵀ[r][j] = 4 · B[j][r] = −4·(2j + r).
        assert_eq!(av[3 * 2 + 1], (l.k + 3) as f32);
        assert_eq!(bv[l.n + 5], -4.0 * (2 * 5 + 1) as f32);
    }

    #[test]
    fn a_delta_the_file_has_no_input_for_or_for_another_base_is_refused() {
        let (bytes, base) = tiny_bert();
        let ready = adapter_ready_onnx(&bytes, &base, &AdapterReadyConfig { lora_targets: Some(vec!["value".into()]), bias_deltas: false }).unwrap();
        let e = ready.feeds(&lora_on_query(&base)).unwrap_err();
        assert!(e.to_string().contains("no input for it"), "{e}");
        let mut other = lora_on_query(&base);
        other.base_fingerprint[0] ^= 1;
        assert!(matches!(ready.feeds(&other), Err(Error::Delta(_))));
    }
}
