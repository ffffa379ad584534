//! The committed `include/ferrite.h` must equal a fresh cbindgen generation: a stale header fails
//! here (and so in CI). `FERRITE_BLESS=1 cargo test -p ferrite-ffi --test header` rewrites it.

use std::path::Path;

#[test]
fn committed_header_is_fresh() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let path = dir.join("include/ferrite.h");
    if std::env::var_os("FERRITE_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is stale: regenerate it with `FERRITE_BLESS=1 cargo test -p ferrite-ffi --test header` \
         and commit it",
        path.display()
    );
}
