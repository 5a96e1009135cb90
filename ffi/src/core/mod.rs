//! The plain Rust under both bridges (C and JNI), libsignal style: safe functions over the
//! runtime's types that take and return plain values. The bridges only convert arguments,
//! catch panics and map errors; everything that could be wrong twice lives here once.

pub mod outputs;
pub mod settings;
pub mod tokens;
pub mod training;

use std::sync::Arc;

use kilotune::delta::{self, Delta, Precision};
use kilotune::{Base, LoadOptions, Session, SessionConfig, WeightFormat};

use crate::status::Failure;

pub use outputs::{Output, OutputSet};
pub use settings::Settings;
pub use tokens::Tokens;

/// Loads a base from a file; `int8` quantizes its f32 `Linear` weights at load.
pub fn load_base(path: &str, int8: bool) -> Result<Arc<Base>, Failure> {
    Ok(Base::load(path, load_options(int8))?)
}

/// Loads a base from the bytes of an ONNX file (an app asset, say).
pub fn load_base_bytes(bytes: &[u8], int8: bool) -> Result<Arc<Base>, Failure> {
    Ok(Base::from_bytes(bytes, load_options(int8))?)
}

fn load_options(int8: bool) -> LoadOptions {
    LoadOptions { weights: if int8 { WeightFormat::Int8 } else { WeightFormat::AsShipped }, ..LoadOptions::default() }
}

/// The delta precision for a public constant (0 f32, 1 f16, 2 int8).
pub fn precision(code: u32) -> Result<Precision, Failure> {
    match code {
        0 => Ok(Precision::F32),
        1 => Ok(Precision::F16),
        2 => Ok(Precision::Int8),
        other => Err(Failure::invalid("precision", format!("{other} is not a KT_PRECISION_* value"))),
    }
}

/// Saves `delta` atomically at `path`.
pub fn save_delta(delta: &Delta, path: &str, precision_code: u32) -> Result<(), Failure> {
    Ok(delta::save(delta, path, precision(precision_code)?)?)
}

/// Loads a delta saved for `base`; a delta for any other base is refused.
pub fn load_delta(base: &Base, path: &str) -> Result<Delta, Failure> {
    Ok(delta::load(path, Some(&base.fingerprint()), &delta::LoadLimits::default())?)
}

/// A session over `base`, with `delta` applied when given.
pub fn new_session(base: Arc<Base>, delta: Option<&Delta>, threads: u32) -> Result<Session, Failure> {
    let config = SessionConfig { threads: threads as usize };
    Ok(match delta {
        Some(d) => Session::with_delta(base, d, config)?,
        None => Session::new(base, config)?,
    })
}

/// Runs `session` on token arrays and keeps every output as f32.
pub fn run(session: &Session, tokens: &Tokens<'_>) -> Result<OutputSet, Failure> {
    let inputs = tokens.inputs(session.base())?;
    let named: Vec<(&str, kilotune::Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    OutputSet::new(session.run(&named)?)
}
