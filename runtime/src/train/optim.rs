//! Optimizers for on-device training: AdamW and SGD with momentum, a warm-up/decay learning-rate
//! schedule, global-norm gradient clipping, and skipping of steps whose gradients are not finite.
//!
//! Parameters are plain `&mut [f32]` slices handed in per step as [`ParamGroup`]s; the optimizer
//! keeps its own state (moments, momentum buffers) keyed by the group's name, so the caller may
//! rebuild the groups every step from whatever owns the tensors.
//!
//! Everything here is sequential and free of randomness: the same configuration, parameters and
//! gradients give bit-identical parameters on every run.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Which update rule to apply.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerKind {
    /// Stochastic gradient descent with (heavy-ball) momentum, PyTorch's form:
    /// `buf = momentum·buf + g; p -= lr·buf`. `momentum = 0` is plain SGD.
    Sgd {
        /// Momentum factor in `[0, 1)`.
        momentum: f32,
    },
    /// Adam with decoupled weight decay (Loshchilov & Hutter), with `torch.optim.AdamW`'s
    /// arithmetic.
    AdamW {
        /// Decay of the first-moment estimate, in `[0, 1)`.
        beta1: f32,
        /// Decay of the second-moment estimate, in `[0, 1)`.
        beta2: f32,
        /// Added to the denominator for numerical stability; positive.
        eps: f32,
    },
}

impl Default for OptimizerKind {
    fn default() -> Self {
        OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

/// How the learning rate falls after warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Decay {
    /// Stay at the base rate; `total_steps` is ignored.
    #[default]
    Constant,
    /// Fall linearly to 0 at `total_steps`.
    Linear,
    /// Follow half a cosine period down to 0 at `total_steps`.
    Cosine,
}

/// The learning-rate multiplier over the course of training.
///
/// With `s` steps already applied, the next step uses `lr · multiplier(s)`, where (as in
/// Hugging Face's `get_*_schedule_with_warmup`):
/// - `s < warmup_steps`: `s / warmup_steps` (so the very first step of a warm-up uses 0);
/// - after warm-up, with `progress = (s − warmup_steps) / (total_steps − warmup_steps)`:
///   `1` for [`Decay::Constant`], `1 − progress` for [`Decay::Linear`],
///   `½(1 + cos(π·progress))` for [`Decay::Cosine`]; 0 from `total_steps` on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Steps over which the rate rises linearly from 0 to the base rate; 0 for none.
    pub warmup_steps: u64,
    /// The step at which a decaying rate reaches 0. Must exceed `warmup_steps` unless the decay
    /// is [`Decay::Constant`].
    pub total_steps: u64,
    /// The shape of the fall after warm-up.
    pub decay: Decay,
}

impl Schedule {
    /// The multiplier for the step that follows `step` applied steps (see the type's docs).
    pub fn multiplier(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return step as f64 / self.warmup_steps as f64;
        }
        if self.decay == Decay::Constant {
            return 1.0;
        }
        if step >= self.total_steps {
            return 0.0;
        }
        // validate() guarantees total_steps > warmup_steps here, so the span is non-zero.
        let span = (self.total_steps - self.warmup_steps) as f64;
        let progress = (step - self.warmup_steps) as f64 / span;
        match self.decay {
            Decay::Constant => 1.0,
            Decay::Linear => 1.0 - progress,
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

/// Settings of an [`Optimizer`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimizerConfig {
    /// The update rule. Default: AdamW with β1 = 0.9, β2 = 0.999, ε = 1e-8.
    pub kind: OptimizerKind,
    /// The base learning rate, scaled by the schedule. Default 1e-3.
    pub lr: f32,
    /// Decoupled weight decay, `p -= lr·weight_decay·p`, applied only to groups with
    /// `decay = true` (never to biases). Default 0.01.
    pub weight_decay: f32,
    /// The learning-rate schedule. Default: no warm-up, constant rate.
    pub schedule: Schedule,
    /// Clip the gradients so that their global L2 norm, over all groups of a step, is at most
    /// this. `None` disables clipping. Default `Some(1.0)`.
    pub max_grad_norm: Option<f32>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::default(),
            lr: 1e-3,
            weight_decay: 0.01,
            schedule: Schedule::default(),
            max_grad_norm: Some(1.0),
        }
    }
}

