//! [`Trainer`]: trains a user's delta (LoRA or BitFit, plus the task's head) on a frozen base,
//! one batch at a time, and hands it out as a [`Delta`] to save. Tasks: classification and
//! regression (a linear head over the pooled hidden state) and causal language modelling
//! (the base's own LM head, nothing added).

use std::collections::HashMap;
use std::sync::Arc;

use super::evaluate::{evaluate_task, task_outputs, TaskSession};
use super::guard::{BadStep, GateDecision, Guard, GuardAction, GuardConfig, GuardStats, InjectedFault, LossCheck};
use super::head::{PooledHead, REGRESSION_POOLING};
use super::optim::{OptimizerConfig, Optimizer, ParamGroup, StepOutcome};
use super::{causal_lm, classify, regress};
use super::rng::Rng;
use super::tape::Trainables;
use crate::base::Base;
use crate::delta::{Delta, NamedTensor, TrainingSummary};
use crate::error::{Error, Result};
use crate::ops::linear::LoraDropout;
use crate::ops::Op;
use crate::peft::apply::HEAD_PREFIX;
use crate::peft::{PeftMethod, TaskHead};
use crate::session::{Session, SessionConfig};

pub use super::batch::{Batch, Targets};
pub use super::evaluate::Evaluation;

/// Gradients by tensor name, as [`Trainer::gradients`] returns them.
pub type NamedGradients = Vec<(String, Vec<f32>)>;

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
    /// The most activation memory (bytes) a step may keep for its backward pass. `None` keeps
    /// what the backward reads, which is fastest. Over the budget, a step checkpoints: it keeps
    /// only the values between normalization layers (two per transformer block) and recomputes
    /// each piece's activations during the backward pass: one more forward pass of work, the
    /// same gradients bit for bit. The first step with a budget checkpoints every piece and
    /// measures what a plain step would keep and what the leanest one holds; later steps
    /// checkpoint only when their batch would go over, and then recompute only as many of the
    /// first pieces as the budget needs (the last ones keep their activations, as a plain step
    /// does). Pieces differ in size, so the budget is met to within about one piece.
    /// With a budget, the trainer also hands the heap's freed pages back to the OS once built
    /// and after every step (glibc only, see [`super::checkpoint::release_freed_heap`]): about
    /// 50 MiB less peak RSS on MiniLM, for 5–20% more time a step.
    pub memory_budget: Option<usize>,
    /// When a step is skipped and when the trainer rolls back to its last good parameters
    /// (see [`super::guard`]).
    pub guard: GuardConfig,
    /// Where the step's heavy work runs. `cpu` (the default) runs all of it; `vulkan` (cargo
    /// feature) runs the forward ops its shaders cover (`Linear`, attention, LayerNorm, GELU,
    /// `Add`) and the input gradients of frozen `Linear` layers on the device, the rest of the
    /// backward pass and the optimizer on the CPU. `ort` and `tract` cannot train
    /// ([`Error::Config`]); `vulkan` in a build without it is [`Error::BackendUnavailable`].
    pub backend: crate::backend::BackendKind,
}

/// What one training step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// Loss before the update.
    pub loss: f32,
    /// What the optimizer did ([`StepOutcome::NotRun`] when the guard refused the loss).
    pub outcome: StepOutcome,
    /// What the guard did: whether the update stayed, or the step was skipped or rolled back.
    pub guard: GuardAction,
}

/// Trains a delta on a frozen base.
pub struct Trainer {
    base: Arc<Base>,
    method: PeftMethod,
    task: TaskHead,
    session: Session,
    params: Vec<super::params::Param>,
    /// The pooled linear head; `None` for a causal LM, which uses the base's own LM head.
    head: Option<PooledHead>,
    optimizer: Optimizer,
    steps: u64,
    last_loss: Option<f32>,
    memory_budget: Option<usize>,
    /// The seed LoRA dropout masks are drawn from (with the step and the layer).
    seed: u64,
    /// Prefix tuning's reparameterization MLP, whose parameters are the `prefix_mlp.*` ones.
    prefix_mlp: Option<super::prefix_mlp::PrefixMlp>,
    /// Where the graph is cut for checkpointing (made on first use).
    pieces: Option<super::checkpoint::Pieces>,
    /// Activation bytes per token of a step without checkpointing, once measured.
    bytes_per_token: Option<f64>,
    /// What a step that recomputes every piece held, per token (from the first such step).
    leanest_per_token: Option<f64>,
    last_usage: super::checkpoint::Usage,
    threads: usize,
    guard: Guard,
    /// The parameters and optimizer state a rollback returns to.
    last_good: LastGood,
    /// Test-only faults by step, see [`Trainer::inject_fault`].
    faults: Vec<(u64, InjectedFault)>,
    /// Frozen tensors the delta carries besides the trained ones: a MAD-X task adapter's
    /// language adapter.
    frozen: Vec<NamedTensor>,
}

