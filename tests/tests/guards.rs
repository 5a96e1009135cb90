//! The training guard and the evaluation gate on the tiny BERT: faults injected at random steps
//! of 100 seeded runs are each caught and counted, runs at 1000× the learning rate stay
//! finite, no delta the trainer hands out holds a non-finite value (and the store refuses one
//! that does), and a seed repeats a run bit for bit, faults and rollbacks included.

use std::sync::Arc;

use kilotune::delta::{self, Delta, DeltaError, NamedTensor, Precision, TensorData};
use kilotune::peft::{LoraConfig, PeftMethod, Pooling, TaskHead};
use kilotune::train::guard::{BadStep, GuardAction, GuardStats, InjectedFault};
use kilotune::train::optim::StepOutcome;
use kilotune::train::rng::Rng;
use kilotune::train::trainer::{Batch, TrainConfig, Trainer};
use kilotune::{Base, Error, LoadOptions, Tensor};
use kilotune_tests::fixtures;

/// Steps per run: past the guard's warm-up of 5 good steps, and short.
const STEPS: usize = 12;
/// The learning rate the tiny BERT learns its toy task at (as in `trainer.rs`).
const LR: f32 = 5e-2;

fn bert() -> Arc<Base> {
    Base::load(fixtures().join("tiny-bert.dynamo.onnx"), LoadOptions::default()).unwrap()
}

/// `n` batches of 4 rows × 6 tokens; rows whose first token is below 64 are class 0.
fn batches(n: usize, seed: u64) -> Vec<Batch> {
    let (rows, seq) = (4, 6);
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let ids: Vec<i64> = (0..rows * seq).map(|_| (rng.next_u64() % 127 + 1) as i64).collect();
            let labels = (0..rows).map(|r| usize::from(ids[r * seq] >= 64)).collect();
            Batch::classification(
                vec![
                    ("input_ids".into(), Tensor::new(&[rows, seq], ids).unwrap()),
                    ("attention_mask".into(), Tensor::new(&[rows, seq], vec![1i64; rows * seq]).unwrap()),
                    ("token_type_ids".into(), Tensor::new(&[rows, seq], vec![0i64; rows * seq]).unwrap()),
                ],
                labels,
            )
        })
        .collect()
}

fn trainer(base: &Arc<Base>, seed: u64, lr: f32) -> Trainer {
    let mut config = TrainConfig { seed, threads: 1, ..Default::default() };
    config.optimizer.lr = lr;
    let method = PeftMethod::Lora(LoraConfig { r: 2, alpha: 4.0, ..Default::default() });
    Trainer::new(base.clone(), method, TaskHead::Classification { classes: 2, pooling: Pooling::Mean }, config).unwrap()
}

/// The tensors' bits: what "bit-identical" compares.
fn bits(d: &Delta) -> Vec<(String, Vec<u32>)> {
    d.tensors
        .iter()
        .map(|t| match &t.data {
            TensorData::F32(v) => (t.name.clone(), v.iter().map(|x| x.to_bits()).collect()),
            other => panic!("the trainer hands out f32, not {other:?}"),
        })
        .collect()
}

fn all_finite(d: &Delta) -> bool {
    d.tensors.iter().all(|t| matches!(&t.data, TensorData::F32(v) if v.iter().all(|x| x.is_finite())))
}

/// One run: every step's loss bits and guard action, the tensors before each step and at the
/// end, and the guard's counts.
#[derive(Debug, PartialEq)]
struct Run {
    losses: Vec<u32>,
    actions: Vec<GuardAction>,
    before: Vec<Vec<(String, Vec<u32>)>>,
    end: Vec<(String, Vec<u32>)>,
    stats: GuardStats,
}

fn run(base: &Arc<Base>, seed: u64, lr: f32, data: &[Batch], faults: &[(u64, InjectedFault)]) -> (Run, Delta) {
    let mut t = trainer(base, seed, lr);
    for &(step, fault) in faults {
        t.inject_fault(step, fault);
    }
    let (mut losses, mut actions, mut before) = (Vec::new(), Vec::new(), Vec::new());
    for b in data {
        before.push(bits(&t.delta()));
        let r = t.step(b).unwrap();
        // Whatever happened, what the trainer would save is finite.
        assert!(all_finite(&t.delta()), "seed {seed}, step {}: {:?}", losses.len(), r);
        losses.push(r.loss.to_bits());
        actions.push(r.guard);
    }
    let d = t.delta();
    (Run { losses, actions, before, end: bits(&d), stats: t.guard_stats() }, d)
}

/// The count of `why` in `s`.
fn count(s: &GuardStats, why: BadStep) -> u64 {
    match why {
        BadStep::NonFiniteLoss => s.non_finite_loss,
        BadStep::NonFiniteGradient => s.non_finite_gradients,
        BadStep::NonFiniteParameter => s.non_finite_parameters,
        BadStep::LossSpike => s.loss_spikes,
    }
}