impl OptimizerConfig {
    /// Checks every value is in range; the error names the offending field.
    pub fn validate(&self) -> Result<()> {
        fn bad(what: String) -> Result<()> {
            Err(Error::Config(what))
        }
        let unit = |x: f32| (0.0..1.0).contains(&x);
        match self.kind {
            OptimizerKind::Sgd { momentum } if !unit(momentum) => {
                return bad(format!("optimizer momentum {momentum} is not in [0, 1)"));
            }
            OptimizerKind::AdamW { beta1, beta2, eps } => {
                if !unit(beta1) || !unit(beta2) {
                    return bad(format!("AdamW betas ({beta1}, {beta2}) are not in [0, 1)"));
                }
                if !(eps.is_finite() && eps > 0.0) {
                    return bad(format!("AdamW eps {eps} is not a positive finite number"));
                }
            }
            OptimizerKind::Sgd { .. } => {}
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate {} is not a positive finite number", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight decay {} is not a non-negative finite number",
                self.weight_decay
            ));
        }
        let s = &self.schedule;
        if s.decay != Decay::Constant && s.total_steps <= s.warmup_steps {
            return bad(format!(
                "schedule total_steps {} must exceed warmup_steps {} for a decaying rate",
                s.total_steps, s.warmup_steps
            ));
        }
        if let Some(m) = self.max_grad_norm {
            if !(m.is_finite() && m > 0.0) {
                return bad(format!("max_grad_norm {m} is not a positive finite number"));
            }
        }
        Ok(())
    }
}

/// One named set of trainable parameters and their gradients for a single step.
///
/// The name keys the optimizer's state, so it must be stable across steps and unique within a
/// step; the length must not change between steps.
#[derive(Debug)]
pub struct ParamGroup<'a> {
    /// Stable, unique name (e.g. `"layer.0.attn.q.lora_a"`).
    pub name: &'a str,
    /// The parameters, updated in place.
    pub values: &'a mut [f32],
    /// The gradient of the loss with respect to `values`; same length.
    pub grads: &'a [f32],
    /// Whether weight decay applies: `false` for biases and norms.
    pub decay: bool,
}

/// What a call to [`Optimizer::step`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepOutcome {
    /// The parameters were updated.
    Applied {
        /// The learning rate used (base rate times the schedule's multiplier).
        lr: f32,
        /// The global L2 norm of the gradients before clipping.
        grad_norm: f64,
        /// Whether the gradients were scaled down to `max_grad_norm`.
        clipped: bool,
    },
    /// A gradient held NaN or ±∞; nothing changed except the skipped-step counter.
    SkippedNonFinite {
        /// The global norm as computed (NaN or ∞).
        grad_norm: f64,
    },
    /// Never returned by [`Optimizer::step`]: a trainer reports it for a step whose loss its
    /// guard refused before the optimizer could run (see [`super::guard`]).
    NotRun,
}

/// Per-group optimizer state: AdamW's moments, or SGD's momentum buffer in `first`.
#[derive(Clone, Debug)]
struct GroupState {
    first: Vec<f32>,
    second: Vec<f32>,
}

/// An optimizer with its state; see the module docs.
#[derive(Clone, Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    // BTreeMap rather than HashMap: lookups only, but nothing here should depend on a hasher's
    // random seed.
    state: BTreeMap<String, GroupState>,
    steps: u64,
    skipped: u64,
}

