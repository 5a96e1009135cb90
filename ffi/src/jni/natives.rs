//! The native methods of `dev.kilotune.Native` (android/src/main/java/dev/kilotune/Native.java).
//! Each one: convert, call `core`, return; a handle is the `jlong` of the C handle.

use jni::objects::{JByteArray, JClass, JIntArray, JLongArray, JObjectArray, JString};
use jni::sys::{jboolean, jbyteArray, jdoubleArray, jfloat, jfloatArray, jint, jlong, jlongArray, jstring};
use jni::{Env, EnvUnowned};

use super::{handle, handle_mut, ints, longs, optional_longs, string, unsigned, Jr, ThrowKilotune};
use crate::boundary::{free_handle, into_handle};
use crate::c::base::kt_base;
use crate::c::delta::kt_delta;
use crate::c::session::{kt_outputs, kt_session};
use crate::c::trainer::kt_trainer;
use crate::core::training::{Labeled, TrainerState};
use crate::core::{self, Settings, Tokens};
use crate::status::Failure;

/// Java's token arrays for one batch.
struct JavaTokens {
    rows: usize,
    seq_len: usize,
    ids: Vec<i64>,
    mask: Vec<i64>,
    types: Option<Vec<i64>>,
}

impl JavaTokens {
    fn read(env: &Env<'_>, rows: jint, seq_len: jint, ids: &JLongArray<'_>, mask: &JLongArray<'_>, types: &JLongArray<'_>) -> Jr<JavaTokens> {
        Ok(JavaTokens {
            rows: unsigned(rows, "rows")? as usize,
            seq_len: unsigned(seq_len, "seqLen")? as usize,
            ids: longs(env, ids, "inputIds")?,
            mask: longs(env, mask, "attentionMask")?,
            types: optional_longs(env, types, "tokenTypeIds")?,
        })
    }

    fn tokens(&self) -> Tokens<'_> {
        Tokens { rows: self.rows, seq_len: self.seq_len, input_ids: &self.ids, attention_mask: &self.mask, token_type_ids: self.types.as_deref() }
    }
}

/// `v[at..end]`, or an invalid-argument failure naming the array.
fn cut<'a>(v: &'a [i64], at: usize, end: usize, name: &str) -> Result<&'a [i64], Failure> {
    v.get(at..end).ok_or_else(|| Failure::invalid(name, "shorter than the batches' sizes"))
}

fn labels(v: Vec<i32>) -> Jr<Vec<u32>> {
    v.into_iter().map(|l| unsigned(l, "labels")).collect()
}

fn float_array<'l>(env: &mut Env<'l>, v: &[f32]) -> Jr<jfloatArray> {
    let a = env.new_float_array(v.len())?;
    a.set_region(env, 0, v)?;
    Ok(a.into_raw())
}

fn double_array<'l>(env: &mut Env<'l>, v: &[f64]) -> Jr<jdoubleArray> {
    let a = env.new_double_array(v.len())?;
    a.set_region(env, 0, v)?;
    Ok(a.into_raw())
}

fn long_array<'l>(env: &mut Env<'l>, v: &[i64]) -> Jr<jlongArray> {
    let a = env.new_long_array(v.len())?;
    a.set_region(env, 0, v)?;
    Ok(a.into_raw())
}

// ---- Base ----

#[no_mangle]
pub extern "system" fn Java_dev_kilotune_Native_baseLoad<'l>(mut env: EnvUnowned<'l>, _c: JClass<'l>, path: JString<'l>, int8: jboolean) -> jlong {
    env.with_env(|env| -> Jr<jlong> {
        let base = core::load_base(&string(env, &path, "path")?, int8)?;
        Ok(into_handle(kt_base { base }) as jlong)
    })
    .resolve::<ThrowKilotune>()
}

#[no_mangle]
pub extern "system" fn Java_dev_kilotune_Native_baseLoadBytes<'l>(mut env: EnvUnowned<'l>, _c: JClass<'l>, bytes: JByteArray<'l>, int8: jboolean) -> jlong {
    env.with_env(|env| -> Jr<jlong> {
        if bytes.is_null() {
            return Err(Failure::null("bytes").into());
        }
        let v = env.convert_byte_array(&bytes)?;
        let base = core::load_base_bytes(&v, int8)?;
        Ok(into_handle(kt_base { base }) as jlong)
    })
    .resolve::<ThrowKilotune>()
}

