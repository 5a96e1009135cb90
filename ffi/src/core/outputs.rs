//! A run's outputs, kept in the shape the bindings hand out: a NUL-terminated name, the dims
//! and the values as f32, each borrowed by C until the set is freed.

use std::ffi::CString;

use kilotune::Outputs;

use crate::status::{Failure, Status};

/// One output of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The model's name for it, NUL-terminated for C.
    pub name: CString,
    /// Its dims.
    pub shape: Vec<usize>,
    /// Its values, row-major, converted to f32.
    pub data: Vec<f32>,
}

/// Every output of a run, in the model's declared order.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSet {
    /// The outputs.
    pub items: Vec<Output>,
}

impl OutputSet {
    /// Converts a session's outputs.
    pub fn new(outputs: Outputs) -> Result<OutputSet, Failure> {
        let items = outputs
            .0
            .into_iter()
            .map(|(name, t)| {
                let name = CString::new(name).map_err(|_| Failure::new(Status::Model, "an output name contains NUL"))?;
                Ok(Output { name, shape: t.shape().to_vec(), data: t.to_f32_vec() })
            })
            .collect::<Result<_, Failure>>()?;
        Ok(OutputSet { items })
    }

    /// Output `index`, or an invalid-argument failure.
    pub fn get(&self, index: usize) -> Result<&Output, Failure> {
        self.items.get(index).ok_or_else(|| Failure::invalid("index", format!("{index} is past the {} outputs", self.items.len())))
    }
}
