//! Tokenizer files and text: the first byte picks a char `vocab.json` or a Hugging Face
//! `tokenizer.json`; the input up to the first NUL is the file, the rest is text to encode and
//! decode. Loading, encoding and decoding must end in a typed error or a result, never a panic.
#![no_main]

mod scratch;

use ferrite_runtime::TextTokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let (file, text) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let dir = scratch::dir();
    let loaded = if selector & 1 == 0 {
        let path = dir.join("vocab.json");
        std::fs::write(&path, file).unwrap();
        TextTokenizer::from_char_vocab(&path)
    } else {
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, file).unwrap();
        TextTokenizer::from_tokenizer_json(&path)
    };
    let Ok(tok) = loaded else { return };
    let text = String::from_utf8_lossy(text);
    for special in [false, true] {
        if let Ok(ids) = tok.encode(&text, special) {
            let _ = tok.decode(&ids);
        }
    }
    // Decoding arbitrary ids, in and out of the vocabulary.
    let ids: Vec<u32> = data.chunks(4).map(|c| c.iter().fold(0u32, |a, &b| a << 8 | u32::from(b))).collect();
    let _ = tok.decode(&ids);
    for id in ids {
        let _ = tok.token_bytes(id);
    }
});
