//! ONNX import and export: protobuf reading and writing, external data, and translation of
//! nodes into engine ops.

mod external;
pub mod import;
pub mod proto;
mod tensor;
pub mod wire;
pub mod write;

pub use external::read_external;
pub use import::import_model;
pub use tensor::tensor_from_proto;
