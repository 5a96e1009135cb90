//! The CPU executor: runs the fused graph in order, freeing each intermediate after its last
//! reader so peak memory follows the widest point of the graph, not its length.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::graph::{Graph, Node, ValueId};
use crate::kernels::attention::{AttentionDims, MaskView};
use crate::ops::Linear;
use crate::train::backward::attention::AttentionGrads;
use crate::train::backward::norm::LayerNormGrads;
use crate::tensor::Tensor;

/// Another device that runs some of a CPU walk's work: the `vulkan` backend's shaders, when a
/// trainer or a task session runs there. Whatever it declines (`None`) runs on the CPU: the
/// forward ops through [`Offload::node`], the backward pass's heavy input gradients through
/// the other methods.
pub trait Offload: Send + Sync {
    /// Runs `node` on `ins` on the device, or `None` to leave it to the CPU.
    fn node(&self, node: &Node, ins: &[Option<&Tensor>]) -> Result<Option<Tensor>>;
    /// The input gradient `dy·Wᵀ` of a frozen `Linear` (`dy` is rows of `l.n`), or `None` to
    /// leave it to the CPU.
    fn linear_input_grad(&self, l: &Linear, dy: &[f32]) -> Result<Option<Vec<f32>>>;
    /// GELU's input gradient, or `None` for the CPU.
    fn gelu_backward(&self, _x: &[f32], _dy: &[f32]) -> Result<Option<Vec<f32>>> {
        Ok(None)
    }
    /// LayerNorm's gradients (at `x + skip` for the residual form), or `None` for the CPU.
    fn layer_norm_backward(&self, _x: &[f32], _skip: Option<&[f32]>, _gamma: &[f32], _eps: f32, _dy: &[f32]) -> Result<Option<LayerNormGrads>> {
        Ok(None)
    }
    /// Attention's gradients, with the arguments of
    /// [`crate::train::backward::attention::attention_backward`], or `None` for the CPU.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(&self, _q: &[f32], _k: &[f32], _v: &[f32], _mask: Option<&MaskView<'_>>, _causal: bool, _scale: f32, _dims: &AttentionDims, _dout: &[f32]) -> Result<Option<AttentionGrads>> {
        Ok(None)
    }
    /// Drops what the device keeps for tensors nothing else holds any more (a trainer's
    /// previous parameters).
    fn release_unused(&self) {}
}

/// Which values a walk keeps past their last reader (graph outputs are never freed).
#[derive(Clone, Copy)]
enum Keep<'a> {
    All,
    Outputs,
    Marked(&'a [bool]),
}

/// The per-graph execution plan: which values die after each node, and the device (if any)
/// that runs part of the work.
pub struct Plan {
    free_after: Vec<Vec<ValueId>>,
    offload: Option<Arc<dyn Offload>>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan").field("nodes", &self.free_after.len()).field("offload", &self.offload.is_some()).finish()
    }
}

impl Plan {
    /// Plans `g`.
    pub fn new(g: &Graph) -> Plan {
        let mut last = vec![None; g.values.len()];
        for (i, n) in g.nodes.iter().enumerate() {
            for v in n.inputs.iter().flatten() {
                last[*v] = Some(i);
            }
        }
        let mut free_after = vec![Vec::new(); g.nodes.len()];
        for (v, l) in last.into_iter().enumerate() {
            if let Some(i) = l {
                if g.values[v].constant.is_none() && !g.outputs.contains(&v) {
                    free_after[i].push(v);
                }
            }
        }
        Plan { free_after, offload: None }
    }

    /// Lets `offload` run the nodes it takes (`None`: everything on the CPU).
    pub(crate) fn set_offload(&mut self, offload: Option<Arc<dyn Offload>>) {
        self.offload = offload;
    }

    /// The device that runs part of this plan's work, if any.
    pub(crate) fn offload(&self) -> Option<&Arc<dyn Offload>> {
        self.offload.as_ref()
    }

    /// For each node, the values that die after it (another executor walking the same graph
    /// frees them at the same points).
    #[cfg(feature = "vulkan")]
    pub(crate) fn free_lists(&self) -> &[Vec<ValueId>] {
        &self.free_after
    }

