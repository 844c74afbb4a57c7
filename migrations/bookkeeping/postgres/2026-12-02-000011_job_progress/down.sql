DROP TABLE jarvis_job_progress;
