//! Search hashes: the spec of each searchable field, its hash on write and re-hash, its
//! entry in `SEARCH_COLUMNS`, and the typed `<field>_search` / `<field>_find` helpers.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::{Names, stored_type};
use crate::ast::{Container, EncryptedField, Field, Search};

/// The constant holding the field's `(SearchSpec, Option<CustomNormalizer>)`, defined once by
/// [`spec_consts`] (so that a `normalize_with` of the wrong type is one error, at its path)
/// and named wherever the spec is used.
pub(super) fn spec(f: &Field) -> TokenStream {
    let name = format_ident!("__search_spec_{}", f.ident);
    quote!(#name)
}

/// The spec constants of the searchable fields.
pub(super) fn spec_consts(c: &Container) -> Vec<TokenStream> {
    searchable(c)
        .map(|(f, _, s)| {
            let name = spec(f);
            let (trim, lowercase, nfc) = (s.trim, s.lowercase, s.nfc);
            let bits = match s.bits {
                Some(b) => quote!(::core::option::Option::Some(#b)),
                None => quote!(::core::option::Option::None),
            };
            let custom = match &s.normalize_with {
                Some(path) => {
                    let path_name = quote!(#path).to_string().replace(' ', "");
                    quote_spanned!(path.span()=>
                        ::core::option::Option::Some(::jarvis_crypt::CustomNormalizer::new(#path_name, #path))
                    )
                }
                None => quote!(::core::option::Option::None),
            };
            quote! {
                #[allow(non_upper_case_globals)]
                const #name: (::jarvis_crypt::SearchSpec, ::core::option::Option<::jarvis_crypt::CustomNormalizer>) = (
                    ::jarvis_crypt::SearchSpec {
                        normalize: ::jarvis_crypt::Normalize { trim: #trim, lowercase: #lowercase, nfc: #nfc },
                        bits: #bits,
                    },
                    #custom,
                );
            }
        })
        .collect()
}

/// `Some(&text)` of a searchable field of `owner` (`self` or a model).
fn as_text(f: &Field, e: &EncryptedField, owner: TokenStream) -> TokenStream {
    let ident = &f.ident;
    if e.nullable {
        quote!(#owner.#ident.as_deref())
    } else {
        quote!(::core::option::Option::Some(#owner.#ident.as_str()))
    }
}

/// The search hash (an `Option`) of the field of `owner`.
pub(super) fn hash_of(
    f: &Field,
    e: &EncryptedField,
    s: &Search,
    owner: TokenStream,
) -> TokenStream {
    let col_name = s.column.to_string();
    let spec = spec(f);
    let text = as_text(f, e, owner);
    quote!(__jc::search_hash(__enc, __TABLE, #col_name, #spec, #text)?)
}

fn searchable(c: &Container) -> impl Iterator<Item = (&Field, &EncryptedField, &Search)> {
    c.fields.iter().filter_map(|f| {
        let e = f.encrypted.as_ref()?;
        Some((f, e, e.search.as_ref()?))
    })
}

/// The entries of `Encrypted::SEARCH_COLUMNS`.
pub(super) fn search_columns(c: &Container) -> Vec<TokenStream> {
    searchable(c)
        .map(|(f, e, s)| {
            let name = f.ident.to_string();
            let ct_name = e.ciphertext.to_string();
            let col_name = s.column.to_string();
            let spec = spec(f);
            quote! {
                ::jarvis_crypt::SearchColumn {
                    table: __TABLE,
                    field: #name,
                    ciphertext: #ct_name,
                    hash: #col_name,
                    spec: #spec.0,
                }
            }
        })
        .collect()
}

/// The statements of `Encrypted::rehash_row`.
pub(super) fn rehash_steps(c: &Container, names: &Names) -> Vec<TokenStream> {
    searchable(c)
        .map(|(f, e, s)| {
            let name = f.ident.to_string();
            let col = &s.column;
            let hash_ty = stored_type(&names.alias, col, quote!(::jarvis_crypt::SearchHash));
            let hash = hash_of(f, e, s, quote!(self));
            quote! {
                __row.#col = <#hash_ty as __jc::HashColumn>::from_hash(
                    #hash,
                    #name,
                )?;
            }
        })
        .collect()
}

/// `<field>_search` and `<field>_find` of each searchable field.
pub(super) fn helpers(c: &Container, names: &Names) -> Vec<TokenStream> {
    let vis = &c.vis;
    let Names {
        row,
        alias,
        table_name,
        ..
    } = names;
    searchable(c)
        .map(|(f, e, s)| {
            let ident = &f.ident;
            let name = ident.to_string();
            let col = &s.column;
            let col_name = col.to_string();
            let spec = spec(f);
            let search_fn = format_ident!("{}_search", ident);
            let find_fn = format_ident!("{}_find", ident);
            let model_text = as_text(f, e, quote!(__model));
            let doc_search = format!(
                "A filter on `{table_name}.{col_name}` for rows whose `{name}` equals `value` after normalization. Where the hash is truncated it may match other rows too: use [`Self::{find_fn}`], which confirms."
            );
            let doc_find = format!(
                "The models whose `{name}` equals `value` after normalization: `load` runs the query with the filter of [`Self::{search_fn}`]; candidates are decrypted and confirmed, so no wrong row is returned."
            );
            quote! {
                #[doc = #doc_search]
                #vis fn #search_fn(
                    encryptor: &::jarvis_crypt::Encryptor,
                    value: &str,
                ) -> ::jarvis_crypt::Result<__jc::HashFilter<#alias::#col>> {
                    let hash = encryptor.search_hash(
                        __TABLE,
                        #col_name,
                        #spec.0,
                        &__jc::search_input(#spec.0, #spec.1, value),
                    )?;
                    ::core::result::Result::Ok(__jc::hash_filter(#alias::#col, hash))
                }

                #[doc = #doc_find]
                #vis async fn #find_fn<__F, __Fut, __E>(
                    encryptor: &::jarvis_crypt::Encryptor,
                    value: &str,
                    load: __F,
                ) -> ::core::result::Result<::std::vec::Vec<Self>, __E>
                where
                    __F: ::core::ops::FnOnce(__jc::HashFilter<#alias::#col>) -> __Fut,
                    __Fut: ::core::future::Future<Output = ::core::result::Result<::std::vec::Vec<#row>, __E>>,
                    __E: ::core::convert::From<::jarvis_crypt::Error>,
                {
                    let filter = Self::#search_fn(encryptor, value)?;
                    let rows = load(filter).await?;
                    let models = <Self as ::jarvis_crypt::Encrypted>::decrypt_rows(rows, encryptor).await?;
                    ::core::result::Result::Ok(__jc::confirm(models, #spec, value, |__model: &Self| #model_text))
                }
            }
        })
        .collect()
}
