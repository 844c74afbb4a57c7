//! Misuse of `#[derive(Encrypted)]` fails to compile with one clear, spanned error per
//! mistake; correct uses compile. Regenerate the `.stderr` files with `TRYBUILD=overwrite`
//! when the compiler changes.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    for folder in ["container", "shape", "field", "diesel"] {
        cases.compile_fail(format!("tests/ui/{folder}/*.rs"));
    }
    cases.pass("tests/ui/pass/*.rs");
}