    /// Runs the graph on `feeds` (value id, tensor) and returns the graph outputs in order.
    pub fn execute(&self, g: &Graph, feeds: Vec<(ValueId, Tensor)>) -> Result<Vec<Tensor>> {
        self.execute_timed(g, feeds, None)
    }

    /// Runs the graph and keeps every value (for a backward pass): the returned slots hold the
    /// feeds and every computed value; constants stay in the graph.
    pub fn execute_keep(&self, g: &Graph, feeds: Vec<(ValueId, Tensor)>) -> Result<Vec<Option<Tensor>>> {
        self.walk(g, feeds, None, Keep::All)
    }

    /// Runs the graph and keeps the values marked in `saved` (and the outputs), freeing every
    /// other one after its last reader, as [`Plan::execute`] does.
    pub fn execute_saving(&self, g: &Graph, feeds: Vec<(ValueId, Tensor)>, saved: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if saved.len() != g.values.len() {
            return Err(Error::Config(format!("{} saved flags for {} values", saved.len(), g.values.len())));
        }
        self.walk(g, feeds, None, Keep::Marked(saved))
    }

    /// [`Plan::execute`], adding each node's wall time to `times[node index]` when given.
    pub fn execute_timed(&self, g: &Graph, feeds: Vec<(ValueId, Tensor)>, times: Option<&mut [std::time::Duration]>) -> Result<Vec<Tensor>> {
        let mut slots = self.walk(g, feeds, times, Keep::Outputs)?;
        g.outputs
            .iter()
            .map(|&o| {
                slots[o].take().or_else(|| g.values[o].constant.clone()).ok_or_else(|| {
                    Error::InvalidModel(format!("output `{}` was not computed", g.values[o].name))
                })
            })
            .collect()
    }

    /// Evaluates the nodes in `nodes` on `slots` (which hold every value they read that is not a
    /// constant), keeping the values marked in `saved` and freeing the others after their last
    /// reader: a checkpointed step recomputes one piece of the graph this way.
    pub fn execute_range(&self, g: &Graph, slots: &mut [Option<Tensor>], nodes: std::ops::Range<usize>, saved: &[bool]) -> Result<()> {
        if saved.len() != g.values.len() || slots.len() != g.values.len() || nodes.end > g.nodes.len() {
            return Err(Error::Config("execute_range: slots, flags or range do not fit the graph".into()));
        }
        self.walk_on(g, slots, nodes, None, Keep::Marked(saved))
    }

    /// Evaluates every node in order; frees each value after its last reader unless `keep`
    /// holds on to it.
    fn walk(&self, g: &Graph, feeds: Vec<(ValueId, Tensor)>, times: Option<&mut [std::time::Duration]>, keep: Keep<'_>) -> Result<Vec<Option<Tensor>>> {
        let mut slots: Vec<Option<Tensor>> = vec![None; g.values.len()];
        for (v, t) in feeds {
            slots[v] = Some(t);
        }
        self.walk_on(g, &mut slots, 0..g.nodes.len(), times, keep)?;
        Ok(slots)
    }

    fn walk_on(&self, g: &Graph, slots: &mut [Option<Tensor>], nodes: std::ops::Range<usize>, mut times: Option<&mut [std::time::Duration]>, keep: Keep<'_>) -> Result<()> {
        for i in nodes {
            let node = &g.nodes[i];
            let start = times.is_some().then(std::time::Instant::now);
            let outs = {
                let inputs: Vec<Option<&Tensor>> = node
                    .inputs
                    .iter()
                    .map(|v| v.and_then(|v| slots[v].as_ref().or(g.values[v].constant.as_ref())))
                    .collect();
                match &self.offload {
                    Some(o) => match o.node(node, &inputs)? {
                        Some(t) => vec![t],
                        None => node.op.eval(&inputs, &node.name)?,
                    },
                    None => node.op.eval(&inputs, &node.name)?,
                }
            };
            for (&v, t) in node.outputs.iter().zip(outs) {
                slots[v] = Some(t);
            }
            for &v in &self.free_after[i] {
                match keep {
                    Keep::All => {}
                    Keep::Outputs => slots[v] = None,
                    Keep::Marked(saved) if !saved[v] => slots[v] = None,
                    Keep::Marked(_) => {}
                }
            }
            if let (Some(t), Some(start)) = (times.as_deref_mut(), start) {
                t[i] += start.elapsed();
            }
        }
        Ok(())
    }
}