/// A copy of the trainable values (the parameters, then the head's weight and bias) and of the
/// optimizer, taken before each good step's update.
#[derive(Clone, Debug)]
struct LastGood {
    values: Vec<Vec<f32>>,
    optimizer: Optimizer,
}

impl Trainer {
    /// A trainer for `method` with the `task` head on `base`. LoRA's A starts Kaiming-uniform
    /// (bound 1/√k, as PEFT), B at zero, so the first forward equals the base; BitFit deltas
    /// and a head's bias start at zero, a head's weight uniform in ±1/√hidden.
    ///
    /// Classification pools as its [`TaskHead`] says; regression pools with
    /// [`REGRESSION_POOLING`] (the delta format stores no pooling for it); a causal LM trains
    /// through the model's first output, its logits. BitFit on a base without biases (a Llama:
    /// bias-free `Linear`s, RMSNorm) is an [`Error::Config`] rather than an empty delta.
    pub fn new(base: Arc<Base>, method: PeftMethod, task: TaskHead, config: TrainConfig) -> Result<Trainer> {
        if matches!(method, PeftMethod::MadxTask(_)) {
            return Err(Error::Config("a MAD-X task adapter stacks on a language adapter: use Trainer::madx_task".into()));
        }
        Self::with_frozen(base, method, task, config, Vec::new())
    }

    /// A trainer for a MAD-X task adapter of bottleneck `bottleneck`, stacked on the frozen
    /// language adapter of `language` (a MAD-X language delta for the same base), with the
    /// `task` head. The delta it makes carries a copy of the language adapter, so that it runs
    /// on its own; [`crate::peft::madx::with_language`] swaps it for another.
    pub fn madx_task(base: Arc<Base>, language: &Delta, bottleneck: u32, task: TaskHead, config: TrainConfig) -> Result<Trainer> {
        language.check_base(&base.fingerprint())?;
        if matches!(task, TaskHead::MaskedLm) {
            return Err(Error::Config("a MAD-X task adapter trains a task head; masked-LM training is for language adapters".into()));
        }
        let (lang, frozen) = crate::peft::madx::language_tensors(language)?;
        let method = PeftMethod::MadxTask(crate::peft::MadxTaskConfig { language: lang, bottleneck });
        Self::with_frozen(base, method, task, config, frozen)
    }

