//! `jarvis init` and the key policy of an existing KMS key, against the local KMS server:
//! jarvis's statements are merged by `Sid` and the others kept; `--force-policy` replaces the
//! whole policy.

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};

const PRINCIPAL: &str = "arn:aws:iam::123456789012:role/jarvis-app";

fn jarvis(dir: &Path, args: &[&str], endpoint: &str) -> Output {
    let vars = [("AWS_ENDPOINT_URL_KMS", endpoint)];
    let output = jarvis_tests::binary::command(env!("CARGO_BIN_EXE_jarvis"), dir, args, &vars)
        .output()
        .expect("jarvis runs");
    jarvis_tests::binary::assert_success(&output, format_args!("jarvis {args:?}"));
    output
}

async fn policy(client: &aws_sdk_kms::Client, key_id: &str) -> Value {
    let out = client
        .get_key_policy()
        .key_id(key_id)
        .policy_name("default")
        .send()
        .await
        .expect("get policy");
    serde_json::from_str(out.policy().expect("policy")).expect("policy json")
}

async fn put_policy(client: &aws_sdk_kms::Client, key_id: &str, policy: &Value) {
    client
        .put_key_policy()
        .key_id(key_id)
        .policy_name("default")
        .policy(policy.to_string())
        .send()
        .await
        .expect("put policy");
}

fn sids(policy: &Value) -> Vec<&str> {
    policy["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .map(|s| s["Sid"].as_str().unwrap_or("(no Sid)"))
        .collect()
}

#[tokio::test]
async fn init_keeps_foreign_statements_and_force_policy_replaces_them() {
    let endpoint = jarvis_tests::kms_endpoint();
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .load()
        .await;
    let client = aws_sdk_kms::Client::new(&shared);
    let dir = tempfile::tempdir().expect("tempdir");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let env = format!("policy-{}-{nanos}", std::process::id());
    let init = ["init", "--provider", "aws-kms", "--env", &env];
    let with_principal = [&init[..], &["--principal", PRINCIPAL]].concat();

    let created = jarvis(dir.path(), &with_principal, &endpoint);
    let key_id = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    let ours = policy(&client, &key_id).await;
    assert_eq!(
        sids(&ours),
        ["JarvisKeyAdministration", "JarvisApplicationUse"]
    );

    // The account adds a statement of its own and someone widens jarvis's application
    // statement by hand.
    let auditors = json!({
        "Sid": "Auditors",
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:role/auditor"},
        "Action": ["kms:DescribeKey", "kms:GetKeyPolicy"],
        "Resource": "*",
    });
    let mut edited = ours.clone();
    let statements = edited["Statement"].as_array_mut().expect("statements");
    statements[1]["Action"] = json!("kms:*");
    statements.insert(0, auditors.clone());
    put_policy(&client, &key_id, &edited).await;

    let merged = jarvis(dir.path(), &with_principal, &endpoint);
    let notes = String::from_utf8_lossy(&merged.stderr);
    assert!(notes.contains("1 other statements kept"), "{notes}");
    let after = policy(&client, &key_id).await;
    assert_eq!(
        sids(&after),
        [
            "Auditors",
            "JarvisKeyAdministration",
            "JarvisApplicationUse"
        ]
    );
    assert_eq!(after["Statement"][0], auditors, "kept as it was");
    assert_eq!(
        after["Statement"][2], ours["Statement"][1],
        "jarvis's statement restored"
    );
    // A second run changes nothing.
    let again = jarvis(dir.path(), &with_principal, &endpoint);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("nothing changed"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // Without --principal the application statement stays too.
    let forgot = jarvis(dir.path(), &init, &endpoint);
    assert!(
        String::from_utf8_lossy(&forgot.stderr).contains("statement is kept"),
        "{}",
        String::from_utf8_lossy(&forgot.stderr)
    );
    assert_eq!(policy(&client, &key_id).await, after);

    // --force-policy: jarvis's statements alone.
    let forced = [&with_principal[..], &["--force-policy"]].concat();
    jarvis(dir.path(), &forced, &endpoint);
    let replaced = policy(&client, &key_id).await;
    assert_eq!(
        sids(&replaced),
        ["JarvisKeyAdministration", "JarvisApplicationUse"]
    );
    assert_eq!(replaced["Statement"], ours["Statement"]);
}