#[test]
fn guards_catch_every_injected_fault_in_100_seeded_runs() {
    let base = bert();
    let kinds = [
        (InjectedFault::NanLoss, BadStep::NonFiniteLoss),
        (InjectedFault::NanGradient, BadStep::NonFiniteGradient),
        (InjectedFault::NanParameter, BadStep::NonFiniteParameter),
        (InjectedFault::LossSpike, BadStep::LossSpike),
    ];
    let mut caught = [0u32; 4];
    for seed in 0..100u64 {
        let mut rng = Rng::new(seed);
        let kind = (rng.next_u64() % 4) as usize;
        let (fault, why) = kinds[kind];
        // A spike is judged against the average of good losses, looked at after 5 good steps.
        let first = if fault == InjectedFault::LossSpike { 6 } else { 0 };
        let at = first + rng.next_u64() % (STEPS as u64 - first);
        let data = batches(STEPS, 1000 + seed);
        let (a, delta) = run(&base, seed, LR, &data, &[(at, fault)]);
        let case = format!("seed {seed}: {fault:?} at step {at}");

        // Detected at its step, and every bad step counted by its cause: the injected one,
        // and any spike the run had on its own (4-row batches at this rate are noisy).
        let i = at as usize;
        let expect = if why == BadStep::NonFiniteLoss || why == BadStep::NonFiniteGradient { GuardAction::Skipped(why) } else { GuardAction::RolledBack(why) };
        assert_eq!(a.actions[i], expect, "{case}: {:?}", a.actions);
        for cause in [BadStep::NonFiniteLoss, BadStep::NonFiniteGradient, BadStep::NonFiniteParameter, BadStep::LossSpike] {
            let seen = a.actions.iter().filter(|g| matches!(g, GuardAction::Skipped(c) | GuardAction::RolledBack(c) if *c == cause)).count() as u64;
            assert_eq!(count(&a.stats, cause), seen, "{case}: {cause:?} in {:?}", a.stats);
        }
        // Nothing else is ever non-finite at this rate: the injected fault is the only one.
        assert_eq!(a.stats.non_finite_loss + a.stats.non_finite_gradients + a.stats.non_finite_parameters, u64::from(why != BadStep::LossSpike), "{case}: {:?}", a.stats);
        // Undone: after the step, the parameters are those from before it, or, for a spike
        // (which condemns the parameters the step started from), those from before the last
        // step that passed.
        let after = a.before.get(i + 1).unwrap_or(&a.end);
        let back_to = if why == BadStep::LossSpike { (0..i).rev().find(|&j| a.actions[j] == GuardAction::Passed).expect("the warm-up passed") } else { i };
        assert_eq!(after, &a.before[back_to], "{case}");
        // A NaN loss is reported as it was; the optimizer never ran on a refused loss.
        if fault == InjectedFault::NanLoss {
            assert!(f32::from_bits(a.losses[i]).is_nan(), "{case}");
        }

        // What the trainer hands out saves and loads.
        let bytes = delta::to_bytes(&delta, Precision::F32).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(delta::from_bytes(&bytes, None, &Default::default()).unwrap(), delta);
        // The same seed and fault repeat the run bit for bit.
        let (b, _) = run(&base, seed, LR, &data, &[(at, fault)]);
        assert_eq!(a, b, "{case}: a second run differs");
        caught[kind] += 1;
    }
    println!("faults caught, by kind (NaN loss, NaN gradient, NaN parameter, loss spike): {caught:?}");
    assert!(caught.iter().all(|&c| c > 0), "every kind of fault was tried: {caught:?}");
}

#[test]
fn guards_three_bad_steps_in_a_row_restore_the_parameters_and_the_optimizer() {
    let base = bert();
    let data = batches(10, 7);
    let faults = [(4, InjectedFault::NanLoss), (5, InjectedFault::NanGradient), (6, InjectedFault::NanLoss)];
    let (a, _) = run(&base, 3, LR, &data, &faults);
    use BadStep::*;
    assert_eq!(
        a.actions[3..8],
        [GuardAction::Passed, GuardAction::Skipped(NonFiniteLoss), GuardAction::Skipped(NonFiniteGradient), GuardAction::RolledBack(NonFiniteLoss), GuardAction::Passed]
    );
    assert_eq!((a.stats.rollbacks, a.stats.bad_steps()), (1, 3));
    // The last good parameters are those step 3 started from: its update came before the
    // parameters that gave three bad steps.
    assert_eq!(a.before[7], a.before[3]);

    // The optimizer went back too: a clean trainer that took steps 0..=2 and then steps 7..
    // lands on the same bits (the guard counts steps, but no dropout here reads the count).
    let mut clean = trainer(&base, 3, LR);
    for b in data[..3].iter().chain(&data[7..]) {
        clean.step(b).unwrap();
    }
    assert_eq!(bits(&clean.delta()), a.end);
}

