//! The typed model of a `#[derive(Encrypted)]` input: the struct and its fields with their
//! attributes parsed (`attr.rs`), default column names filled in, each encrypted field's
//! codec chosen from its type. Spans stay those of the user's tokens.

use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, GenericArgument, Ident, LitStr, Path, PathArguments, Type};

use crate::attr;
use crate::ctxt::Ctxt;

pub(crate) enum Bind {
    Field(Ident),
    None,
}

pub(crate) struct Container {
    pub(crate) ident: Ident,
    pub(crate) vis: syn::Visibility,
    pub(crate) table: Path,
    /// `aad_table = "..."`: the table name bound into the associated data and the search
    /// keys, instead of the last segment of `table`.
    pub(crate) aad_table: Option<LitStr>,
    /// `rotated_at = column`: the timestamp column of the time the row's values were last
    /// encrypted, which `rotate --older-than` reads and the lifecycle jobs write.
    pub(crate) rotated_at: Option<Ident>,
    /// `created_at = column`: the row's creation time, the age `--older-than` reads of a row
    /// whose `rotated_at` is NULL.
    pub(crate) created_at: Option<Ident>,
    /// `rotation_count = column`: an integer column the jobs increment when they give the
    /// row's values new data keys.
    pub(crate) rotation_count: Option<Ident>,
    pub(crate) bind: Bind,
    /// `redact_debug`: generate a `Debug` that prints encrypted fields as `<redacted>`.
    pub(crate) redact_debug: Option<proc_macro2::Span>,
    pub(crate) fields: Vec<Field>,
}

pub(crate) struct Field {
    pub(crate) ident: Ident,
    pub(crate) vis: syn::Visibility,
    pub(crate) ty: Type,
    pub(crate) encrypted: Option<EncryptedField>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    Bytes,
    Json,
}

pub(crate) struct EncryptedField {
    pub(crate) kind: Kind,
    /// The non-null value type (`String`, `Vec<u8>`, the JSON type).
    pub(crate) value_ty: Type,
    /// The field is `Option<_>`.
    pub(crate) nullable: bool,
    pub(crate) ciphertext: Ident,
    pub(crate) iv: Ident,
    pub(crate) tag: Ident,
    pub(crate) data_key: Ident,
    pub(crate) search: Option<Search>,
    pub(crate) migrating_from: Option<Ident>,
}

pub(crate) struct Search {
    /// The `search` key, where errors about the search as a whole point.
    pub(crate) span: proc_macro2::Span,
    pub(crate) column: Ident,
    pub(crate) trim: bool,
    pub(crate) lowercase: bool,
    pub(crate) nfc: bool,
    pub(crate) bits: Option<u16>,
    /// `normalize_with = path`: a `fn(&str) -> String` applied after the built-in ones.
    pub(crate) normalize_with: Option<Path>,
}

impl Container {
    /// The model of `input`; `None` when it is not a struct with named fields, or has no
    /// `table` (errors recorded in `cx`).
    pub(crate) fn from_ast(cx: &mut Ctxt, input: &DeriveInput) -> Option<Container> {
        let fields = match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => &named.named,
                _ => {
                    cx.error(
                        input.ident.span(),
                        "`#[derive(Encrypted)]` needs a struct with named fields, not a tuple or unit struct",
                    );
                    return None;
                }
            },
            Data::Enum(data) => {
                cx.error(
                    data.enum_token.span(),
                    "`#[derive(Encrypted)]` works on structs with named fields, not on enums",
                );
                return None;
            }
            Data::Union(data) => {
                cx.error(
                    data.union_token.span(),
                    "`#[derive(Encrypted)]` works on structs with named fields, not on unions",
                );
                return None;
            }
        };
        if !input.generics.params.is_empty() {
            cx.error(
                input.generics.span(),
                "`#[derive(Encrypted)]` does not support generic structs: the row struct maps one diesel table",
            );
        }

        let attrs = attr::container(cx, &input.attrs);
        let Some(table) = attrs.table else {
            cx.error(
                input.ident.span(),
                "missing `table`: write `#[encrypted(table = crate::schema::my_table, bind = id)]` on the struct",
            );
            return None;
        };
        let bind = match attrs.bind {
            Some(bind) => bind,
            None => {
                cx.error(
                    input.ident.span(),
                    "missing `bind`: name the row-key field bound into the associated data (`bind = id`), or write `bind = none` for the weaker binding",
                );
                Bind::None
            }
        };
        let fields = fields
            .iter()
            .filter_map(|f| Field::from_ast(cx, f))
            .collect();
        Some(Container {
            ident: input.ident.clone(),
            vis: input.vis.clone(),
            table,
            aad_table: attrs.aad_table,
            rotated_at: attrs.rotated_at,
            created_at: attrs.created_at,
            rotation_count: attrs.rotation_count,
            bind,
            redact_debug: attrs.redact_debug,
            fields,
        })
    }

    /// The table's name as bound into the associated data and the search keys: `aad_table`
    /// if given, else the last segment of its path.
    pub(crate) fn table_name(&self) -> String {
        if let Some(name) = &self.aad_table {
            return name.value();
        }
        self.default_table_name()
    }

    /// The last segment of the table's path (the `table!` module's name).
    pub(crate) fn default_table_name(&self) -> String {
        self.table
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default()
    }
}