impl Optimizer {
    /// Builds an optimizer with no state yet; fails if the configuration is out of range.
    pub fn new(config: OptimizerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config, state: BTreeMap::new(), steps: 0, skipped: 0 })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Steps applied so far (skipped steps not counted); drives the schedule and bias
    /// correction.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Steps skipped because a gradient was not finite.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The learning rate the step following `step` applied steps uses.
    pub fn lr_at(&self, step: u64) -> f32 {
        (f64::from(self.config.lr) * self.config.schedule.multiplier(step)) as f32
    }

    /// Applies one update to every group.
    ///
    /// Fails, changing nothing, if a group's gradient length differs from its values, a name
    /// repeats within the call, or a group's length differs from the state kept under its name.
    /// If any gradient is not finite the step is skipped: no parameter, state or schedule
    /// change, only [`Self::skipped`] grows.
    pub fn step(&mut self, groups: &mut [ParamGroup<'_>]) -> Result<StepOutcome> {
        self.check(groups)?;

        // f64 so that many squared f32 terms neither overflow nor lose the small ones.
        let mut sum_sq = 0.0f64;
        let mut finite = true;
        for g in groups.iter() {
            for &x in g.grads {
                finite &= x.is_finite();
                sum_sq += f64::from(x) * f64::from(x);
            }
        }
        let grad_norm = sum_sq.sqrt();
        if !finite {
            self.skipped += 1;
            return Ok(StepOutcome::SkippedNonFinite { grad_norm });
        }

        // Exactly max/norm (PyTorch adds 1e-6 to the norm); the clipped norm is then max_norm.
        let (scale, clipped) = match self.config.max_grad_norm {
            Some(max) if grad_norm > f64::from(max) => ((f64::from(max) / grad_norm) as f32, true),
            _ => (1.0f32, false),
        };

        let lr = self.lr_at(self.steps);
        let t = self.steps + 1;
        let wd_factor = 1.0 - lr * self.config.weight_decay;
        for g in groups.iter_mut() {
            let state = self.state.entry(g.name.to_owned()).or_insert_with(|| GroupState {
                first: vec![0.0; g.values.len()],
                second: match self.config.kind {
                    OptimizerKind::AdamW { .. } => vec![0.0; g.values.len()],
                    OptimizerKind::Sgd { .. } => Vec::new(),
                },
            });
            if g.decay && self.config.weight_decay > 0.0 {
                // Decoupled, before the gradient update, as torch.optim.AdamW does.
                g.values.iter_mut().for_each(|p| *p *= wd_factor);
            }
            match self.config.kind {
                OptimizerKind::Sgd { momentum } => {
                    for ((p, &gr), buf) in g.values.iter_mut().zip(g.grads).zip(&mut state.first) {
                        *buf = momentum * *buf + gr * scale;
                        *p -= lr * *buf;
                    }
                }
                OptimizerKind::AdamW { beta1, beta2, eps } => {
                    // torch's form: p -= (lr/bc1)·m / (√v/√bc2 + eps), i.e. lr·m̂/(√v̂ + eps).
                    let exp = i32::try_from(t).unwrap_or(i32::MAX);
                    let bc1 = 1.0 - f64::from(beta1).powi(exp);
                    let bc2 = 1.0 - f64::from(beta2).powi(exp);
                    let step_size = (f64::from(lr) / bc1) as f32;
                    let bc2_sqrt = bc2.sqrt() as f32;
                    let it = g.values.iter_mut().zip(g.grads);
                    for (((p, &gr), m), v) in it.zip(&mut state.first).zip(&mut state.second) {
                        let gr = gr * scale;
                        *m = beta1 * *m + (1.0 - beta1) * gr;
                        *v = beta2 * *v + (1.0 - beta2) * gr * gr;
                        *p -= step_size * *m / (v.sqrt() / bc2_sqrt + eps);
                    }
                }
            }
        }
        self.steps = t;
        Ok(StepOutcome::Applied { lr, grad_norm, clipped })
    }

    /// All the checks that can fail, done before anything is mutated.
    fn check(&self, groups: &[ParamGroup<'_>]) -> Result<()> {
        for (i, g) in groups.iter().enumerate() {
            if g.values.len() != g.grads.len() {
                return Err(Error::Config(format!(
                    "parameter group `{}` has {} values but {} gradients",
                    g.name,
                    g.values.len(),
                    g.grads.len()
                )));
            }
            if groups[..i].iter().any(|o| o.name == g.name) {
                return Err(Error::Config(format!(
                    "parameter group `{}` appears twice in one step",
                    g.name
                )));
            }
            if let Some(s) = self.state.get(g.name) {
                if s.first.len() != g.values.len() {
                    return Err(Error::Config(format!(
                        "parameter group `{}` had {} values and now has {}",
                        g.name,
                        s.first.len(),
                        g.values.len()
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adamw(lr: f32, weight_decay: f32) -> OptimizerConfig {
        OptimizerConfig { lr, weight_decay, max_grad_norm: None, ..Default::default() }
    }

    fn sgd(lr: f32, momentum: f32) -> OptimizerConfig {
        OptimizerConfig {
            kind: OptimizerKind::Sgd { momentum },
            lr,
            weight_decay: 0.0,
            max_grad_norm: None,
            ..Default::default()
        }
    }

    fn one(opt: &mut Optimizer, p: &mut [f32], g: &[f32]) -> StepOutcome {
        let mut groups = [ParamGroup { name: "w", values: p, grads: g, decay: true }];
        opt.step(&mut groups).expect("valid groups")
    }

    #[test]
    fn adamw_first_steps_match_hand_computation() {
        // p = 1, lr = 0.1, wd = 0, β1 = 0.9, β2 = 0.999, ε = 1e-8.
        // Step 1, g = 0.5: m = 0.05, v = 0.00025, m̂ = 0.05/0.1 = 0.5, v̂ = 0.00025/0.001 = 0.25,
        //   p = 1 − 0.1·0.5/(0.5 + 1e-8) = 0.9 (to 2e-9).
        // Step 2, g = −0.25: m = 0.9·0.05 − 0.025 = 0.02, v = 0.999·0.00025 + 0.0000625
        //   = 0.00031225, m̂ = 0.02/0.19, v̂ = 0.00031225/0.001999,
        //   p = 0.9 − 0.1·0.105263/0.395225 = 0.873366 (f64: 0.8733662987).
        // Tolerance 1e-6: a few f32 ulps at ~1 across the two steps.
        let mut opt = Optimizer::new(adamw(0.1, 0.0)).expect("valid config");
        let mut p = [1.0f32];
        let out = one(&mut opt, &mut p, &[0.5]);
        assert_eq!(out, StepOutcome::Applied { lr: 0.1, grad_norm: 0.5, clipped: false });
        assert!((p[0] - 0.9).abs() < 1e-6, "{}", p[0]);
        one(&mut opt, &mut p, &[-0.25]);
        assert!((p[0] - 0.873_366_3).abs() < 1e-6, "{}", p[0]);
        assert_eq!(opt.steps(), 2);
        let s = &opt.state["w"];
        assert!((s.first[0] - 0.02).abs() < 1e-7);
        // In f32, 1 − 0.999 rounds to 0.00099998713, so v is off by ~1.3e-5 relative.
        assert!((s.second[0] / 0.000_312_25 - 1.0).abs() < 5e-5, "{}", s.second[0]);
    }

    #[test]
    fn decoupled_weight_decay_skips_groups_without_decay() {
        // Zero gradients: the Adam update is 0/(0 + ε) = 0, leaving only decay:
        // p = 2·(1 − lr·wd) = 2·(1 − 0.1·0.5) = 1.9 for the weight; the bias stays 2.
        let mut opt = Optimizer::new(adamw(0.1, 0.5)).expect("valid config");
        let (mut w, mut b) = ([2.0f32, -2.0], [2.0f32]);
        let zeros = [0.0f32; 2];
        let mut groups = [
            ParamGroup { name: "w", values: &mut w, grads: &zeros, decay: true },
            ParamGroup { name: "b", values: &mut b, grads: &zeros[..1], decay: false },
        ];
        opt.step(&mut groups).expect("valid groups");
        assert_eq!(w, [1.9, -1.9]);
        assert_eq!(b, [2.0]);
    }

    #[test]
    fn sgd_with_momentum_converges_on_a_quadratic() {
        // f(p) = ½·Σ a_i·p_i², ∇f = a_i·p_i; minimum at 0. Curvatures up to 4 with lr 0.1 and
        // momentum 0.9 are within heavy-ball's stable region (lr·a < 2(1 + μ)).
        let a = [1.0f32, 4.0, 0.5];
        let mut p = [3.0f32, -2.0, 5.0];
        let mut opt = Optimizer::new(sgd(0.1, 0.9)).expect("valid config");
        for _ in 0..300 {
            let g: Vec<f32> = a.iter().zip(&p).map(|(a, p)| a * p).collect();
            one(&mut opt, &mut p, &g);
        }
        assert!(p.iter().all(|x| x.abs() < 1e-4), "{p:?}");
    }

    #[test]
    fn sgd_momentum_buffer_matches_pytorch_form() {
        // buf1 = g = 1, p = 0 − 0.5·1 = −0.5; buf2 = 0.5·1 + 1 = 1.5, p = −0.5 − 0.75 = −1.25.
        let mut opt = Optimizer::new(sgd(0.5, 0.5)).expect("valid config");
        let mut p = [0.0f32];
        one(&mut opt, &mut p, &[1.0]);
        assert_eq!(p, [-0.5]);
        one(&mut opt, &mut p, &[1.0]);
        assert_eq!(p, [-1.25]);
    }

    #[test]
    fn schedule_warmup_and_decay_values() {
        let linear = Schedule { warmup_steps: 10, total_steps: 110, decay: Decay::Linear };
        assert_eq!(linear.multiplier(0), 0.0);
        assert_eq!(linear.multiplier(5), 0.5);
        assert_eq!(linear.multiplier(10), 1.0);
        assert_eq!(linear.multiplier(35), 0.75);
        assert_eq!(linear.multiplier(110), 0.0);
        assert_eq!(linear.multiplier(500), 0.0);

        let cosine = Schedule { decay: Decay::Cosine, ..linear };
        assert_eq!(cosine.multiplier(5), 0.5);
        assert_eq!(cosine.multiplier(10), 1.0);
        // Halfway through the decay: ½(1 + cos(π/2)) = 0.5; a quarter: ½(1 + √½) ≈ 0.853553.
        assert!((cosine.multiplier(60) - 0.5).abs() < 1e-12);
        assert!((cosine.multiplier(35) - 0.853_553_390_593_273_7).abs() < 1e-12);
        assert_eq!(cosine.multiplier(110), 0.0);

        let constant = Schedule { warmup_steps: 4, total_steps: 0, decay: Decay::Constant };
        assert_eq!(constant.multiplier(1), 0.25);
        assert_eq!(constant.multiplier(1_000_000), 1.0);

        let config = OptimizerConfig { lr: 0.2, schedule: linear, ..Default::default() };
        let opt = Optimizer::new(config).expect("valid config");
        assert_eq!(opt.lr_at(5), 0.1);
        assert_eq!(opt.lr_at(35), 0.15);
    }

    #[test]
    fn schedule_drives_the_applied_learning_rate() {
        let mut config = sgd(1.0, 0.0);
        config.schedule = Schedule { warmup_steps: 2, total_steps: 4, decay: Decay::Linear };
        let mut opt = Optimizer::new(config).expect("valid config");
        let mut p = [0.0f32];
        let lrs: Vec<f32> = (0..5)
            .map(|_| match one(&mut opt, &mut p, &[1.0]) {
                StepOutcome::Applied { lr, .. } => lr,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(lrs, [0.0, 0.5, 1.0, 0.5, 0.0]);
        assert_eq!(p, [-2.0]);
    }

    #[test]
    fn global_norm_clipping_scales_all_groups_alike() {
        // Global norm √(3² + 4²) = 5 > 1, so every gradient is scaled by 1/5; plain SGD with
        // lr 1 moves each parameter by exactly the scaled gradient.
        let mut config = sgd(1.0, 0.0);
        config.max_grad_norm = Some(1.0);
        let mut opt = Optimizer::new(config).expect("valid config");
        let (mut a, mut b) = ([0.0f32, 0.0], [0.0f32]);
        let mut groups = [
            ParamGroup { name: "a", values: &mut a, grads: &[3.0, 0.0], decay: true },
            ParamGroup { name: "b", values: &mut b, grads: &[4.0], decay: false },
        ];
        let out = opt.step(&mut groups).expect("valid groups");
        assert_eq!(out, StepOutcome::Applied { lr: 1.0, grad_norm: 5.0, clipped: true });
        assert_eq!(a, [-0.6, 0.0]);
        assert_eq!(b, [-0.8]);

        // Under the limit nothing is scaled.
        let mut groups = [ParamGroup { name: "b", values: &mut b, grads: &[0.5], decay: false }];
        let out = opt.step(&mut groups).expect("valid groups");
        assert_eq!(out, StepOutcome::Applied { lr: 1.0, grad_norm: 0.5, clipped: false });
        assert_eq!(b, [-1.3]);
    }

    #[test]
    fn non_finite_gradient_skips_the_whole_step() {
        let mut config = adamw(0.1, 0.1);
        config.schedule = Schedule { warmup_steps: 2, total_steps: 10, decay: Decay::Cosine };
        let mut opt = Optimizer::new(config).expect("valid config");
        let (mut w, mut b) = ([1.0f32, 2.0], [0.5f32]);
        for _ in 0..3 {
            let mut groups = [
                ParamGroup { name: "w", values: &mut w, grads: &[0.1, -0.2], decay: true },
                ParamGroup { name: "b", values: &mut b, grads: &[0.3], decay: false },
            ];
            opt.step(&mut groups).expect("valid groups");
        }
        let before = (w, b, opt.state.clone(), opt.steps());

        for bad in [f32::NAN, f32::INFINITY] {
            let mut groups = [
                ParamGroup { name: "w", values: &mut w, grads: &[0.1, -0.2], decay: true },
                ParamGroup { name: "b", values: &mut b, grads: &[bad], decay: false },
            ];
            let out = opt.step(&mut groups).expect("valid groups");
            assert!(
                matches!(out, StepOutcome::SkippedNonFinite { grad_norm } if !grad_norm.is_finite())
            );
        }
        assert_eq!(opt.skipped(), 2);
        assert_eq!(opt.steps(), before.3);
        assert_eq!((w, b), (before.0, before.1));
        for (name, s) in &before.2 {
            assert_eq!(opt.state[name].first, s.first);
            assert_eq!(opt.state[name].second, s.second);
        }
    }

    #[test]
    fn identical_runs_are_bit_identical() {
        let mut config = adamw(0.05, 0.01);
        config.max_grad_norm = Some(0.5);
        config.schedule = Schedule { warmup_steps: 5, total_steps: 50, decay: Decay::Cosine };
        let run = || {
            let mut opt = Optimizer::new(config).expect("valid config");
            let mut w: Vec<f32> = (0..17).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut b = vec![0.1f32; 3];
            for step in 0..50 {
                // A fixed, non-trivial gradient sequence: the quadratic's gradient plus a
                // step-dependent wobble.
                let gw: Vec<f32> =
                    w.iter().enumerate().map(|(i, x)| x + ((step * 7 + i) as f32).cos()).collect();
                let gb: Vec<f32> = b.iter().map(|x| 2.0 * x - 0.3).collect();
                let mut groups = [
                    ParamGroup { name: "w", values: &mut w, grads: &gw, decay: true },
                    ParamGroup { name: "b", values: &mut b, grads: &gb, decay: false },
                ];
                opt.step(&mut groups).expect("valid groups");
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            (bits(&w), bits(&b))
        };
        let (first, second) = (run(), run());
        assert_eq!(first, second);
        // Guard against a vacuous comparison: training moved the parameters.
        assert_ne!(first.1, vec![0.1f32.to_bits(); 3]);
    }

    #[test]
    fn invalid_configs_and_groups_are_refused() {
        let bad = [
            OptimizerConfig { lr: 0.0, ..Default::default() },
            OptimizerConfig { lr: f32::NAN, ..Default::default() },
            OptimizerConfig { weight_decay: -1.0, ..Default::default() },
            OptimizerConfig { max_grad_norm: Some(0.0), ..Default::default() },
            OptimizerConfig { kind: OptimizerKind::Sgd { momentum: 1.0 }, ..Default::default() },
            OptimizerConfig {
                kind: OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 0.0 },
                ..Default::default()
            },
            OptimizerConfig {
                schedule: Schedule { warmup_steps: 10, total_steps: 10, decay: Decay::Linear },
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(matches!(c.validate(), Err(Error::Config(_))), "{c:?}");
            assert!(Optimizer::new(c).is_err());
        }
        OptimizerConfig::default().validate().expect("defaults are valid");

        let mut opt = Optimizer::new(adamw(0.1, 0.0)).expect("valid config");
        let mut p = [1.0f32, 2.0];
        one(&mut opt, &mut p, &[0.1, 0.1]);
        let after_one = p;
        let mut short = [1.0f32];
        let mut groups = [ParamGroup { name: "w", values: &mut short, grads: &[0.1], decay: true }];
        assert!(matches!(opt.step(&mut groups), Err(Error::Config(_))));
        let mut groups = [ParamGroup { name: "w", values: &mut p, grads: &[0.1], decay: true }];
        assert!(matches!(opt.step(&mut groups), Err(Error::Config(_))));
        let (mut x, mut y) = ([0.0f32], [0.0f32]);
        let mut groups = [
            ParamGroup { name: "d", values: &mut x, grads: &[0.1], decay: true },
            ParamGroup { name: "d", values: &mut y, grads: &[0.1], decay: true },
        ];
        assert!(matches!(opt.step(&mut groups), Err(Error::Config(_))));
        assert_eq!((x, y, p), ([0.0], [0.0], after_one));
        assert_eq!(opt.steps(), 1);
    }
}