#[no_mangle]
pub extern "system" fn Java_dev_kilotune_Native_baseFingerprint<'l>(mut env: EnvUnowned<'l>, _c: JClass<'l>, base: jlong) -> jbyteArray {
    env.with_env(|env| -> Jr<jbyteArray> {
        // SAFETY: `base` is the live handle of a `dev.kilotune.Base`.
        let base = unsafe { handle::<kt_base>(base, "base")? };
        Ok(env.byte_array_from_slice(&base.base.fingerprint())?.into_raw())
    })
    .resolve::<ThrowKilotune>()
}

#[no_mangle]
pub extern "system" fn Java_dev_kilotune_Native_baseFree<'l>(mut env: EnvUnowned<'l>, _c: JClass<'l>, base: jlong) {
    env.with_env(|_| -> Jr<()> {
        // SAFETY: `Base.close` passes its handle once, then forgets it.
        unsafe { free_handle(base as usize as *mut kt_base) };
        Ok(())
    })
    .resolve::<ThrowKilotune>()
}

// ---- Trainer ----

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_dev_kilotune_Native_trainerNew<'l>(
    mut env: EnvUnowned<'l>,
    _c: JClass<'l>,
    base: jlong,
    method: jint,
    lora_rank: jint,
    lora_alpha: jfloat,
    lora_targets: JObjectArray<'l, JString<'l>>,
    bitfit_variant: jint,
    bitfit_layer_norm: jboolean,
    classes: jint,
    pooling: jint,
    seed: jlong,
    threads: jint,
    optimizer: jint,
    learning_rate: jfloat,
    weight_decay: jfloat,
    momentum: jfloat,
    warmup_steps: jlong,
    total_steps: jlong,
    decay: jint,
    max_grad_norm: jfloat,
) -> jlong {
    env.with_env(|env| -> Jr<jlong> {
        // SAFETY: `base` is the live handle of a `dev.kilotune.Base`.
        let base = unsafe { handle::<kt_base>(base, "base")? };
        let mut targets = Vec::new();
        if !lora_targets.is_null() {
            for i in 0..lora_targets.len(env)? {
                let s: JString<'_> = lora_targets.get_element(env, i)?;
                targets.push(string(env, &s, "loraTargets[i]")?);
            }
        }
        let steps = |v: jlong, name: &str| u64::try_from(v).map_err(|_| Failure::invalid(name, format!("{v} is negative")));
        let settings = Settings {
            method: unsigned(method, "method")?,
            lora_rank: unsigned(lora_rank, "loraRank")?,
            lora_alpha,
            lora_targets: targets,
            bitfit_variant: unsigned(bitfit_variant, "bitfitVariant")?,
            bitfit_layer_norm,
            classes: unsigned(classes, "classes")?,
            pooling: unsigned(pooling, "pooling")?,
            // Java has no unsigned long: the seed's bits are taken as they are.
            seed: seed as u64,
            threads: unsigned(threads, "threads")?,
            optimizer: unsigned(optimizer, "optimizer")?,
            learning_rate,
            weight_decay,
            momentum,
            warmup_steps: steps(warmup_steps, "warmupSteps")?,
            total_steps: steps(total_steps, "totalSteps")?,
            decay: unsigned(decay, "decay")?,
            max_grad_norm,
        };
        let state = TrainerState::new(base.base.clone(), &settings)?;
        Ok(into_handle(kt_trainer { state }) as jlong)
    })
    .resolve::<ThrowKilotune>()
}

