DROP TABLE jarvis_keys;
