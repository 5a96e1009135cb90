//! The CLI's error type: every way a command can fail, each with a message a user can act on.
//!
//! `main` prints `error: <message>` and exits with [`CliError::exit_code`]; nothing below it
//! prints errors or exits on its own.

use std::path::PathBuf;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The runtime refused the model, an input, or a run.
    #[error(transparent)]
    Runtime(#[from] kilotune::Error),
    /// A `.npy` input could not be read; `reason` already names the file's problem.
    #[error("input `{name}` from {path}: {reason}")]
    InputFile {
        /// The model input it was meant for.
        name: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file or folder of the CLI's own (text list, output folder) could not be used.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("cannot read", "cannot create").
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A training report's chart could not be drawn.
    #[error("cannot draw {file}: {reason}")]
    Plot {
        /// The chart file it was meant for.
        file: PathBuf,
        /// The plotting library's message.
        reason: String,
    },
    /// Writing to standard output failed (other than the reader going away).
    #[error("cannot write to standard output: {0}")]
    Stdout(#[source] std::io::Error),
    /// The tokenizer file could not be loaded or could not encode the texts.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer {
        /// The tokenizer.json file.
        path: PathBuf,
        /// The tokenizers crate's message.
        reason: String,
    },
    /// A PEFT adapter could not be imported or exported.
    #[error(transparent)]
    Peft(#[from] kilotune::delta::peft_interop::PeftInteropError),
    /// The arguments are well-formed but do not fit the model or each other.
    #[error("{0}")]
    Usage(String),
    /// `train --gate-against`: the new delta did worse on the held-out data, so the old one
    /// stays and nothing was saved.
    #[error("{0}")]
    GateRejected(String),
}

impl CliError {
    /// The process exit code: 2 for usage errors (as clap uses for its own), 3 when the
    /// evaluation gate kept the old delta, 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::GateRejected(_) => 3,
            _ => 1,
        }
    }

    /// A `.npy` read failure for input `name`, naming the input and the file.
    pub fn input_file(name: &str, path: PathBuf, err: kilotune::Error) -> CliError {
        let reason = match err {
            kilotune::Error::Npy(reason) => reason,
            // An I/O error's message already names the path; keep only the OS's reason.
            kilotune::Error::Io { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        CliError::InputFile { name: name.to_owned(), path, reason }
    }
}

/// The CLI's result type.
pub type Result<T, E = CliError> = std::result::Result<T, E>;