/// Returns `{loss, applied (1 or 0), steps}`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_dev_kilotune_Native_trainerStep<'l>(
    mut env: EnvUnowned<'l>,
    _c: JClass<'l>,
    trainer: jlong,
    rows: jint,
    seq_len: jint,
    ids: JLongArray<'l>,
    mask: JLongArray<'l>,
    types: JLongArray<'l>,
    labels_: JIntArray<'l>,
) -> jdoubleArray {
    env.with_env(|env| -> Jr<jdoubleArray> {
        // SAFETY: the live handle of a `dev.kilotune.Trainer`, whose methods are synchronized.
        let trainer = unsafe { handle_mut::<kt_trainer>(trainer, "trainer")? };
        let t = JavaTokens::read(env, rows, seq_len, &ids, &mask, &types)?;
        let l = labels(ints(env, &labels_, "labels")?)?;
        let r = trainer.state.step(&Labeled { tokens: t.tokens(), labels: &l })?;
        double_array(env, &[f64::from(r.loss), f64::from(u8::from(r.applied)), r.steps as f64])
    })
    .resolve::<ThrowKilotune>()
}

/// Batches concatenated: batch `i` has `rows[i] × seqLens[i]` tokens in each array and
/// `rows[i]` labels. Returns `{accuracy, loss, rows}`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_dev_kilotune_Native_trainerEvaluate<'l>(
    mut env: EnvUnowned<'l>,
    _c: JClass<'l>,
    trainer: jlong,
    rows: JIntArray<'l>,
    seq_lens: JIntArray<'l>,
    ids: JLongArray<'l>,
    mask: JLongArray<'l>,
    types: JLongArray<'l>,
    labels_: JIntArray<'l>,
) -> jdoubleArray {
    env.with_env(|env| -> Jr<jdoubleArray> {
        // SAFETY: the live handle of a `dev.kilotune.Trainer`, whose methods are synchronized.
        let trainer = unsafe { handle::<kt_trainer>(trainer, "trainer")? };
        let (rows, seq_lens) = (ints(env, &rows, "rows")?, ints(env, &seq_lens, "seqLens")?);
        let (ids, mask, types) = (longs(env, &ids, "inputIds")?, longs(env, &mask, "attentionMask")?, optional_longs(env, &types, "tokenTypeIds")?);
        let all_labels = labels(ints(env, &labels_, "labels")?)?;
        if rows.len() != seq_lens.len() {
            return Err(Failure::invalid("seqLens", "one per batch, as rows").into());
        }
        let (mut at, mut at_label) = (0usize, 0usize);
        let mut batches = Vec::with_capacity(rows.len());
        for (&r, &s) in rows.iter().zip(&seq_lens) {
            let (r, s) = (unsigned(r, "rows")? as usize, unsigned(s, "seqLens")? as usize);
            let n = r.checked_mul(s).ok_or_else(|| Failure::invalid("rows × seqLen", "overflows"))?;
            let end = at + n;
            let tokens = Tokens {
                rows: r,
                seq_len: s,
                input_ids: cut(&ids, at, end, "inputIds")?,
                attention_mask: cut(&mask, at, end, "attentionMask")?,
                token_type_ids: types.as_deref().map(|t| cut(t, at, end, "tokenTypeIds")).transpose()?,
            };
            let labels = all_labels.get(at_label..at_label + r).ok_or_else(|| Failure::invalid("labels", "fewer than the batches' rows"))?;
            batches.push(Labeled { tokens, labels });
            (at, at_label) = (end, at_label + r);
        }
        let e = trainer.state.evaluate(&batches)?;
        double_array(env, &[f64::from(e.accuracy), f64::from(e.loss), e.rows as f64])
    })
    .resolve::<ThrowKilotune>()
}

#[no_mangle]
pub extern "system" fn Java_dev_kilotune_Native_trainerDelta<'l>(mut env: EnvUnowned<'l>, _c: JClass<'l>, trainer: jlong) -> jlong {
    env.with_env(|_| -> Jr<jlong> {
        // SAFETY: the live handle of a `dev.kilotune.Trainer`, whose methods are synchronized.
        let trainer = unsafe { handle::<kt_trainer>(trainer, "trainer")? };
        Ok(into_handle(kt_delta { delta: trainer.state.delta() }) as jlong)
    })
    .resolve::<ThrowKilotune>()
}

#[no_mangle]
pub extern "system" fn Java_dev_kilotune_Native_trainerFree<'l>(mut env: EnvUnowned<'l>, _c: JClass<'l>, trainer: jlong) {
    env.with_env(|_| -> Jr<()> {
        // SAFETY: `Trainer.close` passes its handle once, then forgets it.
        unsafe { free_handle(trainer as usize as *mut kt_trainer) };
        Ok(())
    })
    .resolve::<ThrowKilotune>()
}

