//! What `Jarvis::model` refuses when the command starts: a primary key of several columns, a
//! primary key that is not an integer, two models over one table; each message names its
//! model, and `main` exits 2 without running the command.

use std::process::ExitCode;

use jarvis_cli::Jarvis;
use jarvis_crypt::Encrypted;

mod schema {
    diesel::table! {
        memberships (group_id, member_id) {
            group_id -> BigInt,
            member_id -> BigInt,
            encrypted_role -> Binary,
            role_iv -> Binary,
            role_auth_tag -> Binary,
            role_data_key -> Binary,
        }
    }

    diesel::table! {
        devices (serial) {
            serial -> Text,
            encrypted_secret -> Binary,
            secret_iv -> Binary,
            secret_auth_tag -> Binary,
            secret_data_key -> Binary,
        }
    }

    diesel::table! {
        notes (id) {
            id -> BigInt,
            encrypted_body -> Binary,
            body_iv -> Binary,
            body_auth_tag -> Binary,
            body_data_key -> Binary,
        }
    }
}

/// A composite primary key.
#[derive(Encrypted)]
#[encrypted(table = crate::schema::memberships, bind = none)]
#[allow(dead_code)]
struct Membership {
    group_id: i64,
    member_id: i64,
    #[encrypted]
    role: String,
}

/// A text primary key, bound as the row key.
#[derive(Encrypted)]
#[encrypted(table = crate::schema::devices, bind = serial)]
#[allow(dead_code)]
struct Device {
    serial: String,
    #[encrypted]
    secret: String,
}

/// Two models over one table.
#[derive(Encrypted)]
#[encrypted(table = crate::schema::notes, bind = id)]
#[allow(dead_code)]
struct Note {
    id: i64,
    #[encrypted]
    body: String,
}

#[derive(Encrypted)]
#[encrypted(table = crate::schema::notes, bind = id)]
#[allow(dead_code)]
struct NoteAgain {
    id: i64,
    #[encrypted]
    body: String,
}

#[test]
fn a_sound_registration_has_no_problems() {
    let ops = Jarvis::new().model::<Note>();
    assert!(ops.problems().is_empty(), "{:?}", ops.problems());
}

#[test]
fn each_unsound_model_is_named() {
    let ops = Jarvis::new()
        .model::<Membership>()
        .model::<Device>()
        .model::<Note>()
        .model::<NoteAgain>();
    let problems = ops.problems();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems[0].contains("`Membership`") && problems[0].contains("several columns"),
        "{}",
        problems[0]
    );
    assert!(
        problems[1].contains("`Device`") && problems[1].contains("`serial` is text"),
        "{}",
        problems[1]
    );
    assert!(
        problems[2].contains("`Note`")
            && problems[2].contains("`NoteAgain`")
            && problems[2].contains("`notes`"),
        "{}",
        problems[2]
    );
}

#[test]
fn main_refuses_them_with_exit_status_2() {
    let code = Jarvis::new()
        .model::<Membership>()
        .main_from(["ops", "verify"]);
    assert_eq!(code, ExitCode::from(2));
}
