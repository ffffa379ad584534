//! `ferrite embed BUNDLE --text T [--text T2 ...] [--json]`: sentence embeddings of a BERT bundle.

use std::path::PathBuf;

use anyhow::Result;
use ferrite_runtime::Embedder;

use super::BundleFlags;

#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// The bundle directory (a BERT / sentence-transformers export).
    pub bundle: PathBuf,
    /// A text to embed; repeat for a batch.
    #[arg(long = "text", required = true)]
    pub texts: Vec<String>,
    /// Print `{"embeddings": [[...], ...]}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub flags: BundleFlags,
}

pub fn run(args: EmbedArgs) -> Result<()> {
    let bundle = args.flags.open(&args.bundle)?;
    let mut embedder = Embedder::new(&bundle)?;
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    let embeddings = embedder.embed(&texts)?;
    if args.json {
        println!("{}", serde_json::json!({ "embeddings": embeddings }));
    } else {
        for (text, e) in texts.iter().zip(&embeddings) {
            let head: Vec<String> = e.iter().take(6).map(|x| format!("{x:.6}")).collect();
            println!("{text:?}: dim {} [{}, …]", e.len(), head.join(", "));
        }
    }
    Ok(())
}
