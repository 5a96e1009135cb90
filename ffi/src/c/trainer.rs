//! `kt_trainer`: trains a delta on a frozen base, one batch at a time.

use std::ffi::c_char;

use super::base::kt_base;
use super::delta::kt_delta;
use super::session::{tokens, kt_tokens};
use crate::boundary::{arg_mut, arg_ref, arg_slice, arg_str, call, call_infallible, free_handle, into_handle, Out};
use crate::core::training::{Labeled, TrainerState};
use crate::core::Settings;
use crate::status::{kt_status, Failure};

/// PEFT method: LoRA (low-rank updates beside the targeted `Linear`s).
pub const KT_METHOD_LORA: u32 = 0;
/// PEFT method: BitFit (bias terms only).
pub const KT_METHOD_BITFIT: u32 = 1;
/// BitFit trains every `Linear` bias.
pub const KT_BITFIT_ALL: u32 = 0;
/// BitFit trains only the attention query bias and the MLP's middle bias.
pub const KT_BITFIT_QUERY_AND_MLP: u32 = 1;
/// The head pools the mean of the unpadded tokens.
pub const KT_POOLING_MEAN: u32 = 0;
/// The head pools the first token (BERT's `[CLS]`).
pub const KT_POOLING_CLS: u32 = 1;
/// AdamW (β1 0.9, β2 0.999, ε 1e-8).
pub const KT_OPTIMIZER_ADAMW: u32 = 0;
/// SGD with momentum `sgd_momentum`.
pub const KT_OPTIMIZER_SGD: u32 = 1;
/// The learning rate stays constant after warm-up.
pub const KT_DECAY_CONSTANT: u32 = 0;
/// The learning rate falls linearly to 0 at `total_steps`.
pub const KT_DECAY_LINEAR: u32 = 1;
/// The learning rate follows half a cosine to 0 at `total_steps`.
pub const KT_DECAY_COSINE: u32 = 2;

/// How a trainer is set up. Start from `kt_train_config_default()` and change what you need.
/// The library reads it only during `kt_trainer_new` and keeps no pointer into it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct kt_train_config {
    /// `KT_METHOD_LORA` or `KT_METHOD_BITFIT`. Default LoRA.
    pub method: u32,
    /// LoRA rank, at least 1. Default 8.
    pub lora_rank: u32,
    /// LoRA alpha (the update is scaled by alpha / rank). Default 16.
    pub lora_alpha: f32,
    /// LoRA target modules, matched as PEFT does (a module path equal to a target or ending in
    /// "." + target); `lora_target_count` NUL-terminated strings. NULL with a count of 0 means
    /// the default, "query" and "value".
    pub lora_targets: *const *const c_char,
    /// The number of strings at `lora_targets`.
    pub lora_target_count: usize,
    /// `KT_BITFIT_ALL` or `KT_BITFIT_QUERY_AND_MLP`. Default all.
    pub bitfit_variant: u32,
    /// Non-zero: BitFit trains LayerNorm biases too. Default 1.
    pub bitfit_layer_norm: u32,
    /// Classes of the classification head, at least 2. Default 2.
    pub classes: u32,
    /// `KT_POOLING_MEAN` or `KT_POOLING_CLS`. Default mean.
    pub pooling: u32,
    /// Seed of the initialization: the same seed, data and thread count repeat a run bit for
    /// bit. Default 0.
    pub seed: u64,
    /// Worker threads, 0 for one per core. Default 0.
    pub threads: u32,
    /// `KT_OPTIMIZER_ADAMW` or `KT_OPTIMIZER_SGD`. Default AdamW.
    pub optimizer: u32,
    /// Base learning rate. Default 1e-3.
    pub learning_rate: f32,
    /// Decoupled weight decay (never on biases). Default 0.01.
    pub weight_decay: f32,
    /// SGD momentum in [0, 1). Default 0.
    pub sgd_momentum: f32,
    /// Steps over which the rate rises from 0. Default 0.
    pub warmup_steps: u64,
    /// The step at which a decaying rate reaches 0. Default 0.
    pub total_steps: u64,
    /// `KT_DECAY_CONSTANT`, `KT_DECAY_LINEAR` or `KT_DECAY_COSINE`. Default constant.
    pub decay: u32,
    /// Clip gradients to this global L2 norm; 0 disables clipping. Default 1.
    pub max_grad_norm: f32,
}