// ---- Delta ----

#[no_mangle]
pub extern "system" fn Java_dev_kilotune_Native_deltaSave<'l>(mut env: EnvUnowned<'l>, _c: JClass<'l>, delta: jlong, path: JString<'l>, precision: jint) {
    env.with_env(|env| -> Jr<()> {
        // SAFETY: the live handle of a `dev.kilotune.Delta` (immutable).
        let delta = unsafe { handle::<kt_delta>(delta, "delta")? };
        Ok(core::save_delta(&delta.delta, &string(env, &path, "path")?, unsigned(precision, "precision")?)?)
    })
    .resolve::<ThrowKilotune>()
}

#[no_mangle]
pub extern "system" fn Java_dev_kilotune_Native_deltaLoad<'l>(mut env: EnvUnowned<'l>, _c: JClass<'l>, base: jlong, path: JString<'l>) -> jlong {
    env.with_env(|env| -> Jr<jlong> {
        // SAFETY: the live handle of a `dev.kilotune.Base`.
        let base = unsafe { handle::<kt_base>(base, "base")? };
        let delta = core::load_delta(&base.base, &string(env, &path, "path")?)?;
        Ok(into_handle(kt_delta { delta }) as jlong)
    })
    .resolve::<ThrowKilotune>()
}

#[no_mangle]
pub extern "system" fn Java_dev_kilotune_Native_deltaSteps<'l>(mut env: EnvUnowned<'l>, _c: JClass<'l>, delta: jlong) -> jlong {
    env.with_env(|_| -> Jr<jlong> {
        // SAFETY: the live handle of a `dev.kilotune.Delta` (immutable).
        let delta = unsafe { handle::<kt_delta>(delta, "delta")? };
        Ok(delta.delta.summary.steps as jlong)
    })
    .resolve::<ThrowKilotune>()
}

#[no_mangle]
pub extern "system" fn Java_dev_kilotune_Native_deltaFree<'l>(mut env: EnvUnowned<'l>, _c: JClass<'l>, delta: jlong) {
    env.with_env(|_| -> Jr<()> {
        // SAFETY: `Delta.close` passes its handle once, then forgets it.
        unsafe { free_handle(delta as usize as *mut kt_delta) };
        Ok(())
    })
    .resolve::<ThrowKilotune>()
}

// ---- Session ----

/// `delta` 0: the plain base.
#[no_mangle]
pub extern "system" fn Java_dev_kilotune_Native_sessionNew<'l>(mut env: EnvUnowned<'l>, _c: JClass<'l>, base: jlong, delta: jlong, threads: jint) -> jlong {
    env.with_env(|_| -> Jr<jlong> {
        // SAFETY: live handles of a `dev.kilotune.Base` and (when non-zero) a `Delta`.
        let base = unsafe { handle::<kt_base>(base, "base")? };
        // SAFETY: as above.
        let delta = if delta == 0 { None } else { Some(unsafe { handle::<kt_delta>(delta, "delta")? }) };
        let session = core::new_session(base.base.clone(), delta.map(|d| &d.delta), unsigned(threads, "threads")?)?;
        Ok(into_handle(kt_session { session }) as jlong)
    })
    .resolve::<ThrowKilotune>()
}

#[no_mangle]
pub extern "system" fn Java_dev_kilotune_Native_sessionSetDelta<'l>(mut env: EnvUnowned<'l>, _c: JClass<'l>, session: jlong, delta: jlong) {
    env.with_env(|_| -> Jr<()> {
        // SAFETY: the live handle of a `dev.kilotune.Session`, whose methods are synchronized.
        let session = unsafe { handle_mut::<kt_session>(session, "session")? };
        // SAFETY: the live handle of a `dev.kilotune.Delta` when non-zero.
        let delta = if delta == 0 { None } else { Some(unsafe { handle::<kt_delta>(delta, "delta")? }) };
        Ok(session.session.set_delta(delta.map(|d| &d.delta))?)
    })
    .resolve::<ThrowKilotune>()
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_dev_kilotune_Native_sessionRun<'l>(
    mut env: EnvUnowned<'l>,
    _c: JClass<'l>,
    session: jlong,
    rows: jint,
    seq_len: jint,
    ids: JLongArray<'l>,
    mask: JLongArray<'l>,
    types: JLongArray<'l>,
) -> jlong {
    env.with_env(|env| -> Jr<jlong> {
        // SAFETY: the live handle of a `dev.kilotune.Session`, whose methods are synchronized.
        let session = unsafe { handle::<kt_session>(session, "session")? };
        let t = JavaTokens::read(env, rows, seq_len, &ids, &mask, &types)?;
        let set = core::run(&session.session, &t.tokens())?;
        Ok(into_handle(kt_outputs { set }) as jlong)
    })
    .resolve::<ThrowKilotune>()
}

