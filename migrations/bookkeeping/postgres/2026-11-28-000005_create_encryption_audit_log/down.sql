DROP TABLE encryption_audit_log;
