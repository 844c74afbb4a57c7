//! KMS set-up: one master key per environment, idempotently.
//!
//! [`KmsConnection::ensure_key`] makes sure that the environment `ENV` (any name: `dev`,
//! `staging`, `production`) has a symmetric key with
//!
//! - the alias `alias/jarvis-ENV`;
//! - a key policy of two statements: `JarvisKeyAdministration` grants `kms:*` to the
//!   account's root principal (so IAM policies of the account govern the key and it can never
//!   be locked out), and, when an application principal is given, `JarvisApplicationUse`
//!   grants that principal only `kms:GenerateDataKey`, `kms:Decrypt`, `kms:ReEncrypt*` and
//!   `kms:DescribeKey`. Without a principal only the account's administrators hold the key,
//!   and the result says so;
//! - automatic rotation of its key material enabled.
//!
//! Each step first reads the current state and changes only what differs, so a second run
//! changes nothing and returns the same key id.
//!
//! # The key policy of an existing key
//!
//! A key policy is often shared: an account adds statements of its own (auditors, a backup
//! role, an organization-wide deny). [`KmsConnection::ensure_key`] therefore merges by
//! `Sid`: each jarvis statement replaces the statement of the same `Sid` where it stands, or
//! is appended, and every other statement is kept as it is, in its order. Without an
//! application principal, an existing `JarvisApplicationUse` statement is kept (so a run
//! that forgets the principal does not lock the application out), and the result says so.
//! [`KmsConnection::ensure_key_replacing_policy`] writes the policy of jarvis's statements
//! alone, dropping every other statement. A key created by the run gets jarvis's
//! statements alone (KMS's default policy of a new key is replaced).

use serde_json::{Value, json};

use super::{KmsConnection, call};
use crate::error::{Error, Result};

const ADMIN_SID: &str = "JarvisKeyAdministration";
const APP_SID: &str = "JarvisApplicationUse";
const POLICY_NAME: &str = "default";

/// The alias of an environment's master key: `alias/jarvis-<env>`.
pub fn alias_for(env: &str) -> Result<String> {
    let valid = !env.is_empty()
        && env.len() <= 200
        && env
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/'));
    if !valid {
        return Err(Error::Configuration(format!(
            "environment name `{env}` must be 1 to 200 characters of letters, digits, `-`, `_` or `/`"
        )));
    }
    Ok(format!("alias/jarvis-{env}"))
}

/// What [`KmsConnection::ensure_key`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KmsSetup {
    /// The key id.
    pub key_id: String,
    /// The key ARN.
    pub key_arn: String,
    /// The alias.
    pub alias: String,
    /// What changed, in order (empty when everything was in place).
    pub changes: Vec<String>,
    /// Things the operator should know (for example: no application principal).
    pub notes: Vec<String>,
}

/// The state of a master key, for diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KmsKeyState {
    /// The key id.
    pub key_id: String,
    /// The key ARN.
    pub key_arn: String,
    /// Whether the key is enabled.
    pub enabled: bool,
    /// KMS's key state (`Enabled`, `Disabled`, `PendingDeletion`, ...).
    pub key_state: String,
    /// Whether automatic rotation is on.
    pub rotation_enabled: bool,
    /// Aliases pointing at the key.
    pub aliases: Vec<String>,
    /// `Sid`s of the key policy's statements.
    pub policy_statements: Vec<String>,
    /// The key policy document.
    pub policy: Value,
}

/// How the key policy is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PolicyWrite {
    /// jarvis's statements merged by `Sid` into the current policy.
    Merge,
    /// The policy of jarvis's statements alone.
    Replace,
}

/// The key policy for a key in `account` (with its ARN `partition`).
fn policy(partition: &str, account: &str, principal: Option<&str>) -> Value {
    json!({
        "Version": "2012-10-17",
        "Id": "jarvis-crypt",
        "Statement": statements(partition, account, principal),
    })
}

