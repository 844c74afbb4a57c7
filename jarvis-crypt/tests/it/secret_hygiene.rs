//! Secret hygiene that the type system can show: the hash and HMAC states that hold key
//! material wipe themselves, search hashers are not `Clone`, and every random value of the
//! crate comes from the operating system's generator.

use zeroize::ZeroizeOnDrop;

fn wipes_on_drop<T: ZeroizeOnDrop + ?Sized>() {}

/// Compiles only with the `zeroize` features of `sha2` and `hmac` (through `digest`): the
/// SHA-256 state, and the core and buffer of an HMAC-SHA256 (which hold the key's pads).
#[test]
fn hash_and_hmac_states_are_wiped_on_drop() {
    use hmac::block_api::HmacCore;
    use hmac::digest::block_api::{Buffer, CoreProxy};
    wipes_on_drop::<sha2::Sha256>();
    wipes_on_drop::<<sha2::Sha256 as CoreProxy>::Core>();
    wipes_on_drop::<Buffer<HmacCore<sha2::Sha256>>>();
}

/// `ColumnHasher` must not be `Clone`: if it were, both impls below would apply and the
/// call would be ambiguous, which does not compile (static_assertions' `assert_not_impl_any`).
#[test]
fn column_hashers_are_not_clone() {
    trait AmbiguousIfClone<A> {
        fn check() {}
    }
    impl<T: ?Sized> AmbiguousIfClone<()> for T {}
    #[allow(dead_code)]
    struct IsClone;
    impl<T: Clone> AmbiguousIfClone<IsClone> for T {}
    <jarvis_crypt::ColumnHasher as AmbiguousIfClone<_>>::check();
}

/// No source file of the crate draws from a userspace generator (`rand::rng()`, the thread
/// generator, `rand::random`, seeded generators): their state is copied by `fork`, so a
/// parent and its child would repeat each other's nonces and keys. Randomness goes through
/// `cipher::fill_random` (the operating system's generator).
#[test]
fn randomness_comes_from_the_operating_system() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let forbidden = [
        "rand::rng(",
        "thread_rng",
        "ThreadRng",
        "rand::random",
        "StdRng",
        "SmallRng",
        "from_entropy",
        "from_os_rng",
        "rand::RngCore",
    ];
    let mut files = vec![src];
    let mut checked = 0;
    let mut found = Vec::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read_dir") {
                files.push(entry.expect("entry").path());
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        checked += 1;
        let text = std::fs::read_to_string(&path).expect("read");
        for (n, line) in text.lines().enumerate() {
            for name in forbidden {
                if line.contains(name) {
                    found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(checked > 10, "the sources were found ({checked} files)");
    assert!(
        found.is_empty(),
        "userspace randomness:\n{}",
        found.join("\n")
    );
}
