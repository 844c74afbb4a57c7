//! Error collection: every mistake of one input is reported in one compile.

use proc_macro2::Span;

/// Collects errors so that one compile reports them all (serde's `Ctxt`).
#[derive(Default)]
pub(crate) struct Ctxt {
    errors: Option<syn::Error>,
}

impl Ctxt {
    pub(crate) fn error(&mut self, span: Span, message: impl std::fmt::Display) {
        self.syn(syn::Error::new(span, message));
    }

    pub(crate) fn syn(&mut self, error: syn::Error) {
        match &mut self.errors {
            Some(all) => all.combine(error),
            None => self.errors = Some(error),
        }
    }

    pub(crate) fn finish(self) -> Result<(), syn::Error> {
        self.errors.map_or(Ok(()), Err)
    }
}