#[test]
fn guards_keep_runs_at_1000x_the_learning_rate_finite_and_repeatable() {
    let base = bert();
    let mut total = GuardStats::default();
    let faults = [InjectedFault::NanLoss, InjectedFault::NanGradient, InjectedFault::NanParameter];
    for seed in 0..20u64 {
        let mut rng = Rng::new(500 + seed);
        let (fault, at) = (faults[(rng.next_u64() % 3) as usize], rng.next_u64() % STEPS as u64);
        let case = format!("seed {seed}: {fault:?} at step {at}");
        let data = batches(STEPS, 2000 + seed);
        let (a, delta) = run(&base, seed, LR * 1000.0, &data, &[(at, fault)]);
        delta::to_bytes(&delta, Precision::F32).unwrap_or_else(|e| panic!("{case}: {e}"));
        let (b, _) = run(&base, seed, LR * 1000.0, &data, &[(at, fault)]);
        assert_eq!(a, b, "{case}: a second run differs");
        // The faulty step never passes (a NaN loss is caught as such; a bad gradient or
        // parameter only if the loss was not a spike first).
        let action = a.actions[at as usize];
        assert_ne!(action, GuardAction::Passed, "{case}");
        if fault == InjectedFault::NanLoss {
            assert!(matches!(action, GuardAction::Skipped(BadStep::NonFiniteLoss) | GuardAction::RolledBack(BadStep::NonFiniteLoss)), "{case}: {action:?}");
        }
        // Every bad step is accounted for.
        let bad = a.actions.iter().filter(|g| **g != GuardAction::Passed).count() as u64;
        assert_eq!(bad, a.stats.bad_steps(), "{case}");
        let s = a.stats;
        total.non_finite_loss += s.non_finite_loss;
        total.non_finite_gradients += s.non_finite_gradients;
        total.non_finite_parameters += s.non_finite_parameters;
        total.loss_spikes += s.loss_spikes;
        total.rollbacks += s.rollbacks;
    }
    println!("20 runs at 1000x the learning rate, one NaN fault each: {total:?}");
    // The rate is high enough that the guard has more to do than the injected faults.
    assert!(total.loss_spikes > 0, "{total:?}");
}

#[test]
fn guards_a_delta_with_a_non_finite_value_is_refused_by_the_store() {
    let base = bert();
    let mut d = trainer(&base, 1, LR).delta();
    let dir = std::env::temp_dir().join(format!("kilotune-guards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("user.ktd");
    delta::save(&d, &path, Precision::F32).unwrap();
    let good = std::fs::read(&path).unwrap();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let t = &mut d.tensors[0];
        let (name, shape) = (t.name.clone(), t.shape.clone());
        let mut v = t.to_f32().unwrap();
        v[0] = bad;
        *t = NamedTensor::f32(name.clone(), &shape, v);
        for p in [Precision::F32, Precision::F16, Precision::Int8] {
            let err = delta::save(&d, &path, p).unwrap_err();
            assert!(matches!(&err, DeltaError::NonFinite { tensor } if *tensor == name), "{bad} {p:?}: {err:?}");
        }
    }
    // The refusal came before anything was written.
    assert_eq!(std::fs::read(&path).unwrap(), good);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn guards_gate_accepts_an_improvement_and_rejects_a_regression() {
    let base = bert();
    // Scored on part of the training data, where the trained delta surely does better than an
    // untrained one (on fresh data this toy task overfits); the gate only compares.
    let train = batches(20, 5);
    let held_out = train[..6].to_vec();
    let untrained = trainer(&base, 2, LR);
    let mut trained = trainer(&base, 2, LR);
    for _ in 0..3 {
        for b in &train {
            trained.step(b).unwrap();
        }
    }
    let better = trained.accept_if_better(&held_out, &untrained.delta()).unwrap();
    assert!(better.accepted(), "{better}");
    let worse = untrained.accept_if_better(&held_out, &trained.delta()).unwrap();
    assert!(!worse.accepted(), "{worse}");
    assert_eq!(worse.new_evaluation().loss, better.old_evaluation().loss);
    // The old delta is evaluated as a saved delta would be: the same numbers as its trainer.
    assert_eq!(better.new_evaluation(), &trained.evaluate(&held_out).unwrap());
    assert_eq!(worse.old_evaluation(), &trained.evaluate(&held_out).unwrap());
    // Against itself: no worse.
    assert!(trained.accept_if_better(&held_out, &trained.delta()).unwrap().accepted());

    // A delta of another task or base does not compare.
    let mut other_task = trained.delta();
    other_task.head = Some(TaskHead::Classification { classes: 2, pooling: Pooling::Cls });
    assert!(matches!(trained.accept_if_better(&held_out, &other_task), Err(Error::Config(_))));
    let mut other_base = trained.delta();
    other_base.base_fingerprint = [0; 32];
    assert!(matches!(trained.accept_if_better(&held_out, &other_base), Err(Error::Delta(DeltaError::WrongBase { .. }))));
    // The outcome of a refused step says the optimizer did not run.
    let mut t = trainer(&base, 4, LR);
    t.inject_fault(0, InjectedFault::NanLoss);
    assert_eq!(t.step(&held_out[0]).unwrap().outcome, StepOutcome::NotRun);
}
