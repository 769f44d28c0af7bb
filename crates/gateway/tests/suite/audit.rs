//! The audit log (`--audit-log`): one JSON line per API request, written once its response has
//! gone out whole (a stream's end included): who, route, model, a hash of the session, the
//! upstream's token counts, status and duration; never content, a session id or a secret.

use std::time::Duration;

use crate::common::{body, Gateway};
use serde_json::{json, Value};

const TENANT: &str = "sk-ant-oat01-audited.tenant";

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

#[tokio::test]
async fn every_api_request_gets_one_line_with_who_what_and_how_much_and_no_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let gw = Gateway::builder()
        .args(&["--audit-log", path.to_str().expect("utf-8")])
        .start()
        .await;
    let mut plain = body("marker-audit-secret-prompt");
    plain["session_id"] = json!("private-conversation-name");
    assert_eq!(gw.messages(TENANT, plain).await.status(), 200);
    let mut streamed = body("marker-audit-streamed");
    streamed["stream"] = json!(true);
    let res = gw.messages(TENANT, streamed).await;
    assert_eq!(res.status(), 200);
    res.text().await.expect("the whole stream");
    assert_eq!(
        gw.messages("sk-ant-oat01-invalid.token", body("marker-audit-401"))
            .await
            .status(),
        401
    );
    let (status, _) = gw
        .get_json_as(TENANT, "/v1/sessions/private-conversation-name")
        .await;
    assert_eq!(status, 200);

    let deadline = std::time::Instant::now() + crate::common::SETTLE;
    while lines(&path).len() < 4 {
        assert!(std::time::Instant::now() < deadline, "{:?}", lines(&path));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = lines(&path);
    assert_eq!(all.len(), 4, "{all:?}");
    let turns: Vec<&Value> = all
        .iter()
        .filter(|l| l["route"] == "/v1/messages" && l["status"] == 200)
        .collect();
    assert_eq!(turns.len(), 2, "{all:?}");
    for line in &turns {
        assert!(
            line["tenant"].as_str().is_some_and(|t| !t.is_empty()),
            "{line}"
        );
        assert_eq!(line["model"], "sonnet");
        assert!(
            line["input_tokens"].as_u64().is_some_and(|n| n > 0),
            "{line}"
        );
        assert!(
            line["output_tokens"].as_u64().is_some_and(|n| n > 0),
            "{line}"
        );
        assert_eq!(line["completed"], true, "{line}");
        assert!(
            line["session"].as_str().is_some_and(|s| s.len() == 36),
            "{line}"
        );
    }
    assert!(all
        .iter()
        .any(|l| l["status"] == 401 && l["tenant"].is_null()));
    assert!(all.iter().any(|l| l["route"] == "/v1/sessions/{id}"));
    let text = std::fs::read_to_string(&path).expect("read");
    for never in ["sk-ant", "marker-audit", "private-conversation-name"] {
        assert!(!text.contains(never), "{never} in the audit log: {text}");
    }
}