    fn with_frozen(base: Arc<Base>, method: PeftMethod, task: TaskHead, config: TrainConfig, frozen: Vec<NamedTensor>) -> Result<Trainer> {
        config.optimizer.validate()?;
        match (&method, &task) {
            (PeftMethod::MadxLanguage(_), TaskHead::MaskedLm) => {}
            (PeftMethod::MadxLanguage(_), _) => return Err(Error::Config("a MAD-X language adapter trains by masked-language modelling (TaskHead::MaskedLm)".into())),
            (_, TaskHead::MaskedLm) => return Err(Error::Config("masked-language modelling trains MAD-X language adapters only".into())),
            _ => {}
        }
        config.guard.validate()?;
        task.validate()?;
        let mut rng = Rng::new(config.seed);
        let (params, prefix_mlp) = super::params::init(&base, &method, &mut rng)?;
        if params.is_empty() && method != PeftMethod::HeadOnly {
            return Err(Error::Config(match method {
                // RMSNorm's weight is a scale, not a bias: training it would be another method
                // under BitFit's name, so a bias-free base gets an error instead.
                PeftMethod::BitFit(_) if base.linears().iter().all(|l| l.bias.is_none()) => {
                    "BitFit trains bias terms, and this base has none to train (no Linear layer has a bias; an RMSNorm has only a scale): use LoRA".into()
                }
                PeftMethod::BitFit(_) => "this BitFit variant selects no bias of this base".into(),
                _ => "the method selects no parameter of this base (check target_modules)".into(),
            }));
        }
        let head = match task {
            TaskHead::Classification { classes, pooling } => Some(new_head(&base, &mut rng, classes as usize, pooling)?),
            TaskHead::Regression { outputs } => Some(new_head(&base, &mut rng, outputs as usize, REGRESSION_POOLING)?),
            TaskHead::CausalLm | TaskHead::MaskedLm => None,
        };
        let optimizer = Optimizer::new(config.optimizer)?;
        let mut session = Session::new(base.clone(), SessionConfig { threads: config.threads })?;
        session.set_offload(crate::backend::offload_for(config.backend)?);
        let mut t = Trainer {
            session,
            base,
            method,
            task,
            params,
            head,
            prefix_mlp,
            last_good: LastGood { values: Vec::new(), optimizer: optimizer.clone() },
            optimizer,
            steps: 0,
            last_loss: None,
            memory_budget: config.memory_budget,
            seed: config.seed,
            pieces: None,
            bytes_per_token: None,
            leanest_per_token: None,
            last_usage: super::checkpoint::Usage::default(),
            threads: config.threads,
            guard: Guard::new(config.guard),
            faults: Vec::new(),
            frozen,
        };
        t.keep_as_good();
        t.refresh()?;
        if t.memory_budget.is_some() {
            // What loading the base and building the trainer freed.
            super::checkpoint::release_freed_heap();
        }
        Ok(t)
    }

    /// The delta as it stands now (parameters, head, summary), ready to save. The guard keeps
    /// every value finite: an update that made one non-finite has been rolled back.
    pub fn delta(&self) -> Delta {
        let mut tensors: Vec<NamedTensor> = match &self.method {
            PeftMethod::DiffPruning(c) => super::diff::sparse_delta(c, &self.params),
            _ => self.params.iter().filter(|p| !p.name.starts_with("prefix_mlp.")).map(|p| NamedTensor::f32(p.name.clone(), &p.shape, p.values.clone())).collect(),
        };
        tensors.extend(self.frozen.iter().cloned());
        if let Some(m) = &self.prefix_mlp {
            // The MLP is dropped here: the delta holds only the prefixes it produces.
            let (_, p) = m.forward(self.mlp_params());
            for l in 0..m.layers {
                let (k, v) = m.layer(&p, l);
                let (kn, vn) = crate::peft::prefix::tensor_names(l);
                tensors.push(NamedTensor::f32(kn, &[m.len as u32, m.d as u32], k));
                tensors.push(NamedTensor::f32(vn, &[m.len as u32, m.d as u32], v));
            }
        }
        if let Some(h) = &self.head {
            tensors.push(NamedTensor::f32(format!("{HEAD_PREFIX}weight"), &[h.outputs as u32, h.hidden as u32], h.weight.clone()));
            tensors.push(NamedTensor::f32(format!("{HEAD_PREFIX}bias"), &[h.outputs as u32], h.bias.clone()));
        }
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
        self.params.iter().map(|p| p.values.len()).sum::<usize>() + self.head.as_ref().map_or(0, |h| h.weight.len() + h.bias.len())
    }

    /// Re-applies the current parameters to the session's graph: the delta, or for diff
    /// pruning the dense weights with this step's sampled gates (evaluation then runs the
    /// saved, sparse delta in a session of its own).
    fn refresh(&mut self) -> Result<()> {
        let mut d = self.delta();
        if matches!(self.method, PeftMethod::DiffPruning(_)) {
            d.tensors.retain(|t| t.name.starts_with(HEAD_PREFIX));
            d.tensors.extend(super::diff::training_weights(&self.base, &self.params, self.seed, self.steps)?);
        }
        self.session.set_delta(Some(&d))
    }

