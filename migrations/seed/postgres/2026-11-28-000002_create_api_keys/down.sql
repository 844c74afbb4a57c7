DROP VIEW active_api_keys_summary;
DROP TABLE api_keys;
