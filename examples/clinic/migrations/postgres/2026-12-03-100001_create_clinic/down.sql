DROP TABLE staff;
DROP TABLE visits;
DROP TABLE patients;