    /// Runs `f` on the session that evaluates the delta as it would be saved.
    fn with_eval_session<T>(&self, f: impl FnOnce(&Session) -> Result<T>) -> Result<T> {
        match self.method {
            PeftMethod::DiffPruning(_) => f(&Session::with_delta(self.base.clone(), &self.delta(), SessionConfig { threads: self.threads })?),
            _ => f(&self.session),
        }
    }

    fn trainables(&self) -> (Trainables, HashMap<usize, super::params::Loc>) {
        super::params::locate(self.session.graph(), &self.params)
    }

    /// The prefix MLP's parameters, in [`super::prefix_mlp::PrefixMlp::NAMES`] order.
    fn mlp_params(&self) -> super::prefix_mlp::MlpParams<'_> {
        let find = |name: &str| self.params.iter().find(|p| p.name == name).map_or(&[][..], |p| p.values.as_slice());
        let n = super::prefix_mlp::PrefixMlp::NAMES;
        [find(n[0]), find(n[1]), find(n[2]), find(n[3]), find(n[4])]
    }

    /// The prefix MLP's parameter gradients from the tape's per-layer prefix gradients.
    fn mlp_grads(&self, m: &super::prefix_mlp::PrefixMlp, grads: &super::tape::Grads) -> [Vec<f32>; 5] {
        let attention: Vec<usize> = self.session.graph().nodes.iter().enumerate().filter(|(_, n)| matches!(n.op, Op::Attention(_))).map(|(i, _)| i).collect();
        let mut dp = vec![0f32; m.len * m.out()];
        for (l, at) in attention.iter().enumerate().take(m.layers) {
            if let Some((dk, dv)) = grads.prefix.get(at) {
                m.put_layer(&mut dp, l, dk, dv);
            }
        }
        let (h, _) = m.forward(self.mlp_params());
        m.backward(self.mlp_params(), &h, &dp)
    }

    /// One optimization step on `batch`, whose targets must fit the trainer's task.
    ///
    /// The guard ([`super::guard`]) checks the step: a non-finite loss or gradient skips it, a
    /// loss spike, a non-finite parameter after the update, or the third bad step in a row
    /// rolls the trainer back to its last good parameters and optimizer state. The report
    /// says which; [`Trainer::guard_stats`] counts them.
    pub fn step(&mut self, batch: &Batch) -> Result<StepReport> {
        self.diff_pruning_phase()?;
        let (r, mut grads, tokens) = self.loss_and_grads(batch)?;
        self.bytes_per_token = Some(r.usage.full as f64 / tokens.max(1) as f64);
        if self.pieces.as_ref().is_some_and(|p| p.kept == 1) && r.usage.peak < r.usage.full {
            self.leanest_per_token = Some(r.usage.peak as f64 / tokens.max(1) as f64);
        }
        self.last_usage = r.usage;
        let fault = self.take_fault();
        let loss = match fault {
            Some(InjectedFault::NanLoss) => f32::NAN,
            // Finite, and far above any average of good losses plus the margin.
            Some(InjectedFault::LossSpike) => 1e3 * (r.loss.abs() + 1.0),
            _ => r.loss,
        };
        if fault == Some(InjectedFault::NanGradient) {
            if let Some(g) = grads.iter_mut().find_map(|g| g.first_mut()) {
                *g = f32::NAN;
            }
        }
        self.steps += 1;

        let (outcome, guard) = match self.guard.check_loss(loss) {
            LossCheck::NonFinite => (StepOutcome::NotRun, self.bad_step(BadStep::NonFiniteLoss)),
            LossCheck::Spike => (StepOutcome::NotRun, self.bad_step(BadStep::LossSpike)),
            LossCheck::Good => {
                // These parameters gave a good loss and good gradients: they are the ones a
                // rollback returns to. (With a bad gradient the optimizer skips the step.)
                let finite = |g: &[f32]| g.iter().all(|x| x.is_finite());
                if grads.iter().all(|g| finite(g)) && finite(&r.head_weight) && finite(&r.head_bias) {
                    self.keep_as_good();
                }
                let outcome = self.apply(&grads, &r.head_weight, &r.head_bias)?;
                if fault == Some(InjectedFault::NanParameter) {
                    if let Some(v) = self.params.iter_mut().find_map(|p| p.values.first_mut()) {
                        *v = f32::NAN;
                    }
                }
                let guard = match outcome {
                    StepOutcome::Applied { .. } if !self.all_finite() => self.bad_step(BadStep::NonFiniteParameter),
                    StepOutcome::Applied { .. } => {
                        self.guard.good(loss);
                        self.last_loss = Some(loss);
                        GuardAction::Passed
                    }
                    StepOutcome::SkippedNonFinite { .. } | StepOutcome::NotRun => self.bad_step(BadStep::NonFiniteGradient),
                };
                (outcome, guard)
            }
        };
        self.refresh()?;
        if self.memory_budget.is_some() {
            super::checkpoint::release_freed_heap();
        }
        Ok(StepReport { loss, outcome, guard })
    }


    /// The loss on `batch` and its gradient with respect to every trainable tensor (the
    /// parameters as [`Trainer::parameter_names`] lists them, then the head's weight and
    /// bias), at the current values, without changing them. The gradient checks use it.
    pub fn gradients(&mut self, batch: &Batch) -> Result<(f32, NamedGradients)> {
        let (r, grads, _) = self.loss_and_grads(batch)?;
        self.refresh()?;
        let mut out: Vec<(String, Vec<f32>)> = self.params.iter().map(|p| p.name.clone()).zip(grads).collect();
        if self.head.is_some() {
            out.push((format!("{HEAD_PREFIX}weight"), r.head_weight));
            out.push((format!("{HEAD_PREFIX}bias"), r.head_bias));
        }
        Ok((r.loss, out))
    }

    /// The trainable tensors' names: the delta's, or for prefix tuning with its MLP the MLP's
    /// (`prefix_mlp.*`), which the delta replaces by the prefixes they produce.
    pub fn parameter_names(&self) -> Vec<String> {
        self.params.iter().map(|p| p.name.clone()).collect()
    }

    /// The current values of parameter `name` (a [`Trainer::parameter_names`] entry).
    pub fn parameter_values(&self, name: &str) -> Option<&[f32]> {
        self.params.iter().find(|p| p.name == name).map(|p| p.values.as_slice())
    }

    /// Test-only: sets parameter `name` (a [`Trainer::parameter_names`] entry) to `values`, so
    /// that gradient checks can start away from an initialization where some gradients
    /// vanish (a zero adapter up-projection, say).
    #[doc(hidden)]
    pub fn set_parameter(&mut self, name: &str, values: Vec<f32>) -> Result<()> {
        let p = self.params.iter_mut().find(|p| p.name == name).ok_or_else(|| Error::Config(format!("no parameter `{name}`")))?;
        if p.values.len() != values.len() {
            return Err(Error::Config(format!("parameter `{name}` has {} values, not {}", p.values.len(), values.len())));
        }
        p.values = values;
        self.refresh()
    }

    /// Diff pruning with a schedule (`total_steps` > 0): halfway through, projects δ onto the
    /// L0 ball once ([`super::diff::project`]), so the second half fine-tunes the sparse δ
    /// that is saved (Guo et al.'s two phases). The projected values become the last good
    /// ones. Without a schedule, the projection happens only when the delta is made.
    fn diff_pruning_phase(&mut self) -> Result<()> {
        let PeftMethod::DiffPruning(c) = &self.method else { return Ok(()) };
        let total = self.optimizer.config().schedule.total_steps;
        if total == 0 || self.steps != total / 2 {
            return Ok(());
        }
        let c = c.clone();
        super::diff::project(&c, &mut self.params);
        self.keep_as_good();
        self.refresh()
    }

    /// The step's forward and backward: the task's result and each parameter's gradient.
    fn loss_and_grads(&mut self, batch: &Batch) -> Result<(super::head::StepResult, Vec<Vec<f32>>, usize)> {
        let (t, where_) = self.trainables();
        self.set_dropout(&t);
        let named = batch.named();
        let tokens = batch.inputs.first().map_or(0, |(_, x)| x.len());
        let checkpoint = match (self.memory_budget, self.bytes_per_token) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(budget), Some(per_token)) => per_token * tokens as f64 > budget as f64,
        };
        if checkpoint && self.pieces.is_none() {
            self.pieces = Some(super::checkpoint::pieces(self.session.graph()));
        }
        if let (true, Some(p)) = (checkpoint, self.pieces.as_mut()) {
            p.kept = kept_pieces(p.ranges.len(), self.memory_budget, self.bytes_per_token, self.leanest_per_token, tokens);
        }
        let ck = if checkpoint { self.pieces.as_ref() } else { None };
        let r: super::head::StepResult = match (&self.task, &batch.targets, &self.head) {
            (TaskHead::Classification { .. }, Targets::Classes(labels), Some(h)) => classify::step(&self.session, &named, labels, h, &t, ck)?,
            (TaskHead::Regression { .. }, Targets::Values(values), Some(h)) => regress::step(&self.session, &named, values, h, &t, ck)?,
            (TaskHead::CausalLm, Targets::NextTokens, None) => causal_lm::step(&self.session, &named, &t, ck)?,
            (TaskHead::MaskedLm, Targets::Masked(labels), None) => {
                let bias = self.parameter_values(crate::peft::madx::MLM_BIAS).ok_or_else(|| Error::Config("masked-LM training is for a MAD-X language adapter, whose delta has `mlm.bias`".into()))?;
                super::mlm::step(&self.session, &named, labels, bias, &t, ck)?
            }
            _ => return Err(Error::BadInput { name: "batch".into(), reason: format!("its targets ({}) do not fit this trainer's task {:?}", targets_name(&batch.targets), self.task) }),
        };
        let mut mlp = self.prefix_mlp.map(|m| self.mlp_grads(&m, &r.grads).into_iter());
        let mut grads: Vec<Vec<f32>> = Vec::with_capacity(self.params.len());
        for (pi, p) in self.params.iter().enumerate() {
            if let (Some(it), true) = (&mut mlp, p.name.starts_with("prefix_mlp.")) {
                // `params::init` lists the MLP's parameters in `PrefixMlp::NAMES` order.
                grads.push(it.next().unwrap_or_else(|| vec![0.0; p.values.len()]));
                continue;
            }
            if p.name == crate::peft::madx::MLM_BIAS {
                // The masked-LM output bias acts after the graph; its gradient comes with the loss.
                grads.push(if r.head_bias.len() == p.values.len() { r.head_bias.clone() } else { vec![0.0; p.values.len()] });
                continue;
            }
            let at = where_.get(&pi).copied().ok_or_else(|| Error::Config(format!("parameter `{}` is not in the graph", p.name)))?;
            grads.push(super::params::grad_of(p, at, &r.grads));
        }
        if let PeftMethod::DiffPruning(c) = &self.method {
            super::diff::chain(c, &self.params, &mut grads, self.seed, self.steps);
        }
        Ok((r, grads, tokens))
    }


    /// Applies one optimizer update with these gradients (the parameters' in order, then the
    /// head's).
    fn apply(&mut self, grads: &[Vec<f32>], head_weight: &[f32], head_bias: &[f32]) -> Result<StepOutcome> {
        let mut groups: Vec<ParamGroup<'_>> = Vec::with_capacity(self.params.len() + 2);
        for (p, g) in self.params.iter_mut().zip(grads) {
            groups.push(ParamGroup { name: &p.name, values: &mut p.values, grads: g, decay: p.decay });
        }
        if let Some(h) = &mut self.head {
            groups.push(ParamGroup { name: "head.weight", values: &mut h.weight, grads: head_weight, decay: true });
            groups.push(ParamGroup { name: "head.bias", values: &mut h.bias, grads: head_bias, decay: false });
        }
        self.optimizer.step(&mut groups)
    }

    /// Every trainable value, in a fixed order: the parameters, then the head's weight and bias.
    fn values(&self) -> impl Iterator<Item = &Vec<f32>> {
        let head = self.head.as_ref().map(|h| [&h.weight, &h.bias]);
        self.params.iter().map(|p| &p.values).chain(head.into_iter().flatten())
    }

    /// [`Self::values`], to write.
    fn values_mut(&mut self) -> impl Iterator<Item = &mut Vec<f32>> {
        let head = self.head.as_mut().map(|h| [&mut h.weight, &mut h.bias]);
        self.params.iter_mut().map(|p| &mut p.values).chain(head.into_iter().flatten())
    }

    fn all_finite(&self) -> bool {
        self.values().all(|v| v.iter().all(|x| x.is_finite()))
    }

    /// Copies the current values and optimizer state as the last good ones (reusing the
    /// copy's buffers: this runs before every good step's update).
    fn keep_as_good(&mut self) {
        let mut kept = std::mem::take(&mut self.last_good.values);
        kept.resize_with(self.values().count(), Vec::new);
        for (dst, src) in kept.iter_mut().zip(self.values()) {
            dst.clone_from(src);
        }
        self.last_good.values = kept;
        self.last_good.optimizer.clone_from(&self.optimizer);
    }

    /// Counts a bad step and, when the guard says so, goes back to the last good values and
    /// optimizer state.
    fn bad_step(&mut self, why: BadStep) -> GuardAction {
        let action = self.guard.bad(why);
        if let GuardAction::RolledBack(_) = action {
            let kept = std::mem::take(&mut self.last_good.values);
            for (dst, src) in self.values_mut().zip(&kept) {
                dst.clone_from(src);
            }
            self.last_good.values = kept;
            self.optimizer.clone_from(&self.last_good.optimizer);
        }
        action
    }

    /// The fault injected for the step about to be counted, if any.
    fn take_fault(&mut self) -> Option<InjectedFault> {
        let at = self.faults.iter().position(|&(step, _)| step == self.steps)?;
        Some(self.faults.swap_remove(at).1)
    }

    /// Test-only: corrupts step `step` (counting from 0, as [`Trainer::steps`] counts) with
    /// `fault`, so that tests can check the guard catches it.
    #[doc(hidden)]
    pub fn inject_fault(&mut self, step: u64, fault: InjectedFault) {
        self.faults.push((step, fault));
    }

    /// What the guard has done so far: bad steps by cause, and rollbacks.
    pub fn guard_stats(&self) -> GuardStats {
        self.guard.stats()
    }

    /// The evaluation gate: evaluates this trainer's delta and `old` (the delta it would
    /// replace) on the same `held_out` batches and accepts the new one only if its loss is
    /// finite and no higher.
    ///
    /// `old` must be for this trainer's base and task (the same head), or the two losses
    /// would not measure the same thing: otherwise an [`Error::Delta`] (another base) or an
    /// [`Error::Config`] (another task).
    pub fn accept_if_better(&self, held_out: &[Batch], old: &Delta) -> Result<GateDecision> {
        old.check_base(&self.base.fingerprint())?;
        if old.head.as_ref() != Some(&self.task) {
            return Err(Error::Config(format!("the old delta's task {:?} is not this trainer's {:?}: their losses do not compare", old.head, self.task)));
        }
        let new = self.evaluate(held_out)?;
        let old = TaskSession::new(self.base.clone(), old, SessionConfig { threads: self.threads })?.evaluate(held_out)?;
        Ok(GateDecision::judge(new, old))
    }

    /// The task's loss and measure over `batches` (accuracy, perplexity or MSE; see
    /// [`Evaluation`]), without training. A [`super::evaluate::TaskSession`] over the saved
    /// delta gives the same numbers.
    pub fn evaluate(&self, batches: &[Batch]) -> Result<Evaluation> {
        self.with_eval_session(|s| evaluate_task(s, &self.task, self.head.as_ref(), self.parameter_values(crate::peft::madx::MLM_BIAS), batches))
    }

    /// The head's outputs for a batch: class logits `[rows × classes]`, predictions
    /// `[rows × outputs]`, or the LM's logits `[rows × seq × vocab]`.
    pub fn outputs(&self, batch: &Batch) -> Result<Vec<f32>> {
        self.with_eval_session(|s| task_outputs(s, &self.task, self.head.as_ref(), batch))
    }

    /// Turns LoRA dropout on for this step's forward and backward, with a fresh mask per step
    /// and layer; the `refresh` after the step rebuilds the graph without it, so evaluation and
    /// saved deltas never see dropout.
    fn set_dropout(&mut self, t: &Trainables) {
        let PeftMethod::Lora(c) = &self.method else { return };
        if c.dropout <= 0.0 {
            return;
        }
        let (p, step) = (c.dropout, self.steps);
        let mut rng = Rng::new(self.seed ^ step.wrapping_mul(0xA076_1D64_78BD_642F));
        for (i, n) in self.session.graph_mut().nodes.iter_mut().enumerate() {
            if let (true, Op::Linear(l)) = (t.lora.contains(&i), &mut n.op) {
                if let Some(lora) = &mut l.lora {
                    Arc::make_mut(lora).dropout = Some(LoraDropout { p, seed: rng.next_u64() });
                }
            }
        }
    }

    /// The activation memory of the last step: the peak it held, and what a step without
    /// checkpointing holds.
    pub fn last_usage(&self) -> super::checkpoint::Usage {
        self.last_usage
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }
}

