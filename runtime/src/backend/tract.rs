//! The `tract` backend: tract-onnx inference of the merged graph.
//!
//! A user's delta is merged into the shipped file ([`crate::peft::merge::merge_onnx`]; LoRA
//! on an int8 base stays an exact f32 side path) and tract loads that file. tract optimizes a
//! model for concrete input shapes, so a plan is built per shape class (input shapes) and kept
//! until the delta changes.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::prelude::{
    Datum, Framework, InferenceFact, InferenceModelExt, IntoRunnable, Tensor as TractTensor, TypedRunnableModel, TValue,
};

use crate::base::Base;
use crate::delta::Delta;
use crate::error::{Error, Result};
use crate::peft::merge::{merge_onnx, MergeOptions};
use crate::session::Outputs;
use crate::tensor::{Data, DType, Tensor};

fn err(e: impl std::fmt::Display) -> Error {
    Error::Backend { backend: "tract", reason: format!("{e:#}") }
}

type Plan = Arc<TypedRunnableModel>;

/// A base run by tract.
pub struct TractSession {
    original: Arc<[u8]>,
    base: Arc<Base>,
    /// The file tract loads: the original, or the merged one.
    model: Vec<u8>,
    inputs: Vec<String>,
    outputs: Vec<String>,
    plans: HashMap<Vec<Vec<usize>>, Plan>,
}

impl std::fmt::Debug for TractSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractSession").field("plans", &self.plans.len()).finish()
    }
}

impl TractSession {
    /// A session for the ONNX file `original` (whose fused form is `base`), with no delta.
    pub fn new(original: Arc<[u8]>, base: Arc<Base>) -> Result<TractSession> {
        let inputs = base.input_names().iter().map(|s| (*s).to_owned()).collect();
        let outputs = base.output_names().iter().map(|s| (*s).to_owned()).collect();
        Ok(TractSession { model: original.to_vec(), original, base, inputs, outputs, plans: HashMap::new() })
    }

    /// Runs `delta` from now on (`None`: the base): merges it and drops the plans built for
    /// the previous graph.
    pub fn set_delta(&mut self, delta: Option<&Delta>) -> Result<()> {
        self.model = match delta {
            Some(d) => {
                let options = MergeOptions { write_head: false, ..MergeOptions::default() };
                merge_onnx(&self.original, &self.base, d, &options)?.bytes
            }
            None => self.original.to_vec(),
        };
        self.plans.clear();
        Ok(())
    }

    /// Runs the model; every input of the base must be given.
    pub fn run(&mut self, inputs: &[(&str, Tensor)]) -> Result<Outputs> {
        let mut ordered = Vec::with_capacity(self.inputs.len());
        for name in &self.inputs {
            let t = inputs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| Error::BadInput { name: name.clone(), reason: "missing".into() })?;
            ordered.push(t);
        }
        let key: Vec<Vec<usize>> = ordered.iter().map(|t| t.shape().to_vec()).collect();
        let plan = match self.plans.get(&key) {
            Some(p) => p.clone(),
            None => {
                let p = self.plan(&ordered)?;
                self.plans.insert(key, p.clone());
                p
            }
        };
        let values = ordered.iter().map(|t| to_tract(t).map(TValue::from)).collect::<Result<_>>()?;
        let out = plan.run(values).map_err(err)?;
        let mut result = Vec::with_capacity(self.outputs.len());
        for (name, v) in self.outputs.iter().zip(out.iter()) {
            let view = v.to_plain_array_view::<f32>().map_err(err)?;
            result.push((name.clone(), Tensor::new(v.shape(), view.iter().copied().collect())?));
        }
        Ok(Outputs(result))
    }

    /// Loads the current file with every input fixed to the given shapes and optimizes it.
    fn plan(&self, inputs: &[&Tensor]) -> Result<Plan> {
        // The exporters' `value_info` names symbolic dims (`batch`, `seq`) that would clash
        // with the concrete input facts: tract infers every inner shape again instead.
        let onnx = tract_onnx::onnx().with_ignore_value_info(true).with_ignore_output_shapes(true);
        let mut model = onnx.model_for_read(&mut self.model.as_slice()).map_err(err)?;
        for (i, t) in inputs.iter().enumerate() {
            let fact = match t.dtype() {
                DType::F32 => InferenceFact::dt_shape(f32::datum_type(), t.shape()),
                DType::I64 => InferenceFact::dt_shape(i64::datum_type(), t.shape()),
                DType::I32 => InferenceFact::dt_shape(i32::datum_type(), t.shape()),
                other => return Err(err(format!("input {i}: element type {other} is not fed to tract"))),
            };
            model = model.with_input_fact(i, fact).map_err(err)?;
        }
        model.into_optimized().map_err(err)?.into_runnable().map_err(err)
    }
}

fn to_tract(t: &Tensor) -> Result<TractTensor> {
    let shape = t.shape();
    match t.data() {
        Data::F32(v) => TractTensor::from_shape(shape, v),
        Data::I64(v) => TractTensor::from_shape(shape, v),
        Data::I32(v) => TractTensor::from_shape(shape, v),
        Data::I8(v) => TractTensor::from_shape(shape, v),
        Data::U8(v) => TractTensor::from_shape(shape, v),
        Data::Bool(v) => TractTensor::from_shape(shape, v),
    }
    .map_err(err)
}
