//! `ferrite chat BUNDLE [--system TEXT] [sampling flags]`: a conversation on standard input and
//! output. Each line is a user message; the reply streams to stdout. `/reset` forgets the
//! conversation, `/exit` or end of input ends it. Notes (a reset, old turns dropped when the
//! context fills) go to stderr, so stdout holds the replies only.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrite_runtime::{Conversation, Error, StopReason};

use super::{BundleFlags, SamplingFlags};

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// The bundle directory; it must carry a chat template (`chat` in its ferrite.json).
    pub bundle: PathBuf,
    /// System message that opens the conversation (kept when old turns are dropped).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingFlags,
    #[command(flatten)]
    pub flags: BundleFlags,
}

pub fn run(args: ChatArgs) -> Result<()> {
    // Each reply's generator checks the budget at its prompt plus --max-tokens positions.
    let bundle = args.flags.open_for(&args.bundle, args.sampling.max_tokens.saturating_add(1))?;
    bundle.require_chat_template().context("`ferrite chat` needs a chat template")?;
    let mut chat = Conversation::new(&bundle, args.system.as_deref(), args.sampling.options()?)?;
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    if interactive {
        let context =
            bundle.context_length().map(|n| format!(", a context of {n} tokens")).unwrap_or_default();
        eprintln!(
            "Chatting with {}{context}. /reset forgets the conversation; /exit or Ctrl-D ends it.",
            args.bundle.display()
        );
    }
    let mut stdout = std::io::stdout().lock();
    let mut input = stdin.lock();
    let mut line = String::new();
    loop {
        if interactive {
            write!(stdout, "> ")?;
            stdout.flush()?;
        }
        line.clear();
        if input.read_line(&mut line).context("reading standard input")? == 0 {
            break;
        }
        let message = line.trim_end_matches(['\n', '\r']);
        match message.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                chat.reset()?;
                eprintln!("[conversation reset]");
                continue;
            }
            _ => {}
        }
        let reply = chat.send(message, &mut |text| {
            // A closed stdout ends the reply; the next write reports the error.
            stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).is_ok()
        });
        let reply = match reply {
            Ok(reply) => reply,
            // The conversation is unchanged: say why and read the next line.
            Err(e @ (Error::ContextFull { .. } | Error::ChatTemplate(_))) => {
                eprintln!("error: {e}");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        writeln!(stdout)?;
        stdout.flush()?;
        if reply.dropped_messages > 0 {
            eprintln!(
                "[context full: dropped the {} oldest messages to make room; the conversation goes on]",
                reply.dropped_messages
            );
        }
        if reply.stop == StopReason::ContextFull {
            eprintln!("[context full: the reply was cut off; the oldest turns are dropped next turn]");
        }
        log::info!(
            "{} prompt tokens, {} prefilled, {} generated, first token after {:.0} ms",
            reply.prompt_tokens,
            reply.prefilled_tokens,
            reply.ids.len(),
            reply.time_to_first_token.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
