//! The Zoom emulator over HTTP: contracts E2–E4 as a client sees them.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

use chatlake_emulator::zoom::{ACCOUNT_ID, CLIENT_ID, CLIENT_SECRET, data};
use chatlake_emulator::{Emulator, EmulatorConfig};
use chrono::{Datelike, Months, Utc};
use serde_json::Value;

async fn start(faults: &str) -> Emulator {
    let config = EmulatorConfig {
        faults: faults.parse().unwrap(),
        ..EmulatorConfig::default()
    };
    Emulator::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

async fn token(em: &Emulator, secret: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!(
            "{}/oauth/token?grant_type=account_credentials&account_id={ACCOUNT_ID}",
            em.base_url()
        ))
        .basic_auth(CLIENT_ID, Some(secret))
        .send()
        .await
        .unwrap()
}

async fn access_token(em: &Emulator) -> String {
    let body: Value = token(em, CLIENT_SECRET).await.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 3599);
    body["access_token"].as_str().unwrap().to_string()
}

async fn get(
    em: &Emulator,
    token: &str,
    path_and_query: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}/v2{path_and_query}", em.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn tokens_need_the_right_client_credentials() {
    let em = start("").await;
    let bad = token(&em, "wrong").await;
    assert_eq!(bad.status().as_u16(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    let (status, _, body) = get(&em, "nope", "/users").await;
    assert_eq!((status, body["code"].as_i64()), (401, Some(124)));
}

#[tokio::test]
async fn user_messages_page_newest_first_with_both_sender_fields() {
    let em = start("").await;
    let t = access_token(&em).await;
    let q = "/chat/users/zu00/messages?to_channel=ch-eng&from=2026-01-01T00:00:00Z&to=2026-01-01T23:59:59Z&page_size=500&include_deleted_and_edited_message=true";
    let (status, _, page) = get(&em, &t, q).await;
    assert_eq!(status, 200);
    assert_eq!(page["page_size"], 50, "clamped");
    let msgs = page["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 50);
    let ts: Vec<i64> = msgs
        .iter()
        .map(|m| m["timestamp"].as_i64().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] >= w[1]), "newest first");
    assert_eq!(msgs[0]["sender_member_id"], msgs[0]["send_member_id"]);
    assert!(msgs[0]["status"].is_string());
    let token = page["next_page_token"].as_str().unwrap();
    assert!(!token.is_empty());

    // The token belongs to its query: another query gets 400 code 300.
    let (status, _, body) = get(
        &em,
        &t,
        &format!(
            "{}&next_page_token={token}",
            q.replace("ch-eng", "ch-general")
        ),
    )
    .await;
    assert_eq!((status, body["code"].as_i64()), (400, Some(300)));
    // Paging to the end gives the dataset.
    let mut all = msgs.len();
    let mut next = token.to_string();
    while !next.is_empty() {
        let (status, _, page) = get(&em, &t, &format!("{q}&next_page_token={next}")).await;
        assert_eq!(status, 200);
        all += page["messages"].as_array().unwrap().len();
        next = page["next_page_token"].as_str().unwrap().to_string();
    }
    let conv = data::conversations()
        .into_iter()
        .find(|c| c.key() == "ch-eng")
        .unwrap();
    let from = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .timestamp_millis();
    let want = data::conversation_messages(42, 1.0, &conv, from, from + 86_400_000 - 1, true);
    assert_eq!(all, want.len());
}

#[tokio::test]
async fn user_message_errors_follow_the_contract() {
    let em = start("").await;
    let t = access_token(&em).await;
    let (s, _, b) = get(&em, &t, "/chat/users/zu00/messages").await;
    assert_eq!(
        (s, b["code"].as_i64()),
        (400, Some(300)),
        "a target is required"
    );
    let (s, _, b) = get(&em, &t, "/chat/users/me/messages?to_channel=ch-eng").await;
    assert_eq!(s, 400, "{b}");
    let (s, _, b) = get(&em, &t, "/chat/users/nobody/messages?to_channel=ch-eng").await;
    assert_eq!((s, b["code"].as_i64()), (404, Some(1001)));
    let (s, _, b) = get(&em, &t, "/chat/users/zu00/messages?to_channel=ch-missing").await;
    assert_eq!((s, b["code"].as_i64()), (404, Some(3001)));
    let (s, _, _) = get(&em, &t, "/chat/users/zu00/messages?search_type=message&search_key=x&include_deleted_and_edited_message=true").await;
    assert_eq!(s, 400, "search excludes edited/deleted");
}

