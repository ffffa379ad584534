//! A bundle's chat template: the Jinja source in `ferrite.json`'s `chat` object, compiled once
//! and rendered with bounds (see the module above). It depends on nothing but the tokenizer, so
//! the bundle can hold one.

use std::io;

use minijinja::{Environment, ErrorKind, Value, context};

use crate::error::{Error, Result};
use crate::tokenizer::TextTokenizer;

/// Most end-of-turn and end-of-sequence ids a template carries (the generator's stop-id list,
/// [`crate::generate::MAX_STOP_IDS`], holds as many).
pub const MAX_TEMPLATE_STOP_IDS: usize = 8;

/// The `chat` object of `ferrite.json`: how a conversation becomes a prompt.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct ChatSpec {
    /// Jinja source (a Hugging Face `chat_template`, or a GGUF's `tokenizer.chat_template`).
    pub template: String,
    /// The text the template knows as `bos_token`.
    #[serde(default)]
    pub bos_token: String,
    /// The text the template knows as `eos_token`.
    #[serde(default)]
    pub eos_token: String,
    /// Tokens that end an assistant turn (`<|im_end|>`, `<|eot_id|>`), each one token of the
    /// bundle's tokenizer; generation stops at any of them and at the end-of-sequence token.
    #[serde(default)]
    pub end_of_turn: Vec<String>,
}

/// Longest template source accepted, in bytes (real ones are a few KiB).
pub const MAX_TEMPLATE_BYTES: usize = 256 << 10;
/// Instructions one render may execute. A real template spends tens per message
/// (SmolLM2's ChatML: 23, measured), so this leaves room for thousands of messages and still ends a
/// loop that would not.
pub const TEMPLATE_FUEL: u64 = 100_000;
/// Deepest nesting of blocks, loops and macro calls during a render.
pub const TEMPLATE_RECURSION_LIMIT: usize = 100;
/// Longest rendered prompt, in bytes.
pub const MAX_RENDERED_BYTES: usize = 4 << 20;

const TEMPLATE_NAME: &str = "chat_template";

/// One message of a conversation, as chat templates see it (`message.role`, `message['content']`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant` (templates may know others, such as `tool`).
    pub role: String,
    /// The message's text.
    pub content: String,
}

impl Message {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message { role: role.into(), content: content.into() }
    }
    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Message {
        Message::new("system", content)
    }
    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Message {
        Message::new("user", content)
    }
    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Message {
        Message::new("assistant", content)
    }
}

