//! Chat: a bundle's chat template (the Jinja source in `ferrite.json`'s `chat` object) turns a
//! conversation into a prompt, and a [`Conversation`] talks with the model turn after turn while
//! its KV cache stays in the backend.
//!
//! Templates come with model files and are untrusted. minijinja renders them with no loader
//! (`include`/`import`/`extends` find no template but the chat template itself), so a template
//! cannot read a file; with a fixed fuel budget
//! ([`TEMPLATE_FUEL`] instructions), a recursion limit ([`TEMPLATE_RECURSION_LIMIT`]) and a cap on
//! the rendered text ([`MAX_RENDERED_BYTES`]), so one that loops, recurses or writes without end
//! stops with [`Error::ResourceLimit`]. The environment is the one Hugging Face renders templates
//! in (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`, `tools` = none),
//! so a model's template gives what `apply_chat_template` gives. This module never invents a
//! format for a bundle without a template, and it does not handle tool calls or images.

mod conversation;
mod template;

pub use conversation::{Conversation, Reply};
pub use template::{
    ChatSpec, ChatTemplate, MAX_RENDERED_BYTES, MAX_TEMPLATE_BYTES, MAX_TEMPLATE_STOP_IDS, Message,
    TEMPLATE_FUEL, TEMPLATE_RECURSION_LIMIT,
};
