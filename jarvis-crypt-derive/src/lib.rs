//! `#[derive(Encrypted)]`: field annotations become diesel column mappings.
//!
//! Use it through `jarvis_crypt::Encrypted`; the runtime crate's documentation shows it in
//! full. This crate only parses, checks and expands.
//!
//! # Container attributes
//!
//! - `#[encrypted(table = path::to::table)]` (required): the diesel table (`table!` module).
//!   Its last segment is the table name bound into the associated data.
//! - `#[encrypted(bind = field)]` (required): the field holding the row key bound into the
//!   associated data (an integer, `String` or `Vec<u8>` field, known before the first write).
//!   Bind the table's **primary key**: a value then cannot move to another row unnoticed. A
//!   unique column compiles too, but is weaker (a row whose unique value changes, or a value
//!   re-used after a delete, takes other rows' ciphertexts with it), and the jarvis tools
//!   report it. `bind = none` binds table and column only: a value can then be moved
//!   between rows of one column unnoticed (or swapped with another row's), which only suits
//!   tables whose rows are never more sensitive than each other.
//! - `#[encrypted(aad_table = "name")]` (optional): the table name bound into the associated
//!   data and the search keys, instead of the last segment of `table`; for schema-qualified
//!   tables (`aad_table = "billing.invoices"`) or a table renamed after rows were written.
//!   Changing it makes existing values undecryptable: set it once, before the first write.
//! - `#[encrypted(rotated_at = column)]` (optional): a timestamp column of the time the row's
//!   values were last given new data keys. `rotate --older-than` reads it (a NULL counts as
//!   old) and the jobs that re-encrypt set it; without it, `--older-than` leaves the table
//!   out. `created_at = column` (optional): the row's creation time, read instead of a NULL
//!   `rotated_at`. `rotation_count = column` (optional): an integer column the jobs increment
//!   on each re-encryption. The columns need not be fields of the model.
//! - `#[encrypted(redact_debug)]` (optional): generate the model's `Debug`, printing each
//!   encrypted field as `<redacted>` (an `Option` too: whether it holds a value is not
//!   printed either) and the plain fields with their own `Debug`.
//!
//! **Do not `#[derive(Debug)]` on a model with encrypted fields**: the derived `Debug` prints
//! the plaintext, which then reaches logs and error reports. Use `redact_debug` instead (a
//! derived `Debug` beside it is a compile error, "conflicting implementations", at
//! `redact_debug`), or write a `Debug` by hand. The generated row struct's `Debug` prints
//! only its name.
//!
//! # Field attributes
//!
//! - `#[encrypted]`: store the field encrypted, in the columns `encrypted_<field>`,
//!   `<field>_iv`, `<field>_auth_tag` and `<field>_data_key`.
//! - `ciphertext = col`, `iv = col`, `tag = col`, `data_key = col`: other column names, as
//!   bare identifiers (`#[encrypted(ciphertext = encrypted_key, iv = key_iv, tag = key_auth_tag,
//!   data_key = key_data_key)]`).
//! - `search` or `search(column = col, normalize = "email", bits = N)`: a search hash in
//!   `<field>_hash` (or `col`), over the value normalized by `email` or a comma-separated list
//!   of `trim`, `lowercase`, `nfc` (applied as trim, lowercase, NFC), truncated to `N` bits
//!   (1 to 256) if given. Generates `<field>_search` (a diesel filter) and `<field>_find`
//!   (load, decrypt, confirm), describes the field in `Encrypted::SEARCH_COLUMNS` and
//!   recomputes its hash in `Encrypted::rehash_row` (for jobs that re-hash or check hashes).
//!   Text fields only.
//! - `search(normalize_with = path::to::function)`: a normalizer of the application's own, a
//!   `fn(&str) -> String` applied after the built-in ones, whose output the built-in ones
//!   normalize once more (e.g. the digits of an SSN written `123-45-6789` or `123456789`); a
//!   function of another signature is a compile error at the path. The table description
//!   carries it (`FieldDescription::normalize_with`, `FieldDescription::search_input`), so the
//!   lookups, `rehash_row` and the lifecycle jobs (`verify`, `rotate --rehash`) all hash
//!   through it. **Changing a normalizer changes every hash it made**: stop the writes and
//!   lookups, deploy the new normalizer under a **new name** (say `ssn_digits_v2`: the name,
//!   as the path is written, is what a re-hash run records), run `rotate --rehash` (same
//!   search key: every hash of the changed columns recomputed) and `verify`.
//! - `json`: any serde type, stored as its JSON.
//! - `migrating_from = col`: the table still has the plaintext column `col`; the encrypted
//!   columns are nullable, reads fall back to `col` while they are NULL, writes store
//!   ciphertext and set `col` to NULL.
//!
//! Field types: `String`, `Vec<u8>`, `Option` of these (nullable columns), any serde type
//! with `json` (and its `Option`). Plain fields are copied as they are and must be `Clone`.
//!
//! # Nullability, checked at compile time
//!
//! The stored-form columns' nullability comes from the diesel `table!`, and must fit the field:
//!
//! - an `Option` field needs nullable stored-form columns (`Nullable<Binary>`): a `None` is
//!   NULL in all four;
//! - a `migrating_from` field needs nullable stored-form columns: rows not yet encrypted hold
//!   NULL there;
//! - the search-hash column of an `Option` field is nullable (a `None` has no hash);
//! - a field that is not an `Option` may sit on nullable columns (a table whose columns become
//!   NOT NULL later, or one being migrated): it is always written, and a row read back with
//!   NULL columns is an invalid stored form.
//!
//! Each mismatch is one compile error at the field's type (or at `migrating_from`, or at
//! `search`), saying which columns must change.

