//! Misuse of `#[derive(Encrypted)]` fails to compile with one clear, spanned error per
//! mistake; correct uses compile; the caller-chosen-nonce API of jarvis-crypt is not there
//! without its `hazmat` feature. Regenerate the `.stderr` files with `TRYBUILD=overwrite`
//! when the compiler changes.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    for folder in [
        "container",
        "shape",
        "field",
        "diesel",
        "hazmat",
        "fallback",
        "nullability",
    ] {
        cases.compile_fail(format!("tests/ui/{folder}/*.rs"));
    }
    cases.pass("tests/ui/pass/*.rs");
}
