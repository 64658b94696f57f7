//! Downloads without faults: byte-exact output for awkward sizes and thread counts, resumes
//! from any offset, the fake's refusal of invalid requests, the reorder window's memory bound,
//! and cancellation by dropping the stream.

use std::time::Duration;

use futures::StreamExt;
use savestream_telegram::fake::FaultKind;
use savestream_telegram::fake::{FakeMessage, Fault, When};
use savestream_telegram::{DownloadOptions, Downloader, Media, MediaMessage, TelegramApi, TelegramError};
use tokio::time::Instant;

use crate::support::{
    assert_requests_valid, collect, contents, downloader, drain, link, one_file, OneFile, CHANNEL,
    CHANNEL_ID, HOME_DC, MIB,
};

#[tokio::test(start_paused = true)]
async fn downloads_are_byte_identical_for_every_size_and_thread_count() {
    for size in [0, 1, 1023, MIB, MIB + 1, 10 * MIB + 12_345] {
        for threads in [1, 8] {
            let world = one_file(size).await;
            let stream = downloader(&world.fake, threads)
                .stream(&world.message, 0)
                .unwrap();
            let received = collect(stream).await;
            assert!(
                received == world.bytes,
                "size {size}, threads {threads}: bytes differ"
            );
            assert_requests_valid(&world.fake);
            let expected_requests = size.div_ceil(MIB);
            assert_eq!(
                world.fake.part_calls().len(),
                expected_requests,
                "size {size}: one request per MiB, none past the end"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn resumes_yield_exactly_the_remaining_bytes() {
    let size = 5 * MIB + 777;
    let world = one_file(size).await;
    for start in [0, 1, 1024, 1500, MIB - 1, MIB, MIB + 1, size / 2, size - 1, size] {
        let stream = downloader(&world.fake, 4)
            .stream(&world.message, start as u64)
            .unwrap();
        let received = collect(stream).await;
        assert!(
            received == world.bytes[start..],
            "resume from {start}: bytes differ"
        );
    }
    assert_requests_valid(&world.fake);
}

#[tokio::test]
async fn a_resume_past_the_end_is_refused() {
    let world = one_file(100).await;
    let error = downloader(&world.fake, 4)
        .stream(&world.message, 101)
        .err()
        .unwrap();
    assert_eq!(
        error,
        TelegramError::OffsetBeyondEnd {
            offset: 101,
            size: 100
        }
    );
}

#[tokio::test]
async fn the_fake_refuses_requests_that_break_precise_mode() {
    let world = one_file(3 * MIB).await;
    let Media::Document { location, dc, .. } = &world.message.media else {
        panic!();
    };
    let refused = |name: &str| TelegramError::Rpc {
        code: 400,
        name: name.to_owned(),
        value: None,
    };
    let cases: [(u64, u32, &str); 9] = [
        // At or past the end of the file.
        ((3 * MIB) as u64, MIB as u32, "OFFSET_INVALID"),
        ((4 * MIB) as u64, MIB as u32, "OFFSET_INVALID"),
        (1, 1024, "OFFSET_INVALID"),
        (1000, 1024, "OFFSET_INVALID"),
        (0, 1000, "LIMIT_INVALID"),
        // Multiples of 1 KiB that do not divide 1 MiB, as a resume inside a part once asked.
        (1024, (MIB - 1024) as u32, "LIMIT_INVALID"),
        (0, 3072, "LIMIT_INVALID"),
        (0, (MIB + 1024) as u32, "LIMIT_INVALID"),
        ((MIB - 1024) as u64, 2048, "LIMIT_INVALID"),
    ];
    for (offset, limit, name) in cases {
        let answer = world.fake.get_part(location, *dc, offset, limit).await;
        assert_eq!(answer, Err(refused(name)), "offset {offset} limit {limit}");
    }
    let wrong_dc = world.fake.get_part(location, dc + 1, 0, MIB as u32).await;
    assert_eq!(wrong_dc, Err(TelegramError::FileMigrate(*dc)));
    let valid = world
        .fake
        .get_part(location, *dc, (MIB - 1024) as u64, 1024)
        .await
        .unwrap();
    assert_eq!(valid[..], world.bytes[MIB - 1024..MIB]);
}

#[tokio::test(start_paused = true)]
async fn the_reorder_window_bounds_parts_in_flight() {
    let world = one_file(10 * MIB).await;
    // Later parts answer sooner than earlier ones, so answers arrive out of order and must wait.
    for part in 0..10u64 {
        world.fake.inject(Fault::at_part(
            part,
            FaultKind::Delay(Duration::from_millis(100 * (10 - part))),
        ));
    }
    let downloader = downloader(&world.fake, 4);
    let window = downloader.window(&world.message, 0);
    assert_eq!(window, 4);
    let received = collect(downloader.stream(&world.message, 0).unwrap()).await;
    assert!(received == world.bytes);
    assert!(
        world.fake.max_in_flight() <= window,
        "{} parts were in flight at once, the window is {window}",
        world.fake.max_in_flight()
    );
}

#[tokio::test(start_paused = true)]
async fn a_stalled_consumer_stops_new_requests() {
    let world = one_file(20 * MIB).await;
    let downloader = downloader(&world.fake, 4);
    let window = downloader.window(&world.message, 0);
    let mut stream = downloader.stream(&world.message, 0).unwrap();

    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.len(), MIB);
    // The consumer stops reading; time passes; nothing beyond the window is requested.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let requested = world.fake.part_calls().len();
    assert!(
        requested <= window + 1,
        "{requested} parts requested while the consumer held one; window {window}"
    );
    drop(stream);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_stream_stops_new_requests() {
    let world = one_file(10 * MIB).await;
    world.fake.inject(Fault {
        when: When::Always,
        kind: FaultKind::Delay(Duration::from_secs(30)),
        times: u32::MAX,
    });
    let mut stream = downloader(&world.fake, 4).stream(&world.message, 0).unwrap();

    let nothing_yet = tokio::time::timeout(Duration::from_secs(1), stream.next()).await;
    assert!(nothing_yet.is_err(), "every part is slow");
    assert_eq!(world.fake.in_flight(), 4);

    drop(stream);
    // The requests already sent cannot be called back (grammers sends no cancellation): they
    // run until their answers arrive, 30 s after they were sent, and no new one starts.
    let requested = world.fake.part_calls().len();
    assert_eq!(requested, 4);
    tokio::time::sleep(Duration::from_secs(28)).await;
    assert_eq!(world.fake.in_flight(), 4, "the answers are still on their way");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(world.fake.in_flight(), 0, "part requests outlived their answers");
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(world.fake.part_calls().len(), requested, "requests after cancel");
}

/// A downloader with a stall timeout of `timeout` seconds, over a fake whose connection
/// carries 0.5 MiB/s: a part every 2 s.
fn slow_link(world: &crate::support::OneFile, threads: usize, timeout: u64) -> Downloader {
    world.fake.limit_bandwidth(MIB as u64 / 2);
    let options = DownloadOptions {
        part_timeout: Duration::from_secs(timeout),
        ..DownloadOptions::new(threads)
    };
    Downloader::new(world.fake.clone(), options)
}

#[tokio::test(start_paused = true)]
async fn a_slow_steady_connection_never_trips_the_stall_timeout() {
    // Arrange: 8 parts in flight take 16 s to come back over the 0.5 MiB/s connection, longer
    // than the timeout, but a part arrives every 2 s.
    let world = one_file(24 * MIB).await;
    let downloader = slow_link(&world, 8, 10);

    // Act
    let started = Instant::now();
    let received = collect(downloader.stream(&world.message, 0).unwrap()).await;

    // Assert: no part timed out and was asked for again.
    assert!(received == world.bytes);
    assert_eq!(world.fake.part_calls().len(), 24, "parts were asked for again");
    assert!(
        started.elapsed() <= Duration::from_secs(49),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn downloads_sharing_a_slow_connection_never_trip_the_stall_timeout() {
    // Arrange: three downloads with windows of 16 parts over one 0.5 MiB/s connection: 48 MiB,
    // 96 s of answers, if every window were sent at once. The Downloader keeps 8 in flight (16 s
    // of answers, within the 20 s timeout) and the rest wait to be sent.
    let world = one_file(20 * MIB).await;
    let downloader = slow_link(&world, 16, 20);
    let (messages, expected) = three_files(&world, 20 * MIB).await;

    // Act
    let received = futures::future::join_all(
        messages
            .iter()
            .map(|message| collect(downloader.stream(message, 0).unwrap())),
    )
    .await;

    // Assert
    assert!(received == expected, "bytes differ");
    assert_eq!(world.fake.part_calls().len(), 60, "parts were asked for again");
    assert!(
        world.fake.max_in_flight() <= DownloadOptions::new(16).max_parts_in_flight_per_dc,
        "{} requests in flight at once",
        world.fake.max_in_flight()
    );
}

#[tokio::test(start_paused = true)]
async fn a_stalled_connection_trips_the_stall_timeout() {
    // Arrange: the connection stops for an hour after the first 3 parts, and again for every
    // request of the fourth.
    let world = one_file(10 * MIB).await;
    world
        .fake
        .inject(Fault::at_part(3, FaultKind::Delay(Duration::from_secs(3600))).times(u32::MAX));
    let downloader = slow_link(&world, 4, 10);
    let retries = downloader.options().disconnect_retries as usize;

    // Act
    let started = Instant::now();
    let (received, error) = drain(downloader.stream(&world.message, 0).unwrap()).await;

    // Assert: the download ends with a retryable stall, well before the hour, after asking for
    // the stalled part once and retrying it.
    assert!(received == world.bytes[..3 * MIB], "{} bytes", received.len());
    let error = error.expect("the download stalls");
    assert!(matches!(error, TelegramError::Disconnected(_)), "{error}");
    assert!(error.is_retryable());
    assert!(
        error.to_string().contains("no part of the file arrived for 10 s"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "{:?}",
        started.elapsed()
    );
    let asked = world
        .fake
        .part_calls()
        .iter()
        .filter(|call| call.offset == 3 * MIB as u64)
        .count();
    assert_eq!(asked, retries + 1);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_download_keeps_its_permits_until_its_answers_arrive() {
    // Arrange: a download with 8 parts in flight over the 0.5 MiB/s connection (16 s of
    // answers), cancelled after 1 s. Telegram still sends those 8 MiB.
    let world = one_file(24 * MIB).await;
    let downloader = slow_link(&world, 8, 20);
    let cap = downloader.options().max_parts_in_flight_per_dc;
    let mut cancelled = downloader.stream(&world.message, 0).unwrap();
    let nothing_yet = tokio::time::timeout(Duration::from_secs(1), cancelled.next()).await;
    assert!(nothing_yet.is_err(), "no part arrives within 1 s");
    assert_eq!(world.fake.part_calls().len(), cap);
    drop(cancelled);

    // Act: the next download starts at once.
    let received = collect(downloader.stream(&world.message, 0).unwrap()).await;

    // Assert: its requests waited for the abandoned answers to arrive instead of queueing
    // behind them, so the connection never carried more than the cap.
    assert!(received == world.bytes);
    assert!(
        world.fake.max_on_link() <= cap,
        "{} requests on the connection at once, the cap is {cap}",
        world.fake.max_on_link()
    );
    assert_eq!(
        world.fake.part_calls().len(),
        cap + 24,
        "parts were asked for again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_part_queued_behind_other_downloads_does_not_stall_while_the_connection_delivers() {
    // Arrange: three downloads with windows of 4 over one 0.5 MiB/s connection, 8 requests in
    // flight on it: a part arrives every 2 s, well within the 10 s timeout, but a part sent
    // behind 7 of the other downloads' waits 16 s, with none of its own download arriving.
    let world = one_file(12 * MIB).await;
    let downloader = slow_link(&world, 4, 10);
    let (messages, expected) = three_files(&world, 12 * MIB).await;

    // Act
    let received = futures::future::join_all(messages.iter().map(|message| {
        let stream = downloader.stream(message, 0).unwrap();
        async move {
            let (bytes, error) = drain(stream).await;
            assert!(error.is_none(), "the download failed: {error:?}");
            bytes
        }
    }))
    .await;

    // Assert: every download completed, and no part timed out and was asked for again.
    assert!(received == expected, "bytes differ");
    assert_eq!(world.fake.part_calls().len(), 36, "parts were asked for again");
}

#[tokio::test(start_paused = true)]
async fn answers_from_another_data_centre_do_not_hide_a_stall() {
    // Arrange: a download resumed past part 3 streams steadily from data centre 2 for 120 s,
    // while another file's connection to data centre 4 stops for an hour at its part 3.
    let world = one_file(64 * MIB).await;
    world
        .fake
        .inject(Fault::at_part(3, FaultKind::Delay(Duration::from_secs(3600))).times(u32::MAX));
    let downloader = slow_link(&world, 4, 10);
    let stalled_bytes = contents(10 * MIB, 4);
    let stalled_file = world.fake.add_file(stalled_bytes.clone(), 4);
    world
        .fake
        .add_message(CHANNEL_ID, FakeMessage::document(2, stalled_file, None, None));
    let stalled = world
        .fake
        .resolve(&link(&format!("https://t.me/{CHANNEL}/2")))
        .await
        .unwrap()
        .remove(0);
    let resume = 4 * MIB;
    let started = Instant::now();

    // Act
    let (steady, (received, error, stalled_after)) = tokio::join!(
        collect(downloader.stream(&world.message, resume as u64).unwrap()),
        async {
            let (received, error) = drain(downloader.stream(&stalled, 0).unwrap()).await;
            (received, error, started.elapsed())
        },
    );

    // Assert: the steady download completed; the other stalled on its own data centre's
    // silence, long before the steady one ended.
    assert!(steady == world.bytes[resume..], "bytes differ");
    assert!(received == stalled_bytes[..3 * MIB], "{} bytes", received.len());
    let error = error.expect("the download on the silent data centre stalls");
    assert!(
        error.to_string().contains("no part of the file arrived for 10 s"),
        "{error}"
    );
    assert!(stalled_after < Duration::from_secs(100), "{stalled_after:?}");
}

/// `world`'s file and two more of `size` bytes in the same channel, on its data centre: the
/// messages to download and the bytes each must yield, in the same order.
async fn three_files(world: &OneFile, size: usize) -> (Vec<MediaMessage>, Vec<Vec<u8>>) {
    let mut messages = vec![world.message.clone()];
    let mut expected = vec![world.bytes.clone()];
    for id in 2..=3 {
        let bytes = contents(size, id as u64);
        let file = world.fake.add_file(bytes.clone(), HOME_DC);
        world
            .fake
            .add_message(CHANNEL_ID, FakeMessage::document(id, file, None, None));
        let found = world
            .fake
            .resolve(&link(&format!("https://t.me/{CHANNEL}/{id}")))
            .await
            .unwrap();
        messages.extend(found);
        expected.push(bytes);
    }
    (messages, expected)
}