/// `current` with `ours` merged in by `Sid` (see the module docs). A current policy without
/// a list of statements (unreadable, or none) becomes `ours` alone.
fn merged_policy(current: &Value, ours: Vec<Value>) -> Value {
    let existing = match current.get("Statement") {
        Some(Value::Array(list)) => list.clone(),
        // IAM accepts a single statement object in place of the list.
        Some(one @ Value::Object(_)) => vec![one.clone()],
        _ => {
            return json!({"Version": "2012-10-17", "Id": "jarvis-crypt", "Statement": ours});
        }
    };
    let mut merged = existing;
    for statement in ours {
        let sid = statement["Sid"].clone();
        match merged.iter().position(|s| s.get("Sid") == Some(&sid)) {
            Some(at) => {
                merged[at] = statement;
                // A Sid is unique in a valid policy; drop any later statement that repeats it.
                let mut seen = 0;
                merged.retain(|s| {
                    let ours = s.get("Sid") == Some(&sid);
                    seen += usize::from(ours);
                    !ours || seen == 1
                });
            }
            None => merged.push(statement),
        }
    }
    let mut out = current.clone();
    if let Some(fields) = out.as_object_mut() {
        fields
            .entry("Version")
            .or_insert_with(|| json!("2012-10-17"));
        fields.insert("Statement".to_owned(), Value::Array(merged));
    }
    out
}

/// The `Sid`s of a policy's statements.
fn statement_sids(policy: &Value) -> Vec<String> {
    let list = match policy.get("Statement") {
        Some(Value::Array(list)) => list.iter().collect(),
        Some(one @ Value::Object(_)) => vec![one],
        _ => Vec::new(),
    };
    list.into_iter()
        .map(|s| s["Sid"].as_str().unwrap_or("(no Sid)").to_owned())
        .collect()
}

/// jarvis's statements for a key in `account`.
fn statements(partition: &str, account: &str, principal: Option<&str>) -> Vec<Value> {
    let mut statements = vec![json!({
        "Sid": ADMIN_SID,
        "Effect": "Allow",
        "Principal": {"AWS": format!("arn:{partition}:iam::{account}:root")},
        "Action": "kms:*",
        "Resource": "*",
    })];
    if let Some(principal) = principal {
        statements.push(json!({
            "Sid": APP_SID,
            "Effect": "Allow",
            "Principal": {"AWS": principal},
            "Action": ["kms:GenerateDataKey", "kms:Decrypt", "kms:ReEncrypt*", "kms:DescribeKey"],
            "Resource": "*",
        }));
    }
    statements
}

/// (partition, account) of a key ARN `arn:PARTITION:kms:REGION:ACCOUNT:key/ID`.
fn arn_parts(arn: &str) -> Result<(&str, &str)> {
    let parts: Vec<&str> = arn.split(':').collect();
    match parts.as_slice() {
        ["arn", partition, "kms", _, account, _] => Ok((partition, account)),
        _ => Err(Error::Configuration(format!(
            "`{arn}` is not a KMS key ARN"
        ))),
    }
}

impl KmsConnection {
    /// Makes sure the environment's master key exists as the module docs describe; returns
    /// its id and what changed. Idempotent. The key policy of an existing key is merged by
    /// `Sid`: statements that are not jarvis's are kept.
    pub async fn ensure_key(&self, env: &str, principal: Option<&str>) -> Result<KmsSetup> {
        self.ensure_key_with(env, principal, PolicyWrite::Merge)
            .await
    }

    /// [`ensure_key`](Self::ensure_key), except that the key policy becomes jarvis's
    /// statements alone: every other statement of an existing key's policy is dropped.
    pub async fn ensure_key_replacing_policy(
        &self,
        env: &str,
        principal: Option<&str>,
    ) -> Result<KmsSetup> {
        self.ensure_key_with(env, principal, PolicyWrite::Replace)
            .await
    }

