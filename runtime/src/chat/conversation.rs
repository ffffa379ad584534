//! A conversation with a bundle that keeps its KV cache across turns (see the module above).

use std::ops::Deref;
use std::time::{Duration, Instant};

use super::template::{MAX_TEMPLATE_STOP_IDS, Message};
use crate::bundle::{Architecture, Bundle};
use crate::error::{Error, Result};
use crate::generate::{GenerateOptions, Generator, MAX_STOP_IDS, StopReason};
use crate::sample::Sampler;
use crate::stream::TextStream;

// A template's stop ids all fit the generator's list.
const _: () = assert!(MAX_TEMPLATE_STOP_IDS <= MAX_STOP_IDS);

/// One assistant reply of a [`Conversation`].
#[derive(Debug, Clone)]
pub struct Reply {
    /// The reply's text (what was streamed; an end-of-turn token is not part of it).
    pub text: String,
    /// Generated ids (the end-of-turn token included when that is what ended the reply).
    pub ids: Vec<u32>,
    /// Why the reply ended. [`StopReason::StopToken`] is the model ending its turn;
    /// [`StopReason::ContextFull`] means the context filled during the reply (the next turn
    /// drops old messages).
    pub stop: StopReason,
    /// Tokens of the rendered conversation this turn (the prompt of this reply).
    pub prompt_tokens: usize,
    /// Of those, the ones run this turn: the rest were already in the cache.
    pub prefilled_tokens: usize,
    /// Messages dropped from the start of the conversation (after the system message) to make
    /// room; 0 when everything fitted.
    pub dropped_messages: usize,
    /// From the start of the turn until the first token was chosen.
    pub time_to_first_token: Duration,
    /// The whole turn.
    pub elapsed: Duration,
}

/// A conversation with a bundle that has a chat template, keeping the KV cache across turns.
///
/// Each [`Conversation::send`] renders the whole conversation with the template, finds how much
/// of it is already in the cache (the longest common prefix of token ids), cuts the cache back to
/// that prefix if needed and prefills only the rest, then streams the reply until an end-of-turn
/// or end-of-sequence token, a stop string, `max_tokens`, or a full context.
///
/// Context: the rendered prompt plus room for a reply (`max_tokens`, at most half the context)
/// must fit. When it does not, the oldest turns are dropped (a user message and the replies
/// after it; the system message stays) and [`Reply::dropped_messages`] says how many. A new
/// message that does not fit even alone is [`Error::ContextFull`] and changes nothing.
///
/// ```no_run
/// use ferrite_runtime::{Bundle, Conversation, GenerateOptions};
/// let bundle = Bundle::open("smollm2-q4")?;
/// let mut chat = Conversation::new(&bundle, Some("You are brief."), GenerateOptions::default())?;
/// let reply = chat.send("What is the capital of France?", &mut |text| {
///     print!("{text}");
///     true
/// })?;
/// println!("\n({} new tokens prefilled)", reply.prefilled_tokens);
/// # Ok::<(), ferrite_runtime::Error>(())
/// ```
pub struct Conversation<B: Deref<Target = Bundle> + Clone> {
    bundle: B,
    generator: Generator<B>,
    options: GenerateOptions,
    sampler: Sampler,
    messages: Vec<Message>,
    /// The ids whose keys and values the generator holds, in order (its position is their count).
    cached: Vec<u32>,
    /// The model's context length; `None` for a recurrent model (no limit).
    context: Option<usize>,
}

impl<B: Deref<Target = Bundle> + Clone> std::fmt::Debug for Conversation<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversation")
            .field("messages", &self.messages.len())
            .field("cached", &self.cached.len())
            .finish_non_exhaustive()
    }
}

impl<B: Deref<Target = Bundle> + Clone> Conversation<B> {
    /// A conversation with `bundle` (which must have a chat template and a tokenizer), opened by
    /// `system` when given. `options` sets `max_tokens` per reply, sampling and stop strings;
    /// the template's end-of-turn ids are added to its stop ids.
    pub fn new(bundle: B, system: Option<&str>, options: GenerateOptions) -> Result<Conversation<B>> {
        let template = bundle.require_chat_template()?;
        bundle.require_tokenizer()?;
        if options.max_tokens == 0 {
            return Err(Error::InvalidGeneration("max_tokens must be at least 1".into()));
        }
        let mut options = options;
        for &id in template.stop_ids() {
            if !options.stop_ids.contains(&id) {
                options.stop_ids.push(id).map_err(|_| {
                    Error::InvalidGeneration(format!("more than {MAX_STOP_IDS} stop ids with the template's"))
                })?;
            }
        }
        let generator = Generator::new(bundle.clone())?;
        let sampler = Sampler::new(options.sampling, generator.vocab_size())?;
        let context = match bundle.architecture() {
            Architecture::Lstm => None,
            _ => bundle.context_length(),
        };
        let messages = system.map(|s| vec![Message::system(s)]).unwrap_or_default();
        Ok(Conversation { bundle, generator, options, sampler, messages, cached: Vec::new(), context })
    }

    /// The conversation so far (the system message first, when there is one).
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Tokens whose keys and values are in the cache.
    pub fn cached_tokens(&self) -> usize {
        self.cached.len()
    }

    /// Forgets every turn (the system message stays) and empties the cache.
    pub fn reset(&mut self) -> Result<()> {
        self.messages.retain(|m| m.role == "system");
        self.messages.truncate(1);
        self.cached.clear();
        self.generator.reset()
    }

