//! [`Batch`]: one step's worth of data, for any of the three tasks.

use crate::tensor::Tensor;

/// What a batch is scored against.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// A class per row (classification).
    Classes(Vec<usize>),
    /// `outputs` values per row, row-major (regression).
    Values(Vec<f32>),
    /// Each row's own next tokens, read from its `input_ids` (causal LM).
    NextTokens,
    /// The original token at each masked position (masked LM), `[rows × seq]` flat, with
    /// [`super::mlm::NOT_MASKED`] where nothing is predicted.
    Masked(Vec<i64>),
}

/// One batch: the model's named inputs (`[batch, seq]` each, `attention_mask` among them where
/// the model takes one) and what the task scores them against.
///
/// ```
/// use kilotune::train::trainer::Batch;
/// use kilotune::Tensor;
/// let ids = Tensor::new(&[1, 3], vec![5i64, 6, 7])?;
/// let mask = Tensor::new(&[1, 3], vec![1i64; 3])?;
/// let inputs = vec![("input_ids".to_owned(), ids), ("attention_mask".to_owned(), mask)];
/// let lm = Batch::causal_lm(inputs.clone());
/// let sentiment = Batch::classification(inputs.clone(), vec![1]);
/// let score = Batch::regression(inputs, vec![0.25]);
/// assert_eq!(sentiment.rows(), 1);
/// # Ok::<(), kilotune::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Batch {
    /// Named inputs.
    pub inputs: Vec<(String, Tensor)>,
    /// What they are scored against.
    pub targets: Targets,
}

impl Batch {
    /// A classification batch: one class id per row.
    pub fn classification(inputs: Vec<(String, Tensor)>, labels: Vec<usize>) -> Batch {
        Batch { inputs, targets: Targets::Classes(labels) }
    }

    /// A regression batch: `outputs` target values per row, row-major.
    pub fn regression(inputs: Vec<(String, Tensor)>, targets: Vec<f32>) -> Batch {
        Batch { inputs, targets: Targets::Values(targets) }
    }

    /// A causal-LM batch: the targets are the rows' own next tokens.
    pub fn causal_lm(inputs: Vec<(String, Tensor)>) -> Batch {
        Batch { inputs, targets: Targets::NextTokens }
    }

    /// A masked-LM batch: `inputs` hold the masked ids, `labels` the originals (see
    /// [`super::mlm::mask_tokens`]).
    pub fn masked_lm(inputs: Vec<(String, Tensor)>, labels: Vec<i64>) -> Batch {
        Batch { inputs, targets: Targets::Masked(labels) }
    }

    /// Rows: the first dim of the first input (0 without inputs).
    pub fn rows(&self) -> usize {
        self.inputs.first().and_then(|(_, t)| t.shape().first().copied()).unwrap_or(0)
    }

    /// The inputs as a session takes them.
    pub(crate) fn named(&self) -> Vec<(&str, Tensor)> {
        self.inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect()
    }
}
