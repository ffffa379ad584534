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
    /// Generate text with an LSTM or GPT-2 bundle (streams to stdout).
    Generate(cmd::generate::GenerateArgs),
    /// Talk with a bundle that has a chat template: one message per line on stdin, replies streamed.
    Chat(cmd::chat::ChatArgs),
    /// Sentence embeddings of texts with a BERT bundle.
    Embed(cmd::embed::EmbedArgs),
    /// Cross-entropy and perplexity of a bundle on a text file.
    Eval(cmd::eval::EvalArgs),
    /// Measure load time, time to first token, prefill/decode tokens/s or sentences/s, peak RSS.
    Bench(cmd::bench::BenchArgs),
    /// Convert trained weights (ferrite/PyTorch LSTM, Hugging Face GPT-2 / BERT, Keras `.keras`) into an ONNX bundle.
    #[cfg(feature = "export")]
    Export(ferrite_exporter::cli::ExportArgs),
    /// Train an LSTM or GPT-2-style language model on a text corpus (CPU).
    #[cfg(feature = "train")]
    Train(ferrite_trainer::cli::TrainArgs),
}

/// Serves every allocation of 128 KiB or more with its own `mmap`, returned to the OS when freed.
///
/// glibc's default raises this threshold (up to 32 MiB) each time a large mapped block is
/// freed, after which large blocks come from the main heap and stay resident once freed.
/// Loading a model frees hundreds of large blocks (tract copies and folds every weight), so
/// by default a generation held ~50 MiB of freed memory: SmolLM2-135M q4 on tract 226 MiB
/// resident, 178 MiB with the fixed threshold (docs/loading.md). A library must not set
/// process-wide allocator policy; the CLI does, as a C host can (`mallopt(M_MMAP_THRESHOLD,
/// 131072)` or `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072`).
fn large_blocks_from_mmap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes glibc's allocation policy for later calls; it runs
        // first thing in `main`, before any other thread exists.
        let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
        if set != 1 {
            log::debug!("mallopt(M_MMAP_THRESHOLD) was refused");
        }
    }
}

fn main() -> ExitCode {
    large_blocks_from_mmap();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Infer(args) => cmd::infer::run(args),
        Command::Generate(args) => cmd::generate::run(args),
        Command::Chat(args) => cmd::chat::run(args),
        Command::Embed(args) => cmd::embed::run(args),
        Command::Eval(args) => cmd::eval::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        #[cfg(feature = "export")]
        Command::Export(args) => ferrite_exporter::cli::run(args),
        #[cfg(feature = "train")]
        Command::Train(args) => ferrite_trainer::cli::run(args),
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