    /// Adds the user message `text`, generates the assistant's reply and adds it too. `on_text`
    /// receives the reply as it is generated and returns whether to go on (`false` ends it with
    /// [`StopReason::Cancelled`]). On an error the conversation is as it was before the call.
    pub fn send(&mut self, text: &str, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Reply> {
        let start = Instant::now();
        let mut messages = self.messages.clone();
        messages.push(Message::user(text));
        let (prompt, dropped_messages) = self.fit(&mut messages)?;
        match self.reply(&prompt, start, on_text) {
            Ok(reply) => {
                messages.push(Message::assistant(reply.text.clone()));
                self.messages = messages;
                Ok(Reply { dropped_messages, ..reply })
            }
            Err(e) => {
                // The cache may hold part of a failed turn: start the next one from nothing.
                self.cached.clear();
                let _ = self.generator.reset();
                Err(e)
            }
        }
    }

    /// Renders and tokenizes `messages`, dropping the oldest turns until the prompt and room for
    /// a reply fit the context. Returns the prompt ids and the number of messages dropped.
    fn fit(&self, messages: &mut Vec<Message>) -> Result<(Vec<u32>, usize)> {
        let template = self.bundle.require_chat_template()?;
        let tok = self.bundle.require_tokenizer()?;
        let mut dropped = 0;
        loop {
            let text = template.render(messages, true)?;
            let ids = tok.encode(&text, false)?;
            if ids.is_empty() {
                return Err(Error::InvalidGeneration("the chat template rendered an empty prompt".into()));
            }
            let Some(ctx) = self.context else { return Ok((ids, dropped)) };
            let room = self.options.max_tokens.min(ctx / 2);
            if ids.len() + room <= ctx {
                return Ok((ids, dropped));
            }
            match oldest_turn(messages) {
                Some(turn) => {
                    dropped += turn.len();
                    messages.drain(turn);
                }
                // Nothing left to drop: go on with less room for the reply, if any is left.
                None if ids.len() < ctx => return Ok((ids, dropped)),
                None => return Err(Error::ContextFull { needed: ids.len() + 1, context_length: ctx }),
            }
        }
    }

    /// Brings the cache to `prompt` (reusing the common prefix), then samples the reply.
    fn reply(
        &mut self,
        prompt: &[u32],
        start: Instant,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Reply> {
        // At least the last prompt token is run: its logits choose the first reply token.
        let mut keep = common_prefix(&self.cached, prompt).min(prompt.len() - 1);
        if keep < self.cached.len() {
            if self.generator.truncate(keep).is_err() {
                // A recurrent state cannot be cut back: run the whole prompt again.
                self.generator.reset()?;
                keep = 0;
            }
            self.cached.truncate(keep);
        }
        let mut logits = self.generator.feed_last(&prompt[keep..])?.to_vec();
        self.cached.extend_from_slice(&prompt[keep..]);
        let bundle = self.bundle.clone();
        let tok = bundle.require_tokenizer()?;
        let mut history = prompt.to_vec();
        let mut text = String::new();
        let mut stream = TextStream::new(self.options.stop_strings.clone());
        let cancelled = std::cell::Cell::new(false);
        let mut emit = |s: &str| {
            text.push_str(s);
            if !cancelled.get() && !on_text(s) {
                cancelled.set(true);
            }
        };
        let mut ids = Vec::new();
        let mut time_to_first_token = Duration::ZERO;
        let stop = loop {
            let id = self.sampler.sample(&mut logits, &history);
            if ids.is_empty() {
                time_to_first_token = start.elapsed();
            }
            ids.push(id);
            history.push(id);
            if self.options.stop_ids.contains(&id) {
                break StopReason::StopToken;
            }
            if stream.push(tok.token_bytes(id).unwrap_or_default(), &mut emit) {
                break StopReason::StopString;
            }
            if cancelled.get() {
                break StopReason::Cancelled;
            }
            if ids.len() >= self.options.max_tokens {
                break StopReason::MaxTokens;
            }
            if self.context.is_some_and(|c| self.generator.position() >= c) {
                break StopReason::ContextFull;
            }
            logits.copy_from_slice(self.generator.feed_last(&[id])?);
            self.cached.push(id);
        };
        if !cancelled.get() {
            stream.finish(&mut emit);
        }
        Ok(Reply {
            text,
            ids,
            stop,
            prompt_tokens: prompt.len(),
            prefilled_tokens: prompt.len() - keep,
            dropped_messages: 0,
            time_to_first_token,
            elapsed: start.elapsed(),
        })
    }
}

/// The oldest droppable turn: the first user message after the system message and every
/// message up to the next user message. The last message (the one being answered) never is.
fn oldest_turn(messages: &[Message]) -> Option<std::ops::Range<usize>> {
    let first = usize::from(messages.first().is_some_and(|m| m.role == "system"));
    let last = messages.len().checked_sub(1)?;
    if first >= last {
        return None;
    }
    let end = (first + 1..last).find(|&i| messages[i].role == "user").unwrap_or(last);
    Some(first..end)
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(messages: &[Message]) -> Vec<&str> {
        messages.iter().map(|m| m.role.as_str()).collect()
    }

    #[test]
    fn the_oldest_turn_goes_first_and_the_system_message_stays() {
        let mut m = vec![
            Message::system("s"),
            Message::user("1"),
            Message::assistant("a1"),
            Message::user("2"),
            Message::assistant("a2"),
            Message::user("3"),
        ];
        let turn = oldest_turn(&m).unwrap();
        m.drain(turn);
        assert_eq!(roles(&m), ["system", "user", "assistant", "user"]);
        assert_eq!(m[1].content, "2");
        let turn = oldest_turn(&m).unwrap();
        m.drain(turn);
        assert_eq!(roles(&m), ["system", "user"]);
        assert_eq!(oldest_turn(&m), None, "the message being answered is never dropped");
        assert_eq!(oldest_turn(&[Message::user("only")]), None);
    }
}
