//! Why the daemon runs croner under its own timer instead of tokio-cron-scheduler 0.15, shown
//! on the library itself: a time-zone job's ticks after the first are computed with the UTC
//! offset frozen when the job was created, so across a daylight-saving change they fire an
//! hour off. The same pattern through `Schedule::next_after` gives the right instant.
//!
//! Evidence about another crate, not a check of this one: both tests are `#[ignore]`d, so that
//! CI does not fail the day tokio-cron-scheduler is fixed, and run on demand with
//! `cargo test --test it cron_choice -- --ignored` (the first waits for a real job to fire,
//! about 3 s). The daemon's own DST behaviour is tested in `schedule::tests`.

use std::time::Duration;

use backfill_reporter::config::schedule::Schedule;
use chrono::{Datelike, Offset, Timelike, Utc};
use chrono_tz::Europe::Berlin;
use tokio_cron_scheduler::{Job, JobScheduler};

#[tokio::test]
#[ignore = "evidence about tokio-cron-scheduler 0.15 (an hour off after a DST change), not a check of this crate; it waits for a real job to fire"]
async fn tokio_cron_scheduler_fires_an_hour_off_after_a_dst_change_and_ours_does_not() {
    // A pattern that fires 3 s from now and next on the same day and time in a month on the
    // other side of a Berlin DST change (January or July: both have every day up to 31).
    let fire = (Utc::now() + chrono::Duration::seconds(3)).with_timezone(&Berlin);
    let winter = fire.offset().fix().local_minus_utc() == 3600;
    let other_month = if winter { 7 } else { 1 };
    let pattern = format!(
        "{} {} {} {} {},{} *",
        fire.second(),
        fire.minute(),
        fire.hour(),
        fire.day(),
        fire.month(),
        other_month
    );
    let mut scheduler = JobScheduler::new().await.unwrap();
    let job = Job::new_async_tz(pattern.as_str(), Berlin, |_, _| Box::pin(async {})).unwrap();
    let id = scheduler.add(job).await.unwrap();
    scheduler.start().await.unwrap();
    let first = scheduler
        .next_tick_for_job(id)
        .await
        .unwrap()
        .expect("a first tick");
    // Once it has fired, its next tick moves on; poll for that (its ticker wakes every 500 ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let theirs = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let next = scheduler
            .next_tick_for_job(id)
            .await
            .unwrap()
            .expect("a next tick");
        if next != first {
            break next;
        }
        assert!(std::time::Instant::now() < deadline, "the job never fired");
    };
    scheduler.shutdown().await.unwrap();

    let ours = Schedule::parse(&pattern)
        .unwrap()
        .next_after(Utc::now(), chrono_tz::Europe::Berlin)
        .unwrap();

    let local = ours.with_timezone(&Berlin);
    println!(
        "pattern {pattern:?} in Europe/Berlin, after its first firing at {}: tokio-cron-scheduler's \
         next tick {}, croner's (Schedule::next_after) {}",
        first.with_timezone(&Berlin).to_rfc3339(),
        theirs.with_timezone(&Berlin).to_rfc3339(),
        local.to_rfc3339()
    );
    assert_eq!(
        (local.hour(), local.minute(), local.second()),
        (fire.hour(), fire.minute(), fire.second())
    );
    assert_eq!(
        (theirs - ours).num_minutes().abs(),
        60,
        "theirs {theirs}, ours {ours}"
    );
}

#[test]
#[ignore = "evidence about tokio-cron-scheduler 0.15 (no five-field cron), not a check of this crate"]
fn tokio_cron_scheduler_refuses_the_standard_five_field_form() {
    assert!(Job::new_async("*/5 * * * *", |_, _| Box::pin(async {})).is_err());
    assert!(Schedule::parse("*/5 * * * *").is_ok());
}
