//! [`Trainer`]: trains a user's delta (LoRA or BitFit, plus a classification head) on a frozen
//! base, one batch at a time, and hands it out as a [`Delta`] to save.

use std::collections::HashMap;
use std::sync::Arc;

use super::classify::{step, ClassifierHead};
use super::optim::{OptimizerConfig, Optimizer, ParamGroup, StepOutcome};
use super::rng::Rng;
use super::tape::Trainables;
use crate::base::Base;
use crate::delta::{Delta, NamedTensor, TrainingSummary};
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::peft::apply::HEAD_PREFIX;
use crate::peft::{BitFitVariant, PeftMethod, Pooling, TaskHead};
use crate::session::{Session, SessionConfig};
use crate::tensor::Tensor;

/// Settings for a [`Trainer`].
#[derive(Clone, Debug, Default)]
pub struct TrainConfig {
    /// Seed for parameter initialization: the same seed, data and thread count repeat a run
    /// bit for bit.
    pub seed: u64,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Optimizer, schedule and clipping.
    pub optimizer: OptimizerConfig,
}

/// One batch of classification data: the model's inputs ([batch, seq] each, including
/// `attention_mask`) and a label per row.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Named inputs.
    pub inputs: Vec<(String, Tensor)>,
    /// Class per row.
    pub labels: Vec<usize>,
}

/// What one training step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// Loss before the update.
    pub loss: f32,
    /// What the optimizer did.
    pub outcome: StepOutcome,
}

/// Accuracy and mean loss over some batches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// Fraction of rows classified right.
    pub accuracy: f32,
    /// Mean cross-entropy.
    pub loss: f32,
    /// Rows seen.
    pub rows: usize,
}

/// A trainable parameter tensor of the delta.
#[derive(Clone, Debug)]
struct Param {
    name: String,
    shape: Vec<u32>,
    values: Vec<f32>,
    /// Weight decay applies (not to biases).
    decay: bool,
}

/// Trains a delta on a frozen base.
pub struct Trainer {
    base: Arc<Base>,
    method: PeftMethod,
    task: TaskHead,
    session: Session,
    params: Vec<Param>,
    head: ClassifierHead,
    optimizer: Optimizer,
    steps: u64,
    last_loss: Option<f32>,
}

impl Trainer {
    /// A trainer for `method` with a classification `task` head on `base`. LoRA's A starts
    /// Kaiming-uniform (bound 1/√k, as PEFT), B at zero, so the first forward equals the base;
    /// BitFit deltas and the head's bias start at zero, the head's weight uniform in ±1/√hidden.
    pub fn new(base: Arc<Base>, method: PeftMethod, task: TaskHead, config: TrainConfig) -> Result<Trainer> {
        config.optimizer.validate()?;
        let TaskHead::Classification { classes, pooling } = task.clone() else {
            return Err(Error::Config("only classification heads are trained so far".into()));
        };
        if pooling != Pooling::Mean {
            return Err(Error::Config("only mean pooling is supported so far".into()));
        }
        let mut rng = Rng::new(config.seed);
        let mut params = Vec::new();
        match &method {
            PeftMethod::Lora(c) => {
                c.validate()?;
                for l in base.linears() {
                    if !c.matches(&l.module) {
                        continue;
                    }
                    let r = c.rank_for(&l.module) as usize;
                    let bound = 1.0 / (l.k as f32).sqrt();
                    params.push(Param { name: format!("{}.lora_A", l.module), shape: vec![r as u32, l.k as u32], values: rng.uniform_vec(r * l.k, bound), decay: true });
                    params.push(Param { name: format!("{}.lora_B", l.module), shape: vec![l.n as u32, r as u32], values: vec![0.0; l.n * r], decay: true });
                }
            }
            PeftMethod::BitFit(c) => {
                for l in base.linears() {
                    let pick = match c.variant {
                        BitFitVariant::All => true,
                        // The seed paper's variant: the query bias and the MLP's middle bias.
                        BitFitVariant::QueryAndMlp => {
                            l.module.ends_with("query") || l.module.ends_with("q_proj") || l.module.ends_with("intermediate.dense") || l.module.ends_with("up_proj")
                        }
                    };
                    if pick && l.bias.is_some() {
                        params.push(Param { name: format!("{}.bias", l.module), shape: vec![l.n as u32], values: vec![0.0; l.n], decay: false });
                    }
                }
                if c.include_layer_norm && c.variant == BitFitVariant::All {
                    let g = base.graph();
                    for n in &g.nodes {
                        let beta = match n.op {
                            Op::LayerNorm { .. } => n.inputs.get(2).copied().flatten(),
                            Op::AddLayerNorm { .. } => n.inputs.get(3).copied().flatten(),
                            _ => None,
                        };
                        if let Some(t) = beta.and_then(|b| g.constant(b).map(|t| (b, t))) {
                            params.push(Param { name: g.values[t.0].name.clone(), shape: t.1.shape().iter().map(|&d| d as u32).collect(), values: vec![0.0; t.1.len()], decay: false });
                        }
                    }
                }
            }
        }
        if params.is_empty() {
            return Err(Error::Config("the method selects no parameter of this base (check target_modules)".into()));
        }
        let hidden = hidden_size(&base)?;
        let head = ClassifierHead {
            classes: classes as usize,
            hidden,
            weight: rng.uniform_vec(classes as usize * hidden, 1.0 / (hidden as f32).sqrt()),
            bias: vec![0.0; classes as usize],
        };
        let mut t = Trainer {
            session: Session::new(base.clone(), SessionConfig { threads: config.threads })?,
            base,
            method,
            task,
            params,
            head,
            optimizer: Optimizer::new(config.optimizer)?,
            steps: 0,
            last_loss: None,
        };
        t.refresh()?;
        Ok(t)
    }

