//! Parsing `#[encrypted(...)]` on the struct and on its fields, with syn's
//! `parse_nested_meta`: every key once, every value of its expected form. What the keys
//! mean together is checked in `check.rs`.

use proc_macro2::Span;
use syn::{Attribute, Ident, LitInt, LitStr, Path};

use crate::ast::Bind;
use crate::ctxt::Ctxt;

/// The attribute's name.
pub(crate) const ENCRYPTED: &str = "encrypted";
const TABLE: &str = "table";
const BIND: &str = "bind";
const AAD_TABLE: &str = "aad_table";
const ROTATED_AT: &str = "rotated_at";
const CREATED_AT: &str = "created_at";
const ROTATION_COUNT: &str = "rotation_count";
const REDACT_DEBUG: &str = "redact_debug";
/// The container keys, as listed in errors.
const CONTAINER_KEYS: &str =
    "`table`, `bind`, `aad_table`, `rotated_at`, `created_at`, `rotation_count`, `redact_debug`";
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
const NORMALIZE_WITH: &str = "normalize_with";

fn is_attr(attr: &Attribute) -> bool {
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

/// The container's `#[encrypted(...)]`, as written.
#[derive(Default)]
pub(crate) struct ContainerAttrs {
    pub(crate) table: Option<Path>,
    pub(crate) aad_table: Option<LitStr>,
    pub(crate) rotated_at: Option<Ident>,
    pub(crate) created_at: Option<Ident>,
    pub(crate) rotation_count: Option<Ident>,
    pub(crate) bind: Option<Bind>,
    /// `redact_debug`: the key's span.
    pub(crate) redact_debug: Option<Span>,
}

pub(crate) fn container(cx: &mut Ctxt, attrs: &[Attribute]) -> ContainerAttrs {
    let mut out = ContainerAttrs::default();
    let mut seen = Vec::new();
    for attr in attrs.iter().filter(|a| is_attr(a)) {
        let parsed = attr.parse_nested_meta(|meta| {
            let Some(key) = meta.path.get_ident().cloned() else {
                return Err(meta.error(format!("expected one of {CONTAINER_KEYS}")));
            };
            if key == TABLE {
                let path: Path = meta.value()?.parse()?;
                if once(cx, &mut seen, &key) {
                    out.table = Some(path);
                }
            } else if key == AAD_TABLE {
                let name: LitStr = meta.value()?.parse()?;
                if name.value().is_empty() {
                    cx.error(name.span(), "`aad_table` must not be empty");
                } else if once(cx, &mut seen, &key) {
                    out.aad_table = Some(name);
                }
            } else if key == ROTATED_AT || key == CREATED_AT || key == ROTATION_COUNT {
                let ident: Ident = meta.value()?.parse()?;
                if once(cx, &mut seen, &key) {
                    let slot = if key == ROTATED_AT {
                        &mut out.rotated_at
                    } else if key == CREATED_AT {
                        &mut out.created_at
                    } else {
                        &mut out.rotation_count
                    };
                    *slot = Some(ident);
                }
            } else if key == REDACT_DEBUG {
                if once(cx, &mut seen, &key) {
                    out.redact_debug = Some(key.span());
                }
            } else if key == BIND {
                let ident: Ident = meta.value()?.parse()?;
                if once(cx, &mut seen, &key) {
                    out.bind = Some(if ident == "none" {
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
    out
}

/// `search(...)` as written, its values parsed.
pub(crate) struct SearchAttrs {
    /// The `search` key.
    pub(crate) span: Span,
    pub(crate) column: Option<Ident>,
    pub(crate) trim: bool,
    pub(crate) lowercase: bool,
    pub(crate) nfc: bool,
    pub(crate) bits: Option<u16>,
    /// `normalize_with = path::to::function`.
    pub(crate) normalize_with: Option<Path>,
}

/// A field's `#[encrypted(...)]`, as written.
#[derive(Default)]
pub(crate) struct FieldAttrs {
    pub(crate) ciphertext: Option<Ident>,
    pub(crate) iv: Option<Ident>,
    pub(crate) tag: Option<Ident>,
    pub(crate) data_key: Option<Ident>,
    pub(crate) search: Option<SearchAttrs>,
    pub(crate) json: Option<Span>,
    pub(crate) migrating_from: Option<Ident>,
}

/// The field's attributes; `None` for a plain field (no `#[encrypted]`).
pub(crate) fn field(cx: &mut Ctxt, attrs: &[Attribute]) -> Option<FieldAttrs> {
    let attrs: Vec<_> = attrs.iter().filter(|a| is_attr(a)).collect();
    if attrs.is_empty() {
        return None;
    }
    let mut a = FieldAttrs::default();
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
            let ident_value =
                |meta: &syn::meta::ParseNestedMeta| -> syn::Result<Ident> { meta.value()?.parse() };
            if key == CIPHERTEXT {
                let v = ident_value(&meta)?;
                if fresh {
                    a.ciphertext = Some(v)
                }
            } else if key == IV {
                let v = ident_value(&meta)?;
                if fresh {
                    a.iv = Some(v)
                }
            } else if key == TAG {
                let v = ident_value(&meta)?;
                if fresh {
                    a.tag = Some(v)
                }
            } else if key == DATA_KEY {
                let v = ident_value(&meta)?;
                if fresh {
                    a.data_key = Some(v)
                }
            } else if key == MIGRATING_FROM {
                let v = ident_value(&meta)?;
                if fresh {
                    a.migrating_from = Some(v)
                }
            } else if key == JSON {
                if fresh {
                    a.json = Some(key.span())
                }
            } else if key == SEARCH {
                let search = search(cx, &meta, key.span())?;
                if fresh {
                    a.search = Some(search)
                }
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
    Some(a)
}

/// `search` or `search(column = .., normalize = "..", bits = N)`.
fn search(
    cx: &mut Ctxt,
    meta: &syn::meta::ParseNestedMeta<'_>,
    span: Span,
) -> syn::Result<SearchAttrs> {
    let (mut column, mut normalize, mut bits) = (None::<Ident>, None::<LitStr>, None::<LitInt>);
    let mut normalize_with = None::<Path>;
    let mut seen = Vec::new();
    if meta.input.peek(syn::token::Paren) {
        // A mistake inside `search(...)` is reported, and the field stays searchable: the
        // fallback still generates its helpers.
        let parsed = meta.parse_nested_meta(|inner| {
            let Some(k) = inner.path.get_ident().cloned() else {
                return Err(inner.error(
                    "expected one of `column`, `normalize`, `normalize_with`, `bits`",
                ));
            };
            let fresh = once(cx, &mut seen, &k);
            if k == COLUMN {
                let v: Ident = inner.value()?.parse()?;
                if fresh {
                    column = Some(v)
                }
            } else if k == NORMALIZE {
                let v: LitStr = inner.value()?.parse()?;
                if fresh {
                    normalize = Some(v)
                }
            } else if k == NORMALIZE_WITH {
                // Parsed as an expression first, so a value that is not a path is consumed
                // and reported once.
                let v: syn::Expr = inner.value()?.parse()?;
                let syn::Expr::Path(syn::ExprPath { path, qself: None, .. }) = v else {
                    return Err(syn::Error::new_spanned(
                        v,
                        "expected the path of a `fn(&str) -> String`, as in `normalize_with = crate::normalize::ssn`",
                    ));
                };
                if fresh {
                    normalize_with = Some(path)
                }
            } else if k == BITS {
                let v: LitInt = inner.value()?.parse()?;
                if fresh {
                    bits = Some(v)
                }
            } else {
                return Err(inner.error(format!(
                    "unknown key `{k}` in `search(...)`, expected one of `column`, `normalize`, `normalize_with`, `bits`"
                )));
            }
            Ok(())
        });
        if let Err(e) = parsed {
            cx.syn(e);
        }
    }
    let mut out = SearchAttrs {
        span,
        column,
        trim: false,
        lowercase: false,
        nfc: false,
        bits: None,
        normalize_with,
    };
    if let Some(list) = &normalize {
        for name in list
            .value()
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            match name {
                "email" => {
                    out.trim = true;
                    out.lowercase = true;
                }
                "trim" => out.trim = true,
                "lowercase" => out.lowercase = true,
                "nfc" => out.nfc = true,
                other => cx.error(
                    list.span(),
                    format!("unknown normalizer `{other}`, expected one of `email`, `trim`, `lowercase`, `nfc`"),
                ),
            }
        }
    }
    if let Some(lit) = bits {
        match lit.base10_parse::<u16>() {
            Ok(n) if (1..=256).contains(&n) => out.bits = Some(n),
            _ => cx.error(lit.span(), "`bits` must be between 1 and 256"),
        }
    }
    Ok(out)
}
