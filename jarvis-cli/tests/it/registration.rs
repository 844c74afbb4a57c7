//! What `Jarvis::model` refuses: a primary key of several columns and two models over one
//! table (every command), a primary key that is not an integer (the commands that page
//! through the tables); each message names its model, and `main` exits 2 without running the
//! command. A seed model brings the seed's migrations.

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
#[encrypted(table = crate::registration::schema::memberships, bind = none)]
#[allow(dead_code)]
struct Membership {
    group_id: i64,
    member_id: i64,
    #[encrypted]
    role: String,
}

/// A text primary key, bound as the row key.
#[derive(Encrypted)]
#[encrypted(table = crate::registration::schema::devices, bind = serial)]
#[allow(dead_code)]
struct Device {
    serial: String,
    #[encrypted]
    secret: String,
}

/// Two models over one table.
#[derive(Encrypted)]
#[encrypted(table = crate::registration::schema::notes, bind = id)]
#[allow(dead_code)]
struct Note {
    id: i64,
    #[encrypted]
    body: String,
}

#[derive(Encrypted)]
#[encrypted(table = crate::registration::schema::notes, bind = id)]
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
        problems[1].contains("`Note`")
            && problems[1].contains("`NoteAgain`")
            && problems[1].contains("`notes`"),
        "{}",
        problems[1]
    );
    // Listed last: only the commands that page through rows refuse it.
    assert!(
        problems[2].contains("`Device`") && problems[2].contains("`serial` is text"),
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

#[test]
fn a_text_primary_key_is_refused_only_by_the_commands_that_page_through_rows() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = dir.path().join("ops.db").display().to_string();
    let run = |args: &[&str]| {
        let mut all = vec!["ops", "--database-url", url.as_str()];
        all.extend_from_slice(args);
        Jarvis::new().model::<Device>().main_from(all)
    };
    assert_eq!(run(&["verify"]), ExitCode::from(2));
    assert_eq!(run(&["rotate", "--legacy"]), ExitCode::from(2));
    assert_eq!(run(&["migrate"]), ExitCode::SUCCESS);
    assert_eq!(run(&["migrate", "--status"]), ExitCode::SUCCESS);
}

#[test]
fn a_seed_model_brings_the_seed_migrations() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = dir.path().join("seed.db").display().to_string();
    let code = Jarvis::new().model::<jarvis_models::User>().main_from([
        "ops",
        "--database-url",
        url.as_str(),
        "migrate",
    ]);
    assert_eq!(code, ExitCode::SUCCESS);
    let status =
        block_on(jarvis_models::migrations::migration_status(&url)).expect("the migration status");
    assert!(status.pending.is_empty(), "{:?}", status.pending);
}

/// The seed's status, on a runtime of its own.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(future)
}
