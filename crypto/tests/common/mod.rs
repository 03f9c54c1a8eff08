//! Helpers shared by the crypto crate's integration tests.

use std::cell::UnsafeCell;
use std::mem::ManuallyDrop;

use fedcrm_crypto::SecureRandom;

/// Runs `f` with a generator that answers the k-th `fill` with `fills[k]` (whose
/// length must match the request exactly), then checks every fill was used.
/// ring's `SecureRandom` is sealed; this is ring's own deterministic test generator.
#[allow(deprecated)]
pub fn with_fixed_rng<R>(fills: &[Vec<u8>], f: impl FnOnce(&dyn SecureRandom) -> R) -> R {
    let slices: Vec<&[u8]> = fills.iter().map(Vec::as_slice).collect();
    // ManuallyDrop: ring's Drop asserts the count, which would abort the test binary
    // (panic while panicking) if `f` itself panicked. We check the count ourselves.
    let mut rng =
        ManuallyDrop::new(ring::test::rand::FixedSliceSequenceRandom { bytes: &slices, current: UnsafeCell::new(0) });
    let out = f(&*rng);
    assert_eq!(*rng.current.get_mut(), fills.len(), "not every fixed random fill was consumed");
    drop(ManuallyDrop::into_inner(rng));
    out
}
