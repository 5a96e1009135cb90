//! Fusion passes (filled in below).
use super::Graph;
use crate::error::Result;
use crate::onnx::import::ImportInfo;
pub fn fuse_all(_g: &mut Graph, _info: &ImportInfo) -> Result<()> { Ok(()) }
pub fn quantize_linears(_g: &mut Graph) {}
