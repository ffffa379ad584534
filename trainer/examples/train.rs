//! Runs `ferrite train` without the main binary: `cargo run --release -p ferrite-trainer
//! --example train -- --arch lstm --corpus models/corpus --out /tmp/lstm`. For development and
//! benchmarks; users get the same flags from `ferrite train`.

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ferrite_trainer::cli::TrainArgs,
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    ferrite_trainer::cli::run(Cli::parse().args)
}
