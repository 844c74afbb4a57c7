DROP VIEW encryption_audit_summary;
DROP VIEW oauth_tokens_summary;
DROP VIEW active_api_keys_summary;