/// How many of `pieces` pieces a checkpointed step of `tokens` tokens keeps whole under
/// `budget`: 1 (recompute all but the last) until a step has measured both what a plain step
/// keeps (`full`) and what the leanest holds (`leanest`, per token); then as many more as the
/// room between the leanest step and the budget holds, at `full / pieces` each.
fn kept_pieces(pieces: usize, budget: Option<usize>, full: Option<f64>, leanest: Option<f64>, tokens: usize) -> usize {
    let (Some(budget), Some(full), Some(leanest)) = (budget, full, leanest) else { return 1 };
    let t = tokens as f64;
    let per_piece = full * t / pieces.max(1) as f64;
    let room = budget as f64 - leanest * t;
    if per_piece <= 0.0 || room <= 0.0 {
        return 1;
    }
    // A checkpointed step is one whose plain activations do not fit: it recomputes at least
    // its first piece.
    (1 + (room / per_piece).floor() as usize).min(pieces.saturating_sub(1).max(1))
}

/// A head with `outputs` outputs over the base's hidden size: weight uniform in ±1/√hidden
/// (PyTorch's `nn.Linear` bound), bias zero.
fn new_head(base: &Base, rng: &mut Rng, outputs: usize, pooling: crate::peft::Pooling) -> Result<PooledHead> {
    let hidden = hidden_size(base)?;
    Ok(PooledHead { pooling, outputs, hidden, weight: rng.uniform_vec(outputs * hidden, 1.0 / (hidden as f32).sqrt()), bias: vec![0.0; outputs] })
}

