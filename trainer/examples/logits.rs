//! Prints the trainer's own fp32 logits for a checkpoint as JSON (`{"dims": [1, S, V],
//! "logits": [...]}`): the reference for exporter parity checks.
//! `cargo run -p ferrite-trainer --example logits -- DIR 1 2 3`

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or_else(|| anyhow::anyhow!("usage: logits DIR TOKEN..."))?;
    let tokens = args.map(|a| a.parse::<u32>()).collect::<Result<Vec<_>, _>>()?;
    let (logits, dims) = ferrite_trainer::train::checkpoint_logits(dir.as_ref(), &tokens)?;
    println!("{}", serde_json::json!({ "dims": dims, "logits": logits }));
    Ok(())
}
