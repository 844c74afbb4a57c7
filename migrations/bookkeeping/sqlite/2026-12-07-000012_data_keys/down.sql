DROP TABLE jarvis_data_keys;
