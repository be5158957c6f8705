//! The Qlara emulator over HTTP (contract E5): auth, the 202 body, the exports list in both
//! shapes, the signed URL without a key, expiry and regeneration, and the injected faults.

#![allow(clippy::unwrap_used)]

use chatlake_emulator::qlara::{API_KEY, API_PREFIX, data};
use chatlake_emulator::{Emulator, EmulatorConfig};
use serde_json::{Value, json};

async fn start(faults: &str) -> (Emulator, reqwest::Client, String) {
    let em = Emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        EmulatorConfig {
            faults: faults.parse().unwrap(),
            ..EmulatorConfig::default()
        },
    )
    .await
    .unwrap();
    let api = format!("{}{API_PREFIX}", em.base_url());
    (em, reqwest::Client::new(), api)
}

async fn submit(c: &reqwest::Client, api: &str) -> reqwest::Response {
    c.post(format!("{api}/messages/history/export"))
        .header("x-API-key", API_KEY)
        .json(&json!({"startDateTime": "2025-01-01T00:00:00+01:00",
                      "endDateTime": "2025-01-01T23:59:59+01:00"}))
        .send()
        .await
        .unwrap()
}

async fn list(c: &reqwest::Client, api: &str) -> Value {
    c.get(format!("{api}/exports?page=0&limit=10"))
        .header("X-Api-Key", API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn link(c: &reqwest::Client, api: &str, id: &str) -> reqwest::Response {
    c.get(format!("{api}/exports/{id}"))
        .header("X-Api-Key", API_KEY)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_whole_flow_and_the_key_never_needed_on_the_signed_url() {
    let (em, c, api) = start("qlara.job_polls=1").await;
    let r = submit(&c, &api).await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "PENDING");
    let id = body["exportId"].as_str().unwrap().to_string();
    assert_eq!(link(&c, &api, &id).await.status(), 400, "not ready yet");

    let first = list(&c, &api).await;
    assert_eq!(first[0]["status"], "PENDING");
    assert_eq!(first[0]["type"], "MESSAGE_HISTORY");
    let second = list(&c, &api).await;
    assert_eq!(second[0]["status"], "COMPLETED");
    assert_eq!(second[0]["isAvailableForDownload"], true);

    let l: Value = link(&c, &api, &id).await.json().await.unwrap();
    let url = l["downloadUrl"].as_str().unwrap();
    assert!(url.contains("/signed/"));
    let file = c.get(url).send().await.unwrap();
    assert_eq!(file.status(), 200);
    assert!(
        file.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = file.bytes().await.unwrap();
    let start = chrono::DateTime::parse_from_rfc3339("2025-01-01T00:00:00+01:00")
        .unwrap()
        .timestamp();
    let rows = data::export_rows_secs(42, 1.0, start, start + 86_399, None, None);
    assert_eq!(text.as_ref(), data::export_csv(&rows).as_slice());

    // A request that carries the key is served but counted.
    c.get(url)
        .header("X-Api-Key", API_KEY)
        .send()
        .await
        .unwrap();
    let stats = em.stats().qlara;
    assert_eq!(stats.signed_url_requests, 2);
    assert_eq!(stats.signed_url_requests_with_key, 1);
    assert_eq!(stats.exports_submitted, 1);
}

#[tokio::test]
async fn auth_and_bad_bodies() {
    let (em, c, api) = start("").await;
    let r = c.get(format!("{api}/exports")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], 401);
    assert!(body["path"].as_str().unwrap().ends_with("/exports"));
    let basic = c
        .get(format!("{api}/exports"))
        .basic_auth(
            chatlake_emulator::qlara::USERNAME,
            Some(chatlake_emulator::qlara::PASSWORD),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200);
    let bad = c
        .post(format!("{api}/messages/history/export"))
        .header("X-Api-Key", API_KEY)
        .json(&json!({"startDateTime": "2025-01-01T00:00:00", "endDateTime": "2025-01-02T00:00:00+01:00"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "no offset");
    assert_eq!(link(&c, &api, "nope").await.status(), 404);
    assert_eq!(em.stats().qlara.unauthorized, 1);
}

#[tokio::test]
async fn an_expired_url_is_403_the_job_expires_and_regenerates() {
    let (em, c, api) = start("qlara.url_expiry=1,qlara.list_shape=page").await;
    let id: Value = submit(&c, &api).await.json().await.unwrap();
    let id = id["exportId"].as_str().unwrap().to_string();
    assert_eq!(list(&c, &api).await["content"][0]["status"], "COMPLETED");
    let l: Value = link(&c, &api, &id).await.json().await.unwrap();
    let r = c
        .get(l["downloadUrl"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let page = list(&c, &api).await;
    assert_eq!(page["content"][0]["status"], "EXPIRED");
    assert_eq!(page["content"][0]["isAvailableForDownload"], false);
    assert_eq!(page["totalElements"], 1);
    assert_eq!(link(&c, &api, &id).await.status(), 400);
    let r = c
        .post(format!("{api}/exports/{id}"))
        .header("X-Api-Key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(list(&c, &api).await["content"][0]["status"], "COMPLETED");
    let stats = em.stats().qlara;
    assert_eq!(stats.regenerations, 1);
    assert_eq!(stats.expired_url_requests, 1);
}

#[tokio::test]
async fn rate_limits_server_errors_and_failed_jobs() {
    let (em, c, api) =
        start("qlara.rate_limit=2,qlara.retry_after_s=12,qlara.server_error=2,qlara.fail_job=1")
            .await;
    let r = submit(&c, &api).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "12");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["retryAfter"], 12);
    assert_eq!(submit(&c, &api).await.status(), 500);
    assert_eq!(submit(&c, &api).await.status(), 429);
    assert_eq!(submit(&c, &api).await.status(), 202);
    // The list is an API request like any other: it meets the faults too.
    let mut l = list(&c, &api).await;
    for _ in 0..4 {
        if l.is_array() {
            break;
        }
        l = list(&c, &api).await;
    }
    assert_eq!(l[0]["status"], "FAILED");
    let stats = em.stats().qlara;
    assert!(
        stats.rate_limited >= 2 && stats.server_errors >= 1,
        "{stats:?}"
    );
    assert_eq!(stats.failed_jobs, 1);
}

#[test]
fn fault_keys_parse_and_bad_ones_name_the_item() {
    let f: chatlake_emulator::Faults = "qlara.job_polls=3,qlara.slow_jobs_ms=5,qlara.url_ttl_s=0"
        .parse()
        .unwrap();
    assert_eq!(f.qlara.job_polls, 3);
    for bad in ["qlara.fail_job=0", "qlara.nope=1", "qlara.list_shape=x"] {
        let e = bad.parse::<chatlake_emulator::Faults>().unwrap_err();
        assert!(e.contains(bad), "{e}");
    }
}

#[tokio::test]
async fn the_real_per_second_limit_answers_429_with_retry_after() {
    let (em, c, api) = start("qlara.rate_limit_per_s=3").await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        let r = c
            .get(format!("{api}/exports"))
            .header("X-Api-Key", API_KEY)
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
        if r.status() == 429 {
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["retryAfter"], 1);
        }
    }
    assert_eq!(codes, [200, 200, 200, 429, 429]);
    assert_eq!(em.stats().qlara.limit_exceeded, 2);
    assert_eq!(
        em.stats().qlara.rate_limited,
        0,
        "the fault is another counter"
    );
}
