//! README says what the provider's pages say, marks what is this project's reading of them,
//! and gives its evidence where it made a choice (croner over tokio-cron-scheduler).

use backfill_reporter::provider::Rejection;

const README: &str = include_str!("../../README.md");

#[test]
fn readme_and_the_advice_claim_no_more_than_the_providers_pages() {
    for claim in [
        "routes OTP traffic by the backfill rate",
        "keeps the last value it gets",
        "allow-list in the provider's console",
    ] {
        assert!(!README.contains(claim), "README claims {claim:?}");
    }
    // The pages' own words, and the readings marked as such.
    assert!(README.contains("ip限制"));
    assert!(README.contains("回填率回执接口"));
    assert!(README.matches("*This project's reading*").count() >= 2);
    let advice = Rejection::IpRestricted.advice();
    assert!(advice.contains("ip限制"), "{advice}");
    assert!(!advice.contains("allow-list"), "{advice}");
}

#[test]
fn readme_gives_the_evidence_for_croner_over_tokio_cron_scheduler() {
    let at = README
        .find("rather than run by tokio-cron-scheduler")
        .expect("a paragraph on the choice");
    let paragraph = &README[at..];
    assert!(paragraph.contains("tests/it/cron_choice.rs"));
    assert!(paragraph.contains("an hour off"));
    assert!(
        paragraph.contains("tokio-cron-scheduler's next tick"),
        "what the test printed"
    );
}
