//! Chat templates are untrusted (they come with a model): the input up to the first NUL is the
//! Jinja source, the NUL-separated parts after it are the messages (roles cycling system, user,
//! assistant). Compiling and rendering must end in a rendered prompt or a typed error within the
//! template bounds (fuel, recursion, output size), never a panic or a hang.
#![no_main]

use ferrite_runtime::chat::{ChatTemplate, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let Some(source) = parts.next() else { return };
    let source = String::from_utf8_lossy(source);
    let Ok(template) = ChatTemplate::new(&source, "<s>", "</s>") else { return };
    let roles = ["system", "user", "assistant"];
    let messages: Vec<Message> =
        parts.enumerate().map(|(i, m)| Message::new(roles[i % 3], String::from_utf8_lossy(m))).collect();
    for add_generation_prompt in [false, true] {
        let _ = template.render(&messages, add_generation_prompt);
    }
});
