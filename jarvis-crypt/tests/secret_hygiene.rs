//! Secret hygiene that the type system can show: the hash and HMAC states that hold key
//! material wipe themselves, and search hashers are not `Clone`.

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
