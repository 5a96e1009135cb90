//! The engine's graph IR: values, nodes of high-level ops, and the passes that rewrite them.

pub mod fold;
pub mod fuse;
mod patch;
pub mod shapes;

use std::collections::HashMap;

use crate::ops::Op;
use crate::tensor::{DType, Tensor};

pub use patch::Patch;

/// Index of a value in [`Graph::values`].
pub type ValueId = usize;

/// A dimension of a declared graph input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// Fixed size.
    Fixed(usize),
    /// Named run-time size (`batch`, `seq`).
    Symbol(String),
}

/// A graph input as the model declares it.
#[derive(Clone, Debug)]
pub struct InputInfo {
    /// The value it feeds.
    pub value: ValueId,
    /// Its element type.
    pub dtype: DType,
    /// Its declared dims.
    pub dims: Vec<Dim>,
}

/// A value: the output of one node, a graph input, or a constant.
#[derive(Clone, Debug)]
pub struct Value {
    /// The name the model gave it.
    pub name: String,
    /// The data, if the value is a constant (weights, folded shape arithmetic).
    pub constant: Option<Tensor>,
}

/// One operation.
#[derive(Clone, Debug)]
pub struct Node {
    /// The node's name from the model (or a name given by a fusion).
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// Input values; `None` is an omitted optional input.
    pub inputs: Vec<Option<ValueId>>,
    /// Output values.
    pub outputs: Vec<ValueId>,
}

/// A model as the engine runs it: nodes in topological order over numbered values.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// Every value.
    pub values: Vec<Value>,
    /// Nodes in execution order.
    pub nodes: Vec<Node>,
    /// The inputs a run must feed.
    pub inputs: Vec<InputInfo>,
    /// The values a run returns.
    pub outputs: Vec<ValueId>,
}

impl Graph {
    /// Adds a value and returns its id.
    pub fn add_value(&mut self, name: impl Into<String>, constant: Option<Tensor>) -> ValueId {
        self.values.push(Value { name: name.into(), constant });
        self.values.len() - 1
    }

    /// The constant behind `v`, if it is one.
    pub fn constant(&self, v: ValueId) -> Option<&Tensor> {
        self.values[v].constant.as_ref()
    }

    /// The constant behind an optional input slot.
    pub fn input_constant(&self, node: &Node, slot: usize) -> Option<&Tensor> {
        node.inputs.get(slot).copied().flatten().and_then(|v| self.constant(v))
    }

    /// For each value, the nodes that read it.
    pub fn consumers(&self) -> Vec<Vec<usize>> {
        let mut c = vec![Vec::new(); self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for v in n.inputs.iter().flatten() {
                if !c[*v].contains(&i) {
                    c[*v].push(i);
                }
            }
        }
        c
    }

    /// For each value, the node that writes it.
    pub fn producers(&self) -> Vec<Option<usize>> {
        let mut p = vec![None; self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &v in &n.outputs {
                p[v] = Some(i);
            }
        }
        p
    }

    /// Looks a value up by name.
    pub fn value_named(&self, name: &str) -> Option<ValueId> {
        self.values.iter().position(|v| v.name == name)
    }

    /// Counts nodes per op name (for `inspect` and tests).
    pub fn op_histogram(&self) -> Vec<(String, usize)> {
        let mut h: HashMap<String, usize> = HashMap::new();
        for n in &self.nodes {
            *h.entry(n.op.name().to_owned()).or_default() += 1;
        }
        let mut v: Vec<_> = h.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// Drops nodes whose outputs nobody reads and values nobody references.
    pub fn prune(&mut self) {
        let mut live = vec![false; self.values.len()];
        for &o in &self.outputs {
            live[o] = true;
        }
        let mut keep = vec![false; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate().rev() {
            if n.outputs.iter().any(|&o| live[o]) {
                keep[i] = true;
                for v in n.inputs.iter().flatten() {
                    live[*v] = true;
                }
            }
        }
        let mut i = 0;
        self.nodes.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        // Free constants nothing reads any more (e.g. an f32 weight replaced by its int8 form).
        for (v, val) in self.values.iter_mut().enumerate() {
            if !live[v] {
                val.constant = None;
            }
        }
    }
}
