//! `kilotune inspect`: what a model declares and what kilotune made of it.
//!
//! The facts are gathered once into a [`Report`], then rendered as aligned text or as one JSON
//! object, so the two forms cannot drift apart.

use std::io::Write;

use kilotune::graph::Dim;
use kilotune::ops::LinearWeight;
use kilotune::{Base, DType, Session};
use serde::Serialize;

use crate::error::{CliError, Result};
use crate::InspectArgs;

/// Everything `inspect` shows.
#[derive(Serialize, Debug)]
struct Report {
    model: String,
    producer: String,
    opset: i64,
    /// Whether op patterns were fused (`--no-fuse` turns it off).
    fused: bool,
    /// "as-shipped" or "int8" (`--int8`).
    weights: &'static str,
    parameters: usize,
    /// The int8 GEMM kernel this CPU gets.
    int8_gemm_kernel: &'static str,
    /// Worker threads a session would use with these `--threads`.
    threads: usize,
    inputs: Vec<InputReport>,
    outputs: Vec<String>,
    nodes: usize,
    ops: Vec<OpCount>,
    linears: Vec<LinearReport>,
}

#[derive(Serialize, Debug)]
struct InputReport {
    name: String,
    dtype: String,
    dims: Vec<DimReport>,
}

/// A dim as JSON: a number when fixed, the symbol's name when not.
#[derive(Serialize, Debug)]
#[serde(untagged)]
enum DimReport {
    Fixed(usize),
    Symbol(String),
}

#[derive(Serialize, Debug)]
struct OpCount {
    op: String,
    count: usize,
}

#[derive(Serialize, Debug)]
struct LinearReport {
    module: String,
    k: usize,
    n: usize,
    dtype: &'static str,
    bias: bool,
}

/// Runs `kilotune inspect`.
pub fn inspect(args: &InspectArgs, out: &mut dyn Write) -> Result<()> {
    let base = Base::load(&args.model.model, args.model.load_options(!args.no_fuse))?;
    // Building a session is cheap (a plan, a pool) and reports the real thread count.
    let threads = Session::new(base.clone(), args.model.session_config())?.threads();
    let report = gather(&base, args, threads);
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report).map_err(|e| CliError::Stdout(e.into()))?;
        writeln!(out).map_err(CliError::Stdout)
    } else {
        render(&report, out).map_err(CliError::Stdout)
    }
}

fn gather(base: &Base, args: &InspectArgs, threads: usize) -> Report {
    let graph = base.graph();
    let inputs = graph
        .inputs
        .iter()
        .map(|i| InputReport {
            name: graph.values[i.value].name.clone(),
            dtype: dtype_name(i.dtype),
            dims: i
                .dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => DimReport::Fixed(*n),
                    Dim::Symbol(s) => DimReport::Symbol(s.clone()),
                })
                .collect(),
        })
        .collect();
    let linears = base
        .linears()
        .into_iter()
        .map(|l| LinearReport {
            module: l.module.clone(),
            k: l.k,
            n: l.n,
            dtype: match l.weight {
                LinearWeight::F32(_) => "f32",
                LinearWeight::I8(_) => "int8",
            },
            bias: l.bias.is_some(),
        })
        .collect();
    Report {
        model: args.model.model.display().to_string(),
        producer: base.producer().to_owned(),
        opset: base.opset(),
        fused: !args.no_fuse,
        weights: if args.model.int8 { "int8" } else { "as-shipped" },
        parameters: base.parameter_count(),
        int8_gemm_kernel: kilotune::kernels::gemm_i8::selected_kernel(),
        threads,
        inputs,
        outputs: base.output_names().into_iter().map(str::to_owned).collect(),
        nodes: graph.nodes.len(),
        ops: graph.op_histogram().into_iter().map(|(op, count)| OpCount { op, count }).collect(),
        linears,
    }
}

/// Element type names as NumPy and PyTorch users write them (`i64`, `f32`).
pub fn dtype_name(d: DType) -> String {
    d.to_string()
}

fn render(r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let producer = if r.producer.is_empty() { "(not recorded)" } else { r.producer.as_str() };
    writeln!(out, "model       {}", r.model)?;
    writeln!(out, "producer    {producer}, opset {}", r.opset)?;
    writeln!(out, "weights     {}{}", r.weights, if r.fused { "" } else { ", not fused" })?;
    writeln!(out, "parameters  {}", group_thousands(r.parameters))?;
    writeln!(out, "int8 gemm   {}", r.int8_gemm_kernel)?;
    writeln!(out, "threads     {}", r.threads)?;

    writeln!(out, "\ninputs ({})", r.inputs.len())?;
    let w = r.inputs.iter().map(|i| i.name.len()).max().unwrap_or(0);
    for i in &r.inputs {
        let dims: Vec<String> = i
            .dims
            .iter()
            .map(|d| match d {
                DimReport::Fixed(n) => n.to_string(),
                DimReport::Symbol(s) => s.clone(),
            })
            .collect();
        writeln!(out, "  {:<w$}  {:<4}  [{}]", i.name, i.dtype, dims.join(", "))?;
    }

    writeln!(out, "\noutputs ({})", r.outputs.len())?;
    for o in &r.outputs {
        writeln!(out, "  {o}")?;
    }

    writeln!(out, "\nops ({} nodes)", r.nodes)?;
    let w = r.ops.iter().map(|o| o.op.len()).max().unwrap_or(0);
    for o in &r.ops {
        writeln!(out, "  {:<w$}  {:>5}", o.op, o.count)?;
    }

    writeln!(out, "\nlinear layers ({}; what LoRA can target)", r.linears.len())?;
    if r.linears.is_empty() && !r.fused {
        writeln!(out, "  (none: Linear layers only exist after fusion; drop --no-fuse)")?;
    }
    let w = r.linears.iter().map(|l| l.module.len()).max().unwrap_or(0);
    let shapes: Vec<String> = r.linears.iter().map(|l| format!("{}x{}", l.k, l.n)).collect();
    let ws = shapes.iter().map(String::len).max().unwrap_or(0);
    for (l, shape) in r.linears.iter().zip(&shapes) {
        let bias = if l.bias { "bias" } else { "no bias" };
        writeln!(out, "  {:<w$}  {:>ws$}  {:<4}  {bias}", l.module, shape, l.dtype)?;
    }
    Ok(())
}

/// `22713216` → `22,713,216`: parameter counts are read at a glance.
fn group_thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1,000");
        assert_eq!(group_thousands(22_713_216), "22,713,216");
    }

    #[test]
    fn dtype_names_are_lower_case() {
        assert_eq!(dtype_name(DType::I64), "i64");
        assert_eq!(dtype_name(DType::F32), "f32");
    }
}
