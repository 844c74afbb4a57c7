//! The typed model of a `#[derive(Encrypted)]` input: parsed and checked, every error
//! collected and spanned at the user's tokens.

use std::collections::HashMap;

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{
    Data, DeriveInput, Fields, GenericArgument, Ident, LitInt, LitStr, Path, PathArguments, Type,
};

/// The attribute's name.
pub(crate) const ENCRYPTED: &str = "encrypted";
const TABLE: &str = "table";
const BIND: &str = "bind";
const AAD_TABLE: &str = "aad_table";
const ROTATED_AT: &str = "rotated_at";
const CREATED_AT: &str = "created_at";
const ROTATION_COUNT: &str = "rotation_count";
/// The container keys, as listed in errors.
const CONTAINER_KEYS: &str =
    "`table`, `bind`, `aad_table`, `rotated_at`, `created_at`, `rotation_count`";
const CIPHERTEXT: &str = "ciphertext";
const IV: &str = "iv";
const TAG: &str = "tag";
const DATA_KEY: &str = "data_key";
const SEARCH: &str = "search";
const JSON: &str = "json";
const MIGRATING_FROM: &str = "migrating_from";
const COLUMN: &str = "column";
const NORMALIZE: &str = "normalize";
const BITS: &str = "bits";

/// Collects errors so that one compile reports them all.
#[derive(Default)]
pub(crate) struct Ctxt {
    errors: Option<syn::Error>,
}

impl Ctxt {
    pub(crate) fn error(&mut self, span: Span, message: impl std::fmt::Display) {
        let error = syn::Error::new(span, message);
        match &mut self.errors {
            Some(all) => all.combine(error),
            None => self.errors = Some(error),
        }
    }

    pub(crate) fn syn(&mut self, error: syn::Error) {
        match &mut self.errors {
            Some(all) => all.combine(error),
            None => self.errors = Some(error),
        }
    }

    pub(crate) fn finish(self) -> Result<(), syn::Error> {
        self.errors.map_or(Ok(()), Err)
    }
}

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
    pub(crate) column: Ident,
    pub(crate) trim: bool,
    pub(crate) lowercase: bool,
    pub(crate) nfc: bool,
    pub(crate) bits: Option<u16>,
}

fn is_attr(attr: &syn::Attribute) -> bool {
    attr.path().is_ident(ENCRYPTED)
}

/// Records a key as seen; a second occurrence is an error.
fn once(cx: &mut Ctxt, seen: &mut Vec<String>, key: &Ident) -> bool {
    let name = key.to_string();
    if seen.contains(&name) {
        cx.error(
            key.span(),
            format!("duplicate key `{name}` in `#[encrypted(...)]`"),
        );
        return false;
    }
    seen.push(name);
    true
}

impl Container {
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

        let mut table = None;
        let mut aad_table = None;
        let mut rotated_at = None;
        let mut created_at = None;
        let mut rotation_count = None;
        let mut bind = None;
        let mut seen = Vec::new();
        for attr in input.attrs.iter().filter(|a| is_attr(a)) {
            let parsed = attr.parse_nested_meta(|meta| {
                let Some(key) = meta.path.get_ident().cloned() else {
                    return Err(meta.error(format!("expected one of {CONTAINER_KEYS}")));
                };
                if key == TABLE {
                    let path: Path = meta.value()?.parse()?;
                    if once(cx, &mut seen, &key) {
                        table = Some(path);
                    }
                } else if key == AAD_TABLE {
                    let name: LitStr = meta.value()?.parse()?;
                    if name.value().is_empty() {
                        cx.error(name.span(), "`aad_table` must not be empty");
                    } else if once(cx, &mut seen, &key) {
                        aad_table = Some(name);
                    }
                } else if key == ROTATED_AT || key == CREATED_AT || key == ROTATION_COUNT {
                    let ident: Ident = meta.value()?.parse()?;
                    if once(cx, &mut seen, &key) {
                        let slot = if key == ROTATED_AT {
                            &mut rotated_at
                        } else if key == CREATED_AT {
                            &mut created_at
                        } else {
                            &mut rotation_count
                        };
                        *slot = Some(ident);
                    }
                } else if key == BIND {
                    let ident: Ident = meta.value()?.parse()?;
                    if once(cx, &mut seen, &key) {
                        bind = Some(if ident == "none" {
                            Bind::None
                        } else {
                            Bind::Field(ident)
                        });
                    }
                } else {
                    return Err(meta.error(format!(
                        "unknown container key `{key}`, expected one of {CONTAINER_KEYS}"
                    )));
                }
                Ok(())
            });
            if let Err(e) = parsed {
                cx.syn(e);
            }
        }
        let Some(table) = table else {
            cx.error(
                input.ident.span(),
                "missing `table`: write `#[encrypted(table = crate::schema::my_table, bind = id)]` on the struct",
            );
            return None;
        };
        let bind = match bind {
            Some(bind) => bind,
            None => {
                cx.error(
                    input.ident.span(),
                    "missing `bind`: name the row-key field bound into the associated data (`bind = id`), or write `bind = none` for the weaker binding",
                );
                Bind::None
            }
        };

        let fields: Vec<Field> = fields
            .iter()
            .filter_map(|f| Field::from_ast(cx, f))
            .collect();

