//! Checks of the model as a whole: what each attribute means given the field's type and the
//! other fields. Spans point at the user's tokens.

use std::collections::HashMap;

use proc_macro2::Span;
use syn::Ident;

use crate::ast::{Bind, Container, Kind};
use crate::ctxt::Ctxt;

pub(crate) fn check(cx: &mut Ctxt, c: &Container) {
    check_fields(cx, c);
    check_bind(cx, c);
    check_columns_unique(cx, c);
}

/// Each encrypted field's options fit its type.
fn check_fields(cx: &mut Ctxt, c: &Container) {
    for e in c.fields.iter().filter_map(|f| f.encrypted.as_ref()) {
        if let Some(s) = &e.search
            && e.kind != Kind::Text
        {
            cx.error(
                s.span,
                "`search` works on text fields only (`String` or `Option<String>`)",
            );
        }
        if let Some(m) = &e.migrating_from
            && e.kind == Kind::Json
        {
            cx.error(
                m.span(),
                "`migrating_from` works on `String` and `Vec<u8>` fields",
            );
        }
    }
}

/// `bind = field` names a plain field of the struct.
fn check_bind(cx: &mut Ctxt, c: &Container) {
    let Bind::Field(name) = &c.bind else { return };
    match c.fields.iter().find(|f| f.ident == *name) {
        None => cx.error(
            name.span(),
            format!("`bind = {name}`: the struct has no field `{name}`"),
        ),
        Some(f) if f.encrypted.is_some() => cx.error(
            name.span(),
            format!("`bind = {name}`: the row key cannot be an encrypted field"),
        ),
        Some(_) => {}
    }
}

/// Every column name is used once.
fn check_columns_unique(cx: &mut Ctxt, c: &Container) {
    let mut columns: HashMap<String, Span> = HashMap::new();
    let mut claim = |cx: &mut Ctxt, ident: &Ident| {
        let name = ident.to_string();
        if columns.insert(name.clone(), ident.span()).is_some() {
            cx.error(
                ident.span(),
                format!(
                    "column `{name}` is mapped twice; give one of the fields another column name"
                ),
            );
        }
    };
    for field in &c.fields {
        match &field.encrypted {
            None => claim(cx, &field.ident),
            Some(e) => {
                for col in [&e.ciphertext, &e.iv, &e.tag, &e.data_key] {
                    claim(cx, col);
                }
                if let Some(s) = &e.search {
                    claim(cx, &s.column);
                }
                if let Some(m) = &e.migrating_from {
                    claim(cx, m);
                }
            }
        }
    }
}
