//! ONNX import: protobuf reading, external data, and translation of nodes into engine ops.

mod external;
pub mod import;
pub mod proto;
mod tensor;
pub mod wire;

pub use external::read_external;
pub use import::import_model;
pub use tensor::tensor_from_proto;