    /// The delta as it stands now (parameters, head, summary), ready to save.
    pub fn delta(&self) -> Delta {
        let mut tensors: Vec<NamedTensor> = self.params.iter().map(|p| NamedTensor::f32(p.name.clone(), &p.shape, p.values.clone())).collect();
        tensors.push(NamedTensor::f32(format!("{HEAD_PREFIX}weight"), &[self.head.classes as u32, self.head.hidden as u32], self.head.weight.clone()));
        tensors.push(NamedTensor::f32(format!("{HEAD_PREFIX}bias"), &[self.head.classes as u32], self.head.bias.clone()));
        Delta {
            base_fingerprint: self.base.fingerprint(),
            method: self.method.clone(),
            head: Some(self.task.clone()),
            tensors,
            summary: TrainingSummary { steps: self.steps, final_loss: self.last_loss, ..TrainingSummary::default() },
        }
    }

    /// Trainable parameter count (delta + head).
    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(|p| p.values.len()).sum::<usize>() + self.head.weight.len() + self.head.bias.len()
    }

    /// Re-applies the current parameters to the session's graph.
    fn refresh(&mut self) -> Result<()> {
        let d = self.delta();
        self.session.set_delta(Some(&d))
    }

    fn trainables(&self) -> (Trainables, HashMap<usize, usize>) {
        let g = self.session.graph();
        let mut t = Trainables::default();
        let mut node_of_param = HashMap::new();
        for (i, n) in g.nodes.iter().enumerate() {
            if let Op::Linear(l) = &n.op {
                for (pi, p) in self.params.iter().enumerate() {
                    if p.name == format!("{}.lora_A", l.module) || p.name == format!("{}.lora_B", l.module) {
                        t.lora.insert(i);
                        node_of_param.insert(pi, i);
                    } else if p.name == format!("{}.bias", l.module) {
                        t.linear_bias.insert(i);
                        node_of_param.insert(pi, i);
                    }
                }
            }
        }
        for (pi, p) in self.params.iter().enumerate() {
            if let std::collections::hash_map::Entry::Vacant(e) = node_of_param.entry(pi) {
                if let Some(v) = g.value_named(&p.name) {
                    t.constants.insert(v);
                    e.insert(v);
                }
            }
        }
        (t, node_of_param)
    }

    fn named(batch: &Batch) -> Vec<(&str, Tensor)> {
        batch.inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect()
    }

    /// One optimization step on `batch`.
    pub fn step(&mut self, batch: &Batch) -> Result<StepReport> {
        let (t, where_) = self.trainables();
        let r = step(&self.session, &Self::named(batch), &batch.labels, &self.head, &t)?;
        let mut grads: Vec<Vec<f32>> = Vec::with_capacity(self.params.len());
        for (pi, p) in self.params.iter().enumerate() {
            let at = where_.get(&pi).copied().ok_or_else(|| Error::Config(format!("parameter `{}` is not in the graph", p.name)))?;
            let g = if p.name.ends_with(".lora_A") {
                r.grads.lora.get(&at).map(|(a, _)| a.clone())
            } else if p.name.ends_with(".lora_B") {
                r.grads.lora.get(&at).map(|(_, b)| b.clone())
            } else if t.linear_bias.contains(&at) && r.grads.linear_bias.contains_key(&at) {
                r.grads.linear_bias.get(&at).cloned()
            } else {
                r.grads.constants.get(&at).cloned()
            };
            grads.push(g.unwrap_or_else(|| vec![0.0; p.values.len()]));
        }
        let mut groups: Vec<ParamGroup<'_>> = Vec::with_capacity(self.params.len() + 2);
        for (p, g) in self.params.iter_mut().zip(&grads) {
            groups.push(ParamGroup { name: &p.name, values: &mut p.values, grads: g, decay: p.decay });
        }
        groups.push(ParamGroup { name: "head.weight", values: &mut self.head.weight, grads: &r.head_weight, decay: true });
        groups.push(ParamGroup { name: "head.bias", values: &mut self.head.bias, grads: &r.head_bias, decay: false });
        let outcome = self.optimizer.step(&mut groups)?;
        self.steps += 1;
        self.last_loss = Some(r.loss);
        self.refresh()?;
        Ok(StepReport { loss: r.loss, outcome })
    }

    /// Accuracy and loss over `batches`, without training.
    pub fn evaluate(&self, batches: &[Batch]) -> Result<Evaluation> {
        let (mut right, mut rows, mut loss) = (0usize, 0usize, 0f64);
        for b in batches {
            let logits = self.logits(b)?;
            let c = self.head.classes;
            let (l, _) = super::backward::cross_entropy(&logits, &b.labels);
            loss += f64::from(l) * b.labels.len() as f64;
            for (row, &label) in logits.chunks_exact(c).zip(&b.labels) {
                let best = row.iter().enumerate().fold(0, |bi, (i, &v)| if v > row[bi] { i } else { bi });
                right += usize::from(best == label);
            }
            rows += b.labels.len();
        }
        if rows == 0 {
            return Err(Error::BadInput { name: "evaluation".into(), reason: "no rows".into() });
        }
        Ok(Evaluation { accuracy: right as f32 / rows as f32, loss: (loss / rows as f64) as f32, rows })
    }

    /// Class logits for a batch, [rows × classes].
    pub fn logits(&self, batch: &Batch) -> Result<Vec<f32>> {
        let out = self.session.run(&Self::named(batch))?;
        let hidden = out.0.first().map(|(_, t)| t).ok_or_else(|| Error::InvalidModel("no output".into()))?;
        let mask = batch.inputs.iter().find(|(n, _)| n == "attention_mask").map(|(_, t)| t.to_f32_vec()).ok_or_else(|| Error::BadInput { name: "attention_mask".into(), reason: "needed for pooling".into() })?;
        let pooled = super::backward::mean_pool(hidden.typed::<f32>("hidden")?, &mask, batch.labels.len().max(1));
        Ok(self.head.logits(&pooled))
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }
}

/// The hidden size: the last dim of the first output, read from the fused graph's last
/// `Linear` or norm weight.
fn hidden_size(base: &Base) -> Result<usize> {
    let g = base.graph();
    for n in g.nodes.iter().rev() {
        match &n.op {
            Op::Linear(l) => return Ok(l.n),
            Op::LayerNorm { .. } | Op::AddLayerNorm { .. } | Op::RmsNorm { .. } => {
                let slot = if matches!(n.op, Op::AddLayerNorm { .. }) { 2 } else { 1 };
                if let Some(t) = g.input_constant(n, slot) {
                    return Ok(t.len());
                }
            }
            _ => {}
        }
    }
    Err(Error::InvalidModel("cannot tell the hidden size".into()))
}