#[tokio::test]
async fn the_report_checks_its_range_and_splits_versions() {
    let em = start("").await;
    let t = access_token(&em).await;
    let today = Utc::now().date_naive();
    let old = today.checked_sub_months(Months::new(8)).unwrap();
    let (s, _, b) = get(
        &em,
        &t,
        &format!("/report/chat/sessions?from={old}&to={old}"),
    )
    .await;
    assert_eq!((s, b["code"].as_i64()), (400, Some(300)));
    let first = today.with_day(1).unwrap();
    let long = first.checked_sub_months(Months::new(2)).unwrap();
    let (s, _, _) = get(
        &em,
        &t,
        &format!("/report/chat/sessions?from={long}&to={today}"),
    )
    .await;
    assert_eq!(s, 400, "over a month");
    let (s, _, b) = get(
        &em,
        &t,
        &format!("/report/chat/sessions?from={first}&to={today}"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        b["sessions"].as_array().unwrap().len(),
        data::sessions().len()
    );
    let (s, _, b) = get(
        &em,
        &t,
        &format!("/report/chat/sessions/sess-ch-general?from={first}&to={today}&page_size=100&include_fields=edited_messages,deleted_messages&include_bot_message=true"),
    )
    .await;
    assert_eq!(s, 200);
    assert!(b["edited_messages"].is_array() && b["deleted_messages"].is_array());
    let (_, _, plain) = get(
        &em,
        &t,
        &format!("/report/chat/sessions/sess-ch-general?from={first}&to={today}"),
    )
    .await;
    assert!(plain.get("edited_messages").is_none());
    assert_eq!(em.stats().zoom.heavy_requests, 3);
}

#[tokio::test]
async fn rate_limits_answer_429_with_headers() {
    let em = start("zoom.medium_per_s=2").await;
    let t = access_token(&em).await;
    let mut limited = None;
    for _ in 0..5 {
        let (s, h, b) = get(&em, &t, "/users").await;
        if s == 429 {
            limited = Some((h, b));
            break;
        }
    }
    let (h, b) = limited.expect("the bucket empties");
    assert_eq!(b["code"], 429);
    assert_eq!(h["x-ratelimit-type"], "QPS");
    assert_eq!(h["x-ratelimit-category"], "Medium");
    assert_eq!(h["x-ratelimit-reset"], "1");
    assert_eq!(em.stats().zoom.rate_limited, 1);

    let em = start("zoom.daily_limit=1").await;
    let t = access_token(&em).await;
    let (s, h, _) = get(&em, &t, "/users").await;
    assert_eq!(s, 429);
    assert_eq!(h["x-ratelimit-type"], "Daily-limit");
    assert!(h.contains_key("retry-after"));
}

#[tokio::test]
async fn a_revoked_token_answers_401_code_124() {
    let em = start("zoom.token_invalidate_once=2").await;
    let t = access_token(&em).await;
    assert_eq!(get(&em, &t, "/users").await.0, 200);
    let (s, _, b) = get(&em, &t, "/users").await;
    assert_eq!((s, b["code"].as_i64()), (401, Some(124)));
    let fresh = access_token(&em).await;
    assert_eq!(get(&em, &fresh, "/users").await.0, 200);
}

#[tokio::test]
async fn users_are_listed_one_status_at_a_time_and_people_who_left_keep_their_chats() {
    let em = start("").await;
    let t = access_token(&em).await;
    let ids = |body: &Value| -> Vec<String> {
        body["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_string())
            .collect()
    };
    // Zoom's default is the active users only.
    let (s, _, active) = get(&em, &t, "/users?page_size=300").await;
    assert_eq!(s, 200);
    assert_eq!(ids(&active).len(), data::USER_COUNT);
    assert!(
        active["users"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["status"] == "active")
    );
    let (_, _, same) = get(&em, &t, "/users?status=active&page_size=300").await;
    assert_eq!(ids(&same), ids(&active));
    let (s, _, inactive) = get(&em, &t, "/users?status=inactive").await;
    assert_eq!(s, 200);
    assert_eq!(ids(&inactive), ["zu06", "zu07"]);
    assert!(
        inactive["users"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["status"] == "inactive")
    );
    let (_, _, pending) = get(&em, &t, "/users?status=pending").await;
    assert_eq!(ids(&pending), ["zu08"]);
    let (s, _, b) = get(&em, &t, "/users?status=gone").await;
    assert_eq!((s, b["code"].as_i64()), (400, Some(300)));

    // A deactivated user's 1:1, which no active user's listing shows, has messages.
    let (s, _, sessions) = get(&em, &t, "/chat/users/zu06/sessions?type=1:1").await;
    assert_eq!(s, 200);
    let peers: Vec<&str> = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["peer_contact_user_id"].as_str().unwrap())
        .collect();
    assert_eq!(peers, ["zu07"]);
    for active_user in ["zu00", "zu05"] {
        let (_, _, b) = get(
            &em,
            &t,
            &format!("/chat/users/{active_user}/sessions?type=1:1"),
        )
        .await;
        assert!(
            b["sessions"].as_array().unwrap().iter().all(|x| x["peer_contact_user_id"] != "zu06"
                && x["peer_contact_user_id"] != "zu07"),
            "{b}"
        );
    }
    let (s, _, page) = get(
        &em,
        &t,
        "/chat/users/zu06/messages?to_contact=user07@example.com&from=2026-01-01T00:00:00Z&to=2026-01-02T23:59:59Z&page_size=50",
    )
    .await;
    assert_eq!(s, 200, "{page}");
    let messages = page["messages"].as_array().unwrap();
    assert!(!messages.is_empty());
    assert!(
        messages
            .iter()
            .all(|m| m["sender"] == "user06@example.com" || m["sender"] == "user07@example.com"),
        "{page}"
    );
}