        if let Bind::Field(name) = &bind {
            match fields.iter().find(|f| f.ident == *name) {
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

        // Every column name is used once.
        let mut columns: HashMap<String, Span> = HashMap::new();
        let mut claim = |cx: &mut Ctxt, ident: &Ident| {
            let name = ident.to_string();
            if columns.insert(name.clone(), ident.span()).is_some() {
                cx.error(
                    ident.span(),
                    format!("column `{name}` is mapped twice; give one of the fields another column name"),
                );
            }
        };
        for field in &fields {
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

        Some(Container {
            ident: input.ident.clone(),
            vis: input.vis.clone(),
            table,
            aad_table,
            rotated_at,
            created_at,
            rotation_count,
            bind,
            fields,
        })
    }

    /// The table's name as bound into the associated data and the search keys: `aad_table`
    /// if given, else the last segment of its path.
    pub(crate) fn table_name(&self) -> String {
        if let Some(name) = &self.aad_table {
            return name.value();
        }
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

/// `search(...)` as written: the key's span, `column`, `normalize`, `bits`.
type SearchAttr = (Span, Option<Ident>, Option<LitStr>, Option<LitInt>);

struct FieldAttrs {
    ciphertext: Option<Ident>,
    iv: Option<Ident>,
    tag: Option<Ident>,
    data_key: Option<Ident>,
    search: Option<SearchAttr>,
    json: Option<Span>,
    migrating_from: Option<Ident>,
}

impl Field {
    fn from_ast(cx: &mut Ctxt, field: &syn::Field) -> Option<Field> {
        let ident = field.ident.clone()?;
        let attrs: Vec<_> = field.attrs.iter().filter(|a| is_attr(a)).collect();
        if attrs.is_empty() {
            return Some(Field {
                ident,
                vis: field.vis.clone(),
                ty: field.ty.clone(),
                encrypted: None,
            });
        }
        let mut a = FieldAttrs {
            ciphertext: None,
            iv: None,
            tag: None,
            data_key: None,
            search: None,
            json: None,
            migrating_from: None,
        };
        let mut seen = Vec::new();
        for attr in attrs {
            if matches!(attr.meta, syn::Meta::Path(_)) {
                continue; // a bare `#[encrypted]`
            }
            let parsed = attr.parse_nested_meta(|meta| {
                let Some(key) = meta.path.get_ident().cloned() else {
                    return Err(meta.error("expected a key of `#[encrypted(...)]`"));
                };
                let fresh = once(cx, &mut seen, &key);
                let ident_value = |meta: &syn::meta::ParseNestedMeta| -> syn::Result<Ident> {
                    meta.value()?.parse()
                };
                if key == CIPHERTEXT {
                    let v = ident_value(&meta)?;
                    if fresh { a.ciphertext = Some(v) }
                } else if key == IV {
                    let v = ident_value(&meta)?;
                    if fresh { a.iv = Some(v) }
                } else if key == TAG {
                    let v = ident_value(&meta)?;
                    if fresh { a.tag = Some(v) }
                } else if key == DATA_KEY {
                    let v = ident_value(&meta)?;
                    if fresh { a.data_key = Some(v) }
                } else if key == MIGRATING_FROM {
                    let v = ident_value(&meta)?;
                    if fresh { a.migrating_from = Some(v) }
                } else if key == JSON {
                    if fresh { a.json = Some(key.span()) }
                } else if key == SEARCH {
                    let (mut column, mut normalize, mut bits) = (None, None, None);
                    let mut inner_seen = Vec::new();
                    if meta.input.peek(syn::token::Paren) {
                        meta.parse_nested_meta(|inner| {
                            let Some(k) = inner.path.get_ident().cloned() else {
                                return Err(inner.error("expected one of `column`, `normalize`, `bits`"));
                            };
                            let fresh = once(cx, &mut inner_seen, &k);
                            if k == COLUMN {
                                let v: Ident = inner.value()?.parse()?;
                                if fresh { column = Some(v) }
                            } else if k == NORMALIZE {
                                let v: LitStr = inner.value()?.parse()?;
                                if fresh { normalize = Some(v) }
                            } else if k == BITS {
                                let v: LitInt = inner.value()?.parse()?;
                                if fresh { bits = Some(v) }
                            } else {
                                return Err(inner.error(format!(
                                    "unknown key `{k}` in `search(...)`, expected one of `column`, `normalize`, `bits`"
                                )));
                            }
                            Ok(())
                        })?;
                    }
                    if fresh { a.search = Some((key.span(), column, normalize, bits)) }
                } else {
                    return Err(meta.error(format!(
                        "unknown field key `{key}`, expected one of `ciphertext`, `iv`, `tag`, `data_key`, `search`, `json`, `migrating_from`"
                    )));
                }
                Ok(())
            });
            if let Err(e) = parsed {
                cx.syn(e);
            }
        }

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

        let search = a.search.and_then(|(span, column, normalize, bits)| {
            if kind != Kind::Text {
                cx.error(span, "`search` works on text fields only (`String` or `Option<String>`)");
                return None;
            }
            let (mut trim, mut lowercase, mut nfc) = (false, false, false);
            if let Some(list) = &normalize {
                for name in list.value().split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    match name {
                        "email" => {
                            trim = true;
                            lowercase = true;
                        }
                        "trim" => trim = true,
                        "lowercase" => lowercase = true,
                        "nfc" => nfc = true,
                        other => cx.error(
                            list.span(),
                            format!("unknown normalizer `{other}`, expected one of `email`, `trim`, `lowercase`, `nfc`"),
                        ),
                    }
                }
            }
            let bits = match bits {
                None => None,
                Some(lit) => match lit.base10_parse::<u16>() {
                    Ok(n) if (1..=256).contains(&n) => Some(n),
                    _ => {
                        cx.error(lit.span(), "`bits` must be between 1 and 256");
                        None
                    }
                },
            };
            Some(Search {
                column: column.unwrap_or_else(|| format_ident(&ident, "_hash")),
                trim,
                lowercase,
                nfc,
                bits,
            })
        });

        if let Some(m) = &a.migrating_from
            && kind == Kind::Json
        {
            cx.error(
                m.span(),
                "`migrating_from` works on `String` and `Vec<u8>` fields",
            );
        }

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
