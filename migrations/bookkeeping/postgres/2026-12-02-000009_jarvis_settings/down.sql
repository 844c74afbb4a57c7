DROP TABLE jarvis_settings;
