DROP TABLE visits;
DROP TABLE patients;
