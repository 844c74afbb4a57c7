//! `jarvis`: the operations command over the seed's models (users, API keys, OAuth tokens)
//! and their tables' migrations, with data keys in the key vault; an application builds its
//! own the same way (see the crate docs of `jarvis_cli`).

use jarvis_models::{ApiKey, OAuthToken, User};

fn main() -> std::process::ExitCode {
    jarvis_cli::Jarvis::new()
        .model::<User>()
        .model::<ApiKey>()
        .model::<OAuthToken>()
        .migrations(jarvis_models::migrations::SEED)
        .key_vault()
        .main()
}
