//! Code generation from the checked model, one file per generated part: the row struct and
//! its column module (`row.rs`), the conversions of `Encrypted` (`convert.rs`), the search
//! helpers and hashes (`search.rs`), the table description of `EncryptedTable`
//! (`describe.rs`), the nullability checks against the diesel table (`checks.rs`), the
//! `redact_debug` model `Debug` (`debug.rs`).

mod checks;
mod convert;
mod debug;
mod describe;
mod row;
mod search;

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::Ident;

use crate::ast::{Container, EncryptedField, Kind};

/// Names every generated part uses.
pub(crate) struct Names {
    /// The generated row struct, `<Model>Row`.
    pub(crate) row: Ident,
    /// The generated load shape, the row without its search hashes (`EncryptedLoad::Load`).
    pub(crate) load: Ident,
    /// The module through which the generated code names the table and its columns.
    pub(crate) alias: Ident,
    /// The name bound into the associated data and the search keys.
    pub(crate) table_name: String,
}

impl Names {
    pub(crate) fn new(c: &Container) -> Names {
        let row = format_ident!("{}Row", c.ident);
        // The diesel derives and helpers name the table and its columns through this module,
        // which imports each column once: a column the table lacks is reported once, at the
        // user's spelling of it, not once per derive.
        let alias = format_ident!("__jarvis_{}_columns", row);
        Names {
            load: format_ident!("__{}Load", c.ident),
            row,
            alias,
            table_name: c.table_name(),
        }
    }
}

/// The codec of an encrypted field.
fn codec(e: &EncryptedField) -> TokenStream {
    let value_ty = &e.value_ty;
    match e.kind {
        Kind::Text => quote!(__jc::Text),
        Kind::Bytes => quote!(__jc::Bytes),
        Kind::Json => quote!(__jc::Json<#value_ty>),
    }
}

/// The Rust type of a stored-form column, from the column's SQL type in the diesel table:
/// `T` for `Binary`, `Option<T>` for `Nullable<Binary>`, a compile error (once, at the
/// user's spelling of the column) for any other SQL type.
fn stored_type(alias: &Ident, col: &Ident, ty: TokenStream) -> TokenStream {
    quote_spanned!(col.span()=> ::jarvis_crypt::__private::StoredAs<#alias::#col, #ty>)
}

/// The types of the four stored-form columns of a field.
fn stored_types(alias: &Ident, e: &EncryptedField) -> [TokenStream; 4] {
    [
        stored_type(alias, &e.ciphertext, quote!(::jarvis_crypt::Ciphertext)),
        stored_type(alias, &e.iv, quote!(::jarvis_crypt::Nonce)),
        stored_type(alias, &e.tag, quote!(::jarvis_crypt::AuthTag)),
        stored_type(alias, &e.data_key, quote!(::jarvis_crypt::WrappedKey)),
    ]
}

pub(crate) fn expand(c: &Container) -> TokenStream {
    let names = Names::new(c);
    let model = &c.ident;
    let table_name = &names.table_name;
    let row_struct = row::row_struct(c, &names);
    let row_debug = row::row_debug(&names);
    let encrypted = convert::encrypted_impl(c, &names);
    let described = describe::table_impl(c, &names);
    let helpers = search::helpers(c, &names);
    let checks = checks::checks(c, &names);
    let specs = search::spec_consts(c);
    let model_debug = debug::model_debug(c);

    quote! {
        #row_struct

        const _: () = {
            use ::jarvis_crypt::__private as __jc;
            const __TABLE: &str = #table_name;

            #(#specs)*

            #checks

            #row_debug

            #model_debug

            #encrypted

            #described

            #[automatically_derived]
            impl #model {
                #(#helpers)*
            }
        };
    }
}
