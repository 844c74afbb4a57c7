DROP TABLE encrypted_backups;
