//! The reliability suite of issue 8: the real binaries (`TestApp`) under
//! crashes, restarts and hostile input, checked from the outside.
//!
//! - `crash`: workers SIGKILLed at random mid-download; every task completes
//!   exactly once with a byte-identical file and no `.part` left. The full
//!   2,000-task soak runs with `SAVESTREAM_SOAK=1`.
//! - `redis_restart`: Redis with `appendfsync always` killed and restarted in
//!   place; every task that got a 201 ends once, none lost or duplicated. Its
//!   module docs state the durability setting and what `everysec` risks.
//! - `webhooks`: a receiver that flaps between 5xx, hang-ups, timeouts and
//!   200; every outcome delivered, repeats only under the same `webhook-id`.
//! - `storm`: all of the above at once: workers SIGKILLed at random, Redis
//!   killed and restarted twice, a flapping webhook receiver, a client
//!   creating through it all. `SAVESTREAM_SOAK=1` runs 1,000 tasks.
//! - `hostile`: huge, nested and non-UTF-8 bodies, path traversal in
//!   `dir_path` and in file names, auth bypass attempts.
//!
//! Support: `support` (files, tasks, the log, `RedisProcess`), `receiver`
//! (the flapping webhook receiver). The cargo-fuzz targets live in `fuzz/`,
//! the schemathesis run in `scripts/schemathesis.sh`.

mod reliability {
    mod crash;
    mod hostile;
    mod receiver;
    mod redis_restart;
    mod storm;
    mod support;
    mod webhooks;
}
