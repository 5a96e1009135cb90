//! Compiles the C tests in `tests/c/` against the generated header and the library cargo just
//! built, and runs them on the tiny fixture: the whole journey, and eight threads sharing one
//! base. `ffi/tests/run.sh` runs the same programs under AddressSanitizer and valgrind.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/<profile>/deps`, where `cargo test` puts the `libkilotune_ffi.so` it built for this
/// very run (only `cargo build` copies it up to `target/<profile>`).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe.parent().expect("target/<profile>/deps/<test>");
    assert!(dir.join("libkilotune_ffi.so").is_file() || dir.join("libkilotune_ffi.dylib").is_file(), "no libkilotune_ffi in {}", dir.display());
    dir.to_path_buf()
}

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds `tests/c/<name>.c` into a scratch folder and returns the program's path.
fn compile(name: &str, scratch: &Path) -> PathBuf {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let lib = lib_dir();
    let out = scratch.join(name);
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
        .arg(format!("-I{}", manifest().join("include").display()))
        .arg(format!("-I{}", manifest().join("tests/c").display()))
        .arg(manifest().join(format!("tests/c/{name}.c")))
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lkilotune_ffi", "-lpthread", "-lm", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}` (set CC): {e}"));
    assert!(status.success(), "compiling {name}.c failed");
    out
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kt-ffi-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir
}

fn run(program: &Path, args: &[&Path]) -> String {
    let out = Command::new(program).args(args).output().expect("the C test runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{} failed ({}):\n{stdout}\n{}", program.display(), out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn the_c_journey_passes_every_check() {
    let dir = scratch("journey");
    let program = compile("journey", &dir);
    let fixtures = manifest().join("../tests/fixtures");
    let stdout = run(&program, &[&fixtures, &dir]);
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn eight_threads_share_one_base_and_agree_bit_for_bit() {
    let dir = scratch("threads");
    let program = compile("threads", &dir);
    let stdout = run(&program, &[&manifest().join("../tests/fixtures")]);
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}
