//! Raw split rings for hostile-guest scenarios: a guest that writes
//! descriptors, available and used rings by hand, bypassing `guest-driver`,
//! to feed a device malformed input. (Being written.)
