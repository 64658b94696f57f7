//! Every fault Telegram throws, injected at the first, a middle and the last part: the
//! download still yields identical bytes, or ends with a retryable error that a resume
//! recovers from.

use std::time::Duration;

use futures::StreamExt;

use savestream_telegram::fake::{FakeMessage, Fault, FaultKind, When};
use savestream_telegram::{DownloadOptions, Downloader, TelegramError};
use tokio::time::Instant;

use savestream_telegram::TelegramApi;

use crate::support::{
    assert_requests_valid, collect, contents, downloader, drain, link, one_file, CHANNEL, CHANNEL_ID,
    HOME_DC, MIB,
};

/// 10 MiB and a few bytes: 11 parts, the last one short.
const SIZE: usize = 10 * MIB + 5;
const FIRST: u64 = 0;
const MIDDLE: u64 = 5;
const LAST: u64 = 10;

async fn survives(kind: FaultKind, threads: usize) -> (crate::support::OneFile, Duration) {
    let mut last_world = None;
    let mut slowest = Duration::ZERO;
    for part in [FIRST, MIDDLE, LAST] {
        let world = one_file(SIZE).await;
        world.fake.inject(Fault::at_part(part, kind.clone()));
        let started = Instant::now();
        let received = collect(
            downloader(&world.fake, threads)
                .stream(&world.message, 0)
                .unwrap(),
        )
        .await;
        slowest = slowest.max(started.elapsed());
        assert!(received == world.bytes, "{kind:?} at part {part}: bytes differ");
        assert_requests_valid(&world.fake);
        assert_eq!(
            world.fake.flood_refusals(),
            0,
            "{kind:?} at part {part}: a part asked during a flood wait"
        );
        last_world = Some(world);
    }
    // The loop ran three times, so there is a world.
    (last_world.unwrap(), slowest)
}