#[no_mangle]
pub extern "system" fn Java_dev_kilotune_Native_sessionFree<'l>(mut env: EnvUnowned<'l>, _c: JClass<'l>, session: jlong) {
    env.with_env(|_| -> Jr<()> {
        // SAFETY: `Session.close` passes its handle once, then forgets it.
        unsafe { free_handle(session as usize as *mut kt_session) };
        Ok(())
    })
    .resolve::<ThrowKilotune>()
}

// ---- Outputs (read into Java objects by Session.run, then freed) ----

#[no_mangle]
pub extern "system" fn Java_dev_kilotune_Native_outputsCount<'l>(mut env: EnvUnowned<'l>, _c: JClass<'l>, outputs: jlong) -> jint {
    env.with_env(|_| -> Jr<jint> {
        // SAFETY: a live outputs handle from `sessionRun`, used by one Java call at a time.
        let o = unsafe { handle::<kt_outputs>(outputs, "outputs")? };
        Ok(jint::try_from(o.set.items.len()).map_err(|_| Failure::invalid("outputs", "too many"))?)
    })
    .resolve::<ThrowKilotune>()
}

#[no_mangle]
pub extern "system" fn Java_dev_kilotune_Native_outputName<'l>(mut env: EnvUnowned<'l>, _c: JClass<'l>, outputs: jlong, index: jint) -> jstring {
    env.with_env(|env| -> Jr<jstring> {
        // SAFETY: a live outputs handle from `sessionRun`.
        let o = unsafe { handle::<kt_outputs>(outputs, "outputs")? };
        let item = o.set.get(unsigned(index, "index")? as usize)?;
        Ok(env.new_string(item.name.to_string_lossy())?.into_raw())
    })
    .resolve::<ThrowKilotune>()
}

#[no_mangle]
pub extern "system" fn Java_dev_kilotune_Native_outputShape<'l>(mut env: EnvUnowned<'l>, _c: JClass<'l>, outputs: jlong, index: jint) -> jlongArray {
    env.with_env(|env| -> Jr<jlongArray> {
        // SAFETY: a live outputs handle from `sessionRun`.
        let o = unsafe { handle::<kt_outputs>(outputs, "outputs")? };
        let item = o.set.get(unsigned(index, "index")? as usize)?;
        let dims: Vec<i64> = item.shape.iter().map(|&d| d as i64).collect();
        long_array(env, &dims)
    })
    .resolve::<ThrowKilotune>()
}

#[no_mangle]
pub extern "system" fn Java_dev_kilotune_Native_outputData<'l>(mut env: EnvUnowned<'l>, _c: JClass<'l>, outputs: jlong, index: jint) -> jfloatArray {
    env.with_env(|env| -> Jr<jfloatArray> {
        // SAFETY: a live outputs handle from `sessionRun`.
        let o = unsafe { handle::<kt_outputs>(outputs, "outputs")? };
        let item = o.set.get(unsigned(index, "index")? as usize)?;
        float_array(env, &item.data)
    })
    .resolve::<ThrowKilotune>()
}

#[no_mangle]
pub extern "system" fn Java_dev_kilotune_Native_outputsFree<'l>(mut env: EnvUnowned<'l>, _c: JClass<'l>, outputs: jlong) {
    env.with_env(|_| -> Jr<()> {
        // SAFETY: `Session.run` frees the handle once, in a finally block.
        unsafe { free_handle(outputs as usize as *mut kt_outputs) };
        Ok(())
    })
    .resolve::<ThrowKilotune>()
}
