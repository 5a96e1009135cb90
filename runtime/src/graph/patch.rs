//! Graph rewrites as patches: a pass collects replacements, then applies them in one step.

use super::{Graph, Node, ValueId};

/// A set of node replacements built by a pass and applied at once.
///
/// A pass matches on the unchanged graph and records which node each new node replaces: the
/// last node of the matched pattern, whose outputs the new node takes over, so readers need no
/// change and topological order holds. It can also rewire readers of one value to another
/// (to drop an identity). Nodes left unread are removed by [`Graph::prune`] afterwards.
#[derive(Default)]
pub struct Patch {
    replaced: std::collections::BTreeMap<usize, Node>,
    rewire: Vec<(ValueId, ValueId)>,
}

impl Patch {
    /// Puts `node` in place of the node at index `at`. Returns false (and changes nothing) if
    /// another match already claimed that node.
    pub fn replace(&mut self, at: usize, node: Node) -> bool {
        if self.replaced.contains_key(&at) {
            return false;
        }
        self.replaced.insert(at, node);
        true
    }

    /// Whether a match already claimed node `at`.
    pub fn claimed(&self, at: usize) -> bool {
        self.replaced.contains_key(&at)
    }

    /// Makes every reader of `from` read `to` instead.
    pub fn rewire(&mut self, from: ValueId, to: ValueId) {
        self.rewire.push((from, to));
    }

    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.replaced.is_empty() && self.rewire.is_empty()
    }

    /// Applies the patch and prunes what became dead.
    pub fn apply(self, g: &mut Graph) {
        let mut replaced = self.replaced;
        let mut nodes: Vec<Node> = std::mem::take(&mut g.nodes)
            .into_iter()
            .enumerate()
            .map(|(i, n)| replaced.remove(&i).unwrap_or(n))
            .collect();
        if !self.rewire.is_empty() {
            let map: std::collections::HashMap<_, _> = self.rewire.into_iter().collect();
            let resolve = |mut v: ValueId| {
                while let Some(&t) = map.get(&v) {
                    v = t;
                }
                v
            };
            for n in &mut nodes {
                for v in n.inputs.iter_mut().flatten() {
                    *v = resolve(*v);
                }
            }
            for o in &mut g.outputs {
                *o = resolve(*o);
            }
        }
        g.nodes = nodes;
        g.prune();
    }
}
