//! `redact_debug`: the model's `Debug`, with every encrypted field printed as `<redacted>`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use crate::ast::Container;

pub(super) fn model_debug(c: &Container) -> TokenStream {
    let Some(span) = c.redact_debug else {
        return TokenStream::new();
    };
    let model = &c.ident;
    let model_name = model.to_string();
    let fields = c.fields.iter().map(|f| {
        let ident = &f.ident;
        let name = ident.to_string();
        match &f.encrypted {
            Some(_) => quote!(.field(#name, &__jc::Redacted)),
            None => quote!(.field(#name, &self.#ident)),
        }
    });
    // Spanned at `redact_debug`: a second `Debug` (a derived one) is reported there.
    let model_at = syn::Ident::new(&model_name, span);
    quote_spanned! {span=>
        #[automatically_derived]
        impl ::core::fmt::Debug for #model_at {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(#model_name) #(#fields)* .finish()
            }
        }
    }
}
