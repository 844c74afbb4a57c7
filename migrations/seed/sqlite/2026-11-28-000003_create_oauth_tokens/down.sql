DROP VIEW oauth_tokens_summary;
DROP TABLE oauth_tokens;
