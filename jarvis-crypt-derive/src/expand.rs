//! Code generation from the checked model.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::Ident;

use crate::ast::{Bind, Container, EncryptedField, Field, Kind, Search};

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

fn spec(s: &Search) -> TokenStream {
    let (trim, lowercase, nfc) = (s.trim, s.lowercase, s.nfc);
    let bits = match s.bits {
        Some(b) => quote!(::core::option::Option::Some(#b)),
        None => quote!(::core::option::Option::None),
    };
    quote! {
        ::jarvis_crypt::SearchSpec {
            normalize: ::jarvis_crypt::Normalize { trim: #trim, lowercase: #lowercase, nfc: #nfc },
            bits: #bits,
        }
    }
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

pub(crate) fn expand(c: &Container) -> TokenStream {
    let model = &c.ident;
    let vis = &c.vis;
    let row = format_ident!("{}Row", model);
    let table = &c.table;
    let table_name = c.table_name();
    // The diesel derives and helpers name the table and its columns through this module,
    // which imports each column once: a column the table lacks is reported once, at the
    // user's spelling of it, not once per derive.
    let alias = format_ident!("__jarvis_{}_columns", row);
    let table_in_alias = match c.table.segments.first() {
        Some(first) if first.ident == "super" && c.table.leading_colon.is_none() => {
            quote!(super::#table)
        }
        _ => quote!(#table),
    };

    let mut row_fields = Vec::new();
    let mut encrypt_steps = Vec::new();
    let mut row_inits = Vec::new();
    let mut destructure = Vec::new();
    let mut pending = Vec::new();
    let mut decrypt_steps = Vec::new();
    let mut batch_steps = Vec::new();
    let mut model_inits = Vec::new();
    let mut helpers = Vec::new();
    let mut search_columns = Vec::new();
    let mut rehash_steps = Vec::new();
    // The table description's fields (`EncryptedTable`).
    let mut described = Vec::new();
    // Every column, as the user spelled it, imported once into the alias module.
    let mut columns = Vec::new();

    for f in &c.fields {
        let ident = &f.ident;
        let fvis = &f.vis;
        let ty = &f.ty;
        let Some(e) = &f.encrypted else {
            columns.push(ident.clone());
            let doc = format!("`{ident}`, as stored.");
            row_fields.push(quote_spanned!(ident.span()=> #[doc = #doc] #fvis #ident: #ty));
            row_inits.push(quote!(#ident: ::core::clone::Clone::clone(&self.#ident)));
            destructure.push(quote!(#ident));
            pending.push(quote!(#ident));
            model_inits.push(quote!(#ident));
            continue;
        };
        let name = ident.to_string();
        let codec = codec(e);
        let (ct, iv, tag, dk) = (&e.ciphertext, &e.iv, &e.tag, &e.data_key);
        let ct_ty = stored_type(&alias, ct, quote!(::jarvis_crypt::Ciphertext));
        let iv_ty = stored_type(&alias, iv, quote!(::jarvis_crypt::Nonce));
        let tag_ty = stored_type(&alias, tag, quote!(::jarvis_crypt::AuthTag));
        let dk_ty = stored_type(&alias, dk, quote!(::jarvis_crypt::WrappedKey));
        let ct_name = ct.to_string();
        for (col, col_ty, what) in [
            (ct, &ct_ty, "AES-256-GCM ciphertext"),
            (iv, &iv_ty, "nonce"),
            (tag, &tag_ty, "authentication tag"),
            (dk, &dk_ty, "wrapped data key"),
        ] {
            columns.push(col.clone());
            let doc = format!("The {what} of `{ident}`.");
            row_fields.push(quote_spanned!(col.span()=> #[doc = #doc] #fvis #col: #col_ty));
        }
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

        let ticket = format_ident!("__ticket_{}", ident);
        batch_steps.push(quote! {
            let #ticket = __batch.push(
                __TABLE,
                #ct_name,
                &__key,
                __jc::Columns::into_stored((#ct, #iv, #tag, #dk), #name)?,
            );
        });
        pending.push(quote!(#ticket));

        let value = format_ident!("__value_{}", ident);
        decrypt_steps.push(quote! {
            let #value = __batch.take::<#codec>(#ticket)?;
        });

        if let Some(s) = &e.search {
            let col = &s.column;
            let col_name = col.to_string();
            let hash_ty = stored_type(&alias, col, quote!(::jarvis_crypt::SearchHash));
            let spec = spec(s);
            let text = as_text(f, e, quote!(self));
            columns.push(col.clone());
            let doc = format!("The search hash of `{ident}`.");
            row_fields.push(quote_spanned!(col.span()=> #[doc = #doc] #fvis #col: #hash_ty));
            encrypt_steps.push(quote! {
                let #col = <#hash_ty as __jc::HashColumn>::from_hash(
                    __jc::search_hash(__enc, __TABLE, #col_name, #spec, #text)?,
                    #name,
                )?;
            });
            row_inits.push(quote!(#col));
            destructure.push(quote!(#col: _));
            search_columns.push(quote! {
                ::jarvis_crypt::SearchColumn {
                    table: __TABLE,
                    field: #name,
                    ciphertext: #ct_name,
                    hash: #col_name,
                    spec: #spec,
                }
            });
            rehash_steps.push(quote! {
                __row.#col = <#hash_ty as __jc::HashColumn>::from_hash(
                    __jc::search_hash(__enc, __TABLE, #col_name, #spec, #text)?,
                    #name,
                )?;
            });

            let search_fn = format_ident!("{}_search", ident);
            let find_fn = format_ident!("{}_find", ident);
            let model_text = as_text(f, e, quote!(__model));
            let doc_search = format!(
                "A filter on `{table_name}.{col_name}` for rows whose `{name}` equals `value` after normalization. Where the hash is truncated it may match other rows too: use [`Self::{find_fn}`], which confirms."
            );
            let doc_find = format!(
                "The models whose `{name}` equals `value` after normalization: `load` runs the query with the filter of [`Self::{search_fn}`]; candidates are decrypted and confirmed, so no wrong row is returned."
            );
            helpers.push(quote! {
                #[doc = #doc_search]
                #vis fn #search_fn(
                    encryptor: &::jarvis_crypt::Encryptor,
                    value: &str,
                ) -> ::jarvis_crypt::Result<__jc::diesel::dsl::Eq<#alias::#col, ::jarvis_crypt::SearchHash>> {
                    use __jc::diesel::ExpressionMethods as _;
                    let hash = encryptor.search_hash(__TABLE, #col_name, #spec, value)?;
                    ::core::result::Result::Ok(#alias::#col.eq(hash))
                }

                #[doc = #doc_find]
                #vis async fn #find_fn<__F, __Fut, __E>(
                    encryptor: &::jarvis_crypt::Encryptor,
                    value: &str,
                    load: __F,
                ) -> ::core::result::Result<::std::vec::Vec<Self>, __E>
                where
                    __F: ::core::ops::FnOnce(__jc::diesel::dsl::Eq<#alias::#col, ::jarvis_crypt::SearchHash>) -> __Fut,
                    __Fut: ::core::future::Future<Output = ::core::result::Result<::std::vec::Vec<#row>, __E>>,
                    __E: ::core::convert::From<::jarvis_crypt::Error>,
                {
                    let filter = Self::#search_fn(encryptor, value)?;
                    let rows = load(filter).await?;
                    let models = <Self as ::jarvis_crypt::Encrypted>::decrypt_rows(rows, encryptor).await?;
                    ::core::result::Result::Ok(__jc::confirm(models, #spec, value, |__model: &Self| #model_text))
                }
            });
        }

        if let Some(plain) = &e.migrating_from {
            let value_ty = &e.value_ty;
            columns.push(plain.clone());
            let doc = format!("The plaintext `{ident}` of a row not yet encrypted.");
            row_fields.push(quote_spanned!(plain.span()=>
                #[doc = #doc] #fvis #plain: ::core::option::Option<#value_ty>
            ));
            // Writes store ciphertext and clear the plaintext column.
            row_inits.push(quote!(#plain: ::core::option::Option::None));
            destructure.push(quote!(#plain));
            pending.push(quote!(#plain));
            // Reads fall back to the plaintext column while the encrypted one is NULL.
            decrypt_steps.push(quote! {
                let #value = #value.or(#plain);
            });
        }

        let init = if e.nullable {
            quote!(#ident: #value)
        } else {
            quote!(#ident: __jc::required(#value, #name)?)
        };
        model_inits.push(init);

        let sql = |col: &Ident| quote!(<#alias::#col as __jc::diesel::Column>::NAME);
        let kind = match e.kind {
            Kind::Text => quote!(::jarvis_crypt::ValueKind::Text),
            Kind::Bytes => quote!(::jarvis_crypt::ValueKind::Bytes),
            Kind::Json => quote!(::jarvis_crypt::ValueKind::Json),
        };
        let nullable = e.nullable;
        let search = match &e.search {
            Some(s) => {
                let col = sql(&s.column);
                let col_name = s.column.to_string();
                let spec = spec(s);
                quote!(::core::option::Option::Some(::jarvis_crypt::SearchDescription {
                    column: #col,
                    bound_column: #col_name,
                    spec: #spec,
                }))
            }
            None => quote!(::core::option::Option::None),
        };
        let migrating = match &e.migrating_from {
            Some(plain) => {
                let plain = sql(plain);
                quote!(::core::option::Option::Some(#plain))
            }
            None => quote!(::core::option::Option::None),
        };
        let (ct_sql, iv_sql, tag_sql, dk_sql) = (sql(ct), sql(iv), sql(tag), sql(dk));
        described.push(quote! {
            __jc::describe_field(
                #name, #kind, #nullable,
                [#ct_sql, #iv_sql, #tag_sql, #dk_sql],
                #ct_name, #search, #migrating,
            )
        });
    }

    // `rotated_at`, `created_at`, `rotation_count`: imported into the alias module (once) so
    // a column the table lacks is reported at the user's spelling.
    let clock = [&c.rotated_at, &c.created_at, &c.rotation_count];
    for at in clock.into_iter().flatten() {
        if !columns.contains(at) {
            columns.push(at.clone());
        }
    }
    let column_imports = columns
        .iter()
        .map(|col| quote_spanned!(col.span()=> pub(super) use #table_in_alias::{#col};));
    let key_of = |owner: TokenStream| match &c.bind {
        Bind::Field(id) => quote!(__jc::BindKey::row_key(&#owner #id)),
        Bind::None => quote!(__jc::OwnedRowKey::None),
    };
    let row_key = match &c.bind {
        Bind::Field(id) => {
            let kind = match c.fields.iter().find(|f| f.ident == *id) {
                Some(f) => {
                    let ty = &f.ty;
                    quote!(<#ty as __jc::BindKey>::KIND)
                }
                None => quote!(::jarvis_crypt::RowKeyKind::Int),
            };
            quote!(::core::option::Option::Some((
                <#alias::#id as __jc::diesel::Column>::NAME,
                #kind,
            )))
        }
        Bind::None => quote!(::core::option::Option::None),
    };
    let clock = clock.map(|column| match column {
        Some(at) => {
            quote!(::core::option::Option::Some(<#alias::#at as __jc::diesel::Column>::NAME))
        }
        None => quote!(::core::option::Option::None),
    });
    let model_name = model.to_string();
    let default_table = c
        .table
        .segments
        .last()
        .map(|s| s.ident.to_string())
        .unwrap_or_default();
    let key_of_self = key_of(quote!(self.));
    let key_of_row = key_of(quote!());
    let doc_row = format!(
        "The stored row of [`{model}`] in `{table_name}`: generated by `#[derive(Encrypted)]`; every encrypted field as its ciphertext, IV, tag and data-key columns (and search hash)."
    );

    quote! {
        #[doc = #doc_row]
        #[derive(
            ::core::clone::Clone,
            ::jarvis_crypt::__private::diesel::Queryable,
            ::jarvis_crypt::__private::diesel::Selectable,
            ::jarvis_crypt::__private::diesel::Insertable,
            ::jarvis_crypt::__private::diesel::AsChangeset,
        )]
        #[diesel(table_name = #alias)]
        #[diesel(treat_none_as_null = true)]
        #vis struct #row {
            #(#row_fields,)*
        }

        #[doc(hidden)]
        #[allow(non_snake_case, unused_imports)]
        mod #alias {
            use super::*;
            pub(super) use #table_in_alias::table;
            #(#column_imports)*
        }

        const _: () = {
            use ::jarvis_crypt::__private as __jc;
            const __TABLE: &str = #table_name;

            #[automatically_derived]
            impl ::core::fmt::Debug for #row {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.debug_struct(::core::stringify!(#row)).finish_non_exhaustive()
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
                    let mut __batch = __jc::Batch::new();
                    let mut __pending = ::std::vec::Vec::with_capacity(__rows.len());
                    for __row in __rows {
                        let #row { #(#destructure,)* } = __row;
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
            }

            #[automatically_derived]
            impl ::jarvis_crypt::EncryptedTable for #model {
                fn table() -> &'static ::jarvis_crypt::TableDescription {
                    static DESCRIPTION: ::std::sync::OnceLock<::jarvis_crypt::TableDescription> =
                        ::std::sync::OnceLock::new();
                    DESCRIPTION.get_or_init(|| {
                        __jc::describe_table::<#alias::table>(
                            #model_name,
                            #default_table,
                            __TABLE,
                            #row_key,
                            [#(#clock),*],
                            ::std::vec![#(#described,)*],
                        )
                    })
                }
            }

            #[automatically_derived]
            impl #model {
                #(#helpers)*
            }
        };
    }
}
