//! [`Session`]: runs a [`Base`] on named inputs with a thread pool sized by the caller.

use std::sync::Arc;

use crate::backend::cpu::Plan;
use crate::base::Base;
use crate::error::{Error, Result};
use crate::graph::Dim;
use crate::tensor::Tensor;

/// Settings for a [`Session`].
#[derive(Clone, Debug, Default)]
pub struct SessionConfig {
    /// Worker threads; 0 means one per available core. A phone app owns its cores, so this is
    /// the caller's choice, never a global.
    pub threads: usize,
}

/// Named outputs of a run, in the model's declared order.
#[derive(Debug, Clone)]
pub struct Outputs(pub Vec<(String, Tensor)>);

impl Outputs {
    /// The output called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// A session's worker threads.
struct Pool(rayon::ThreadPool);

impl Pool {
    #[cfg(not(kilotune_tsan))]
    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.0.install(f)
    }

    /// Under ThreadSanitizer (built with `--cfg kilotune_tsan` by `ffi/tests/run.sh tsan`) the
    /// hand-off to the pool and back goes through an atomic flag in this crate, which the
    /// sanitizer sees. rayon's own `install` waits on a `Condvar` whose relock happens inside
    /// the prebuilt standard library, which it cannot see, so it would take every value a job
    /// passes back for a race. The work still runs on the pool's threads, split as usual.
    #[cfg(kilotune_tsan)]
    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        use std::sync::atomic::{AtomicBool, Ordering};
        let done = AtomicBool::new(false);
        let mut out: Option<std::thread::Result<R>> = None;
        {
            let slot = &mut out;
            let done = &done;
            let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
                *slot = Some(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
                done.store(true, Ordering::Release);
            });
            // SAFETY: this function does not return before `done` is set, the job's last use
            // of anything it borrows, so every borrow outlives the job.
            let job: Box<dyn FnOnce() + Send + 'static> = unsafe { std::mem::transmute(job) };
            self.0.spawn(job);
        }
        while !done.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        match out.take() {
            Some(Ok(r)) => r,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => unreachable!("the job sets its result before its flag"),
        }
    }
}

/// Runs a base model. Sessions are cheap; many can share one `Arc<Base>`.
pub struct Session {
    base: Arc<Base>,
    /// The graph this session runs: the base's, or a copy with a delta applied (weights stay
    /// shared).
    graph: Arc<crate::graph::Graph>,
    plan: Plan,
    pool: Pool,
    /// The soft prompt's length (prompt tuning), 0 without one.
    prompt_len: usize,
}

