//! `impl Encrypted`: the model to its row (`encrypt_row`) and rows back to models
//! (`decrypt_rows`), with the search columns and re-hash from `search.rs`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use super::{Names, codec, search, stored_type, stored_types};
use crate::ast::{Bind, Container};

pub(super) fn encrypted_impl(c: &Container, names: &Names) -> TokenStream {
    let model = &c.ident;
    let Names {
        row, load, alias, ..
    } = names;

    let mut encrypt_steps = Vec::new();
    let mut row_inits = Vec::new();
    let mut destructure = Vec::new();
    // The load shape has no search-hash fields.
    let mut load_destructure = Vec::new();
    let mut pending = Vec::new();
    let mut decrypt_steps = Vec::new();
    let mut batch_steps = Vec::new();
    let mut model_inits = Vec::new();
    // The same steps for `decrypt_rows_each`, where a failure ends its row only: the staging
    // of a row breaks out of `'row` with the failing value's location, a decryption with the
    // row's `RowError`.
    let mut batch_steps_each = Vec::new();
    let mut decrypt_steps_each = Vec::new();
    let mut model_inits_each = Vec::new();

    for f in &c.fields {
        let ident = &f.ident;
        let Some(e) = &f.encrypted else {
            row_inits.push(quote!(#ident: ::core::clone::Clone::clone(&self.#ident)));
            destructure.push(quote!(#ident));
            load_destructure.push(quote!(#ident));
            pending.push(quote!(#ident));
            model_inits.push(quote!(#ident));
            model_inits_each.push(quote!(#ident));
            continue;
        };
        let name = ident.to_string();
        let codec = codec(e);
        let (ct, iv, tag, dk) = (&e.ciphertext, &e.iv, &e.tag, &e.data_key);
        let [ct_ty, iv_ty, tag_ty, dk_ty] = stored_types(alias, e);
        let ct_name = ct.to_string();
        let value_ref = if e.nullable {
            quote!(self.#ident.as_ref())
        } else {
            quote!(::core::option::Option::Some(&self.#ident))
        };
        let stored = format_ident!("__stored_{}", ident);
        encrypt_steps.push(quote! {
            let #stored = __jc::seal::<#codec>(__enc, __TABLE, #ct_name, &__key, #value_ref).await?;
            let (#ct, #iv, #tag, #dk) =
                <(#ct_ty, #iv_ty, #tag_ty, #dk_ty) as __jc::Columns>::from_stored(#stored, #name)?;
        });
        row_inits.push(quote!(#ct, #iv, #tag, #dk));
        destructure.push(quote!(#ct, #iv, #tag, #dk));
        load_destructure.push(quote!(#ct, #iv, #tag, #dk));

        let ticket = format_ident!("__ticket_{}", ident);
        batch_steps.push(quote! {
            let #ticket = __batch.push(
                __TABLE,
                #ct_name,
                &__key,
                __jc::Columns::into_stored((#ct, #iv, #tag, #dk), #name)?,
            );
        });
        batch_steps_each.push(quote! {
            let #ticket = __batch.push(
                __TABLE,
                #ct_name,
                &__key,
                match __jc::Columns::into_stored((#ct, #iv, #tag, #dk), #name) {
                    ::core::result::Result::Ok(__stored) => __stored,
                    ::core::result::Result::Err(__error) => {
                        break 'row __jc::staging_failed(__TABLE, #ct_name, &__key, __error)
                    }
                },
            );
        });
        pending.push(quote!(#ticket));

        let value = format_ident!("__value_{}", ident);
        decrypt_steps.push(quote! {
            let #value = __batch.take::<#codec>(#ticket)?;
        });
        let row_failed = quote!(__jc::row_failed(__index, __TABLE, #ct_name, &__key, __error));
        decrypt_steps_each.push(quote! {
            let #value = match __batch.take::<#codec>(#ticket) {
                ::core::result::Result::Ok(__value) => __value,
                ::core::result::Result::Err(__error) => {
                    break 'row #row_failed
                }
            };
        });

        if let Some(s) = &e.search {
            let col = &s.column;
            let hash_ty = stored_type(alias, col, quote!(::jarvis_crypt::SearchHash));
            let hash = search::hash_of(f, e, s, quote!(self));
            encrypt_steps.push(quote! {
                let #col = <#hash_ty as __jc::HashColumn>::from_hash(
                    #hash,
                    #name,
                )?;
            });
            row_inits.push(quote!(#col));
            destructure.push(quote!(#col: _));
        }

        if let Some(plain) = &e.migrating_from {
            // Writes store ciphertext and clear the plaintext column.
            row_inits.push(quote!(#plain: ::core::option::Option::None));
            destructure.push(quote!(#plain));
            load_destructure.push(quote!(#plain));
            pending.push(quote!(#plain));
            // Reads fall back to the plaintext column while the encrypted one is NULL.
            let fallback = quote! {
                let #value = #value.or(#plain);
            };
            decrypt_steps.push(fallback.clone());
            decrypt_steps_each.push(fallback);
        }

        if e.nullable {
            model_inits.push(quote!(#ident: #value));
            model_inits_each.push(quote!(#ident: #value));
        } else {
            model_inits.push(quote!(#ident: __jc::required(#value, #name)?));
            model_inits_each.push(quote! {
                #ident: match __jc::required(#value, #name) {
                    ::core::result::Result::Ok(__value) => __value,
                    ::core::result::Result::Err(__error) => {
                        break 'row #row_failed
                    }
                }
            });
        }
    }

    let key_of = |owner: TokenStream| match &c.bind {
        Bind::Field(id) => quote!(__jc::BindKey::row_key(&#owner #id)),
        Bind::None => quote!(__jc::OwnedRowKey::None),
    };
    let key_of_self = key_of(quote!(self.));
    let key_of_row = key_of(quote!());
    // One batch over `__rows` of `shape` (the row, or the load shape without hashes): every
    // value staged, one run, then the models; all or nothing.
    let bulk_decrypt = |shape: &syn::Ident, fields: &[TokenStream]| {
        quote! {
            let mut __batch = __jc::Batch::new();
            let mut __pending = ::std::vec::Vec::with_capacity(__rows.len());
            for __row in __rows {
                let #shape { #(#fields,)* } = __row;
                let __key = #key_of_row;
                #(#batch_steps)*
                __pending.push((#(#pending,)*));
            }
            __batch.run(__enc).await;
            let mut __models = ::std::vec::Vec::with_capacity(__pending.len());
            for (#(#pending,)*) in __pending {
                #(#decrypt_steps)*
                __models.push(Self { #(#model_inits,)* });
            }
            ::core::result::Result::Ok(__models)
        }
    };
    let decrypt_rows_body = bulk_decrypt(row, &destructure);
    let decrypt_loaded_body = bulk_decrypt(load, &load_destructure);
    let search_columns = search::search_columns(c);
    let rehash_steps = search::rehash_steps(c, names);

    quote! {
        #[automatically_derived]
        #[__jc::async_trait]
        impl ::jarvis_crypt::EncryptedLoad for #model {
            type Load = #load;

            async fn decrypt_loaded(
                __rows: ::std::vec::Vec<#load>,
                __enc: &::jarvis_crypt::Encryptor,
            ) -> ::jarvis_crypt::Result<::std::vec::Vec<Self>> {
                #decrypt_loaded_body
            }
        }

        #[automatically_derived]
        #[__jc::async_trait]
        impl ::jarvis_crypt::Encrypted for #model {
            type Row = #row;

            const SEARCH_COLUMNS: &'static [::jarvis_crypt::SearchColumn] = &[
                #(#search_columns,)*
            ];

            fn rehash_row(
                &self,
                __row: &mut #row,
                __enc: &::jarvis_crypt::Encryptor,
            ) -> ::jarvis_crypt::Result<()> {
                let _ = (&__row, __enc);
                #(#rehash_steps)*
                ::core::result::Result::Ok(())
            }

            async fn encrypt_row(
                &self,
                __enc: &::jarvis_crypt::Encryptor,
            ) -> ::jarvis_crypt::Result<#row> {
                let __key = #key_of_self;
                #(#encrypt_steps)*
                ::core::result::Result::Ok(#row { #(#row_inits,)* })
            }

            async fn decrypt_rows(
                __rows: ::std::vec::Vec<#row>,
                __enc: &::jarvis_crypt::Encryptor,
            ) -> ::jarvis_crypt::Result<::std::vec::Vec<Self>> {
                #decrypt_rows_body
            }

            async fn decrypt_rows_each(
                __rows: ::std::vec::Vec<#row>,
                __enc: &::jarvis_crypt::Encryptor,
            ) -> ::std::vec::Vec<::core::result::Result<Self, ::jarvis_crypt::RowError>> {
                let mut __batch = __jc::Batch::new();
                let mut __pending = ::std::vec::Vec::with_capacity(__rows.len());
                for __row in __rows {
                    let #row { #(#destructure,)* } = __row;
                    let __key = #key_of_row;
                    let __staged = 'row: {
                        #(#batch_steps_each)*
                        ::core::result::Result::Ok((#(#pending,)*))
                    };
                    __pending.push((__key, __staged));
                }
                __batch.run(__enc).await;
                let mut __models = ::std::vec::Vec::with_capacity(__pending.len());
                for (__index, (__key, __staged)) in __pending.into_iter().enumerate() {
                    __models.push(match __staged {
                        ::core::result::Result::Err((__location, __error)) => {
                            ::core::result::Result::Err(::jarvis_crypt::RowError::new(
                                __index,
                                ::core::option::Option::Some(__location),
                                __error,
                            ))
                        }
                        ::core::result::Result::Ok((#(#pending,)*)) => 'row: {
                            #(#decrypt_steps_each)*
                            ::core::result::Result::Ok(Self { #(#model_inits_each,)* })
                        }
                    });
                }
                __models
            }
        }
    }
}
