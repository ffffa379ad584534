//! Sentence embeddings from a BERT bundle: tokenize a batch, pad it, mask it, and read the
//! bundle's `sentence_embedding` output (mean pooling and L2 normalisation are in the graph).
//!
//! Texts longer than the maximum length are truncated explicitly (keeping the final `[SEP]`),
//! as sentence-transformers does; [`Embedder::with_max_length`] sets a shorter limit. It does
//! not cache, reorder or split batches.

use std::ops::Deref;

use crate::bundle::{Architecture, Bundle};
use crate::error::{Error, Result};
use crate::session::Session;
use crate::tensor::Tensor;

/// Turns texts into embeddings with a BERT bundle.
///
/// `B` holds the bundle: `&Bundle` (borrowed) or `Arc<Bundle>` (shared ownership, as the C API's handles).
pub struct Embedder<B: Deref<Target = Bundle>> {
    bundle: B,
    session: Session,
    max_length: usize,
}

impl<B: Deref<Target = Bundle>> std::fmt::Debug for Embedder<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder").field("max_length", &self.max_length).finish_non_exhaustive()
    }
}

impl<B: Deref<Target = Bundle>> Embedder<B> {
    /// An embedder for `bundle` (a BERT bundle with a tokenizer).
    pub fn new(bundle: B) -> Result<Embedder<B>> {
        if bundle.architecture() != Architecture::Bert {
            return Err(Error::InvalidGeneration(format!(
                "embeddings need a BERT bundle, {} is {:?}",
                bundle.dir().display(),
                bundle.architecture()
            )));
        }
        bundle.require_tokenizer()?;
        let max_length = bundle.context_length().unwrap_or(512);
        let session = bundle.plan().session()?;
        Ok(Embedder { bundle, session, max_length })
    }

    /// Truncates inputs to `n` tokens (at most the model's context length; at least 2).
    pub fn with_max_length(mut self, n: usize) -> Self {
        self.max_length = n.clamp(2, self.bundle.context_length().unwrap_or(n).max(2));
        self
    }

    /// The current truncation length in tokens (special tokens included).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Token ids of `text` as the model sees them: special tokens added, truncated.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.bundle.require_tokenizer()?.encode(text, true)?;
        // A tokenizer.json may name special ids outside its own vocabulary (found by the corpus).
        if let Some(vocab) = self.bundle.vocab_size()
            && let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab)
        {
            return Err(Error::UnknownToken { id: i64::from(id), vocab });
        }
        if ids.len() > self.max_length {
            let last = ids[ids.len() - 1];
            ids.truncate(self.max_length - 1);
            ids.push(last);
        }
        Ok(ids)
    }

    /// Embeds a batch of texts in one model run; one vector per text.
    pub fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let rows = texts.iter().map(|t| self.tokenize(t)).collect::<Result<Vec<_>>>()?;
        let b = rows.len();
        let s = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let pad = self.bundle.special_token("pad").unwrap_or(0);
        if let Some(vocab) = self.bundle.vocab_size()
            && usize::try_from(pad).ok().is_none_or(|p| p >= vocab)
        {
            return Err(Error::UnknownToken { id: pad, vocab });
        }
        let mut ids = vec![pad; b * s];
        let mut mask = vec![0i64; b * s];
        for (r, row) in rows.iter().enumerate() {
            for (j, &id) in row.iter().enumerate() {
                ids[r * s + j] = i64::from(id);
                mask[r * s + j] = 1;
            }
        }
        let ids = Tensor::new(vec![b, s], ids)?;
        let mask = Tensor::new(vec![b, s], mask)?;
        let types = Tensor::new(vec![b, s], vec![0i64; b * s])?;
        let out = self.session.run(&[
            ("input_ids", ids.view()),
            ("attention_mask", mask.view()),
            ("token_type_ids", types.view()),
        ])?;
        let emb = out
            .get("sentence_embedding")
            .ok_or_else(|| Error::InvalidModel("the model has no `sentence_embedding` output".into()))?;
        let d = *emb.shape().last().unwrap_or(&0);
        let data = emb.as_slice::<f32>()?;
        Ok(data.chunks(d.max(1)).map(<[f32]>::to_vec).collect())
    }
}