mod ast;
mod attr;
mod check;
mod ctxt;
mod expand;
mod fallback;

use proc_macro::TokenStream;

/// See the crate documentation.
#[proc_macro_derive(Encrypted, attributes(encrypted))]
pub fn derive_encrypted(input: TokenStream) -> TokenStream {
    derive(input.into()).into()
}

/// The derive on `proc_macro2` tokens, for unit tests.
fn derive(input: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    let input = match syn::parse2::<syn::DeriveInput>(input) {
        Ok(input) => input,
        Err(e) => return e.into_compile_error(),
    };
    let mut cx = ctxt::Ctxt::default();
    let container = ast::Container::from_ast(&mut cx, &input);
    if let Some(c) = &container {
        check::check(&mut cx, c);
    }
    match (cx.finish(), &container) {
        (Ok(()), Some(c)) => expand::expand(c),
        (Ok(()), None) => proc_macro2::TokenStream::new(),
        // The errors, and placeholders so that the model's other uses add none of their own.
        (Err(e), c) => {
            let mut out = e.into_compile_error();
            out.extend(fallback::expand(&input, c.as_ref()));
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    fn expand(input: proc_macro2::TokenStream) -> String {
        let output = super::derive(input);
        let file: syn::File = syn::parse2(output).expect("the expansion parses as a file");
        prettyplease::unparse(&file)
    }

    #[test]
    fn users_with_a_migrating_searchable_email() {
        insta::assert_snapshot!(expand(quote! {
            #[encrypted(table = crate::schema::users, bind = id)]
            pub struct User {
                pub id: i64,
                #[encrypted(search(normalize = "email"), migrating_from = email)]
                pub email: String,
                pub created_at: chrono::NaiveDateTime,
            }
        }));
    }

    #[test]
    fn api_keys_with_original_column_names_and_truncated_hash() {
        insta::assert_snapshot!(expand(quote! {
            #[encrypted(table = schema::api_keys, bind = id)]
            pub(crate) struct ApiKey {
                pub id: i64,
                pub service_name: String,
                #[encrypted(
                    ciphertext = encrypted_key,
                    iv = key_iv,
                    tag = key_auth_tag,
                    data_key = key_data_key,
                    search(column = key_hash, normalize = "trim", bits = 16)
                )]
                pub key: String,
            }
        }));
    }

    #[test]
    fn optional_bytes_and_json_without_row_binding() {
        insta::assert_snapshot!(expand(quote! {
            #[encrypted(table = super::schema::tokens, bind = none)]
            struct Token {
                #[encrypted]
                refresh: Option<Vec<u8>>,
                #[encrypted(json)]
                bundle: TokenBundle,
            }
        }));
    }

    #[test]
    fn errors_become_compile_errors() {
        let out = super::derive(quote! {
            #[encrypted(table = users)]
            struct User { #[encrypted(search(bits = 0))] email: String }
        })
        .to_string();
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains("missing `bind`"), "{out}");
        assert!(out.contains("between 1 and 256"), "{out}");
        // The fallback: a placeholder row and the model's impls, so its uses add no errors.
        assert!(out.contains("struct UserRow"), "{out}");
        assert!(out.contains("Encrypted for User"), "{out}");
        assert!(out.contains("fn email_search"), "{out}");
    }
}