/// `Option<T>` → `Some(T)`.
fn option_inner(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    match &last.arguments {
        PathArguments::AngleBracketed(args) if args.args.len() == 1 => match args.args.first() {
            Some(GenericArgument::Type(inner)) => Some(inner),
            _ => None,
        },
        _ => None,
    }
}

fn is_string(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.segments.last().is_some_and(|s| s.ident == "String" && s.arguments.is_empty()))
}

fn is_bytes(ty: &Type) -> bool {
    let Type::Path(p) = ty else { return false };
    let Some(last) = p.path.segments.last() else {
        return false;
    };
    if last.ident != "Vec" {
        return false;
    }
    matches!(&last.arguments, PathArguments::AngleBracketed(args)
        if matches!(args.args.first(), Some(GenericArgument::Type(Type::Path(u))) if u.path.is_ident("u8")))
}

impl Field {
    fn from_ast(cx: &mut Ctxt, field: &syn::Field) -> Option<Field> {
        let ident = field.ident.clone()?;
        let Some(a) = attr::field(cx, &field.attrs) else {
            return Some(Field {
                ident,
                vis: field.vis.clone(),
                ty: field.ty.clone(),
                encrypted: None,
            });
        };

        // The field's type decides the codec.
        let (nullable, value_ty) = match option_inner(&field.ty) {
            Some(inner) => (true, inner.clone()),
            None => (false, field.ty.clone()),
        };
        let kind = if a.json.is_some() {
            Kind::Json
        } else if is_string(&value_ty) {
            Kind::Text
        } else if is_bytes(&value_ty) {
            Kind::Bytes
        } else {
            cx.error(
                field.ty.span(),
                "unsupported type for an encrypted field: expected `String`, `Vec<u8>`, an `Option` of these, or any serde type with `#[encrypted(json)]`",
            );
            Kind::Bytes
        };

        let search = a.search.map(|s| Search {
            span: s.span,
            column: s.column.unwrap_or_else(|| format_ident(&ident, "_hash")),
            trim: s.trim,
            lowercase: s.lowercase,
            nfc: s.nfc,
            bits: s.bits,
            normalize_with: s.normalize_with,
        });

        Some(Field {
            encrypted: Some(EncryptedField {
                kind,
                value_ty,
                nullable,
                ciphertext: a.ciphertext.unwrap_or_else(|| {
                    syn::Ident::new(&format!("encrypted_{ident}"), ident.span())
                }),
                iv: a.iv.unwrap_or_else(|| format_ident(&ident, "_iv")),
                tag: a.tag.unwrap_or_else(|| format_ident(&ident, "_auth_tag")),
                data_key: a
                    .data_key
                    .unwrap_or_else(|| format_ident(&ident, "_data_key")),
                search,
                migrating_from: a.migrating_from,
            }),
            ident,
            vis: field.vis.clone(),
            ty: field.ty.clone(),
        })
    }
}

fn format_ident(base: &Ident, suffix: &str) -> Ident {
    Ident::new(&format!("{base}{suffix}"), base.span())
}
