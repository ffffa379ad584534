//! The `ferrite` command line: inspect and run ONNX models (and, as later issues land, export,
//! train, generate). Every failure exits non-zero with one human-readable line on stderr.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// ferrite: small language models from training to a Raspberry Pi.
#[derive(Parser)]
#[command(name = "ferrite", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's inputs, outputs, operators, weight bytes and metadata.
    Inspect(cmd::inspect::InspectArgs),
    /// Run a model on .npy inputs and write its outputs as .npz.
    Infer(cmd::infer::InferArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Infer(args) => cmd::infer::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of contexts joined, as a person reads it.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
