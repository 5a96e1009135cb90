//! Compiles the Vulkan backend's GLSL compute shaders to SPIR-V with `glslangValidator`
//! (Debian's glslang-tools), only when the `vulkan` feature is on: the default build needs
//! no shader compiler. The SPIR-V lands in OUT_DIR and is embedded with `include_bytes!`.

use std::path::PathBuf;
use std::process::Command;

const SHADERS: [&str; 8] = ["gemm_f32", "gemm_u8i8", "layer_norm", "gelu", "add", "attention", "layer_norm_backward", "attention_backward"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_VULKAN").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts"));
    let tool = std::env::var("GLSLANG_VALIDATOR").unwrap_or_else(|_| "glslangValidator".to_owned());
    for name in SHADERS {
        let src = format!("src/backend/vulkan/shaders/{name}.comp");
        println!("cargo:rerun-if-changed={src}");
        let spv = out.join(format!("{name}.spv"));
        let status = Command::new(&tool)
            .args(["-V", "--target-env", "vulkan1.1", "-o"])
            .arg(&spv)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run `{tool}` ({e}): the `vulkan` feature needs glslangValidator (apt: glslang-tools)")
            });
        assert!(status.success(), "glslangValidator failed on {src}");
    }
}
