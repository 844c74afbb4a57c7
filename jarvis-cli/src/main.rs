//! `jarvis`: the operator command of jarvis-crypt (filled by the CLI issue).

fn main() {}