/// A batch for training or evaluation: tokens and one class label per row.
#[repr(C)]
pub struct kt_batch {
    /// The rows.
    pub tokens: kt_tokens,
    /// `tokens.rows` labels, each below the head's class count.
    pub labels: *const u32,
}

/// What one training step did.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct kt_step_report {
    /// The loss before the update.
    pub loss: f32,
    /// 1 if the update was applied, 0 if it was skipped because a gradient was not finite.
    pub applied: u32,
    /// Steps taken so far, this one included.
    pub steps: u64,
}

/// Accuracy and mean loss over some batches.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct kt_evaluation {
    /// The fraction of rows classified right.
    pub accuracy: f32,
    /// The mean cross-entropy.
    pub loss: f32,
    /// Rows seen.
    pub rows: u64,
}

/// Trains one delta on a frozen base.
///
/// Ownership: made by `kt_trainer_new`, freed by `kt_trainer_free`; it keeps its own reference
/// to the base. Thread safety: not for concurrent use; call it from one thread at a time (it
/// may move between threads). Each thread that trains needs its own trainer; they may share
/// one base.
pub struct kt_trainer {
    pub(crate) state: TrainerState,
}

/// The defaults: LoRA r=8, alpha 16 on "query" and "value"; a two-class head with mean
/// pooling; AdamW at 1e-3, weight decay 0.01, constant rate, clipping at 1.0; seed 0; one
/// thread per core. Safe from any thread.
#[no_mangle]
pub extern "C" fn kt_train_config_default() -> kt_train_config {
    let s = Settings::default();
    let fallback = kt_train_config {
        method: s.method,
        lora_rank: s.lora_rank,
        lora_alpha: s.lora_alpha,
        lora_targets: std::ptr::null(),
        lora_target_count: 0,
        bitfit_variant: s.bitfit_variant,
        bitfit_layer_norm: u32::from(s.bitfit_layer_norm),
        classes: s.classes,
        pooling: s.pooling,
        seed: s.seed,
        threads: s.threads,
        optimizer: s.optimizer,
        learning_rate: s.learning_rate,
        weight_decay: s.weight_decay,
        sgd_momentum: s.momentum,
        warmup_steps: s.warmup_steps,
        total_steps: s.total_steps,
        decay: s.decay,
        max_grad_norm: s.max_grad_norm,
    };
    call_infallible(fallback, || fallback)
}

/// Reads a `kt_train_config` after checking its pointers.
///
/// # Safety
/// `lora_targets` must be NULL (count 0) or point to `lora_target_count` NUL-terminated strings.
unsafe fn settings(c: &kt_train_config) -> Result<Settings, Failure> {
    // SAFETY: the caller's promise; the helpers check for NULL, alignment and size.
    let ptrs = unsafe { arg_slice(c.lora_targets, c.lora_target_count, "lora_targets")? };
    let lora_targets = ptrs
        .iter()
        .enumerate()
        // SAFETY: each entry is a NUL-terminated string (the caller's promise); NULL is refused.
        .map(|(i, &p)| unsafe { arg_str(p, &format!("lora_targets[{i}]")) }.map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Settings {
        method: c.method,
        lora_rank: c.lora_rank,
        lora_alpha: c.lora_alpha,
        lora_targets,
        bitfit_variant: c.bitfit_variant,
        bitfit_layer_norm: c.bitfit_layer_norm != 0,
        classes: c.classes,
        pooling: c.pooling,
        seed: c.seed,
        threads: c.threads,
        optimizer: c.optimizer,
        learning_rate: c.learning_rate,
        weight_decay: c.weight_decay,
        momentum: c.sgd_momentum,
        warmup_steps: c.warmup_steps,
        total_steps: c.total_steps,
        decay: c.decay,
        max_grad_norm: c.max_grad_norm,
    })
}

/// Reads a `kt_batch` after checking its pointers.
///
/// # Safety
/// As `tokens`, and `labels` must point to `tokens.rows` values.
unsafe fn labeled(b: &kt_batch) -> Result<Labeled<'_>, Failure> {
    // SAFETY: the caller's promise; the helpers check for NULL, alignment and size.
    unsafe { Ok(Labeled { tokens: tokens(&b.tokens)?, labels: arg_slice(b.labels, b.tokens.rows, "labels")? }) }
}