/// A compiled chat template with its special tokens and the ids that end an assistant turn.
///
/// ```
/// use ferrite_runtime::chat::{ChatTemplate, Message};
/// let t = ChatTemplate::new(
///     "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content.strip() }}<|im_end|>\n{% endfor %}\
///      {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
///     "",
///     "<|im_end|>",
/// )?;
/// let prompt = t.render(&[Message::user(" Hi! ")], true)?;
/// assert_eq!(prompt, "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n");
/// # Ok::<(), ferrite_runtime::Error>(())
/// ```
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    stop_ids: heapless::Vec<u32, MAX_TEMPLATE_STOP_IDS>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("stop_ids", &self.stop_ids)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` (a syntax error is [`Error::ChatTemplate`]); `bos_token` and
    /// `eos_token` are the texts the template sees under those names. It has no stop ids: a
    /// bundle's template ([`Bundle::chat_template`]) resolves them through its tokenizer.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(Error::ResourceLimit(format!(
                "chat template of {} bytes (at most {MAX_TEMPLATE_BYTES})",
                source.len()
            )));
        }
        let mut env = Environment::new();
        // What transformers' ImmutableSandboxedEnvironment sets for chat templates.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_recursion_limit(TEMPLATE_RECURSION_LIMIT);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| Error::ChatTemplate(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
            stop_ids: heapless::Vec::new(),
        })
    }

    /// The template of a bundle's `chat` object: compiled, with its end-of-turn tokens and the
    /// end-of-sequence token (`eos`, the manifest's id) resolved to ids. The error is the reason
    /// the bundle is invalid.
    pub(crate) fn for_bundle(
        spec: &ChatSpec,
        tokenizer: &TextTokenizer,
        eos: Option<u32>,
    ) -> std::result::Result<ChatTemplate, String> {
        let mut template =
            ChatTemplate::new(&spec.template, &spec.bos_token, &spec.eos_token).map_err(|e| e.to_string())?;
        let mut add = |id: u32| {
            if !template.stop_ids.contains(&id) {
                template.stop_ids.push(id).map_err(|_| {
                    format!("more than {MAX_TEMPLATE_STOP_IDS} end-of-turn and end-of-sequence tokens")
                })?;
            }
            Ok::<(), String>(())
        };
        for token in &spec.end_of_turn {
            let id = tokenizer.token_id(token).ok_or_else(|| {
                format!("end-of-turn token {token:?} is not one token of the bundle's tokenizer")
            })?;
            add(id)?;
        }
        if let Some(id) = eos {
            add(id)?;
        }
        if let Some(id) = tokenizer.token_id(&spec.eos_token) {
            add(id)?;
        }
        Ok(template)
    }

    /// Token ids that end an assistant turn: the `end_of_turn` tokens, then the end-of-sequence
    /// token.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The text the template knows as `bos_token`.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The text the template knows as `eos_token`.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Renders `messages`; `add_generation_prompt` appends the opening of an assistant turn (what
    /// a prompt for the model's reply ends with).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| Error::ChatTemplate(describe(&e)))?;
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            // transformers passes these as None when the caller has none.
            tools => Value::from(()),
            documents => Value::from(()),
        };
        let mut out = CappedWriter { buf: Vec::new(), over: false };
        match template.render_captured_to(ctx, &mut out) {
            Ok(_) => String::from_utf8(out.buf)
                .map_err(|_| Error::ChatTemplate("the template wrote text that is not UTF-8".into())),
            Err(_) if out.over => Err(Error::ResourceLimit(format!(
                "chat template: the rendered prompt is longer than {MAX_RENDERED_BYTES} bytes"
            ))),
            Err(e) => Err(render_error(&e)),
        }
    }
}

/// `raise_exception(message)`, which Hugging Face templates call to refuse a conversation.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("the template raised: {message}")))
}

/// A bound the template hit (anywhere in the error's chain: an include wraps its cause) is a
/// resource limit; anything else is the template's own error.
fn render_error(e: &minijinja::Error) -> Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(m) = c.downcast_ref::<minijinja::Error>() {
            if m.kind() == ErrorKind::OutOfFuel {
                return Error::ResourceLimit(format!(
                    "chat template: ran out of fuel ({TEMPLATE_FUEL} instructions); it loops too long"
                ));
            }
            if m.kind() == ErrorKind::InvalidOperation && m.detail() == Some("recursion limit exceeded") {
                return Error::ResourceLimit(format!(
                    "chat template: nesting deeper than {TEMPLATE_RECURSION_LIMIT} levels (unbounded recursion?)"
                ));
            }
        }
        cause = c.source();
    }
    Error::ChatTemplate(describe(e))
}

/// minijinja's message with the line it points at.
fn describe(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!("{e} (line {line})"),
        None => e.to_string(),
    }
}

/// Collects rendered text and refuses to grow past [`MAX_RENDERED_BYTES`].
struct CappedWriter {
    buf: Vec<u8>,
    over: bool,
}

impl io::Write for CappedWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.buf.len() + bytes.len() > MAX_RENDERED_BYTES {
            self.over = true;
            return Err(io::Error::other("the rendered prompt is too long"));
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_and_raised_exceptions_are_typed() {
        let err = ChatTemplate::new("{% for m in messages %}", "", "").unwrap_err();
        assert!(matches!(err, Error::ChatTemplate(_)), "{err}");
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'system' %}{{ raise_exception('system first') }}{% endif %}",
            "",
            "",
        )
        .unwrap();
        let err = t.render(&[Message::user("hi")], true).unwrap_err();
        assert!(matches!(&err, Error::ChatTemplate(m) if m.contains("system first")), "{err}");
    }

    #[test]
    fn templates_cannot_reach_files() {
        for source in [
            "{% include '/etc/passwd' %}",
            "{% extends '/etc/passwd' %}",
            "{% import '/etc/passwd' as x %}",
            "{% from '/etc/passwd' import x %}",
        ] {
            let err = ChatTemplate::new(source, "", "").and_then(|t| t.render(&[], false)).expect_err(source);
            assert!(matches!(err, Error::ChatTemplate(_)), "{source}: {err}");
        }
    }

    #[test]
    fn hostile_templates_stop_with_typed_errors() {
        let limit = |source: &str| {
            let t = ChatTemplate::new(source, "", "").unwrap();
            let err = t.render(&[Message::user("x")], true).expect_err(source);
            assert!(matches!(err, Error::ResourceLimit(_) | Error::ChatTemplate(_)), "{source}: {err}");
            err
        };
        // Recursion through a macro calling itself.
        let err = limit("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
        assert!(matches!(err, Error::ResourceLimit(_)), "{err}");
        // A template including itself (the only template there is to include).
        let err = limit("x{% include 'chat_template' %}");
        assert!(matches!(err, Error::ResourceLimit(_)), "{err}");
        // Nested loops that would run 10^15 iterations.
        let err = limit(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}\
             x{% endfor %}{% endfor %}{% endfor %}",
        );
        assert!(matches!(err, Error::ResourceLimit(_)), "{err}");
        // A range minijinja itself refuses.
        limit("{% for i in range(1000000000) %}{% endfor %}");
        // Output past the cap within the fuel: each iteration writes 1 MB.
        let err = limit("{% set s = 'x' * 1000000 %}{% for i in range(100) %}{{ s }}{% endfor %}");
        assert!(matches!(err, Error::ResourceLimit(_)), "{err}");
        // A recursive loop over ever deeper data.
        let err = limit(
            "{% set xs = [[[[[[[[[[[1]]]]]]]]]]] %}{% macro walk(x) %}{% for y in x %}{{ walk(x) }}\
             {% endfor %}{% endmacro %}{{ walk(xs) }}",
        );
        assert!(matches!(err, Error::ResourceLimit(_)), "{err}");
    }

    #[test]
    fn an_oversized_template_is_refused_before_compiling() {
        let source = "x".repeat(MAX_TEMPLATE_BYTES + 1);
        assert!(matches!(ChatTemplate::new(&source, "", ""), Err(Error::ResourceLimit(_))));
    }
}