fn targets_name(t: &Targets) -> &'static str {
    match t {
        Targets::Classes(_) => "classes",
        Targets::Values(_) => "values",
        Targets::NextTokens => "next tokens",
        Targets::Masked(_) => "masked tokens",
    }
}

/// The hidden size: the last dim of the first output, read from the fused graph's last
/// `Linear` or norm weight.
pub(crate) fn hidden_size(base: &Base) -> Result<usize> {
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

#[cfg(test)]
mod tests {
    use super::kept_pieces;

    #[test]
    fn a_budget_keeps_as_many_last_pieces_as_fit_beside_the_leanest_step() {
        let mib = 1usize << 20;
        // Unmeasured, or no budget: recompute all but the last piece.
        assert_eq!(kept_pieces(8, None, Some(1.0), Some(0.1), 1000), 1);
        assert_eq!(kept_pieces(8, Some(mib), None, None, 1000), 1);
        assert_eq!(kept_pieces(8, Some(mib), Some(1.0), None, 1000), 1);
        // 1,000 tokens: a plain step keeps 8,000 bytes (1,000 a piece), the leanest 2,000.
        assert_eq!(kept_pieces(8, Some(1_000), Some(8.0), Some(2.0), 1000), 1, "below the leanest");
        assert_eq!(kept_pieces(8, Some(2_999), Some(8.0), Some(2.0), 1000), 1);
        assert_eq!(kept_pieces(8, Some(3_000), Some(8.0), Some(2.0), 1000), 2);
        assert_eq!(kept_pieces(8, Some(5_500), Some(8.0), Some(2.0), 1000), 4);
        // Never all of them: a checkpointed step recomputes at least its first piece.
        assert_eq!(kept_pieces(8, Some(7_999), Some(8.0), Some(0.5), 1000), 7);
        assert_eq!(kept_pieces(1, Some(7_999), Some(8.0), Some(0.5), 1000), 1);
    }
}