/// A trainer for `config` on `base`. LoRA starts with B = 0, so before the first step a
/// session with its delta gives the base's outputs exactly.
///
/// On success `*out` is a new trainer the caller owns (free it with `kt_trainer_free`); on
/// failure `*out` is left untouched. Thread safety: any thread.
///
/// # Safety
/// `base` must be a live base; `config` a valid `kt_train_config`; `out` valid for writing a
/// pointer.
#[no_mangle]
pub unsafe extern "C" fn kt_trainer_new(base: *const kt_base, config: *const kt_train_config, out: *mut *mut kt_trainer) -> kt_status {
    call(|| {
        // SAFETY: the caller's promises above; the helpers check for NULL and alignment.
        let (base, config, out) = unsafe { (arg_ref(base, "base")?, arg_ref(config, "config")?, Out::new(out, "out")?) };
        // SAFETY: the caller promises the target strings are valid.
        let settings = unsafe { settings(config)? };
        let state = TrainerState::new(base.base.clone(), &settings)?;
        out.write(into_handle(kt_trainer { state }));
        Ok(())
    })
}

/// One optimization step on `batch`; `*out` reports the loss before the update.
///
/// # Safety
/// `trainer` must be live and not in use by another thread; `batch` must point to a
/// `kt_batch` whose arrays have the sizes it states; `out` valid for writing.
#[no_mangle]
pub unsafe extern "C" fn kt_trainer_step(trainer: *mut kt_trainer, batch: *const kt_batch, out: *mut kt_step_report) -> kt_status {
    call(|| {
        // SAFETY: the caller's promises above; the helpers check for NULL and alignment.
        let (trainer, batch, out) = unsafe { (arg_mut(trainer, "trainer")?, arg_ref(batch, "batch")?, Out::new(out, "out")?) };
        // SAFETY: the caller promises the arrays have the stated sizes.
        let batch = unsafe { labeled(batch)? };
        let r = trainer.state.step(&batch)?;
        out.write(kt_step_report { loss: r.loss, applied: u32::from(r.applied), steps: r.steps });
        Ok(())
    })
}

/// Accuracy and mean loss over `count` batches at `batches`, without training.
///
/// # Safety
/// `trainer` must be live and not being stepped by another thread; `batches` must point to
/// `count` `kt_batch`es whose arrays have the sizes they state; `out` valid for writing.
#[no_mangle]
pub unsafe extern "C" fn kt_trainer_evaluate(trainer: *const kt_trainer, batches: *const kt_batch, count: usize, out: *mut kt_evaluation) -> kt_status {
    call(|| {
        // SAFETY: the caller's promises above; the helpers check for NULL, alignment and size.
        let (trainer, batches, out) = unsafe { (arg_ref(trainer, "trainer")?, arg_slice(batches, count, "batches")?, Out::new(out, "out")?) };
        // SAFETY: the caller promises every batch's arrays have the stated sizes.
        let batches = batches.iter().map(|b| unsafe { labeled(b) }).collect::<Result<Vec<_>, _>>()?;
        let e = trainer.state.evaluate(&batches)?;
        out.write(kt_evaluation { accuracy: e.accuracy, loss: e.loss, rows: e.rows });
        Ok(())
    })
}

/// A snapshot of the delta as trained so far (parameters, head and a training summary), to
/// save or to give to a session. Later steps do not change it.
///
/// On success `*out` is a new delta the caller owns (free it with `kt_delta_free`); on failure
/// it is left untouched.
///
/// # Safety
/// `trainer` must be live and not being stepped by another thread; `out` valid for writing a
/// pointer.
#[no_mangle]
pub unsafe extern "C" fn kt_trainer_delta(trainer: *const kt_trainer, out: *mut *mut kt_delta) -> kt_status {
    call(|| {
        // SAFETY: the caller's promises above; the helpers check for NULL and alignment.
        let (trainer, out) = unsafe { (arg_ref(trainer, "trainer")?, Out::new(out, "out")?) };
        out.write(into_handle(kt_delta { delta: trainer.state.delta() }));
        Ok(())
    })
}

/// Frees a trainer. NULL is a no-op. Deltas taken from it stay valid. Call once, when no other
/// thread is using it.
///
/// # Safety
/// `trainer` must be NULL or a live trainer not freed before.
#[no_mangle]
pub unsafe extern "C" fn kt_trainer_free(trainer: *mut kt_trainer) {
    // SAFETY: the caller promises `trainer` is NULL or a live handle from `into_handle`.
    call_infallible((), || unsafe { free_handle(trainer) })
}
