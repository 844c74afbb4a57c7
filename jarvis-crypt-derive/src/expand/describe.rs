//! `impl EncryptedTable`: the table description the lifecycle tools read, with SQL names
//! taken from diesel's `Column::NAME`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::Ident;

use super::{Names, search};
use crate::ast::{Bind, Container, Kind};

pub(super) fn table_impl(c: &Container, names: &Names) -> TokenStream {
    let model = &c.ident;
    let alias = &names.alias;
    let sql = |col: &Ident| quote!(<#alias::#col as __jc::diesel::Column>::NAME);

    let mut described = Vec::new();
    for f in &c.fields {
        let Some(e) = &f.encrypted else { continue };
        let name = f.ident.to_string();
        let ct_name = e.ciphertext.to_string();
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
                let spec = search::spec(f);
                quote!(::core::option::Option::Some(::jarvis_crypt::SearchDescription {
                    column: #col,
                    bound_column: #col_name,
                    spec: #spec.0,
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
        let custom = match &e.search {
            Some(_) => {
                let spec = search::spec(f);
                quote!(#spec.1)
            }
            None => quote!(::core::option::Option::None),
        };
        let (ct_sql, iv_sql, tag_sql, dk_sql) = (
            sql(&e.ciphertext),
            sql(&e.iv),
            sql(&e.tag),
            sql(&e.data_key),
        );
        described.push(quote! {
            __jc::describe_field(
                #name, #kind, #nullable,
                [#ct_sql, #iv_sql, #tag_sql, #dk_sql],
                #ct_name, #search, #migrating, #custom,
            )
        });
    }

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
    let clock = [&c.rotated_at, &c.created_at, &c.rotation_count].map(|column| match column {
        Some(at) => {
            quote!(::core::option::Option::Some(<#alias::#at as __jc::diesel::Column>::NAME))
        }
        None => quote!(::core::option::Option::None),
    });
    let model_name = model.to_string();
    let default_table = c.default_table_name();

    quote! {
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
    }
}
