//! `kilotune`: inspect, run and embed with ONNX transformer models on the CPU.
//!
//! This file holds only the command-line surface (clap definitions) and the dispatch; each
//! subcommand's logic lives in its own module and returns a typed [`CliError`].

mod embed;
mod error;
mod inspect;
mod run;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kilotune::{LoadOptions, SessionConfig, WeightFormat};

use crate::error::CliError;

/// Run transformer models from ONNX on the CPU.
#[derive(Parser, Debug)]
#[command(
    name = "kilotune",
    version,
    propagate_version = true,
    after_help = "Example:\n  kilotune inspect model.onnx\n  kilotune embed model.onnx --tokenizer tokenizer.json \"hello world\""
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show a model's inputs, outputs, ops, parameters and targetable Linear layers.
    #[command(
        after_help = "Example:\n  kilotune inspect model.onnx --int8\n  kilotune inspect model.onnx --json | jq .linears"
    )]
    Inspect(InspectArgs),
    /// Run a model on .npy inputs and write each output as DIR/<output name>.npy.
    #[command(
        after_help = "Example:\n  kilotune run model.onnx --input input_ids=ids.npy --input attention_mask=mask.npy \\\n      --input token_type_ids=types.npy --out outputs/"
    )]
    Run(RunArgs),
    /// Embed texts with a BERT-style encoder: tokenize, run, mean-pool the hidden states.
    #[command(
        after_help = "Examples:\n  kilotune embed model.onnx --tokenizer tokenizer.json \"hello world\" \"a second sentence\"\n  kilotune embed model.onnx --tokenizer tokenizer.json --file lines.txt --out embeddings.npy"
    )]
    Embed(EmbedArgs),
}

/// How to load the model and size the session: shared by every subcommand.
#[derive(Args, Debug)]
struct ModelArgs {
    /// The ONNX model file (external data is read from its folder).
    model: PathBuf,
    /// Quantize f32 Linear weights to int8 (per output channel) at load.
    #[arg(long)]
    int8: bool,
    /// Worker threads; 0 uses one per available core.
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
}

impl ModelArgs {
    fn load_options(&self, fuse: bool) -> LoadOptions {
        LoadOptions {
            weights: if self.int8 { WeightFormat::Int8 } else { WeightFormat::AsShipped },
            fuse,
            ..LoadOptions::default()
        }
    }

    fn session_config(&self) -> SessionConfig {
        SessionConfig { threads: self.threads }
    }
}

#[derive(Args, Debug)]
struct InspectArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Keep the graph exactly as exported (no fusion into Linear, LayerNorm, Attention, ...).
    #[arg(long)]
    no_fuse: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A model input and the .npy file holding it; repeat for each input.
    #[arg(long = "input", short = 'i', value_name = "NAME=FILE.npy", value_parser = run::parse_input, required = true)]
    inputs: Vec<(String, PathBuf)>,
    /// Folder for the outputs (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The Hugging Face tokenizer.json that matches the model.
    #[arg(long, value_name = "FILE")]
    tokenizer: PathBuf,
    /// Texts to embed, one vector each.
    #[arg(value_name = "TEXT", conflicts_with = "file")]
    texts: Vec<String>,
    /// Read texts from a file, one per line ("-" reads standard input).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Write an [n, hidden] f32 .npy instead of printing one JSON array per text.
    #[arg(long, value_name = "FILE.npy")]
    out: Option<PathBuf>,
    /// Tokens per text, special tokens included; longer texts are truncated.
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    max_len: u32,
    /// Texts per model run.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Scale each vector to unit length (what sentence-transformers models apply last).
    #[arg(long)]
    normalize: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = match cli.command {
        Command::Inspect(a) => inspect::inspect(&a, &mut out),
        Command::Run(a) => run::run(&a, &mut out),
        Command::Embed(a) => embed::embed(&a, &mut out),
    };
    let result = result.and_then(|()| out.flush().map_err(CliError::Stdout));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`kilotune embed ... | head`): stop quietly, as Unix tools do.
        Err(CliError::Stdout(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: it panics when stderr is closed, and this path must not panic.
            let _ = writeln!(std::io::stderr(), "error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
