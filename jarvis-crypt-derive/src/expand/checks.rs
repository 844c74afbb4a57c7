//! Compile-time checks of the model against the diesel table, each reported once with a
//! message of its own (`#[diagnostic::on_unimplemented]` on traits over diesel's SQL types)
//! and spanned at the user's tokens: every stored-form column is `Binary` or
//! `Nullable<Binary>` (a column of another SQL type holds a placeholder in the row struct, so
//! this is the only error it causes); an `Option` field, and a `migrating_from` field, need
//! nullable stored-form columns; the search hash of an `Option` field is nullable.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::Ident;
use syn::spanned::Spanned;

use super::Names;
use crate::ast::Container;

pub(super) fn checks(c: &Container, names: &Names) -> TokenStream {
    let alias = &names.alias;
    let sql = |col: &Ident| quote!(::jarvis_crypt::__private::SqlTypeOf<#alias::#col>);
    let mut checks = Vec::new();
    // The SQL types are named by an alias whose every token has the check's span, so that
    // the error points at the user's tokens.
    let mut check = |span: Span, what: &str, types: TokenStream, function: Ident| {
        let name = Ident::new(&format!("__{what}"), span);
        checks.push(quote! { type #name = #types; });
        checks.push(quote_spanned!(span=> ::jarvis_crypt::__private::#function::<#name>();));
    };
    for f in &c.fields {
        let Some(e) = &f.encrypted else { continue };
        let stored = [&e.ciphertext, &e.iv, &e.tag, &e.data_key];
        let hash = e.search.as_ref().map(|s| &s.column);
        for col in stored.into_iter().chain(hash) {
            check(
                col.span(),
                &format!("{col}_sql_type"),
                sql(col),
                format_ident!("binary_column"),
            );
        }
        let columns = [&e.ciphertext, &e.iv, &e.tag, &e.data_key].map(sql);
        let columns = quote!((#(#columns,)*));
        if e.nullable {
            check(
                f.ty.span(),
                &format!("{}_columns", f.ident),
                columns.clone(),
                format_ident!("option_field_columns"),
            );
            if let Some(s) = &e.search {
                check(
                    s.span,
                    &format!("{}_hash", f.ident),
                    sql(&s.column),
                    format_ident!("option_field_hash"),
                );
            }
        }
        if let Some(plain) = &e.migrating_from {
            check(
                plain.span(),
                &format!("{}_migrating", f.ident),
                columns,
                format_ident!("migrating_field_columns"),
            );
        }
    }
    if checks.is_empty() {
        return TokenStream::new();
    }
    quote! {
        #[allow(non_camel_case_types)]
        const _: () = {
            #(#checks)*
        };
    }
}