#[tokio::test(start_paused = true)]
async fn flood_waits_are_slept_through() {
    for threads in [1, 8] {
        let (_, waited) = survives(FaultKind::FloodWait(7), threads).await;
        assert!(waited >= Duration::from_secs(7), "waited only {waited:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn premium_flood_waits_are_slept_through() {
    let (_, waited) = survives(FaultKind::FloodPremiumWait(3), 4).await;
    assert!(waited >= Duration::from_secs(3), "waited only {waited:?}");
}

#[tokio::test(start_paused = true)]
async fn expired_file_references_are_refreshed_once() {
    for threads in [1, 8] {
        let (world, _) = survives(FaultKind::ExpireReference, threads).await;
        assert_eq!(
            world.fake.refetch_count(),
            1,
            "threads {threads}: one refetch for all parts"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn migrated_files_are_followed_to_their_new_data_centre() {
    let (world, _) = survives(FaultKind::Migrate(4), 4).await;
    assert_eq!(world.fake.file_dc(world.file), Some(4));
    let calls = world.fake.part_calls();
    let last = calls.last().unwrap();
    assert_eq!(
        last.dc, 4,
        "requests after the migration go to the new data centre"
    );
    assert!(calls.iter().any(|call| call.dc == HOME_DC));
}

#[tokio::test(start_paused = true)]
async fn dropped_connections_are_retried() {
    for threads in [1, 8] {
        survives(FaultKind::Disconnect, threads).await;
    }
    let world = one_file(SIZE).await;
    world
        .fake
        .inject(Fault::at_part(MIDDLE, FaultKind::Disconnect).times(3));
    let received = collect(downloader(&world.fake, 4).stream(&world.message, 0).unwrap()).await;
    assert!(received == world.bytes, "three drops in a row are still retried");
}

#[tokio::test(start_paused = true)]
async fn slow_parts_still_arrive_in_order() {
    for threads in [1, 8] {
        survives(FaultKind::Delay(Duration::from_secs(5)), threads).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_part_slower_than_the_timeout_is_asked_again() {
    let world = one_file(SIZE).await;
    world
        .fake
        .inject(Fault::at_part(MIDDLE, FaultKind::Delay(Duration::from_secs(600))));
    let received = collect(downloader(&world.fake, 4).stream(&world.message, 0).unwrap()).await;
    assert!(received == world.bytes);
    let asked = world
        .fake
        .part_calls()
        .iter()
        .filter(|call| call.offset == MIDDLE * MIB as u64)
        .count();
    assert_eq!(asked, 2, "the timed-out part was requested again");
}

#[tokio::test(start_paused = true)]
async fn a_flood_wait_longer_than_the_limit_ends_the_download_retryably() {
    let world = one_file(SIZE).await;
    world
        .fake
        .inject(Fault::at_part(MIDDLE, FaultKind::FloodWait(3600)));
    let options = DownloadOptions {
        max_flood_wait: Duration::from_secs(30),
        ..DownloadOptions::new(4)
    };
    let stream = Downloader::new(world.fake.clone(), options)
        .stream(&world.message, 0)
        .unwrap();
    let started = Instant::now();
    let (received, error) = drain(stream).await;
    assert_eq!(
        error,
        Some(TelegramError::FloodWait {
            seconds: 3600,
            premium: false
        })
    );
    assert!(error.as_ref().is_some_and(TelegramError::is_retryable));
    assert_eq!(error.unwrap().retry_after(), Some(Duration::from_secs(3600)));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the long wait was not slept"
    );
    assert!(
        received == world.bytes[..received.len()],
        "what arrived is a correct prefix"
    );
    assert!(received.len() <= MIDDLE as usize * MIB);
}

#[tokio::test(start_paused = true)]
async fn a_flood_wait_longer_than_the_limit_holds_every_other_part_back() {
    for (kind, premium) in [
        (FaultKind::FloodWait(3600), false),
        (FaultKind::FloodPremiumWait(3600), true),
    ] {
        // Arrange: parts after the middle one are in flight when it gets the wait.
        let world = one_file(SIZE).await;
        world.fake.inject(Fault::at_part(MIDDLE, kind.clone()));
        let options = DownloadOptions {
            max_flood_wait: Duration::from_secs(30),
            ..DownloadOptions::new(4)
        };
        let stream = Downloader::new(world.fake.clone(), options)
            .stream(&world.message, 0)
            .unwrap();

        // Act
        let started = Instant::now();
        let (_, error) = drain(stream).await;

        // Assert: the download gave up at once, and no part asked Telegram again during the
        // wait (each such request would have been refused with another FLOOD_WAIT).
        assert!(
            matches!(error, Some(TelegramError::FloodWait { seconds, premium: p }) if seconds >= 3570 && p == premium),
            "{kind:?}: {error:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{kind:?}: the wait was slept"
        );
        assert_eq!(
            world.fake.flood_refusals(),
            0,
            "{kind:?}: parts kept asking during the flood wait"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_fake_refuses_every_request_until_a_flood_wait_is_over() {
    // Arrange
    let world = one_file(SIZE).await;
    world.fake.inject(Fault::at_call(0, FaultKind::FloodWait(5)));
    let file = world.message.media.file().unwrap();
    let ask = || world.fake.get_part(file.location, HOME_DC, 0, 1024);

    // Act and assert
    assert!(matches!(
        ask().await,
        Err(TelegramError::FloodWait { seconds: 5, .. })
    ));
    tokio::time::advance(Duration::from_millis(1500)).await;
    assert!(
        matches!(ask().await, Err(TelegramError::FloodWait { seconds: 4, .. })),
        "a request during the wait is refused with the rest of it, rounded up"
    );
    assert_eq!(world.fake.flood_refusals(), 1);
    tokio::time::advance(Duration::from_millis(3500)).await;
    assert_eq!(ask().await.unwrap().len(), 1024, "answered once the wait is over");
}

#[tokio::test(start_paused = true)]
async fn a_download_cut_by_a_fault_resumes_from_the_bytes_it_got() {
    for part in [FIRST, MIDDLE, LAST] {
        let world = one_file(SIZE).await;
        let options = DownloadOptions::new(4);
        // One more drop than the downloader retries: the first attempt gives up at this part.
        let drops = options.disconnect_retries + 1;
        world
            .fake
            .inject(Fault::at_part(part, FaultKind::Disconnect).times(drops));
        let downloader = Downloader::new(world.fake.clone(), options);

        let (prefix, error) = drain(downloader.stream(&world.message, 0).unwrap()).await;
        let error = error.expect("the download gives up");
        assert!(matches!(error, TelegramError::Disconnected(_)), "{error}");
        assert!(error.is_retryable());
        assert_eq!(
            prefix.len(),
            part as usize * MIB,
            "bytes before the failing part arrived"
        );

        let rest = collect(downloader.stream(&world.message, prefix.len() as u64).unwrap()).await;
        assert!(
            [prefix, rest].concat() == world.bytes,
            "part {part}: resumed bytes differ"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_resume_inside_a_part_after_an_expired_reference_is_exact() {
    let world = one_file(SIZE).await;
    world
        .fake
        .inject(Fault::at_part(MIDDLE, FaultKind::ExpireReference));
    world
        .fake
        .inject(Fault::at_part(MIDDLE + 1, FaultKind::FloodWait(2)));
    let start = MIDDLE as usize * MIB - 3000;
    let received = collect(
        downloader(&world.fake, 8)
            .stream(&world.message, start as u64)
            .unwrap(),
    )
    .await;
    assert!(received == world.bytes[start..]);
    assert_requests_valid(&world.fake);
}

#[tokio::test(start_paused = true)]
async fn a_flood_wait_holds_back_every_download_of_the_account() {
    // Arrange: a second file beside the first, both downloaded at once by one Downloader (one
    // per process), every part a little slow so both downloads are mid-way when the first
    // gets a flood wait.
    let world = one_file(SIZE).await;
    let other_bytes = contents(SIZE, 99);
    let other_file = world.fake.add_file(other_bytes.clone(), HOME_DC);
    world.fake.add_message(
        CHANNEL_ID,
        FakeMessage::document(2, other_file, Some("other.bin"), None),
    );
    let other = world
        .fake
        .resolve(&link(&format!("https://t.me/{CHANNEL}/2")))
        .await
        .unwrap()
        .remove(0);
    // The flood wait first: it is answered at once (the fault list stops at it), so no
    // request can be on its way before the client knows of the wait.
    world.fake.inject(Fault::at_part(MIDDLE, FaultKind::FloodWait(7)));
    world.fake.inject(Fault {
        when: When::Always,
        kind: FaultKind::Delay(Duration::from_millis(200)),
        times: u32::MAX,
    });
    let downloader = downloader(&world.fake, 4);

    // Act
    let started = Instant::now();
    let (first, second) = tokio::join!(
        collect(downloader.stream(&world.message, 0).unwrap()),
        collect(downloader.stream(&other, 0).unwrap()),
    );

    // Assert: both complete, the wait was slept through, and neither download asked Telegram
    // during it (each such request is refused and may lengthen the wait).
    assert!(first == world.bytes && second == other_bytes, "bytes differ");
    assert!(started.elapsed() >= Duration::from_secs(7));
    assert_eq!(
        world.fake.flood_refusals(),
        0,
        "the other download kept asking during the flood wait"
    );
}

#[tokio::test(start_paused = true)]
async fn a_flood_wait_on_the_refetch_is_waited_out_like_a_part_s() {
    // Arrange: the reference expires at the middle part, and the refetch for a fresh one is
    // answered with a flood wait.
    let world = one_file(SIZE).await;
    world
        .fake
        .inject(Fault::at_part(MIDDLE, FaultKind::ExpireReference));
    world.fake.inject(Fault {
        when: When::Refetch,
        kind: FaultKind::FloodWait(5),
        times: 1,
    });

    // Act
    let started = Instant::now();
    let received = collect(downloader(&world.fake, 4).stream(&world.message, 0).unwrap()).await;

    // Assert: the download slept through the wait, refetched again after it, and nothing was
    // asked during it.
    assert!(received == world.bytes);
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert_eq!(world.fake.refetch_count(), 2);
    assert_eq!(
        world.fake.flood_refusals(),
        0,
        "a request was sent during the wait"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refreshed_reference_keeps_the_data_centre_a_migration_found() {
    // Arrange: the file moves at part 2 (its message still names the old data centre) and its
    // reference expires at part 6.
    let world = one_file(SIZE).await;
    world.fake.inject(Fault::at_part(2, FaultKind::Migrate(4)));
    world.fake.inject(Fault::at_part(6, FaultKind::ExpireReference));

    // Act: one part at a time, so the order of requests is the plan's.
    let received = collect(downloader(&world.fake, 1).stream(&world.message, 0).unwrap()).await;

    // Assert: after the migration, every request went to the new data centre, the refresh
    // included.
    assert!(received == world.bytes);
    assert_eq!(world.fake.refetch_count(), 1);
    let calls = world.fake.part_calls();
    let moved = calls.iter().position(|call| call.dc == 4).unwrap();
    assert!(
        calls[moved..].iter().all(|call| call.dc == 4),
        "the refresh sent parts back to the old data centre: {calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn parts_waiting_for_a_permit_ask_where_a_migration_sent_them() {
    // Arrange: 8 parts in the window, 2 permits per data centre, every answer 1 s away; the
    // file moves to data centre 4 as the first request arrives.
    let world = one_file(8 * MIB).await;
    world.fake.inject(Fault {
        when: When::Always,
        kind: FaultKind::Delay(Duration::from_secs(1)),
        times: u32::MAX,
    });
    world.fake.inject(Fault::at_part(0, FaultKind::Migrate(4)));
    let options = DownloadOptions {
        max_parts_in_flight_per_dc: 2,
        ..DownloadOptions::new(8)
    };
    let downloader = Downloader::new(world.fake.clone(), options);
    assert_eq!(downloader.window(&world.message, 0), 8);

    // Act
    let received = collect(downloader.stream(&world.message, 0).unwrap()).await;

    // Assert: only the two requests sent before the FILE_MIGRATE answers went to the old data
    // centre; the parts that waited for their permits meanwhile asked the new one.
    assert!(received == world.bytes);
    let calls = world.fake.part_calls();
    let to_old = calls.iter().filter(|call| call.dc == HOME_DC).count();
    assert_eq!(to_old, 2, "requests went to the old data centre: {calls:?}");
    assert_eq!(calls.len(), 8 + 2, "each part asked once more at most: {calls:?}");
}

#[tokio::test(start_paused = true)]
async fn parts_held_at_the_flood_gate_do_not_stall() {
    // Arrange: the first request gets a 7 s flood wait, longer than the 5 s stall timeout; the
    // other three parts of the window have passed the gate check and their requests wait at
    // the gate for those 7 s before they are sent. No retries after a dropped connection, so
    // a stall would end the download.
    let world = one_file(SIZE).await;
    world.fake.inject(Fault::at_call(0, FaultKind::FloodWait(7)));
    let options = DownloadOptions {
        part_timeout: Duration::from_secs(5),
        disconnect_retries: 0,
        ..DownloadOptions::new(4)
    };
    let downloader = Downloader::new(world.fake.clone(), options);

    // Act
    let started = Instant::now();
    let (received, error) = drain(downloader.stream(&world.message, 0).unwrap()).await;

    // Assert: the download slept through the wait and completed; each part was asked for once,
    // and the one that got the flood wait once more.
    assert!(error.is_none(), "the download failed: {error:?}");
    assert!(received == world.bytes, "bytes differ");
    assert!(started.elapsed() >= Duration::from_secs(7));
    assert_eq!(
        world.fake.flood_refusals(),
        0,
        "a request was sent during the wait"
    );
    assert_eq!(
        world.fake.part_calls().len(),
        11 + 1,
        "parts were asked for again: {:?}",
        world.fake.part_calls()
    );
}

#[tokio::test(start_paused = true)]
async fn requests_of_a_download_cancelled_at_the_flood_gate_are_never_sent() {
    // Arrange: the first request gets a 7 s flood wait; the other three parts of the window
    // have passed the gate check and their requests wait at the gate.
    let world = one_file(SIZE).await;
    world.fake.inject(Fault::at_call(0, FaultKind::FloodWait(7)));
    let downloader = Downloader::new(world.fake.clone(), DownloadOptions::new(4));
    let mut stream = downloader.stream(&world.message, 0).unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(3), stream.next()).await;
    assert!(waited.is_err(), "a part arrived during the flood wait");

    // Act: the download is cancelled during the wait, and the wait ends.
    drop(stream);
    tokio::time::sleep(Duration::from_secs(10)).await;

    // Assert: only the request that got the flood wait was ever sent; the ones that waited at
    // the gate for a download nobody reads any more were not (their MiBs would have held up
    // every other download on the connection).
    assert_eq!(
        world.fake.part_calls().len(),
        1,
        "requests sent after the cancel: {:?}",
        world.fake.part_calls()
    );
}

#[tokio::test(start_paused = true)]
async fn a_part_backing_off_after_a_dropped_connection_lets_other_downloads_use_its_slot() {
    // Arrange: two one-part downloads sharing the data centre's only slot; the first one's
    // connection drops and its part backs off for 10 s.
    let world = one_file(MIB).await;
    let other_bytes = contents(MIB, 7);
    let other_file = world.fake.add_file(other_bytes.clone(), HOME_DC);
    world
        .fake
        .add_message(CHANNEL_ID, FakeMessage::document(2, other_file, None, None));
    let other = world
        .fake
        .resolve(&link(&format!("https://t.me/{CHANNEL}/2")))
        .await
        .unwrap()
        .remove(0);
    world.fake.inject(Fault::at_call(0, FaultKind::Disconnect));
    let options = DownloadOptions {
        max_parts_in_flight_per_dc: 1,
        backoff: Duration::from_secs(10),
        ..DownloadOptions::new(1)
    };
    let downloader = Downloader::new(world.fake.clone(), options);
    let first = tokio::spawn(collect(downloader.stream(&world.message, 0).unwrap()));
    // The busy loop keeps the paused clock from moving on while the first request is made.
    while world.fake.part_calls().is_empty() {
        tokio::task::yield_now().await;
    }

    // Act
    let started = Instant::now();
    let second = collect(downloader.stream(&other, 0).unwrap()).await;

    // Assert: the second download got the slot while the first part backed off.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the backing-off part kept the data centre's only slot for {:?}",
        started.elapsed()
    );
    assert!(second == other_bytes, "bytes differ");
    assert!(first.await.unwrap() == world.bytes, "bytes differ");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_connection_is_dropped_and_the_part_asked_again_on_a_new_one() {
    // Arrange: the middle part's answer never comes (a connection that died without closing),
    // and the data centre has a single slot, which the unanswered request holds.
    let world = one_file(SIZE).await;
    world.fake.inject(Fault::at_part(
        MIDDLE,
        FaultKind::Delay(Duration::from_secs(3600)),
    ));
    let options = DownloadOptions {
        max_parts_in_flight_per_dc: 1,
        part_timeout: Duration::from_secs(10),
        ..DownloadOptions::new(4)
    };
    let downloader = Downloader::new(world.fake.clone(), options);

    // Act
    let started = Instant::now();
    let received = collect(downloader.stream(&world.message, 0).unwrap()).await;

    // Assert: the stall dropped the connection once, which failed the unanswered request and
    // freed its slot at once, instead of after the four part timeouts an abandoned request
    // may hold it.
    assert!(received == world.bytes, "bytes differ");
    assert_eq!(world.fake.dropped_connections(HOME_DC), 1);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the dead connection's request kept the slot: {:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_connection_fails_every_request_in_flight_on_it_at_once() {
    // Arrange: three requests on the home data centre's connection, each answered in an hour.
    let world = one_file(SIZE).await;
    world.fake.inject(Fault {
        when: When::Always,
        kind: FaultKind::Delay(Duration::from_secs(3600)),
        times: 3,
    });
    let file = world.message.media.file().unwrap().location.clone();
    let requests: Vec<_> = (0..3u64)
        .map(|part| {
            let fake = world.fake.clone();
            let file = file.clone();
            tokio::spawn(async move { fake.get_part(&file, HOME_DC, part * MIB as u64, 1024).await })
        })
        .collect();
    while world.fake.in_flight() < 3 {
        tokio::task::yield_now().await;
    }

    // Act: the connection drops under them, as grammers drops one it was told to.
    let started = Instant::now();
    world.fake.drop_connection(HOME_DC).await;

    // Assert: all three fail at once, retryably; the next request is answered.
    for request in requests {
        let error = request.await.unwrap().unwrap_err();
        assert!(matches!(error, TelegramError::Disconnected(_)), "{error:?}");
    }
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(
        world.fake.get_part(&file, HOME_DC, 0, 1024).await.unwrap().len(),
        1024
    );
}
