//! `kilotune run`: one model run from `.npy` inputs to `.npy` outputs.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use kilotune::{BackendKind, BackendSession, Base, Session, Tensor};

use crate::error::{CliError, Result};
use crate::inspect::dtype_name;
use crate::RunArgs;

/// Parses `NAME=FILE.npy` (split at the first `=`, so a path may contain `=`).
pub fn parse_input(s: &str) -> std::result::Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok((name.to_owned(), PathBuf::from(path))),
        _ => Err(format!("expected NAME=FILE.npy, got `{s}`")),
    }
}

/// Runs `kilotune run`.
pub fn run(args: &RunArgs, out: &mut dyn Write) -> Result<()> {
    let t_load = Instant::now();
    let base = Base::load(&args.model.model, args.model.load_options(true))?;
    let load_time = t_load.elapsed();
    check_names(&base.input_names(), &args.inputs)?;

    let mut feeds: Vec<(&str, Tensor)> = Vec::with_capacity(args.inputs.len());
    let graph = base.graph();
    for (name, path) in &args.inputs {
        let t = kilotune::npy::read(path).map_err(|e| CliError::input_file(name, path.clone(), e))?;
        // The session checks this too, but cannot name the file the tensor came from.
        let declared = graph.inputs.iter().find(|i| graph.values[i.value].name == *name).map(|i| i.dtype);
        if let Some(want) = declared.filter(|&d| d != t.dtype()) {
            return Err(CliError::InputFile {
                name: name.clone(),
                path: path.clone(),
                reason: format!("the model takes {}, the file holds {}", dtype_name(want), dtype_name(t.dtype())),
            });
        }
        feeds.push((name.as_str(), t));
    }

    let user = match &args.delta {
        Some(path) => Some(kilotune::delta::load(path, Some(&base.fingerprint()), &Default::default()).map_err(kilotune::Error::from)?),
        None => None,
    };
    let config = args.backend.config(args.model.threads);
    let (outputs, run_time, threads) = if config.backend == BackendKind::Cpu {
        let session = match &user {
            Some(user) => Session::with_delta(base, user, args.model.session_config())?,
            None => Session::new(base, args.model.session_config())?,
        };
        let t_run = Instant::now();
        let outputs = session.run(&feeds)?;
        (outputs, t_run.elapsed(), session.threads())
    } else {
        let mut session = BackendSession::open(&args.model.model, base, &config)?;
        session.set_delta(user.as_ref())?;
        let t_run = Instant::now();
        let outputs = session.run(&feeds)?;
        (outputs, t_run.elapsed(), args.model.threads)
    };

    std::fs::create_dir_all(&args.out).map_err(|source| CliError::Io {
        action: "cannot create",
        path: args.out.clone(),
        source,
    })?;
    let names: Vec<&str> = outputs.0.iter().map(|(n, _)| n.as_str()).collect();
    let files = file_names(&names);
    let w = names.iter().map(|n| n.len()).max().unwrap_or(0);
    for ((name, tensor), file) in outputs.0.iter().zip(&files) {
        let path = args.out.join(file);
        kilotune::npy::write(&path, tensor)?;
        writeln!(out, "{name:<w$}  {:<4}  {:?}  -> {}", dtype_name(tensor.dtype()), tensor.shape(), path.display())
            .map_err(CliError::Stdout)?;
    }
    writeln!(
        out,
        "load {:.1} ms, run {:.1} ms on {} ({})",
        load_time.as_secs_f64() * 1e3,
        run_time.as_secs_f64() * 1e3,
        config.backend,
        if threads == 0 { "threads: the backend's default".to_owned() } else { format!("{threads} threads") }
    )
    .map_err(CliError::Stdout)
}

/// Rejects unknown, repeated and missing input names before any file is read, listing what
/// the model declares: the runtime would refuse them too, but one at a time and without the
/// list a user needs to fix the command.
fn check_names(declared: &[&str], given: &[(String, PathBuf)]) -> Result<()> {
    let expected = || declared.join(", ");
    let mut seen = HashSet::new();
    for (name, _) in given {
        if !declared.contains(&name.as_str()) {
            return Err(CliError::Usage(format!("the model has no input `{name}`; its inputs are: {}", expected())));
        }
        if !seen.insert(name.as_str()) {
            return Err(CliError::Usage(format!("input `{name}` is given twice")));
        }
    }
    let missing: Vec<&str> = declared.iter().copied().filter(|d| !seen.contains(d)).collect();
    if !missing.is_empty() {
        return Err(CliError::Usage(format!(
            "missing input{} {}; give each as --input NAME=FILE.npy",
            if missing.len() > 1 { "s" } else { "" },
            missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(())
}

/// A safe, distinct file name per output. ONNX value names may hold `/` or `:`
/// (`/encoder/layer.0/Add_output_0`), which must not become folders or escape `--out`.
fn file_names(names: &[&str]) -> Vec<String> {
    let mut used = HashSet::new();
    names
        .iter()
        .map(|name| {
            let mut stem: String =
                name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
            // `.`, `..` and hidden names would not be what the user expects to find.
            if stem.is_empty() || stem.starts_with('.') {
                stem.insert_str(0, "output");
            }
            let mut file = format!("{stem}.npy");
            let mut i = 1;
            while !used.insert(file.clone()) {
                file = format!("{stem}_{i}.npy");
                i += 1;
            }
            file
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_name_equals_path() {
        assert_eq!(parse_input("input_ids=a=b.npy"), Ok(("input_ids".into(), PathBuf::from("a=b.npy"))));
        assert!(parse_input("input_ids").is_err());
        assert!(parse_input("=x.npy").is_err());
        assert!(parse_input("input_ids=").is_err());
    }

    #[test]
    fn output_file_names_stay_inside_the_folder_and_distinct() {
        assert_eq!(file_names(&["last_hidden_state"]), ["last_hidden_state.npy"]);
        assert_eq!(file_names(&["/encoder/Add:0", "_encoder_Add_0"]), ["_encoder_Add_0.npy", "_encoder_Add_0_1.npy"]);
        assert_eq!(file_names(&[".."]), ["output...npy"]);
        assert_eq!(file_names(&["a/../b"]), ["a_.._b.npy"]);
    }

    #[test]
    fn names_are_checked_against_the_model() {
        let declared = ["input_ids", "attention_mask"];
        let given = |names: &[&str]| -> Vec<(String, PathBuf)> {
            names.iter().map(|n| ((*n).to_owned(), PathBuf::from("x.npy"))).collect()
        };
        assert!(check_names(&declared, &given(&["input_ids", "attention_mask"])).is_ok());
        let unknown =
            check_names(&declared, &given(&["input_ids", "attention_mask", "pos"])).expect_err("pos is not declared");
        assert!(unknown.to_string().contains("its inputs are: input_ids, attention_mask"), "{unknown}");
        let missing = check_names(&declared, &given(&["input_ids"])).expect_err("attention_mask is missing");
        assert!(missing.to_string().contains("`attention_mask`"), "{missing}");
        assert!(check_names(&declared, &given(&["input_ids", "input_ids"])).is_err());
    }
}