    async fn ensure_key_with(
        &self,
        env: &str,
        principal: Option<&str>,
        write: PolicyWrite,
    ) -> Result<KmsSetup> {
        let alias = alias_for(env)?;
        let mut changes = Vec::new();
        let mut notes = Vec::new();

        let (key_id, key_arn, created) = match self.resolve(&alias).await {
            Ok((key_id, key_arn)) => (key_id, key_arn, false),
            Err(Error::UnknownMasterKey { .. }) => {
                let created = call(
                    self.client()
                        .create_key()
                        .description(format!("jarvis-crypt master key ({env})"))
                        .tags(tag("application", "jarvis-crypt")?)
                        .tags(tag("environment", env)?)
                        .send(),
                )
                .await?;
                let meta = created
                    .key_metadata()
                    .ok_or_else(|| Error::Configuration("CreateKey returned no key".into()))?;
                let key_id = meta.key_id().to_owned();
                let arn = meta.arn().unwrap_or(&key_id).to_owned();
                call(
                    self.client()
                        .create_alias()
                        .alias_name(&alias)
                        .target_key_id(&key_id)
                        .send(),
                )
                .await?;
                changes.push(format!("created key {key_id} with alias {alias}"));
                (key_id, arn, true)
            }
            Err(other) => return Err(other),
        };

        let (partition, account) = arn_parts(&key_arn)?;
        let current = self.key_policy(&key_id).await?;
        let (wanted, change) = if created || write == PolicyWrite::Replace {
            (
                policy(partition, account, principal),
                "key policy written (jarvis's statements only)".to_owned(),
            )
        } else {
            let wanted = merged_policy(&current, statements(partition, account, principal));
            let kept = statement_sids(&wanted)
                .into_iter()
                .filter(|sid| sid != ADMIN_SID && sid != APP_SID)
                .count();
            (
                wanted,
                format!("key policy: jarvis's statements written, {kept} other statements kept"),
            )
        };
        if current != wanted {
            call(
                self.client()
                    .put_key_policy()
                    .key_id(&key_id)
                    .policy_name(POLICY_NAME)
                    .policy(wanted.to_string())
                    .send(),
            )
            .await?;
            changes.push(change);
        }
        if principal.is_none() {
            if statement_sids(&wanted).iter().any(|sid| sid == APP_SID) {
                notes.push(format!(
                    "no application principal given: the key policy's existing {APP_SID} statement is kept"
                ));
            } else {
                notes.push(
                    "no application principal given: only the account's administrators can use the key"
                        .to_owned(),
                );
            }
        }

        let rotation = call(
            self.client()
                .get_key_rotation_status()
                .key_id(&key_id)
                .send(),
        )
        .await?;
        if !rotation.key_rotation_enabled() {
            call(self.client().enable_key_rotation().key_id(&key_id).send()).await?;
            changes.push("automatic rotation enabled".to_owned());
        }

        Ok(KmsSetup {
            key_id,
            key_arn,
            alias,
            changes,
            notes,
        })
    }

    /// The state of a key (id, ARN or alias): enabled, rotation, aliases, policy statements.
    pub async fn describe_key_state(&self, key: &str) -> Result<KmsKeyState> {
        let described = call(self.client().describe_key().key_id(key).send()).await?;
        let meta = described
            .key_metadata()
            .ok_or_else(|| Error::Configuration("DescribeKey returned no key".into()))?;
        let key_id = meta.key_id().to_owned();
        let rotation = call(
            self.client()
                .get_key_rotation_status()
                .key_id(&key_id)
                .send(),
        )
        .await?;
        let aliases = call(self.client().list_aliases().key_id(&key_id).send()).await?;
        let policy = self.key_policy(&key_id).await?;
        let policy_statements = statement_sids(&policy);
        Ok(KmsKeyState {
            key_arn: meta.arn().unwrap_or(&key_id).to_owned(),
            enabled: meta.enabled(),
            key_state: meta
                .key_state()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            rotation_enabled: rotation.key_rotation_enabled(),
            aliases: aliases
                .aliases()
                .iter()
                .filter_map(|a| a.alias_name().map(str::to_owned))
                .collect(),
            policy_statements,
            policy,
            key_id,
        })
    }

