DROP VIEW encryption_audit_summary;