impl Session {
    /// A session over `base`.
    pub fn new(base: Arc<Base>, config: SessionConfig) -> Result<Session> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads)
            .thread_name(|i| format!("kilotune-{i}"))
            .build()
            .map_err(|e| Error::Config(format!("thread pool: {e}")))?;
        let pool = Pool(pool);
        let graph = base.shared_graph();
        let plan = Plan::new(&graph);
        Ok(Session { base, graph, plan, pool, prompt_len: 0 })
    }

    /// A session that runs `base` with a user's `delta` (LoRA side paths, bias deltas). The
    /// delta must have been made for this base: its fingerprint is checked first.
    ///
    /// ```no_run
    /// use kilotune::{delta, Base, LoadOptions, Session, SessionConfig};
    /// let base = Base::load("model.onnx", LoadOptions::default())?;
    /// let user = delta::load("user.ktd", Some(&base.fingerprint()), &Default::default())?;
    /// let session = Session::with_delta(base, &user, SessionConfig { threads: 2 })?;
    /// # Ok::<(), kilotune::Error>(())
    /// ```
    pub fn with_delta(base: Arc<Base>, delta: &crate::delta::Delta, config: SessionConfig) -> Result<Session> {
        crate::peft::apply::check_base(delta, &base.fingerprint())?;
        let graph = crate::peft::apply::apply_delta(base.graph(), delta)?;
        let mut s = Session::new(base, config)?;
        s.plan = Plan::new(&graph);
        s.prompt_len = crate::peft::prompt::prompt_len(&graph);
        s.graph = Arc::new(graph);
        Ok(s)
    }

    /// The base this session runs.
    pub fn base(&self) -> &Arc<Base> {
        &self.base
    }

    /// The number of worker threads.
    pub fn threads(&self) -> usize {
        self.pool.0.current_num_threads()
    }

    /// Runs the model. Every declared input must be given once, with its declared element type
    /// and rank; symbolic dims (batch, sequence) may take any size per run.
    ///
    /// ```no_run
    /// use kilotune::{Base, LoadOptions, Session, SessionConfig, Tensor};
    /// let base = Base::load("model.onnx", LoadOptions::default())?;
    /// let session = Session::new(base, SessionConfig { threads: 2 })?;
    /// let ids = Tensor::new(&[1, 3], vec![101i64, 7592, 102])?;
    /// let mask = Tensor::new(&[1, 3], vec![1i64; 3])?;
    /// let types = Tensor::new(&[1, 3], vec![0i64; 3])?;
    /// let out = session.run(&[("input_ids", ids), ("attention_mask", mask), ("token_type_ids", types)])?;
    /// println!("{:?}", out.get("last_hidden_state").map(|t| t.shape().to_vec()));
    /// # Ok::<(), kilotune::Error>(())
    /// ```
    pub fn run(&self, inputs: &[(&str, Tensor)]) -> Result<Outputs> {
        let g = &*self.graph;
        let feeds = self.check_inputs(inputs)?;
        let outs = self.pool.install(|| self.plan.execute(g, feeds))?;
        let outs = self.strip_prompt(outs, inputs)?;
        Ok(Outputs(g.outputs.iter().map(|&o| g.values[o].name.clone()).zip(outs).collect()))
    }

    /// The soft prompt's length when this session's delta is prompt tuning, else 0. Such a
    /// session widens its inputs by it and strips it from its outputs (see
    /// [`crate::peft::prompt`]); the values [`Session::run_keep`] keeps are the widened ones.
    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    /// The sequence length of the caller's (unwidened) inputs.
    fn seq_len(inputs: &[(&str, Tensor)]) -> usize {
        inputs.first().and_then(|(_, t)| t.shape().get(1).copied()).unwrap_or(0)
    }

    /// Outputs without the soft prompt's positions.
    fn strip_prompt(&self, outs: Vec<Tensor>, inputs: &[(&str, Tensor)]) -> Result<Vec<Tensor>> {
        if self.prompt_len == 0 {
            return Ok(outs);
        }
        let seq = Self::seq_len(inputs);
        outs.iter().map(|t| crate::peft::prompt::strip(t, self.prompt_len, seq)).collect()
    }

    /// The graph's outputs among `slots` (a run that kept its values) without the soft prompt's
    /// positions, for a loss to read; the other values stay as the graph computed them.
    pub(crate) fn prompt_view(&self, slots: &[Option<Tensor>], inputs: &[(&str, Tensor)]) -> Result<Vec<Option<Tensor>>> {
        let mut view = slots.to_vec();
        if self.prompt_len > 0 {
            let seq = Self::seq_len(inputs);
            for &o in &self.graph.outputs {
                if let Some(t) = &slots[o] {
                    view[o] = Some(crate::peft::prompt::strip(t, self.prompt_len, seq)?);
                }
            }
        }
        Ok(view)
    }

    /// [`Session::run`], also returning the wall time spent in each op type, largest first.
    pub fn run_profiled(&self, inputs: &[(&str, Tensor)]) -> Result<(Outputs, Vec<(String, std::time::Duration)>)> {
        let g = &*self.graph;
        let feeds = self.check_inputs(inputs)?;
        let mut times = vec![std::time::Duration::ZERO; g.nodes.len()];
        let outs = self.pool.install(|| self.plan.execute_timed(g, feeds, Some(&mut times)))?;
        let outs = self.strip_prompt(outs, inputs)?;
        let mut per_op: Vec<(String, std::time::Duration)> = Vec::new();
        for (n, t) in g.nodes.iter().zip(times) {
            match per_op.iter_mut().find(|(name, _)| name == n.op.name()) {
                Some((_, total)) => *total += t,
                None => per_op.push((n.op.name().to_owned(), t)),
            }
        }
        per_op.sort_by_key(|p| std::cmp::Reverse(p.1));
        Ok((Outputs(g.outputs.iter().map(|&o| g.values[o].name.clone()).zip(outs).collect()), per_op))
    }

    /// Switches this session to another delta for the same base (or to none), keeping its
    /// thread pool.
    pub fn set_delta(&mut self, delta: Option<&crate::delta::Delta>) -> Result<()> {
        self.graph = match delta {
            Some(d) => {
                crate::peft::apply::check_base(d, &self.base.fingerprint())?;
                Arc::new(crate::peft::apply::apply_delta(self.base.graph(), d)?)
            }
            None => self.base.shared_graph(),
        };
        // A delta may add nodes (MAD-X's invertible adapter): plan again, which is cheap, and
        // keep the device that runs part of the work.
        let offload = self.plan.offload().cloned();
        self.plan = Plan::new(&self.graph);
        self.plan.set_offload(offload);
        self.prompt_len = crate::peft::prompt::prompt_len(&self.graph);
        Ok(())
    }

    /// The graph this session runs (the base's, or its copy with a delta applied).
    pub fn graph(&self) -> &crate::graph::Graph {
        &self.graph
    }

    /// Runs the model keeping every intermediate value, for a backward pass.
    pub fn run_keep(&self, inputs: &[(&str, Tensor)]) -> Result<Vec<Option<Tensor>>> {
        let feeds = self.check_inputs(inputs)?;
        self.pool.install(|| self.plan.execute_keep(&self.graph, feeds))
    }

    /// Runs the model keeping only the intermediates marked in `saved` (see
    /// [`crate::train::saved::saved_values`]) and the outputs, for a leaner backward pass.
    pub fn run_saving(&self, inputs: &[(&str, Tensor)], saved: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let feeds = self.check_inputs(inputs)?;
        self.pool.install(|| self.plan.execute_saving(&self.graph, feeds, saved))
    }

    /// Evaluates `nodes` of this session's graph on `slots`, keeping what `saved` marks (see
    /// [`crate::backend::cpu::Plan::execute_range`]).
    pub(crate) fn run_range(&self, slots: &mut [Option<Tensor>], nodes: std::ops::Range<usize>, saved: &[bool]) -> Result<()> {
        self.pool.install(|| self.plan.execute_range(&self.graph, slots, nodes, saved))
    }

    /// The graph, to change for one training step (LoRA dropout masks); copied first if
    /// another session shares it.
    pub(crate) fn graph_mut(&mut self) -> &mut crate::graph::Graph {
        Arc::make_mut(&mut self.graph)
    }

    /// Lets another device run the ops it covers, in runs and in training steps (the
    /// `vulkan` backend; `None`: everything on the CPU).
    pub(crate) fn set_offload(&mut self, offload: Option<Arc<dyn crate::backend::cpu::Offload>>) {
        self.plan.set_offload(offload);
    }

    /// The device that runs part of this session's work, if any.
    pub(crate) fn offload(&self) -> Option<&Arc<dyn crate::backend::cpu::Offload>> {
        self.plan.offload()
    }

    /// Runs `f` on this session's thread pool.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    fn check_inputs(&self, inputs: &[(&str, Tensor)]) -> Result<Vec<(crate::graph::ValueId, Tensor)>> {
        if self.prompt_len > 0 {
            let wide = crate::peft::prompt::widen(inputs, self.prompt_len)?;
            let named: Vec<(&str, Tensor)> = wide.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
            return self.check_named(&named);
        }
        self.check_named(inputs)
    }

    fn check_named(&self, inputs: &[(&str, Tensor)]) -> Result<Vec<(crate::graph::ValueId, Tensor)>> {
        let g = &*self.graph;
        let mut feeds = Vec::with_capacity(g.inputs.len());
        for (name, _) in inputs {
            if !g.inputs.iter().any(|i| g.values[i.value].name == *name) {
                return Err(Error::BadInput { name: (*name).to_owned(), reason: "the model has no such input".into() });
            }
        }
        for info in &g.inputs {
            let name = &g.values[info.value].name;
            let mut given = inputs.iter().filter(|(n, _)| n == name);
            let (_, t) = given
                .next()
                .ok_or_else(|| Error::BadInput { name: name.clone(), reason: "missing".into() })?;
            if given.next().is_some() {
                return Err(Error::BadInput { name: name.clone(), reason: "given twice".into() });
            }
            let bad = |reason: String| Error::BadInput { name: name.clone(), reason };
            if t.dtype() != info.dtype {
                return Err(bad(format!("expected {:?}, got {:?}", info.dtype, t.dtype())));
            }
            if t.rank() != info.dims.len() {
                return Err(bad(format!("expected rank {}, got shape {:?}", info.dims.len(), t.shape())));
            }
            for (d, (&got, want)) in t.shape().iter().zip(&info.dims).enumerate() {
                if let Dim::Fixed(w) = want {
                    if got != *w {
                        return Err(bad(format!("dim {d} must be {w}, got {got}")));
                    }
                }
            }
            feeds.push((info.value, t.clone()));
        }
        Ok(feeds)
    }
}