    /// Disables a key and schedules its deletion after `pending_days` (7 to 30; KMS's
    /// waiting period, during which the deletion can still be cancelled). Returns the key's
    /// state afterwards (`PendingDeletion`).
    pub async fn retire_key(&self, key: &str, pending_days: i32) -> Result<String> {
        let (key_id, _) = self.resolve(key).await?;
        call(self.client().disable_key().key_id(&key_id).send()).await?;
        let out = call(
            self.client()
                .schedule_key_deletion()
                .key_id(&key_id)
                .pending_window_in_days(pending_days)
                .send(),
        )
        .await?;
        Ok(out
            .key_state()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|| "PendingDeletion".to_owned()))
    }

    async fn key_policy(&self, key_id: &str) -> Result<Value> {
        let out = call(
            self.client()
                .get_key_policy()
                .key_id(key_id)
                .policy_name(POLICY_NAME)
                .send(),
        )
        .await?;
        Ok(out
            .policy()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or(Value::Null))
    }
}

fn tag(key: &str, value: &str) -> Result<aws_sdk_kms::types::Tag> {
    aws_sdk_kms::types::Tag::builder()
        .tag_key(key)
        .tag_value(value)
        .build()
        .map_err(|e| Error::Configuration(format!("bad tag: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_has_admin_and_optional_application_statements() {
        let p = policy(
            "aws",
            "123456789012",
            Some("arn:aws:iam::123456789012:role/app"),
        );
        let statements = p["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 2);
        assert_eq!(
            statements[0]["Principal"]["AWS"],
            "arn:aws:iam::123456789012:root"
        );
        assert_eq!(
            statements[1]["Action"],
            json!([
                "kms:GenerateDataKey",
                "kms:Decrypt",
                "kms:ReEncrypt*",
                "kms:DescribeKey"
            ])
        );
        assert_eq!(
            policy("aws", "1", None)["Statement"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn merging_replaces_jarvis_statements_by_sid_and_keeps_the_others() {
        let foreign = json!({"Sid": "Auditors", "Effect": "Allow", "Action": "kms:DescribeKey"});
        let no_sid = json!({"Effect": "Deny", "Action": "kms:ScheduleKeyDeletion"});
        let stale_app = json!({"Sid": APP_SID, "Effect": "Allow", "Action": "kms:*"});
        let current = json!({
            "Version": "2012-10-17",
            "Id": "their-policy",
            "Statement": [foreign, stale_app, no_sid],
        });
        let ours = statements("aws", "1", Some("arn:aws:iam::1:role/app"));
        let merged = merged_policy(&current, ours.clone());
        assert_eq!(merged["Id"], "their-policy");
        assert_eq!(
            merged["Statement"],
            json!([foreign, ours[1], no_sid, ours[0]]),
            "the app statement replaced in place, the admin statement appended"
        );
        assert_eq!(merged_policy(&merged, ours.clone()), merged, "idempotent");
        // Without a principal the existing application statement stays.
        let admin_only = merged_policy(&merged, statements("aws", "1", None));
        assert_eq!(admin_only, merged);
        // Unreadable or missing: jarvis's statements alone.
        assert_eq!(
            merged_policy(&Value::Null, ours.clone())["Statement"],
            json!(ours)
        );
        // A single statement object, and a repeated Sid.
        let single = json!({"Statement": {"Sid": ADMIN_SID, "Effect": "Deny"}});
        assert_eq!(
            merged_policy(&single, ours.clone())["Statement"],
            json!([ours[0], ours[1]])
        );
        let twice = json!({"Statement": [stale_app, foreign, stale_app]});
        assert_eq!(
            merged_policy(&twice, ours.clone())["Statement"],
            json!([ours[1], foreign, ours[0]])
        );
    }

    #[test]
    fn environment_names_are_checked() {
        assert_eq!(alias_for("staging").unwrap(), "alias/jarvis-staging");
        assert!(alias_for("").is_err());
        assert!(alias_for("a b").is_err());
    }
}
