//! What the derive emits after an error, beside the errors (thiserror's `fallback.rs`): a
//! placeholder row struct and every impl and helper the derive would generate, with bodies
//! that are never run, so that the model's other uses (its `Row` type, `encrypt_row`,
//! `<field>_search`, `EncryptedTable::table`) add no errors of their own.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::DeriveInput;

use crate::ast::Container;

pub(crate) fn expand(input: &DeriveInput, container: Option<&Container>) -> TokenStream {
    let model = &input.ident;
    let vis = &input.vis;
    let row = format_ident!("{}Row", model);
    // A generic model (itself an error) is asked no more of its parameters than `Encrypted`
    // asks of the model.
    let mut generics = input.generics.clone();
    if !generics.params.is_empty() {
        generics
            .make_where_clause()
            .predicates
            .push(syn::parse_quote!(Self: ::core::marker::Send + ::core::marker::Sync));
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let helpers = container.map(helpers).unwrap_or_default();
    // `redact_debug`: a `Debug` that prints nothing of the model.
    let model_debug = match container {
        Some(c) if c.redact_debug.is_some() => quote! {
            #[automatically_derived]
            impl #impl_generics ::core::fmt::Debug for #model #ty_generics #where_clause {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.debug_struct(::core::stringify!(#model)).finish_non_exhaustive()
                }
            }
        },
        _ => TokenStream::new(),
    };
    let doc_row = format!(
        "The stored row of [`{model}`]: a placeholder while `#[derive(Encrypted)]` reports an error."
    );

    quote! {
        #[doc = #doc_row]
        #[derive(::core::clone::Clone)]
        #vis struct #row {
            #[doc(hidden)]
            __placeholder: (),
        }

        const _: () = {
            use ::jarvis_crypt::__private as __jc;

            #[automatically_derived]
            impl ::core::fmt::Debug for #row {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.debug_struct(::core::stringify!(#row)).finish_non_exhaustive()
                }
            }

            #model_debug

            #[automatically_derived]
            #[__jc::async_trait]
            impl #impl_generics ::jarvis_crypt::Encrypted for #model #ty_generics #where_clause {
                type Row = #row;

                async fn encrypt_row(
                    &self,
                    _: &::jarvis_crypt::Encryptor,
                ) -> ::jarvis_crypt::Result<#row> {
                    ::core::unreachable!()
                }

                async fn decrypt_rows(
                    _: ::std::vec::Vec<#row>,
                    _: &::jarvis_crypt::Encryptor,
                ) -> ::jarvis_crypt::Result<::std::vec::Vec<Self>> {
                    ::core::unreachable!()
                }
            }

            #[automatically_derived]
            impl #impl_generics ::jarvis_crypt::EncryptedTable for #model #ty_generics #where_clause {
                fn table() -> &'static ::jarvis_crypt::TableDescription {
                    ::core::unreachable!()
                }
            }

            #[automatically_derived]
            impl #impl_generics #model #ty_generics #where_clause {
                #(#helpers)*
            }
        };
    }
}

/// `<field>_search` and `<field>_find` of every field declared searchable, with the
/// signatures the derive generates.
fn helpers(c: &Container) -> Vec<TokenStream> {
    let vis = &c.vis;
    let table = &c.table;
    let row = format_ident!("{}Row", c.ident);
    c.fields
        .iter()
        .filter_map(|f| Some((f, f.encrypted.as_ref()?.search.as_ref()?)))
        .map(|(f, s)| {
            let col = &s.column;
            let search_fn = format_ident!("{}_search", f.ident);
            let find_fn = format_ident!("{}_find", f.ident);
            let filter = quote!(__jc::diesel::dsl::Eq<#table::#col, ::jarvis_crypt::SearchHash>);
            quote! {
                #[doc(hidden)]
                #vis fn #search_fn(
                    _: &::jarvis_crypt::Encryptor,
                    _: &str,
                ) -> ::jarvis_crypt::Result<#filter> {
                    ::core::unreachable!()
                }

                #[doc(hidden)]
                #vis async fn #find_fn<__F, __Fut, __E>(
                    _: &::jarvis_crypt::Encryptor,
                    _: &str,
                    _: __F,
                ) -> ::core::result::Result<::std::vec::Vec<Self>, __E>
                where
                    __F: ::core::ops::FnOnce(#filter) -> __Fut,
                    __Fut: ::core::future::Future<Output = ::core::result::Result<::std::vec::Vec<#row>, __E>>,
                    __E: ::core::convert::From<::jarvis_crypt::Error>,
                {
                    ::core::unreachable!()
                }
            }
        })
        .collect()
}
